"""Box and point geometry for the reward terms (numpy only).

Boxes are [x1, y1, x2, y2]. Two conventions:

- continuous (the papers' IoU; default): a box spans x1..x2, its area is
  (x2 - x1) * (y2 - y1) with negative sides clamped to 0;
- `plus_one=True` (the authors' code, inherited from Seg-Zero): corners are inclusive
  integer pixels, area (x2 - x1 + 1) * (y2 - y1 + 1), intersection
  (xB - xA + 1) * (yB - yA + 1) clamped at 0. `strict=True` adds the FineRS code's
  overlap test: the intersection counts only when xA < xB and yA < yB, so boxes that
  share one pixel row, or two identical one-pixel boxes, have IoU 0.

IoU is 0 wherever the union is not a positive finite number, and clipped to [0, 1],
so inverted or overflowing boxes never produce NaN or out-of-range scores; `raw=True`
skips that clean-up and gives numpy's plain inter / union (NaN, negative or infinite
values included), as the Seg-Zero / Dr. Seg code computes it.

The `py_*` functions do the FineRS code's arithmetic on Python numbers (no float64
conversion): NaN, infinities and huge integers behave as Python makes them behave, and a
zero union raises ZeroDivisionError (a reward term turns that into 0).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ArrayLike = Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def _rows(values: ArrayLike, width: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, width)


def iou_matrix(a: ArrayLike, b: ArrayLike, *, plus_one: bool = False, strict: bool = False,
               raw: bool = False) -> np.ndarray:
    """(M, N) IoU between M boxes `a` and N boxes `b`."""
    A, B = _rows(a, 4), _rows(b, 4)
    with np.errstate(all="ignore"):
        xa = np.maximum(A[:, None, 0], B[None, :, 0])
        ya = np.maximum(A[:, None, 1], B[None, :, 1])
        xb = np.minimum(A[:, None, 2], B[None, :, 2])
        yb = np.minimum(A[:, None, 3], B[None, :, 3])
        if plus_one:
            iw, ih = xb - xa + 1.0, yb - ya + 1.0
            if strict:
                inter = np.where((xa < xb) & (ya < yb), iw * ih, 0.0)
            else:
                inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
            area_a = (A[:, 2] - A[:, 0] + 1.0) * (A[:, 3] - A[:, 1] + 1.0)
            area_b = (B[:, 2] - B[:, 0] + 1.0) * (B[:, 3] - B[:, 1] + 1.0)
        else:
            inter = np.maximum(xb - xa, 0.0) * np.maximum(yb - ya, 0.0)
            area_a = np.maximum(A[:, 2] - A[:, 0], 0.0) * np.maximum(A[:, 3] - A[:, 1], 0.0)
            area_b = np.maximum(B[:, 2] - B[:, 0], 0.0) * np.maximum(B[:, 3] - B[:, 1], 0.0)
        union = area_a[:, None] + area_b[None, :] - inter
        if raw:
            return inter / union
        ok = np.isfinite(union) & np.isfinite(inter) & (union > 0)
        iou = np.where(ok, inter / np.where(ok, union, 1.0), 0.0)
    return np.clip(np.nan_to_num(iou, nan=0.0), 0.0, 1.0)


def l1_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(M, N) mean absolute difference of the four coordinates (Seg-Zero's box L1)."""
    A, B = _rows(a, 4), _rows(b, 4)
    with np.errstate(all="ignore"):
        return np.mean(np.abs(A[:, None, :] - B[None, :, :]), axis=2)


def distance_matrix(p: ArrayLike, q: ArrayLike) -> np.ndarray:
    """(M, N) Euclidean distance between M points `p` and N points `q`."""
    P, Q = _rows(p, 2), _rows(q, 2)
    return np.hypot(P[:, None, 0] - Q[None, :, 0], P[:, None, 1] - Q[None, :, 1])


def points_in_boxes(points: ArrayLike, boxes: ArrayLike) -> np.ndarray:
    """(M,) whether point i lies in box i, borders included."""
    P, B = _rows(points, 2), _rows(boxes, 4)
    return (P[:, 0] >= B[:, 0]) & (P[:, 0] <= B[:, 2]) & (P[:, 1] >= B[:, 1]) & (P[:, 1] <= B[:, 3])


def box_iou(a: Sequence[float], b: Sequence[float], *, plus_one: bool = False, strict: bool = False) -> float:
    return float(iou_matrix(a, b, plus_one=plus_one, strict=strict)[0, 0])


def box_l1(a: Sequence[float], b: Sequence[float]) -> float:
    return float(l1_matrix(a, b)[0, 0])


def point_distance(p: Sequence[float], q: Sequence[float]) -> float:
    return float(distance_matrix(p, q)[0, 0])


def point_l1(p: Sequence[float], q: Sequence[float]) -> float:
    """Manhattan distance |dx| + |dy|."""
    return float(abs(float(p[0]) - float(q[0])) + abs(float(p[1]) - float(q[1])))


def point_in_box(p: Sequence[float], box: Sequence[float]) -> bool:
    return bool(points_in_boxes(p, box)[0])


def box_contains(outer: Sequence[float], inner: Sequence[float]) -> bool:
    """`inner` lies fully inside `outer`, borders included."""
    return (outer[0] <= inner[0] and outer[1] <= inner[1]
            and outer[2] >= inner[2] and outer[3] >= inner[3])


def box_size(box: Sequence[float], *, plus_one: bool = False) -> tuple[float, float]:
    """(width, height); `plus_one` counts inclusive pixels as the authors' code does."""
    extra = 1.0 if plus_one else 0.0
    return float(box[2]) - float(box[0]) + extra, float(box[3]) - float(box[1]) + extra


# ---- the FineRS code's arithmetic on Python numbers ---------------------------------

def py_box_iou(pred: Sequence, gt: Sequence, *, plus_one: bool = True, strict: bool = True) -> float:
    """IoU of `pred` against `gt` in Python arithmetic. The argument order matters for
    NaN, as in the code: max(nan, 1) is nan but max(1, nan) is 1."""
    e = 1 if plus_one else 0
    xa, ya = max(pred[0], gt[0]), max(pred[1], gt[1])
    xb, yb = min(pred[2], gt[2]), min(pred[3], gt[3])
    if strict:
        inter = (xb - xa + e) * (yb - ya + e) if (xa < xb and ya < yb) else 0
    else:
        inter = max(xb - xa + e, 0) * max(yb - ya + e, 0)
    area_p = (pred[2] - pred[0] + e) * (pred[3] - pred[1] + e)
    area_g = (gt[2] - gt[0] + e) * (gt[3] - gt[1] + e)
    return float(inter) / (area_p + area_g - inter)


def py_box_l1(pred: Sequence, gt: Sequence) -> float:
    """Mean absolute coordinate difference in Python arithmetic."""
    return (abs(pred[0] - gt[0]) + abs(pred[1] - gt[1]) + abs(pred[2] - gt[2]) + abs(pred[3] - gt[3])) / 4


def py_point_distance(p: Sequence, q: Sequence) -> float:
    """Euclidean distance as math.sqrt of the squared differences."""
    return math.sqrt((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2)


def py_point_in_box(p: Sequence, box: Sequence) -> bool:
    """Borders included, Python comparisons (NaN is never inside; infinite boxes hold all)."""
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]
