"""FineRS LPR reward terms (paper Eq. 6, max 6): box IoU, box L1, points, format, think,
response. Each is `term(parsed, gt, profile) -> float` (reproseg.finers.reward_terms),
binary, and 0.0 for anything malformed. In a module of its own, so that an edit here
re-runs LPR and what follows, and an edit of a GSE term does not.

Under a profile with `loose_values` (reference_code) the geometry runs in Python
arithmetic on the values as written (reproseg.answers.geometry.py_*), as the authors'
seg_restrict_qa.py does: an infinite box holds every point, a NaN coordinate fails the
comparison it enters, a point is int() of its first two items."""
from __future__ import annotations

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import Parsed, Point, loose_point, to_point
from reproseg.finers.reward_terms import (FinersTarget, RewardProfile, answer_object, box_iou, box_l1, format_score,
                                         pred_box,
                                         read_box, response_score, safe_term, think_reward)


@safe_term
def box_iou_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    pred = pred_box(parsed, profile, "bbox")
    if pred is None or gt.bbox is None:
        return 0.0
    return float(box_iou(pred, gt.bbox, profile) > profile.box_iou_min)


@safe_term
def box_l1_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    pred = pred_box(parsed, profile, "bbox")
    if pred is None or gt.bbox is None:
        return 0.0
    return float(box_l1(pred, gt.bbox, profile) < profile.box_l1_max)


def pair_distance(pred: tuple[Point, Point], gt: tuple[Point, Point], metric: str, python: bool = False) -> float:
    """Mean distance of two predicted points to two GT points under the better of the two
    pairings (the GT points carry no order). `python`: Euclidean distances as math.sqrt
    in Python arithmetic (the code's), not numpy's hypot."""
    if metric == "l1":
        d = geo.point_l1
    else:
        d = geo.py_point_distance if python else geo.point_distance
    straight = d(pred[0], gt[0]) + d(pred[1], gt[1])
    crossed = d(pred[0], gt[1]) + d(pred[1], gt[0])
    return min(straight, crossed) / 2.0


@safe_term
def point_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    d = answer_object(parsed, profile)
    if d is None or gt.points is None:
        return 0.0
    if profile.loose_values:
        p1 = loose_point(d.get("points_1"), profile.point_truncate)
        p2 = loose_point(d.get("points_2"), profile.point_truncate)
    else:
        p1, p2 = to_point(d.get("points_1")), to_point(d.get("points_2"))
        if p1 is not None and p2 is not None and profile.point_truncate:
            p1 = (float(int(p1[0])), float(int(p1[1])))
            p2 = (float(int(p2[0])), float(int(p2[1])))
    if p1 is None or p2 is None:
        return 0.0
    if profile.point_inside_box:
        box = read_box(d.get("bbox"), profile)
        inside = geo.py_point_in_box if profile.loose_values else geo.point_in_box
        if box is None or not (inside(p1, box) and inside(p2, box)):
            return 0.0
    dist = pair_distance((p1, p2), gt.points, profile.point_metric, python=profile.loose_values)
    return float(dist < profile.point_max)


@safe_term
def lpr_format_reward(parsed: Parsed, gt: FinersTarget | None, profile: RewardProfile) -> float:
    return format_score(parsed, profile, "bbox", ("points_1", "points_2"))


@safe_term
def lpr_response_reward(parsed: Parsed, gt: FinersTarget, profile: RewardProfile) -> float:
    return response_score(parsed, gt, profile, profile.ovqa_max_words_lpr)




TERMS = {"box_iou": box_iou_reward, "box_l1": box_l1_reward, "point": point_reward,
         "format": lpr_format_reward, "think": think_reward, "response": lpr_response_reward}
