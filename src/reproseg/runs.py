"""A training run, whatever the stage: its folder, its resume state, and stopping on a signal.

    <run dir>/checkpoint/    the trained model (a rule output)
    <run dir>/candidates/    the models checkpoint selection scores (GRPO stages)
    <run dir>/resume/        Trainer checkpoints a stopped or retried job resumes from
                             (not a rule output, so Snakemake keeps it when a job fails)
    <run dir>/tensorboard/   the Trainer's TensorBoard events
    <run dir>/checkpoint_times.jsonl
                             seconds each resume state took to write, and each start
                             (fresh or resumed) to reach its first step (CheckpointClock)

A rule names `<run dir>/checkpoint` as its output and the library derives the run dir
from it, so the two cannot disagree. Slurm's SIGTERM (preemption, time limit) makes a
Trainer-based stage save its state at the end of the step and exit with 143; the retried
job resumes from there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from reproseg.io_atomic import write_json, write_parquet

log = logging.getLogger(__name__)

FINAL_DIR = "checkpoint"
CANDIDATES_DIR = "candidates"
RESUME_DIR = "resume"
TENSORBOARD_DIR = "tensorboard"
RUN_MANIFEST = "engine_run.json"
CHECKPOINT_TIMES = "checkpoint_times.jsonl"
STOP_FILE = "STOP"  # created by a launcher to ask all ranks to save and stop
# Written into a Trainer checkpoint once every rank's files are in it: each file's size, so
# that a state cut off or truncated later is told from a whole one.
CHECKPOINT_FILES = "checkpoint_files.json"
# Resume states kept: the newest, and the one before it for when the newest is found damaged.
KEEP_STATES = 2
INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run dir of a job whose model goes to `checkpoint` (`<run dir>/checkpoint`)."""
    path = Path(checkpoint)
    if path.name != FINAL_DIR:
        raise ValueError(f"a training job's model folder is <run dir>/{FINAL_DIR}, not {path}")
    return path.parent


def direct_tensorboard(trainer, logging_dir: Path) -> None:
    """Points a Trainer's TensorBoard callback at `logging_dir`.

    transformers 5 has no `logging_dir` argument: it writes under output_dir (the resume
    folder, deleted after success) unless TENSORBOARD_LOGGING_DIR is set, and setting
    that variable would leak into every later Trainer of the process.
    """
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(logging_dir)


# Settings that do not change what a run computes (where its states go, what it reports to,
# what it caches): a resume state stays valid across them.
NOT_TRAJECTORY = ("save_steps", "report_to", "sam_feature_cache_mb", "image_cache_mb", "feature_cache_mb")


def trajectory_settings(settings) -> dict:
    """A stage's settings (a dataclass) that decide its trajectory (what a resume state must agree with)."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_TRAJECTORY}


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The step of a Trainer checkpoint folder (`checkpoint-<step>`)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def seal_checkpoint(folder: Path) -> None:
    """Records the size of every file in a finished checkpoint (CHECKPOINT_FILES, written last)."""
    files = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*"))
             if f.is_file() and f.name != CHECKPOINT_FILES}
    write_json(folder / CHECKPOINT_FILES, files)


def checkpoint_damage(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (None: it is whole, as sealed)."""
    try:
        files = json.loads((folder / CHECKPOINT_FILES).read_text())
        json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing (the save did not finish)"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable JSON ({e})"
    for name, size in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} when it was written"
    return None


def completed_checkpoints(resume_dir: Path) -> list[Path]:
    """The whole Trainer checkpoints in `resume_dir`, oldest first. One cut off (killed while
    saving) or damaged since is left out with a warning naming it, so that a resume takes
    the one before it."""
    found = []
    for p in Path(resume_dir).glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if not (p.is_dir() and suffix.isdigit()):
            continue
        damage = checkpoint_damage(p)
        if damage is None:
            found.append((int(suffix), p))
        else:
            log.warning("resume state %s is skipped: %s", p, damage)
    return [p for _, p in sorted(found)]


def check_or_write_manifest(resume_dir: Path, manifest: dict, is_main: bool) -> None:
    path = resume_dir / RUN_MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ValueError(
                f"{resume_dir} holds the state of a different run (differs in {diff}); "
                "delete that directory to start this run from scratch"
            )
    elif is_main:
        write_json(path, manifest)


class TrainingInterrupted(SystemExit):
    """Raised after a stop signal once the checkpoint is saved; exits the process with 143."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(INTERRUPTED_EXIT_CODE)
        self.step = step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return f"training stopped by signal at step {self.step}; state saved in {self.checkpoint}"


class StopSignal:
    """Records SIGTERM/SIGUSR1 instead of dying, while training runs.

    Slurm sends SIGTERM before a preemption or the time limit (or, with
    `--signal=USR1@<seconds>`, SIGUSR1 earlier), then SIGKILL after a grace time. The
    handler only sets a flag; the stop callback turns it into "save, then stop". The
    stop file is how a parent process reaches workers that torchrun started in
    process groups of their own.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1), stop_file: str | Path | None = None):
        self.signals = tuple(signals)
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.received: int | None = None
        self._previous: dict = {}

    def requested(self) -> bool:
        """A signal came, or a launcher asked for a stop by creating `stop_file`."""
        return self.received is not None or (self.stop_file is not None and self.stop_file.exists())

    def _handle(self, signum, frame):
        self.received = signum

    def __enter__(self):
        # signal.signal works only in the main thread; elsewhere the caller's handlers stay.
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False


class StopOnSignalCallback(TrainerCallback):
    """At the end of a step after a stop signal: save a full checkpoint and end training.

    Under several processes the flag is max-reduced so that all ranks save and stop at
    the same step (a rank that stopped alone would hang the others in a collective).
    With `skip_final_save`, the Trainer's own checkpoint after the last step is
    dropped: the engine exports the final weights itself, and for a 7B policy the
    optimizer state alone is tens of GB written only to be deleted.

    With several optimizer steps per rollout batch (`steps_per_rollout`), the stop waits
    for the end of the batch: a checkpoint inside it would resume with newly generated
    completions, not the ones the uninterrupted run trains on.
    """

    def __init__(self, stop: StopSignal, skip_final_save: bool = False, steps_per_rollout: int = 1):
        self.stop = stop
        self.skip_final_save = skip_final_save
        self.steps_per_rollout = int(steps_per_rollout)
        self.stopped_at_step: int | None = None

    def _any_rank(self, args) -> bool:
        flag = self.stop.requested()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([1 if flag else 0], device=args.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        # Every rank reaches the collective in _any_rank at the same steps.
        at_boundary = state.global_step % self.steps_per_rollout == 0
        if self.stopped_at_step is None and at_boundary and self._any_rank(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        elif self.skip_final_save and state.global_step >= state.max_steps:
            control.should_save = False


class FullWeightsResume:
    """Mixin for a transformers Trainer of a whole Qwen2.5-VL model: its resume loads the weights.

    transformers 5 saves Qwen2.5-VL under the released checkpoints' key names
    ("model.layers.*", "visual.*") and renames them only inside from_pretrained. The
    Trainer's resume loads the raw file non-strictly, so every key misses and training
    silently goes on from the initial weights. This loads through from_pretrained instead,
    and strictly. (DeepSpeed resumes through its own files and is not affected; adapters
    load through PEFT.)
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        ckpt = Path(resume_from_checkpoint)
        has_full_weights = (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file()
        if is_peft_model(target) or self.is_fsdp_enabled or not has_full_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(target.parameters()).dtype
        saved = type(target).from_pretrained(ckpt, dtype=dtype, local_files_only=True)
        target.load_state_dict(saved.state_dict(), strict=True)
        del saved


def write_checkpoint_time(path: str | Path, row: dict, fresh: bool = False) -> None:
    """One event of a run's checkpoint clock (CheckpointClock's format): a fresh start
    begins the file anew, every other event is appended."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w" if fresh else "a") as f:
        f.write(json.dumps(row) + "\n")


class CheckpointClock:
    """Mixin for a transformers Trainer: how long checkpointing costs, measured where it happens.

    With `checkpoint_times_path` set, the main process writes one JSON line per event:
    {"event": "save", "step", "seconds"} for each resume state (timed by the subclass's
    `_save_checkpoint` inside `timed_save()`, so that its own extra state counts too), and
    {"event": "start", "resumed_from", "step", "seconds"}: from `train()` to the start of
    the first optimizer step, the weights, optimizer, scheduler, RNG and data position of a
    resume included (a resumed start minus a fresh one is what resuming costs). A fresh
    start begins the file anew, a resume appends to it. The save figure is what the grace
    time between Slurm's signal and its SIGKILL (`--signal=USR1@<seconds>`) must cover.
    """

    checkpoint_times_path: Path | None = None
    _clock_started: tuple[float, str | None] | None = None

    def _clock_write(self, row: dict, fresh: bool = False) -> None:
        if self.checkpoint_times_path is None or not self.is_world_process_zero():
            return
        write_checkpoint_time(self.checkpoint_times_path, row, fresh)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._clock_started = (time.perf_counter(), resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, *args, **kwargs):
        if self._clock_started is not None:
            t0, resumed = self._clock_started
            self._clock_started = None
            self._clock_write({"event": "start", "resumed_from": resumed, "step": int(self.state.global_step),
                               "seconds": round(time.perf_counter() - t0, 4)}, fresh=resumed is None)
        return super().training_step(*args, **kwargs)

    @contextlib.contextmanager
    def timed_save(self):
        """Times a save and seals the checkpoint once every rank has written its part."""
        t0 = time.perf_counter()
        yield
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            seal_checkpoint(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{int(self.state.global_step)}")
        self._clock_write({"event": "save", "step": int(self.state.global_step),
                           "seconds": round(time.perf_counter() - t0, 4)})


class StepLogCallback(TrainerCallback):
    """One row per optimizer step (the Trainer's loss, learning rate and gradient norm, the
    stage's loss terms, seconds per step, the world size), the table rewritten after each step. On resume,
    rows past the resumed step are dropped, so that the log matches the weights."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.rows: list[dict] = []
        if resume_step is not None and path.is_file():
            self.rows = [r for r in pq.read_table(path).to_pylist() if r["step"] <= resume_step]
        self._t0 = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"step": int(state.global_step), "epoch": float(state.epoch or 0.0)}
        row.update({k: float(v) for k, v in logs.items() if k not in ("epoch", "step") and isinstance(v, (int, float))})
        row["step_time_s"] = time.perf_counter() - self._t0
        row["world_size"] = int(args.world_size)  # processes training together
        row["wall_time"] = time.time()
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        write_parquet(self.path, pa.Table.from_pylist(self.rows))
