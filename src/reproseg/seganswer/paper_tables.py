"""SegAnswer's evaluation tables in the paper's layouts: every checkpoint beside the paper's numbers.

Each benchmark of `seganswer.eval` is evaluated on every checkpoint of the pipeline,
so that each stage is judged against the model it started from:

- base: the base Qwen2.5-VL and SAM 2.1 with the projector as initialised (the seed of
  stage 1 phase a), before any SegAnswer training: the untrained model for stage 1;
- stage 1: after pixel grounding (LoRA merged): the untrained model for stage 2;
- stage 2: after the interleaved SFT, the model before RL: the untrained model for stage 3;
- stage 3: after DAPO, SegAnswer itself.

`tables/seganswer_<stage>` holds the checkpoints up to that stage (stage 1: base and
stage 1; stage 3: all four), and its `ours` column is that stage's value.

Table 3 (referring segmentation): gIoU and cIoU per benchmark split, the model writing
its own answer to the stage-1 prompt (a missing `<|seg|>` scores I = 0), and again with
the stage-1 response given (the mask alone: a model that stopped answering that prompt
with `<|seg|>` after stage 2 is still measured); the paper does not
say whether its Table 3 is gIoU or cIoU; it compares with LISA-style methods, whose
tables report cIoU, so its numbers stand beside our cIoU. Table 1 (VQA): accuracy per
benchmark, split into multiple-choice and open questions where a benchmark has both
(the paper's benchmarks are all multiple choice); the paper's SegAnswer row stands
beside it, and its Qwen2.5-VL-7B row (the base model) beside our base checkpoint.
An HR-Bench benchmark's accuracy is its official score (seganswer.evaluate.hrbench_accuracy:
per cycle, averaged over the cycles); its per-category numbers stay in the metrics JSON.
A label that names one of the paper's columns (e.g. "RefCOCO val", "V*") gets the
paper's numbers, any other label (the default's synthetic splits) gets "-".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa

from ..io_atomic import write_parquet, write_text

# seganswer.txt, Table 3 (SegAnswer row) and Table 1 (SegAnswer and Qwen2.5-VL-7B rows).
PAPER_TABLE3 = {
    "RefCOCO val": 79.9, "RefCOCO test-A": 82.3, "RefCOCO test-B": 76.9,
    "RefCOCO+ val": 73.6, "RefCOCO+ test-A": 78.7, "RefCOCO+ test-B": 67.5,
    "RefCOCOg val-u": 76.0, "RefCOCOg test-u": 76.4,
}
PAPER_TABLE1 = {
    "V*": 86.4, "HR-Bench 4K": 74.8, "HR-Bench 8K": 71.3, "MMBench": 87.5, "VisuLogic": 27.1,
    "MMVP": 72.3, "POPE": 87.8, "HallusionBench": 46.3,
}
PAPER_TABLE1_BASE = {
    "V*": 77.5, "HR-Bench 4K": 68.7, "HR-Bench 8K": 63.4, "MMBench": 83.0, "VisuLogic": 26.1,
    "MMVP": 70.7, "POPE": 86.0, "HallusionBench": 44.1,
}

CHECKPOINTS = ("base", "stage1", "stage2", "stage3")
CHECKPOINT_LABELS = {"base": "base (untrained)", "stage1": "stage 1", "stage2": "stage 2 (before RL)",
                     "stage3": "stage 3"}
CHECKPOINT_NOTES = {
    "base": "the base Qwen2.5-VL + SAM 2.1 with the projector as initialised, before any SegAnswer training "
            "(the untrained model for stage 1)",
    "stage1": "after stage 1, pixel grounding, LoRA merged (the model stage 2 starts from)",
    "stage2": "after stage 2, interleaved SFT: the model before RL (the model stage 3 starts from)",
    "stage3": "after stage 3, DAPO",
}
QA_KINDS = {"accuracy": "all", "MC accuracy": "multiple_choice", "open accuracy": "open"}


def checkpoints_up_to(stage: str) -> list[str]:
    """The checkpoints a stage's table holds: base, then every stage up to `stage`."""
    if stage not in CHECKPOINTS[1:]:
        raise ValueError(f"stage must be one of {CHECKPOINTS[1:]}, got {stage!r}")
    return list(CHECKPOINTS[: CHECKPOINTS.index(stage) + 1])


def pct(v) -> float | None:
    """A fraction as a percentage with one decimal; None for a missing or NaN value."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * v, 1)


def _qa_parts(m: dict) -> dict[str, dict]:
    """The accuracy records ({"accuracy", "n", "unanswered", ...}) of one question benchmark: all its
    questions (m itself), and its MC / open parts (m["multiple_choice"], m["open"]) when it mixes both."""
    parts = {"accuracy": m}
    if m["multiple_choice"]["n"] and m["open"]["n"]:
        parts["MC accuracy"] = m["multiple_choice"]
        parts["open accuracy"] = m["open"]
    return parts


def table_rows(metrics: dict[str, dict]) -> list[dict]:
    """One row per (benchmark, metric), one column per checkpoint.

    metrics: {checkpoint: the metrics JSON of evaluate_stage} in pipeline order; every
    checkpoint evaluated the same benchmarks. Row fields: row (the audit name, e.g.
    "RefCOCO val cIoU"), table, benchmark, metric, paper, paper_base, n, one value per
    checkpoint (percent), missing_<checkpoint> (no `<|seg|>` / no answer), and ours /
    missing = the last checkpoint's.
    """
    ckpts = list(metrics)
    if not ckpts:
        raise ValueError("no checkpoint metrics")
    first = metrics[ckpts[0]]
    for c in ckpts[1:]:
        for kind in ("referring", "questions"):
            if list(metrics[c][kind]) != list(first[kind]):
                raise ValueError(f"checkpoint {c} evaluated {list(metrics[c][kind])} as {kind}, "
                                 f"{ckpts[0]} {list(first[kind])}")
    rows = []

    def add(label, table, metric, per_ckpt, paper, paper_base):
        row = {"row": f"{label} {metric}", "table": table, "benchmark": label, "metric": metric,
               "paper": paper, "paper_base": paper_base, "n": per_ckpt[ckpts[0]][0]}
        for c in ckpts:
            row[c] = per_ckpt[c][1]
            row[f"missing_{c}"] = per_ckpt[c][2]
        row["ours"], row["missing"] = row[ckpts[-1]], row[f"missing_{ckpts[-1]}"]
        rows.append(row)

    for label in first["referring"]:
        # the model's own answer (the paper's protocol), then with the stage-1 response given
        for protocol, table in (("generated", "Table 3"), ("given", "Table 3, response given")):
            for key, metric in (("giou", "gIoU"), ("ciou", "cIoU")):
                per = {}
                for c in ckpts:
                    m = metrics[c]["referring"][label]
                    m = m if protocol == "generated" else m.get("given")
                    per[c] = (None, None, None) if m is None else (m["n"], pct(m[key]), m["n_missing"])
                if protocol == "given" and all(v[0] is None for v in per.values()):
                    continue
                paper = PAPER_TABLE3.get(label) if metric == "cIoU" and protocol == "generated" else None
                add(label, table, metric if protocol == "generated" else f"{metric}, response given", per,
                    paper, None)
    for label in first["questions"]:
        for metric in _qa_parts(first["questions"][label]):
            per = {}
            for c in ckpts:
                part = _qa_parts(metrics[c]["questions"][label])[metric]
                per[c] = (part["n"], pct(part["accuracy"]), part["unanswered"])
            paper = metric == "accuracy"
            add(label, "Table 1", metric, per, PAPER_TABLE1.get(label) if paper else None,
                PAPER_TABLE1_BASE.get(label) if paper else None)
    return rows


def arrow_table(rows: list[dict]) -> pa.Table:
    """The rows as Parquet columns; the first column names each row: `reproseg audit --row "RefCOCO val cIoU"`."""
    ckpts = [c for c in CHECKPOINTS if rows and c in rows[0]]
    fields = [("row", pa.string()), ("table", pa.string()), ("benchmark", pa.string()), ("metric", pa.string()),
              ("paper", pa.float64()), ("paper_base", pa.float64()), ("n", pa.int64())]
    fields += [(c, pa.float64()) for c in ckpts] + [("ours", pa.float64())]
    fields += [(f"missing_{c}", pa.int64()) for c in ckpts] + [("missing", pa.int64())]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _cell(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _column_name(r: dict) -> str:
    if r["table"].startswith("Table 3"):
        return f"{r['benchmark']} {r['metric'].split(',')[0]}"
    return r["benchmark"] if r["metric"] == "accuracy" else f"{r['benchmark']} {r['metric'].split()[0]}"


def _wide(rows: list[dict], table: str, ckpts: list[str], paper_rows: list[tuple[str, str]],
          missing: str) -> list[str]:
    """A Markdown table in the paper's layout: one column per benchmark (and metric), one row per model.

    Table 1 shows a mixed benchmark as its MC and open parts (its overall accuracy is in the Parquet table).
    """
    picked = [r for r in rows if r["table"] == table]
    mixed = {r["benchmark"] for r in picked if r["metric"] != "accuracy"}
    picked = [r for r in picked if not (r["metric"] == "accuracy" and r["benchmark"] in mixed)]
    if not picked:
        return ["(no benchmark configured)"]
    out = ["| model | " + " | ".join(_column_name(r) for r in picked) + " |", "|---|" + "---:|" * len(picked)]
    for name, field in paper_rows:
        out.append(f"| {name} | " + " | ".join(_cell(r[field]) for r in picked) + " |")
    for c in ckpts:
        out.append(f"| ours: {CHECKPOINT_LABELS[c]} | " + " | ".join(_cell(r[c]) for r in picked) + " |")
    if len(ckpts) > 1 and table == "Table 1":
        last = ckpts[-1]
        delta = [None if r[last] is None or r[ckpts[0]] is None else round(r[last] - r[ckpts[0]], 1) for r in picked]
        out.append(f"| ours: Δ {CHECKPOINT_LABELS[last]} over base | "
                   + " | ".join("-" if d is None else f"{d:+.1f}" for d in delta) + " |")
    out.append(f"| samples ({missing}: {' / '.join(CHECKPOINT_LABELS[c].split(' (')[0] for c in ckpts)}) | "
               + " | ".join(f"{r['n']} ({' / '.join(str(r[f'missing_{c}']) for c in ckpts)})" for r in picked) + " |")
    return out


def markdown(stage: str, rows: list[dict], notes: list[str]) -> str:
    ckpts = [c for c in CHECKPOINTS if rows and c in rows[0]]
    lines = [f"# SegAnswer up to {stage.replace('stage', 'stage ')}: every checkpoint beside the paper's numbers", "",
             "Rows `ours: ...` are this run's checkpoints; each stage is judged against the one before it:", "",
             *[f"- {CHECKPOINT_LABELS[c]}: {CHECKPOINT_NOTES[c]}" for c in ckpts], "",
             "## Table 3 layout: referring segmentation (%)", "",
             *_wide(rows, "Table 3", ckpts, [("SegAnswer (paper, cIoU)", "paper")], "missing"),
             "", "Missing: the model wrote no `<|seg|>` (the sample scores I = 0).", "",
             "The same, with the stage-1 response (\"It is <|seg|>.\") given instead of generated: the mask "
             "the model's `<|seg|>` decodes, whether or not it would have written one.", "",
             *_wide(rows, "Table 3, response given", ckpts, [], "missing"), "",
             "## Table 1 layout: VQA accuracy (%), multiple choice (MC) and open", "",
             *_wide(rows, "Table 1", ckpts, [("SegAnswer (paper)", "paper"),
                                             ("Qwen2.5-VL-7B (paper; SegAnswer's base model)", "paper_base")],
                    "unanswered"),
             "", "Unanswered: no `<answer>` within the turn limit (counted wrong).", ""]
    return "\n".join(lines + notes) + "\n"


def tables_stage(metrics: dict[str, str], stage: str, table_md: str, table_parquet: str) -> None:
    """The checkpoints up to `stage` side by side (metrics: {checkpoint: metrics JSON path})."""
    order = checkpoints_up_to(stage)
    if sorted(metrics) != sorted(order):
        raise ValueError(f"the {stage} table needs the metrics of {order}, got {sorted(metrics)}")
    loaded = {c: json.loads(Path(metrics[c]).read_text()) for c in order}
    rows = table_rows(loaded)
    write_parquet(table_parquet, arrow_table(rows))
    notes = ["`<|seg|>` calls in the VQA rollouts:", ""]
    for label in loaded[order[0]]["questions"]:
        calls = ", ".join(f"{CHECKPOINT_LABELS[c]} {loaded[c]['questions'][label]['seg_calls']}"
                          for c in order)
        notes.append(f"- {label}: {calls}")
    write_text(table_md, markdown(stage, rows, notes))
