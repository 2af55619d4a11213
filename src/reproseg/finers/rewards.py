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


def ranked_accuracy(stage: str, profile_name: str, capacity: int, raw: bool = False):
    import dataclasses as dc

    import numpy as np

    from ..rl.engine_trainer import completion_text
    from ..rl.rewards_drseg import DistributionRankedReward, DrSegProfile, accuracy_vector

    profile = dc.replace(DrSegProfile.by_name(profile_name), capacity=capacity,
                         init_rows=min(DrSegProfile.by_name(profile_name).init_rows, capacity))

    class _Ranked(DistributionRankedReward):
        def __call__(self, completions, **columns):
            texts = [_as_objects(completion_text(c), stage) for c in completions]
            if raw:
                vecs = [accuracy_vector(t, g, self.profile) for t, g in zip(texts, columns[self.gt_column])]
                for v in vecs:
                    self.queue.push(v)
                return [float(np.mean(v)) for v in vecs]
            return super().__call__(texts, **columns)

    return _Ranked(profile, gt_column="gt_objects", gather_fn=distributed_gather)


def drseg_functions(stage: str, drseg: dict) -> dict:
    """Look-to-Confirm (look + non-repeat format rewards) and/or the ranked accuracy."""
    from ..rl.engine_trainer import completion_text
    from ..rl.rewards_drseg import DrSegProfile, look_reward, non_repeat_reward

    profile = DrSegProfile.by_name(drseg.get("profile", "paper"))
    out = {}
    if drseg.get("look_to_confirm"):
        out[f"{stage}/look"] = lambda completions, **_: [look_reward(completion_text(c), profile) for c in completions]
        out[f"{stage}/non_repeat"] = lambda completions, **_: [non_repeat_reward(completion_text(c), profile)
                                                              for c in completions]
    if drseg.get("distribution_ranked"):
        out[f"{stage}/ranked_accuracy"] = ranked_accuracy(stage, profile.name, drseg.get("queue_size", 2048),
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
