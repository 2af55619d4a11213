"""One process per GPU inside one (Slurm) job: the launcher command and the worker entry.

A job's keyword arguments are pickled to a job file together with the function to run
("module:function"); each rank runs `python -m reproseg.launch JOB`. The arguments
must therefore be picklable by reference (module-level functions, instances of
module-level classes). Trainer-based stages (the GRPO engine's jobs through
reproseg.grpo.launch, SegAnswer stage 1) go through `run_resumable`, which passes a stop
signal on to the workers; the SegAnswer stage-2 loop through `run_workers`.
"""
from __future__ import annotations

import atexit
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from reproseg.runs import STOP_FILE, TrainingInterrupted, checkpoint_step, completed_checkpoints

WORKER_MODULE = "reproseg.launch"
TARGET_KEY = "_target"  # "module:function" the workers call with the job's arguments


class WorkerFailed(RuntimeError):
    """A launch whose workers did not all finish; the message names the failed ranks."""


def _record(job_path: str | os.PathLike, rank: int, kind: str) -> Path:
    """A worker's note beside the job file: `started` when it begins, `failed` when it raises."""
    job_path = Path(job_path)
    return job_path.with_name(f"{job_path.name}.rank{rank}.{kind}")


def _records(job_path: str | os.PathLike, kind: str) -> dict[int, Path]:
    job_path = Path(job_path)
    found = {}
    for p in job_path.parent.glob(f"{job_path.name}.rank*.{kind}"):
        rank = p.name.removeprefix(f"{job_path.name}.rank").removesuffix(f".{kind}")
        if rank.isdigit():
            found[int(rank)] = p
    return found


def _clear_records(job_path: str | os.PathLike) -> None:
    for kind in ("started", "failed"):
        for p in _records(job_path, kind).values():
            p.unlink(missing_ok=True)


def worker_failure(job_path: str | os.PathLike, rc: int) -> WorkerFailed:
    """The error for a launch that exited with `rc`, naming its ranks' failures.

    A rank that raised recorded its error; the earliest comes first, and the later ones are
    mostly collectives that lost that rank. A rank that started and recorded none (listed
    after them) was killed by a signal: the out-of-memory killer, or torchrun ending it
    after another rank failed (torchrun's report in the job's log gives its exit code)."""
    failed = _records(job_path, "failed")
    errors = sorted((float(t), text) for t, _, text in
                    (p.read_text().strip().partition(" ") for p in failed.values()))
    silent = sorted(set(_records(job_path, "started")) - set(failed))
    lines = [text for _, text in errors] + [
        f"rank {r}: ended without a Python error (killed by a signal: out of memory, or ended by torchrun "
        "after another rank failed)" for r in silent]
    if not lines:
        lines = ["no rank started (torchrun's report in the job's log says why)"]
    return WorkerFailed(f"the workers of {job_path} exited with {rc}:\n" + "\n".join(lines))


def visible_gpu_count(env: dict | None = None) -> int:
    """GPUs this job may use: Slurm's count, else CUDA_VISIBLE_DEVICES, else what torch sees."""
    env = os.environ if env is None else env
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
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


# The CPU thread-pool variables a job's threads set (Snakemake sets each to the rule's
# `threads`); torchrun only sets OMP_NUM_THREADS, and only where it is unset.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "GOTO_NUM_THREADS")


def worker_env(num_processes: int, env: dict | None = None) -> dict:
    """The workers' environment: the job's CPU threads (OMP_NUM_THREADS, else the CPUs this
    process may run on) shared out, at least one per worker. Each worker inheriting the
    job's whole count puts N times as many compute threads on the job's cores, and a rank
    that waits in an all-reduce then spins on a core its peer needs: two CPU workers of
    the SFT warm-up took 0.5-3 s per step with 2 threads each, 0.18 s for one process."""
    env = dict(os.environ if env is None else env)
    given = env.get("OMP_NUM_THREADS", "")
    total = int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))
    share = str(max(1, total // max(1, int(num_processes))))
    env.update({name: share for name in THREAD_VARS})
    return env


def write_job(job_path: str | os.PathLike, **train_kwargs) -> Path:
    """Pickles a job's keyword arguments (and its TARGET_KEY) for the workers."""
    path = Path(job_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        pickle.dump(train_kwargs, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def ignore_usr1():
    # Slurm's `--signal=USR1@<s>` goes to every process of the step. torchrun would die
    # of it (and take the workers along); ignoring it there leaves the USR1 to the
    # workers, whose own handler replaces the inherited "ignore" and saves in time.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run_workers(job_path: str | os.PathLike, num_processes: int, target: str, **kwargs) -> None:
    """`target(**kwargs)` once per process (torchrun) on this node; raises if a worker fails.

    For training loops of the project's own (SegAnswer stage 2) that shard a model
    across the GPUs of one job; GRPO jobs go through reproseg.grpo.launch.run_distributed.
    """
    write_job(job_path, **{TARGET_KEY: target}, **kwargs)
    _clear_records(job_path)
    cmd = launch_command(job_path, num_processes)
    rc = subprocess.run(cmd, preexec_fn=ignore_usr1, env=worker_env(num_processes)).returncode
    if rc != 0:
        raise worker_failure(job_path, rc)
    _clear_records(job_path)


def launched() -> bool:
    """Whether this process is one worker of a multi-process launch (torchrun sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_resumable(job_path: str | os.PathLike, num_processes: int, target: str, state_dir: str | os.PathLike,
                  launcher: str = "torchrun", **kwargs) -> None:
    """`target(**kwargs)` once per process, for a Trainer-based stage that saves its state in
    `state_dir` (its resume folder) on a stop request (reproseg.runs).

    SIGTERM/SIGUSR1 to this process are passed on to the workers through the stop file
    (they save and stop); then TrainingInterrupted is raised here as well, unless the
    workers had already finished. With Slurm, also ask for an early warning, e.g.
    `--signal=USR1@600`, so that a large checkpoint has time to save.
    """
    state_dir = Path(state_dir)
    stop_file = state_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    write_job(job_path, **{TARGET_KEY: target}, **kwargs)
    _clear_records(job_path)
    cmd = launch_command(job_path, num_processes, launcher=launcher)
    proc = subprocess.Popen(cmd, preexec_fn=ignore_usr1, env=worker_env(num_processes))
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
    Path(job_path).unlink(missing_ok=True)
    if rc == 0:
        _clear_records(job_path)
        return  # finished; a stop request that came at the very end changes nothing
    if received:
        done = completed_checkpoints(state_dir)
        step = checkpoint_step(done[-1]) if done else 0
        raise TrainingInterrupted(step, str(done[-1]) if done else "(no checkpoint yet)")
    raise worker_failure(job_path, rc)


def resolve_target(target: str):
    """The function a "module:function" job target names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: `python -m reproseg.launch JOB.pkl`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m reproseg.launch JOB.pkl", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        job = pickle.load(f)
    target = job.pop(TARGET_KEY, None)
    if not isinstance(target, str) or ":" not in target:
        print(f"{argv[0]}: the job names no {TARGET_KEY} 'module:function'", file=sys.stderr)
        return 2
    # Notes for the launcher, which sees only torchrun's exit code (SystemExit, the
    # TrainingInterrupted of a stop, passes through unrecorded).
    rank = int(os.environ.get("RANK", "0"))
    _record(argv[0], rank, "started").touch()
    try:
        resolve_target(target)(**job)
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        _record(argv[0], rank, "failed").write_text(
            f"{time.time()} rank {rank}: {type(e).__name__}: {e} (at {where.filename}:{where.lineno})\n")
        raise
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank leaves while another may still talk to it
        torch.distributed.destroy_process_group()
    return 0


def exit_worker(code: int) -> None:
    """Leave a worker without Python's interpreter finalisation.

    A gloo run-loop thread frees a finished collective's work object (it holds tensors
    that are Python objects) a moment after the collective returns. If that falls into
    Py_FinalizeEx, the thread's GIL request ends it with pthread_exit, which unwinds
    through a noexcept destructor: std::terminate, SIGABRT, and torchrun fails the job
    after its checkpoint was written (seen on a loaded 2-core machine in about 1 run in
    6). Python's own exit handlers (logging, multiprocessing, tensorboard writers) still
    run; what is skipped is only the finalisation that the race needs.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_worker(main())
