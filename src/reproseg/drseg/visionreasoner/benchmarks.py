"""Importers of the evaluation sets of Dr. Seg's own setting, from the parquet columns
their owners publish (VisionReasoner evaluation/evaluation_*.py read them with
load_dataset(..., split="test"); Seg-Zero evaluation_scripts/create_reasonseg_hf.py
builds one):

    task          columns (besides image, text, image_id, ann_id, img_height, img_width)
    segmentation  mask: Sequence(Sequence(bool)), img_height rows of img_width; optional
                  bbox [x1, y1, x2, y2] (then the row also scores REC)   RefCOCO/+/g, ReasonSeg
    rec           bbox [x1, y1, x2, y2]; mask optional                   RefCOCO/+/g REC
    detection     bbox: a list of [x1, y1, x2, y2] (may be empty), cat_id  COCO val2017
    counting      count: the number of objects                           Pixmo-Count, CountBench

`image` is the Image() struct {"bytes", "path"} at the original size; img_width x
img_height must be its size. Rows become BENCH_SCHEMA (masks as COCO RLE) and images are
written under `images_out`; the report names every bad record (reproseg.data.annotations.
Report), and `on_invalid` (`fail` / `drop_and_report`) applies as for the training set.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reproseg.answers.parsing import to_box
from reproseg.data.annotations import BAD_RECORD, DUPLICATE, EMPTY_QUESTION, WRONG_TYPE, Report, type_name
from reproseg.data.masks import mask_to_rle

from .data import BAD_SIZE, BOX_OUTSIDE, DEGENERATE_BOX
from .hfdata import (SIZE_MISMATCH, FieldProblem, count_value, embedded_image, import_rows, native_id, positive_int,
                     write_image, write_import)

BASE_COLUMNS = ("image", "text", "image_id", "ann_id", "img_height", "img_width")
TASK_COLUMNS = {"segmentation": ("mask",), "rec": ("bbox",), "detection": ("bbox", "cat_id"), "counting": ("count",)}
TASKS = tuple(TASK_COLUMNS)

BAD_MASK = "bad_mask"        # not img_height rows of img_width booleans
BAD_BOX = "bad_box"          # not 4 finite numbers (a detection row: not a list of such boxes)
BAD_CATEGORY = "bad_category"
BAD_COUNT = "bad_count"
EMPTY_MASK = "empty_mask"    # a note: the target has no pixel (U may be 0, which gIoU scores `empty`)

BENCH_SCHEMA = pa.schema([
    ("id", pa.string()),            # "<source>/<image_id>/<ann_id>"
    ("source", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("image_path", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("text", pa.string()),
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("rle_counts", pa.string()),    # the GT mask, COCO compressed RLE at (height, width); null without one
    ("box", pa.list_(pa.float64())),                   # REC: the GT box
    ("boxes", pa.list_(pa.list_(pa.float64()))),       # detection: the GT boxes
    ("category_id", pa.int64()),
    ("count", pa.int64()),
])


def _mask(value: Any, width: int, height: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != height:
        raise FieldProblem(BAD_MASK, f"mask is {type_name(value)} of {len(value) if isinstance(value, list) else '-'} "
                                     f"rows, not {height}")
    for r, row in enumerate(value):
        if not isinstance(row, list) or len(row) != width or not all(isinstance(v, bool) for v in row):
            raise FieldProblem(BAD_MASK, f"mask row {r} is not {width} booleans")
    return np.array(value, dtype=bool)


def _box(value: Any, width: int | None, height: int | None, what: str = "bbox") -> list[float]:
    box = to_box(value)
    if box is None:
        raise FieldProblem(BAD_BOX, f"{what} is {str(value)[:60]}, not 4 finite numbers")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise FieldProblem(DEGENERATE_BOX, f"{what} {list(box)} has no area")
    if width is not None and height is not None and (x1 < 0 or y1 < 0 or x2 > width or y2 > height):
        raise FieldProblem(BOX_OUTSIDE, f"{what} {list(box)} leaves the {width}x{height} image")
    return list(box)


def _record(index: int, item: dict, split: str, seen: dict, ordinal: int, images_out: Path, max_pixels: int,
            report: Report, file: str, *, task: str, name: str) -> dict | None:
    rid = None

    def bad(cls: str, field: str, message: str) -> None:
        report.add(index, rid, cls, message, file=file, field_name=field)

    ids = {k: native_id(item.get(k)) for k in ("image_id", "ann_id")}
    for key, v in ids.items():
        if v is None:
            bad(BAD_RECORD, key, f"{key} {str(item.get(key))[:60]!r} is missing or not text / an integer")
    if None in ids.values():
        return None
    rid = f"{name}/{ids['image_id']}/{ids['ann_id']}"
    if rid in seen:
        bad(DUPLICATE, "ann_id", f"image_id / ann_id repeat record {seen[rid]}")
        return None
    seen[rid] = index
    n_before = len(report.problems)
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        bad(WRONG_TYPE if text is not None and not isinstance(text, str) else EMPTY_QUESTION, "text",
            f"text is {type_name(text)}, not a non-empty query")
    w, h = positive_int(item.get("img_width")), positive_int(item.get("img_height"))
    for key, v in (("img_width", w), ("img_height", h)):
        if v is None:
            bad(BAD_SIZE, key, f"{key} is {str(item.get(key))[:40]!r}, not a positive integer")
    data = None
    try:
        data, ext, iw, ih = embedded_image(item.get("image"), max_pixels)
        if w is not None and h is not None and (iw, ih) != (w, h):
            bad(SIZE_MISMATCH, "image", f"image is {iw}x{ih}, its record says {w}x{h}")
    except FieldProblem as exc:
        bad(exc.cls, "image", str(exc))
    row = {"rle_counts": None, "box": None, "boxes": None, "category_id": None, "count": None}
    masks: list[np.ndarray] = []
    fields = []
    if task == "segmentation" or (task == "rec" and item.get("mask") is not None):
        def mask(v):
            masks.append(_mask(v, w, h))
            row.update(rle_counts=mask_to_rle(masks[0])["counts"])
        fields.append(("mask", mask))
    if task in ("segmentation", "rec") and (task == "rec" or item.get("bbox") is not None):
        fields.append(("bbox", lambda v: row.update(box=_box(v, w, h))))
    if task == "detection":
        def boxes(v):
            if not isinstance(v, list):
                raise FieldProblem(BAD_BOX, f"bbox is {type_name(v)}, not a list of boxes")
            row.update(boxes=[_box(b, w, h, f"box {k}") for k, b in enumerate(v)])

        def category(v):
            if native_id(v) is None or not isinstance(v, int):
                raise FieldProblem(BAD_CATEGORY, f"cat_id is {str(v)[:40]!r}, not an integer")
            row.update(category_id=v)
        fields += [("bbox", boxes), ("cat_id", category)]
    if task == "counting":
        def count(v):
            c = count_value(v)
            if c is None:
                raise FieldProblem(BAD_COUNT, f"count is {str(v)[:40]!r}, not an integer >= 0")
            row.update(count=c)
        fields.append(("count", count))
    for key, check in fields:
        if key == "mask" and (w is None or h is None):
            continue   # its shape cannot be checked; the size is reported already
        try:
            check(item.get(key))
        except FieldProblem as exc:
            bad(exc.cls, key, str(exc))
    if len(report.problems) > n_before:
        return None
    if masks and not masks[0].any():
        report.note(index, rid, EMPTY_MASK, "the target mask has no pixel", file=file, field_name="mask")
    image_path = f"{ordinal:07d}.{ext}"
    write_image(images_out, image_path, data)
    return {"id": rid, "source": name, "split": split, "task": task, "image_path": image_path, "width": w,
            "height": h, "text": text, "image_id": ids["image_id"], "ann_id": ids["ann_id"], **row}


def import_benchmark(spec: dict, *, images_out: str | Path, on_invalid: str = "fail") -> tuple[pa.Table, Report]:
    """(table, report) of one evaluation set. `spec`: name, task (TASKS), path, split
    (default "test"), max_image_pixels."""
    task = spec["task"]
    if task not in TASK_COLUMNS:
        raise ValueError(f"benchmark {spec['name']!r}: unknown task {task!r} (known: {TASKS})")
    return import_rows(spec, columns=BASE_COLUMNS + TASK_COLUMNS[task], schema=BENCH_SCHEMA,
                       record=partial(_record, task=task, name=spec["name"]), default_split="test",
                       images_out=images_out, on_invalid=on_invalid)


def import_stage(spec: dict, table_out: str, images_out: str, report_json: str, report_md: str,
                 report_log: str) -> None:
    """The import rule: table, images folder and report (hfdata.write_import)."""
    write_import(import_benchmark, spec, table_out, images_out, report_json, report_md, report_log)
