"""Several GPUs in one job: DeepSpeed configs, the launcher command, and the worker entry.

One process per GPU inside one (Slurm) job. The caller's arguments to `train_grpo`
are pickled to a job file; each rank runs `python -m reproseg.rl.engine_launch JOB`.
Reward functions therefore must be picklable by reference (module-level functions or
instances of module-level classes).
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

WORKER_MODULE = "reproseg.rl.engine_launch"


def deepspeed_config(
    stage: int,
    *,
    bf16: bool | str = "auto",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict:
    """A DeepSpeed ZeRO-2 or ZeRO-3 config for the Hugging Face Trainer.

    Batch sizes, accumulation and clipping are "auto": the Trainer fills them from the
    GRPO settings, so the two cannot disagree. bf16 "auto" follows the Trainer's bf16
    flag, which the engine turns on on GPUs only.
    """
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    zero: dict = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=2e8, reduce_scatter=True)
    else:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            sub_group_size=1e9,
            # the final save needs whole 16-bit weights, not per-rank shards
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # the Trainer's torch AdamW is used, not a DeepSpeed optimizer
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def visible_gpu_count(env: dict | None = None) -> int:
    """GPUs this job may use: Slurm's count, else CUDA_VISIBLE_DEVICES, else what torch sees."""
    env = os.environ if env is None else env
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    import torch

    return torch.cuda.device_count()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    job_path: str | os.PathLike,
    num_gpus: int,
    launcher: str | None = "torchrun",
    python: str = sys.executable,
    master_port: int | None = None,
) -> list[str]:
    """The command that runs the worker once per GPU on this node.

    torchrun (the default) leaves CUDA_VISIBLE_DEVICES as Slurm set it and picks a free
    rendezvous port itself (--standalone). The deepspeed launcher rewrites
    CUDA_VISIBLE_DEVICES to 0..N-1, so use it only when the job owns the whole node.
    launcher None: one plain process (one GPU or CPU, no DeepSpeed).
    """
    job = str(job_path)
    num_gpus = max(1, int(num_gpus))
    if launcher is None:
        if num_gpus > 1:
            raise ValueError("several GPUs need a launcher ('torchrun' or 'deepspeed')")
        return [python, "-m", WORKER_MODULE, job]
    if launcher == "torchrun":
        return [
            python, "-m", "torch.distributed.run",
            "--standalone", "--nnodes=1", f"--nproc-per-node={num_gpus}",
            "-m", WORKER_MODULE, job,
        ]
    if launcher == "deepspeed":
        port = master_port or free_port()
        return [
            python, "-m", "deepspeed.launcher.runner",
            "--num_gpus", str(num_gpus), "--master_port", str(port),
            "--module", WORKER_MODULE, job,
        ]
    raise ValueError(f"launcher must be 'torchrun' or 'deepspeed', got {launcher!r}")


def write_job(job_path: str | os.PathLike, **train_kwargs) -> Path:
    """Pickles the keyword arguments of `train_grpo` for the workers."""
    path = Path(job_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        pickle.dump(train_kwargs, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def _ignore_usr1():
    # Slurm's `--signal=USR1@<s>` goes to every process of the step. torchrun would die
    # of it (and take the workers along); ignoring it there leaves the USR1 to the
    # workers, whose own handler replaces the inherited "ignore" and saves in time.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


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
    from reproseg.rl.engine import TrainingInterrupted, train_grpo

    n = visible_gpu_count() if num_gpus is None else int(num_gpus)
    settings = train_kwargs["settings"]
    deepspeed = settings.deepspeed if hasattr(settings, "deepspeed") else (settings or {}).get("deepspeed")
    # DeepSpeed needs the process-group environment a launcher sets up, even on one GPU.
    if n <= 1 and not (deepspeed and n == 1):
        train_grpo(**train_kwargs)
        return
    from reproseg.rl.engine import RESUME_DIR, STOP_FILE, completed_checkpoints

    stop_file = Path(train_kwargs["out_dir"]) / RESUME_DIR / STOP_FILE
    stop_file.unlink(missing_ok=True)
    write_job(job_path, **train_kwargs)
    cmd = launch_command(job_path, n, launcher=launcher)
    proc = subprocess.Popen(cmd, preexec_fn=_ignore_usr1)
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


TARGET_KEY = "_target"  # a job naming "module:function" runs that instead of train_grpo


def run_workers(job_path: str | os.PathLike, num_processes: int, target: str, **kwargs) -> None:
    """`target(**kwargs)` once per process (torchrun) on this node; raises if a worker fails.

    For training loops of the project's own (SegAnswer stages 1-2) that shard a model
    across the GPUs of one job; `train_grpo` jobs go through `run_distributed`.
    """
    write_job(job_path, **{TARGET_KEY: target}, **kwargs)
    cmd = launch_command(job_path, num_processes)
    rc = subprocess.run(cmd, preexec_fn=_ignore_usr1).returncode
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: `python -m reproseg.rl.engine_launch JOB.pkl`."""
    import importlib

    from reproseg.rl.engine import train_grpo

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m reproseg.rl.engine_launch JOB.pkl", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        job = pickle.load(f)
    target = job.pop(TARGET_KEY, None)
    if target is None:
        train_grpo(**job)
    else:
        module, _, name = target.partition(":")
        getattr(importlib.import_module(module), name)(**job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
