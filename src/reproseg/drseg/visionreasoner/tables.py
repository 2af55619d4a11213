"""Dr. Seg's tables in the paper's layouts, our runs beside the paper's numbers (rule drseg_table).

The paper's numbers, in percent as printed (a table's source column cites the paper's
table; the line numbers below, of the text extraction the project's authors read, are
checked by the tests where that text is at hand):

- Table 2 (lines 160-181; gIoU): columns RCO testA, RCO+ testA, RCOg test, ID avg,
  ReasonSeg val, ReasonSeg test, COCONut val, OOD avg, avg. Rows: Qwen2.5-VL line 169
  (the base model, beside our untrained policy), VisionReasoner line 179,
  VisionReasoner* (the authors' re-run) line 180, Dr. Seg line 181.
- Table 3 (lines 205-212): COCO val AP, Pixmo val, Pixmo test, CountBench test
  (counting accuracy). Qwen2.5-VL line 210, VisionReasoner 211, Dr. Seg 212.
- Table 4 (lines 220-225; RCO, RCO+, RCOg, ReasonSeg): the LC / DR check marks are lost
  in the extraction. Line 222 is neither (it equals VisionReasoner* in Table 2), line 225
  both (equals Dr. Seg). Lines 223 and 224 are read from the text below the table:
  LC-only is line 223 ("a 0.6 point improvement on ReasonSeg", 65.5 -> 66.1), DR-only
  line 224 (1.1 / 1.5 / 1.8 over LC-only on RCO / RCO+ / RCOg).
- Table 5 (lines 231-234): Raw Reward line 233, Distribution-Ranked line 234.
- Table 6 (lines 240-245): queue sizes 128, 512, 2048, 8192 at lines 242-245.
- Table 7 (Appendix A, lines 330-335; COCO): mAP, AP@0.5, P@0.5, R@0.5, F1. Qwen2-VL
  line 331, Qwen2.5-VL 332, VisionReasoner 333, Dr. Seg 334. Our columns are
  `<benchmark> <metric>` for every detection benchmark, "COCO val" first.

The ablation tables' four columns are Table 2's RCO testA, RCO+ testA, RCOg test and
ReasonSeg val (the Dr. Seg row's numbers agree with those cells).

Our rows: `ours: <experiment>` for every trained variant in the tables it belongs to
(by its drseg.rewards: Table 4 by LC / DR at queue 2048 and ranked; Table 5 raw or
ranked with both; Table 6 by queue size with both, ranked), and `ours: untrained` in
Tables 2 and 3 (the starting policy). A column is an evaluated benchmark's label; a
label that names a paper column gets the paper's numbers beside it, any other label
(the default's synthetic sets) is an extra column. Our number per task: segmentation
gIoU, rec box accuracy, detection COCO AP (COCOeval's AP at IoU 0.50:0.95 with the
area-ratio score; Table 3's "COCO val"), counting accuracy, in percent. An average is
given only when every one of its columns was evaluated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import pyarrow as pa

from reproseg.io_atomic import write_parquet, write_text

# The text extraction, beside the checkout (tests check the numbers on their lines there).
PAPER_FILE = "shared/papers/drseg.txt"

TABLE2_COLUMNS = ("RCO testA", "RCO+ testA", "RCOg test", "ID avg", "ReasonSeg val", "ReasonSeg test",
                  "COCONut val", "OOD avg", "avg")
ID_COLUMNS = ("RCO testA", "RCO+ testA", "RCOg test")
OOD_COLUMNS = ("ReasonSeg val", "ReasonSeg test", "COCONut val")
AVERAGES = {"ID avg": ID_COLUMNS, "OOD avg": OOD_COLUMNS, "avg": (*ID_COLUMNS, *OOD_COLUMNS)}
TABLE3_COLUMNS = ("COCO val", "Pixmo val", "Pixmo test", "CountBench test")
# The ablations' columns (RCO, RCO+, RCOg, ReasonSeg) as Table 2's.
ABLATION_COLUMNS = ("RCO testA", "RCO+ testA", "RCOg test", "ReasonSeg val")
DEFAULT_QUEUE = 2048
TABLE7_METRICS = {"mAP": "coco_ap", "AP@0.5": "coco_ap50", "P@0.5": "det_precision", "R@0.5": "det_recall",
                  "F1": "det_f1"}
TABLE7_BENCHMARK = "COCO val"
TABLE7_COLUMNS = tuple(f"{TABLE7_BENCHMARK} {m}" for m in TABLE7_METRICS)
# Our number of each task's metrics JSON (reproseg.drseg.visionreasoner.evaluate).
TASK_METRIC = {"segmentation": "giou", "rec": "rec_accuracy", "detection": "coco_ap", "counting": "count_accuracy"}


@dataclass(frozen=True)
class PaperRow:
    method: str
    table: str             # the paper's table, as the tables' source column cites it
    line: int              # its line in the text extraction (checked by the tests, not cited)
    values: Mapping[str, float | None]

    @property
    def source(self) -> str:
        return f"paper: Dr. Seg, {self.table}"


def _row(method: str, table: str, line: int, columns, values) -> PaperRow:
    assert len(columns) == len(values)
    return PaperRow(method, table, line, MappingProxyType(dict(zip(columns, values))))


TABLE2 = (
    _row("Qwen2.5-VL (paper)", "Table 2", 169, TABLE2_COLUMNS, (79.9, 76.8, 72.8, 76.5, 56.9, 52.1, 31.8, 45.5, 61.7)),
    _row("VisionReasoner (paper)", "Table 2", 179, TABLE2_COLUMNS, (78.9, 74.9, 71.3, 75.0, 66.3, 63.6, 78.1, 69.3, 72.2)),
    _row("VisionReasoner* (paper)", "Table 2", 180, TABLE2_COLUMNS, (79.0, 75.3, 72.5, 75.6, 65.5, 61.5, 78.1, 68.4, 72.0)),
    _row("Dr. Seg (paper)", "Table 2", 181, TABLE2_COLUMNS, (80.2, 76.8, 74.2, 77.1, 67.8, 65.6, 79.6, 71.0, 74.0)),
)
TABLE3 = (
    _row("Qwen2.5-VL (paper)", "Table 3", 210, TABLE3_COLUMNS, (29.2, 63.3, 67.9, 76.0)),
    _row("VisionReasoner (paper)", "Table 3", 211, TABLE3_COLUMNS, (37.7, 70.1, 69.5, 87.6)),
    _row("Dr. Seg (paper)", "Table 3", 212, TABLE3_COLUMNS, (40.1, 74.6, 72.4, 91.5)),
)
# (look_to_confirm, distribution_ranked) -> row
TABLE4 = {
    (False, False): _row("LC no, DR no (paper)", "Table 4", 222, ABLATION_COLUMNS, (79.0, 75.3, 72.5, 65.5)),
    (True, False): _row("LC yes, DR no (paper)", "Table 4", 223, ABLATION_COLUMNS, (79.0, 75.1, 72.1, 66.1)),
    (False, True): _row("LC no, DR yes (paper)", "Table 4", 224, ABLATION_COLUMNS, (80.1, 76.6, 73.9, 65.5)),
    (True, True): _row("LC yes, DR yes (paper)", "Table 4", 225, ABLATION_COLUMNS, (80.2, 76.8, 74.2, 67.8)),
}
# raw_accuracy -> row
TABLE5 = {
    True: _row("Raw Reward (paper)", "Table 5", 233, ABLATION_COLUMNS, (78.7, 75.0, 71.5, 64.4)),
    False: _row("Distribution-Ranked (paper)", "Table 5", 234, ABLATION_COLUMNS, (80.2, 76.8, 74.2, 67.8)),
}
TABLE6 = {
    128: _row("queue 128 (1 step) (paper)", "Table 6", 242, ABLATION_COLUMNS, (80.1, 76.0, 73.6, 63.3)),
    512: _row("queue 512 (4 steps) (paper)", "Table 6", 243, ABLATION_COLUMNS, (80.0, 76.3, 73.6, 66.3)),
    2048: _row("queue 2048 (16 steps) (paper)", "Table 6", 244, ABLATION_COLUMNS, (80.2, 76.8, 74.2, 67.8)),
    8192: _row("queue 8192 (64 steps) (paper)", "Table 6", 245, ABLATION_COLUMNS, (80.4, 77.3, 74.3, 65.2)),
}
TABLE7 = (
    _row("Qwen2-VL (paper)", "Table 7", 331, TABLE7_COLUMNS, (28.3, 43.5, 72.1, 41.3, 52.5)),
    _row("Qwen2.5-VL (paper)", "Table 7", 332, TABLE7_COLUMNS, (29.2, 47.6, 72.4, 46.6, 56.7)),
    _row("VisionReasoner (paper)", "Table 7", 333, TABLE7_COLUMNS, (37.7, 57.3, 62.6, 63.9, 63.3)),
    _row("Dr. Seg (paper)", "Table 7", 334, TABLE7_COLUMNS, (40.1, 59.0, 69.6, 64.3, 66.8)),
)
TABLES = ("table2", "table3", "table4", "table5", "table6", "table7")
TITLES = {
    "table2": "Dr. Seg Table 2: segmentation gIoU, in and out of distribution",
    "table3": "Dr. Seg Table 3: detection (COCO AP) and counting accuracy",
    "table4": "Dr. Seg Table 4: Look-to-Confirm (LC) and Distribution-Ranked reward (DR)",
    "table5": "Dr. Seg Table 5: normalisation (raw reward against distribution-ranked)",
    "table6": "Dr. Seg Table 6: queue size of the distribution-ranked reward",
    "table7": "Dr. Seg Table 7: detection mAP, AP, precision, recall and F1 at IoU 0.5",
}


def ours_value(metrics: dict) -> float | None:
    """Our number of one benchmark's metrics JSON, in percent (none for NaN, or COCOeval's
    -1: no GT box at all)."""
    return _percent(metrics.get(TASK_METRIC.get(metrics.get("task"), "")))


def _percent(v) -> float | None:
    """A metric in [0, 1] as percent; none for a missing value, NaN or COCOeval's -1."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v < 0 else 100.0 * float(v)


def tables_of(rewards: dict, trained: bool) -> dict[str, object]:
    """{table: the key of the paper row a run stands beside} for the tables a run belongs to."""
    out: dict[str, object] = {"table2": None, "table3": None, "table7": None}
    if not trained:
        return out
    lc, dr, raw, queue = (rewards["look_to_confirm"], rewards["distribution_ranked"], rewards["raw_accuracy"],
                          rewards["queue_size"])
    if not raw and (not dr or queue == DEFAULT_QUEUE):
        out["table4"] = (lc, dr)
    if lc and dr and queue == DEFAULT_QUEUE:
        out["table5"] = raw
    if lc and dr and not raw:
        out["table6"] = queue
    return out


def _extra(labels_tasks: dict[str, str], tasks: tuple[str, ...]) -> list[str]:
    """Evaluated labels that name no paper column, of the given tasks."""
    known = set(TABLE2_COLUMNS) | set(TABLE3_COLUMNS)
    return [lab for lab, task in sorted(labels_tasks.items()) if lab not in known and task in tasks]


def _ours_cells(metrics: dict[str, dict], columns: list[str]) -> dict[str, float | None]:
    cells = {c: ours_value(metrics[c]) if c in metrics else None for c in columns}
    for avg, parts in AVERAGES.items():
        if avg in cells:
            vals = [cells.get(p) for p in parts]
            cells[avg] = sum(vals) / len(vals) if all(v is not None for v in vals) else None
    return cells


def _detection_columns(tasks: dict[str, str]) -> list[tuple[str, str, str]]:
    """Table 7's (column, benchmark, metrics key): the paper's COCO val first, then every
    other evaluated detection benchmark."""
    labels = [TABLE7_BENCHMARK, *sorted(lab for lab, t in tasks.items() if t == "detection" and lab != TABLE7_BENCHMARK)]
    return [(f"{lab} {m}", lab, key) for lab in labels for m, key in TABLE7_METRICS.items()]


def _detection_cell(metrics: dict, label: str, key: str) -> float | None:
    return _percent(metrics.get(label, {}).get(key))


def build_table(name: str, runs: list[dict]) -> list[dict]:
    """Rows {method, source, <column>: value} of one table. runs: [{"name", "trained",
    "rewards", "metrics": {label: metrics JSON}}] (the untrained run first)."""
    tasks = {lab: m.get("task") for r in runs for lab, m in r["metrics"].items()}
    det = _detection_columns(tasks) if name == "table7" else []
    if name == "table7":
        columns, paper = [c for c, _, _ in det], list(TABLE7)
    elif name == "table2":
        columns, paper = [*TABLE2_COLUMNS, *_extra(tasks, ("segmentation",))], list(TABLE2)
    elif name == "table3":
        columns, paper = [*TABLE3_COLUMNS, *_extra(tasks, ("detection", "rec", "counting"))], list(TABLE3)
    else:
        columns = [*ABLATION_COLUMNS, *_extra(tasks, ("segmentation",))]
        paper = list({"table4": TABLE4, "table5": TABLE5, "table6": TABLE6}[name].values())
    rows = [{"method": p.method, "source": p.source, **{c: p.values.get(c) for c in columns}} for p in paper]
    for run in runs:
        where = tables_of(run["rewards"], run["trained"])
        if name not in where:
            continue
        key = where[name]
        beside = {"table4": TABLE4, "table5": TABLE5, "table6": TABLE6}.get(name, {}).get(key)
        label = f"ours: {run['name']}" if run["trained"] else "ours: untrained"
        source = f"ours: {run['name']}" + (f", beside {beside.method}" if beside else "")
        cells = ({c: _detection_cell(run["metrics"], lab, key) for c, lab, key in det} if det
                 else _ours_cells(run["metrics"], columns))
        rows.append({"method": label, "source": source, **cells})
    return rows


def arrow_table(rows: list[dict]) -> pa.Table:
    columns = [k for k in rows[0] if k not in ("method", "source")] if rows else []
    schema = pa.schema([("method", pa.string()), ("source", pa.string()), *[(c, pa.float64()) for c in columns]])
    return pa.Table.from_pylist(rows, schema=schema)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(name: str, rows: list[dict], notes: list[str] = ()) -> str:
    columns = [k for k in rows[0] if k not in ("method", "source")]
    lines = [f"# {TITLES[name]}", "", "| method | " + " | ".join(columns) + " | source |",
             "|---|" + "---:|" * len(columns) + "---|"]
    lines += ["| " + r["method"] + " | " + " | ".join(_fmt(r[c]) for c in columns) + f" | {r['source']} |"
              for r in rows]
    return "\n".join([*lines, "", *notes]) + "\n"


def tables_stage(runs: list[dict], outputs: dict[str, tuple[str, str]]) -> dict:
    """Rule drseg_table. runs: [{"name", "trained", "rewards", "metrics": {label: metrics
    JSON path}}]; outputs: {table: (parquet, markdown)}. Returns the rows (for the record)."""
    loaded = [{**r, "metrics": {lab: json.loads(Path(p).read_text()) for lab, p in r["metrics"].items()}}
              for r in runs]
    notes = ["Ours: " + ", ".join(f"{r['name']} = {json.dumps(r['rewards'], sort_keys=True)}"
                                  for r in runs if r["trained"]),
             "", "A number is the paper's (its table in `source`) or ours (audit it with "
             "`reproseg audit <table>.parquet --row <method> --column <column>`)."]
    out = {}
    for name, (parquet, md) in outputs.items():
        rows = build_table(name, loaded)
        write_parquet(parquet, arrow_table(rows))
        write_text(md, markdown(name, rows, notes))
        out[name] = len(rows)
    return {"rows": out}
