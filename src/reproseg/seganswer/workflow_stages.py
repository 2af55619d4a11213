"""SegAnswer's rules: rows from the project's splits, then one library call per stage.

The embedded default trains on the synthetic FineRS-style data: referring rows from the
IS records (the phrase is what the answer says was found), question rows from the MVQA
and OVQA records. Images are resized to `seganswer.image_size` (masks with nearest).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..io_atomic import write_json, write_parquet, write_text

log = logging.getLogger(__name__)
_FOUND = re.compile(r"^the (.+?) is (?:found|detected)\.?$", re.IGNORECASE)
_SEGMENT = re.compile(r"^segment the (.+?)\.?$", re.IGNORECASE)


def phrase_of(row: dict) -> str:
    """The referring phrase: from 'The X is found.' or 'Segment the X.', else the question."""
    for pattern, text in ((_FOUND, row.get("answer", "")), (_SEGMENT, row.get("question", ""))):
        m = pattern.match((text or "").strip())
        if m:
            return m.group(1)
    return row["question"].strip()


def _image_and_mask(row: dict, images_root: str, size) -> tuple[Image.Image, np.ndarray]:
    from ..data.masks import rle_decode
    from ..finers.samples import load_image

    image = load_image(images_root, row["image_path"]).resize(tuple(size), Image.BICUBIC)
    mask = rle_decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)) > 127
    return image, small


def referring_rows(split: str, images_root: str, size) -> list[dict]:
    """Stage-1 / evaluation rows {image, mask, phrase, id}. A record whose mask vanishes at
    this size is kept: the loss and metrics handle an empty target (counted in the log)."""
    import pyarrow.parquet as pq

    out = []
    for row in pq.read_table(split).to_pylist():
        if row["task"] != "IS":
            continue
        image, mask = _image_and_mask(row, images_root, size)
        out.append({"id": row["id"], "image": image, "mask": mask, "phrase": phrase_of(row)})
    log.info("%s: %d referring rows (%d with an empty mask at %s)", split, len(out),
             sum(not r["mask"].any() for r in out), list(size))
    return out


def question_rows(split: str, images_root: str, size) -> list[dict]:
    """Stage-2/3 / evaluation rows {image, question, answer, options, id}; MVQA answers are letters."""
    import pyarrow.parquet as pq

    out = []
    for row in pq.read_table(split).to_pylist():
        if row["task"] == "IS":
            continue
        image, _ = _image_and_mask(row, images_root, size)
        mc = row["task"] == "MVQA"
        out.append({"id": row["id"], "image": image, "question": row["question"],
                    "answer": (row["answer_option"] or row["answer"]) if mc else row["answer"],
                    "options": row["options"] if mc else None, "attribute": row["attribute"], "task": row["task"]})
    return out


def stage1_projector_stage(train: str, images_root: str, qwen: str, sam2: str, sam2_config, out_dir: str,
                           train_log: str, cfg: dict) -> None:
    from .stage1 import train_stage1_projector

    rows = referring_rows(train, images_root, cfg["image_size"])
    train_stage1_projector(qwen, sam2, rows, out_dir, cfg["stage1"]["projector"], train_log,
                           sam2_config_name=sam2_config)


def stage1_lora_stage(train: str, images_root: str, phase_a: str, out_dir: str, train_log: str, cfg: dict) -> None:
    from .stage1 import train_stage1_lora

    train_stage1_lora(phase_a, referring_rows(train, images_root, cfg["image_size"]), out_dir,
                      cfg["stage1"]["lora"], train_log)


def stage1_merge_stage(unmerged: str, out_dir: str) -> None:
    from .model import merge_lora

    merge_lora(unmerged, out_dir)


def stage2_stage(train: str, images_root: str, stage1: str, out_dir: str, train_log: str, cfg: dict) -> None:
    from .stage2 import train_stage2

    train_stage2(stage1, question_rows(train, images_root, cfg["image_size"]), out_dir, cfg["stage2"], train_log)


def stage3_stage(train: str, images_root: str, stage2: str, run_dir: str, checkpoint: str, train_log: str,
                 curves: str, cfg: dict) -> None:
    import os

    from .stage3 import train_stage3

    # As for FineRS: the step log lives beside the resume state until the run ends.
    work_log = Path(run_dir) / "train_log.inprogress.parquet"
    produced = train_stage3(stage2, question_rows(train, images_root, cfg["image_size"]), run_dir, work_log,
                            grpo=cfg["stage3"]["grpo"], settings=cfg["stage3"]["settings"])
    if Path(produced).resolve() != Path(checkpoint).resolve():
        raise RuntimeError(f"stage 3 wrote {produced}, the rule expects {checkpoint}")
    extra = work_log.with_name(work_log.name.replace(".parquet", ".seganswer.parquet"))
    os.replace(work_log, train_log)
    if extra.exists():
        os.replace(extra, Path(train_log).with_suffix(".seganswer.parquet"))
    from ..finers.curves import plot_curves

    plot_curves(train_log, curves, title="SegAnswer stage 3 (DAPO): R_acc, R_format, total")


# Paper numbers (seganswer.txt Table 1 line 150 and Table 3 line 214), for the tables.
PAPER_VQA = {"V*": 86.4, "HR-Bench 4K": 74.8, "HR-Bench 8K": 71.3}
PAPER_REFSEG = {"RefCOCO val": 79.9, "RefCOCO+ val": 73.6, "RefCOCOg val-u": 76.0}


def evaluate_stage(split: str, images_root: str, model_dir: str, metrics_json: str, table_md: str,
                   table_parquet: str, cfg: dict, stage: str) -> None:
    import pyarrow as pa

    from .evaluate import answer_questions, evaluate_referring, qa_accuracy
    from .model import SegAnswerModel

    model = SegAnswerModel.from_pretrained(model_dir)
    ev = cfg["eval"]
    ref = evaluate_referring(model, referring_rows(split, images_root, cfg["image_size"]),
                             max_new_tokens=ev["max_new_tokens"])
    records = answer_questions(model, question_rows(split, images_root, cfg["image_size"]),
                               max_turns=ev["max_turns"], max_turn_tokens=ev["max_new_tokens"])
    mc = qa_accuracy([r for r in records if r.get("options")])
    open_ = qa_accuracy([r for r in records if not r.get("options")])
    seg_calls = sum(int(r.get("seg_calls") or 0) for r in records)
    write_json(metrics_json, {"stage": stage, "referring": ref, "multiple_choice": mc, "open": open_,
                              "seg_calls": seg_calls, "questions": len(records)})
    pct = lambda v: None if v is None or v != v else round(100 * v, 1)  # noqa: E731
    rows = [
        {"table": "Table 3 (referring segmentation)", "metric": "gIoU", "ours": pct(ref.get("giou")),
         "paper_benchmark": "RefCOCO val (cIoU)", "paper": PAPER_REFSEG["RefCOCO val"], "n": ref.get("n")},
        {"table": "Table 3 (referring segmentation)", "metric": "cIoU", "ours": pct(ref.get("ciou")),
         "paper_benchmark": "RefCOCO val (cIoU)", "paper": PAPER_REFSEG["RefCOCO val"], "n": ref.get("n")},
        {"table": "Table 1 (multiple-choice VQA)", "metric": "accuracy", "ours": pct(mc["accuracy"]),
         "paper_benchmark": "V*", "paper": PAPER_VQA["V*"], "n": mc["n"]},
    ]
    write_parquet(table_parquet, pa.Table.from_pylist(rows))
    lines = [f"# SegAnswer {stage}: ours on the {Path(split).stem} split beside the paper's numbers", "",
             "The paper's numbers are on its benchmarks (RefCOCO, V*); ours are on this run's data.", "",
             "| table | metric | ours | paper | paper benchmark | samples |", "|---|---|---:|---:|---|---:|"]
    lines += [f"| {r['table']} | {r['metric']} | {r['ours']} | {r['paper']} | {r['paper_benchmark']} | {r['n']} |"
              for r in rows]
    lines += ["", f"Open questions: {pct(open_['accuracy'])} % of {open_['n']}; unanswered within the turn "
              f"limit: {mc['unanswered'] + open_['unanswered']}; `<|seg|>` calls: {seg_calls}."]
    write_text(table_md, "\n".join(lines) + "\n")
    log.info("%s: %s", stage, json.dumps({"referring": ref, "mc": mc, "open": open_}))
