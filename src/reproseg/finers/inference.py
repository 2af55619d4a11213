"""Rule infer_finers: two-stage inference on one shard of a split.

1. GSE sees the frame at the GSE size and gives a region and the answer.
2. The region becomes a square crop of at least lpr_crop original pixels (clipped into
   the frame; clipping is counted), shown to LPR at lpr_crop.
3. LPR gives a box and two points, mapped back to the original frame.
4. Frozen SAM2 segments the crop at original resolution from the box and both points
   (positive); the mask is pasted back into the full frame and stored as COCO RLE.
A generation that does not parse leaves the prediction empty: it scores I = 0 and
U = GT area in the metrics, and is counted.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..answers.parsing import parse, to_box
from ..data.images import load_image
from ..io_atomic import write_parquet
from ..models.loading import load_sam2_predictor
from .generation import Policy
from .prompts import target_answer
from .regions import CropFrame, region_to_crop
from .samples import gse_image, gse_prompt, lpr_sample

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("id", pa.string()), ("task_type", pa.string()), ("attribute", pa.string()), ("size_bucket", pa.string()),
    ("answer", pa.string()), ("gt_rle", pa.string()), ("height", pa.int64()), ("width", pa.int64()),
    ("gse_completion", pa.string()), ("region_gse", pa.list_(pa.float64())), ("pred_response", pa.string()),
    ("crop", pa.list_(pa.float64())), ("region_clipped", pa.bool_()),
    ("lpr_completion", pa.string()), ("pred_box", pa.list_(pa.float64())),
    ("pred_points", pa.list_(pa.list_(pa.float64()))), ("pred_rle", pa.string()),
    ("status", pa.string()), ("gse_seconds", pa.float64()), ("lpr_sam_seconds", pa.float64()),
])


def _rle_string(mask: np.ndarray) -> str:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


def segment_crop(predictor, crop_rgb: np.ndarray, box, points) -> np.ndarray:
    """SAM2 mask of the crop from a box and positive points (crop pixel coordinates)."""
    predictor.set_image(crop_rgb)
    kwargs = {"box": np.asarray(box, np.float32), "multimask_output": False}
    if points:
        kwargs["point_coords"] = np.asarray(points, np.float32)
        kwargs["point_labels"] = np.ones(len(points), np.int32)
    masks, _, _ = predictor.predict(**kwargs)
    return masks[0] > 0


def infer_rows(rows: list[dict], images_root: str, cfg: dict, gse, lpr, predictor, look: dict) -> list[dict]:
    """gse/lpr: `generate(images, prompts) -> completions`; predictor: a SAM2ImagePredictor;
    look: {"gse": bool, "lpr": bool}, whether each policy was trained with Dr. Seg's
    Look-to-Confirm prompt (and so is asked with it)."""
    side = cfg["lpr_crop"]
    batch = cfg["inference"]["batch_size"]
    tokens = cfg["inference"]["max_new_tokens"]
    out = []
    for start in tqdm(range(0, len(rows), batch), desc="FineRS inference", unit="batch", mininterval=10):
        chunk = rows[start:start + batch]
        images = [load_image(images_root, r["image_path"]) for r in chunk]
        t0 = time.perf_counter()
        gse_out = gse([gse_image(im, cfg) for im in images], [gse_prompt(r, cfg, look["gse"]) for r in chunk], tokens)
        gse_s = (time.perf_counter() - t0) / len(chunk)
        staged = []
        for r, im, text in zip(chunk, images, gse_out):
            parsed = parse(text)
            region = parsed.answer.get("region", parsed.answer.get("bbox")) if isinstance(parsed.answer, dict) else None
            region = to_box(region)
            region = list(region) if region is not None else None
            rec = {"id": r["id"], "task_type": r["task_type"], "attribute": r["attribute"],
                   "size_bucket": r["size_bucket"], "answer": target_answer(r), "gt_rle": r["rle_counts"],
                   "height": r["height"], "width": r["width"], "gse_completion": text, "region_gse": region,
                   "pred_response": parsed.response, "crop": None, "region_clipped": False,
                   "lpr_completion": None, "pred_box": None, "pred_points": None, "pred_rle": None,
                   "status": "ok", "gse_seconds": gse_s, "lpr_sam_seconds": None}
            if region is None:
                rec["status"] = "gse_unparsed"
            else:
                crop, clipped = region_to_crop(region, r["width"], r["height"], cfg["gse_size"], side)
                rec["crop"], rec["region_clipped"] = crop, clipped
                staged.append((rec, r, im, crop))
            out.append(rec)
        if not staged:
            continue
        t0 = time.perf_counter()
        samples = [lpr_sample(r, im, crop, cfg, look["lpr"]) for rec, r, im, crop in staged]
        lpr_out = lpr([s["image"] for s in samples], [s["prompt"] for s in samples], tokens)
        for (rec, r, im, crop), text in zip(staged, lpr_out):
            rec["lpr_completion"] = text
            p = parse(text)
            if p.bbox is None:
                rec["status"] = "lpr_unparsed"
                continue
            frame = CropFrame(tuple(crop), side)
            box = frame.to_original(list(p.bbox))
            pts = [frame.point_to_original(list(q)) for q in (p.points_1, p.points_2) if q is not None]
            rec["pred_box"], rec["pred_points"] = box, pts
            x0, y0, x1, y1 = (int(round(v)) for v in crop)
            crop_rgb = np.asarray(im)[y0:y1, x0:x1]
            local_box = [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]
            local_pts = [[q[0] - x0, q[1] - y0] for q in pts]
            full = np.zeros((r["height"], r["width"]), bool)
            full[y0:y1, x0:x1] = segment_crop(predictor, crop_rgb, local_box, local_pts)
            rec["pred_rle"] = _rle_string(full)
        lpr_s = (time.perf_counter() - t0) / len(staged)
        for rec, *_ in staged:
            rec["lpr_sam_seconds"] = lpr_s
    return out


def infer_stage(split: str, images_root: str, gse_checkpoint: str, lpr_checkpoint: str, sam2: str,
                sam2_config: str | None, out: str, cfg: dict, shard: int, shards: int, look: dict) -> None:
    rows = pq.read_table(split).to_pylist()[shard::shards]
    gse, lpr = Policy(gse_checkpoint), Policy(lpr_checkpoint)
    predictor = load_sam2_predictor(sam2, sam2_config, device=gse.device)
    records = infer_rows(rows, images_root, cfg, gse.generate, lpr.generate, predictor, look)
    write_parquet(out, pa.Table.from_pylist(records, schema=SCHEMA))
    status = {}
    for r in records:
        status[r["status"]] = status.get(r["status"], 0) + 1
    log.info("shard %d/%d: %d samples, status %s, %d regions clipped", shard, shards, len(records), status,
             sum(r["region_clipped"] for r in records))
