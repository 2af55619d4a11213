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
(`train_vision_tower`, default True); AdamW, no weight decay, a constant learning rate
without warm-up (`lr_scheduler_type`, `warmup_steps`: any of the Trainer's schedules),
clipping at 1.0, batch size 8.

Training runs on the HF Trainer (reproseg.seganswer.sft_trainer.SegAnswerSFTTrainer, the
stage's own loss as its compute_loss): gradient accumulation, a resume state every
`save_steps` optimizer steps and on SIGTERM/SIGUSR1 (a retry continues from the newest
complete one, to the weights of an uninterrupted run), TensorBoard under the run dir
(`report_to`), candidates every `candidate_every` steps for rule seganswer_stage2_select.

Several processes (one per GPU): the language model is sharded with FSDP2
(reproseg.seganswer.sharding), so a process holds 1/N of the trained state: at 7B in
float32 the weights, gradients and two AdamW moments are about 112 GB in all, 14 GB a
GPU over 8 (plus the whole frozen SAM 2.1, the projector and the activations; bfloat16
weights halve the first two), where DDP would need all 112 GB on every GPU. Each
process trains on its own slice of every global batch of `processes` x batch_size rows;
a resume state holds each rank's shards. Only rank 0 reads the weights (on its CPU); the
other ranks build the model on the meta device and receive their shards from it, so a
node holds one whole copy while loading, not one per process.

Data rows: {"image": PIL.Image, "question": str, "answer": str, "options": list | None}.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reproseg.config import dataclass_from_dict
from reproseg.io_atomic import atomic_dir, write_json
from reproseg.launch import launched, run_resumable
from reproseg.seganswer.losses import IGNORE_INDEX, next_token_loss
from reproseg.seganswer.model import PixelBounds, SegAnswerModel, resolve_device, unwrap_qwen
from reproseg.seganswer.positions import build_conversation, mask_patch_keep, segmented_image
from reproseg.seganswer.prompts import (
    ANSWER_RESPONSE,
    REASONING_PROMPT,
    SEG_RESPONSE,
    observation_message,
    reasoning_messages,
)
from reproseg.runs import trajectory_settings
from reproseg.seganswer.sft_trainer import (
    collect_candidates,
    finish,
    folder_identity,
    scratch_resume_dir,
    train_sft,
)
from reproseg.seganswer.stage1 import collate, processes

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
    # The Trainer's schedule (transformers' names; the paper is silent: constant, no warm-up),
    # how often a resume state is saved, and where progress is reported.
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    save_steps: int = 500
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # A candidate for checkpoint selection every this many optimizer steps, besides the final
    # model; None: the final model only.
    candidate_every: int | None = None

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


def stage2_terms(model: SegAnswerModel, rows: Sequence[dict], s: Stage2Settings) -> dict:
    """The Trainer's loss terms of one batch (the frozen SAM 2.1 kept in eval mode: the
    Trainer puts the whole model in train mode at every step)."""
    model.sam.eval()
    return {"loss": stage2_step_loss(model, rows, s)}


def train_stage2(stage1_dir, rows: Sequence[dict], out_dir, settings: Stage2Settings | dict | None = None,
                 log_path=None, resume_dir=None, candidates_dir=None, callbacks=(),
                 pixels: PixelBounds | None = None) -> Path:
    """Stage-2 SFT from the merged stage-1 checkpoint; writes a SegAnswer checkpoint to `out_dir` (atomic).

    resume_dir: the run's resume state (a stopped run continues from its last saved step;
    None: a scratch one); with `candidate_every`, the candidates go to `candidates_dir`.
    With several processes (`settings.processes`, default one per GPU of the job) this
    launches them (torchrun) and each runs `_train`; the rows are pickled by reference
    to their tables (images load in the workers). callbacks: extra TrainerCallbacks (one
    process only: they are not pickled to workers). pixels: the processor's resize bounds
    (None: the stage-1 checkpoint's), saved with the checkpoint, so stage 3 reads with them.
    """
    s = settings if isinstance(settings, Stage2Settings) else Stage2Settings.from_dict(settings)
    n = processes(s)
    scratch = resume_dir is None and not launched()
    resume = scratch_resume_dir() if scratch else resume_dir
    if n > 1 and not launched():
        if callbacks:
            raise ValueError("callbacks are not passed to worker processes")
        job = Path(out_dir).with_name(Path(out_dir).name + ".job.pkl")
        run_resumable(job, n, "reproseg.seganswer.stage2:_train", resume, stage1_dir=str(stage1_dir), rows=rows,
                      out_dir=str(out_dir), s=dataclasses.replace(s, processes=n),
                      log_path=None if log_path is None else str(log_path), resume_dir=str(resume),
                      candidates_dir=None if candidates_dir is None else str(candidates_dir), pixels=pixels)
        job.unlink(missing_ok=True)
    else:
        _train(stage1_dir, rows, out_dir, s, log_path, resume, candidates_dir, callbacks, pixels)
    finish(resume, scratch)
    return Path(out_dir)


def _train(stage1_dir, rows: Sequence[dict], out_dir, s: Stage2Settings, log_path=None, resume_dir=None,
           candidates_dir=None, callbacks=(), pixels: PixelBounds | None = None) -> Path:
    device = resolve_device(s.device)
    d = sharding.init(device) if launched() else sharding.Dist(device=device)
    torch.manual_seed(s.seed)
    # Sharded: rank 0 loads the language model on the CPU, the others build it on the meta
    # device; shard_language_model gives every rank its shards of rank 0's weights.
    model = SegAnswerModel.from_pretrained(stage1_dir, dtype=s.dtype, device="cpu" if d.world > 1 else d.device,
                                           pixels=pixels, lm_meta=d.world > 1 and not d.is_main)
    if d.world > 1:
        model.sam.to(d.device)
        model.projector.to(d.device)
        sharding.shard_language_model(model.lm, d.device)
    model.enable_feature_cache(s.sam_feature_cache_mb)
    params = configure_trainable(model, s)

    def save(target, steps: int, final: dict | None = None) -> None:
        # Collective when sharded: the whole language model is gathered to rank 0, which writes.
        state = sharding.full_state_dict(model.lm) if d.world > 1 else None
        if d.is_main:
            with atomic_dir(target) as tmp:
                model.save_pretrained(tmp, lm_state_dict=state)
                write_json(tmp / SUMMARY_FILE, {"settings": s.to_dict(), "steps": steps, "processes": d.world,
                                                "final": final})

    identity = {"settings": trajectory_settings(s), "rows": len(rows), "stage1": folder_identity(stage1_dir),
                "pixels": None if pixels is None else dataclasses.asdict(pixels)}
    log = train_sft(model, rows, s, params, [{"params": params}], lambda forward, m, batch: stage2_terms(m, batch, s),
                    log_path=log_path, resume_dir=resume_dir, identity=identity, callbacks=callbacks,
                    export=lambda target, step: save(target, step),
                    sharded=unwrap_qwen(model.lm) if d.world > 1 else None)
    save(out_dir, len(log), log[-1] if log else None)
    if d.is_main and candidates_dir is not None:
        collect_candidates(resume_dir, out_dir, candidates_dir, log[-1]["step"] if log else 0)
    sharding.barrier(d)
    sharding.close(d)
    return Path(out_dir)
