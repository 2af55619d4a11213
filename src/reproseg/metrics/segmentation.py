"""gIoU and cIoU of predicted masks, computed on COCO RLE (never on dense arrays).

Conventions (FineRS / LISA evaluation):
- per sample, I = |pred AND gt| and U = |pred OR gt| in pixels;
- per-sample IoU = I / U. When U == 0 (empty target and empty prediction) the sample
  scores exactly 1.0, as LISA's "no-object target" rule does. LISA divides by U + 1e-5
  elsewhere; that shifts a score by under 1e-5 relative, so exact I / U is used here;
- a prediction that is None ("missing") or that cannot be read, or whose size differs
  from the GT's ("invalid"), scores I = 0 and U = |gt|, the same as an empty mask; the
  two cases are counted apart so a broken pipeline stays visible;
- gIoU = mean of the per-sample IoUs; cIoU = sum I / sum U;
- groups are the FineRS-4k size buckets s / xs / xxs plus "all". A group without samples
  has NaN scores; cIoU is NaN when sum U == 0 (no pixel in any mask: undefined).
Scores are fractions in [0, 1]; the tables module turns them into percent.

Those are the "paper" rules (FineRS sec. 5.1: gIoU the mean per-image IoU, cIoU the
cumulative intersection over the cumulative union). The "reference_code" rules are the
authors' evaluation script's (JiazuoYu/Fines inference_scripts/
eval_hd_reasoning_seg_zero_cascade_qa_add_dist_for_region_prompt_cross_stage.py, LISA's
smoothing): per-sample IoU = I / (U + 1e-5), plus 1 when U == 0 (so an empty pair still
scores exactly 1.0 and a perfect mask 1 - 1e-5/(U + 1e-5)); cIoU = sum I / (sum U + 1e-10),
so a group whose every union is empty has cIoU 0.0, not NaN. A group without samples
stays NaN under both: the script divides by its length there and stops.

pycocotools does not validate an RLE string (a truncated one still "decodes"), so each
counts string is decoded here, vectorised, and must cover exactly h x w pixels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

PROFILES = ("paper", "reference_code")
# (per-sample IoU smoothing, cIoU smoothing) of each profile.
_SMOOTHING = {"paper": (0.0, 0.0), "reference_code": (1e-5, 1e-10)}
BUCKETS = ("s", "xs", "xxs")
GROUPS = BUCKETS + ("all",)
OK, MISSING, INVALID = "ok", "missing", "invalid"


class RLEError(ValueError):
    """An RLE that does not describe an h x w binary mask (the message says why)."""


def _decode_counts(s: bytes) -> np.ndarray:
    """Run lengths of a COCO compressed counts string (pycocotools' LEB128-like format:
    5 data bits per char offset by 48, bit 0x20 = more chars follow, bit 0x10 of the last
    char = negative; from the 4th run on each value is a delta to the run two before)."""
    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ((c < 0) | (c > 63)).any():
        raise RLEError("counts string has characters outside the RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise RLEError("counts string is truncated")
    starts = np.flatnonzero(np.concatenate(([True], ~more[:-1])))
    lengths = np.diff(np.append(starts, c.size))
    if lengths.max() > 12:                      # 13 chars would overflow 64 bits
        raise RLEError("counts string has an out-of-range value")
    group = np.repeat(np.arange(starts.size), lengths)
    shift = 5 * (np.arange(c.size) - starts[group])
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[starts + lengths - 1] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * lengths)), x)
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])             # runs 1, 3, 5, ... chain on run 1
    runs[2::2] = np.cumsum(x[2::2])             # runs 2, 4, 6, ... chain on run 2
    return runs


def to_coco_rle(obj) -> dict:
    """A checked pycocotools RLE {"size": [h, w], "counts": bytes} from a dict (counts
    as str, bytes or an uncompressed list of runs) or its JSON text. Raises RLEError."""
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise RLEError(f"RLE text is not JSON: {exc}") from None
    if not isinstance(obj, Mapping) or "size" not in obj or "counts" not in obj:
        raise RLEError("RLE must be a mapping with 'size' and 'counts'")
    try:
        h, w = (int(v) for v in obj["size"])
    except (TypeError, ValueError):
        raise RLEError("RLE size must be [h, w]") from None
    if h < 0 or w < 0:
        raise RLEError("RLE size must be non-negative")
    counts = obj["counts"]
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise RLEError("counts string is not ASCII") from None
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts)
        runs = _decode_counts(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        runs = np.asarray(counts)
        if runs.ndim != 1 or (runs.size and not np.issubdtype(runs.dtype, np.integer)):
            raise RLEError("uncompressed counts must be a flat list of integers")
        runs = runs.astype(np.int64)
    else:
        raise RLEError(f"counts has unsupported type {type(counts).__name__}")
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise RLEError(f"runs cover {int(runs.sum())} pixels, size says {h}x{w}")
    if not isinstance(counts, bytes):
        counts = mask_utils.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)["counts"]
    return {"size": [h, w], "counts": counts}


def _areas(rles: list[dict]) -> np.ndarray:
    """Pixel areas. pycocotools 2.0.11 under numpy 2 raises OverflowError in area() for
    lists of 256+ masks (it sizes its output with a uint8), so call it in chunks."""
    out = np.zeros(len(rles), dtype=np.int64)
    for start in range(0, len(rles), 255):
        out[start:start + 255] = mask_utils.area(rles[start:start + 255])
    return out


def _rows(records) -> list[dict]:
    if isinstance(records, pa.Table):
        return records.select(["id", "gt_rle", "pred_rle", "size_bucket"]).to_pylist()
    return list(records)


def _smoothing(profile: str) -> tuple[float, float]:
    if profile not in _SMOOTHING:
        raise ValueError(f"unknown metric profile {profile!r}; expected one of {PROFILES}")
    return _SMOOTHING[profile]


def per_sample(records: pa.Table | Iterable[Mapping], profile: str = "paper") -> pa.Table:
    """Per-sample intersection, union, IoU and prediction status (ok/missing/invalid).

    `records` has columns id, gt_rle, pred_rle (or None), size_bucket (s/xs/xxs). A bad
    GT or an unknown bucket raises ValueError: those are data errors, not model errors.
    `profile` picks the IoU rule (module docstring).
    """
    eps, _ = _smoothing(profile)
    rows = _rows(records)
    gts, preds, status, buckets = [], [], [], []
    for r in rows:
        bucket = str(r["size_bucket"]).lower()
        if bucket not in BUCKETS:
            raise ValueError(f"sample {r['id']!r}: unknown size bucket {r['size_bucket']!r}")
        try:
            gt = to_coco_rle(r["gt_rle"])
        except RLEError as exc:
            raise ValueError(f"sample {r['id']!r}: bad GT mask: {exc}") from None
        pred, state = None, MISSING
        if r.get("pred_rle") is not None:
            try:
                pred = to_coco_rle(r["pred_rle"])
                state = OK if pred["size"] == gt["size"] else INVALID
            except RLEError:
                state = INVALID
        gts.append(gt)
        preds.append(pred if state == OK else None)
        status.append(state)
        buckets.append(bucket)

    n = len(rows)
    gt_area = _areas(gts)
    pred_area = np.zeros(n, dtype=np.int64)
    inter = np.zeros(n, dtype=np.int64)
    ok = [i for i, s in enumerate(status) if s == OK]
    if ok:
        pred_area[ok] = _areas([preds[i] for i in ok])
        for i in ok:   # one pair at a time: merge works on run lengths, cost ~ runs
            inter[i] = mask_utils.area(mask_utils.merge([gts[i], preds[i]], intersect=True))
    union = gt_area + pred_area - inter
    if eps:   # the authors' script: I / (U + eps), and +1 for an empty union
        iou = inter / (union + eps) + (union == 0)
    else:
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)   # U == 0: LISA's +1
    return pa.table({
        "id": pa.array([r["id"] for r in rows]),
        "size_bucket": pa.array(buckets, pa.string()),
        "intersection": pa.array(inter, pa.int64()),
        "union": pa.array(union, pa.int64()),
        "gt_area": pa.array(gt_area, pa.int64()),
        "pred_area": pa.array(pred_area, pa.int64()),
        "iou": pa.array(iou, pa.float64()),
        "pred_status": pa.array(status, pa.string()),
    })


@dataclass(frozen=True)
class SegScore:
    n: int
    giou: float
    ciou: float
    intersection: int
    union: int
    n_missing: int
    n_invalid: int


def _score(inter: np.ndarray, union: np.ndarray, iou: np.ndarray, status: np.ndarray,
           ciou_eps: float = 0.0) -> SegScore:
    total_i, total_u = int(inter.sum()), int(union.sum())
    if not iou.size:
        ciou = float("nan")
    elif ciou_eps:
        ciou = total_i / (total_u + ciou_eps)
    else:
        ciou = total_i / total_u if total_u else float("nan")
    return SegScore(
        n=int(iou.size),
        giou=float(iou.mean()) if iou.size else float("nan"),
        ciou=ciou,
        intersection=total_i,
        union=total_u,
        n_missing=int((status == MISSING).sum()),
        n_invalid=int((status == INVALID).sum()),
    )


def summarise(samples: pa.Table, profile: str = "paper") -> dict[str, SegScore]:
    """SegScore for each of s, xs, xxs and all, from `per_sample`'s table (made with the
    same profile: the per-sample IoU already carries its rule)."""
    _, ciou_eps = _smoothing(profile)
    bucket = np.asarray(samples.column("size_bucket").to_pylist(), dtype=object)
    cols = {k: samples.column(k).to_numpy() for k in ("intersection", "union", "iou")}
    status = np.asarray(samples.column("pred_status").to_pylist(), dtype=object)
    out = {}
    for group in GROUPS:
        sel = np.ones(bucket.size, bool) if group == "all" else bucket == group
        out[group] = _score(cols["intersection"][sel], cols["union"][sel], cols["iou"][sel], status[sel],
                            ciou_eps)
    return out


def segmentation_metrics(records: pa.Table | Iterable[Mapping], profile: str = "paper") -> dict[str, SegScore]:
    """gIoU / cIoU by size bucket and overall; see the module docstring for the rules of
    each profile ("paper" or "reference_code", finers.reward_profile's names)."""
    return summarise(per_sample(records, profile), profile)
