"""A GRPO job over every GPU of one (Slurm) job: `train_grpo` once per GPU (reproseg.launch),
with a stop request passed on to the workers and raised here as TrainingInterrupted."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from reproseg.grpo.engine import RESUME_DIR, STOP_FILE, TrainingInterrupted, completed_checkpoints, train_grpo
from reproseg.launch import TARGET_KEY, ignore_usr1, launch_command, visible_gpu_count, write_job

TRAIN_TARGET = "reproseg.grpo.engine:train_grpo"


def run_distributed(
    job_path: str | os.PathLike,
    num_gpus: int | None = None,
    launcher: str = "torchrun",
    **train_kwargs,
) -> None:
    """`train_grpo(**train_kwargs)` with one process per GPU; in this process for one GPU or CPU.

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
        train_grpo(**train_kwargs)
        return
    stop_file = Path(train_kwargs["out_dir"]) / RESUME_DIR / STOP_FILE
    stop_file.unlink(missing_ok=True)
    write_job(job_path, **{TARGET_KEY: TRAIN_TARGET}, **train_kwargs)
    cmd = launch_command(job_path, n, launcher=launcher)
    proc = subprocess.Popen(cmd, preexec_fn=ignore_usr1)
    received: list[int] = []

    def stop_workers():
        # torchrun puts each worker in a process group of its own, so signals from
        # here would reach torchrun only; the workers poll this file every step.
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    def forward(signum, frame):
        received.append(signum)
        stop_workers()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                # The rank-0 worker removes a stale stop file when it starts, so a
                # request made during start-up is repeated until the workers are gone.
                if received:
                    stop_workers()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if rc == 0:
        return  # finished; a stop request that came at the very end changes nothing
    if received:
        done = completed_checkpoints(Path(train_kwargs["out_dir"]) / RESUME_DIR)
        step = int(done[-1].name.rsplit("-", 1)[-1]) if done else 0
        raise TrainingInterrupted(step, str(done[-1]) if done else "(no checkpoint yet)")
    raise subprocess.CalledProcessError(rc, cmd)
