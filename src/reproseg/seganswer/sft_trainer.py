"""SegAnswer's supervised stages on the HF Trainer: stage 1 (phases a and b) and stage 2,
with the Trainer's learning-rate schedule, gradient accumulation and clipping,
TensorBoard, resume and checkpoint candidates.

A stage gives the Trainer its trainable parameters (AdamW groups) and a `step_loss(forward,
model, rows) -> {"loss": ..., other terms}` (`forward`: the module to run the forward
through, DDP's wrapper under several processes; `model`: the SegAnswer model itself); a batch is a list of data rows (each with its PIL
image), turned into model inputs by the stage inside the step, so a paper-size set never
sits decoded in memory.

Resume (`resume_dir`, the run's `resume/`): a Trainer checkpoint every `save_steps`
optimizer steps holds the trainable parameters only (the frozen ones are reloaded from
the stage's starting checkpoint, which the run manifest names), the optimizer, the
scheduler and the RNG states; the step log is kept beside it. On SIGTERM/SIGUSR1 the
stage saves at the end of the step and raises TrainingInterrupted (exit code 143); the
same call again continues from there, to the same weights as a run never stopped.

Several processes: stage 1 runs under DDP (the Trainer wraps the model; each rank holds
it whole). Stage 2 shards the language model with FSDP2 itself (reproseg.seganswer.sharding)
and passes its root module as `sharded`: the Trainer then treats the model as sharded
at load time (transformers' own path for DTensor models: no DDP wrapper, gradients
reduced by FSDP), and a resume checkpoint holds each rank's shards of the language model
and of the optimizer state (torch.distributed.checkpoint, `dcp/`), the scheduler and
every rank's RNG state, all written before trainer_state.json marks it complete.
Accelerate's own FSDP options are not used: accelerate enables FSDP only on GPUs (so
the CPU tests could not run it), and it would shard the SegAnswer wrapper as its root,
whose frozen SAM 2.1 and projector the stages call outside its forward.

Candidates (`candidate_every`): every that many optimizer steps, before the last, the
stage's `export(folder, step)` writes the current model to `<resume_dir>/candidates/
step-<N>` (inside the resume state, so a retried job keeps them); `collect_candidates`
moves them to the run's candidates folder once the final model is written, and adds the
final model as the last candidate.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from reproseg.grpo.callbacks import CandidateCallback
from reproseg.io_atomic import atomic_dir, write_parquet
from reproseg.launch import is_main_process, launched
from reproseg.runs import (
    CANDIDATES_DIR,
    CHECKPOINT_TIMES,
    KEEP_STATES,
    STOP_FILE,
    TENSORBOARD_DIR,
    CheckpointClock,
    StopOnSignalCallback,
    StepLogCallback,
    StopSignal,
    TrainingInterrupted,
    check_or_write_manifest,
    checkpoint_step,
    completed_checkpoints,
    direct_tensorboard,
)
from reproseg.selection import candidate_name, collect_candidates, link_tree, list_candidates

TRAINABLE_FILE = "trainable.safetensors"
SHARDED_DIR = "dcp"          # a sharded run's checkpoint: model and optimizer shards
SCHEDULER_FILE = "scheduler.pt"
REPORTERS = ("tensorboard", "wandb")


def folder_identity(path) -> dict[str, int]:
    """A model folder's files and sizes (not hashes: shards are GBs and this runs at every start)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)) if p != root else p.name: p.stat().st_size for p in files}


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: Sequence[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _batch_of_rows(rows: list[dict]) -> dict:
    return {"rows": rows}


class SegAnswerSFTTrainer(CheckpointClock, Trainer):
    """The Trainer with a stage's own loss terms, AdamW groups, a trainable-only checkpoint and the
    checkpoint clock (reproseg.runs.CheckpointClock).

    sharded: the FSDP2-managed module (stage 2's language model) when the model is sharded
    over the processes; its checkpoint is then saved and loaded shard by shard."""

    def __init__(self, *args, step_loss: Callable, param_groups: list[dict], sharded=None, **kwargs):
        self.step_loss = step_loss
        self.param_groups = param_groups
        self.sharded = sharded
        self.last_terms: dict[str, float] = {}
        if sharded is not None:
            # transformers' path for a model sharded before the Trainer sees it: no DDP wrapper,
            # no device placement (it refuses a full resume state, which _save_checkpoint adds).
            kwargs["model"].is_distributed_loading_by_transformers = True
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = self.step_loss(model, self.accelerator.unwrap_model(model), inputs["rows"])
        # Logged with the step (the last micro-batch's terms under accumulation).
        self.last_terms = {k: float(v.detach()) for k, v in terms.items() if k != "loss"}
        return terms["loss"]

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.param_groups, lr=self.args.learning_rate,
                                               weight_decay=self.args.weight_decay)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs = {**logs, **self.last_terms}
        super().log(logs, start_time)

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _clip_grad_norm(self, model):
        norm = super()._clip_grad_norm(model)
        # the norm of sharded gradients is a DTensor; the log wants a number
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _inner_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it

    def _save_checkpoint(self, model, trial) -> None:
        with self.timed_save():
            self._save_resume_state(model, trial)

    def _save_resume_state(self, model, trial) -> None:
        if self.sharded is not None:
            # Before the Trainer's part, which writes trainer_state.json (what marks a checkpoint
            # complete) last; with save_only_model it writes no optimizer state of its own.
            out = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            dcp.save({"model": get_model_state_dict(self.sharded),
                      "optimizer": get_optimizer_state_dict(self.sharded, self._inner_optimizer())},
                     checkpoint_id=str(out / SHARDED_DIR))
            if self.args.should_save:
                torch.save(self.lr_scheduler.state_dict(), out / SCHEDULER_FILE)
            self._save_rng_state(str(out))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if self.sharded is None or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        # The template has the optimizer's state initialised (torch fills it with a zero-lr step).
        state = {"optimizer": get_optimizer_state_dict(self.sharded, self._inner_optimizer())}
        dcp.load(state, checkpoint_id=str(Path(checkpoint) / SHARDED_DIR))
        set_optimizer_state_dict(self.sharded, self._inner_optimizer(), state["optimizer"])
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_FILE, weights_only=True))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.sharded is not None:
            return  # the shards went to dcp/ in _save_checkpoint
        # Only what trains: for stage 1 the projector, mask decoder and LoRA, not the 7B language
        # model; DDP keeps every rank's copy equal, so rank 0 writes it.
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().cpu().contiguous().clone() for n, p in self._trainable().items()},
                  str(out / TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.sharded is not None:
            state = {"model": get_model_state_dict(self.sharded)}
            dcp.load(state, checkpoint_id=str(Path(resume_from_checkpoint) / SHARDED_DIR))
            set_model_state_dict(self.sharded, state["model"])
            return
        saved = load_file(str(Path(resume_from_checkpoint) / TRAINABLE_FILE))
        params = self._trainable()
        if set(saved) != set(params):
            diff = sorted(set(saved) ^ set(params))[:5]
            raise ValueError(f"{resume_from_checkpoint}: its trainable parameters differ from this stage's, e.g. {diff}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(p.device, p.dtype))


def training_arguments(settings, output_dir: Path, use_cpu: bool, sharded: bool = False) -> TrainingArguments:
    """TrainingArguments for a SegAnswer SFT stage's settings (every value set explicitly)."""
    unknown = sorted(set(settings.report_to) - set(REPORTERS))
    if unknown:
        raise ValueError(f"report_to {unknown} not in {REPORTERS}")
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=KEEP_STATES,   # the newest state, and the one before it if the newest is damaged
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=list(settings.report_to),
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        use_cpu=use_cpu,
        # Under several processes (DDP) a batch may leave a trained part unused (a row
        # without `<|seg|>`); DDP must then not wait for its gradient.
        ddp_find_unused_parameters=(launched() and not sharded) or None,
        # a sharded model's optimizer and RNG states are SegAnswerSFTTrainer's to save
        save_only_model=sharded,
        disable_tqdm=False,
    )


def train_sft(model, rows: Sequence[dict], settings, params: list[torch.nn.Parameter], param_groups: list[dict],
              step_loss: Callable, log_path=None, resume_dir=None, identity: dict | None = None,
              callbacks: Sequence = (), export: Callable[[Path, int], None] | None = None,
              sharded=None) -> list[dict]:
    """Trains `model` in place; returns (and writes to `log_path`, Parquet) one row per step.

    resume_dir: where the resume state goes (None: a throw-away folder, no resume);
    identity: what makes this run this run (settings, data size, starting checkpoint),
    checked against the state found there. TensorBoard events go to
    `<resume_dir>/../tensorboard`. callbacks: extra TrainerCallbacks (before the stop check).
    export(folder, step): writes the current model (every rank calls it) when
    `settings.candidate_every` asks for a candidate; needs resume_dir. sharded: the
    FSDP2-managed module of a sharded model (SegAnswerSFTTrainer)."""
    if not params:
        raise ValueError("nothing to train")
    if launched() and resume_dir is None:
        raise ValueError("several processes share one resume_dir; none was given")
    if settings.candidate_every and (export is None or resume_dir is None):
        raise ValueError("candidate_every needs an export function and a resume_dir to keep the candidates in")
    keep = resume_dir is not None
    resume_dir = Path(resume_dir) if keep else Path(tempfile.mkdtemp(prefix="seganswer-sft-"))
    main = is_main_process()
    if main:
        resume_dir.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(resume_dir, identity or {}, main)
    done = completed_checkpoints(resume_dir)
    last = done[-1] if done else None
    resume_step = checkpoint_step(last) if last else None
    if main:
        _drop_candidates_after(resume_dir / CANDIDATES_DIR, resume_step or 0)
    work_log = resume_dir / "train_log.parquet"
    use_cpu = model.device.type == "cpu"
    args = training_arguments(settings, resume_dir, use_cpu, sharded=sharded is not None)
    log_cb = StepLogCallback(work_log, resume_step)
    stop = StopSignal(stop_file=resume_dir / STOP_FILE)
    if main:
        (resume_dir / STOP_FILE).unlink(missing_ok=True)
    stop_cb = StopOnSignalCallback(stop, skip_final_save=True)
    candidate_cb = CandidateCallback(settings.candidate_every)
    candidate_cb.export = lambda step: export(resume_dir / CANDIDATES_DIR / candidate_name(step), step)
    trainer = SegAnswerSFTTrainer(model=model, args=args, train_dataset=_Rows(rows), data_collator=_batch_of_rows,
                                  step_loss=step_loss, param_groups=param_groups, sharded=sharded,
                                  callbacks=[log_cb, *callbacks, candidate_cb, stop_cb])
    if keep:
        trainer.checkpoint_times_path = resume_dir.parent / CHECKPOINT_TIMES
    tb_dir = resume_dir.parent / TENSORBOARD_DIR
    if keep and last is None and main:
        shutil.rmtree(tb_dir, ignore_errors=True)   # an earlier run's curves would be drawn over this one's
    direct_tensorboard(trainer, tb_dir if keep else resume_dir / TENSORBOARD_DIR)
    try:
        with stop:
            trainer.train(resume_from_checkpoint=str(last) if last else None)
            stopped = stop_cb.stopped_at_step
            if stopped is not None and trainer.state.global_step < trainer.state.max_steps:
                raise TrainingInterrupted(stopped, str(resume_dir / f"checkpoint-{stopped}"))
    finally:
        model.eval()
    if log_path is not None and main:
        write_parquet(log_path, pa.Table.from_pylist(log_cb.rows))
    if not keep:
        shutil.rmtree(resume_dir, ignore_errors=True)
    return log_cb.rows


def _drop_candidates_after(staged: Path, step: int) -> None:
    """Candidates a killed run saved past the state it resumes from are made again."""
    if staged.is_dir():
        for p in staged.glob("step-*"):
            if p.name.rsplit("-", 1)[-1].isdigit() and int(p.name.rsplit("-", 1)[-1]) > step:
                shutil.rmtree(p)


def scratch_resume_dir() -> Path:
    """A resume folder for a run that keeps none (its TensorBoard events beside it, not in /tmp)."""
    return Path(tempfile.mkdtemp(prefix="seganswer-sft-")) / "resume"


def finish(resume_dir, scratch: bool = False) -> None:
    """Drops the resume state once the stage's model is written (a scratch one with its parent)."""
    if resume_dir is not None:
        shutil.rmtree(Path(resume_dir).parent if scratch else resume_dir, ignore_errors=True)
