"""Rule infer_finers: two-stage inference on one shard of a split.

1. GSE sees the frame at the GSE size and gives a region and the answer.
2. The region becomes a square crop of at least lpr_crop original pixels (clipped into
   the frame; clipping is counted), shown to LPR at lpr_crop.
3. LPR gives a box and two points, mapped back to the original frame.
4. Frozen SAM2 segments the crop at original resolution from the box and both points
   (positive); the mask is pasted back into the full frame and stored as COCO RLE.
A generation that does not parse leaves the prediction empty: it scores I = 0 and
U = GT area in the metrics, and is counted. Under `finers.reward_profile: reference_code`
steps 1-4 read, crop and segment as the authors' evaluation script does
(reproseg.finers.eval_protocol lists the differences).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..data.images import load_image
from ..io_atomic import write_parquet
from ..models.generation import Policy
from ..models.sam_loading import load_sam2_predictor
from .eval_protocol import PaperProtocol, protocol
from .prompts import target_answer
from .samples import gse_prompt, lpr_sample

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
    """SAM2 mask of the crop from a box and positive points (crop pixel coordinates), as
    the paper profile segments."""
    return PaperProtocol().segment(predictor, crop_rgb, box, points)


def _crop_view(image: Image.Image, crop, side: int, resample) -> Image.Image:
    x0, y0, x1, y1 = (int(round(v)) for v in crop)
    return image.crop((x0, y0, x1, y1)).resize((side, side), resample)


def infer_rows(rows: list[dict], images_root: str, cfg: dict, gse, lpr, predictor, look: dict) -> list[dict]:
    """gse/lpr: `generate(images, prompts) -> completions`; predictor: a SAM2ImagePredictor;
    look: {"gse": bool, "lpr": bool}, whether each policy was trained with Dr. Seg's
    Look-to-Confirm prompt (and so is asked with it). Answers are read, cropped and
    segmented as the reward profile's protocol does (reproseg.finers.eval_protocol)."""
    side = cfg["lpr_crop"]
    batch = cfg["inference"]["batch_size"]
    tokens = cfg["inference"]["max_new_tokens"]
    proto = protocol(cfg["reward_profile"])
    out = []
    for start in tqdm(range(0, len(rows), batch), desc="FineRS inference", unit="batch", mininterval=10):
        chunk = rows[start:start + batch]
        images = [load_image(images_root, r["image_path"]) for r in chunk]
        t0 = time.perf_counter()
        views = [im.resize(tuple(cfg["gse_size"]), proto.resample) for im in images]
        gse_out = gse(views, [gse_prompt(r, cfg, look["gse"]) for r in chunk], tokens)
        gse_s = (time.perf_counter() - t0) / len(chunk)
        staged = []
        for r, im, text in zip(chunk, images, gse_out):
            g = proto.gse(text, r["width"], r["height"], cfg)
            rec = {"id": r["id"], "task_type": r["task_type"], "attribute": r["attribute"],
                   "size_bucket": r["size_bucket"], "answer": target_answer(r), "gt_rle": r["rle_counts"],
                   "height": r["height"], "width": r["width"], "gse_completion": text, "region_gse": g.region_gse,
                   "pred_response": g.response, "crop": g.crop, "region_clipped": g.clipped,
                   "lpr_completion": None, "pred_box": None, "pred_points": None, "pred_rle": None,
                   "status": "ok" if g.crop is not None else "gse_unparsed", "gse_seconds": gse_s,
                   "lpr_sam_seconds": None}
            if g.crop is not None:
                staged.append((rec, r, im, g.crop))
            out.append(rec)
        if not staged:
            continue
        t0 = time.perf_counter()
        prompts = [lpr_sample(r, im, crop, cfg, look["lpr"])["prompt"] for rec, r, im, crop in staged]
        lpr_out = lpr([_crop_view(im, crop, side, proto.resample) for rec, r, im, crop in staged], prompts, tokens)
        for (rec, r, im, crop), text in zip(staged, lpr_out):
            rec["lpr_completion"] = text
            reading = proto.lpr(text, crop, side)
            if reading is None:
                rec["status"] = "lpr_unparsed"
                continue
            rec["pred_box"], rec["pred_points"] = reading.box, reading.points
            x0, y0, x1, y1 = (int(round(v)) for v in crop)
            crop_rgb = np.asarray(im)[y0:y1, x0:x1]
            local_box = [reading.box[0] - x0, reading.box[1] - y0, reading.box[2] - x0, reading.box[3] - y0]
            local_pts = [[q[0] - x0, q[1] - y0] for q in reading.points]
            full = np.zeros((r["height"], r["width"]), bool)
            full[y0:y1, x0:x1] = proto.segment(predictor, crop_rgb, local_box, local_pts)
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
