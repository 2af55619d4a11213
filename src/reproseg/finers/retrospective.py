"""Rule retrospective_regions: the GT region GSE is rewarded for, chosen by the trained LPR.

For each training sample: n random regions of lpr_crop px that cover the GT box, plus one
centred on it; LPR predicts a box in each; the region whose LPR box (mapped back to the
original frame) has the highest IoU with the GT box becomes best_region, stored in GSE
coordinates. Without the retrospective search (Table 4's ablation) the centred region is
chosen and LPR is not run.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..answers.geometry import box_iou
from ..answers.parsing import parse
from ..data.images import load_image
from ..io_atomic import write_parquet
from ..models.generation import Policy
from .region_table import SCHEMA, merge_region_shards  # noqa: F401 (merge_region_shards: re-exported)
from .regions import CropFrame, crop_covering, to_gse
from .samples import look_enabled, lpr_sample, row_rng

log = logging.getLogger(__name__)



def candidates(row: dict, side: int, n_random: int, seed: int) -> list[tuple[str, list[float]]]:
    rng = row_rng(seed, row["id"])
    out = [("random", crop_covering(row["box"], row["width"], row["height"], side, rng)) for _ in range(n_random)]
    return out + [("centred", crop_covering(row["box"], row["width"], row["height"], side, None))]


def choose(ious: list[float | None], kinds: list[str]) -> int:
    """Index of the best candidate: highest IoU, first on ties; the centred region when no
    LPR box overlaps the GT (all IoUs 0 or unparseable)."""
    scores = [i if i is not None else 0.0 for i in ious]
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    return best if scores[best] > 0 else kinds.index("centred")


def select_regions(rows: list[dict], images_root: str, cfg: dict, lpr_generate=None,
                   rows_per_call: int = 16) -> pa.Table:
    """`lpr_generate(images, prompts) -> completions`; None when retrospective is off.
    The candidates of `rows_per_call` records go to one call, so that generation runs in
    full batches."""
    rc = cfg["regions"]
    out = []
    for start in tqdm(range(0, len(rows), rows_per_call), desc="retrospective regions", unit="chunk",
                      mininterval=10):
        chunk = rows[start:start + rows_per_call]
        cands = [candidates(r, cfg["lpr_crop"], rc["n_random"] if rc["retrospective"] else 0, rc["seed"])
                 for r in chunk]
        texts: list[str | None] = [None] * sum(len(c) for c in cands)
        if rc["retrospective"]:
            samples = []
            for row, cs in zip(chunk, cands):
                image = load_image(images_root, row["image_path"])
                samples += [lpr_sample(row, image, crop, cfg, look_enabled(cfg, "lpr")) for _, crop in cs]
            texts = lpr_generate([s["image"] for s in samples], [s["prompt"] for s in samples])
        pos = 0
        for row, cs in zip(chunk, cands):
            kinds = [k for k, _ in cs]
            completions = texts[pos:pos + len(cs)]
            pos += len(cs)
            boxes: list[list[float] | None] = [None] * len(cs)
            ious: list[float | None] = [None] * len(cs)
            for k, (text, (_, crop)) in enumerate(zip(completions, cs)):
                pred = parse(text).bbox if text is not None else None
                if pred is not None:
                    boxes[k] = CropFrame(tuple(crop), cfg["lpr_crop"]).to_original(list(pred))
                    ious[k] = box_iou(boxes[k], row["box"])
            best = choose(ious, kinds)
            for k, (kind, crop) in enumerate(cs):
                out.append({"id": row["id"], "candidate": k, "kind": kind, "crop": crop,
                            "region_gse": to_gse(crop, row["width"], row["height"], cfg["gse_size"]),
                            "completion": completions[k], "lpr_box": boxes[k], "iou": ious[k],
                            "chosen": k == best})
    return pa.Table.from_pylist(out, schema=SCHEMA)


def regions_stage(train_split: str, images_root: str, lpr_checkpoint: str | None, table_out: str,
                  cfg: dict, shard: int = 0, shards: int = 1) -> None:
    rows = pq.read_table(train_split).to_pylist()[shard::shards]
    generate = None
    if cfg["regions"]["retrospective"]:
        policy = Policy(lpr_checkpoint)
        size, tokens = cfg["regions"]["batch_size"], cfg["regions"]["max_new_tokens"]

        def generate(images, prompts):
            out = []
            for i in range(0, len(images), size):
                out += policy.generate(images[i:i + size], prompts[i:i + size], tokens)
            return out
    table = select_regions(rows, images_root, cfg, generate)
    write_parquet(table_out, table)
    chosen = table.filter(table.column("chosen")).to_pylist()
    parsed = sum(r["lpr_box"] is not None for r in table.to_pylist())
    log.info("%d samples, %d candidates, %d LPR boxes parsed, %d chosen by IoU > 0",
             len(rows), table.num_rows, parsed, sum((r["iou"] or 0) > 0 for r in chosen))
