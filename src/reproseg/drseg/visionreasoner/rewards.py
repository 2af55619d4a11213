"""Reward terms of the VisionReasoner multi-object task, with Dr. Seg on top.

Each term is `term(parsed, gt, profile) -> float`: `parsed` a completion (text or
reproseg.answers.parsing.Parsed), `gt` the target objects in the 840 frame (a list of
{"bbox_2d", "point_2d"} or its JSON, the training table's `objects` column), `profile` a
reproseg.drseg.rewards.DrSegProfile. A term is 0.0 for malformed output and never raises.
The definitions live in reproseg.drseg.rewards; this module picks them for the setting:

- VisionReasoner (the baseline, profile `visionreasoner`): think format (0/1), answer
  format (per item 0-2), multi-object accuracy (Hungarian on (IoU > 0.5) + (L1 < 10) +
  (point within 30 px and inside its own box), over max(M, N), lists cut to 120; 0-3),
  non-repeat (0/1);
- Dr. Seg (profile `paper` by default, or `reference_code`): the same format terms plus
  Look-to-Confirm's `<look>` term (Eq. 8), and the distribution-ranked accuracy
  (Eq. 9-16) in place of the binary accuracy, which stays as a weight-0 monitor
  (monitor_weights).

In a module of its own, so that an edit of a term re-runs only the stages that train
with these rewards.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from reproseg.answers.parsing import Parsed, parse
from reproseg.drseg import rewards as drr
from reproseg.drseg.rewards import DistributionRankedReward, DrSegProfile, distributed_gather
from reproseg.grpo.completions import completion_text

GT_COLUMN = "gt_objects"   # the column of a training row the terms read the target from


def _parsed(p: Parsed | str) -> Parsed:
    return p if isinstance(p, Parsed) else parse(p)


def safe_term(fn: Callable[..., float]) -> Callable[..., float]:
    """0.0 rather than an exception (the authors' terms swallow theirs). The FineRS terms
    have the same guard; the packages stay apart (tests/test_layout.py), so it is here too."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> float:
        try:
            return float(fn(*args, **kwargs))
        except Exception:
            return 0.0
    return wrapper


@safe_term
def think_format(parsed: Parsed | str, gt: Any, profile: DrSegProfile) -> float:
    """1 when the whole completion is <think>..</think> then <answer>..</answer>."""
    return drr.think_reward(_parsed(parsed))


@safe_term
def answer_format(parsed: Parsed | str, gt: Any, profile: DrSegProfile) -> float:
    return drr.answer_format_reward(_parsed(parsed), profile)


@safe_term
def look(parsed: Parsed | str, gt: Any, profile: DrSegProfile) -> float:
    return drr.look_reward(_parsed(parsed), profile)


@safe_term
def non_repeat(parsed: Parsed | str, gt: Any, profile: DrSegProfile) -> float:
    return drr.non_repeat_reward(_parsed(parsed), profile)


@safe_term
def accuracy(parsed: Parsed | str, gt: Any, profile: DrSegProfile) -> float:
    """VisionReasoner's multi-object accuracy (0-3)."""
    return drr.segzero_accuracy_reward(_parsed(parsed), gt, profile)


FORMAT_TERMS: dict[str, Callable[..., float]] = {"think": think_format, "answer_format": answer_format,
                                                 "non_repeat": non_repeat}
VISIONREASONER_TERMS = {**FORMAT_TERMS, "accuracy": accuracy}


class TermReward:
    """One term as a TRL reward function `(completions, **columns) -> list[float]`. Holds a
    module-level function and a frozen profile, so the multi-GPU launcher can pickle it."""

    def __init__(self, fn: Callable[..., float], profile_name: str, gt_column: str = GT_COLUMN):
        self.fn, self.profile, self.gt_column = fn, DrSegProfile.by_name(profile_name), gt_column

    def __call__(self, completions, **columns) -> list[float]:
        gts = columns.get(self.gt_column) or [None] * len(completions)
        return [self.fn(parse(completion_text(c)), g, self.profile) for c, g in zip(completions, gts, strict=True)]


class RankedAccuracy(DistributionRankedReward):
    """Dr. Seg's distribution-ranked accuracy on TRL completions (text or chat messages),
    its queue `capacity` rows long; ranks are shared across ranks by `distributed_gather`.
    With `raw=True` the reward is the mean of the raw accuracy vector x instead of its
    ranks (Dr. Seg Table 5, "Raw Reward": the same formulation, unnormalised); the queue
    is still kept, so the two settings differ only in that."""

    def __init__(self, profile_name: str, capacity: int, gt_column: str = GT_COLUMN, raw: bool = False):
        base = DrSegProfile.by_name(profile_name)
        profile = dataclasses.replace(base, capacity=capacity, init_rows=min(base.init_rows, capacity))
        super().__init__(profile, gt_column=gt_column, gather_fn=distributed_gather)
        self.raw = raw

    def __call__(self, completions, **columns) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if not self.raw:
            return super().__call__(texts, **columns)
        vecs = [drr.accuracy_vector(t, g, self.profile) for t, g in zip(texts, columns[self.gt_column], strict=True)]
        for v in vecs:
            self.queue.push(v)
        # NaN components (reference_code keeps the code's NaN coordinates) count as 0
        return [float(np.nan_to_num(np.asarray(v, dtype=float), nan=0.0).mean()) for v in vecs]


def reward_functions(*, profile: str, look_to_confirm: bool, distribution_ranked: bool,
                     queue_size: int = 2048, raw_accuracy: bool = False, prefix: str = "vr") -> dict[str, Callable]:
    """{f"{prefix}/{term}": reward function} of one training setting (Dr. Seg Table 4):
    the VisionReasoner baseline is (False, False) under profile `visionreasoner`; Dr. Seg
    is (True, True). Look-to-Confirm adds the <look> term; the ranked accuracy replaces the
    binary one; `raw_accuracy` (with distribution_ranked) takes the mean of x unranked."""
    out: dict[str, Callable] = {f"{prefix}/{name}": TermReward(fn, profile) for name, fn in FORMAT_TERMS.items()}
    if look_to_confirm:
        out[f"{prefix}/look"] = TermReward(look, profile)
    if distribution_ranked:
        name = "raw_accuracy" if raw_accuracy else "ranked_accuracy"
        out[f"{prefix}/{name}"] = RankedAccuracy(profile, queue_size, raw=raw_accuracy)
        # The binary accuracy as a monitor (monitor_weights gives it weight 0): a rank
        # falls back towards the middle as the queue fills with the policy's own
        # vectors, so only the absolute term shows whether the answers get better.
        out[f"{prefix}/accuracy"] = TermReward(accuracy, profile)
    elif raw_accuracy:
        raise ValueError("raw_accuracy is the unranked form of the distribution-ranked reward: "
                         "it needs distribution_ranked")
    else:
        out[f"{prefix}/accuracy"] = TermReward(accuracy, profile)
    return out


def monitor_weights(fns: dict[str, Callable], *, distribution_ranked: bool, prefix: str = "vr") -> dict[str, float]:
    """The GRPO reward weights that make a term of `fns` a monitor only: logged every
    step, never in the advantage. Under the distribution-ranked reward that is the
    binary accuracy (the VisionReasoner baseline trains on it, so its curve is the one
    every variant of Tables 4-6 shares)."""
    name = f"{prefix}/accuracy"
    return {name: 0.0} if distribution_ranked and name in fns else {}
