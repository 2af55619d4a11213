"""The experiment table: one row per experiment and split (FineRS Table 4 / A3 layout)."""
from __future__ import annotations

import json

import pyarrow as pa

from ..io_atomic import write_parquet, write_text

COLUMNS = ("gIoU", "cIoU", "MVQA", "OVQA")


def experiment_row(name: str, split: str, metrics: dict) -> dict:
    seg = metrics["segmentation"]["all"]
    qa = {t: metrics["qa"][t]["all"] for t in ("mvqa", "ovqa")}

    def pct(n_correct, n):
        return 100.0 * n_correct / n if n else None

    return {"experiment": name, "split": split, "samples": metrics["samples"],
            "gIoU": 100.0 * seg["giou"], "cIoU": 100.0 * seg["ciou"],
            "MVQA": pct(qa["mvqa"]["correct"], qa["mvqa"]["n"]), "OVQA": pct(qa["ovqa"]["correct"], qa["ovqa"]["n"])}


def experiment_table_stage(experiments: dict[str, dict[str, str]], table_out: str, md_out: str) -> None:
    """experiments: {name: {split: metrics.json}}."""
    rows = [experiment_row(name, split, json.loads(open(path).read()))
            for name, splits in experiments.items() for split, path in splits.items()]
    write_parquet(table_out, pa.Table.from_pylist(rows))
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["# FineRS experiments (All column, %)", "",
             "| experiment | split | samples | " + " | ".join(COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(COLUMNS)]
    lines += [f"| {r['experiment']} | {r['split']} | {r['samples']} | " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |"
              for r in rows]
    write_text(md_out, "\n".join(lines) + "\n")
