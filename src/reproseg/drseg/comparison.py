"""FineRS trained with Dr. Seg's rewards beside Dr. Seg alone (rule drseg_finers_comparison).

One row per run and benchmark: FineRS with Dr. Seg's rewards on LPR and/or GSE (the
experiments of `experiments.run` that set finers.lpr.drseg / finers.gse.drseg), the
FineRS baseline (a FineRS variant without them: the main run), Dr. Seg in its own
setting (drseg.*, the main variant) and VisionReasoner's rewards there (a drseg variant
without Look-to-Confirm or the ranked reward: experiment drseg-visionreasoner). Each
reports gIoU and cIoU, in percent: FineRS's over its split's targets (the `all` group of
reproseg.finers metrics), Dr. Seg's over a segmentation benchmark's queries (SAM 2.1
masks of the answer's objects OR-ed; reproseg.drseg.visionreasoner.evaluate).

No paper reports this comparison, so there is no paper column: every number is ours.
The two branches are scored on different benchmarks unless a benchmark name is shared;
the table says so and its rows compare within a branch, not across.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from reproseg.io_atomic import write_parquet, write_text

COLUMNS = ("gIoU", "cIoU")
# `row` first: `reproseg audit <table>.parquet --row <row> --column gIoU` finds a row by it.
SCHEMA = pa.schema([("row", pa.string()), ("branch", pa.string()), ("run", pa.string()), ("method", pa.string()),
                    ("rewards", pa.string()), ("benchmark", pa.string()), ("samples", pa.int64()),
                    ("gIoU", pa.float64()), ("cIoU", pa.float64()), ("source", pa.string())])
FINERS, DRSEG = "FineRS", "Dr. Seg"


def drseg_on(options: dict) -> bool:
    """Whether a finers.<stage>.drseg block turns any of Dr. Seg's rewards on."""
    return bool(options["look_to_confirm"] or options["distribution_ranked"])


def _terms(options: dict) -> str:
    on = [name for key, name in (("look_to_confirm", "LC"), ("distribution_ranked", "DR")) if options[key]]
    if not on:
        return "-"
    extra = [f"queue {options['queue_size']}"] if options["distribution_ranked"] else []
    extra += ["raw accuracy"] if options["raw_accuracy"] else []
    return " + ".join(on) + (f" ({', '.join(extra)})" if extra else "")


def finers_method(stages: dict[str, dict]) -> tuple[str, str]:
    """(method, rewards) of a FineRS run from its {lpr, gse: finers.<stage>.drseg}."""
    # pipeline order (the rule's params arrive with sorted keys)
    order = sorted(stages, key=lambda st: (st != "lpr", st))
    rewards = "; ".join(f"{stage.upper()}: {_terms(stages[stage])}" for stage in order)
    if any(drseg_on(o) for o in stages.values()):
        return "FineRS with Dr. Seg's rewards", rewards
    return "FineRS baseline", rewards


def drseg_method(rewards: dict) -> tuple[str, str]:
    """(method, rewards) of a Dr. Seg-branch run from its drseg.rewards."""
    text = f"profile {rewards['profile']}; {_terms(rewards)}"
    if rewards["look_to_confirm"] and rewards["distribution_ranked"] and not rewards["raw_accuracy"]:
        return "Dr. Seg alone (VisionReasoner task)", text
    if not rewards["look_to_confirm"] and not rewards["distribution_ranked"]:
        return "VisionReasoner baseline (VisionReasoner task)", text
    return "Dr. Seg variant (VisionReasoner task)", text


def _scores(branch: str, metrics: dict) -> tuple[int, float, float]:
    """(samples, gIoU, cIoU) of one metrics JSON of either branch, gIoU and cIoU in [0, 1]."""
    if branch == FINERS:
        seg = metrics["segmentation"]["all"]
        return int(seg["n"]), seg["giou"], seg["ciou"]
    return int(metrics["n"]), metrics["giou"], metrics["ciou"]


def _pct(v) -> float | None:
    return None if v is None or v != v else 100.0 * float(v)


def build_rows(runs: list[dict]) -> list[dict]:
    """Rows of the table. runs: [{"branch": FINERS or DRSEG, "name", "rewards" (FineRS:
    {lpr, gse: drseg options}; Dr. Seg: drseg.rewards), "metrics": {benchmark: metrics
    JSON (loaded)}, "paths": {benchmark: its file}}]."""
    rows = []
    for run in runs:
        method, rewards = (finers_method if run["branch"] == FINERS else drseg_method)(run["rewards"])
        for bench, metrics in run["metrics"].items():
            n, giou, ciou = _scores(run["branch"], metrics)
            rows.append({"row": f"{run['branch']}: {run['name']}, {bench}", "branch": run["branch"],
                         "run": run["name"], "method": method, "rewards": rewards, "benchmark": bench,
                         "samples": n, "gIoU": _pct(giou), "cIoU": _pct(ciou),
                         "source": f"ours: {run['paths'][bench]}"})
    return rows


def notes(rows: list[dict]) -> list[str]:
    """What the reader must know: no paper number, whether the benchmarks differ, which
    kinds of run are missing (and the experiment that adds each)."""
    out = ["No paper reports this comparison: every number is ours, and there is no paper column. Audit one "
           "with `reproseg audit <table>.parquet --row '<branch>: <run>, <benchmark>' --column gIoU`."]
    benches = {b: sorted({r["benchmark"] for r in rows if r["branch"] == b}) for b in (FINERS, DRSEG)}
    if benches[FINERS] and benches[DRSEG] and not set(benches[FINERS]) & set(benches[DRSEG]):
        out.append(f"The benchmarks differ: FineRS is scored on {', '.join(benches[FINERS])} and Dr. Seg on "
                   f"{', '.join(benches[DRSEG])}, so compare rows within a branch (each against its own "
                   "baseline), not across branches. gIoU / cIoU are also computed per branch: FineRS over "
                   "its targets, Dr. Seg over its queries with the answer's objects' masks OR-ed.")
    methods = {r["method"] for r in rows}
    for method, how in (("FineRS with Dr. Seg's rewards", "an experiment setting finers.lpr.drseg or "
                         "finers.gse.drseg (lpr-drseg, ...) to experiments.run"),
                        ("FineRS baseline", "a FineRS run without Dr. Seg's rewards (the main run's default)"),
                        ("Dr. Seg alone (VisionReasoner task)", "drseg.rewards with look_to_confirm and "
                         "distribution_ranked (the default)"),
                        ("VisionReasoner baseline (VisionReasoner task)", "drseg-visionreasoner to experiments.run")):
        if method not in methods:
            out.append(f"No '{method}' row: add {how}.")
    return out


def markdown(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["# FineRS with Dr. Seg's rewards against Dr. Seg alone (gIoU / cIoU, %)", "",
             "| branch | method | run | rewards | benchmark | samples | gIoU | cIoU | source |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['branch']} | {r['method']} | {r['run']} | {r['rewards']} | {r['benchmark']} | {r['samples']} | "
              f"{fmt(r['gIoU'])} | {fmt(r['cIoU'])} | {r['source']} |" for r in rows]
    return "\n".join([*lines, "", *notes(rows)]) + "\n"


def comparison_stage(runs: list[dict], table_out: str, md_out: str) -> dict:
    """Rule drseg_finers_comparison. runs: as build_rows, with `metrics` {benchmark: path}."""
    loaded = [{**r, "paths": r["metrics"],
               "metrics": {b: json.loads(Path(p).read_text()) for b, p in r["metrics"].items()}} for r in runs]
    rows = build_rows(loaded)
    write_parquet(table_out, pa.Table.from_pylist(rows, schema=SCHEMA))
    write_text(md_out, markdown(rows))
    return {"rows": len(rows)}
