"""FineRS reward terms as TRL reward functions, one per term so each is logged."""
from __future__ import annotations

import dataclasses

from ..rl.parsing import parse
from ..rl.rewards_drseg import DistributionRankedReward, DrSegProfile
from ..rl.rewards_finers import TERMS, FinersTarget, RewardProfile


def profile_for(name: str, region_size: int) -> RewardProfile:
    """The named profile with the size target scaled to this config's region size
    (256 +- 15 in the paper's 1920x1080 GSE frame)."""
    base = RewardProfile.by_name(name)
    return dataclasses.replace(base, size_target=float(region_size),
                               size_tol=base.size_tol * region_size / base.size_target)


class TermReward:
    """One FineRS reward term as a TRL reward function. A plain class (not a closure) so
    that the multi-GPU launcher can pickle it for its worker processes."""

    def __init__(self, stage: str, term: str, profile: RewardProfile):
        self.stage, self.term, self.profile = stage, term, profile

    def __call__(self, completions, **columns) -> list[float]:
        from ..rl.engine_trainer import completion_text

        fn = TERMS[self.stage][self.term]
        out = []
        for i, c in enumerate(completions):
            gt = FinersTarget.from_mapping({k: columns[k][i] for k in ("qtype", "answer", "bbox", "points", "region")
                                            if k in columns})
            out.append(fn(parse(completion_text(c)), gt, self.profile))
        return out


def reward_functions(stage: str, profile: RewardProfile, disabled=()) -> dict:
    """{f"{stage}/{term}": TermReward} for every enabled term. Disabled terms (the
    ablations) are left out of training altogether."""
    return {f"{stage}/{name}": TermReward(stage, name, profile) for name in TERMS[stage] if name not in set(disabled)}


# ---- Dr. Seg rewards as an option of any FineRS GRPO stage --------------------------

def _as_objects(text: str, stage: str) -> str:
    """The stage's single-object answer as Dr. Seg's object list (bbox_2d, point_2d):
    LPR's box with its first point; GSE's region with its centre."""
    import json as _json

    from ..rl.parsing import to_box

    p = parse(text)
    box = p.bbox
    if stage == "gse" and isinstance(p.answer, dict) and "region" in p.answer:
        box = to_box(p.answer["region"])
    if box is None:
        return text   # no object list: x = (0, 0, 0)
    point = p.points_1 if stage == "lpr" and p.points_1 is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    return "<answer>" + _json.dumps([{"bbox_2d": list(box), "point_2d": list(point)}]) + "</answer>"


def gt_objects(stage: str, row: dict) -> list[dict]:
    if stage == "lpr":
        return [{"bbox_2d": list(row["bbox"]), "point_2d": list(row["points"][0])}]
    r = row["region"]
    return [{"bbox_2d": list(r), "point_2d": [(r[0] + r[2]) / 2, (r[1] + r[3]) / 2]}]


def distributed_gather(rows):
    """Every rank's buffered accuracy vectors, so all ranks keep the same history."""
    import numpy as np
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, np.asarray(rows))
    return np.concatenate([np.asarray(p).reshape(-1, rows.shape[1]) for p in parts])


class FormatReward:
    """Dr. Seg's Look-to-Confirm terms: `kind` "look" (a non-empty <look> block) or
    "non_repeat" (no repeated sentence, no copied template phrase)."""

    def __init__(self, kind: str, profile_name: str):
        self.kind, self.profile_name = kind, profile_name

    def __call__(self, completions, **_) -> list[float]:
        from ..rl.engine_trainer import completion_text
        from ..rl.rewards_drseg import DrSegProfile, look_reward, non_repeat_reward

        fn = look_reward if self.kind == "look" else non_repeat_reward
        profile = DrSegProfile.by_name(self.profile_name)
        return [fn(completion_text(c), profile) for c in completions]


class RankedAccuracy(DistributionRankedReward):
    """Dr. Seg's distribution-ranked accuracy on a FineRS stage's single-object answer.
    With `raw=True` the reward is the mean of the raw accuracy vector instead of its
    ranks (the 'raw reward vs ranked' ablation); the queue is still kept."""

    def __init__(self, stage: str, profile_name: str, capacity: int, raw: bool = False):
        base = DrSegProfile.by_name(profile_name)
        profile = dataclasses.replace(base, capacity=capacity, init_rows=min(base.init_rows, capacity))
        super().__init__(profile, gt_column="gt_objects", gather_fn=distributed_gather)
        self.stage, self.raw = stage, raw

    def __call__(self, completions, **columns):
        import numpy as np

        from ..rl.engine_trainer import completion_text
        from ..rl.rewards_drseg import accuracy_vector

        texts = [_as_objects(completion_text(c), self.stage) for c in completions]
        if self.raw:
            vecs = [accuracy_vector(t, g, self.profile) for t, g in zip(texts, columns[self.gt_column])]
            for v in vecs:
                self.queue.push(v)
            return [float(np.mean(v)) for v in vecs]
        return super().__call__(texts, **columns)


def drseg_functions(stage: str, drseg: dict) -> dict:
    """Look-to-Confirm (look + non-repeat format rewards) and/or the ranked accuracy."""
    name = drseg.get("profile", "paper")
    out = {}
    if drseg.get("look_to_confirm"):
        out[f"{stage}/look"] = FormatReward("look", name)
        out[f"{stage}/non_repeat"] = FormatReward("non_repeat", name)
    if drseg.get("distribution_ranked"):
        out[f"{stage}/ranked_accuracy"] = RankedAccuracy(stage, name, drseg.get("queue_size", 2048),
                                                         raw=drseg.get("raw_accuracy", False))
    return out


# Accuracy terms the ranked reward replaces (Dr. Seg swaps the task's hard thresholds for it).
ACCURACY_TERMS = {"lpr": ("box_iou", "box_l1", "point"), "gse": ("region_iou", "region_l1")}


def stage_reward_functions(stage: str, cfg: dict) -> dict:
    """Every reward of a FineRS GRPO stage, Dr. Seg's options included."""
    stage_cfg = cfg[stage]
    drseg = stage_cfg.get("drseg") or {}
    disabled = set(stage_cfg.get("disabled_rewards", []))
    if drseg.get("distribution_ranked"):
        disabled |= set(ACCURACY_TERMS[stage])
    fns = reward_functions(stage, profile_for(cfg["reward_profile"], cfg.get("region_size", 256)), disabled)
    fns.update(drseg_functions(stage, drseg))
    return fns
