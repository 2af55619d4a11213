"""FineRS reward terms as TRL reward functions, one per term so each is logged."""
from __future__ import annotations

import dataclasses

from ..rl.parsing import parse
from ..rl.rewards_finers import TERMS, FinersTarget, RewardProfile


def profile_for(name: str, region_size: int) -> RewardProfile:
    """The named profile with the size target scaled to this config's region size
    (256 +- 15 in the paper's 1920x1080 GSE frame)."""
    base = RewardProfile.by_name(name)
    return dataclasses.replace(base, size_target=float(region_size),
                               size_tol=base.size_tol * region_size / base.size_target)


def reward_functions(stage: str, profile: RewardProfile, disabled=()) -> dict:
    """{f"{stage}/{term}": fn(completions, **columns) -> list[float]} for every enabled
    term. Disabled terms (the ablations) are left out of training altogether."""
    from ..rl.engine_trainer import completion_text

    def make(term_fn):
        def fn(completions, **columns):
            out = []
            for i, c in enumerate(completions):
                gt = FinersTarget.from_mapping({k: columns[k][i] for k in ("qtype", "answer", "bbox", "points", "region")
                                                if k in columns})
                out.append(term_fn(parse(completion_text(c)), gt, profile))
            return out
        return fn

    return {f"{stage}/{name}": make(term) for name, term in TERMS[stage].items() if name not in set(disabled)}
