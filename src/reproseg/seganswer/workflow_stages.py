"""SegAnswer's rules: samples from the normalised source tables, then one library call per stage.

Every stage reads the selections its `seganswer.data` entry lists ("source" or
"source/split"); the rule passes the matching tables and their image folders in the
same order. Images and masks are read at their native resolution
(reproseg.seganswer.sources.rows); `seganswer.min_pixels` / `max_pixels` bound the
Qwen2.5-VL processor's resize of every stage's and every evaluation's model (PixelBounds).
`seganswer.sam_feature_cache_mb` is every stage's and every evaluation's SAM feature cache.

Stage 3's job is reproseg.seganswer.stage3.stage3_stage: kept out of this module so that
the other stages' code fingerprints do not hold stage 3's rewards, and stage 3's does not
hold the evaluation.

Evaluation runs once per checkpoint (base, stage1, stage2, stage3; see paper_tables
for what each stands for) and writes that checkpoint's metrics; paper_tables.tables_stage
puts the checkpoints up to a stage side by side in the paper's layouts (a module without
torch, so that the table jobs start in a fraction of a second).
"""
from __future__ import annotations

import json
import logging

from ..io_atomic import write_json
from ..runs import CANDIDATES_DIR, RESUME_DIR, run_dir_of
from .evaluate import answer_questions, evaluate_referring, evaluate_referring_given, qa_accuracy
from .model import PixelBounds, SegAnswerModel, merge_lora, resolve_device
from .sources.rows import select
from .stage1 import train_stage1_lora, train_stage1_projector
from .stage2 import train_stage2

log = logging.getLogger(__name__)


def with_cache(settings: dict, cfg: dict) -> dict:
    """A stage's settings (its config section) with the section-wide SAM feature cache."""
    return {**settings, "sam_feature_cache_mb": cfg["sam_feature_cache_mb"]}


def with_prompt(settings: dict, cfg: dict) -> dict:
    """...and the section-wide reasoning prompt (stages 2 and 3, which ask questions)."""
    return {**with_cache(settings, cfg), "reasoning_prompt": cfg["reasoning_prompt"]}


def with_processes(settings: dict, processes: int | None) -> dict:
    """A stage's settings with the job's processes (the rule's: the stage's own, else the
    training family's) when given."""
    return settings if processes is None else {**settings, "processes": processes}


def _referring(tables, roots, selections, limit=None):
    rows = select(tables, roots, selections, "referring", limit=limit)
    # An empty target is kept: the loss and the metrics handle it (counted here).
    log.info("%d of %d referring rows have an empty mask", rows.empty_masks(), len(rows))
    return rows


def stage1_projector_stage(tables: list[str], roots: list[str], qwen: str, sam2: str, sam2_config, out_dir: str,
                           train_log: str, cfg: dict, processes: int | None = None) -> None:
    rows = _referring(tables, roots, cfg["data"]["stage1_projector"])
    # no candidates: only phase b is selected (its config keeps candidate_every null)
    settings = with_processes(with_cache(cfg["stage1"]["projector"], cfg), processes)
    train_stage1_projector(qwen, sam2, rows, out_dir, settings, train_log,
                           sam2_config_name=sam2_config, resume_dir=run_dir_of(out_dir) / RESUME_DIR,
                           pixels=PixelBounds.of(cfg))


def stage1_lora_stage(tables: list[str], roots: list[str], phase_a: str, out_dir: str, train_log: str,
                      cfg: dict, processes: int | None = None) -> None:
    rows = _referring(tables, roots, cfg["data"]["stage1_lora"])
    run = run_dir_of(out_dir)
    settings = with_processes(with_cache(cfg["stage1"]["lora"], cfg), processes)
    train_stage1_lora(phase_a, rows, out_dir, settings, train_log,
                      resume_dir=run / RESUME_DIR, candidates_dir=run / CANDIDATES_DIR, pixels=PixelBounds.of(cfg))


def stage1_merge_stage(unmerged: str, out_dir: str, cfg: dict) -> None:
    merge_lora(unmerged, out_dir, dtype=cfg["stage1"]["lora"]["dtype"])


def stage2_stage(tables: list[str], roots: list[str], stage1: str, out_dir: str, train_log: str, cfg: dict,
                 processes: int | None = None) -> None:
    rows = select(tables, roots, cfg["data"]["stage2"], "questions")
    run = run_dir_of(out_dir)
    settings = with_processes(with_prompt(cfg["stage2"], cfg), processes)
    train_stage2(stage1, rows, out_dir, settings, train_log, resume_dir=run / RESUME_DIR,
                 candidates_dir=run / CANDIDATES_DIR, pixels=PixelBounds.of(cfg))


def load_checkpoint(model: dict, cfg: dict):
    """The model one evaluation job scores. model: {"dir": a SegAnswer checkpoint}, or for the
    base checkpoint {"qwen", "sam2", "sam2_config"} (the projector drawn with stage 1 phase
    a's seed, exactly the model phase a starts from)."""
    ev = cfg["eval"]
    dtype, device, pixels = ev["dtype"], resolve_device(ev["device"]), PixelBounds.of(cfg)
    if "dir" in model:
        return SegAnswerModel.from_pretrained(model["dir"], dtype=dtype, device=device, pixels=pixels)
    seed = cfg["stage1"]["projector"]["seed"]
    return SegAnswerModel.from_base(model["qwen"], model["sam2"], model.get("sam2_config"), seed=seed,
                                    dtype=dtype, device=device, pixels=pixels)


def evaluate_stage(referring: dict, questions: dict, model: dict, metrics_json: str, cfg: dict,
                   checkpoint: str) -> None:
    """Every benchmark of `seganswer.eval` on one checkpoint (see load_checkpoint); referring =
    {"tables", "roots"} in the order of eval.referring, questions likewise for eval.questions.
    gIoU / cIoU are scored at each image's native resolution (the GT mask's own pixels; the
    predicted mask is SAM's logits upsampled to that size)."""
    ev = cfg["eval"]
    net = load_checkpoint(model, cfg)
    net.enable_feature_cache(cfg["sam_feature_cache_mb"])
    limit = ev["limit"]
    ref_metrics, qa_metrics = {}, {}
    for bench, table, root in zip(ev["referring"], referring["tables"], referring["roots"], strict=True):
        rows = _referring([table], [root], [bench["data"]], limit)
        ref_metrics[bench["label"]] = {**evaluate_referring(net, rows, max_new_tokens=ev["max_new_tokens"],
                                                            desc=f"{checkpoint} {bench['label']}"),
                                       "given": evaluate_referring_given(net, rows)}
    for bench, table, root in zip(ev["questions"], questions["tables"], questions["roots"], strict=True):
        rows = select([table], [root], [bench["data"]], "questions", limit=limit)
        records = answer_questions(net, rows, max_turns=ev["max_turns"], max_turn_tokens=ev["max_new_tokens"],
                                   desc=f"{checkpoint} {bench['label']}", template=cfg["reasoning_prompt"])
        qa_metrics[bench["label"]] = {**qa_accuracy(records),
                                      "multiple_choice": qa_accuracy([r for r in records if r.get("options")]),
                                      "open": qa_accuracy([r for r in records if not r.get("options")]),
                                      "seg_calls": sum(int(r.get("seg_calls") or 0) for r in records)}
    write_json(metrics_json, {"checkpoint": checkpoint, "model": model, "referring": ref_metrics,
                              "questions": qa_metrics})
    log.info("%s: %s", checkpoint, json.dumps({"referring": ref_metrics, "questions": qa_metrics}, default=str))
