"""Stage 2, multimodal interleaved SFT (paper Sec. 3.2 and 4.2).

Each sample becomes
    user:      <image> reasoning prompt with the question
    assistant: a short sentence ending in <|seg|> (prompts.SEG_RESPONSE)
    user:      <segmented image: only the patches the mask touches, at their original positions>
    assistant: "<answer>{answer}</answer>"
The mask is the model's own: the hidden state at `<|seg|>` goes through the frozen
projector and mask decoder (the data has no mask; the paper uses only the answer).
Only next-token loss on the assistant tokens; observation tokens (the segmented image
and its template) and the prompt are masked out. Projector and mask decoder are
frozen; the MLLM's parameters all train (lr 2e-6, 1 epoch).

Choices where the paper is silent: the mask is recomputed with the current weights at
every step (a no-grad forward over the conversation up to the end of the first
assistant turn; causal attention makes the `<|seg|>` state the same as in the full
sequence); "full parameters of the MLLM backbone" includes the vision tower
(`train_vision_tower`, default True); AdamW, no weight decay, constant lr, clipping at
1.0, batch size 8.

Data rows: {"image": PIL.Image, "question": str, "answer": str, "options": list | None}.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from reproseg.config import dataclass_from_dict
from reproseg.io_atomic import atomic_dir, write_json, write_parquet
from reproseg.launch import launched, run_workers
from reproseg.seganswer.losses import IGNORE_INDEX, next_token_loss
from reproseg.seganswer.model import SegAnswerModel, resolve_device
from reproseg.seganswer.positions import build_conversation, mask_patch_keep, segmented_image
from reproseg.seganswer.prompts import (
    ANSWER_RESPONSE,
    REASONING_PROMPT,
    SEG_RESPONSE,
    observation_message,
    reasoning_messages,
)
from reproseg.seganswer.stage1 import _batches, collate, optimizer_steps, processes

from . import sharding

SUMMARY_FILE = "stage2_summary.json"


@dataclass
class Stage2Settings:
    learning_rate: float = 2e-6
    epochs: float = 1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None
    train_vision_tower: bool = True
    seg_response: str = SEG_RESPONSE
    answer_response: str = ANSWER_RESPONSE
    gradient_checkpointing: bool = False
    device: str = "auto"  # "auto": the GPU when there is one
    dtype: str = "float32"  # of the language model (projector and SAM stay float32)
    # Megabytes of frozen SAM image-encoder features kept in memory (the same features, faster); 0: none.
    sam_feature_cache_mb: float = 0
    # Processes (one per GPU, the language model sharded; reproseg.seganswer.sharding).
    # None: one per GPU of the job, one on CPU. batch_size is per process.
    processes: int | None = None
    # The first user turn (seganswer.reasoning_prompt; {question} is the question and its options).
    reasoning_prompt: str = REASONING_PROMPT

    @classmethod
    def from_dict(cls, d: dict | None) -> "Stage2Settings":
        return dataclass_from_dict(cls, d, "SegAnswer stage 2")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def first_turn_messages(row: dict, s: Stage2Settings) -> list[dict]:
    return (reasoning_messages(row["question"], row.get("options"), s.reasoning_prompt)
            + [{"role": "assistant", "content": s.seg_response}])


def full_messages(row: dict, s: Stage2Settings) -> list[dict]:
    return first_turn_messages(row, s) + [
        observation_message(),
        {"role": "assistant", "content": s.answer_response.format(answer=row["answer"])},
    ]


@torch.no_grad()
def predict_seg_masks(model: SegAnswerModel, rows: Sequence[dict], s: Stage2Settings) -> list[np.ndarray]:
    """The model's mask (original resolution, bool) at the first `<|seg|>` of each row's first turn."""
    examples = []
    for r in rows:
        image = r["image"].convert("RGB")
        vision = model.processor.image_processor(images=[image], return_tensors="pt")
        b = build_conversation(model.processor, first_turn_messages(r, s), [("whole", vision["image_grid_thw"][0])])
        examples.append({"input_ids": b.input_ids, "labels": b.input_ids, "position_ids": b.position_ids,
                         "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]})
    batch = collate(examples, model.processor.tokenizer.pad_token_id)
    dev = model.device
    feats = model.sam_image_features([r["image"] for r in rows])
    out = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["position_ids"].to(dev),
                batch["pixel_values"].to(dev), batch["image_grid_thw"].to(dev), sam_feats=feats)
    masks = []
    for i, r in enumerate(rows):
        sel = (out.seg_index[:, 0] == i).nonzero()
        w, h = r["image"].size
        if sel.numel() == 0:
            masks.append(np.zeros((h, w), dtype=bool))
            continue
        logits = model.upsample_masks(out.mask_logits[sel[0, 0]: sel[0, 0] + 1], (h, w))
        masks.append((logits[0, 0] > model.config.mask_threshold).cpu().numpy())
    return masks


def build_stage2_example(processor, row: dict, mask: np.ndarray, s: Stage2Settings) -> dict:
    """Ids, positions, labels (assistant tokens only) and vision inputs of the full interleaved sample."""
    image = row["image"].convert("RGB")
    seg = segmented_image(image, mask)
    vision = processor.image_processor(images=[image, seg], return_tensors="pt")
    grid = vision["image_grid_thw"][0]
    keep = mask_patch_keep(mask, grid, int(processor.image_processor.merge_size))
    b = build_conversation(processor, full_messages(row, s), [("whole", grid), ("segmented", 0, keep)])
    ids = b.input_ids
    labels = torch.where(torch.tensor(b.policy_mask, dtype=torch.bool), ids, torch.full_like(ids, IGNORE_INDEX))
    return {"input_ids": ids, "position_ids": b.position_ids, "labels": labels,
            "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"],
            "image_keeps": [None, keep]}


def configure_trainable(model: SegAnswerModel, s: Stage2Settings) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    for n, p in model.lm.named_parameters():
        if s.train_vision_tower or ".visual." not in f".{n}":
            p.requires_grad_(True)
    if s.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    return [p for p in model.lm.parameters() if p.requires_grad]


def stage2_step_loss(model: SegAnswerModel, rows: Sequence[dict], s: Stage2Settings) -> torch.Tensor:
    masks = predict_seg_masks(model, rows, s)
    examples = [build_stage2_example(model.processor, r, m, s) for r, m in zip(rows, masks)]
    batch = collate(examples, model.processor.tokenizer.pad_token_id)
    dev = model.device
    logits, _, _ = model.lm_forward(batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                    batch["position_ids"].to(dev), batch["pixel_values"].to(dev),
                                    batch["image_grid_thw"].to(dev), batch["image_keeps"])
    return next_token_loss(logits, batch["labels"].to(dev))


def train_stage2(stage1_dir, rows: Sequence[dict], out_dir, settings: Stage2Settings | dict | None = None,
                 log_path=None) -> Path:
    """Stage-2 SFT from the merged stage-1 checkpoint; writes a SegAnswer checkpoint to `out_dir` (atomic).

    With several processes (`settings.processes`, default one per GPU of the job) this
    launches them (torchrun) and each runs `_train`; the rows are pickled by reference
    to their tables (images load in the workers).
    """
    s = settings if isinstance(settings, Stage2Settings) else Stage2Settings.from_dict(settings)
    n = processes(s)
    if n > 1 and not launched():
        job = Path(out_dir).with_name(Path(out_dir).name + ".job.pkl")
        run_workers(job, n, "reproseg.seganswer.stage2:_train", stage1_dir=str(stage1_dir), rows=rows,
                    out_dir=str(out_dir), s=dataclasses.replace(s, processes=n),
                    log_path=None if log_path is None else str(log_path))
        job.unlink(missing_ok=True)
        return Path(out_dir)
    return _train(stage1_dir, rows, out_dir, s, log_path)


def _train(stage1_dir, rows: Sequence[dict], out_dir, s: Stage2Settings, log_path=None) -> Path:
    device = resolve_device(s.device)
    d = sharding.init(device) if launched() else sharding.Dist(device=device)
    torch.manual_seed(s.seed)
    # A sharded model is loaded on the CPU and its shards moved to this worker's device.
    model = SegAnswerModel.from_pretrained(stage1_dir, dtype=s.dtype, device="cpu" if d.world > 1 else d.device)
    if d.world > 1:
        model.sam.to(d.device)
        model.projector.to(d.device)
        sharding.shard_language_model(model.lm, d.device)
    model.enable_feature_cache(s.sam_feature_cache_mb)
    params = configure_trainable(model, s)
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    model.train()
    model.sam.eval()
    log, step, accum = [], 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=optimizer_steps(len(rows), s.batch_size * d.world, s), desc="SegAnswer stage 2", unit="step",
               disable=not d.is_main)
    # Every process draws the same global batches; each trains on its slice.
    for epoch, idx in _batches(len(rows), s.batch_size * d.world, s.epochs, s.seed):
        mine = idx[d.rank::d.world]
        loss = stage2_step_loss(model, [rows[i] for i in mine], s)
        (loss / s.gradient_accumulation_steps).backward()
        accum += 1
        if accum % s.gradient_accumulation_steps:
            continue
        gn = sharding.local(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        now = time.perf_counter()
        log.append({"step": step, "epoch": epoch, "loss": sharding.mean(loss.detach(), d), "grad_norm": float(gn),
                    "learning_rate": s.learning_rate, "step_time_s": now - t0})
        bar.update(1)
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", refresh=False)
        t0 = now
        if s.max_steps is not None and step >= s.max_steps:
            break
    bar.close()
    model.eval()
    state = sharding.full_state_dict(model.lm) if d.world > 1 else None
    if d.is_main:
        if log_path is not None:
            write_parquet(log_path, pa.Table.from_pylist(log))
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, lm_state_dict=state)
            write_json(tmp / SUMMARY_FILE, {"settings": s.to_dict(), "steps": len(log), "processes": d.world,
                                            "final": log[-1] if log else None})
    sharding.barrier(d)
    sharding.close(d)
    return Path(out_dir)
