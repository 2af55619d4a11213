"""Val scores of SegAnswer stage-3 candidates (rule seganswer_stage3_select).

Each candidate (a whole SegAnswer checkpoint: policy, heads, SAM 2.1) answers the val
questions greedily, multi-turn, as the evaluation does; the val metrics are `accuracy`
and `answered` (the share of rollouts that gave an answer at all).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..selection import select_stage as run_selection
from .evaluate import answer_questions, qa_accuracy
from .model import SegAnswerModel, resolve_device
from .sources.rows import select

log = logging.getLogger(__name__)

VAL_METRICS = ("accuracy", "answered")


def score_candidate(path: Path, rows, cfg: dict) -> dict[str, float]:
    ev, sel = cfg["eval"], cfg["selection"]
    net = SegAnswerModel.from_pretrained(str(path), dtype=ev["dtype"], device=resolve_device(ev["device"]))
    net.enable_feature_cache(cfg["sam_feature_cache_mb"])
    records = answer_questions(net, rows, max_turns=sel["max_turns"], max_turn_tokens=sel["max_new_tokens"],
                               desc=f"val {path.name}", template=cfg["reasoning_prompt"])
    q = qa_accuracy(records)
    scores = {"accuracy": q["accuracy"], "answered": 1 - q["unanswered"] / q["n"]}
    log.info("%s: %s", path.name, scores)
    return scores


def select_stage3(tables: list[str], roots: list[str], candidates: str, out_dir: str, selection_json: str,
                  cfg: dict) -> dict:
    sel = cfg["selection"]

    def make_score():
        rows = select(tables, roots, sel["data"], "questions", cfg["image_size"], sel["limit"])
        if not len(rows):
            raise ValueError(f"seganswer.selection.data {sel['data']}: no val questions to score candidates on")
        return lambda path: score_candidate(path, rows, cfg)

    return run_selection(sel["stage3"], VAL_METRICS, "seganswer.selection.stage3", candidates, out_dir,
                         selection_json, make_score)
