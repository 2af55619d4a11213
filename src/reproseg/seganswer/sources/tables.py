"""The two normalised SegAnswer sample tables every data source is imported into.

Referring rows (stage 1, Table 3): one row per referring expression, the target as a
COCO compressed RLE at the image's own size. Question rows (stages 2-3, Tables 1-2):
multiple choice when `options` is set (then `answer` is the option letter), open
otherwise. `image_path` is relative to the source's image root (its `images` folder,
or the folder its import rule writes images into when the source embeds them).

Each importer returns (table, report): the report (reproseg.data.annotations.Report)
names every invalid record; under on_invalid="fail" an invalid record raises
AnnotationError after the report is built, under "drop_and_report" it is left out and
listed.
"""
from __future__ import annotations

import pyarrow as pa

REFERRING_SCHEMA = pa.schema([
    ("id", pa.string()),          # unique within the source, e.g. "refcoco/ref123/sent456"
    ("source", pa.string()),      # the config name of the source, e.g. "refcoco"
    ("split", pa.string()),       # the source's own split name: train, val, testA, ...
    ("image_path", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("rle_counts", pa.string()),  # COCO compressed RLE counts at (height, width)
    ("phrase", pa.string()),      # the referring expression
    ("category", pa.string()),    # object category name where the source has one, else null
])

QUESTION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("split", pa.string()),
    ("image_path", pa.string()),
    ("question", pa.string()),    # without the options and without answer-format instructions
    ("answer", pa.string()),      # multiple choice: the option letter "A".."Z"; open: the answer text
    ("options", pa.list_(pa.string())),  # option texts in letter order (no "A." prefix); null if open
    ("task", pa.string()),        # "MVQA" (multiple choice) or "OVQA" (open)
    ("category", pa.string()),    # the benchmark's category / sub-task where it has one, else null
    # HR-Bench only (null elsewhere): the cycle the row belongs to; the official score
    # averages per-cycle accuracies (seganswer.evaluate.hrbench_accuracy)
    ("cycle_category", pa.string()),
])


def referring_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REFERRING_SCHEMA)


def question_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUESTION_SCHEMA)
