"""Our FineRS-4k numbers beside the paper's, in the layout of Table 2 / Table A1 (+ A4).

Parquet (numbers): one row per metric (gIoU, cIoU, MVQA, OVQA), then, when timings are
given, one row per stage ("GSE time", "LPR+SAM2 time"). Columns: "metric", then for each
paper column "<block>/<group> ours", "... paper" and "... n" (our sample count), and,
when the untrained reference was evaluated, "... untrained" (the starting policy, before
GRPO, through the same inference); IoU columns are filled on IoU rows and QA columns on
QA rows only, the rest null. Timing rows use "Time s/img ours" / "Time s/img paper".
Scores are percent, like the paper's.

Markdown: the paper's own layout, a row per method with "gIoU/cIoU" and "MVQA/OVQA"
cells (trained, untrained, paper), and a Table A4-style block with seconds per image for
GSE and LPR+SAM2.
Both files are written atomically (temporary file in the same directory, then rename).
"""
from __future__ import annotations

import math
import os
from typing import Mapping

import pyarrow as pa

from reproseg.io_atomic import write_parquet, write_text
from reproseg.metrics.paper_numbers import TIMING_S_PER_IMAGE, paper_result
from reproseg.answers.qa import QAScore
from reproseg.metrics.segmentation import SegScore

# (block, our group key, paper header), in the paper's column order.
COLUMNS = (
    ("IoU", "s", "S"), ("IoU", "xs", "XS"), ("IoU", "xxs", "XXS"), ("IoU", "all", "All"),
    ("QA", "colors", "Color"), ("QA", "shape", "Shape"), ("QA", "others", "Others"),
    ("QA", "position", "Position"), ("QA", "all", "All"),
)
METRICS = (("IoU", "gIoU"), ("IoU", "cIoU"), ("QA", "MVQA"), ("QA", "OVQA"))
STAGES = ("GSE", "LPR+SAM2")
TIME_OURS, TIME_PAPER = "Time s/img ours", "Time s/img paper"


def column_id(block: str, header: str) -> str:
    return f"{block}/{header}"


def _ours(metric: str, group: str, seg, qa) -> tuple[float | None, int | None]:
    """(percent, n) of one cell of our results, (None, None) when not computed."""
    if metric in ("gIoU", "cIoU"):
        score: SegScore | None = (seg or {}).get(group)
        if score is None:
            return None, None
        return 100 * (score.giou if metric == "gIoU" else score.ciou), score.n
    qa_score: QAScore | None = ((qa or {}).get(metric.lower()) or {}).get(group)
    if qa_score is None:
        return None, None
    return 100 * qa_score.accuracy, qa_score.n


def scores_from_metrics(metrics: Mapping) -> tuple[dict[str, SegScore], dict[str, dict[str, QAScore]]]:
    """(seg, qa) back from the metrics JSON that rule evaluate_finers writes."""
    seg = {k: SegScore(**v) for k, v in metrics["segmentation"].items()}
    qa = {t: {g: QAScore(n=v["n"], correct=v["correct"], smoothing=v["smoothing"])
              for g, v in groups.items()}
          for t, groups in metrics["qa"].items()}
    return seg, qa


def build_table(seg: Mapping[str, SegScore] | None, qa: Mapping[str, Mapping[str, QAScore]] | None,
                split: str = "test", timing: Mapping[str, float] | None = None,
                untrained: tuple[Mapping, Mapping] | None = None) -> pa.Table:
    """`seg` from segmentation_metrics, `qa` from qa_metrics, `timing` seconds per image
    keyed by GSE and/or LPR+SAM2, `untrained` the (seg, qa) of the untrained reference."""
    paper = paper_result(split)
    unknown = set(timing or {}) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown timing stages {sorted(unknown)}; expected {STAGES}")
    metric_col, cols = [], {}
    suffixes = ("ours", "untrained", "paper", "n") if untrained is not None else ("ours", "paper", "n")
    for block, group, header in COLUMNS:
        for suffix in suffixes:
            cols[f"{column_id(block, header)} {suffix}"] = []
    for block, metric in METRICS:
        metric_col.append(metric)
        for col_block, group, header in COLUMNS:
            cid = column_id(col_block, header)
            ours, n = _ours(metric, group, seg, qa) if col_block == block else (None, None)
            cols[f"{cid} ours"].append(ours)
            if untrained is not None:
                cols[f"{cid} untrained"].append(_ours(metric, group, *untrained)[0] if col_block == block else None)
            cols[f"{cid} paper"].append(paper.metric(metric)[group] if col_block == block else None)
            cols[f"{cid} n"].append(n)
    time_ours, time_paper = [None] * len(METRICS), [None] * len(METRICS)
    if timing:
        for stage in STAGES:
            metric_col.append(f"{stage} time")
            for values in cols.values():
                values.append(None)
            time_ours.append(timing.get(stage))
            time_paper.append(TIMING_S_PER_IMAGE[stage])
    arrays = {"metric": pa.array(metric_col, pa.string())}
    for name, values in cols.items():
        arrays[name] = pa.array(values, pa.int64() if name.endswith(" n") else pa.float64())
    if timing:
        arrays[TIME_OURS] = pa.array(time_ours, pa.float64())
        arrays[TIME_PAPER] = pa.array(time_paper, pa.float64())
    meta = {"split": split, "paper_table": paper.table,
            "paper_source": f"FineRS paper, {paper.table}; timing: its Table A4"}
    return pa.table(arrays).replace_schema_metadata(meta)


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(table: pa.Table) -> str:
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    rows = {m: i for i, m in enumerate(table.column("metric").to_pylist())}
    data = table.to_pydict()

    def cell(block: str, header: str, suffix: str) -> str:
        a, b = ("gIoU", "cIoU") if block == "IoU" else ("MVQA", "OVQA")
        name = f"{column_id(block, header)} {suffix}"
        fmt = (lambda v: "–" if v is None else str(v)) if suffix == "n" else _fmt
        left, right = fmt(data[name][rows[a]]), fmt(data[name][rows[b]])
        return left if suffix == "n" and block == "IoU" else f"{left}/{right}"

    headers = [f"{h} ({b})" if h == "All" else h for b, _, h in COLUMNS]
    paper_label = f"FineRS (paper, {meta.get('paper_table', '?')})"
    lines = [
        f"## FineRS-4k {meta.get('split', '?')} set in the layout of the paper's "
        f"{meta.get('paper_table', '?')} (percent)",
        "",
        "IoU cells are gIoU/cIoU; QA cells are MVQA/OVQA. "
        f"Paper numbers: {meta.get('paper_source', '?')}.",
        "",
        _row(["Method"] + headers),
        _row(["---"] + ["---:"] * len(headers)),
        _row(["Ours (reproduced)"] + [cell(b, h, "ours") for b, _, h in COLUMNS]),
        *([_row(["Ours, untrained (starting policy)"] + [cell(b, h, "untrained") for b, _, h in COLUMNS])]
          if f"{column_id('IoU', 'All')} untrained" in data else []),
        _row([paper_label] + [cell(b, h, "paper") for b, _, h in COLUMNS]),
        _row(["Samples (ours)"] + [cell(b, h, "n") for b, _, h in COLUMNS]),
    ]
    if TIME_OURS in data:
        def overall(suffix: str) -> str:
            return "/".join(_fmt(data[f"{column_id(b, 'All')} {suffix}"][rows[m]]) for b, m in METRICS)

        def seconds(column: str) -> list[str]:
            return [_fmt(data[column][rows[f"{s} time"]], 2) for s in STAGES]

        lines += [
            "",
            "### Inference time, as the paper's Table A4 (seconds per image)",
            "",
            _row(["Method", "gIoU/cIoU/MVQA/OVQA"] + [f"{s} (s/img)" for s in STAGES]),
            _row(["---", "---:"] + ["---:"] * len(STAGES)),
            _row(["Ours (reproduced)", overall("ours")] + seconds(TIME_OURS)),
            _row([f"{paper_label}; times: Table A4, test set, A100", overall("paper")]
                 + seconds(TIME_PAPER)),
        ]
    return "\n".join(lines) + "\n"


def write_tables(parquet_path: str | os.PathLike, markdown_path: str | os.PathLike,
                 seg: Mapping[str, SegScore] | None, qa: Mapping[str, Mapping[str, QAScore]] | None,
                 split: str = "test", timing: Mapping[str, float] | None = None,
                 untrained: tuple[Mapping, Mapping] | None = None) -> pa.Table:
    table = build_table(seg, qa, split, timing, untrained)
    write_parquet(parquet_path, table)
    write_text(markdown_path, to_markdown(table))
    return table
