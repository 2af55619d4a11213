"""Scores of one policy's answers on one evaluation set (rules drseg_evaluate and
drseg_evaluate_untrained; a candidate's val score in rule drseg_select,
reproseg.drseg.visionreasoner.selection, by the same score_rows).

By the set's task (reproseg.drseg.visionreasoner.metrics): segmentation: SAM2 prompted
per predicted object with its point and box, the masks OR-ed, gIoU / cIoU (a parse
failure: I = 0, U = |GT|); a segmentation row with a GT box also scores REC. rec: box
accuracy at IoU 0.5. counting: the number of predicted objects against the count.
detection (COCO val2017): every predicted box is a detection of the row's category
(scored by its area over the image's, as VisionReasoner's evaluation_coco.py), and
COCOeval's 12 summary numbers (coco_ap, coco_ap50, coco_ap75, ...) are taken against a
COCO GT built from the imported rows (metrics.coco_gt), with precision / recall / F1 at
IoU 0.5 beside them (det_precision, det_recall, det_f1; Table 7); a sample's count /
gt_count are its predicted and GT boxes there, `matched` those paired at IoU 0.5.
Every number is in [0, 1] here (COCOeval's -1: no GT in that area range); the tables
print percent.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from reproseg.data.images import load_image
from reproseg.data.masks import rle_decode
from reproseg.io_atomic import write_json, write_parquet
from reproseg.models.sam_loading import load_sam2_predictor

from . import metrics as M
from .rows import device_of, limited, objects_of

log = logging.getLogger(__name__)

# The val metrics a checkpoint selection may name (drseg.selection.metric).
VAL_METRICS = ("giou", "ciou")

SAMPLE_SCHEMA = pa.schema([("id", pa.string()), ("parsed", pa.bool_()), ("intersection", pa.int64()),
                           ("union", pa.int64()), ("rec_hit", pa.bool_()), ("count", pa.int64()),
                           ("gt_count", pa.int64()), ("matched", pa.int64())])


def gt_mask(row: dict) -> np.ndarray:
    return rle_decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})


def score_rows(rows: list[dict], predictions: list[dict], images_root: str, predictor, empty: float = 0.0):
    """(metrics, per-sample rows) of predictions aligned with benchmark rows by id."""
    by_id = {p["id"]: p for p in predictions}
    missing = [r["id"] for r in rows if r["id"] not in by_id]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} row(s), e.g. {missing[:3]}")
    samples, pairs, hits, counts, gts, detections = [], [], [], [], [], []
    det_rows = [r for r in rows if r["task"] == "detection"]
    image_ids = M.coco_image_ids([r["image_id"] for r in det_rows])
    for r in tqdm(rows, desc="score", unit="sample", mininterval=10):
        p = by_id[r["id"]]
        objs = objects_of(p)
        s = {"id": r["id"], "parsed": p["parsed"], "intersection": None, "union": None, "rec_hit": None,
             "count": None, "gt_count": None, "matched": None}
        if r["task"] == "segmentation":
            image = np.asarray(load_image(images_root, r["image_path"]))
            s["intersection"], s["union"] = M.segment_sample(predictor, image, objs, gt_mask(r))
            pairs.append((s["intersection"], s["union"]))
        if r["task"] == "rec" or (r["task"] == "segmentation" and r["box"] is not None):
            s["rec_hit"] = M.rec_hit(objs, r["box"])
            hits.append(s["rec_hit"])
        if r["task"] == "counting":
            s["count"], s["gt_count"] = M.predicted_count(objs), r["count"]
            counts.append(s["count"])
            gts.append(r["count"])
        if r["task"] == "detection":
            found = M.coco_detections(image_ids[r["image_id"]], r["category_id"], objs, r["width"], r["height"],
                                      has_gt=bool(r["boxes"]))
            s["count"], s["gt_count"] = len(found), len(r["boxes"])
            s["matched"] = M.matched_boxes([] if objs is None else objs.boxes, r["boxes"])
            detections += found
        samples.append(s)
    out = {"n": len(rows), "parsed": float(np.mean([s["parsed"] for s in samples])) if samples else float("nan")}
    if pairs:
        seg = M.segmentation_scores(pairs, empty)
        out.update(giou=seg["gIoU"], ciou=seg["cIoU"])
    if hits:
        out["rec_accuracy"] = M.rec_accuracy(hits)
    if counts:
        c = M.counting_scores(counts, gts)
        out.update(count_accuracy=c["accuracy"], count_mae=c["mae"], count_rmse=c["rmse"])
    if det_rows:
        ap = M.coco_ap(M.coco_gt(det_rows, image_ids), detections)
        out.update({f"coco_{k.lower()}": v for k, v in ap.items()}, detections=len(detections))
        det = [s for s in samples if s["matched"] is not None]
        prf = M.detection_prf(sum(s["matched"] for s in det), sum(s["count"] for s in det),
                              sum(s["gt_count"] for s in det))
        out.update({f"det_{k}": v for k, v in prf.items()})
    return out, samples


def predictor_for(task_rows: list[dict], sam2: str, sam2_config: str | None, device: str):
    """SAM2 only when some row is scored by a mask."""
    if not any(r["task"] == "segmentation" for r in task_rows):
        return None
    return load_sam2_predictor(sam2, sam2_config, device=device_of(device))


def evaluate_stage(benchmark: str, images_root: str, predictions: str, sam2: str, sam2_config: str | None,
                   metrics_json: str, samples_out: str, cfg: dict, name: str) -> dict:
    """cfg: drseg.eval. Returns the metrics (also in the job's provenance record)."""
    rows = limited(pq.read_table(benchmark).to_pylist(), cfg["limit"])
    preds = pq.read_table(predictions).to_pylist()
    scores, samples = score_rows(rows, preds, images_root, predictor_for(rows, sam2, sam2_config, cfg["device"]),
                                 cfg["giou_empty"])
    result = {"benchmark": name, "task": rows[0]["task"] if rows else None, **scores}
    write_parquet(samples_out, pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA))
    write_json(metrics_json, result)
    log.info("%s: %s", name, result)
    return {"metrics": result}
