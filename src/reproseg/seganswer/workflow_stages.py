"""SegAnswer's rules: samples from the normalised source tables, then one library call per stage.

Every stage reads the selections its `seganswer.data` entry lists ("source" or
"source/split"); the rule passes the matching tables and their image folders in the
same order. Images (and masks, nearest neighbour) are resized to
`seganswer.image_size` when a sample is read (reproseg.seganswer.sources.rows).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..io_atomic import write_json, write_parquet, write_text
from .sources.rows import select

log = logging.getLogger(__name__)


def _referring(tables, roots, selections, size, limit=None):
    rows = select(tables, roots, selections, "referring", size, limit)
    # An empty target at this size is kept: the loss and the metrics handle it (counted here).
    log.info("%d of %d referring rows have an empty mask at %s", rows.empty_masks(), len(rows), list(size))
    return rows


def stage1_projector_stage(tables: list[str], roots: list[str], qwen: str, sam2: str, sam2_config, out_dir: str,
                           train_log: str, cfg: dict) -> None:
    from .stage1 import train_stage1_projector

    rows = _referring(tables, roots, cfg["data"]["stage1_projector"], cfg["image_size"])
    train_stage1_projector(qwen, sam2, rows, out_dir, cfg["stage1"]["projector"], train_log,
                           sam2_config_name=sam2_config)


def stage1_lora_stage(tables: list[str], roots: list[str], phase_a: str, out_dir: str, train_log: str,
                      cfg: dict) -> None:
    from .stage1 import train_stage1_lora

    rows = _referring(tables, roots, cfg["data"]["stage1_lora"], cfg["image_size"])
    train_stage1_lora(phase_a, rows, out_dir, cfg["stage1"]["lora"], train_log)


def stage1_merge_stage(unmerged: str, out_dir: str, cfg: dict) -> None:
    from .model import merge_lora

    merge_lora(unmerged, out_dir, dtype=cfg["stage1"]["lora"].get("dtype", "float32"))


def stage2_stage(tables: list[str], roots: list[str], stage1: str, out_dir: str, train_log: str, cfg: dict) -> None:
    from .stage2 import train_stage2

    rows = select(tables, roots, cfg["data"]["stage2"], "questions", cfg["image_size"])
    train_stage2(stage1, rows, out_dir, cfg["stage2"], train_log)


def stage3_stage(tables: list[str], roots: list[str], stage2: str, run_dir: str, checkpoint: str, train_log: str,
                 curves: str, cfg: dict) -> None:
    import os

    from .stage3 import train_stage3

    rows = select(tables, roots, cfg["data"]["stage3"], "questions", cfg["image_size"])
    # As for FineRS: the step log lives beside the resume state until the run ends.
    work_log = Path(run_dir) / "train_log.inprogress.parquet"
    produced = train_stage3(stage2, rows, run_dir, work_log, grpo=cfg["stage3"]["grpo"],
                            settings=cfg["stage3"]["settings"])
    if Path(produced).resolve() != Path(checkpoint).resolve():
        raise RuntimeError(f"stage 3 wrote {produced}, the rule expects {checkpoint}")
    extra = work_log.with_name(work_log.name.replace(".parquet", ".seganswer.parquet"))
    os.replace(work_log, train_log)
    if extra.exists():
        os.replace(extra, Path(train_log).with_suffix(".seganswer.parquet"))
    from ..finers.curves import plot_curves

    plot_curves(train_log, curves, title="SegAnswer stage 3 (DAPO): R_acc, R_format, total")


def evaluate_stage(referring: dict, questions: dict, model_dir: str, metrics_json: str, table_md: str,
                   table_parquet: str, cfg: dict, stage: str) -> None:
    """Every benchmark of `seganswer.eval`: referring = {"tables", "roots"} in the order of
    eval.referring, questions likewise for eval.questions."""
    from . import paper_tables
    from .evaluate import answer_questions, evaluate_referring, qa_accuracy
    from .model import SegAnswerModel, resolve_device

    ev, size = cfg["eval"], cfg["image_size"]
    model = SegAnswerModel.from_pretrained(model_dir, dtype=ev.get("dtype", "float32"),
                                           device=resolve_device(ev.get("device", "auto")))
    limit = ev.get("limit")
    ref_metrics, qa_metrics = {}, {}
    for bench, table, root in zip(ev["referring"], referring["tables"], referring["roots"], strict=True):
        rows = _referring([table], [root], [bench["data"]], size, limit)
        ref_metrics[bench["label"]] = evaluate_referring(model, rows, max_new_tokens=ev["max_new_tokens"])
    for bench, table, root in zip(ev["questions"], questions["tables"], questions["roots"], strict=True):
        rows = select([table], [root], [bench["data"]], "questions", size, limit)
        records = answer_questions(model, rows, max_turns=ev["max_turns"], max_turn_tokens=ev["max_new_tokens"])
        qa_metrics[bench["label"]] = {**qa_accuracy(records),
                             "multiple_choice": qa_accuracy([r for r in records if r.get("options")]),
                             "open": qa_accuracy([r for r in records if not r.get("options")]),
                             "seg_calls": sum(int(r.get("seg_calls") or 0) for r in records)}
    write_json(metrics_json, {"stage": stage, "referring": ref_metrics, "questions": qa_metrics})
    rows = paper_tables.long_rows(ref_metrics, qa_metrics)
    write_parquet(table_parquet, paper_tables.arrow_table(rows))
    notes = [f"- {label}: `<|seg|>` calls {m['seg_calls']}; multiple choice "
             f"{paper_tables.pct(m['multiple_choice']['accuracy'])} % of {m['multiple_choice']['n']}, open "
             f"{paper_tables.pct(m['open']['accuracy'])} % of {m['open']['n']}" for label, m in qa_metrics.items()]
    write_text(table_md, paper_tables.markdown(stage, rows, notes))
    log.info("%s: %s", stage, json.dumps({"referring": ref_metrics, "questions": qa_metrics}, default=str))
