"""Dr. Seg's rewards as an option of a FineRS GRPO stage (finers.<stage>.drseg).

Look-to-Confirm adds the `<look>` and non-repeat format rewards; the distribution-ranked
accuracy replaces the stage's hard box thresholds (ACCURACY_TERMS, kept as weight-0
monitors) by quantiles in a FIFO history, on the stage's single-object answer read as
Dr. Seg's object list.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from ..answers.parsing import parse, to_box
from ..drseg.rewards import (DistributionRankedReward, DrSegProfile, FormatReward, accuracy_vector,
                             distributed_gather)
from ..grpo.completions import completion_text

# Accuracy terms the ranked reward replaces (Dr. Seg swaps the task's hard thresholds for
# it); they stay logged with weight 0 (reproseg.finers.rewards.stage_reward_weights).
ACCURACY_TERMS = {"lpr": ("box_iou", "box_l1", "point"), "gse": ("region_iou", "region_l1")}


def as_objects(text: str, stage: str) -> str:
    """The stage's single-object answer as Dr. Seg's object list (bbox_2d, point_2d):
    LPR's box with its first point; GSE's region with its centre."""
    p = parse(text)
    box = p.bbox
    if stage == "gse" and isinstance(p.answer, dict) and "region" in p.answer:
        box = to_box(p.answer["region"])
    if box is None:
        return text   # no object list: x = (0, 0, 0)
    point = p.points_1 if stage == "lpr" and p.points_1 is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    return "<answer>" + json.dumps([{"bbox_2d": list(box), "point_2d": list(point)}]) + "</answer>"


def gt_objects(stage: str, row: dict) -> list[dict]:
    if stage == "lpr":
        return [{"bbox_2d": list(row["bbox"]), "point_2d": list(row["points"][0])}]
    r = row["region"]
    return [{"bbox_2d": list(r), "point_2d": [(r[0] + r[2]) / 2, (r[1] + r[3]) / 2]}]


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
        texts = [as_objects(completion_text(c), self.stage) for c in completions]
        if self.raw:
            vecs = [accuracy_vector(t, g, self.profile) for t, g in zip(texts, columns[self.gt_column])]
            for v in vecs:
                self.queue.push(v)
            # NaN components (reference_code keeps the code's NaN coordinates) count as 0
            return [float(np.nan_to_num(np.asarray(v, dtype=float), nan=0.0).mean()) for v in vecs]
        return super().__call__(texts, **columns)


def drseg_functions(stage: str, drseg: dict) -> dict:
    """Look-to-Confirm (look + non-repeat format rewards) and/or the ranked accuracy."""
    name = drseg["profile"]
    out = {}
    if drseg["look_to_confirm"]:
        out[f"{stage}/look"] = FormatReward("look", name)
        out[f"{stage}/non_repeat"] = FormatReward("non_repeat", name)
    if drseg["distribution_ranked"]:
        out[f"{stage}/ranked_accuracy"] = RankedAccuracy(stage, name, drseg["queue_size"], raw=drseg["raw_accuracy"])
    return out
