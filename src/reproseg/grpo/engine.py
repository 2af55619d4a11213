"""One GRPO engine, on TRL's GRPOTrainer, for every RL stage of the project.

Rollout (TRL's generation, or a later subclass for multi-turn rollouts), reward (plain
callables the caller passes) and loss (TRL's `loss_type`) are separate pieces. The
engine adds what the papers' runs need and TRL leaves to the user:

- settings from a plain config dict, with the papers' defaults (GRPO loss, KL 5e-3)
  instead of TRL's (DAPO loss, no KL);
- a per-step Parquet log of every reward term, KL, entropy, length, the clipped-token
  fraction and the fraction of prompt groups with zero reward std; the Trainer's own
  `report_to` (TensorBoard by default, W&B on request) and tqdm progress bar;
- rollout batches split into several optimizer steps (`steps_per_generation`, veRL's
  mini-batches), so that PPO's ratio clipping acts;
- exact resume: a stop signal saves a full Trainer checkpoint (weights, optimizer,
  scheduler, RNG, reward state) and re-running the same call continues from it;
- the final policy in Hugging Face format (LoRA merged) with its processor.

Directory layout under `out_dir`:
    checkpoint/   final model + processor (appears whole, or not at all)
    candidates/   with `candidate_every`: step-<N>/ every that many optimizer steps and
                  the final one (hard links to checkpoint/), the same HF layout, for a
                  selection on val (reproseg.selection); written during training under
                  resume/, so that a resumed run keeps them, and moved here at the end
    resume/       Trainer checkpoints (checkpoint-<step>/) and engine_run.json; removed
                  after success unless `keep_resume_state`
    tensorboard/  TensorBoard event files (`report_to` holds "tensorboard"; another
                  folder with `logging_dir`); kept after success; a resumed run adds a
                  file, a run from scratch starts the folder anew
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers import integrations as hf_integrations
from transformers.integrations import deepspeed as hf_ds
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import GRPOConfig

from reproseg.grpo.callbacks import CandidateCallback, ParquetLogCallback, RewardStateCallback
from reproseg.grpo.deepspeed import deepspeed_config
from reproseg.grpo.trainer import (  # noqa: F401  (public API)
    EngineGRPOTrainer,
    RewardAdapter,
    StatefulReward,
    load_reward_states,
    zero_std_fraction,
)
from reproseg.data.images import row_image
from reproseg.io_atomic import atomic_dir, write_json

# The run's folder and lifecycle (reproseg.runs); the names stay importable from here.
from reproseg.runs import (  # noqa: F401  (public API)
    CANDIDATES_DIR,
    CHECKPOINT_TIMES,
    FINAL_DIR,
    INTERRUPTED_EXIT_CODE,
    KEEP_STATES,
    RESUME_DIR,
    RUN_MANIFEST,
    STOP_FILE,
    TENSORBOARD_DIR,
    StopOnSignalCallback,
    StopSignal,
    TrainingInterrupted,
    check_or_write_manifest,
    completed_checkpoints,
    direct_tensorboard,
)
from reproseg.selection import candidate_name, collect_candidates

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
REPORTERS = ("tensorboard", "wandb")  # Trainer integrations a stage may report to

# Keys of a config dict that name the same setting as a field.
_ALIASES = {
    "n": "num_generations",
    "rollout_n": "num_generations",
    "lr": "learning_rate",
    "kl_coef": "beta",
    "clip_ratio": "epsilon",
    "clip_ratio_high": "epsilon_high",
    "per_device_train_batch_size": "per_device_batch_size",
    "grad_accum": "gradient_accumulation_steps",
}

# Fields that do not change the training trajectory; a resumed run may differ in them.
_NOT_FINGERPRINTED = ("save_steps", "keep_resume_state", "logging_steps", "report_to", "logging_dir",
                      "candidate_every")


@dataclass
class GRPOSettings:
    """GRPO hyper-parameters. Batch sizes count completions, as in TRL.

    Prompts per optimizer step (veRL's mini-batch, `global_batch_size`) =
    per_device_batch_size * processes * gradient_accumulation_steps / num_generations.

    A rollout batch (veRL's `rollout_batch_size`, the prompts generated for at once) is
    `steps_per_generation` micro-batches (TRL's name; None means
    gradient_accumulation_steps, i.e. rollout batch = mini-batch) and is trained on for
    `updates_per_rollout` = num_iterations * steps_per_generation /
    gradient_accumulation_steps optimizer steps. Only from the second of those on does
    the policy differ from the one that sampled, so with one update per rollout batch the
    ratio is exactly 1 and the clip (epsilon, epsilon_high) never acts. veRL terms map as
    steps_per_generation = gradient_accumulation_steps * rollout_batch_size /
    global_batch_size and num_iterations = ppo_epochs. The papers:

    - FineRS (Fines' EasyR1/veRL scripts) and Dr. Seg (its drseg_7b.yaml; the paper's
      appendix: global batch 16, n 8, micro-batch 2 per device, 4 GPUs) set
      rollout_batch_size = global_batch_size (16; 8 in FineRS's GSE script) and 1 PPO
      epoch: one update per rollout batch, steps_per_generation =
      gradient_accumulation_steps (None), num_iterations 1. The micro-batch only sets
      gradient accumulation, not the trajectory: Dr. Seg's 16 x 8 / 4 = 32 completions
      per GPU and update are per_device_batch_size 2 x gradient_accumulation_steps 16.
    - SegAnswer stage 3 uses DAPO and gives no batch sizes; DAPO's recipe (Yu et al.
      2025; verl's recipe/dapo: train_prompt_bsz 512, train_prompt_mini_bsz 32) makes 16
      updates per rollout batch: steps_per_generation = 16 * gradient_accumulation_steps.

    A stop signal is acted on at the end of a rollout batch (at most updates_per_rollout
    - 1 steps late) and save_steps must be a multiple of updates_per_rollout: a
    checkpoint inside a rollout batch could not resume exactly (the rest of the batch's
    completions are not saved).
    """

    num_generations: int = 8
    learning_rate: float = 1e-6
    weight_decay: float = 1e-2
    beta: float = 5e-3  # KL coefficient (FineRS); TRL's default is 0
    loss_type: str = "grpo"  # TRL's default is "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: symmetric clipping
    scale_rewards: str = "group"
    num_iterations: int = 1  # optimizer passes over each rollout batch (veRL's ppo_epochs)
    steps_per_generation: int | None = None  # micro-batches per rollout batch; None: gradient_accumulation_steps
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 512
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int | None = 200
    # Passes over the training prompts instead of max_steps (which must then be None): the
    # steps they take, rounded up to whole rollout batches (epoch_steps).
    epochs: float | None = None
    save_steps: int = 50
    logging_steps: int = 1
    seed: int = 42
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    bf16: bool | None = None  # None: on when a CUDA GPU with bf16 is present, never on CPU
    # Weights stay fp32 by default: a 1e-6 update is below bf16's resolution, so bf16
    # compute comes from autocast / DeepSpeed's bf16 mode with fp32 master weights.
    model_dtype: str = "float32"
    gradient_checkpointing: bool = True
    deepspeed: str | dict | None = None  # a JSON path, a config dict, or "zero2" / "zero3"
    lora: dict | None = None  # peft.LoraConfig arguments; merged into the final checkpoint
    reward_weights: dict[str, float] | None = None  # per reward name; default 1.0
    keep_resume_state: bool = False
    # Saves the policy every this many optimizer steps as a candidate for checkpoint
    # selection (CANDIDATES_DIR); None: only the final policy is written.
    candidate_every: int | None = None
    dataloader_num_workers: int = 0
    # Trainer integrations (REPORTERS); [] for none. TensorBoard files go to logging_dir,
    # default <out_dir>/tensorboard (a relative path is taken under out_dir). W&B reads
    # its project and mode from the WANDB_* environment variables.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    logging_dir: str | None = None
    extra_grpo_config: dict = field(default_factory=dict)  # any other GRPOConfig field, verbatim

    def __post_init__(self):
        self._coerce_and_check()

    @classmethod
    def from_dict(cls, d: dict | None) -> "GRPOSettings":
        d = dict(d or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            name = _ALIASES.get(key, key)
            if name not in names:
                raise ValueError(f"unknown GRPO setting {key!r}; known: {sorted(names)} (aliases {sorted(_ALIASES)})")
            if name in kwargs:
                raise ValueError(f"GRPO setting {name!r} given twice (as {key!r} and another alias)")
            kwargs[name] = value
        return cls(**kwargs)

    def _coerce_and_check(self) -> None:
        # YAML reads "1e-6" as a string; settle numbers here, not deep inside TRL.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.type in ("float", "float | None"):
                setattr(self, f.name, float(v))
            elif f.type in ("int", "int | None"):
                if float(v) != int(float(v)):
                    raise ValueError(f"GRPO setting {f.name} must be an integer, got {v!r}")
                setattr(self, f.name, int(float(v)))
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} not in {LOSS_TYPES}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2 (GRPO compares completions within a group)")
        if self.model_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model_dtype {self.model_dtype!r} not in ('float32', 'bfloat16', 'float16')")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards {self.scale_rewards!r} not in ('group', 'batch', 'none')")
        for name in ("num_iterations", "gradient_accumulation_steps", "save_steps", "candidate_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        ga = self.gradient_accumulation_steps
        if self.steps_per_generation is not None and (self.steps_per_generation < 1 or self.steps_per_generation % ga):
            raise ValueError(
                f"steps_per_generation ({self.steps_per_generation}) must be a positive multiple of "
                f"gradient_accumulation_steps ({ga}): a rollout batch is a whole number of optimizer steps"
            )
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of max_steps ({self.max_steps}) and epochs ({self.epochs})")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be above 0, got {self.epochs}")
        if self.save_steps % self.updates_per_rollout:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of the {self.updates_per_rollout} optimizer "
                "steps per rollout batch, so that every checkpoint resumes exactly"
            )
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        self.report_to = list(self.report_to or [])
        unknown = sorted(set(self.report_to) - set(REPORTERS))
        if unknown:
            raise ValueError(f"report_to {unknown} not in {REPORTERS}")

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps trained on each rollout batch."""
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        return self.num_iterations * spg // self.gradient_accumulation_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_FINGERPRINTED}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def epoch_steps(settings: GRPOSettings, num_rows: int, world_size: int) -> int:
    """Optimizer steps of `settings.epochs` passes over `num_rows` prompts: each step trains on
    per_device_batch_size x world_size x gradient_accumulation_steps completions, that is
    that / num_generations prompts, each rollout batch num_iterations times; rounded up to
    whole rollout batches (a checkpoint and the last step end one)."""
    completions = settings.per_device_batch_size * world_size * settings.gradient_accumulation_steps
    steps = math.ceil(settings.epochs * num_rows * settings.num_generations * settings.num_iterations / completions)
    u = settings.updates_per_rollout
    return max(u, math.ceil(steps / u) * u)


def _use_bf16(settings: GRPOSettings) -> bool:
    if settings.bf16 is not None:
        if settings.bf16 and not torch.cuda.is_available():
            raise ValueError("bf16=True needs a CUDA GPU; leave it unset to use bf16 on GPU only")
        return bool(settings.bf16)
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _deepspeed_arg(settings: GRPOSettings, bf16: bool):
    ds = settings.deepspeed
    if isinstance(ds, str) and ds in ("zero2", "zero3"):
        return deepspeed_config(int(ds[-1]), bf16=bf16)
    return ds


def _init_deepspeed_comm() -> None:
    """Brings up deepspeed.comm on the process group the Trainer's arguments started.

    ZeRO-3 partitions the weights inside from_pretrained (deepspeed.zero.Init), before
    the Trainer starts DeepSpeed. Its config then asks deepspeed.comm for the world size;
    uninitialised, that answers 1 (DeepSpeedConfig catches the error), and with two
    processes the Trainer's train_batch_size (micro x accumulation x 2) fails DeepSpeed's
    check "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
    world_size 16 != 8 * 1 * 1". init_distributed wraps the existing torch group (gloo on
    CPU, NCCL on GPU) and does nothing once it is up.
    """
    import deepspeed  # lazy: a heavy optional dependency, imported only for DeepSpeed runs

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def _check_reporters(report_to: list[str]) -> None:
    # Fail before the model loads, naming the fix, rather than inside Trainer.__init__.
    # Looked up on the module when called, as the in-function import did (tests patch it).
    available = {"tensorboard": hf_integrations.is_tensorboard_available, "wandb": hf_integrations.is_wandb_available}
    missing = [r for r in report_to if not available[r]()]
    if missing:
        raise RuntimeError(f"report_to names {missing}, which is not installed; install it or leave it out "
                           "of the GRPO setting report_to")


def build_grpo_config(settings: GRPOSettings, output_dir: str | os.PathLike, reward_names: list[str]):
    """The TRL GRPOConfig for `settings`; every value that differs from TRL's default is set explicitly."""
    _check_reporters(settings.report_to)

    bf16 = _use_bf16(settings)
    weights = None
    if settings.reward_weights:
        unknown = sorted(set(settings.reward_weights) - set(reward_names))
        if unknown:
            raise ValueError(f"reward_weights name unknown rewards {unknown}; rewards are {reward_names}")
        weights = [float(settings.reward_weights.get(n, 1.0)) for n in reward_names]
    kwargs = dict(
        output_dir=str(output_dir),
        num_generations=settings.num_generations,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        beta=settings.beta,
        loss_type=settings.loss_type,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        scale_rewards=settings.scale_rewards,
        num_iterations=settings.num_iterations,
        steps_per_generation=settings.steps_per_generation,  # None: TRL's default, gradient_accumulation_steps
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_completion_length=settings.max_completion_length,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_steps=settings.max_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=KEEP_STATES,   # the newest state, and the one before it if the newest is damaged
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        max_grad_norm=settings.max_grad_norm,
        bf16=bf16,
        fp16=False,
        # transformers 5 renamed gradient_checkpointing; TRL still defaults the old name to True.
        activation_checkpointing=settings.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        # explicit, so that several CPU processes under torchrun form one gloo group
        use_cpu=not torch.cuda.is_available(),
        deepspeed=_deepspeed_arg(settings, bf16),
        reward_weights=weights,
        report_to=list(settings.report_to),
        disable_tqdm=False,  # TRL/transformers switch the bar off when their log level is above WARN
        dataloader_num_workers=settings.dataloader_num_workers,
        remove_unused_columns=False,  # reward functions read the ground-truth columns
        shuffle_dataset=True,
    )
    kwargs.update(settings.extra_grpo_config)
    return GRPOConfig(**kwargs)


def _check_row(i: int, row: dict) -> None:
    if "prompt" not in row:
        raise ValueError(f"row {i} has no 'prompt' (a list of chat messages)")


def _dataset(rows: Sequence[dict]):
    """A datasets.Dataset view of in-memory rows (TRL requires that type).

    Rows are served as they are, through a transform, instead of being converted to
    Arrow: PIL images and ragged ground-truth columns need no schema that way. An
    "image" given as a path or a reproseg.data.images.ImageRef is decoded when its row is
    served, so a large training set need not sit in memory (or in the multi-GPU job
    file) as decoded images.
    """
    # A Sequence that builds its rows on access (SegAnswer's lazily loaded samples) is
    # kept as it is; its rows are checked when served.
    lazy = isinstance(rows, Sequence) and not isinstance(rows, list)
    rows = rows if lazy else list(rows)
    if not len(rows):
        raise ValueError("no training rows")
    if not lazy:
        for i, r in enumerate(rows):
            _check_row(i, r)

    def serve(batch):
        out: dict[str, list] = {}
        for i in batch["_row"]:
            row = rows[i]
            if lazy:
                _check_row(i, row)
            for k, v in row.items():
                out.setdefault(k, []).append(row_image(v, row.get("id", f"#{i}")) if k == "image" else v)
        return out

    return Dataset.from_dict({"_row": list(range(len(rows)))}).with_transform(serve)


def _policy_identity(policy_dir: Path) -> dict:
    # Names and sizes, not hashes: shards are GBs and this runs on every start.
    return {p.name: p.stat().st_size for p in sorted(policy_dir.iterdir()) if p.is_file()}


def _lora_config(lora: dict):
    cfg = dict(lora)
    # Plain module names would also match the vision tower's MLP (gate/up/down_proj);
    # the default adapts the language model only.
    cfg.setdefault(
        "target_modules",
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    )
    cfg.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(**cfg)


def _weight_names(model_dir: Path) -> set[str]:
    """Tensor names of a safetensors checkpoint, read from the headers only."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@contextlib.contextmanager
def _plain_model_loading():
    """from_pretrained without ZeRO-3's partitioned init (which would load empty shards).

    Training under ZeRO-3 registers its config globally, and every later
    from_pretrained in the process then partitions the weights; the export loads whole
    models on one process, so it is switched off around it.
    """
    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def _save_in_base_layout(state: dict, policy_dir: Path, out: Path) -> None:
    """Saves a state dict keyed by the model's own module names, in the base model's layout.

    transformers 5 writes Qwen2.5-VL under the released checkpoints' names and renames
    them on load. `save_pretrained(state_dict=...)` with module names, which is how the
    Trainer saves a ZeRO-3 model, comes out as a mix of both layouts ("model.model.*")
    that from_pretrained does not read back. So the tensors go into a model loaded from
    the base directory (strictly: every name must match) and are saved from there.
    """
    dtype = next(iter(state.values())).dtype
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy_dir, dtype=dtype, local_files_only=True)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out, safe_serialization=True)


def _export(trainer, policy_dir: Path, target: Path, settings: GRPOSettings, processor) -> None:
    """The current weights in Hugging Face format (LoRA merged) with the processor, written
    atomically to `target`; every rank calls it (the final policy, and each candidate)."""
    main = trainer.accelerator.is_main_process
    staging = target.parent / f".{target.name}-staging"
    zero3_full = trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled() and not settings.lora
    # Every rank takes part in both: under ZeRO-3 the weights are gathered to rank 0.
    if zero3_full:
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    else:
        trainer.save_model(str(staging))
    if main:
        with _plain_model_loading(), atomic_dir(target) as tmp:
            if zero3_full:
                _save_in_base_layout(state, policy_dir, tmp)
            elif settings.lora:
                base = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    policy_dir, dtype=getattr(torch, settings.model_dtype), local_files_only=True
                )
                merged = PeftModel.from_pretrained(base, staging).merge_and_unload()
                merged.save_pretrained(tmp, safe_serialization=True)
            else:
                for p in staging.iterdir():
                    if p.name != "training_args.bin":  # a pickle of the config; not part of an HF model dir
                        shutil.move(str(p), tmp / p.name)
            names, base_names = _weight_names(tmp), _weight_names(policy_dir)
            if names != base_names:
                raise RuntimeError(
                    f"{target.name}: checkpoint tensor names differ from the base model's: "
                    f"{sorted(names ^ base_names)[:6]} ..."
                )
            processor.save_pretrained(tmp)
            write_json(tmp / "engine_summary.json", {
                "settings": settings.to_dict(),
                "global_step": trainer.state.global_step,
                "world_size": trainer.accelerator.num_processes,
                "policy_dir": str(policy_dir),
            })
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def train_grpo(
    policy_dir: str | os.PathLike,
    dataset_rows: Sequence[dict],
    reward_fns: dict[str, Callable[..., Sequence[float | None]]],
    settings: GRPOSettings | dict,
    out_dir: str | os.PathLike,
    log_path: str | os.PathLike,
    *,
    callbacks: Sequence = (),
    trainer_cls: type | None = None,
) -> None:
    """Trains the policy in `policy_dir` with GRPO; resumes if `out_dir` holds a saved state.

    dataset_rows: `{"prompt": [chat messages], "image": PIL.Image, image path or ImageRef, **ground-truth columns}`.
    reward_fns: name -> `fn(completions: list[str], **columns) -> list[float]`, where the
    columns are the rows' columns other than "prompt", one list entry per completion. A
    reward that also implements StatefulReward is flushed after every optimizer step
    and checkpointed. The total reward is the (weighted) sum of the terms.

    On SIGTERM/SIGUSR1 the run saves its full state at the end of the current step and
    raises TrainingInterrupted (exit code 143); calling again with the same arguments
    continues from there.

    callbacks: extra TrainerCallbacks. trainer_cls: a subclass of EngineGRPOTrainer
    (another rollout, e.g. a multi-turn one); default EngineGRPOTrainer.

    Progress goes to tqdm and to `settings.report_to` (TensorBoard files under
    `out_dir/tensorboard` by default) besides the Parquet log.
    """
    settings = settings if isinstance(settings, GRPOSettings) else GRPOSettings.from_dict(settings)
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    resume_dir = out_dir / RESUME_DIR
    reward_names = list(reward_fns)
    if not reward_names:
        raise ValueError("at least one reward function is needed")

    # The config comes before the model: under ZeRO-3 it must exist when the weights load.
    args = build_grpo_config(settings, resume_dir, reward_names)
    if settings.epochs is not None:
        args.max_steps = epoch_steps(settings, len(dataset_rows), args.world_size)
    is_main = args.process_index == 0
    resume_dir.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(resume_dir, {
        "settings": settings.fingerprint(),
        "rewards": reward_names,
        "num_rows": len(dataset_rows),
        "policy": _policy_identity(policy_dir),
        "world_size": args.world_size,
    }, is_main)
    done = completed_checkpoints(resume_dir)
    last = done[-1] if done else None
    resume_step = int(json.loads((last / "trainer_state.json").read_text())["global_step"]) if last else None

    if is_deepspeed_zero3_enabled():
        _init_deepspeed_comm()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        policy_dir, dtype=getattr(torch, settings.model_dtype), local_files_only=True
    )
    processor = AutoProcessor.from_pretrained(policy_dir, local_files_only=True, padding_side="left")

    stateful = {n: f for n, f in reward_fns.items() if isinstance(f, StatefulReward)}
    if last is not None:
        load_reward_states(last, stateful, args.process_index)

    # A stop request left over from an earlier run must not end this one.
    if is_main:
        (resume_dir / STOP_FILE).unlink(missing_ok=True)
    tb_dir = out_dir / (settings.logging_dir or TENSORBOARD_DIR)
    if is_main and last is None and not settings.logging_dir:
        # An earlier run's curves in the default folder would be drawn over this run's.
        shutil.rmtree(tb_dir, ignore_errors=True)
    if args.distributed_state is not None:
        args.distributed_state.wait_for_everyone()
    stop = StopSignal(stop_file=resume_dir / STOP_FILE)
    stop_cb = StopOnSignalCallback(stop, skip_final_save=not settings.keep_resume_state,
                                   steps_per_rollout=settings.updates_per_rollout)
    candidate_cb = CandidateCallback(settings.candidate_every)
    trainer_cls = trainer_cls or EngineGRPOTrainer
    if not issubclass(trainer_cls, EngineGRPOTrainer):
        raise TypeError(f"trainer_cls must subclass EngineGRPOTrainer, got {trainer_cls!r}")
    trainer = trainer_cls(
        model=model,
        reward_funcs=[RewardAdapter(n, f) for n, f in reward_fns.items()],
        args=args,
        train_dataset=_dataset(dataset_rows),
        processing_class=processor,
        peft_config=_lora_config(settings.lora) if settings.lora else None,
        # The stop check comes last so a signal raised by an earlier callback is seen in the same step.
        callbacks=[
            ParquetLogCallback(log_path, reward_names, resume_step),
            RewardStateCallback(stateful),
            *callbacks,
            candidate_cb,
            stop_cb,
        ],
        stateful_rewards=stateful,
    )
    direct_tensorboard(trainer, tb_dir)
    trainer.checkpoint_times_path = out_dir / CHECKPOINT_TIMES
    candidate_cb.export = lambda step: _export(
        trainer, policy_dir, resume_dir / CANDIDATES_DIR / candidate_name(step), settings, processor)
    with stop:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        stopped = stop_cb.stopped_at_step
        if stopped is not None and trainer.state.global_step < args.max_steps:
            raise TrainingInterrupted(stopped, str(resume_dir / f"checkpoint-{stopped}"))
        _export(trainer, policy_dir, out_dir / FINAL_DIR, settings, processor)
    if is_main and settings.candidate_every:
        collect_candidates(resume_dir, out_dir / FINAL_DIR, out_dir / CANDIDATES_DIR, trainer.state.global_step)
    if is_main and not settings.keep_resume_state:
        shutil.rmtree(resume_dir, ignore_errors=True)
