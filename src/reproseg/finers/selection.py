"""Val scores of LPR and GSE policy candidates (rules select_lpr and select_gse).

Each candidate answers every val record once, greedily, in its training format (LPR on
a crop placed as in training, GSE on the whole frame with the centred region as its
target: the retrospective regions exist for the training split only), and is scored with
the stage's FineRS reward terms under the run's reward profile. The val metrics are the
terms' means, `total` (the sum of the terms the stage trains on; Dr. Seg's rewards are
left out: the ranked reward depends on its history, so it cannot compare two policies),
and one continuous localisation score per stage, because the terms are thresholded (a
box scores 1 above IoU 0.5) and a few val records then rarely separate two candidates:
LPR `iou`, the mean IoU of the answer's box with the GT box; GSE `covered`, the mean
share of the GT box inside the answer's region. An answer without a box scores 0.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from ..answers.parsing import parse
from ..data.images import as_image
from ..models.generation import Policy
from ..selection import select_stage as run_selection
from .regions import crop_covering, to_gse
from .reward_terms import FinersTarget, RewardProfile, box_iou, pred_box, total_reward
from .rewards import stage_profile
from .samples import gse_training_rows, look_enabled, lpr_training_rows

log = logging.getLogger(__name__)


# The continuous localisation score of each stage (see the module docstring).
LOCALISATION = {"lpr": "iou", "gse": "covered"}


def val_metrics(stage: str, terms: dict) -> tuple[str, ...]:
    """The names a selection may use: the stage's terms (`terms`, its TERMS), total, and its
    localisation score."""
    return (*terms, "total", LOCALISATION[stage])


def localisation(stage: str, text: str, gt_box, profile: RewardProfile) -> float:
    """LPR: IoU of the answer's box with the GT box; GSE: share of the GT box inside the
    region. The box is read as the profile's reward terms read it (reward_terms.pred_box:
    fences and loose values per profile) and the LPR IoU is the profile's (inclusive
    pixels under reference_code); a score that is not finite (NaN or infinite values read
    loosely) is 0."""
    pred = pred_box(parse(text), profile, "bbox" if stage == "lpr" else profile.gse_box_key)
    if pred is None or gt_box is None:
        return 0.0
    try:
        if stage == "lpr":
            score = float(box_iou(pred, gt_box, profile))
        else:
            ix = max(0.0, min(pred[2], gt_box[2]) - max(pred[0], gt_box[0]))
            iy = max(0.0, min(pred[3], gt_box[3]) - max(pred[1], gt_box[1]))
            area = (gt_box[2] - gt_box[0]) * (gt_box[3] - gt_box[1])
            score = float(ix * iy / area) if area > 0 else 0.0
    except (ArithmeticError, TypeError, ValueError):   # loose values: huge ints, non-numbers
        return 0.0
    return score if math.isfinite(score) else 0.0


def val_samples(stage: str, rows: list[dict], images_root: str, cfg: dict) -> list[dict]:
    look = look_enabled(cfg, stage)
    if stage == "lpr":
        return lpr_training_rows(rows, images_root, cfg, seed=cfg["lpr"]["grpo"]["seed"], look=look)
    # The retrospective search's centred region (the one it falls back on).
    centred = {r["id"]: to_gse(crop_covering(r["box"], r["width"], r["height"], cfg["lpr_crop"], None),
                               r["width"], r["height"], cfg["gse_size"]) for r in rows}
    return gse_training_rows(rows, centred, images_root, cfg, look=look)


def score_completions(stage: str, terms: dict, completions: list[str], samples: list[dict],
                      cfg: dict) -> dict[str, float]:
    """Mean of every reward term over the samples, `total` over the trained terms, and the
    stage's localisation score."""
    profile = stage_profile(stage, cfg)
    trained = set(terms) - set(cfg[stage]["disabled_rewards"])
    sums = dict.fromkeys([*terms, "total", LOCALISATION[stage]], 0.0)
    for text, sample in zip(completions, samples, strict=True):
        parsed = parse(text)
        gt = FinersTarget.from_mapping({k: v for k, v in sample.items()
                                        if k in ("qtype", "answer", "bbox", "points", "region")})
        # Every term is measured, disabled ones too; `total` is what the stage trains on.
        values = total_reward(parsed, gt, terms, profile)
        for name in terms:
            sums[name] += values[name]
        sums["total"] += sum(values[name] for name in trained)
        sums[LOCALISATION[stage]] += localisation(stage, text, sample.get("bbox"), profile)
    return {k: v / len(completions) for k, v in sums.items()}


def score_policy(policy_dir: Path, stage: str, terms: dict, samples: list[dict], cfg: dict, batch_size: int,
                 max_new_tokens: int) -> dict[str, float]:
    policy = Policy(str(policy_dir))
    texts = []
    for i in tqdm(range(0, len(samples), batch_size), desc=f"val {policy_dir.name}", unit="batch", mininterval=10):
        chunk = samples[i:i + batch_size]
        texts += policy.generate([as_image(s["image"]) for s in chunk], [s["prompt"] for s in chunk], max_new_tokens)
    scores = score_completions(stage, terms, texts, samples, cfg)
    log.info("%s: %s", policy_dir.name, {k: round(v, 4) for k, v in scores.items()})
    return scores


def select_stage(stage: str, val_split: str, images_root: str, candidates: str, out_dir: str,
                 selection_json: str, cfg: dict, terms: dict) -> dict:
    """Scores every candidate on the val split and links the chosen one to `out_dir`.
    terms: the stage's reward terms (reproseg.finers.lpr_rewards or gse_rewards TERMS)."""
    def make_score():
        rows = pq.read_table(val_split).to_pylist()
        if not rows:
            raise ValueError(f"{val_split}: the val split is empty; checkpoint selection needs val records")
        samples = val_samples(stage, rows, images_root, cfg)
        batch, tokens = cfg["selection"]["batch_size"], cfg["selection"]["max_new_tokens"]
        return lambda path: score_policy(path, stage, terms, samples, cfg, batch, tokens)

    return run_selection(cfg["selection"][stage], val_metrics(stage, terms), f"finers.selection.{stage}",
                         candidates, out_dir, selection_json, make_score)
