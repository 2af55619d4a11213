"""Rule drseg_train: GRPO on VisionReasoner's multi-object task, on the project's engine.

One training per variant of `drseg.rewards` (Dr. Seg Tables 4-6): the VisionReasoner
baseline (profile visionreasoner, no Look-to-Confirm, binary accuracy), Dr. Seg (both),
LC-only, DR-only, the raw reward, and queue sizes. The distribution-ranked accuracy is a
StatefulReward: the engine flushes its queue after every optimizer step, gathers it
across GPUs and checkpoints it with the run (reproseg.grpo.trainer), as it does for the
FineRS stages' Dr. Seg option.
"""
from __future__ import annotations

import logging
import os

import pyarrow.parquet as pq

from reproseg.curves import plot_curves
from reproseg.grpo.launch import run_distributed
from reproseg.runs import run_dir_of

from .data import training_rows
from .inference import template_of
from .rewards import monitor_weights, reward_functions

log = logging.getLogger(__name__)


def train_stage(table: str, images_root: str, policy: str, checkpoint: str, train_log: str, curves: str,
                rewards: dict, grpo: dict, policy_size: int, processes: int | None = None) -> None:
    """rewards: drseg.rewards; grpo: drseg.grpo (reproseg.grpo.engine.GRPOSettings)."""
    rows = training_rows(pq.read_table(table), images_root, template_of(rewards), policy_size)
    if not rows:
        raise ValueError(f"{table}: no training rows")
    fns = reward_functions(profile=rewards["profile"], look_to_confirm=rewards["look_to_confirm"],
                           distribution_ranked=rewards["distribution_ranked"], queue_size=rewards["queue_size"],
                           raw_accuracy=rewards["raw_accuracy"])
    # A user's own weight for a monitor wins over the monitor's 0.
    weights = {**monitor_weights(fns, distribution_ranked=rewards["distribution_ranked"]),
               **(grpo.get("reward_weights") or {})}
    grpo = {**grpo, "reward_weights": weights or None}
    log.info("%d samples at %d px, rewards %s, weights %s", len(rows), policy_size, list(fns), weights)
    # The resume state and the in-progress log live in the run dir under names that are
    # not rule outputs, so a retried attempt resumes them (as reproseg.finers.train does).
    run_dir = run_dir_of(checkpoint)
    work_log = run_dir / "train_log.inprogress.parquet"
    run_distributed(run_dir / "job.pkl", num_gpus=processes, policy_dir=policy, dataset_rows=rows, reward_fns=fns,
                    settings=grpo, out_dir=run_dir, log_path=work_log)
    os.replace(work_log, train_log)
    plot_curves(train_log, curves, title="Dr. Seg (VisionReasoner task) GRPO")
