"""Val scores of LPR and GSE policy candidates (rules select_lpr and select_gse).

Each candidate answers every val record once, greedily, in its training format (LPR on
a crop placed as in training, GSE on the whole frame with the centred region as its
target: the retrospective regions exist for the training split only), and is scored with
the stage's FineRS reward terms under the run's reward profile. The val metrics are the
terms' means and `total`, the sum of the terms the stage trains on (Dr. Seg's rewards
are left out: the ranked reward depends on its history, so it cannot compare two
policies).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from ..rl.rewards_finers import TERMS
from ..selection import SelectionSettings, select
from .regions import crop_covering, to_gse
from .rewards import profile_for, reward_functions
from .samples import gse_training_rows, look_enabled, lpr_training_rows

log = logging.getLogger(__name__)


def val_metrics(stage: str) -> tuple[str, ...]:
    return (*TERMS[stage], "total")


def val_samples(stage: str, rows: list[dict], images_root: str, cfg: dict) -> list[dict]:
    look = look_enabled(cfg, stage)
    if stage == "lpr":
        return lpr_training_rows(rows, images_root, cfg, seed=cfg["lpr"]["grpo"].get("seed", 0), look=look)
    # The retrospective search's centred region (the one it falls back on).
    centred = {r["id"]: to_gse(crop_covering(r["box"], r["width"], r["height"], cfg["lpr_crop"], None),
                               r["width"], r["height"], cfg["gse_size"]) for r in rows}
    return gse_training_rows(rows, centred, images_root, cfg, look=look)


def score_completions(stage: str, completions: list[str], samples: list[dict], cfg: dict) -> dict[str, float]:
    """Mean of every reward term over the samples, and `total` over the trained terms."""
    fns = reward_functions(stage, profile_for(cfg["reward_profile"], cfg.get("region_size", 256)))
    columns = {k: [s.get(k) for s in samples] for k in ("qtype", "answer", "bbox", "points", "region")}
    scores, trained = {}, set(TERMS[stage]) - set(cfg[stage].get("disabled_rewards", []))
    per_term = {}
    for name, fn in fns.items():
        term = name.split("/", 1)[1]
        per_term[term] = fn(completions, **{k: v for k, v in columns.items() if any(x is not None for x in v)})
        scores[term] = sum(per_term[term]) / len(completions)
    totals = [sum(per_term[t][i] for t in per_term if t in trained) for i in range(len(completions))]
    scores["total"] = sum(totals) / len(completions)
    return scores


def score_policy(policy_dir: Path, stage: str, samples: list[dict], cfg: dict, batch_size: int,
                 max_new_tokens: int) -> dict[str, float]:
    from .generation import Policy   # torch: kept out of the Snakefile's parse

    policy = Policy(str(policy_dir))
    texts = []
    for i in tqdm(range(0, len(samples), batch_size), desc=f"val {policy_dir.name}", unit="batch", mininterval=10):
        chunk = samples[i:i + batch_size]
        texts += policy.generate([s["image"] for s in chunk], [s["prompt"] for s in chunk], max_new_tokens)
    scores = score_completions(stage, texts, samples, cfg)
    log.info("%s: %s", policy_dir.name, {k: round(v, 4) for k, v in scores.items()})
    return scores


def select_stage(stage: str, val_split: str, images_root: str, candidates: str, out_dir: str,
                 selection_json: str, cfg: dict) -> dict:
    """Scores every candidate on the val split and links the chosen one to `out_dir`."""
    settings = SelectionSettings(**cfg["selection"][stage])
    settings.check_metric(val_metrics(stage), f"finers.selection.{stage}")
    score = None
    if settings.metric is not None:
        rows = pq.read_table(val_split).to_pylist()
        if not rows:
            raise ValueError(f"{val_split}: the val split is empty; checkpoint selection needs val records")
        samples = val_samples(stage, rows, images_root, cfg)
        batch, tokens = cfg["selection"]["batch_size"], cfg["selection"]["max_new_tokens"]

        def score(path):
            return score_policy(path, stage, samples, cfg, batch, tokens)
    selection = select(candidates, score, settings, out_dir, selection_json, split="val")
    log.info("chosen: step %d of %d candidates", selection["chosen"]["step"], len(selection["candidates"]))
    return {"selection": selection}
