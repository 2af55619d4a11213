"""SegAnswer's stage-3 rewards (paper Eq. 2): R_acc, R_format and R = 0.8 R_acc + 0.2 R_format.

R_acc judges the answer in the final <answer></answer> with reproseg.answers.qa's
answer_correct (which its VQA evaluation uses too); R_format holds when every turn before
the last calls `<|seg|>` and has no <answer> tag, and the last turn holds exactly one
<answer>...</answer> and no `<|seg|>`. A rollout that never answered scores 0 on both.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from reproseg.answers.qa import answer_correct
from reproseg.models.tiny_bundle import SEG_TOKEN
from reproseg.seganswer.prompts import extract_answer

REWARD_WEIGHTS = {"acc": 0.8, "format": 0.2}


def format_ok(turns: Sequence[str], answered: bool) -> bool:
    if not answered or not turns:
        return False
    for t in turns[:-1]:
        if t.count(SEG_TOKEN) < 1 or "<answer>" in t or "</answer>" in t:
            return False
    last = turns[-1]
    return (SEG_TOKEN not in last and last.count("<answer>") == 1 and last.count("</answer>") == 1
            and extract_answer(last) is not None)


def accuracy_reward(completions: list[str], answer: list, answered: list, turns: list,
                    options: list | None = None, **_) -> list[float]:
    """R_acc per rollout (0 for a rollout that never answered)."""
    options = options or [None] * len(completions)
    return [float(bool(ok) and answer_correct(extract_answer(t[-1]), a, o))
            for t, a, ok, o in zip(turns, answer, answered, options)]


def format_reward(completions: list[str], turns: list, answered: list, **_) -> list[float]:
    """R_format per rollout (0 for a rollout that never answered)."""
    return [float(format_ok(t, bool(ok))) for t, ok in zip(turns, answered)]


def total_reward(acc: Sequence[float], fmt: Sequence[float], weights: dict | None = None) -> np.ndarray:
    """R = w_a R_acc + w_f R_format (paper Eq. 2; w_a 0.8, w_f 0.2)."""
    w = weights or REWARD_WEIGHTS
    return w["acc"] * np.asarray(acc, dtype=float) + w["format"] * np.asarray(fmt, dtype=float)
