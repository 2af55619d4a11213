"""Dr. Seg rewards: Look-to-Confirm format terms (paper Eq. 8), the Seg-Zero /
VisionReasoner multi-object terms, and the distribution-ranked accuracy reward
(Eq. 9-16) with its FIFO quantile queue.

Answers are lists `[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]`; a ground
truth is the same list, as Python objects or as its JSON string.

Three profiles:
- `DrSegProfile.paper()` (default) follows Dr. Seg's text;
- `DrSegProfile.reference_code()` reproduces Dr. Seg's code (xVI-group-SCU/Dr-Seg,
  verl/utils/reward_score/dr_seg.py and drr_module/serve.py), field by field, malformed
  answers included: no fence stripping, values through numpy's float conversion, the
  quantile service's skipping of malformed rows and torch's search rule for NaN;
- `DrSegProfile.visionreasoner()` reproduces the multi-object reward Dr. Seg builds on
  (dvlab-research/Seg-Zero verl/utils/reward_score/vision_reasoner.py, VisionReasoner's
  training code): per-item format, Hungarian criteria accuracy, and its own non-repeat
  rule (split on '.', case-sensitive, 0 from the second repeat, no placeholder list).
  It has no <look> term and no ranked accuracy; those fields copy reference_code's.
Terms never raise. See docs/fidelity.md.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import MAX_OBJECTS, Parsed, answer_value, loads_json, parse, to_box, to_point
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
    # A whole-answer ```json fence: removed (paper) or kept, so json.loads fails and the
    # answer is no answer (the code parses `<answer>\s*(.*?)\s*</answer>` directly).
    strip_fence: bool = True
    # <look>: a non-blank <look>..</look> block in <think> (paper), or the code's regex
    # `<look>\s*\S[\s\S]*?</look>` over the think and answer bodies, which also fires on
    # "<look></look> .. </look>" (the \S can be the '<' of a closing tag).
    look_regex: bool = False
    # Matrices from the answer's values as numpy builds them (code), instead of the
    # strict typed reading: the accuracy vector converts with dtype=float ("12" and null
    # become 12.0 and NaN), the Seg-Zero accuracy keeps numpy's own dtype (a string or
    # boolean box then fails); IoU is plain inter / union, NaN passes into x1 and x3.
    code_arrays: bool = False
    # History rows: non-finite ones skipped (paper) or kept as the quantile service keeps
    # them, ranks by torch.searchsorted's rule (NaN rows count wherever its binary
    # search meets them; a NaN query ranks 1.0). Malformed rows are skipped either way.
    queue_code_rules: bool = False
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
                   sum_rounded=True, queue_dtype="float32", strip_fence=False, look_regex=True,
                   code_arrays=True, queue_code_rules=True)

    @classmethod
    def visionreasoner(cls) -> "DrSegProfile":
        return dataclasses.replace(cls.reference_code(), name="visionreasoner", look_in_answer=False,
                                   look_regex=False, nr_code_rule=False, placeholders=())

    @classmethod
    def by_name(cls, name: str) -> "DrSegProfile":
        if name in PROFILE_NAMES:
            return getattr(cls, name)()
        raise ValueError(f"unknown Dr. Seg reward profile {name!r}; expected one of {PROFILE_NAMES}")


PROFILE_NAMES = ("paper", "reference_code", "visionreasoner")


def _parsed(p: Parsed | str) -> Parsed:
    return p if isinstance(p, Parsed) else parse(p)


# ---------------------------------------------------------------- format terms (Eq. 8)

def think_reward(parsed: Parsed | str) -> float:
    return float(_parsed(parsed).think_ok)


_CODE_LOOK = re.compile(r"<look>\s*\S[\s\S]*?</look>")


def look_reward(parsed: Parsed | str, profile: DrSegProfile | None = None) -> float:
    """1 for a <look> block with non-blank content inside the thinking trace (and, with
    look_in_answer, the answer block; with look_regex, by the code's regex)."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    if profile.look_regex:
        bodies = [p.think or ""] + ([p.answer_raw or ""] if profile.look_in_answer else [])
        return float(any(_CODE_LOOK.search(b) for b in bodies))
    blocks = p.looks + (p.answer_looks if profile.look_in_answer else ())
    return float(any(b.strip() for b in blocks))


def answer_format_reward(parsed: Parsed | str, profile: DrSegProfile | None = None) -> float:
    """Paper: 1 if the answer is a list of exactly {bbox_2d: 4 numbers, point_2d: 2 numbers}
    items (an empty list is a valid "no object" answer). Code: per item, +1 for a bbox_2d
    list of 4 and +1 for a point_2d list of 2, averaged over items (0-2)."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    data = answer_value(p, profile.strip_fence)
    if profile.per_item_format:
        return _per_item_format(data)
    if not isinstance(data, list):
        return 0.0
    ok = all(isinstance(item, dict) and set(item) == _OBJECT_KEYS and to_box(item["bbox_2d"]) is not None
             and to_point(item["point_2d"]) is not None for item in data)
    return float(ok)


def _per_item_format(data: Any) -> float:
    """The code's per-item format score: each item adds (bbox_2d is a list of 4) + (point_2d
    a list of 2), divided by the item count, summed in order; the first item the checks
    cannot read (a string naming a key, a number, null) stops the sum there, as the code's
    try block does. A dict answer is iterated over its keys, so it scores 0."""
    total = 0.0
    if data is None:
        return total
    try:
        n = len(data)
        for item in data:
            cur = 0.0
            for key, size in (("bbox_2d", 4), ("point_2d", 2)):
                if key in item:
                    value = item[key]
                    if isinstance(value, list) and len(value) == size:
                        cur += 1.0
            total += cur / n
    except Exception:   # TypeError on a non-container item: the code stops summing here
        pass
    return total


@functools.lru_cache(maxsize=32)
def _placeholder_patterns(phrases: tuple[str, ...]) -> list[re.Pattern]:
    # Words may be separated by any run of whitespace or punctuation ("your -reasoning- text").
    return [re.compile(r"\b" + r"[\s\W]*".join(re.escape(w) for w in ph.split()) + r"\b", re.IGNORECASE)
            for ph in phrases if ph.split()]


_CODE_SPLIT = re.compile(r"[.。!?？！…]+")
_CODE_STRIP = " \"'“”‘’[](){}，,;:、"
_WS = re.compile(r"\s+")


def non_repeat_reward(parsed: Parsed | str, profile: DrSegProfile | None = None,
                      placeholders: Sequence[str] | None = None) -> float:
    """0 when sentences repeat (see the profile) or a template placeholder phrase appears.

    Paper: the thinking trace (whole text if there is no think block), split on '.',
    case-sensitive, 0 from the first repeat. Dr. Seg's code: whole completion, lower-cased,
    split on sentence ends, surrounding punctuation stripped (inner whitespace runs become
    one space, outer newlines stay), 0 from the second repeat, template placeholders 0.
    VisionReasoner's code: whole completion, split on '.', case-sensitive, 0 from the
    second repeat, no placeholders."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    phrases = profile.placeholders if placeholders is None else tuple(str(s) for s in placeholders)
    text = p.think if (profile.nr_scope_think and p.think is not None) else p.text
    if any(pat.search(text) for pat in _placeholder_patterns(phrases)):
        return 0.0
    if profile.nr_code_rule:
        sentences = [_WS.sub(" ", s.strip().strip(_CODE_STRIP)).lower() for s in _CODE_SPLIT.split(text)]
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

def _objects(parsed: Parsed, profile: DrSegProfile) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """(M, boxes, points) of the prediction under the strict reading. M is 0 unless the
    answer is a list whose items all carry both keys (the code's extraction fails as a
    whole otherwise); boxes/points are None when some value is not well formed (M still
    counts)."""
    data = answer_value(parsed, profile.strip_fence)
    if not isinstance(data, list) or not all(isinstance(i, dict) and _OBJECT_KEYS <= set(i) for i in data):
        return 0, None, None
    objs = parsed.objects  # already cut to MAX_OBJECTS
    if any(o.bbox is None or o.point is None for o in objs):
        return len(objs), None, None
    return (len(objs), np.array([o.bbox for o in objs], dtype=np.float64).reshape(-1, 4),
            np.array([o.point for o in objs], dtype=np.float64).reshape(-1, 2))


def _raw_lists(data: Any) -> tuple[list, list]:
    """The code's extraction: every item's bbox_2d and point_2d, as written, cut to
    MAX_OBJECTS; ([], []) when the data is no list of objects carrying both keys."""
    try:
        if not isinstance(data, list):
            return [], []
        return ([item["bbox_2d"] for item in data][:MAX_OBJECTS],
                [item["point_2d"] for item in data][:MAX_OBJECTS])
    except Exception:   # an item that is no mapping, or lacks a key
        return [], []


def _raw_gt(gt: Any) -> tuple[list, list]:
    if isinstance(gt, (str, bytes)):
        gt = loads_json(gt)
    return _raw_lists(gt)


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


def _code_matrices(pb: np.ndarray, pp: np.ndarray, gb: np.ndarray, gp: np.ndarray):
    """(criteria, IoU, point distance) as the multi-object code computes them, on arrays
    as numpy built them (their dtype kept, so a string or boolean array raises here as it
    does there): +1-pixel IoU as plain inter / union, mean absolute box difference, the
    square root of summed squared point differences, each point against its own box."""
    if pb.ndim != 2 or pb.shape[1] != 4 or gb.ndim != 2 or gb.shape[1] != 4:
        raise ValueError("boxes are not rows of 4")
    if pp.ndim != 2 or pp.shape[1] != 2 or gp.ndim != 2 or gp.shape[1] != 2:
        raise ValueError("points are not rows of 2")
    with np.errstate(all="ignore"):
        xa = np.maximum(pb[:, None, 0], gb[None, :, 0])
        ya = np.maximum(pb[:, None, 1], gb[None, :, 1])
        xb = np.minimum(pb[:, None, 2], gb[None, :, 2])
        yb = np.minimum(pb[:, None, 3], gb[None, :, 3])
        inter = np.maximum(0, xb - xa + 1) * np.maximum(0, yb - ya + 1)
        area_p = (pb[:, 2] - pb[:, 0] + 1) * (pb[:, 3] - pb[:, 1] + 1)
        area_g = (gb[:, 2] - gb[:, 0] + 1) * (gb[:, 3] - gb[:, 1] + 1)
        iou = inter / (area_p[:, None] + area_g[None, :] - inter)
        l1 = np.mean(np.abs(pb[:, None, :] - gb[None, :, :]), axis=2)
        dist = np.sqrt(np.sum((pp[:, None, :] - gp[None, :, :]) ** 2, axis=2))
        inside = (pp[:, 0] >= pb[:, 0]) & (pp[:, 0] <= pb[:, 2]) & (pp[:, 1] >= pb[:, 1]) & (pp[:, 1] <= pb[:, 3])
        crit = (iou > 0.5).astype(float) + (l1 < 10).astype(float) + ((dist < 30) & inside[:, None]).astype(float)
    return crit, iou, dist


def segzero_accuracy_reward(parsed: Parsed | str, gt: Any, profile: DrSegProfile | None = None) -> float:
    """Seg-Zero / VisionReasoner multi-object accuracy: Hungarian matching on the criteria
    matrix, summed matched scores divided by max(M, N); range 0-3."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    try:
        if profile.code_arrays:
            return _code_segzero_accuracy(p, gt, profile)
        m, pb, pp = _objects(p, profile)
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


def _code_segzero_accuracy(p: Parsed, gt: Any, profile: DrSegProfile) -> float:
    """vision_reasoner_accuracy_reward of Seg-Zero / VisionReasoner: np.array of the values
    without a dtype (a numeric string or all-boolean box fails), any error scores 0, an
    empty list on either side fails too."""
    gb, gp = _raw_gt(gt)
    pb, pp = _raw_lists(answer_value(p, profile.strip_fence))
    if not pb or not gb:
        return 0.0
    crit, _, _ = _code_matrices(np.array(pb), np.array(pp), np.array(gb), np.array(gp))
    rows, cols = linear_sum_assignment(3.0 - crit)
    return float(crit[rows, cols].sum() / max(len(pb), len(gb)))


def point_score(d: float, lo: float = 30.0, hi: float = 200.0, nan_score: float = 0.0) -> float:
    """Eq. 16: 1 up to `lo` px, linear down to 0 at `hi` px; NaN scores `nan_score`
    (paper 0; the code's formula lets NaN through)."""
    d = float(d)
    if not d == d:  # NaN
        return nan_score
    if d <= lo:
        return 1.0
    if d >= hi:
        return 0.0
    return (hi - d) / (hi - lo)


def accuracy_vector(parsed: Parsed | str, gt: Any, profile: DrSegProfile | None = None) -> np.ndarray:
    """x = (x1 mean IoU over matched pairs, x2 = min(M, N) / max(M, N), x3 mean point
    score over matched pairs), each in [0, 1]. Pairs come from Hungarian matching on IoU
    (paper) or on the Seg-Zero criteria (code). x2 is 1 when both lists are empty; x1
    and x3 are 0 without pairs. Under code_arrays, x1 and x3 are NaN where the code's are
    (a NaN or null coordinate, a zero union), and numeric strings count as numbers."""
    p, profile = _parsed(parsed), profile or DrSegProfile.paper()
    x = np.zeros(3)
    if profile.code_arrays:
        return _code_accuracy_vector(p, gt, profile)
    try:
        m, pb, pp = _objects(p, profile)
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


def _code_accuracy_vector(p: Parsed, gt: Any, profile: DrSegProfile) -> np.ndarray:
    """Dr. Seg's x: lists as written (cut to 120), x2 from their lengths, then float arrays
    (dtype=float: "12" -> 12.0, null -> NaN), pairs by the criteria, x1 the mean of the
    matched plain IoUs and x3 of their point scores; any error leaves x1 = x3 = 0."""
    gb, gp = _raw_gt(gt)
    pb, pp = _raw_lists(answer_value(p, profile.strip_fence))
    m, n = len(pb), len(gb)
    x = np.zeros(3)
    x[1] = 1.0 if m == n == 0 else min(m, n) / max(1, m, n)
    if m == 0 or n == 0:
        return x
    try:
        crit, iou, dist = _code_matrices(np.array(pb, dtype=float), np.array(pp, dtype=float),
                                         np.array(gb, dtype=float), np.array(gp, dtype=float))
        rows, cols = linear_sum_assignment(3.0 - crit)
        x[0] = float(np.mean(iou[rows, cols]))
        x[2] = float(np.mean([point_score(d, profile.point_lo, profile.point_hi, nan_score=float("nan"))
                              for d in dist[rows, cols].ravel()]))
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

    A row that is missing (None), has the wrong length or a value float() cannot read is
    skipped, as the authors' quantile client skips it, and counted in `skipped` (the
    flush stats give the count since the previous flush, for the engine to log); a
    malformed query ranks 0 in every dimension, as the service answers it. Non-finite
    rows are skipped and counted too, unless `code_rules`: then they are kept, as the
    service keeps them, and ranks follow torch.searchsorted's binary search, which counts
    a NaN row as <= x wherever it meets one and ranks a NaN query 1.0.

    `gather_fn(local_rows) -> all_rows` runs at every flush, also with an empty local
    buffer, since collective calls need every rank. It should return the concatenation
    over ranks in rank order, so that all ranks keep identical queues.
    """

    def __init__(self, capacity: int = 2048, init_rows: int = 128, dim: int = 3,
                 dtype: str | np.dtype = "float64",
                 gather_fn: Callable[[np.ndarray], np.ndarray] | None = None, code_rules: bool = False):
        if capacity < 1 or init_rows < 0 or dim < 1:
            raise ValueError(f"bad queue shape: capacity={capacity}, init_rows={init_rows}, dim={dim}")
        self.capacity, self.dim = int(capacity), int(dim)
        self.dtype = np.dtype(dtype)
        self.gather_fn = gather_fn or _identity
        self.code_rules = bool(code_rules)
        self.skipped = 0                # rows skipped by push, since construction (or the loaded state)
        self._skipped_at_flush = 0
        self._rows = np.zeros((min(int(init_rows), self.capacity), self.dim), dtype=self.dtype)
        self._buffer: list[np.ndarray] = []
        self._resort()

    def _resort(self) -> None:
        self._sorted = np.sort(self._rows, axis=0)   # NaN last, as torch.sort puts it

    def _row(self, row: Any) -> np.ndarray | None:
        """One row as float64, or None when the quantile client would skip it."""
        if row is None:
            return None
        try:
            values = np.array([float(v) for v in row], dtype=np.float64)
        except Exception:   # not iterable, or a value float() cannot read
            return None
        if values.shape != (self.dim,):
            return None
        if not self.code_rules and not np.isfinite(values).all():
            return None
        return values

    def _split(self, rows: Any) -> list:
        """`rows` as a list of candidate rows: one vector, or a sequence / 2-D array of them."""
        if isinstance(rows, np.ndarray):
            return list(rows) if rows.ndim == 2 else [rows]
        if isinstance(rows, (list, tuple)) and any(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
            return list(rows)
        if isinstance(rows, (list, tuple)) and len(rows) == 0:
            return []
        return [rows]

    def _valid(self, rows: Any) -> np.ndarray:
        good = []
        for row in self._split(rows):
            v = self._row(row)
            if v is None:
                self.skipped += 1
            else:
                good.append(v)
        return np.array(good, dtype=np.float64).reshape(-1, self.dim)

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    @property
    def rows(self) -> np.ndarray:
        return self._rows.copy()

    @property
    def buffered(self) -> int:
        return int(sum(b.shape[0] for b in self._buffer))

    def rank(self, x: Any) -> np.ndarray:
        """Quantiles of `x` (shape (dim,) or (B, dim)). An empty queue ranks 0; NaN ranks 0
        (paper) or 1.0 (code_rules); a malformed vector ranks 0 in every dimension."""
        try:
            q_in = np.asarray(x, dtype=np.float64)
        except Exception:
            q_in = None
        if q_in is None or q_in.ndim not in (1, 2) or q_in.shape[-1] != self.dim:
            return np.zeros(self.dim)
        single = q_in.ndim == 1
        q = q_in.reshape(-1, self.dim).astype(self.dtype)
        n = self._sorted.shape[0]
        out = np.zeros(q.shape, dtype=np.float64)
        if n:
            for j in range(self.dim):
                col = self._sorted[:, j]
                if self.code_rules:
                    out[:, j] = _torch_upper_bound(col, q[:, j]) / n
                else:
                    out[:, j] = np.searchsorted(col, q[:, j], side="right") / n
        if not self.code_rules:
            out[np.isnan(q)] = 0.0  # searchsorted puts NaN past the end, which would rank 1.0
        return out[0] if single else out

    def push(self, rows: Any) -> None:
        self._buffer.append(self._valid(rows))

    def flush(self) -> dict[str, int]:
        local = (np.concatenate(self._buffer, axis=0) if self._buffer
                 else np.zeros((0, self.dim), dtype=np.float64))
        self._buffer = []
        new = np.asarray(self.gather_fn(local), dtype=np.float64).reshape(-1, self.dim).astype(self.dtype)
        rows = np.concatenate([self._rows, new], axis=0)
        dropped = max(0, rows.shape[0] - self.capacity)
        self._rows = rows[dropped:]
        self._resort()
        skipped, self._skipped_at_flush = self.skipped - self._skipped_at_flush, self.skipped
        return {"added": int(new.shape[0]), "dropped": int(dropped), "size": len(self), "skipped": int(skipped)}

    def state_dict(self) -> dict:
        """Plain lists: JSON- and torch.save-able. float32 values convert to Python floats exactly."""
        buf = np.concatenate(self._buffer, axis=0) if self._buffer else np.zeros((0, self.dim))
        return {"version": 1, "capacity": self.capacity, "dim": self.dim, "dtype": self.dtype.name,
                "rows": self._rows.tolist(), "buffer": buf.tolist(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        dim = int(state.get("dim", self.dim))
        if dim != self.dim:
            raise ValueError(f"state has dim {dim}, queue has {self.dim}")
        rows = np.asarray(state["rows"], dtype=np.float64).reshape(-1, self.dim)
        buf = np.asarray(state.get("buffer", []), dtype=np.float64).reshape(-1, self.dim)
        self._rows = rows[max(0, rows.shape[0] - self.capacity):].astype(self.dtype)
        self._buffer = [buf] if buf.shape[0] else []
        self.skipped = self._skipped_at_flush = int(state.get("skipped", 0))
        self._resort()


def _torch_upper_bound(sorted_col: np.ndarray, q: np.ndarray) -> np.ndarray:
    """count(s <= x) as torch.searchsorted(right=True) computes it: a binary search that
    moves right unless s[mid] > x. With no NaN in the history and a non-NaN x it equals
    numpy's searchsorted; a NaN x, or a NaN met at a midpoint, moves it right."""
    n = sorted_col.shape[0]
    lo = np.zeros(q.shape, dtype=np.int64)
    hi = np.full(q.shape, n, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = lo + ((hi - lo) >> 1)
            right = ~(sorted_col[np.minimum(mid, n - 1)] > q)
            lo = np.where(active & right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)


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
                                   self.profile.queue_dtype, gather_fn, code_rules=self.profile.queue_code_rules)
        self.last_details: list[dict[str, float]] = []
        self.last_flush: dict[str, int] = {}

    @property
    def skipped(self) -> int:
        """History rows skipped as malformed so far (the engine can log it)."""
        return self.queue.skipped

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
        self.last_flush = self.queue.flush()   # added / dropped / size / skipped, for the log

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
