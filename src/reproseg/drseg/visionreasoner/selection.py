"""Rule drseg_select: every candidate answers the val set greedily and is scored as the
evaluation scores a segmentation set (gIoU / cIoU through SAM 2.1); the declared choice
goes on (reproseg.selection)."""
from __future__ import annotations

import logging

import pyarrow.parquet as pq

from reproseg.models.generation import Policy
from reproseg.selection import select_stage as run_selection

from .evaluate import VAL_METRICS, predictor_for, score_rows
from .inference import predict_rows, template_of
from .rows import device_of, limited

log = logging.getLogger(__name__)


def select_stage(val_table: str, images_root: str, candidates: str, out_dir: str, selection_json: str,
                 sam2: str, sam2_config: str | None, selection: dict, rewards: dict, policy_size: int,
                 eval_cfg: dict) -> dict:
    """Rule drseg_select: every candidate answers the val set greedily and is scored by gIoU /
    cIoU with SAM2 (the evaluation's protocol); the chosen one is linked to `out_dir`."""
    choice = {k: selection[k] for k in ("choose", "metric", "mode")}

    def make_score():
        rows = limited(pq.read_table(val_table).to_pylist(), selection["limit"])
        if not rows or any(r["task"] != "segmentation" for r in rows):
            raise ValueError(f"{val_table}: the selection needs a non-empty segmentation set")
        predictor = predictor_for(rows, sam2, sam2_config, eval_cfg["device"])

        def score(path):
            policy = Policy(str(path), device_of(eval_cfg["device"]))
            preds = predict_rows(policy, rows, images_root, template_of(rewards), policy_size, selection["batch_size"],
                                 selection["max_new_tokens"], 0.0, 0)
            s, _ = score_rows(rows, preds, images_root, predictor, eval_cfg["giou_empty"])
            log.info("%s: gIoU %.4f cIoU %.4f parsed %.2f", path.name, s["giou"], s["ciou"], s["parsed"])
            return {"giou": s["giou"], "ciou": s["ciou"]}
        return score

    return run_selection(choice, VAL_METRICS, "drseg.selection", candidates, out_dir, selection_json, make_score)
