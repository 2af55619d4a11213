"""The embedded default's SegAnswer data: this run's FineRS splits as SegAnswer rows.

IS records become referring rows: the phrase is what the answer says was found ("The
X is found." -> "X"), else what "Segment the X." asks for, else the question. MVQA
records become multiple-choice rows (answer = the option letter), OVQA records open
rows. The records were validated by the FineRS import; nothing here is dropped.
"""
from __future__ import annotations

import re

import pyarrow.parquet as pq

from ...data.annotations import Report
from .tables import question_table, referring_table

_FOUND = re.compile(r"^the (.+?) is (?:found|detected)\.?$", re.IGNORECASE)
_SEGMENT = re.compile(r"^segment the (.+?)\.?$", re.IGNORECASE)


def phrase_of(row: dict) -> str:
    """The referring phrase: from 'The X is found.' or 'Segment the X.', else the question."""
    for pattern, text in ((_FOUND, row.get("answer", "")), (_SEGMENT, row.get("question", ""))):
        m = pattern.match((text or "").strip())
        if m:
            return m.group(1)
    return row["question"].strip()


def import_finers(spec: dict, splits: dict[str, str]):
    """(referring table, question table, report) from {split name: FineRS split parquet}."""
    name = spec["name"]
    report = Report(source=f"FineRS splits {sorted(splits)}", policy="fail")
    referring, questions = [], []
    for split, path in sorted(splits.items()):
        for row in pq.read_table(path).to_pylist():
            report.total += 1
            base = {"id": f"{name}/{row['id']}", "source": name, "split": split, "image_path": row["image_path"]}
            if row["task"] == "IS":
                referring.append({**base, "width": row["width"], "height": row["height"],
                                  "rle_counts": row["rle_counts"], "phrase": phrase_of(row), "category": None})
                continue
            mc = row["task"] == "MVQA"
            questions.append({**base, "question": row["question"],
                              "answer": row["answer_option"] if mc else row["answer"],
                              "options": row["options"] if mc else None, "task": row["task"],
                              "category": row["attribute"]})
    return referring_table(referring), question_table(questions), report
