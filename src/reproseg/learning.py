"""Whether each training stage learned: first and last means of its rewards and losses.

`reproseg learning` reads every training log of a run (the engine's `train_log.parquet`,
the SFT logs, the SAM 2.1 warm-up's `sam2_log.parquet`) and prints, per log and quantity,
the mean over the first and over the last `fraction` of its finite points. Finite only:
a GRPO log's other optimizer steps of a rollout batch repeat that batch's rollout figures
(rewards, lengths), so those are read from the rows that generated (column `generated`)
only, each rollout counted once.

A quantity has a direction: rewards, IoU and accuracy should rise, losses fall. A stage
is reported as improving on a quantity when its last mean is on the right side of its
first mean; the figures are printed either way. A GRPO log's loss is left out: the
surrogate's value (advantage-weighted, zero-mean per group) says nothing of learning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

# Log names the runs write (reproseg.runs, reproseg.finers.warmup, reproseg.seganswer).
LOG_NAMES = ("train_log.parquet", "sam2_log.parquet", "train_log.seganswer.parquet")
# Quantities that should fall; every other reported one should rise.
_LOWER = {"loss", "ce", "focal", "dice", "iou", "obj"}
# Quantities reported, beside every reward term (`reward_<term>_mean`).
_REPORTED = ("reward_mean", "loss", "ce", "focal", "dice", "mask_iou", "acc_mean", "format_mean", "total_mean")


@dataclass
class Trend:
    log: str
    quantity: str
    points: int            # finite values in the log
    first: float           # mean of the first `fraction` of them (at least one)
    last: float            # mean of the last `fraction` of them
    higher_is_better: bool

    @property
    def improved(self) -> bool:
        return self.last > self.first if self.higher_is_better else self.last < self.first


def _reported(column: str) -> bool:
    if column in _REPORTED:
        return True
    return column.startswith("reward_") and column.endswith("_mean")


def trends(path: str | Path, fraction: float = 0.25) -> list[Trend]:
    """The reported quantities of one log, in its column order; a column without a finite
    value is left out (TRL logs no KL with beta 0; a term no completion reached)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
    table = pq.read_table(path)
    steps = table.column("step").to_pylist() if "step" in table.column_names else list(range(table.num_rows))
    grpo = "reward_mean" in table.column_names
    generated = (table.column("generated").to_pylist() if "generated" in table.column_names
                 else [1.0] * table.num_rows)
    out = []
    for column in table.column_names:
        if not _reported(column) or (grpo and column == "loss"):
            continue
        # Rollout figures (every reported GRPO quantity but the loss) once per rollout.
        keep = generated if grpo else [1.0] * table.num_rows
        pts = [v for _, v, g in sorted(zip(steps, table.column(column).to_pylist(), keep), key=lambda p: p[0])
               if g and v is not None and math.isfinite(v)]
        if not pts:
            continue
        k = max(1, int(len(pts) * fraction))
        out.append(Trend(str(path), column, len(pts), sum(pts[:k]) / k, sum(pts[-k:]) / k,
                         column not in _LOWER))
    return out


def find_logs(results: str | Path) -> list[Path]:
    return sorted(p for name in LOG_NAMES for p in Path(results).rglob(name))


def format_trends(rows: list[Trend]) -> str:
    lines = ["| log | quantity | points | first | last | improved |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r.log} | {r.quantity} | {r.points} | {r.first:.4g} | {r.last:.4g} | "
              f"{'yes' if r.improved else 'no'} |" for r in rows]
    return "\n".join(lines)
