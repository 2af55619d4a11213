"""Rule warmup_policy: teach a tiny random policy FineRS's answer formats before GRPO.

The papers start GRPO from Qwen2.5-VL-7B-Instruct, which already writes the requested
JSON; a random tiny policy never does, so every reward would be 0 and no group would
carry a gradient. This short supervised warm-up on the training split's ground truth,
in both stages' formats (LPR: box + two points + response on a crop; GSE: a region of
region_size around the object + response on the whole frame), stands in for that
instruction tuning. Only the embedded default runs it (finers.warmup.enabled); the paper
configuration starts from the released model. The warm-up policy is also the
"untrained" reference of the tables: what GRPO adds is measured against it.

The tiny SAM 2.1 is random as well, so rule warmup_sam2 trains it on the same split's
crops, prompted as inference prompts it (box + both GT points, crop pixels): the stand-in
for SAM 2.1's own pre-training. Trained and untrained policies share that SAM 2.1.

The policy warm-up runs on the job's training processes (torchrun, DDP; batch_size per
process). The SAM 2.1 warm-up stays one process (reproseg.models.sam2_warmup).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..curves import plot_curves
from ..data.images import ImageRef
from ..data.masks import MaskCrop
from ..models.sam2_warmup import train_sam2
from ..models.sft import launch_sft, train_sft
from ..models.tiny_bundle import SAM2_CONFIG_FILE
from ..runs import run_dir_of
from .regions import crop_covering, to_gse
from .rewards import stage_profile
from .samples import gse_prompt, gse_view, gt_points, lpr_sample, row_rng

log = logging.getLogger(__name__)

THINK = "Looking at the scene."
# Dr. Seg's Look-to-Confirm prompt asks for a <look> block inside <think>; every
# LOOK_EVERY-th record also gets that prompt and answer, so the Dr. Seg experiments
# start from a policy that writes one.
LOOK = "A small object stands out here."
LOOK_EVERY = 3
SAM2_RESUME_DIR = "sam2_resume"
SAM2_CHECKPOINT_TIMES = "sam2_checkpoint_times.jsonl"   # beside the policy warm-up's checkpoint_times.jsonl


def _ints(values) -> list[int]:
    return [int(round(v)) for v in values]


def answer_text(answer: dict, look: bool = False) -> str:
    """A completion in the template's format: a think block (with a <look> block for the
    Look-to-Confirm prompt), then the answer JSON."""
    think = f"<look>{LOOK}</look> {THINK}" if look else THINK
    return f"<think>{think}</think><answer>{json.dumps(answer)}</answer>"


def lpr_target(sample: dict, look: bool = False) -> str:
    p1, p2 = sample["points"]
    return answer_text({"bbox": _ints(sample["bbox"]), "points_1": _ints(p1), "points_2": _ints(p2),
                        "response": sample["answer"]}, look)


def gse_target(region: list[float], answer: str, key: str = "region") -> str:
    """key: the JSON key of the region, the one the reward profile's GSE terms read
    (RewardProfile.gse_box_key: the paper's `region`, the authors' `bbox`)."""
    return answer_text({key: _ints(region), "response": answer})


def warmup_examples(rows: list[dict], images_root: str, cfg: dict, seed: int) -> list[dict]:
    """Two examples per record: LPR on a crop at a random offset that covers the box, and
    GSE on the whole frame with a region_size region centred on the object; every
    LOOK_EVERY-th record adds the LPR example under the Look-to-Confirm prompt."""
    out = []
    side = cfg["lpr_crop"]
    gse_key = stage_profile("gse", cfg).gse_box_key
    for i, row in enumerate(rows):
        image = ImageRef(str(images_root), row["image_path"])
        crop = crop_covering(row["box"], row["width"], row["height"], side, row_rng(seed, row["id"]))
        s = lpr_sample(row, image, crop, cfg)
        out.append({"image": s["image"], "prompt": s["prompt"], "target": lpr_target(s), "id": row["id"]})
        if i % LOOK_EVERY == 0:
            looked = lpr_sample(row, image, crop, cfg, look=True)
            out.append({"image": looked["image"], "prompt": looked["prompt"], "target": lpr_target(looked, True),
                        "id": row["id"]})
        # The region in original pixels is lpr_crop wide: region_size at the GSE size.
        region = to_gse(crop_covering(row["box"], row["width"], row["height"], side, None),
                        row["width"], row["height"], cfg["gse_size"])
        out.append({"image": gse_view(images_root, row["image_path"], cfg), "prompt": gse_prompt(row, cfg),
                    "target": gse_target(region, s["answer"], gse_key), "id": row["id"]})
    return out


def warmup_stage(train_split: str, val_split: str, images_root: str, policy: str, checkpoint: str,
                 train_log: str, curves: str, cfg: dict, processes: int | None = None) -> None:
    """processes: the training processes (None: one per GPU of the job, one on CPU); with
    several, each torchrun worker builds the examples from the splits (no decoded images
    in the job file) and trains its share of every batch."""
    run_dir = run_dir_of(checkpoint)
    summary = launch_sft("reproseg.finers.warmup:train_policy", processes, train_split=train_split,
                         val_split=val_split, images_root=images_root, policy=policy, run_dir=str(run_dir),
                         train_log=train_log, cfg=cfg)
    log.info("warm-up on %d process(es): target loss on val %.3f before, %.3f after", summary["world_size"],
             summary["held_out_loss_before"], summary["held_out_loss_after"])
    plot_curves(train_log, curves, title="Format warm-up (SFT)", kind="sft")


def train_policy(train_split: str, val_split: str, images_root: str, policy: str, run_dir: str, train_log: str,
                 cfg: dict) -> None:
    """The warm-up's training, in this process or in each worker of a launch."""
    warm = cfg["warmup"]
    seed = warm["seed"]
    train = warmup_examples(pq.read_table(train_split).to_pylist(), images_root, cfg, seed)
    val = warmup_examples(pq.read_table(val_split).to_pylist(), images_root, cfg, seed)
    log.info("warm-up: %d training examples, %d val examples", len(train), len(val))
    settings = {k: v for k, v in warm.items() if k not in ("enabled", "seed", "sam2")}
    train_sft(policy, train, {**settings, "seed": seed}, run_dir, train_log, held_out=val)


def sam2_examples(rows: list[dict], images_root: str, cfg: dict, seed: int, box_jitter: float) -> list[dict]:
    """One example per record: an lpr_crop crop covering the object at a random offset, at
    original resolution (as inference segments it), the GT box jittered by up to
    `box_jitter` of its size (LPR's boxes are not exact), the GT points and the GT mask."""
    out = []
    side = cfg["lpr_crop"]
    for row in rows:
        rng = row_rng(seed + 1, row["id"])
        x0, y0, x1, y1 = (int(round(v)) for v in crop_covering(row["box"], row["width"], row["height"], side, rng))
        bx0, by0, bx1, by1 = row["box"]
        w, h = bx1 - bx0, by1 - by0
        jitter = rng.uniform(-box_jitter, box_jitter, 4) * np.array([w, h, w, h])
        box = [bx0 - x0 + jitter[0], by0 - y0 + jitter[1], bx1 - x0 + jitter[2], by1 - y0 + jitter[3]]
        points = [[p[0] - x0, p[1] - y0] for p in gt_points(row, cfg["lpr"]["gt_points"])]
        out.append({"image": ImageRef(str(images_root), row["image_path"], (x0, y0, x1, y1)), "box": box,
                    "points": points,
                    "mask": MaskCrop((row["height"], row["width"]), row["rle_counts"], (x0, y0, x1, y1))})
    return out


def warmup_sam2_stage(train_split: str, val_split: str, images_root: str, sam2: str, out_dir: str,
                      train_log: str, curves: str, cfg: dict) -> None:
    if not (Path(sam2) / SAM2_CONFIG_FILE).is_file():
        raise ValueError(f"finers.warmup trains the tiny bundle's SAM 2.1 (a folder with {SAM2_CONFIG_FILE}); "
                         f"{sam2} is not one: set finers.warmup.enabled false for released weights")
    warm = dict(cfg["warmup"]["sam2"])
    seed, jitter = cfg["warmup"]["seed"], float(warm.pop("box_jitter"))
    train = sam2_examples(pq.read_table(train_split).to_pylist(), images_root, cfg, seed, jitter)
    val = sam2_examples(pq.read_table(val_split).to_pylist(), images_root, cfg, seed, jitter)
    # The resume state beside the output folder, which Snakemake deletes when a job fails.
    summary = train_sam2(sam2, train, {**warm, "seed": seed}, out_dir, train_log, held_out=val,
                         resume_dir=Path(out_dir).parent / SAM2_RESUME_DIR,
                         checkpoint_times=Path(out_dir).parent / SAM2_CHECKPOINT_TIMES)
    log.info("SAM2 warm-up mask IoU on val: %.3f before, %.3f after",
             summary["held_out_iou_before"], summary["held_out_iou_after"])
    plot_curves(train_log, curves, title="SAM 2.1 warm-up (box + point prompts)", kind="sft")
