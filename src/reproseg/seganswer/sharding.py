"""SegAnswer's own training loops across the GPUs of one job (one process per GPU).

Stage 2 fine-tunes the whole language model: at 7B, fp32 weights, gradients and two
AdamW moments are about 112 GB, more than one GPU holds. Each process keeps the frozen
SAM 2.1 and projector whole and the language model sharded with PyTorch's FSDP2
(`fully_shard`): each decoder layer and vision block is one unit, then the language
backbone and the LM head (the loops call those two directly, not the wrapper), so a
process holds 1/N of the trained state. Gradients are averaged over the processes; each
process trains on its own slice of every global batch. On CPU the same code runs with
the gloo backend (the tests run it with two processes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from .model import unwrap_qwen


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Dist:
    """Joins the launch's process group; `device` "cuda" becomes this worker's GPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def shard_language_model(lm, device: str) -> None:
    """FSDP2 units: every decoder layer and vision block, then the backbone and the LM head.

    Only rank 0 holds the whole weights (loaded from the checkpoint); the other ranks built
    the model on the meta device (SegAnswerModel.from_pretrained(lm_meta=True)), so no rank
    but the first ever holds a full copy. After sharding, rank 0's whole state is broadcast
    and each rank keeps its shards; the buffers outside the state dict (rotary frequencies)
    are broadcast as they are."""
    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    core = unwrap_qwen(lm)
    if core.get_output_embeddings().weight is core.get_input_embeddings().weight:
        raise ValueError("tied input/output embeddings cannot be sharded as separate units")
    on_meta = any(p.is_meta for p in core.parameters())
    if on_meta == (dist.get_rank() == 0):
        raise ValueError(f"rank {dist.get_rank()}: only ranks after the first load the language model on the "
                         "meta device (rank 0 holds the weights it broadcasts)")
    full = None if on_meta else core.state_dict()
    persistent = set(core.state_dict().keys())
    backbone = core.model
    for block in list(backbone.language_model.layers) + list(backbone.visual.blocks):
        fully_shard(block, mesh=mesh)
    fully_shard(backbone, mesh=mesh)
    fully_shard(core.lm_head, mesh=mesh)
    if on_meta:
        core.to_empty(device=device)
    set_model_state_dict(core, full or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for name, buf in core.named_buffers():
        if name not in persistent:
            dist.broadcast(buf, src=0)


def full_state_dict(lm) -> dict[str, torch.Tensor]:
    """The language model's whole state on the CPU of rank 0 (empty elsewhere); collective."""
    return get_model_state_dict(unwrap_qwen(lm), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def mean(value: float, d: Dist) -> float:
    """The mean of a per-process number over the processes (a logged loss)."""
    if d.world == 1:
        return float(value)

    t = torch.tensor([float(value)], device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def local(t) -> torch.Tensor:
    """A plain tensor from a DTensor (a clipped-gradient norm of sharded parameters)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def close(d: Dist) -> None:
    if d.world > 1:
        dist.destroy_process_group()
