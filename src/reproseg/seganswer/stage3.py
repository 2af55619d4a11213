"""Stage 3, reasoning with pixel grounding: multi-turn DAPO on the project's GRPO engine (paper Sec. 3.3, 4.2).

What this adds to `reproseg.grpo.engine` (a subclass of its EngineGRPOTrainer, passed as
`train_grpo(..., trainer_cls=)`; the engine's config, resume, stop-signal, Parquet log
and export are reused as they are):
- multi-turn rollouts (rollout.py): generate until the turn ends; on `<|seg|>` decode
  the mask with the frozen projector + mask decoder, append the segmented image with
  its original positions, continue; up to `max_turns` assistant turns;
- the loss forward with the rollouts' own (3, B, L) M-RoPE positions and sparse images
  (TRL never passes position_ids);
- observation tokens out of the loss: TRL's `tool_mask` (loss mask = completion mask x
  tool mask) is 0 on them, so the token-level DAPO loss and its normaliser count only
  model-generated tokens;
- DAPO's dynamic sampling: a prompt group whose rewards are all equal is dropped and
  replaced by groups of further prompts, round after round, until the batch is full;
- R = 0.8 R_acc + 0.2 R_format (TRL's reward_weights), 4 rollouts per prompt, lr 2e-5,
  1 epoch; per-step log of R_acc, R_format, total, `<|seg|>` calls, unanswered rollouts,
  dropped / refilled groups.
DAPO's loss (token-level, decoupled clip epsilon / epsilon_high) is TRL's `loss_type="dapo"`.

Choices where the paper is silent (defaults of Stage3Settings / stage3_grpo_settings):
- clip epsilon_low 0.2, epsilon_high 0.28 and no KL term (beta 0): DAPO's values;
- R_acc: 1 if the answer in the final <answer></answer> matches (multiple choice: the
  option letter, or the option's text; open: normalised string or numeric equality);
- R_format: 1 if every turn before the last holds `<|seg|>` and no <answer> tag, and the
  last turn holds exactly one <answer>...</answer> and no `<|seg|>`; otherwise 0;
- a rollout with no answer within the turn limit scores 0 on both terms;
- refill prompts are drawn at random (seeded by step and round) from the training rows,
  as many as groups are missing; after `max_refill_rounds` rounds a still-short batch
  is completed with dropped groups (zero advantage: no gradient, batch shape kept) and
  the number is logged;
- the logged R_acc / R_format / total are means over all rollouts generated in the step
  (kept or dropped), so the curves track the policy, as in the paper's Fig. 4;
- scale_rewards "batch" is treated as "group" (advantages are computed per kept group);
- the rollout budget is RolloutSettings (max_turns, max_turn_tokens,
  max_completion_tokens); GRPOSettings.max_completion_length is not used by DAPO's loss;
- DAPO's overlong-reward shaping is not used (the paper names only clipping and
  dynamic sampling).

Several processes (`Stage3Settings.processes`, default one per GPU of the job; launched
as the FineRS GRPO stages are, reproseg.grpo.launch): dynamic sampling is decided on the
global batch, as by one process taking it. Every round, each rank's groups' rewards (not
their rollouts) are gathered to every rank, so all ranks see the same kept and dropped
groups, run the same number of refill rounds and draw the same refill prompts; each
refill prompt is rolled out by one rank (the one holding the fewest informative groups),
seeded by its place in the global batch. The kept groups stay on the rank that rolled
them out; ranks holding fewer than the most add copies of their own rollouts with the
loss mask 0 (no gradient, no token count), so every rank's batch has the same shape for
TRL's gathers. DAPO's token normaliser is the token count of the whole global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch.distributed as dist
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from reproseg.config import dataclass_from_dict
from reproseg.curves import plot_curves
from reproseg.grpo.engine import GRPOSettings, train_grpo
from reproseg.grpo.launch import run_distributed
from reproseg.grpo.trainer import EngineGRPOTrainer, zero_std_fraction
from reproseg.io_atomic import write_parquet
from reproseg.runs import CANDIDATES_DIR, FINAL_DIR, run_dir_of
from reproseg.seganswer.model import (
    CONFIG_FILE,
    HEADS_FILE,
    SAM2_SUBDIR,
    SegAnswerConfig,
    SegAnswerModel,
    SegProjector,
    _load_sam2_model,
)
from reproseg.seganswer.positions import sparse_image_features
from reproseg.seganswer.prompts import REASONING_PROMPT, reasoning_messages
from reproseg.seganswer.rewards import REWARD_WEIGHTS, accuracy_reward, format_reward
from reproseg.seganswer.rollout import (
    Rollout,
    RolloutSettings,
    banned_token_ids,
    mask_banned,
    prepare_prompt,
    rollout_batch,
)
from reproseg.seganswer.sources.rows import select
from reproseg.selection import link_file, link_tree

EXTRA_LOG_COLUMNS = ("seg_calls_mean", "seg_calls_total", "unanswered", "rollouts", "dropped_groups",
                     "refill_rounds", "padded_groups", "acc_mean", "format_mean", "total_mean")


# -- dynamic sampling --------------------------------------------------------------------
@dataclass
class Group:
    """The rollouts of one prompt and their total rewards."""

    row: dict | None
    rollouts: list | None  # None in a copy gathered from another rank (light())
    rewards: np.ndarray  # (n,) total reward
    terms: dict = field(default_factory=dict)  # name -> (n,) per-term rewards
    # per rollout: <|seg|> calls, answered (0/1), completion tokens; what the step log needs
    stats: np.ndarray | None = None
    owner: int = 0  # the rank that rolled it out (and trains on it)
    index: int = 0  # its place among the groups of its round in the global batch

    def light(self) -> "Group":
        """What another rank needs of this group: rewards and log numbers, no rollouts."""
        return Group(row=None, rollouts=None, rewards=self.rewards, terms=self.terms, stats=self.stats,
                     owner=self.owner, index=self.index)

    @property
    def all_equal(self) -> bool:
        r = np.asarray(self.rewards, dtype=float)
        return bool(np.allclose(r, r[0])) if r.size else True


@dataclass
class FillStats:
    dropped: int = 0
    refill_rounds: int = 0
    padded: int = 0
    generated_groups: list = field(default_factory=list)  # every group generated this step, in order


def dynamic_sampling(groups: list[Group], target: int, draw_more: Callable[[int, int], list[Group]],
                     max_rounds: int) -> tuple[list[Group], FillStats]:
    """DAPO's dynamic sampling: keep groups with reward variance, refill until `target` groups.

    draw_more(k, round) returns k new groups (rolled out and scored). Groups come back in
    the order they were kept; if still short after `max_rounds` refills, dropped groups
    complete the batch (their advantages are 0) and are counted as padded.
    """
    stats = FillStats(generated_groups=list(groups))
    kept = [g for g in groups if not g.all_equal]
    dropped = [g for g in groups if g.all_equal]
    rounds = 0
    while len(kept) < target and rounds < max_rounds:
        rounds += 1
        new = draw_more(target - len(kept), rounds)
        stats.generated_groups += new
        kept += [g for g in new if not g.all_equal]
        dropped += [g for g in new if g.all_equal]
    stats.dropped = len(dropped)
    stats.refill_rounds = rounds
    kept = kept[:target]
    if len(kept) < target:
        pad = dropped[: target - len(kept)]
        stats.padded = len(pad)
        kept += pad
    return kept, stats


def assign_refills(informative: Sequence[int], k: int) -> list[int]:
    """The rank that rolls out each of `k` refill prompts: one after the other to the rank
    holding the fewest informative groups so far (ties: the lowest rank), so that the kept
    groups, which stay where they were rolled out, spread evenly over the ranks."""
    held = list(informative)
    owners = []
    for _ in range(k):
        r = min(range(len(held)), key=lambda i: (held[i], i))
        owners.append(r)
        held[r] += 1
    return owners


def group_advantages(rewards: np.ndarray, scale: str = "group", eps: float = 1e-4) -> np.ndarray:
    """(r - mean) / (std + eps) within a group ("group"), or only centred ("none"). std is the sample std (as TRL)."""
    r = np.asarray(rewards, dtype=float)
    a = r - r.mean()
    if scale == "group" and r.size > 1:
        a = a / (r.std(ddof=1) + eps)
    return a


# -- batches for the loss ------------------------------------------------------------------
def collate_rollouts(rollouts: Sequence[Rollout], advantages: Sequence[float], pad_id: int,
                     active: Sequence[bool] | None = None) -> dict:
    """TRL's batch layout (left-padded prompts, right-padded completions) plus the SegAnswer extras.

    tool_mask (TRL's name for the rollouts' policy mask: 0 on observation tokens, 1 on the
    policy's and on padding, as TRL pads it); position_ids (3, B, P+C) aligned with that layout; pixel values of all
    images, row after row; image_keeps in the same order. A rollout with `active` False
    (a shape-filler of a multi-process step) has tool_mask 0 throughout: out of the loss.
    """
    B = len(rollouts)
    P = max(r.prompt_len for r in rollouts)
    C = max(max(len(r.ids) - r.prompt_len for r in rollouts), 1)
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    completion_ids = torch.full((B, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((B, C), dtype=torch.long)
    tool_mask = torch.ones((B, C), dtype=torch.long)
    pos = torch.zeros((3, B, P + C), dtype=torch.long)
    pvs, grids, keeps = [], [], []
    for i, r in enumerate(rollouts):
        p, c = r.prompt_len, len(r.ids) - r.prompt_len
        prompt_ids[i, P - p:] = torch.tensor(r.ids[:p])
        prompt_mask[i, P - p:] = 1
        completion_ids[i, :c] = torch.tensor(r.ids[p:])
        completion_mask[i, :c] = 1
        tool_mask[i, :c] = torch.tensor(r.completion_policy_mask, dtype=torch.long)
        if active is not None and not active[i]:
            tool_mask[i] = 0
        pos[:, i, P - p:P] = r.positions[:, :p]
        pos[:, i, P:P + c] = r.positions[:, p:]
        pvs += r.pixel_values
        grids += r.grids
        keeps += r.keeps
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask, "tool_mask": tool_mask,
        "advantages": torch.tensor(list(advantages), dtype=torch.float32),
        "position_ids": pos, "pixel_values": torch.cat(pvs), "image_grid_thw": torch.cat(grids),
        "image_keeps": keeps,
    }


def per_token_logps(lm, batch: dict, logits_to_keep: int, temperature: float = 1.0,
                    compute_entropy: bool = False, input_ids=None, attention_mask=None, banned: Sequence[int] = ()):
    """Log-probs (B, K) of the last K tokens (and entropies) with the batch's positions and sparse images.

    `banned` ids (image placeholders the sampler never draws) are masked as in sampling.
    """
    if input_ids is None:
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    dev = input_ids.device
    with sparse_image_features(lm, batch["image_keeps"]):
        out = lm(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=batch["position_ids"].to(dev), pixel_values=batch["pixel_values"].to(dev),
                 image_grid_thw=batch["image_grid_thw"].to(dev), logits_to_keep=logits_to_keep + 1,
                 use_cache=False)
    logits = mask_banned(out.logits[:, :-1].float(), list(banned)) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    target = input_ids[:, -logits_to_keep:]
    logps = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    # Observation tokens include the image placeholders the policy may not write: their
    # log-prob is -inf under the masked distribution. They are out of the loss; keep them
    # finite so that 0 * inf never turns the loss (and the gradients) into NaN.
    logps = torch.where(torch.isfinite(logps), logps, torch.zeros_like(logps))
    ent = -torch.nan_to_num(logp_all.exp() * logp_all).sum(-1) if compute_entropy else None
    return logps, ent


# -- the trainer ---------------------------------------------------------------------------
@dataclass
class Stage3Settings:
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    dynamic_sampling: bool = True
    max_refill_rounds: int = 4
    # The first user turn (seganswer.reasoning_prompt; {question} is the question and its options).
    reasoning_prompt: str = REASONING_PROMPT
    # Megabytes of frozen SAM image-encoder features kept in memory (the same features, faster); 0: none.
    sam_feature_cache_mb: float = 0
    # Training processes (one per GPU; several CPU processes train over gloo); None: one per
    # GPU of the job (one on CPU). GRPOSettings.per_device_batch_size is per process.
    processes: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "Stage3Settings":
        d = dict(d or {})
        if isinstance(d.get("rollout"), dict):
            d["rollout"] = RolloutSettings.from_dict(d["rollout"])
        return dataclass_from_dict(cls, d, "SegAnswer stage 3")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SegAnswerGRPOTrainer(EngineGRPOTrainer):
    """EngineGRPOTrainer with SegAnswer's multi-turn rollouts, positions and dynamic sampling.

    `bind_trainer` makes the subclass the engine gets as `trainer_cls`; it sets the class
    attributes `seg_heads_dir` (projector + mask decoder + SAM 2.1, frozen),
    `seg_settings` and `seg_rows` (the training rows, also the refill source).
    """

    seg_heads_dir: str = ""
    seg_settings: Stage3Settings = Stage3Settings()
    seg_rows: Sequence[dict] = ()
    seg_step_stats: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        local = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if local % self.num_generations:
            raise ValueError(
                f"per_device_batch_size x steps_per_generation ({local}) must be a multiple of num_generations "
                f"({self.num_generations}): each process rolls out whole prompt groups")
        self.seg = load_heads(self.seg_heads_dir, self.processing_class, device=self.accelerator.device)
        self.seg.enable_feature_cache(self.seg_settings.sam_feature_cache_mb)
        self._seg_batch = None
        self._seg_buffer = None
        self._banned = banned_token_ids(self.processing_class.tokenizer)
        self.seg_step_stats = []

    # rollouts ---------------------------------------------------------------------------
    def _rollout_groups(self, rows: Sequence[dict], seed: int, ids: Sequence[int]) -> list[Group]:
        """Rolls out and scores `rows`, whose places in the round's global batch are `ids`
        (the seeds follow them, so the rollouts do not depend on which rank makes them)."""
        s = self.seg_settings
        was_training = self.model.training
        self.model.eval()
        n = self.num_generations
        per_row = []
        try:
            # Every rank enters this every round, rows or not: under ZeRO-3 it gathers the
            # whole policy (a collective), after which generation needs no other rank.
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             gather_deepspeed3_params=True) as policy:
                if rows:
                    prompts = [prepare_prompt(self.seg, row["image"], row["prompt"]) for row in rows]
                    gens = [torch.Generator().manual_seed(int(seed) * 1000003 + int(j) * n + k)
                            for j in ids for k in range(n)]
                    flat = rollout_batch(self.seg, [p for p in prompts for _ in range(n)], s.rollout, lm=policy,
                                         generators=gens)
                    per_row = [flat[j * n:(j + 1) * n] for j in range(len(rows))]
        finally:
            self.model.train(was_training)
        # scored in train mode: the engine files its reward metrics under the model's mode
        rank = self.accelerator.process_index
        return [dataclasses.replace(self._score(row, rollouts), owner=rank, index=int(j))
                for row, rollouts, j in zip(rows, per_row, ids)]

    def _score(self, row: dict, rollouts: list[Rollout]) -> Group:
        n = len(rollouts)
        inputs = []
        for r in rollouts:
            x = {k: v for k, v in row.items() if k != "prompt"}
            x.update(prompt=row["prompt"], turns=r.turns, answered=r.answered, seg_calls=r.seg_calls,
                     generated_ids=[t for t, m in zip(r.completion_ids, r.completion_policy_mask) if m])
            inputs.append(x)
        completions = [r.text for r in rollouts]
        per_func = self._local_rewards(inputs, [row["prompt"]] * n, completions,
                                       [r.completion_ids for r in rollouts])
        names = list(self.reward_func_names)
        terms = {nm: per_func[:, i] for i, nm in enumerate(names)}
        w = self.reward_weights.detach().cpu().double().numpy()
        total = np.nansum(per_func * w[None, :], axis=1)
        stats = np.array([[r.seg_calls, float(r.answered), len(r.ids) - r.prompt_len] for r in rollouts], float)
        return Group(row=row, rollouts=rollouts, rewards=total, terms=terms, stats=stats)

    def _local_rewards(self, inputs, prompts, completions, completion_ids) -> np.ndarray:
        """(n, terms) rewards of this rank's completions. Not TRL's _calculate_rewards: that
        gathers over the processes, and ranks score different numbers of groups."""
        keys = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        columns = {k: [x[k] for x in inputs] for k in keys}
        out = np.full((len(prompts), len(self.reward_funcs)), np.nan)
        for i, fn in enumerate(self.reward_funcs):  # the engine's RewardAdapters
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            out[:, i] = [np.nan if v is None else v for v in values]
        return out

    def _gather_groups(self, mine: list[Group]) -> list[Group]:
        """Every rank's groups of a round in global order (own ones whole, others light())."""
        if self.accelerator.num_processes == 1:
            return sorted(mine, key=lambda g: g.index)
        parts = [None] * self.accelerator.num_processes
        dist.all_gather_object(parts, [g.light() for g in mine])
        own = {g.index: g for g in mine}
        merged = [own.get(g.index, g) if g.owner == self.accelerator.process_index else g
                  for part in parts for g in part]
        return sorted(merged, key=lambda g: g.index)

    def _generate_step(self, generation_batch: list[dict]) -> list[dict]:
        """Rollouts + rewards + dynamic sampling for one generation batch; returns per-step chunks."""
        n = self.num_generations
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rows = [generation_batch[i] for i in range(0, len(generation_batch), n)]
        # The global batch is every rank's rows in rank order (how accelerate shards TRL's sampler).
        target = len(rows) * world
        step = int(self.state.global_step)
        base_seed = int(self.args.seed) * 7919 + step * 101
        first = rank * len(rows)
        generated = self._gather_groups(self._rollout_groups(rows, base_seed, range(first, first + len(rows))))
        s = self.seg_settings

        def draw_more(k: int, rnd: int) -> list[Group]:
            # Called on every rank alike: k and the history below are the same everywhere.
            rng = np.random.default_rng([int(self.args.seed), step, rnd])
            pick = rng.choice(len(self.seg_rows), size=k, replace=len(self.seg_rows) < k)
            informative = [sum(1 for g in generated if g.owner == r and not g.all_equal) for r in range(world)]
            mine = [i for i, r in enumerate(assign_refills(informative, k)) if r == rank]
            new = self._gather_groups(self._rollout_groups([self.seg_rows[int(pick[i])] for i in mine],
                                                           base_seed + 17 * rnd, mine))
            generated.extend(new)
            return new

        if s.dynamic_sampling:
            kept, stats = dynamic_sampling(list(generated), target, draw_more, s.max_refill_rounds)
        else:
            kept, stats = list(generated), FillStats(generated_groups=list(generated))
        self._log_step(stats)
        mine = [g for g in kept if g.owner == rank]
        most = max(sum(1 for g in kept if g.owner == r) for r in range(world))
        # Shape fillers: this rank's first rollouts again, out of the loss (active False).
        own_first = next(g for g in generated if g.owner == rank)
        fill = [own_first] * (most - len(mine))
        rollouts, adv, active = [], [], []
        for g in mine:
            a = group_advantages(g.rewards, self.scale_rewards if self.scale_rewards != "batch" else "group")
            if g.all_equal:
                a = np.zeros_like(a)
            rollouts += g.rollouts
            adv += a.tolist()
            active += [True] * len(g.rollouts)
        for g in fill:
            rollouts += g.rollouts
            adv += [0.0] * len(g.rollouts)
            active += [False] * len(g.rollouts)
        chunks = np.array_split(np.arange(len(rollouts)), self.args.steps_per_generation)
        pad = self._tokenizer.pad_token_id
        batches = [collate_rollouts([rollouts[i] for i in c], [adv[i] for i in c], pad, [active[i] for i in c])
                   for c in chunks]
        n_items = torch.tensor(float(sum(int((b["completion_mask"] * b["tool_mask"]).sum()) for b in batches)),
                               device=self.accelerator.device)
        # TRL's DAPO normaliser: the loss-token count of the whole global batch
        n_items = self.accelerator.reduce(n_items, reduction="sum") if world > 1 else n_items
        for b in batches:
            b["num_items_in_batch"] = n_items
            self._to_device(b)
            self._maybe_old_logps(b)
        return batches

    def _to_device(self, b: dict) -> None:
        dev = self.accelerator.device
        for k, v in b.items():
            if isinstance(v, torch.Tensor):
                b[k] = v.to(dev)

    def _maybe_old_logps(self, b: dict) -> None:
        generate_every = self.args.steps_per_generation * self.num_iterations
        need_old = self.args.gradient_accumulation_steps % generate_every != 0
        if not need_old and self.beta == 0.0:
            return
        K = b["completion_ids"].shape[1]
        with torch.no_grad():
            if need_old:
                b["old_per_token_logps"], _ = per_token_logps(self.model, b, K, self.temperature, banned=self._banned)
            if self.beta != 0.0:
                if self.ref_model is not None:
                    b["ref_per_token_logps"], _ = per_token_logps(self.ref_model, b, K, self.temperature,
                                                                  banned=self._banned)
                else:
                    ctx = getattr(self.accelerator.unwrap_model(self.model), "disable_adapter", None)
                    with (ctx() if ctx else contextlib.nullcontext()):
                        b["ref_per_token_logps"], _ = per_token_logps(self.model, b, K, self.temperature,
                                                                      banned=self._banned)

    def _log_step(self, stats: FillStats) -> None:
        """Logs the step's numbers over the global batch (every rank's groups, the same on each)."""
        groups = stats.generated_groups
        names = list(self.reward_func_names)
        terms = {nm: np.concatenate([g.terms[nm] for g in groups]) for nm in names}
        total = np.concatenate([g.rewards for g in groups])
        per_rollout = np.concatenate([g.stats for g in groups])
        seg_calls = per_rollout[:, 0]
        row = {
            "seg_calls_mean": float(seg_calls.mean()), "seg_calls_total": float(seg_calls.sum()),
            "unanswered": float((per_rollout[:, 1] == 0).sum()), "rollouts": float(len(per_rollout)),
            "dropped_groups": float(stats.dropped), "refill_rounds": float(stats.refill_rounds),
            "padded_groups": float(stats.padded),
            "acc_mean": float(np.nanmean(terms["acc"])) if "acc" in terms else math.nan,
            "format_mean": float(np.nanmean(terms["format"])) if "format" in terms else math.nan,
            "total_mean": float(total.mean()),
        }
        m = self._metrics["train"]
        for k, v in row.items():
            m[f"seganswer/{k}"].append(v)
        # the engine's Parquet columns (TRL's keys), over every rollout of the step
        m["reward"].append(float(total.mean()))
        m["reward_std"].append(float(total.std(ddof=1)) if total.size > 1 else 0.0)
        for nm in names:
            m[f"rewards/{nm}/mean"].append(float(np.nanmean(terms[nm])))
            m[f"rewards/{nm}/std"].append(float(np.nanstd(terms[nm], ddof=1)) if terms[nm].size > 1 else 0.0)
        m["completions/mean_length"].append(float(per_rollout[:, 2].mean()))
        # the engine's zero-std share, over every group generated in the step
        m["engine/frac_zero_std"].append(zero_std_fraction(total, self.num_generations))
        self.seg_step_stats.append({"step": int(self.state.global_step) + 1, **row})

    # TRL hooks ---------------------------------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._seg_buffer is None:
            self._seg_buffer = self._generate_step(generation_batch)
        return self._seg_buffer[self._step % self.args.steps_per_generation]

    def _generate_and_score_completions(self, inputs):  # pragma: no cover - replaced by _generate_step
        raise NotImplementedError("SegAnswer stage 3 generates through _generate_step")

    def _compute_loss(self, model, inputs):
        self._seg_batch = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._seg_batch = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False, **_):
        if self._seg_batch is None:
            raise RuntimeError("SegAnswer logps need the rollout batch (positions, sparse images)")
        logps, ent = per_token_logps(model, self._seg_batch, logits_to_keep, self.temperature, compute_entropy,
                                     input_ids=input_ids, attention_mask=attention_mask, banned=self._banned)
        return logps, ent, None


def load_heads(path, processor, device="cpu") -> SegAnswerModel:
    """Projector + SAM 2.1 (with the trained mask decoder) of a SegAnswer dir, without its language model."""
    path = Path(path)
    config = SegAnswerConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    sam = _load_sam2_model(path / SAM2_SUBDIR, None, None).to(device).float()
    heads = load_file(str(path / HEADS_FILE))
    projector = SegProjector(config.hidden_size, config.prompt_dim, config.projector_hidden)
    projector.load_state_dict({k[10:]: v for k, v in heads.items() if k.startswith("projector.")}, strict=True)
    sam.sam_mask_decoder.load_state_dict({k[13:]: v for k, v in heads.items() if k.startswith("mask_decoder.")},
                                         strict=True)
    model = SegAnswerModel(None, processor, sam, projector.to(device), config,
                           sam2_checkpoint=str(path / SAM2_SUBDIR / "model.pt"))
    for p in model.projector.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


# -- the stage function ------------------------------------------------------------------
class Stage3Rows(Sequence):
    """Engine rows {"prompt", "image", "answer", "options"} built from training rows on access,
    so the images of a large training set are loaded only when served."""

    def __init__(self, rows: Sequence[dict], template: str = REASONING_PROMPT):
        self.rows = rows
        self.template = template

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self.rows[i]
        return {"prompt": reasoning_messages(r["question"], r.get("options"), self.template),
                "image": r["image"].convert("RGB"),
                "answer": str(r["answer"]), "options": list(r["options"]) if r.get("options") else None}


def stage3_rows(rows: Sequence[dict], template: str = REASONING_PROMPT) -> Stage3Rows:
    """Training rows {"image", "question", "answer", "options"?} -> engine rows with the reasoning prompt."""
    return Stage3Rows(rows, template)


def stage3_grpo_settings(overrides: dict | None = None) -> GRPOSettings:
    """The engine settings of stage 3: DAPO, 4 rollouts, lr 2e-5, R = 0.8 acc + 0.2 format."""
    d = {
        "loss_type": "dapo", "num_generations": 4, "learning_rate": 2e-5, "beta": 0.0,
        "epsilon": 0.2, "epsilon_high": 0.28, "reward_weights": dict(REWARD_WEIGHTS),
        "temperature": 1.0, "weight_decay": 0.0, "gradient_checkpointing": False,
    }
    d.update(overrides or {})
    return GRPOSettings.from_dict(d)


def bind_trainer(heads_dir, settings: Stage3Settings, rows: Sequence[dict],
                 base: type | None = None) -> type:
    """A subclass of `base` (default SegAnswerGRPOTrainer) bound to this run (the engine's `trainer_cls`)."""
    base = base or SegAnswerGRPOTrainer
    if not issubclass(base, SegAnswerGRPOTrainer):
        raise TypeError(f"the stage-3 trainer must subclass SegAnswerGRPOTrainer, got {base!r}")
    return type("BoundSegAnswerGRPOTrainer", (base,),
                {"seg_heads_dir": str(heads_dir), "seg_settings": settings, "seg_rows": rows})


class SegAnswerLogCallback(TrainerCallback):
    """Writes the SegAnswer per-step columns (seg calls, unanswered, refills) to a Parquet file."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.is_file():  # a resumed run keeps its earlier rows

            self.rows = pq.read_table(self.path).to_pylist()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "seganswer/rollouts" not in logs:
            return

        row = {"step": int(state.global_step)}
        for c in EXTRA_LOG_COLUMNS:
            v = logs.get(f"seganswer/{c}")
            row[c] = math.nan if v is None else float(v)
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        write_parquet(self.path, pa.Table.from_pylist(self.rows))


WORKER_TARGET = "reproseg.seganswer.stage3:_train_worker"


def _train_worker(policy_dir, dataset_rows, reward_fns, settings: GRPOSettings, out_dir, log_path, extra_log_path,
                  seg_settings: Stage3Settings, trainer_base: type) -> None:
    """One process of stage 3 (all of it on one process): the engine with the bound trainer."""
    train_grpo(policy_dir, dataset_rows, reward_fns, settings, out_dir, log_path,
               callbacks=[SegAnswerLogCallback(extra_log_path)],
               trainer_cls=bind_trainer(policy_dir, seg_settings, dataset_rows, trainer_base))


def train_stage3(stage2_dir, rows: Sequence[dict], out_dir, log_path, grpo: GRPOSettings | dict | None = None,
                 settings: Stage3Settings | dict | None = None, extra_log_path=None,
                 reward_fns: dict | None = None, trainer_cls: type | None = None) -> Path:
    """Stage 3 from the stage-2 checkpoint; the final SegAnswer checkpoint is `out_dir/checkpoint`.

    rows: {"image", "question", "answer", "options"?}. log_path: the engine's per-step
    Parquet (reward_mean = total R, reward_acc_mean, reward_format_mean, loss, ...);
    extra_log_path (default: beside log_path, `.seganswer.parquet`): `<|seg|>` calls,
    unanswered rollouts, dropped groups and refill rounds per step. reward_fns: the
    reward terms, default {"acc": accuracy_reward, "format": format_reward}; each gets
    the completions plus the columns answer, options, turns, answered, seg_calls and
    generated_ids (the token ids the policy wrote, observations left out).

    With `settings.processes` (default: one per GPU of the job) above one, the engine runs
    once per process (torchrun, reproseg.grpo.launch), the reward functions and
    `trainer_cls` (a SegAnswerGRPOTrainer subclass at module level, default that class)
    passed by reference; a stop signal is passed on to the workers as for the FineRS stages.
    """

    g = grpo if isinstance(grpo, GRPOSettings) else stage3_grpo_settings(grpo)
    s = settings if isinstance(settings, Stage3Settings) else Stage3Settings.from_dict(settings)
    if g.reward_weights is None:
        g.reward_weights = dict(REWARD_WEIGHTS)
    engine_rows = stage3_rows(rows, s.reasoning_prompt)
    log_path = Path(log_path)
    extra = Path(extra_log_path) if extra_log_path else log_path.with_suffix(".seganswer.parquet")
    reward_fns = dict(reward_fns or {"acc": accuracy_reward, "format": format_reward})
    run_distributed(Path(out_dir) / "job.pkl", num_gpus=s.processes, target=WORKER_TARGET,
                    policy_dir=str(stage2_dir), dataset_rows=engine_rows, reward_fns=reward_fns, settings=g,
                    out_dir=str(out_dir), log_path=str(log_path), extra_log_path=str(extra), seg_settings=s,
                    trainer_base=trainer_cls or SegAnswerGRPOTrainer)
    final = Path(out_dir) / FINAL_DIR
    # The projector, mask decoder and SAM 2.1 did not change: carry them over into the final
    # policy and every candidate (each a whole SegAnswer checkpoint); the config goes last.
    # Hard links of stage 2's files (one SAM 2.1 on disk, not one per candidate), each made
    # anew: the engine's final candidate shares its files with `final`, so nothing is
    # written in place.
    candidates = sorted((Path(out_dir) / CANDIDATES_DIR).glob("step-*"))
    for target in (final, *candidates):
        if (target / SAM2_SUBDIR).exists():
            shutil.rmtree(target / SAM2_SUBDIR)
        link_tree(Path(stage2_dir) / SAM2_SUBDIR, target / SAM2_SUBDIR)
        for name in (HEADS_FILE, CONFIG_FILE):
            (target / name).unlink(missing_ok=True)
            link_file(Path(stage2_dir) / name, target / name)
    return final


def stage3_stage(tables: list[str], roots: list[str], stage2: str, checkpoint: str, train_log: str, curves: str,
                 cfg: dict, processes: int | None = None) -> dict:
    """The rule's job; returns its outcome for the provenance record (the processes it trained on).
    processes: the job's (the rule's param), replacing settings.processes when given."""
    rows = select(tables, roots, cfg["data"]["stage3"], "questions")
    # As for FineRS: the step log lives beside the resume state until the run ends.
    run_dir = run_dir_of(checkpoint)
    work_log = run_dir / "train_log.inprogress.parquet"
    train_stage3(stage2, rows, run_dir, work_log, grpo=cfg["stage3"]["grpo"],
                 settings={**cfg["stage3"]["settings"], "sam_feature_cache_mb": cfg["sam_feature_cache_mb"],
                           "reasoning_prompt": cfg["reasoning_prompt"],
                           **({} if processes is None else {"processes": processes})})
    extra = work_log.with_name(work_log.name.replace(".parquet", ".seganswer.parquet"))
    os.replace(work_log, train_log)
    if extra.exists():
        os.replace(extra, Path(train_log).with_suffix(".seganswer.parquet"))
    plot_curves(train_log, curves, title="SegAnswer stage 3 (DAPO): R_acc, R_format, total")
    summary = json.loads((Path(checkpoint) / "engine_summary.json").read_text())
    return {"world_size": summary["world_size"]}
