"""Supervised training of a SAM 2.1 model on (image, box + points, mask) examples.

The papers use the released SAM 2.1 frozen; the embedded default's tiny SAM 2.1 is
random, so without this its masks would say nothing about the boxes LPR predicts. The
forward pass is `SAM2ImagePredictor.predict`'s own, with gradients: the predictor's
transforms, the box as the two corner points (labels 2, 3) before the positive points
(label 1), one mask (multimask off, as FineRS's inference asks), and the predictor's
bilinear upsampling to the crop. The loss is SAM 2's: focal and dice on the mask, 20:1.
One process (world size 1 in its log), whatever the training family's processes: a loop
of its own, not the Trainer, that only the embedded default's tiny SAM 2.1 runs, each step
a few mask-decoder passes on the frozen encoder's features. Resumable as the Trainer
stages are: its state (trained weights, optimizer, schedule, sampling order and RNG, the
log so far) is saved every `save_steps` steps and when SIGTERM / SIGUSR1 or the stop file
comes (then TrainingInterrupted, exit 143), and a retry continues from the newest state
that loads, ending where an uninterrupted run ends. Examples may hold an ImageRef
and a MaskCrop instead of decoded arrays (decoded per batch), and the features are kept in
a bounded cache (`feature_cache_mb`), so that memory follows the batch, not the data.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import dataclass_from_dict
from ..data.images import as_image
from ..data.masks import MaskCrop
from ..io_atomic import atomic_dir, atomic_path, write_json, write_parquet
from ..runs import (STOP_FILE, StopSignal, TrainingInterrupted, check_or_write_manifest, trajectory_settings,
                    write_checkpoint_time)
from .sam_loading import load_sam2_predictor
from .sam_features import SamFeatureCache
from .tiny_bundle import SAM2_CHECKPOINT_FILE, SAM2_CONFIG_FILE

log = logging.getLogger(__name__)


@dataclass
class SAM2Settings:
    learning_rate: float = 1e-3
    max_steps: int = 200
    batch_size: int = 8
    seed: int = 0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    feature_cache_mb: float = 256.0   # encoder features kept for examples seen again (about 1 MB each at 256 px)
    save_steps: int = 50              # a resume state every save_steps steps (and on SIGTERM / SIGUSR1)

    @classmethod
    def from_dict(cls, d: dict) -> "SAM2Settings":
        return dataclass_from_dict(cls, d, "SAM2 warm-up")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sigmoid focal loss, mean over pixels (SAM 2's training loss)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    return 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)


def example_image(e: dict) -> np.ndarray:
    """An example's picture (HxWx3 uint8), decoded here when it is an ImageRef or a path."""
    return np.asarray(as_image(e["image"]))


def example_mask(e: dict) -> np.ndarray:
    """An example's mask (HxW bool), decoded here when it is a MaskCrop."""
    return e["mask"].decode() if isinstance(e["mask"], MaskCrop) else e["mask"]


@torch.no_grad()
def image_features(predictor, images: Sequence[np.ndarray], batch_size: int = 8) -> list[list[torch.Tensor]]:
    """Per image, the encoder's feature maps [high-res..., embedding] (as set_image_batch
    computes them). The encoder stays frozen: it is most of SAM 2's compute."""
    model, tf = predictor.model, predictor._transforms
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([tf(im) for im in chunk]).to(predictor.device)
        _, feats, _, _ = model._prepare_backbone_features(model.forward_image(x))
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).view(len(chunk), -1, *s)
                for f, s in zip(feats[::-1], predictor._bb_feat_sizes[::-1])][::-1]
        out += [[m[i:i + 1] for m in maps] for i in range(len(chunk))]
    return out


def mask_logits(predictor, feats: list[list[torch.Tensor]], hws: Sequence[tuple[int, int]], boxes, points
                ) -> list[torch.Tensor]:
    """Per example, mask logits (H, W) at its image's size from its features, with gradients
    through the prompt encoder and the mask decoder (the predictor's own prompt path). The
    examples of one image size and point count go through the decoder as one batch, as
    SAM2ImagePredictor.predict_batch would run them."""
    model, tf = predictor.model, predictor._transforms
    groups: dict[tuple, list[int]] = {}
    for j, (hw, p) in enumerate(zip(hws, points)):
        groups.setdefault((tuple(hw), len(p)), []).append(j)
    out: list[torch.Tensor | None] = [None] * len(feats)
    for (hw, n), idx in groups.items():
        dev = feats[idx[0]][-1].device
        box_t = torch.stack([tf.transform_boxes(torch.as_tensor(boxes[j], dtype=torch.float, device=dev),
                                                normalize=True, orig_hw=hw).reshape(2, 2) for j in idx])
        pts = torch.stack([tf.transform_coords(torch.as_tensor(points[j], dtype=torch.float, device=dev),
                                               normalize=True, orig_hw=hw).reshape(n, 2) for j in idx])
        labels = torch.tensor([[2, 3] + [1] * n] * len(idx), dtype=torch.int, device=dev)
        sparse, dense = model.sam_prompt_encoder(points=(torch.cat([box_t, pts], dim=1), labels), boxes=None,
                                                 masks=None)
        levels = len(feats[idx[0]])
        maps = [torch.cat([feats[j][k] for j in idx]) for k in range(levels)]
        low, _, _, _ = model.sam_mask_decoder(
            image_embeddings=maps[-1], image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            repeat_image=False, high_res_features=maps[:-1])
        masks = tf.postprocess_masks(low, hw)
        for k, j in enumerate(idx):
            out[j] = masks[k, 0]
    return out


class ExampleFeatures:
    """Encoder features of examples by index: from `cache`, or computed for the missing ones of
    a batch at once (and cached). `tag` keeps two sets of examples apart in one cache."""

    def __init__(self, predictor, examples: Sequence[dict], cache: SamFeatureCache, tag: bytes = b""):
        self.predictor, self.examples, self.cache, self.tag = predictor, examples, cache, tag

    def __call__(self, indices: Sequence[int]) -> list[list[torch.Tensor]]:
        keys = [self.tag + int(i).to_bytes(8, "little") for i in indices]
        found = [self.cache.get(k) for k in keys]
        todo = [j for j, f in enumerate(found) if f is None]
        if todo:
            new = image_features(self.predictor, [example_image(self.examples[indices[j]]) for j in todo])
            for j, f in zip(todo, new):
                found[j] = f
                self.cache.put(keys[j], f)
        return found


def mean_iou(predictor, examples: Sequence[dict], feats: ExampleFeatures | None = None, batch_size: int = 8) -> float:
    """Mean mask IoU of the thresholded predictions (logit > 0, the predictor's threshold),
    features a batch at a time from `feats` (default: computed, not kept)."""
    ious = []
    feats = feats or ExampleFeatures(predictor, examples, SamFeatureCache(0))
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            idx = list(range(start, min(start + batch_size, len(examples))))
            batch = [examples[i] for i in idx]
            gts = [example_mask(e) for e in batch]
            logits = mask_logits(predictor, feats(idx), [g.shape for g in gts], [e["box"] for e in batch],
                                 [e["points"] for e in batch])
            for gt, lg in zip(gts, logits):
                pred = lg.cpu().numpy() > 0
                union = np.logical_or(pred, gt).sum()
                ious.append(np.logical_and(pred, gt).sum() / union if union else 1.0)
    return float(np.mean(ious)) if ious else math.nan


STATE_PREFIX = "state-"


def _newest_state(resume_dir: Path) -> dict | None:
    """The newest resume state that loads (a file cut off half-written is skipped, named)."""
    states = sorted(resume_dir.glob(f"{STATE_PREFIX}*.pt"), key=lambda p: int(p.stem.split("-")[-1]))
    for path in reversed(states):
        try:
            return torch.load(path, weights_only=False)
        except Exception as exc:  # noqa: BLE001 (any unreadable file is skipped the same way)
            log.warning("SAM2 warm-up: resume state %s does not load (%s); trying the one before", path, exc)
    return None


def _save_state(resume_dir: Path, state: dict) -> None:
    path = resume_dir / f"{STATE_PREFIX}{state['step']:06d}.pt"
    with atomic_path(path) as tmp:   # a state is complete or absent
        torch.save(state, tmp)
    for old in resume_dir.glob(f"{STATE_PREFIX}*.pt"):
        if old != path:
            old.unlink()


def train_sam2(sam2_dir: str | Path, examples: Sequence[dict], settings: SAM2Settings | dict, out_dir: str | Path,
               log_path: str | Path, held_out: Sequence[dict] = (), resume_dir: str | Path | None = None,
               checkpoint_times: str | Path | None = None) -> dict:
    """Trains SAM 2.1's prompt encoder and mask decoder on `examples` ({"image": HxWx3 uint8 or an
    ImageRef, "box": [4], "points": [[x, y], ...], "mask": HxW bool or a MaskCrop}, crop pixel
    coordinates); writes the bundle layout (model.pt + sam2_config.json) to `out_dir` and the
    per-step log. resume_dir: where the resume state goes (None: no resume); it is removed
    once the model is written. checkpoint_times: where each save's seconds and each start's
    (to its first step, the state's loading included) go, as reproseg.runs.CheckpointClock
    writes them."""
    settings = settings if isinstance(settings, SAM2Settings) else SAM2Settings.from_dict(settings)
    if not examples:
        raise ValueError("no SAM2 training examples")
    sam2_dir = Path(sam2_dir)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    predictor = load_sam2_predictor(sam2_dir)
    model = predictor.model
    # one bound for both sets: the held-out features serve the IoU before and after if they fit
    cache = SamFeatureCache(settings.feature_cache_mb)
    feats = ExampleFeatures(predictor, examples, cache, b"train")
    held_feats = ExampleFeatures(predictor, held_out, cache, b"held")
    before = mean_iou(predictor, held_out, held_feats)
    model.train()
    params = [*model.sam_prompt_encoder.parameters(), *model.sam_mask_decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / settings.max_steps)))
    rows = []
    order = rng.permutation(len(examples))
    pos, first = 0, 1
    trained = {k: v for k, v in model.state_dict().items()   # what `params` holds, by name
               if k.startswith(("sam_prompt_encoder.", "sam_mask_decoder."))}
    stop = StopSignal(stop_file=None if resume_dir is None else Path(resume_dir) / STOP_FILE)
    started, resumed_from = time.perf_counter(), None
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        resume_dir.mkdir(parents=True, exist_ok=True)
        (resume_dir / STOP_FILE).unlink(missing_ok=True)
        check_or_write_manifest(resume_dir, {"settings": trajectory_settings(settings), "sam2": str(sam2_dir),
                                             "examples": len(examples)}, True)
        state = _newest_state(resume_dir)
        if state is not None:
            unknown = model.load_state_dict(state["trained"], strict=False).unexpected_keys
            if unknown or set(state["trained"]) != set(trained):
                raise ValueError(f"{resume_dir}: its state holds other parameters than this SAM 2.1's, e.g. "
                                 f"{sorted(set(unknown) | (set(state['trained']) ^ set(trained)))[:3]}")
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            order, pos, rows, first = state["order"], state["pos"], state["rows"], state["step"] + 1
            resumed_from = str(resume_dir / f"{STATE_PREFIX}{state['step']:06d}.pt")
            log.info("SAM2 warm-up: resumed after step %d", state["step"])

    def clock(row: dict, fresh: bool = False) -> None:
        if checkpoint_times is not None:
            write_checkpoint_time(checkpoint_times, row, fresh)

    def save(step: int) -> None:
        t0 = time.perf_counter()
        _save_state(resume_dir, {"step": step, "trained": {k: v.detach().clone() for k, v in trained.items()},
                                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                 "order": order, "pos": pos, "rows": rows})
        clock({"event": "save", "step": step, "seconds": round(time.perf_counter() - t0, 4)})

    clock({"event": "start", "resumed_from": resumed_from, "step": first - 1,
           "seconds": round(time.perf_counter() - started, 4)}, fresh=resumed_from is None)

    with stop:
        for step in tqdm(range(first, settings.max_steps + 1), desc="SAM2 warm-up", mininterval=5):
            idx = []
            while len(idx) < settings.batch_size:
                if pos == len(order):
                    order, pos = rng.permutation(len(examples)), 0
                idx.append(order[pos])
                pos += 1
            batch = [examples[i] for i in idx]
            masks = [example_mask(e) for e in batch]
            logits = mask_logits(predictor, feats(idx), [m.shape for m in masks], [e["box"] for e in batch],
                                 [e["points"] for e in batch])
            focal, dice = [], []
            for mask, lg in zip(masks, logits):
                target = torch.as_tensor(mask, dtype=torch.float32, device=lg.device)[None]
                focal.append(focal_loss(lg[None], target))
                dice.append(dice_loss(lg[None], target))
            focal_t, dice_t = torch.cat(focal).mean(), torch.cat(dice).mean()
            loss = settings.focal_weight * focal_t + settings.dice_weight * dice_t
            opt.zero_grad()
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            opt.step()
            sched.step()
            rows.append({"step": step, "loss": loss.item(), "focal": focal_t.item(), "dice": dice_t.item(),
                         "grad_norm": grad_norm, "learning_rate": float(sched.get_last_lr()[0]), "world_size": 1,
                         "wall_time": time.time()})
            if resume_dir is None or step == settings.max_steps:
                continue
            if stop.requested():
                save(step)
                raise TrainingInterrupted(step, str(resume_dir))
            if step % settings.save_steps == 0:
                save(step)
    model.eval()
    after = mean_iou(predictor, held_out, held_feats)
    write_parquet(log_path, pa.Table.from_pylist(rows))
    summary = {"settings": asdict(settings), "world_size": 1, "examples": len(examples), "held_out": len(held_out),
               "held_out_iou_before": before, "held_out_iou_after": after,
               "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"]}
    meta = json.loads((sam2_dir / SAM2_CONFIG_FILE).read_text())
    with atomic_dir(out_dir) as tmp:
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, tmp / SAM2_CHECKPOINT_FILE)
        write_json(tmp / SAM2_CONFIG_FILE, {**meta, "checkpoint": SAM2_CHECKPOINT_FILE})
        write_json(tmp / "sam2_warmup_summary.json", summary)
    if resume_dir is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    log.info("SAM2 warm-up: %s", json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    return summary
