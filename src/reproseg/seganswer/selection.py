"""Val scores of SegAnswer candidates (rules seganswer_stage1_select, seganswer_stage2_select,
seganswer_stage3_select).

Stage 1 (phase b's unmerged candidates: base weights, adapter, heads): the val referring
rows' masks with the stage-1 response given ("It is <|seg|>.", the mask read at its
`<|seg|>`), scored as the evaluation's "given" columns: `giou`, `ciou`.

Stages 2 and 3 (whole SegAnswer checkpoints): each candidate answers the val questions
greedily, multi-turn, as the evaluation does; the val metrics are `accuracy` and
`answered` (the share of rollouts that gave an answer at all).

Every selection reads only the rows of `seganswer.selection.data` (questions) or
`seganswer.selection.referring_data`, which the config check keeps to val splits that
no benchmark evaluates (reproseg.config).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..selection import select_stage as run_selection
from .evaluate import answer_questions, evaluate_referring_given, qa_accuracy
from .model import PixelBounds, SegAnswerModel, resolve_device
from .sources.rows import select

log = logging.getLogger(__name__)

VAL_METRICS = ("accuracy", "answered")
REFERRING_VAL_METRICS = ("giou", "ciou")


class _Loader:
    """Loads a stage's candidates one after another, sharing one SAM feature cache between
    those that carry the same SAM 2.1 file (every stage keeps SAM frozen and hard-links it
    into its candidates, so their image features are the same: each val picture is
    encoded once, not once per candidate)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.sam_file: str | None = None
        self.cache = None

    def __call__(self, path: Path) -> SegAnswerModel:
        ev = self.cfg["eval"]
        net = SegAnswerModel.from_pretrained(str(path), dtype=ev["dtype"], device=resolve_device(ev["device"]),
                                             pixels=PixelBounds.of(self.cfg))
        if self.cache is not None and os.path.samefile(net.sam2_checkpoint, self.sam_file):
            net.feature_cache = self.cache
        else:
            net.enable_feature_cache(self.cfg["sam_feature_cache_mb"])
            self.sam_file, self.cache = net.sam2_checkpoint, net.feature_cache
        return net


def score_candidate(path: Path, rows, cfg: dict, load=None) -> dict[str, float]:
    sel = cfg["selection"]
    records = answer_questions((load or _Loader(cfg))(path), rows, max_turns=sel["max_turns"],
                               max_turn_tokens=sel["max_new_tokens"], desc=f"val {path.name}",
                               template=cfg["reasoning_prompt"])
    q = qa_accuracy(records)
    scores = {"accuracy": q["accuracy"], "answered": 1 - q["unanswered"] / q["n"]}
    log.info("%s: %s", path.name, scores)
    return scores


def score_referring_candidate(path: Path, rows, cfg: dict, load=None) -> dict[str, float]:
    m = evaluate_referring_given((load or _Loader(cfg))(path), rows)  # its counts (n, missing) are not val metrics
    scores = {"giou": m["giou"], "ciou": m["ciou"]}
    log.info("%s: %s", path.name, scores)
    return scores


def _select_questions(stage: str, tables: list[str], roots: list[str], candidates: str, out_dir: str,
                      selection_json: str, cfg: dict) -> dict:
    sel = cfg["selection"]

    def make_score():
        rows = select(tables, roots, sel["data"], "questions", limit=sel["limit"])
        if not len(rows):
            raise ValueError(f"seganswer.selection.data {sel['data']}: no val questions to score candidates on")
        load = _Loader(cfg)
        return lambda path: score_candidate(path, rows, cfg, load)

    return run_selection(sel[stage], VAL_METRICS, f"seganswer.selection.{stage}", candidates, out_dir,
                         selection_json, make_score)


def select_stage2(tables: list[str], roots: list[str], candidates: str, out_dir: str, selection_json: str,
                  cfg: dict) -> dict:
    return _select_questions("stage2", tables, roots, candidates, out_dir, selection_json, cfg)


def select_stage3(tables: list[str], roots: list[str], candidates: str, out_dir: str, selection_json: str,
                  cfg: dict) -> dict:
    return _select_questions("stage3", tables, roots, candidates, out_dir, selection_json, cfg)


def select_stage1(tables: list[str], roots: list[str], candidates: str, out_dir: str, selection_json: str,
                  cfg: dict) -> dict:
    sel = cfg["selection"]

    def make_score():
        rows = select(tables, roots, sel["referring_data"], "referring", limit=sel["limit"])
        if not len(rows):
            raise ValueError(f"seganswer.selection.referring_data {sel['referring_data']}: no val referring rows "
                             "to score candidates on")
        load = _Loader(cfg)
        return lambda path: score_referring_candidate(path, rows, cfg, load)

    return run_selection(sel["stage1"], REFERRING_VAL_METRICS, "seganswer.selection.stage1", candidates, out_dir,
                         selection_json, make_score)
