"""Stage 1, pixel grounding (paper Sec. 3.1 and 4.2).

Phase a: only the projector trains (LM and mask decoder frozen); lr 1e-3, 5 epochs on
the referring sets. Phase b: LoRA on the language model (PEFT) + projector + mask
decoder, lr 2e-5, 3 epochs on all stage-1 sets. Then `merge_lora` folds the adapter
into the weights. Loss: next-token CE + SAM 2.1 mask losses (see losses.py).

Data rows: {"image": PIL.Image, "mask": bool (H, W) array, "phrase": str}; each becomes
    user: <image> "Segment the {phrase} in the image."   assistant: "It is <|seg|>."

Training runs on the HF Trainer (reproseg.seganswer.sft_trainer): resumable, with its
learning-rate schedules, reporting to TensorBoard. Choices where the paper is silent
(Stage1Settings, all set in config): AdamW, no weight decay, constant learning rate, gradient clipping at 1.0,
batch size 8 with no accumulation; LoRA r=8, alpha=16, dropout 0.05 on every linear
layer of the language model (q/k/v/o and the MLP; the vision tower is not adapted);
in phase b the `<|seg|>` rows of the input embedding and of the LM head also train
(PEFT trainable tokens) so that a token added to a released tokenizer can be learnt
without training the whole vocabulary; mask losses at SAM's input resolution (the
low-res logits upsampled bilinearly, the GT resized from its image's native size to
that square by nearest pixel centre, `mask_targets`); the
prompt without the paper's typographic quotes around the phrase (template argument).
One learning rate for all trained parts, as in the paper, unless `lora_learning_rate`
gives the LoRA matrices their own (the embedded default: its tiny random language
model is rewritten by a LoRA at the mask decoder's rate). Training order is a seeded
shuffle per epoch; everything is deterministic given `seed`.

Candidates (`candidate_every`, saved like the final model: an unmerged phase-b candidate
is the base weights hard-linked plus its adapter and heads) go to the run's candidates
folder; rule seganswer_stage1_select scores phase b's on val and the chosen one is merged.

The step log holds every loss term, the gradient norm and `mask_iou`, the batch's mean
IoU of the thresholded masks with their targets; `predict_masks` gives the mask at
the `<|seg|>` of the given response for any rows (what the tests and the
"response given" evaluation measure).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from reproseg.config import dataclass_from_dict
from reproseg.io_atomic import atomic_dir, write_json
from reproseg.launch import is_main_process, launched, run_resumable, visible_gpu_count
from reproseg.seganswer.losses import IGNORE_INDEX, Stage1LossWeights, actual_iou, stage1_loss
from reproseg.seganswer.model import (  # noqa: F401  (merge_lora: public API)
    PixelBounds,
    SegAnswerModel,
    is_peft,
    merge_lora,
    resolve_device,
)
from reproseg.seganswer.positions import build_conversation
from reproseg.runs import trajectory_settings
from reproseg.seganswer.sft_trainer import (
    collect_candidates,
    finish,
    folder_identity,
    scratch_resume_dir,
    train_sft,
)

PROMPT_TEMPLATE = "Segment the {phrase} in the image."
RESPONSE = "It is <|seg|>."
LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SUMMARY_FILE = "stage1_summary.json"


@dataclass
class Stage1Settings:
    learning_rate: float
    epochs: float
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None  # cut a run short (smoke tests); None: all epochs
    loss: Stage1LossWeights = field(default_factory=Stage1LossWeights)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = LM_LORA_TARGETS
    # The LoRA matrices' own learning rate (None: learning_rate, as in the paper); the
    # projector, mask decoder and `<|seg|>` rows keep learning_rate.
    lora_learning_rate: float | None = None
    train_seg_token_rows: bool = True
    prompt_template: str = PROMPT_TEMPLATE
    response: str = RESPONSE
    gradient_checkpointing: bool = False
    # Where the stage trains: "auto" = the GPU when there is one. dtype of the language
    # model (the projector and SAM stay float32).
    device: str = "auto"
    dtype: str = "float32"
    # Megabytes of frozen SAM image-encoder features kept between epochs
    # (SegAnswerModel.enable_feature_cache: the same features, faster); 0: none.
    sam_feature_cache_mb: float = 0
    # The Trainer's schedule (transformers' names; the paper is silent: constant, no warm-up),
    # how often a resume state is saved, and where progress is reported.
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    save_steps: int = 500
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Processes (one per GPU, DDP); None: one per GPU of the job, one on CPU. batch_size is per process.
    processes: int | None = None
    # A candidate for checkpoint selection every this many optimizer steps, besides the final
    # model (reproseg.seganswer.selection); None: the final model only.
    candidate_every: int | None = None

    @classmethod
    def phase_a(cls, **kw) -> "Stage1Settings":
        """Paper Sec. 4.2: projector only, lr 1e-3, 5 epochs."""
        return cls(**{"learning_rate": 1e-3, "epochs": 5, **kw})

    @classmethod
    def phase_b(cls, **kw) -> "Stage1Settings":
        """Paper Sec. 4.2: LoRA + projector + mask decoder, lr 2e-5, 3 epochs."""
        return cls(**{"learning_rate": 2e-5, "epochs": 3, **kw})

    @classmethod
    def from_dict(cls, d: dict, phase: str) -> "Stage1Settings":
        d = dict(d or {})
        if isinstance(d.get("loss"), dict):
            d["loss"] = dataclass_from_dict(Stage1LossWeights, d["loss"], "SegAnswer stage 1 loss")
        preset = cls.phase_a() if phase == "a" else cls.phase_b()
        return dataclass_from_dict(cls, {**dataclasses.asdict(preset), "loss": preset.loss, **d},
                                   f"SegAnswer stage 1{phase}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- examples ----------------------------------------------------------------------------
def stage1_messages(phrase: str, settings: Stage1Settings | None = None) -> list[dict]:
    s = settings or Stage1Settings.phase_a()
    return [
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": s.prompt_template.format(phrase=phrase)}]},
        {"role": "assistant", "content": s.response},
    ]


def build_stage1_example(processor, row: dict, settings: Stage1Settings | None = None) -> dict:
    """Token ids, (3, L) positions, labels and vision inputs of one referring-segmentation row."""
    image = row["image"].convert("RGB")
    vision = processor.image_processor(images=[image], return_tensors="pt")
    grid = vision["image_grid_thw"][0]
    b = build_conversation(processor, stage1_messages(row["phrase"], settings), [("whole", grid)])
    ids = b.input_ids
    labels = torch.where(torch.tensor(b.policy_mask, dtype=torch.bool), ids, torch.full_like(ids, IGNORE_INDEX))
    mask = np.asarray(row["mask"], dtype=bool)
    if mask.shape != (image.size[1], image.size[0]):
        raise ValueError(f"mask shape {mask.shape} differs from the image size {image.size[::-1]}")
    return {"input_ids": ids, "position_ids": b.position_ids, "labels": labels,
            "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"],
            "image": image, "mask": mask}


def collate(examples: Sequence[dict], pad_id: int) -> dict:
    """Right-padded batch; pixel values of all images concatenated in row order."""
    n = max(e["input_ids"].shape[0] for e in examples)
    B = len(examples)
    ids = torch.full((B, n), pad_id, dtype=torch.long)
    labels = torch.full((B, n), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((B, n), dtype=torch.long)
    pos = torch.zeros((3, B, n), dtype=torch.long)
    for i, e in enumerate(examples):
        L = e["input_ids"].shape[0]
        ids[i, :L] = e["input_ids"]
        labels[i, :L] = e["labels"]
        attn[i, :L] = 1
        pos[:, i, :L] = e["position_ids"]
    out = {"input_ids": ids, "labels": labels, "attention_mask": attn, "position_ids": pos,
           "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
           "image_grid_thw": torch.cat([e["image_grid_thw"] for e in examples])}
    if "image_keeps" in examples[0]:
        out["image_keeps"] = [k for e in examples for k in e["image_keeps"]]
    return out


def mask_targets(masks: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """GT masks (S, 1, size, size) at SAM's input resolution, each from its own image's native
    size: SAM 2.1 squashes every image to size x size (SAM2Transforms), so target pixel (i, j)
    is native pixel (floor((i + .5) H / size), floor((j + .5) W / size)), the nearest by pixel
    centres ("nearest-exact"), the same geometry as the image's bilinear resize."""
    out = [torch.nn.functional.interpolate(torch.from_numpy(np.asarray(m, dtype=np.float32))[None, None],
                                           size=(size, size), mode="nearest-exact")[0] for m in masks]
    return (torch.stack(out) > 0.5).float()


# -- training ----------------------------------------------------------------------------
def configure_trainable(model: SegAnswerModel, phase: str, settings: Stage1Settings) -> list[torch.nn.Parameter]:
    """Sets requires_grad for a phase (wrapping the LM in LoRA for phase b); returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    if phase == "a":
        for p in model.projector.parameters():
            p.requires_grad_(True)
    elif phase == "b":
        if not is_peft(model.lm):
            cfg = dict(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                       target_modules=settings.lora_target_modules, task_type="CAUSAL_LM")
            if settings.train_seg_token_rows:
                cfg["trainable_token_indices"] = {"embed_tokens": [model.seg_token_id],
                                                  "lm_head": [model.seg_token_id]}
            torch.manual_seed(settings.seed)  # LoRA A matrices are drawn here
            model.lm = get_peft_model(model.lm, LoraConfig(**cfg))
        else:
            for n, p in model.lm.named_parameters():
                if "lora_" in n or "trainable_tokens" in n:
                    p.requires_grad_(True)
        for p in model.projector.parameters():
            p.requires_grad_(True)
        for p in model.sam.sam_mask_decoder.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"phase must be 'a' or 'b', got {phase!r}")
    if settings.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
        if hasattr(model.lm, "enable_input_require_grads"):
            model.lm.enable_input_require_grads()
    return [p for p in model.parameters() if p.requires_grad]


def _teacher_forced(model: SegAnswerModel, examples: Sequence[dict], forward=None):
    """The model's forward over whole stage-1 examples (the response, with its `<|seg|>`, given).
    forward: what runs the forward (the DDP wrapper of `model` under several processes, so that
    the gradients are reduced); default the model itself."""
    batch = collate(examples, model.processor.tokenizer.pad_token_id)
    dev = model.device
    feats = model.sam_image_features([e["image"] for e in examples])
    out = (forward or model)(batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                             batch["position_ids"].to(dev), batch["pixel_values"].to(dev),
                             batch["image_grid_thw"].to(dev), sam_feats=feats)
    return batch, out


def param_groups(model: SegAnswerModel, params: list[torch.nn.Parameter], settings: Stage1Settings) -> list[dict]:
    """AdamW groups: the LoRA matrices at lora_learning_rate (when set), the rest at learning_rate."""
    if settings.lora_learning_rate is None:
        return [{"params": params}]
    lora = {id(p) for n, p in model.lm.named_parameters() if "lora_" in n}
    groups = [{"params": [p for p in params if id(p) not in lora]},
              {"params": [p for p in params if id(p) in lora], "lr": settings.lora_learning_rate}]
    return [g for g in groups if g["params"]]


def stage1_step_loss(model: SegAnswerModel, examples: Sequence[dict], settings: Stage1Settings,
                     forward=None) -> dict:
    """Forward + loss of one batch of examples (from build_stage1_example); `forward` as for
    _teacher_forced.

    Besides the loss terms: "mask_iou", the mean IoU (mask thresholded at logit 0, at
    SAM's input resolution) of the masks whose target has an object (no gradient).
    """
    batch, out = _teacher_forced(model, examples, forward)
    dev = model.device
    size = int(model.sam.image_size)
    if out.mask_logits is not None:
        rows = out.seg_index[:, 0].tolist()
        logits = model.upsample_masks(out.mask_logits, (size, size))
        targets = mask_targets([examples[r]["mask"] for r in rows], size).to(dev)
    else:
        logits = targets = None
    terms = stage1_loss(out.logits, batch["labels"].to(dev), logits, targets, out.iou_pred, out.object_logits,
                        settings.loss)
    has_obj = targets.flatten(1).any(1) if targets is not None else None
    terms["mask_iou"] = (actual_iou(logits.detach(), targets)[has_obj].mean() if has_obj is not None and has_obj.any()
                         else torch.tensor(float("nan")))
    return terms


@torch.no_grad()
def predict_masks(model: SegAnswerModel, rows: Sequence[dict], settings: Stage1Settings | None = None,
                  batch_size: int = 8) -> list[np.ndarray | None]:
    """The mask at the `<|seg|>` of each row's stage-1 conversation (the response given, not
    generated), at the row's image size; None where the response has no `<|seg|>`."""
    s = settings or Stage1Settings.phase_a()
    was_training = model.training
    model.eval()
    out_masks = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = [build_stage1_example(model.processor, r, s) for r in rows[start:start + batch_size]]
            _, out = _teacher_forced(model, chunk)
            first = {}
            if out.mask_logits is not None:
                for j, b in enumerate(out.seg_index[:, 0].tolist()):
                    first.setdefault(b, j)
            for b, e in enumerate(chunk):
                if b not in first:
                    out_masks.append(None)
                    continue
                h, w = e["mask"].shape
                logits = model.upsample_masks(out.mask_logits[first[b]: first[b] + 1], (h, w))
                out_masks.append((logits[0, 0] > model.config.mask_threshold).cpu().numpy())
    finally:
        model.train(was_training)
    return out_masks


def train_phase(model: SegAnswerModel, rows: Sequence[dict], phase: str, settings: Stage1Settings,
                log_path=None, resume_dir=None, start: dict | None = None, callbacks=(), export=None) -> list[dict]:
    """Trains `model` in place for one phase on the HF Trainer (reproseg.seganswer.sft_trainer);
    returns (and writes to `log_path`, Parquet) one row per optimizer step. resume_dir: the
    run's resume state (None: none kept); start: what the phase started from, for the check
    that a resume state found there is this run's; export(folder, step): writes a candidate."""
    torch.manual_seed(settings.seed)
    params = configure_trainable(model, phase, settings)
    if settings.sam_feature_cache_mb and model.feature_cache is None:
        model.enable_feature_cache(settings.sam_feature_cache_mb)

    # Examples are built per batch: rows may load their images lazily (a paper-size set
    # does not fit in memory decoded).
    def step_loss(forward, m, batch):
        return stage1_step_loss(m, [build_stage1_example(m.processor, r, settings) for r in batch], settings, forward)

    identity = {"phase": phase, "settings": trajectory_settings(settings), "rows": len(rows), "start": start or {}}
    return train_sft(model, rows, settings, params, param_groups(model, params, settings), step_loss,
                     log_path=log_path, resume_dir=resume_dir, identity=identity, callbacks=callbacks,
                     export=export)


def _save(model: SegAnswerModel, out_dir, phase: str, settings: Stage1Settings, steps: int,
          final: dict | None = None) -> Path:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / SUMMARY_FILE, {"phase": phase, "settings": settings.to_dict(), "steps": steps,
                                        "final": final})
    return Path(out_dir)


def _bounds(pixels: PixelBounds | None) -> dict | None:
    """Pixel bounds as plain values: they travel in the phase's start record (pickled to
    workers, part of the resume identity)."""
    return None if pixels is None else dataclasses.asdict(pixels)


def train_stage1_projector(qwen_dir, sam2_path, rows: Sequence[dict], out_dir,
                           settings: Stage1Settings | dict | None = None, log_path=None,
                           sam2_config_name: str | None = None, sam2_overrides=None, resume_dir=None,
                           candidates_dir=None, pixels: PixelBounds | None = None) -> Path:
    """Phase a from the base models; writes a SegAnswer checkpoint to `out_dir` (atomic).
    With `resume_dir`, a stopped run continues from its last saved step; with
    `candidate_every`, the candidates go to `candidates_dir`. pixels: the processor's
    resize bounds (None: the Qwen directory's own), saved with the checkpoint."""
    s = settings if isinstance(settings, Stage1Settings) else Stage1Settings.from_dict(settings or {}, "a")
    start = {"qwen": str(qwen_dir), "sam2": str(sam2_path), "sam2_config_name": sam2_config_name,
             "sam2_overrides": sam2_overrides, "pixels": _bounds(pixels)}
    return _run_phase("a", start, rows, out_dir, s, log_path, resume_dir, candidates_dir)


def train_stage1_lora(phase_a_dir, rows: Sequence[dict], out_dir, settings: Stage1Settings | dict | None = None,
                      log_path=None, resume_dir=None, candidates_dir=None, pixels: PixelBounds | None = None) -> Path:
    """Phase b from phase a's checkpoint; writes an unmerged (base + lora/) checkpoint to `out_dir`.
    With `resume_dir`, a stopped run continues from its last saved step; with
    `candidate_every`, the candidates go to `candidates_dir`. pixels: as for phase a
    (None: phase a's checkpoint's)."""
    s = settings if isinstance(settings, Stage1Settings) else Stage1Settings.from_dict(settings or {}, "b")
    return _run_phase("b", {"phase_a": str(phase_a_dir), "pixels": _bounds(pixels)}, rows, out_dir, s, log_path,
                      resume_dir, candidates_dir)


def processes(settings) -> int:
    """Processes a stage trains with: `settings.processes`, else one per GPU of the job (one on CPU)."""
    if settings.processes:
        return int(settings.processes)
    return max(1, visible_gpu_count()) if resolve_device(settings.device) == "cuda" else 1


def _run_phase(phase: str, start: dict, rows, out_dir, s: Stage1Settings, log_path, resume_dir,
               candidates_dir=None) -> Path:
    """One phase in this process, or with several processes one per GPU (DDP, the same global
    batch of `processes` x batch_size rows): torchrun workers each run `_phase_worker`.
    Without `resume_dir` a scratch one holds the state (and the candidates) while it runs;
    inside a launch every rank must be given the same one."""
    n = processes(s)
    scratch = resume_dir is None and not launched()
    resume = scratch_resume_dir() if scratch else resume_dir
    if n == 1 or launched():
        _phase_worker(phase, start, rows, str(out_dir), s, log_path, resume, candidates_dir)
        finish(resume, scratch)
        return Path(out_dir)
    job = Path(out_dir).with_name(Path(out_dir).name + ".job.pkl")
    run_resumable(job, n, "reproseg.seganswer.stage1:_phase_worker", resume, phase=phase, start=start, rows=rows,
                  out_dir=str(out_dir), s=dataclasses.replace(s, processes=n),
                  log_path=None if log_path is None else str(log_path), resume_dir=str(resume),
                  candidates_dir=None if candidates_dir is None else str(candidates_dir))
    finish(resume, scratch)
    return Path(out_dir)


def _phase_worker(phase: str, start: dict, rows, out_dir: str, s: Stage1Settings, log_path, resume_dir,
                  candidates_dir=None) -> None:
    """Builds the phase's starting model on this process's device, trains it, and (rank 0)
    writes the checkpoint and collects the candidates."""
    device = resolve_device(s.device)
    if device == "cuda" and launched():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    pixels = None if start["pixels"] is None else PixelBounds(**start["pixels"])
    if phase == "a":
        model = SegAnswerModel.from_base(start["qwen"], start["sam2"], start["sam2_config_name"],
                                         start["sam2_overrides"], seed=s.seed, dtype=s.dtype, device=device,
                                         pixels=pixels)
        identity = {"qwen": folder_identity(start["qwen"]), "sam2": folder_identity(start["sam2"])}
    else:
        model = SegAnswerModel.from_pretrained(start["phase_a"], dtype=s.dtype, device=device, pixels=pixels)
        identity = {"phase_a": folder_identity(start["phase_a"])}
    identity["pixels"] = start["pixels"]
    def export(target: Path, step: int) -> None:
        # DDP keeps every rank's weights equal: rank 0 writes them
        if is_main_process():
            _save(model, target, phase, s, step)

    log = train_phase(model, rows, phase, s, log_path, resume_dir, identity, export=export)
    if is_main_process():
        _save(model, out_dir, phase, s, len(log), log[-1] if log else None)
        if candidates_dir is not None:
            collect_candidates(resume_dir, out_dir, candidates_dir, log[-1]["step"] if log else 0)
