"""A GRPO job over every GPU of one (Slurm) job: `train_grpo` once per GPU (reproseg.launch),
with a stop request passed on to the workers and raised here as TrainingInterrupted."""
from __future__ import annotations

import os
from pathlib import Path

from reproseg.grpo.engine import RESUME_DIR, train_grpo
from reproseg.launch import resolve_target, run_resumable, visible_gpu_count

TRAIN_TARGET = "reproseg.grpo.engine:train_grpo"


def run_distributed(
    job_path: str | os.PathLike,
    num_gpus: int | None = None,
    launcher: str = "torchrun",
    target: str = TRAIN_TARGET,
    **train_kwargs,
) -> None:
    """`train_grpo(**train_kwargs)` with one process per GPU; in this process for one GPU or CPU.

    num_gpus: the processes (one per GPU; several on CPU train over gloo); None: one per
    visible GPU. target: another "module:function" that ends in train_grpo (SegAnswer
    stage 3 binds its trainer class in the worker, as a class made at run time does not
    pickle); it takes the same `settings` and `out_dir`.

    SIGTERM/SIGUSR1 to this process are passed on to the workers through a stop file
    (they save and stop); then TrainingInterrupted is raised here as well, unless the workers had
    already finished. With Slurm, also ask for an early warning, e.g.
    `--signal=USR1@600`, so that a large checkpoint has time to save.
    """
    n = visible_gpu_count() if num_gpus is None else int(num_gpus)
    settings = train_kwargs["settings"]
    deepspeed = settings.deepspeed if hasattr(settings, "deepspeed") else (settings or {}).get("deepspeed")
    # DeepSpeed needs the process-group environment a launcher sets up, even on one GPU.
    if n <= 1 and not (deepspeed and n == 1):
        (train_grpo if target == TRAIN_TARGET else resolve_target(target))(**train_kwargs)
        return
    run_resumable(job_path, n, target, Path(train_kwargs["out_dir"]) / RESUME_DIR, launcher=launcher,
                  **train_kwargs)
