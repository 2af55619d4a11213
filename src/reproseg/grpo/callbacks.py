"""Trainer callbacks of the GRPO engine: the per-step Parquet log, stateful-reward flushes,
and a clean stop with a full checkpoint when the job is told to end (Slurm's SIGTERM).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback

from reproseg.io_atomic import write_parquet

# TRL log key -> column in the engine's log. Missing keys become NaN: TRL logs no "kl"
# when beta is 0, and the rollout's columns (rewards, lengths, zero-std) only on the
# first optimizer step of each rollout batch. The log's other steps of that batch train on
# the same completions, so their rows repeat the batch's rollout columns (ROLLOUT_COLUMNS);
# the column `generated` (1 or 0) says which row rolled out, and a reader counting
# rollouts takes those rows only (reproseg.learning). "clipped_ratio" is TRL's share of
# completions cut at max_completion_length; "clip_ratio*" are shares of completion
# tokens whose probability ratio was clipped (low: below 1 - epsilon with a negative
# advantage, high: above 1 + epsilon_high with a positive one; clip_ratio = both).
_LOG_COLUMNS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "entropy": "entropy",
    "completions/mean_length": "completion_length_mean",
    "completions/clipped_ratio": "clipped_ratio",
    "engine/frac_zero_std": "frac_zero_std",
    "frac_reward_zero_std": "frac_zero_std_trl",
    "clip_ratio/region_mean": "clip_ratio",
    "clip_ratio/low_mean": "clip_ratio_low",
    "clip_ratio/high_mean": "clip_ratio_high",
    "step_time": "step_time_s",
}


# What a rollout measures, as opposed to what an optimizer step measures (loss, gradient,
# clipped tokens, learning rate, time).
ROLLOUT_COLUMNS = ("reward_mean", "reward_std", "completion_length_mean", "clipped_ratio", "frac_zero_std",
                   "frac_zero_std_trl")


def rollout_columns(reward_names: list[str]) -> list[str]:
    return [*ROLLOUT_COLUMNS, *(f"reward_{n}_{s}" for n in reward_names for s in ("mean", "std"))]


def log_columns(reward_names: list[str]) -> list[str]:
    cols = ["step", "epoch", "generated", "world_size", *_LOG_COLUMNS.values()]
    for name in reward_names:
        cols += [f"reward_{name}_mean", f"reward_{name}_std"]
    return cols + ["wall_time"]


def _number(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


class ParquetLogCallback(TrainerCallback):
    """One row per optimizer step, the whole table rewritten atomically after each step.

    On resume, rows past the resumed step (logged after the checkpoint by a run that
    was then killed) are dropped, so the log matches the weights.
    """

    def __init__(self, path: str | Path, reward_names: list[str], resume_step: int | None):
        self.path = Path(path)
        self.reward_names = list(reward_names)
        self.columns = log_columns(self.reward_names)
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            old = pq.read_table(self.path).to_pylist()
            self.rows = [r for r in old if r.get("step", math.inf) <= resume_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The end-of-training summary ("train_loss") is logged too; step logs carry "loss",
        # and "reward" only on steps that generated.
        if not state.is_world_process_zero or not logs or not ("loss" in logs or "reward" in logs):
            return
        row = {col: _number(logs.get(key)) for key, col in _LOG_COLUMNS.items()}
        for name in self.reward_names:
            row[f"reward_{name}_mean"] = _number(logs.get(f"rewards/{name}/mean"))
            row[f"reward_{name}_std"] = _number(logs.get(f"rewards/{name}/std"))
        row["step"] = int(state.global_step)
        row["epoch"] = _number(state.epoch)
        row["generated"] = 1.0 if "reward" in logs else 0.0
        if not row["generated"]:
            # An update-only step trains on the newest rollout batch: its row states that
            # batch's rollout figures (a resumed run finds them in the kept rows).
            last = next((r for r in reversed(self.rows) if r["step"] < state.global_step and r["generated"]), None)
            if last is not None:
                row.update({c: last[c] for c in rollout_columns(self.reward_names)})
        row["world_size"] = float(args.world_size)  # processes training together (one per GPU)
        row["wall_time"] = time.time()
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        self.write()

    def write(self) -> None:
        schema = pa.schema([(c, pa.int64() if c == "step" else pa.float64()) for c in self.columns])
        table = pa.Table.from_pylist([{c: r.get(c, math.nan) for c in self.columns} for r in self.rows], schema)
        write_parquet(self.path, table)


class RewardStateCallback(TrainerCallback):
    """Calls each stateful reward's `on_step_end()` once per optimizer step.

    `on_step_end` of a callback runs after the optimizer step and before the step's
    checkpoint is saved, so the saved state is the flushed one.
    """

    def __init__(self, rewards: dict):
        self.rewards = rewards

    def on_step_end(self, args, state, control, **kwargs):
        for reward in self.rewards.values():
            reward.on_step_end()


class CandidateCallback(TrainerCallback):
    """Exports the policy every `every` optimizer steps, before the last, as a candidate
    for checkpoint selection (the engine exports the final one itself). `export(step)` is
    set by the engine once the trainer exists; every rank calls it (ZeRO-3 gathers)."""

    def __init__(self, every: int | None):
        self.every = every
        self.export = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.export(state.global_step)
