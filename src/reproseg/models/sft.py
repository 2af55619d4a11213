"""Supervised fine-tuning of a Qwen2.5-VL policy on (image, prompt, target text) examples.

The loss is next-token cross-entropy on the target tokens only: the prompt, the image
placeholders and the padding are masked out (label -100). Training runs on Hugging Face's
`Trainer`, which brings the learning-rate schedule (linear warm-up, then the configured
decay), gradient clipping, logging and `report_to` (TensorBoard under the run folder by
default). The prompt is rendered exactly as the GRPO trainer and the inference code render
it (the image before the text of the user turn), so what the policy learns here is what
it is later asked. Under a multi-process launch (torchrun) the Trainer runs DDP, `batch_size`
examples per process; rank 0 writes the log and the checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Trainer, TrainingArguments

from ..bounded_cache import BoundedLRU
from ..config import dataclass_from_dict
from ..data.images import as_image, row_image
from ..io_atomic import atomic_dir, write_json, write_parquet
from ..launch import is_main_process, resolve_target, run_resumable, visible_gpu_count
from ..runs import (CHECKPOINT_TIMES, FINAL_DIR, KEEP_STATES, RESUME_DIR, STOP_FILE, TENSORBOARD_DIR, CheckpointClock,
                    FullWeightsResume, StepLogCallback, StopOnSignalCallback, StopSignal, TrainingInterrupted,
                    check_or_write_manifest, checkpoint_step, completed_checkpoints, direct_tensorboard,
                    trajectory_settings)

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class SFTSettings:
    learning_rate: float = 1e-3
    max_steps: int = 300
    batch_size: int = 8
    warmup_steps: int = 10
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    image_cache_mb: float = 64.0   # decoded views of examples held as file references, kept for their next visit
    save_steps: int = 100          # a resume state every save_steps steps (and on SIGTERM / SIGUSR1)

    @classmethod
    def from_dict(cls, d: dict) -> "SFTSettings":
        return dataclass_from_dict(cls, d, "SFT")


def user_turn(prompt: list[dict]) -> list[dict]:
    """Chat messages with the image part first in each user turn (as TRL and inference do)."""
    return [{"role": m["role"], "content": [{"type": "image"}, {"type": "text", "text": m["content"]}]}
            for m in prompt]


class SFTCollator:
    """Batches examples `{"image", "prompt", "target"}` into model inputs with masked labels."""

    def __init__(self, processor, eos: str = "<|im_end|>"):
        self.processor = processor
        self.eos = eos

    def __call__(self, examples: Sequence[dict]) -> dict:
        proc = self.processor
        prompts = [proc.apply_chat_template(user_turn(e["prompt"]), tokenize=False, add_generation_prompt=True)
                   for e in examples]
        full = [p + e["target"] + self.eos for p, e in zip(prompts, examples)]
        images = [as_image(e["image"]) for e in examples]
        batch = proc(text=full, images=images, padding=True, return_tensors="pt")
        prompt_ids = proc(text=prompts, images=images, padding=False, return_tensors=None)["input_ids"]
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        pad_left = proc.tokenizer.padding_side == "left"
        for i, ids in enumerate(prompt_ids):
            start = int((batch["attention_mask"][i] == 0).sum()) if pad_left else 0
            labels[i, : start + len(ids)] = IGNORE
        batch["labels"] = labels
        return batch


class _ListDataset(torch.utils.data.Dataset):
    """The examples, an image held as a path or an ImageRef decoded when served; the decoded
    views of the last-used examples are kept up to `image_cache_mb` megabytes (RGB bytes), so
    that memory is bounded whatever the data size while a small set decodes each view once."""

    def __init__(self, examples: Sequence[dict], image_cache_mb: float = 0.0):
        self.examples = examples
        self.views = BoundedLRU(int(image_cache_mb * 2**20), _view_bytes)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        e = self.examples[i]
        if isinstance(e["image"], Image.Image):
            return e
        view = self.views.get(i)
        if view is None:
            view = row_image(e["image"], e.get("id", f"#{i}"))
            self.views.put(i, view)
        return {**e, "image": view}


def _view_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


def target_loss(model, collator: SFTCollator, examples: Sequence[dict], batch_size: int = 16) -> float:
    """Mean per-token cross-entropy of the targets (for before/after comparisons)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collator(list(examples[start:start + batch_size]))
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
            total += float(loss)
            count += int((target != IGNORE).sum())
    return total / max(count, 1)


class _SFTTrainer(FullWeightsResume, CheckpointClock, Trainer):
    """The Trainer with the policy's weights loaded on resume and its resume states timed."""

    def _save_checkpoint(self, model, trial) -> None:
        with self.timed_save():
            super()._save_checkpoint(model, trial)


def train_sft(policy_dir: str | os.PathLike, examples: Sequence[dict], settings: SFTSettings | dict,
              out_dir: str | os.PathLike, log_path: str | os.PathLike,
              held_out: Sequence[dict] = (), callbacks: Sequence = ()) -> dict | None:
    """Fine-tunes the policy on `examples`; writes `out_dir/checkpoint` (FINAL_DIR: HF format + processor)
    and the per-step loss log. Returns a summary with the target loss before and after on
    `held_out` (examples not trained on), when given; None on the other ranks of a launch
    (every rank is given the same examples; the Trainer's sampler splits them).

    Resumable: a Trainer state (weights, optimizer, scheduler, RNG, data position) goes to
    `out_dir/resume` every `save_steps` steps and at the end of the step in which SIGTERM /
    SIGUSR1 comes or the stop file appears (then TrainingInterrupted: exit 143); a retry
    continues from the newest complete state, the log's later rows dropped, and ends where
    an uninterrupted run ends. The state is removed once the model is written. callbacks:
    extra TrainerCallbacks (before the stop check)."""
    settings = settings if isinstance(settings, SFTSettings) else SFTSettings.from_dict(settings)
    if not examples:
        raise ValueError("no SFT examples")
    out_dir = Path(out_dir)
    resume_dir = out_dir / RESUME_DIR
    main = is_main_process()
    if main:
        resume_dir.mkdir(parents=True, exist_ok=True)
    identity = {"settings": trajectory_settings(settings),
                "policy": str(policy_dir), "examples": len(examples),
                "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    check_or_write_manifest(resume_dir, identity, main)
    done = completed_checkpoints(resume_dir)
    last = done[-1] if done else None
    torch.manual_seed(settings.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy_dir, dtype=torch.float32, local_files_only=True)
    processor = AutoProcessor.from_pretrained(policy_dir, local_files_only=True, padding_side="right")
    collator = SFTCollator(processor)
    before = target_loss(model, collator, held_out) if held_out and main else math.nan
    args = TrainingArguments(
        output_dir=str(resume_dir),
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        max_steps=settings.max_steps,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=KEEP_STATES,   # the newest state, and the one before it if the newest is damaged
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=list(settings.report_to),
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    loss_log = StepLogCallback(resume_dir / "train_log.parquet", checkpoint_step(last) if last else None)
    stop = StopSignal(stop_file=resume_dir / STOP_FILE)
    if main:
        (resume_dir / STOP_FILE).unlink(missing_ok=True)
    stop_cb = StopOnSignalCallback(stop, skip_final_save=True)   # the model is written below
    trainer = _SFTTrainer(model=model, args=args, train_dataset=_ListDataset(examples, settings.image_cache_mb),
                          data_collator=collator, callbacks=[loss_log, *callbacks, stop_cb])
    trainer.checkpoint_times_path = out_dir / CHECKPOINT_TIMES
    if last is None and main:
        shutil.rmtree(out_dir / TENSORBOARD_DIR, ignore_errors=True)   # an earlier run's curves would mix in
    direct_tensorboard(trainer, out_dir / TENSORBOARD_DIR)
    with stop:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    stopped = stop_cb.stopped_at_step
    if stopped is not None and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingInterrupted(stopped, str(resume_dir / f"checkpoint-{stopped}"))
    if not main:
        return None  # the weights are rank 0's too (DDP keeps them equal): it writes them
    after = target_loss(model, collator, held_out) if held_out else math.nan
    write_parquet(log_path, pa.Table.from_pylist(loss_log.rows))
    summary = {"settings": asdict(settings), "world_size": args.world_size, "examples": len(examples),
               "held_out": len(held_out), "held_out_loss_before": before, "held_out_loss_after": after,
               "train_loss_first": loss_log.rows[0]["loss"], "train_loss_last": loss_log.rows[-1]["loss"]}
    processor.tokenizer.padding_side = "left"   # generation appends on the right
    with atomic_dir(out_dir / FINAL_DIR) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json(tmp / "sft_summary.json", summary)
    shutil.rmtree(resume_dir, ignore_errors=True)
    log.info("SFT: %s", json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    return summary


def launch_sft(target: str, processes: int | None, **job) -> dict:
    """Runs `target(**job)` (a "module:function" that ends in train_sft writing
    job["run_dir"]/FINAL_DIR) in this process, or once per torchrun worker when
    `processes` (None: one per GPU, one on CPU) is above one; the workers get the job's
    paths and settings only and build their examples themselves. Returns the written SFT
    summary."""
    n = max(1, visible_gpu_count()) if processes is None else int(processes)
    run_dir = Path(job["run_dir"])
    if n > 1:
        # Stop requests reach the workers through the resume folder's stop file.
        run_resumable(run_dir / "warmup.job.pkl", n, target, run_dir / RESUME_DIR, **job)
    else:
        resolve_target(target)(**job)
    return json.loads((run_dir / FINAL_DIR / "sft_summary.json").read_text())
