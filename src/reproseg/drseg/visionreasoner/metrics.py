"""Evaluation metrics of Dr. Seg's own setting (Dr. Seg sec. 5.1, 5.3, Appendix D), as
VisionReasoner's evaluation computes them (evaluation/*.py of dvlab-research/VisionReasoner):

- segmentation (RefCOCO/+/g, ReasonSeg): the answer's objects, back in original pixels,
  prompt SAM2 one by one with point (label 1) + box; each object's best-scoring mask is
  OR-ed into the prediction. Per sample I = |pred AND gt|, U = |pred OR gt|; a parse
  failure counts I = 0, U = |gt|. gIoU = mean of I / U, where a sample with U = 0 scores
  `empty` (VisionReasoner's calculate_iou: 0; the paper is silent); cIoU = sum I / sum U;
- REC (RefCOCO/+/g): a hit when any predicted box has IoU > 0.5 with the GT box
  (continuous areas, as the scripts' compute_bbox_iou); accuracy = hits / samples;
- counting (Pixmo-Count, CountBench): the count is the number of predicted objects (0
  for a parse failure); accuracy = share of exact counts, with MAE and RMSE beside it;
- detection (COCO): every predicted box is a detection of the row's category, scored by
  its area over the image's (the paper's Table 3 proxy; 0 when the row has no GT box),
  and AP is pycocotools' COCOeval ('bbox') against the COCO GT. The GT is built from the
  imported rows (coco_gt) in the instances file's layout: one image per image_id, one
  annotation per GT box with its row's category, area w x h, iscrowd 0. The authors
  score against instances_val2017.json itself, whose crowd regions are ignored rather
  than missed and whose areas are mask areas (only the small / medium / large split
  reads them); docs/fidelity.md. Precision / recall / F1 at IoU 0.5 (the paper's Table 7,
  "to avoid such approximation", no score needed): per row, the predicted and GT boxes
  matched one to one (Hungarian, the most pairs with IoU >= 0.5, COCOeval's own
  threshold test); P = matched / predicted and R = matched / GT boxes over the whole set,
  F1 their harmonic mean, each 0 when its denominator is.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
from pycocotools.coco import COCO
from scipy.optimize import linear_sum_assignment
from pycocotools.cocoeval import COCOeval

from reproseg.answers import geometry as geo

from .task import Objects

REC_IOU = 0.5
DET_IOU = 0.5   # Table 7's P@0.5 / R@0.5; a pair at exactly 0.5 matches, as in COCOeval
COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


class MaskPredictor(Protocol):
    """What SAM2's SAM2ImagePredictor offers (set_image, then predict per prompt)."""

    def set_image(self, image: Any) -> None: ...

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None,
                **kwargs: Any) -> tuple[np.ndarray, np.ndarray, Any]: ...


# ---------------------------------------------------------------------- segmentation

def union_mask(predictor: MaskPredictor, image: Any, objects: Objects, height: int, width: int) -> np.ndarray:
    """The OR of SAM2's best mask per object, each prompted with its point and its box
    (original pixels). No object: an empty mask, and SAM2 is not run."""
    out = np.zeros((height, width), dtype=bool)
    if len(objects) == 0:
        return out
    predictor.set_image(image)
    for box, point in zip(objects.boxes, objects.points, strict=True):
        masks, scores, _ = predictor.predict(point_coords=np.asarray([point], dtype=np.float32),
                                             point_labels=np.asarray([1]), box=np.asarray(box, dtype=np.float32))
        out |= np.asarray(masks[int(np.argmax(scores))], dtype=bool)
    return out


def intersection_union(pred: np.ndarray | None, gt: np.ndarray) -> tuple[int, int]:
    """(I, U) of one sample; `pred` None is a parse failure: (0, |gt|)."""
    gt = np.asarray(gt, dtype=bool)
    if pred is None:
        return 0, int(gt.sum())
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask is {pred.shape}, the GT mask {gt.shape}")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def segment_sample(predictor: MaskPredictor, image: Any, objects: Objects | None, gt: np.ndarray) -> tuple[int, int]:
    """(I, U) of one answer (objects in original pixels, None for a parse failure)."""
    gt = np.asarray(gt, dtype=bool)
    if objects is None:
        return intersection_union(None, gt)
    return intersection_union(union_mask(predictor, image, objects, *gt.shape), gt)


def segmentation_scores(pairs: Iterable[tuple[int, int]], empty: float = 0.0) -> dict[str, float]:
    """gIoU, cIoU and n of (I, U) pairs; NaN scores for no sample."""
    pairs = list(pairs)
    if not pairs:
        return {"gIoU": math.nan, "cIoU": math.nan, "n": 0}
    ious = [i / u if u > 0 else empty for i, u in pairs]
    total_u = sum(u for _, u in pairs)
    return {"gIoU": float(np.mean(ious)), "cIoU": sum(i for i, _ in pairs) / total_u if total_u > 0 else 0.0,
            "n": len(pairs)}


# ---------------------------------------------------------------------- REC

def rec_hit(objects: Objects | None, gt_box: Sequence[float]) -> bool:
    if objects is None or len(objects) == 0:
        return False
    return bool((geo.iou_matrix(objects.boxes, gt_box)[:, 0] > REC_IOU).any())


def rec_accuracy(hits: Iterable[bool]) -> float:
    hits = list(hits)
    return float(np.mean(hits)) if hits else math.nan


# ---------------------------------------------------------------------- counting

def predicted_count(objects: Objects | None) -> int:
    return 0 if objects is None else len(objects)


def counting_scores(pred: Sequence[int], gt: Sequence[int]) -> dict[str, float]:
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predicted counts for {len(gt)} samples")
    if not gt:
        return {"accuracy": math.nan, "mae": math.nan, "rmse": math.nan, "n": 0}
    d = np.asarray(pred, dtype=np.float64) - np.asarray(gt, dtype=np.float64)
    return {"accuracy": float(np.mean(d == 0)), "mae": float(np.mean(np.abs(d))),
            "rmse": float(np.sqrt(np.mean(d ** 2))), "n": len(gt)}


# ---------------------------------------------------------------------- COCO detection

def coco_detections(image_id: int, category_id: int, objects: Objects | None, width: int, height: int,
                    has_gt: bool = True) -> list[dict]:
    """COCO result entries (bbox as x, y, w, h) of one row's predicted boxes in original
    pixels, each scored by its box area over the image area (0 without GT boxes)."""
    if objects is None:
        return []
    out = []
    for x1, y1, x2, y2 in objects.boxes:
        score = (x2 - x1) * (y2 - y1) / (width * height) if has_gt else 0.0
        out.append({"image_id": int(image_id), "category_id": int(category_id),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)})
    return out


def coco_image_ids(image_ids: Iterable[str]) -> dict[str, int]:
    """COCO's integer image id of each row image_id: the number itself when every id is a
    distinct decimal number (COCO's own ids), else 1, 2, ... in order of first appearance."""
    ids = list(dict.fromkeys(image_ids))
    if all(i.isdecimal() for i in ids) and len({int(i) for i in ids}) == len(ids):
        return {i: int(i) for i in ids}
    return {i: k for k, i in enumerate(ids, 1)}


def coco_gt(rows: Sequence[dict], image_ids: dict[str, int]) -> dict:
    """A COCO instances dict of detection rows (BENCH_SCHEMA: image_id, width, height,
    category_id, boxes as x1, y1, x2, y2; text names the category)."""
    images, categories, annotations = {}, {}, []
    for r in rows:
        iid = image_ids[r["image_id"]]
        images.setdefault(iid, {"id": iid, "width": int(r["width"]), "height": int(r["height"]),
                                "file_name": r["image_path"]})
        categories.setdefault(int(r["category_id"]), {"id": int(r["category_id"]), "name": r["text"]})
        for x1, y1, x2, y2 in r["boxes"]:
            annotations.append({"id": len(annotations) + 1, "image_id": iid, "category_id": int(r["category_id"]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": list(images.values()), "annotations": annotations,
            "categories": sorted(categories.values(), key=lambda c: c["id"])}


def _coco(gt: dict | str | Path) -> COCO:
    data = gt if isinstance(gt, dict) else json.loads(Path(gt).read_text())
    coco = COCO()
    coco.dataset = copy.deepcopy(data)
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
        coco.createIndex()
    return coco


def coco_ap(gt: dict | str | Path, detections: list[dict]) -> dict[str, float]:
    """COCOeval('bbox') summary stats (COCO_STATS) of `detections` against the GT (a COCO
    instances dict or file). No detection at all scores 0 throughout (loadRes refuses an
    empty list)."""
    coco_gt = _coco(gt)
    if not detections:
        return dict.fromkeys(COCO_STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(COCO_STATS, (float(v) for v in ev.stats)))


def matched_boxes(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]], iou: float = DET_IOU) -> int:
    """The most one-to-one pairs of predicted and GT boxes (x1, y1, x2, y2) with IoU >= iou."""
    if len(pred) == 0 or len(gt) == 0:
        return 0
    ok = geo.iou_matrix(pred, gt) >= iou
    rows, cols = linear_sum_assignment(ok.astype(np.float64), maximize=True)
    return int(ok[rows, cols].sum())


def detection_prf(matched: int, predicted: int, gt: int) -> dict[str, float]:
    """Precision, recall and F1 of a set's totals (each 0 when its denominator is)."""
    p = matched / predicted if predicted else 0.0
    r = matched / gt if gt else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}
