"""FineRS GSE reward terms (paper Eq. 7, max 7): region IoU, region L1, size, cover, format,
think, response. Each is `term(parsed, gt, profile) -> float` (reproseg.finers.reward_terms),
binary except `size` (0, 0.5 or 1), and 0.0 for anything malformed. In a module of its
own, so that an edit here re-runs GSE and what follows, not LPR.

Under a profile with `loose_values` (reference_code) the geometry runs in Python
arithmetic on the values as written, as the authors' seg_restrict8_regions_and_qa.py
does: a NaN side fails the size test on its own (the other can still earn 0.5), an
infinite box covers every object."""
from __future__ import annotations

import math

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import Parsed
from reproseg.finers.reward_terms import (FinersTarget, RewardProfile, box_iou, box_l1, format_score, pred_box,
                                         response_score, safe_term, think_reward)


@safe_term
def region_iou_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    pred = pred_box(parsed, profile, profile.gse_box_key)
    if pred is None or gt.region is None:
        return 0.0
    return float(box_iou(pred, gt.region, profile) > profile.region_iou_min)


@safe_term
def region_l1_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    pred = pred_box(parsed, profile, profile.gse_box_key)
    if pred is None or gt.region is None:
        return 0.0
    return float(box_l1(pred, gt.region, profile) < profile.region_l1_max)


@safe_term
def size_reward(parsed: Parsed, gt: FinersTarget | None, profile: RewardProfile) -> float:
    """1 if both sides are size_target +- size_tol, 0.5 if one is (the paper gives no
    tolerance; 256+-15 with half credit is the code's rule, kept for both profiles)."""
    pred = pred_box(parsed, profile, profile.gse_box_key)
    if pred is None:
        return 0.0
    if profile.loose_values:   # Python arithmetic and chained comparisons, side by side
        e = 1 if profile.size_plus_one else 0
        lo, hi = profile.size_target - profile.size_tol, profile.size_target + profile.size_tol
        ok = [lo <= side <= hi for side in (pred[2] - pred[0] + e, pred[3] - pred[1] + e)]
    else:
        w, h = geo.box_size(pred, plus_one=profile.size_plus_one)
        ok = [math.fabs(s - profile.size_target) <= profile.size_tol for s in (w, h)]
    return 1.0 if all(ok) else 0.5 if any(ok) else 0.0


@safe_term
def cover_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    pred = pred_box(parsed, profile, profile.gse_box_key)
    if pred is None or gt.bbox is None:
        return 0.0
    return float(geo.box_contains(pred, gt.bbox))


@safe_term
def gse_format_reward(parsed: Parsed, gt: FinersTarget | None, profile: RewardProfile) -> float:
    return format_score(parsed, profile, profile.gse_box_key, ())


@safe_term
def gse_response_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    return response_score(parsed, gt, profile, None)  # the code's 3-word cut is LPR-only




TERMS = {"region_iou": region_iou_reward, "region_l1": region_l1_reward, "size": size_reward,
         "cover": cover_reward, "format": gse_format_reward, "think": think_reward,
         "response": gse_response_reward}
