"""Dr. Seg rewards: Look-to-Confirm format terms (paper Eq. 8), the Seg-Zero /
VisionReasoner multi-object terms, and the distribution-ranked accuracy reward
(Eq. 9-16) with its FIFO quantile queue.

Answers are lists `[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]`; a ground
truth is the same list, as Python objects or as its JSON string.

`DrSegProfile.paper()` (default) follows the paper's text; `DrSegProfile.reference_code()`
reproduces the authors' code (xVI-group-SCU/Dr-Seg, verl/utils/reward_score/dr_seg.py,
vision_reasoner.py and drr_module/serve.py), field by field. Terms never raise.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import MAX_OBJECTS, Parsed, parse, to_box, to_point
from reproseg.grpo.completions import completion_text

# The phrases of Dr. Seg's prompt template that a lazy policy copies verbatim.
TEMPLATE_PLACEHOLDERS = ("your reasoning text", "your visual focus", "more reasoning text")
_OBJECT_KEYS = {"bbox_2d", "point_2d"}


@dataclass(frozen=True)
class DrSegProfile:
    name: str
    look_in_answer: bool        # code also accepts a <look> block inside <answer>
    per_item_format: bool       # code: answer format = per-item key checks averaged (0-2)
    nr_code_rule: bool          # code: lower-case, split on .!? (and CJK), strip punctuation
    nr_max_repeats: int         # 0 once this many repeated sentences are seen (paper 1, code 2)
    nr_scope_think: bool        # paper: the thinking trace; code: the whole completion
    placeholders: tuple[str, ...]   # template phrases that zero the non-repeat reward
    match_by_criteria: bool     # code: Hungarian on the Seg-Zero criteria, not on IoU
    iou_plus_one: bool          # code: inclusive-pixel IoU (no strict overlap test)
    empty_pair_full: bool       # paper: empty answer for an empty GT is fully right
    sum_rounded: bool           # code: sum of quantiles rounded to 0.1 (0-3); paper: mean (0-1)
    queue_dtype: str            # code keeps the queue and queries in float32
    capacity: int = 2048        # 16 steps of 128 rollouts
    init_rows: int = 128        # one step of zeros
    point_lo: float = 30.0
    point_hi: float = 200.0

    @classmethod
    def paper(cls) -> "DrSegProfile":
        return cls(name="paper", look_in_answer=False, per_item_format=False, nr_code_rule=False,
                   nr_max_repeats=1, nr_scope_think=True, placeholders=(), match_by_criteria=False,
                   iou_plus_one=False, empty_pair_full=True, sum_rounded=False, queue_dtype="float64")

    @classmethod
    def reference_code(cls) -> "DrSegProfile":
        return cls(name="reference_code", look_in_answer=True, per_item_format=True, nr_code_rule=True,
                   nr_max_repeats=2, nr_scope_think=False, placeholders=TEMPLATE_PLACEHOLDERS,
                   match_by_criteria=True, iou_plus_one=True, empty_pair_full=False,
                   sum_rounded=True, queue_dtype="float32")

    @classmethod
    def by_name(cls, name: str) -> "DrSegProfile":
        if name == "paper":
            return cls.paper()
        if name == "reference_code":
            return cls.reference_code()
        raise ValueError(f"unknown Dr. Seg reward profile {name!r}; expected 'paper' or 'reference_code'")


def _parsed(p: Parsed | str) -> Parsed:
    return p if isinstance(p, Parsed) else parse(p)


# ---------------------------------------------------------------- format terms (Eq. 8)

def think_reward(parsed: Parsed | str) -> float:
    return float(_parsed(parsed).think_ok)


def look_reward(parsed: Parsed | str, profile: DrSegProfile | None = None) -> float:
    """1 for a <look> block with non-blank content inside the thinking trace."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    blocks = p.looks + (p.answer_looks if profile.look_in_answer else ())
    return float(any(b.strip() for b in blocks))


def answer_format_reward(parsed: Parsed | str, profile: DrSegProfile | None = None) -> float:
    """Paper: 1 if the answer is a list of exactly {bbox_2d: 4 numbers, point_2d: 2 numbers}
    items (an empty list is a valid "no object" answer). Code: per item, +1 for a bbox_2d
    list of 4 and +1 for a point_2d list of 2, averaged over items (0-2)."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    data = p.answer
    if not isinstance(data, list):
        return 0.0
    if profile.per_item_format:
        score = 0.0
        for item in data:
            if not isinstance(item, dict):
                continue
            b, pt = item.get("bbox_2d"), item.get("point_2d")
            score += (isinstance(b, list) and len(b) == 4) + (isinstance(pt, list) and len(pt) == 2)
        return score / len(data) if data else 0.0
    ok = all(isinstance(item, dict) and set(item) == _OBJECT_KEYS and to_box(item["bbox_2d"]) is not None
             and to_point(item["point_2d"]) is not None for item in data)
    return float(ok)


@functools.lru_cache(maxsize=32)
def _placeholder_patterns(phrases: tuple[str, ...]) -> list[re.Pattern]:
    # Words may be separated by any run of whitespace or punctuation ("your -reasoning- text").
    return [re.compile(r"\b" + r"[\s\W]*".join(re.escape(w) for w in ph.split()) + r"\b", re.IGNORECASE)
            for ph in phrases if ph.split()]


_CODE_SPLIT = re.compile(r"[.。!?？！…]+")
_CODE_STRIP = " \"'“”‘’[](){}，,;:、"


def non_repeat_reward(parsed: Parsed | str, profile: DrSegProfile | None = None,
                      placeholders: Sequence[str] | None = None) -> float:
    """0 when sentences repeat (see the profile) or a template placeholder phrase appears.

    Paper: the thinking trace (whole text if there is no think block), split on '.',
    case-sensitive, 0 from the first repeat. Code: whole completion, lower-cased, split on
    sentence ends, surrounding punctuation stripped, 0 from the second repeat."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    phrases = profile.placeholders if placeholders is None else tuple(str(s) for s in placeholders)
    text = p.think if (profile.nr_scope_think and p.think is not None) else p.text
    if any(pat.search(text) for pat in _placeholder_patterns(phrases)):
        return 0.0
    if profile.nr_code_rule:
        sentences = [" ".join(s.strip().strip(_CODE_STRIP).split()).lower() for s in _CODE_SPLIT.split(text)]
    else:
        sentences = [s.strip() for s in text.split(".")]
    seen: set[str] = set()
    repeats = 0
    for s in sentences:
        if not s:
            continue
        if s in seen:
            repeats += 1
            if repeats >= profile.nr_max_repeats:
                return 0.0
        seen.add(s)
    return 1.0


# ---------------------------------------------------------------- objects and matching

def _objects(parsed: Parsed) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """(M, boxes, points) of the prediction. M is 0 unless the answer is a list whose
    items all carry both keys (the code's extraction fails as a whole otherwise);
    boxes/points are None when some value is not well formed (M still counts)."""
    data = parsed.answer
    if not isinstance(data, list) or not all(isinstance(i, dict) and _OBJECT_KEYS <= set(i) for i in data):
        return 0, None, None
    objs = parsed.objects  # already cut to MAX_OBJECTS
    if any(o.bbox is None or o.point is None for o in objs):
        return len(objs), None, None
    return (len(objs), np.array([o.bbox for o in objs], dtype=np.float64).reshape(-1, 4),
            np.array([o.point for o in objs], dtype=np.float64).reshape(-1, 2))


def gt_objects(gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """GT boxes (N, 4) and points (N, 2) from a list of {bbox_2d, point_2d} or its JSON
    string, cut to MAX_OBJECTS. Malformed ground truth counts as no objects."""
    try:
        if isinstance(gt, (str, bytes)):
            gt = json.loads(gt)
        boxes = [to_box(item["bbox_2d"]) for item in gt][:MAX_OBJECTS]
        points = [to_point(item["point_2d"]) for item in gt][:MAX_OBJECTS]
        if any(b is None for b in boxes) or any(p is None for p in points):
            raise ValueError("malformed GT object")
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(points, dtype=np.float64).reshape(-1, 2)
    except Exception:
        return np.zeros((0, 4)), np.zeros((0, 2))


def criteria_matrix(pred_boxes: np.ndarray, pred_points: np.ndarray, gt_boxes: np.ndarray,
                    gt_points: np.ndarray, *, plus_one: bool = True) -> np.ndarray:
    """Seg-Zero's all-or-nothing (M, N) score: (IoU > 0.5) + (box L1 < 10) +
    (point distance < 30 and the predicted point inside its own predicted box)."""
    iou = geo.iou_matrix(pred_boxes, gt_boxes, plus_one=plus_one)
    l1 = geo.l1_matrix(pred_boxes, gt_boxes)
    dist = geo.distance_matrix(pred_points, gt_points)
    inside = geo.points_in_boxes(pred_points, pred_boxes)
    return (iou > 0.5).astype(float) + (l1 < 10).astype(float) + ((dist < 30) & inside[:, None]).astype(float)


def segzero_accuracy_reward(parsed: Parsed | str, gt: Any, profile: DrSegProfile | None = None) -> float:
    """Seg-Zero / VisionReasoner multi-object accuracy: Hungarian matching on the criteria
    matrix, summed matched scores divided by max(M, N); range 0-3."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    try:
        m, pb, pp = _objects(p)
        gb, gp = gt_objects(gt)
        n = len(gb)
        if m == 0 or n == 0:
            return 3.0 if (m == n == 0 and profile.empty_pair_full) else 0.0
        if pb is None:
            return 0.0
        crit = criteria_matrix(pb, pp, gb, gp, plus_one=profile.iou_plus_one)
        rows, cols = linear_sum_assignment(3.0 - crit)
        return float(crit[rows, cols].sum() / max(m, n))
    except Exception:
        return 0.0


def point_score(d: float, lo: float = 30.0, hi: float = 200.0) -> float:
    """Eq. 16: 1 up to `lo` px, linear down to 0 at `hi` px; NaN scores 0."""
    d = float(d)
    if not d == d:  # NaN
        return 0.0
    if d <= lo:
        return 1.0
    if d >= hi:
        return 0.0
    return (hi - d) / (hi - lo)


def accuracy_vector(parsed: Parsed | str, gt: Any, profile: DrSegProfile | None = None) -> np.ndarray:
    """x = (x1 mean IoU over matched pairs, x2 = min(M, N) / max(M, N), x3 mean point
    score over matched pairs), each in [0, 1]. Pairs come from Hungarian matching on IoU
    (paper) or on the Seg-Zero criteria (code). x2 is 1 when both lists are empty; x1
    and x3 are 0 without pairs."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    x = np.zeros(3)
    try:
        m, pb, pp = _objects(p)
        gb, gp = gt_objects(gt)
        n = len(gb)
        x[1] = 1.0 if m == n == 0 else min(m, n) / max(m, n)
        if m == 0 or n == 0 or pb is None:
            return x
        iou = geo.iou_matrix(pb, gb, plus_one=profile.iou_plus_one)
        if profile.match_by_criteria:
            cost = 3.0 - criteria_matrix(pb, pp, gb, gp, plus_one=profile.iou_plus_one)
        else:
            cost = -iou
        rows, cols = linear_sum_assignment(cost)
        dist = geo.distance_matrix(pp, gp)[rows, cols]
        x[0] = float(np.mean(iou[rows, cols]))
        x[2] = float(np.mean([point_score(d, profile.point_lo, profile.point_hi) for d in dist]))
    except Exception:
        x[0] = x[2] = 0.0
    return x


# ---------------------------------------------------------------- quantile queue (Eq. 10-12)

def _identity(rows: np.ndarray) -> np.ndarray:
    return rows


class QuantileQueue:
    """FIFO history of accuracy vectors for the per-dimension empirical CDF.

    `rank(x)` = count(s <= x) / n per dimension, against the queue as of the last flush;
    `push(rows)` only buffers; `flush()` (after every optimizer step) appends the buffer
    and drops the oldest rows beyond `capacity`. The queue starts as `init_rows` zero
    rows, so at the first step every answer ranks 1.0 in every dimension.

    `gather_fn(local_rows) -> all_rows` runs at every flush, also with an empty local
    buffer, since collective calls need every rank. It should return the concatenation
    over ranks in rank order, so that all ranks keep identical queues.
    """

    def __init__(self, capacity: int = 2048, init_rows: int = 128, dim: int = 3,
                 dtype: str | np.dtype = "float64",
                 gather_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        if capacity < 1 or init_rows < 0 or dim < 1:
            raise ValueError(f"bad queue shape: capacity={capacity}, init_rows={init_rows}, dim={dim}")
        self.capacity, self.dim = int(capacity), int(dim)
        self.dtype = np.dtype(dtype)
        self.gather_fn = gather_fn or _identity
        self._rows = np.zeros((min(int(init_rows), self.capacity), self.dim), dtype=self.dtype)
        self._buffer: list[np.ndarray] = []
        self._resort()

    def _resort(self) -> None:
        self._sorted = np.sort(self._rows, axis=0)

    def _as_rows(self, rows: Any) -> np.ndarray:
        arr = np.asarray(rows, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, self.dim), dtype=np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"expected rows of {self.dim} values, got shape {np.shape(rows)}")
        if not np.isfinite(arr).all():
            raise ValueError("queue rows must be finite")
        return arr

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    @property
    def rows(self) -> np.ndarray:
        return self._rows.copy()

    @property
    def buffered(self) -> int:
        return int(sum(b.shape[0] for b in self._buffer))

    def rank(self, x: Any) -> np.ndarray:
        """Quantiles of `x` (shape (dim,) or (B, dim)); NaN ranks 0; an empty queue ranks 0."""
        q_in = np.asarray(x, dtype=np.float64)
        single = q_in.ndim == 1
        q = q_in.reshape(-1, self.dim).astype(self.dtype)
        n = self._sorted.shape[0]
        out = np.zeros(q.shape, dtype=np.float64)
        if n:
            for j in range(self.dim):
                out[:, j] = np.searchsorted(self._sorted[:, j], q[:, j], side="right") / n
        out[np.isnan(q)] = 0.0  # searchsorted puts NaN past the end, which would rank 1.0
        return out[0] if single else out

    def push(self, rows: Any) -> None:
        self._buffer.append(self._as_rows(rows))

    def flush(self) -> dict[str, int]:
        local = (np.concatenate(self._buffer, axis=0) if self._buffer
                 else np.zeros((0, self.dim), dtype=np.float64))
        self._buffer = []
        new = self._as_rows(self.gather_fn(local)).astype(self.dtype)
        rows = np.concatenate([self._rows, new], axis=0)
        dropped = max(0, rows.shape[0] - self.capacity)
        self._rows = rows[dropped:]
        self._resort()
        return {"added": int(new.shape[0]), "dropped": int(dropped), "size": len(self)}

    def state_dict(self) -> dict:
        """Plain lists: JSON- and torch.save-able. float32 values convert to Python floats exactly."""
        buf = np.concatenate(self._buffer, axis=0) if self._buffer else np.zeros((0, self.dim))
        return {"version": 1, "capacity": self.capacity, "dim": self.dim, "dtype": self.dtype.name,
                "rows": self._rows.tolist(), "buffer": buf.tolist()}

    def load_state_dict(self, state: dict) -> None:
        dim = int(state.get("dim", self.dim))
        if dim != self.dim:
            raise ValueError(f"state has dim {dim}, queue has {self.dim}")
        rows = np.asarray(state["rows"], dtype=np.float64).reshape(-1, self.dim)
        buf = np.asarray(state.get("buffer", []), dtype=np.float64).reshape(-1, self.dim)
        self._rows = rows[max(0, rows.shape[0] - self.capacity):].astype(self.dtype)
        self._buffer = [buf] if buf.shape[0] else []
        self._resort()


def ranked_reward(q: Sequence[float], profile: DrSegProfile | None = None) -> float:
    """Eq. 12: mean of the quantiles (paper), or the code's sum of quantiles each rounded
    to one decimal (range 0-3)."""
    profile = profile or DrSegProfile.paper()
    if profile.sum_rounded:
        return float(sum(round(float(v), 1) for v in q))
    return float(np.mean(np.asarray(q, dtype=np.float64)))


class DistributionRankedReward:
    """The distribution-ranked accuracy reward as an engine reward (StatefulReward).

    Call with `(completions, **columns)`: the GT of each completion is read from the
    column `gt_column`. Each accuracy vector is ranked against the queue, then buffered;
    `on_step_end()` flushes the buffer. A completion with no parsable answer still gets
    x = (0, 0 or 1, 0), as in the code: the ranks of that vector are the reward.
    """

    def __init__(self, profile: DrSegProfile | None = None, gt_column: str = "gt_objects",
                 gather_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        self.profile = profile or DrSegProfile.paper()
        self.gt_column = gt_column
        self.queue = QuantileQueue(self.profile.capacity, self.profile.init_rows, 3,
                                   self.profile.queue_dtype, gather_fn)
        self.last_details: list[dict[str, float]] = []

    def score(self, parsed: Parsed | str, gt: Any) -> float:
        x = accuracy_vector(parsed, gt, self.profile)
        q = self.queue.rank(x)
        self.queue.push(x)
        r = ranked_reward(q, self.profile)
        self.last_details.append({"x1": x[0], "x2": x[1], "x3": x[2], "q1": q[0], "q2": q[1], "q3": q[2],
                                  "reward": r})
        return r

    def __call__(self, completions: list[str], **columns) -> list[float]:
        self.last_details = []
        return [self.score(c, g) for c, g in zip(completions, columns[self.gt_column], strict=True)]

    def on_step_end(self) -> None:
        self.queue.flush()

    def state_dict(self) -> dict:
        return self.queue.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.queue.load_state_dict(state)


# ---- as TRL reward functions of the GRPO engine ------------------------------------


def distributed_gather(rows):
    """Every rank's buffered accuracy vectors, so all ranks keep the same history."""
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
        fn = look_reward if self.kind == "look" else non_repeat_reward
        profile = DrSegProfile.by_name(self.profile_name)
        return [fn(completion_text(c), profile) for c in completions]
