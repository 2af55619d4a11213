"""SegAnswer's evaluation tables in the paper's layouts, with its numbers beside ours.

Table 3 (referring segmentation): one column per benchmark split, rows gIoU and cIoU
of ours and the paper's SegAnswer row. Table 1 (VQA): one column per benchmark, rows
our accuracy and the paper's. Columns are the labels of `seganswer.eval`; a label
that names one of the paper's columns (e.g. "RefCOCO val", "V*") gets the paper's
number beside ours, any other label (the default's synthetic splits) gets "-".
The paper does not say whether Table 3 is gIoU or cIoU; it compares with LISA-style
methods, whose tables report cIoU, so its numbers stand beside our cIoU.
"""
from __future__ import annotations

import math

import pyarrow as pa

# seganswer.txt, Table 3 (SegAnswer row) and Table 1 (SegAnswer row).
PAPER_TABLE3 = {
    "RefCOCO val": 79.9, "RefCOCO test-A": 82.3, "RefCOCO test-B": 76.9,
    "RefCOCO+ val": 73.6, "RefCOCO+ test-A": 78.7, "RefCOCO+ test-B": 67.5,
    "RefCOCOg val-u": 76.0, "RefCOCOg test-u": 76.4,
}
PAPER_TABLE1 = {
    "V*": 86.4, "HR-Bench 4K": 74.8, "HR-Bench 8K": 71.3, "MMBench": 87.5, "VisuLogic": 27.1,
    "MMVP": 72.3, "POPE": 87.8, "HallusionBench": 46.3,
}


def pct(v) -> float | None:
    """A fraction as a percentage with one decimal; None for a missing or NaN value."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * v, 1)


def long_rows(referring: dict[str, dict], questions: dict[str, dict]) -> list[dict]:
    """One row per (benchmark, metric): ours, the paper's number where it has one, sample counts."""
    rows = []
    for label, m in referring.items():
        for metric in ("giou", "ciou"):
            name = "gIoU" if metric == "giou" else "cIoU"
            rows.append({"row": f"{label} {name}", "table": "Table 3", "benchmark": label, "metric": name,
                         "ours": pct(m[metric]), "paper": PAPER_TABLE3.get(label) if metric == "ciou" else None,
                         "n": m["n"], "n_missing": m["n_missing"]})
    for label, m in questions.items():
        rows.append({"row": f"{label} accuracy", "table": "Table 1", "benchmark": label, "metric": "accuracy", "ours": pct(m["accuracy"]),
                     "paper": PAPER_TABLE1.get(label), "n": m["n"], "n_missing": m["unanswered"]})
    return rows


def arrow_table(rows: list[dict]) -> pa.Table:
    # The first column names each row uniquely: `reproseg audit --row "RefCOCO val cIoU"`.
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("row", pa.string()), ("table", pa.string()), ("benchmark", pa.string()), ("metric", pa.string()), ("ours", pa.float64()),
        ("paper", pa.float64()), ("n", pa.int64()), ("n_missing", pa.int64())]))


def _cell(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _wide(rows: list[dict], table: str, lines_of: list[tuple[str, str, str]]) -> list[str]:
    """A Markdown table: one column per benchmark; each (row label, metric, field) a line."""
    picked = [r for r in rows if r["table"] == table]
    labels = list(dict.fromkeys(r["benchmark"] for r in picked))
    if not labels:
        return ["(no benchmark configured)"]
    cell = {(r["benchmark"], r["metric"], f): r[f] for r in picked for f in ("ours", "paper")}
    out = ["| model | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, metric, field in lines_of:
        out.append(f"| {name} | " + " | ".join(_cell(cell.get((b, metric, field))) for b in labels) + " |")
    n = {r["benchmark"]: (r["n"], r["n_missing"]) for r in picked}
    out.append("| samples (missing) | " + " | ".join(f"{n[b][0]} ({n[b][1]})" for b in labels) + " |")
    return out


def markdown(stage: str, rows: list[dict], notes: list[str]) -> str:
    lines = [f"# SegAnswer {stage}: ours beside the paper's numbers", "",
             "## Table 3 layout: referring segmentation", "",
             *_wide(rows, "Table 3", [("SegAnswer (paper, cIoU)", "cIoU", "paper"),
                                      ("ours, gIoU", "gIoU", "ours"), ("ours, cIoU", "cIoU", "ours")]),
             "", "Missing: the model wrote no `<|seg|>` (the sample scores I = 0).", "",
             "## Table 1 layout: multiple-choice and open VQA accuracy", "",
             *_wide(rows, "Table 1", [("SegAnswer (paper)", "accuracy", "paper"), ("ours", "accuracy", "ours")]),
             "", "Missing: no `<answer>` within the turn limit (counted wrong).", ""]
    return "\n".join(lines + notes) + "\n"
