"""FineRS reward terms as TRL reward functions, one per term so each is logged.

A stage's terms come from its own module (reproseg.finers.lpr_rewards or gse_rewards),
passed in by the stage's script, so that a stage's code fingerprint holds its own terms
and not the other stage's. Dr. Seg's rewards, an option of either stage, live in
reproseg.finers.drseg_option and are loaded only when the stage's config turns them on
(the rules add that module's fingerprint to such a stage's code then).
"""
from __future__ import annotations

import dataclasses
import importlib

from ..answers.parsing import parse
from ..grpo.completions import completion_text
from .reward_terms import FinersTarget, RewardProfile

DRSEG_OPTION = "reproseg.finers.drseg_option"   # the module rules/common.smk fingerprints with it


def profile_for(name: str, region_size: int) -> RewardProfile:
    """The named profile with the size target scaled to this config's region size
    (256 +- 15 in the paper's 1920x1080 GSE frame)."""
    base = RewardProfile.by_name(name)
    return dataclasses.replace(base, size_target=float(region_size),
                               size_tol=base.size_tol * region_size / base.size_target)


def stage_profile(stage: str, cfg: dict) -> RewardProfile:
    """The reward profile of a FineRS stage: GSE's size term aims at the config's region
    size; LPR has no size term, so its jobs need not read (nor re-run on) that key."""
    if stage == "gse":
        return profile_for(cfg["reward_profile"], cfg["region_size"])
    return RewardProfile.by_name(cfg["reward_profile"])


class TermReward:
    """One FineRS reward term as a TRL reward function. A plain class holding a module-level
    function (not a closure) so that the multi-GPU launcher can pickle it."""

    def __init__(self, fn, profile: RewardProfile):
        self.fn, self.profile = fn, profile

    def __call__(self, completions, **columns) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            gt = FinersTarget.from_mapping({k: columns[k][i] for k in ("qtype", "answer", "bbox", "points", "region")
                                            if k in columns})
            out.append(self.fn(parse(completion_text(c)), gt, self.profile))
        return out


def reward_functions(stage: str, terms: dict, profile: RewardProfile, disabled=()) -> dict:
    """{f"{stage}/{term}": TermReward} for every enabled term of `terms`. Disabled terms
    (the ablations) are left out of training altogether."""
    return {f"{stage}/{name}": TermReward(fn, profile) for name, fn in terms.items() if name not in set(disabled)}


def drseg_enabled(stage_cfg: dict) -> bool:
    drseg = stage_cfg["drseg"]
    return bool(drseg["look_to_confirm"] or drseg["distribution_ranked"])


def stage_reward_functions(stage: str, cfg: dict, terms: dict) -> dict:
    """Every reward of a FineRS GRPO stage, Dr. Seg's options included. The hard accuracy
    terms Dr. Seg's ranked reward replaces stay as monitors (stage_reward_weights gives
    them weight 0): a rank is relative to its own history, they say whether boxes improve."""
    stage_cfg = cfg[stage]
    option = importlib.import_module(DRSEG_OPTION) if drseg_enabled(stage_cfg) else None
    fns = reward_functions(stage, terms, stage_profile(stage, cfg), set(stage_cfg["disabled_rewards"]))
    if option is not None:
        fns.update(option.drseg_functions(stage, stage_cfg["drseg"]))
    return fns


def stage_reward_weights(stage: str, cfg: dict, fns: dict) -> dict[str, float] | None:
    """The stage's GRPO reward weights: its `grpo.reward_weights`, over weight 0 for the
    accuracy terms the ranked reward replaces (monitors: logged, never in the advantage);
    None when neither sets any."""
    stage_cfg = cfg[stage]
    monitors = {}
    if drseg_enabled(stage_cfg) and stage_cfg["drseg"]["distribution_ranked"]:
        replaced = importlib.import_module(DRSEG_OPTION).ACCURACY_TERMS[stage]
        monitors = {f"{stage}/{t}": 0.0 for t in replaced if f"{stage}/{t}" in fns}
    weights = {**monitors, **(stage_cfg["grpo"].get("reward_weights") or {})}
    return weights or None


def add_reward_columns(stage: str, cfg: dict, rows: list[dict]) -> None:
    """Columns a stage's optional rewards read beside the FineRS ground truth (Dr. Seg's
    accuracy vector reads the GT as an object list)."""
    if drseg_enabled(cfg[stage]):
        option = importlib.import_module(DRSEG_OPTION)
        for row in rows:
            row["gt_objects"] = option.gt_objects(stage, row)
