"""The pieces the engine puts into TRL's GRPOTrainer: reward adapters, a resumable sampler,
a zero-std metric taken from the gathered rewards, and reward state saved with checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from reproseg.grpo.completions import completion_text
from reproseg.runs import CheckpointClock, FullWeightsResume

REWARD_STATE_DIR = "reward_state"

# Keyword arguments TRL adds for its own reward-function API; the project's reward
# callables take only the completions and the dataset columns.
_TRL_REWARD_KWARGS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


@runtime_checkable
class StatefulReward(Protocol):
    """A reward that keeps state across optimizer steps (Dr. Seg's quantile queue).

    The engine calls `on_step_end()` once after every optimizer step, stores
    `state_dict()` next to every checkpoint, and calls `load_state_dict()` when a run
    resumes from that checkpoint. Under several processes each rank has its own
    instance and sees only its own completions; a reward that must agree across ranks
    gathers in `on_step_end`.
    """

    def __call__(self, completions: list[str], **columns) -> list[float]: ...

    def on_step_end(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RewardAdapter:
    """Turns `fn(completions: list[str], **columns) -> list[float]` into a TRL reward function.

    TRL names a reward term by `__name__`, so each term's mean and std are logged under
    the name the caller gave it.
    """

    def __init__(self, name: str, fn: Callable[..., Sequence[float | None]]):
        self.__name__ = name
        self.fn = fn

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_REWARD_KWARGS}
        texts = [completion_text(c) for c in completions]
        out = list(self.fn(texts, **columns))
        if len(out) != len(texts):
            raise ValueError(f"reward {self.__name__!r} returned {len(out)} values for {len(texts)} completions")
        # None is TRL's "not applicable" (NaN); anything else must be a number.
        return [None if v is None else float(v) for v in out]


def zero_std_fraction(rewards: Sequence[float] | torch.Tensor, num_generations: int) -> float:
    """Fraction of prompt groups whose rewards are all equal (zero std: no GRPO signal).

    `rewards` holds consecutive groups of `num_generations` completions of one prompt,
    as TRL orders them. NaN rewards are left out of their group's std; a group with no
    finite reward is not counted as zero-std. Same tolerance as TRL's own check.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1, num_generations)
    finite = torch.isfinite(r)
    count = finite.sum(dim=1)
    mean = torch.where(finite, r, 0.0).sum(dim=1) / count.clamp(min=1)
    var = torch.where(finite, (r - mean[:, None]) ** 2, 0.0).sum(dim=1) / count.clamp(min=1)
    zero = torch.isclose(var.sqrt(), torch.zeros_like(var)) & (count > 0)
    return float(zero.double().mean())


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler with the shuffle seeded per epoch.

    TRL's sampler seeds its generator once and advances it every epoch, so a run
    resumed in epoch k would replay epoch 0's order. The Trainer calls `set_epoch`
    before every epoch (also when resuming), which makes the order a function of
    (seed, epoch) alone.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed(int(self.seed or 0) + int(epoch))


def reward_state_file(checkpoint_dir: str | os.PathLike, rank: int) -> Path:
    return Path(checkpoint_dir) / REWARD_STATE_DIR / f"rank{rank:05d}.pt"


def save_reward_states(checkpoint_dir, rewards: dict[str, StatefulReward], rank: int) -> None:
    if not rewards:
        return
    path = reward_state_file(checkpoint_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({name: r.state_dict() for name, r in rewards.items()}, tmp)
    os.replace(tmp, path)


def load_reward_states(checkpoint_dir, rewards: dict[str, StatefulReward], rank: int) -> None:
    if not rewards:
        return
    path = reward_state_file(checkpoint_dir, rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint has no reward state for rank {rank} "
            "(was it written with another number of processes?)"
        )
    # Written by this engine, may hold numpy arrays: not restricted to weights.
    states = torch.load(path, map_location="cpu", weights_only=False)
    missing = sorted(set(rewards) - set(states))
    if missing:
        raise KeyError(f"{path} has no state for reward(s) {missing}")
    for name, reward in rewards.items():
        reward.load_state_dict(states[name])


class EngineGRPOTrainer(FullWeightsResume, CheckpointClock, GRPOTrainer):
    """GRPOTrainer with a per-epoch-seeded sampler, an own zero-std metric, reward state in checkpoints
    and the checkpoint clock (reproseg.runs.CheckpointClock)."""

    def __init__(self, *args, stateful_rewards: dict[str, StatefulReward] | None = None, **kwargs):
        self.stateful_rewards = dict(stateful_rewards or {})
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return EpochSeededRepeatSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Gathered over all processes, so every prompt group is whole here. TRL's own
        # frac_reward_zero_std follows scale_rewards (batch std under "batch"); this
        # one is always per group.
        weights = self.reward_weights.to(rewards_per_func.device)
        total = (rewards_per_func * weights).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        self._metrics[mode]["engine/frac_zero_std"].append(zero_std_fraction(total.cpu(), n))
        return rewards_per_func

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's files: trainer_state.json comes last, so a
        # checkpoint that has it also has the reward state.
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with self.timed_save():
            save_reward_states(folder, self.stateful_rewards, self.args.process_index)
            super()._save_checkpoint(model, trial)
