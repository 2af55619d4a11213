"""Rule evaluate_finers: merged predictions -> FineRS metrics and the paper-layout table."""
from __future__ import annotations

import json
import logging
import math

import pyarrow as pa
import pyarrow.parquet as pq

from ..answers.qa import qa_metrics
from ..io_atomic import write_json, write_parquet
from ..metrics.segmentation import segmentation_metrics
from ..metrics.tables import scores_from_metrics, write_tables

log = logging.getLogger(__name__)


def merge_shards(shards: list[str], out: str) -> pa.Table:
    table = pa.concat_tables([pq.read_table(s) for s in shards]).sort_by("id")
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids across shards {shards}")
    write_parquet(out, table)
    return table


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def evaluate_stage(shards: list[str], predictions: str, metrics_json: str, table_parquet: str | None,
                   table_md: str | None, split: str, qa_profile: str = "paper",
                   untrained_metrics: str | None = None) -> None:
    """Metrics of the merged predictions, and the paper-layout table unless table_parquet
    is None (the untrained reference only feeds the trained run's table, as
    `untrained_metrics`)."""
    table = merge_shards(shards, predictions)
    rows = table.to_pylist()
    seg_records = [{
        "id": r["id"], "size_bucket": r["size_bucket"],
        "gt_rle": {"size": [r["height"], r["width"]], "counts": r["gt_rle"]},
        "pred_rle": {"size": [r["height"], r["width"]], "counts": r["pred_rle"]} if r["pred_rle"] else None,
    } for r in rows]
    # the metric of the reward profile: the papers' exact division, or the authors' smoothing
    seg = segmentation_metrics(seg_records, profile=qa_profile)
    qa = qa_metrics(rows, profile=qa_profile)
    timing = {"GSE": _mean(r["gse_seconds"] for r in rows),
              "LPR+SAM2": _mean(r["lpr_sam_seconds"] for r in rows)}
    if table_parquet is not None:
        untrained = None
        if untrained_metrics:
            with open(untrained_metrics) as f:
                untrained = scores_from_metrics(json.load(f))
        write_tables(table_parquet, table_md, seg, qa, split, timing, untrained)
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    write_json(metrics_json, {
        "split": split, "samples": len(rows), "status": status,
        "regions_clipped": sum(bool(r["region_clipped"]) for r in rows),
        "segmentation": {k: vars(v) for k, v in seg.items()},
        "qa": {t: {g: {"n": s.n, "correct": s.correct, "smoothing": s.smoothing} for g, s in groups.items()}
               for t, groups in qa.items()},
        "seconds_per_image": timing,
    })
    log.info("%s: %d samples, gIoU %.4f cIoU %.4f, status %s", split, len(rows), seg["all"].giou,
             seg["all"].ciou, json.dumps(status))
