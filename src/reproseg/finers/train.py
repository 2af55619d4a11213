"""Rules train_lpr and train_gse: GRPO on the project's engine, then training curves."""
from __future__ import annotations

import logging
import os

import pyarrow.parquet as pq

from ..curves import plot_curves
from ..grpo.launch import run_distributed
from ..runs import run_dir_of
from .rewards import add_reward_columns, stage_reward_functions, stage_reward_weights
from .samples import gse_training_rows, look_enabled, lpr_training_rows

log = logging.getLogger(__name__)


def _train(stage: str, policy: str, rows: list[dict], cfg: dict, terms: dict, checkpoint: str, train_log: str,
           curves: str, processes: int | None) -> None:
    stage_cfg = cfg[stage]
    fns = stage_reward_functions(stage, cfg, terms)
    settings = {**stage_cfg["grpo"], "reward_weights": stage_reward_weights(stage, cfg, fns)}
    add_reward_columns(stage, cfg, rows)
    log.info("%s: %d samples, rewards %s, weights %s", stage, len(rows), list(fns), settings["reward_weights"])
    # The engine keeps its resume state, and the step log, in the run dir under names that
    # are not rule outputs, so Snakemake does not delete them when an attempt fails; a
    # retried attempt resumes both. The final checkpoint goes to <run dir>/checkpoint.
    run_dir = run_dir_of(checkpoint)
    work_log = run_dir / "train_log.inprogress.parquet"
    # `processes` workers (torchrun; None: one per GPU of this job) when above one; in-process otherwise.
    run_distributed(run_dir / "job.pkl", num_gpus=processes, policy_dir=policy, dataset_rows=rows, reward_fns=fns,
                    settings=settings, out_dir=run_dir, log_path=work_log)
    os.replace(work_log, train_log)
    plot_curves(train_log, curves, title=f"{stage.upper()} GRPO")


def train_lpr_stage(train_split: str, images_root: str, policy: str, checkpoint: str, train_log: str, curves: str,
                    cfg: dict, terms: dict, processes: int | None = None) -> None:
    """terms: the LPR reward terms (reproseg.finers.lpr_rewards.TERMS); processes: the training
    processes (None: one per GPU of the job)."""
    rows = pq.read_table(train_split).to_pylist()
    samples = lpr_training_rows(rows, images_root, cfg, seed=cfg["lpr"]["grpo"]["seed"], look=look_enabled(cfg, "lpr"))
    _train("lpr", policy, samples, cfg, terms, checkpoint, train_log, curves, processes)


def train_gse_stage(train_split: str, regions: str, images_root: str, policy: str, checkpoint: str,
                    train_log: str, curves: str, cfg: dict, terms: dict, processes: int | None = None) -> None:
    """terms: the GSE reward terms (reproseg.finers.gse_rewards.TERMS); processes: as for LPR."""
    rows = pq.read_table(train_split).to_pylist()
    chosen = {r["id"]: r["region_gse"] for r in pq.read_table(regions).to_pylist() if r["chosen"]}
    missing = [r["id"] for r in rows if r["id"] not in chosen]
    if missing:
        raise ValueError(f"{regions}: no chosen region for {len(missing)} training sample(s), e.g. {missing[:5]}")
    samples = gse_training_rows(rows, chosen, images_root, cfg, look=look_enabled(cfg, "gse"))
    _train("gse", policy, samples, cfg, terms, checkpoint, train_log, curves, processes)
