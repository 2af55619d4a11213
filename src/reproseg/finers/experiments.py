"""The experiment table: one row per experiment and split (FineRS Table 4 / A3 layout), with
the paper's own row beside ours where the experiment is one of the paper's."""
from __future__ import annotations

import json
import math

import pyarrow as pa

from ..answers.qa import QAScore
from ..io_atomic import write_parquet, write_text

COLUMNS = ("gIoU", "cIoU", "MVQA", "OVQA")

# FineRS's rows (All columns, %) for the experiments of config/paper.yaml, as printed in
# shared/papers/finers.txt: Table 4 (line 167, test then val) and Table A3 (line 669, test
# only). `main` is the full model, which is also Table A3's "Group 8", "KL 5e-3" and
# "Seed 42" row. Table 4 prints four numbers for "w/o QA Acc. Reward": read as test.
# Its "w/o Box Size" and "w/o Box-in-region" rows share 56.5/40.8 QA, as printed.
PAPER_ROWS: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "main": {"test": (55.1, 46.5, 83.3, 56.7), "val": (49.9, 39.4, 87.2, 60.0)},
    "no-retrospective": {"test": (54.0, 44.0, 82.3, 53.0), "val": (49.4, 38.0, 86.2, 55.8)},
    "no-random-region": {"test": (53.9, 46.7, 83.7, 61.9), "val": (48.7, 39.4, 84.8, 59.4)},
    "no-qa-reward": {"test": (52.8, 45.7, 48.6, 33.7)},
    "no-size-reward": {"test": (51.0, 43.4, 56.5, 40.8), "val": (44.5, 35.8, 78.4, 56.4)},
    "no-cover-reward": {"test": (50.1, 42.0, 56.5, 40.8), "val": (44.1, 34.2, 77.9, 55.7)},
    "group-6": {"test": (54.3, 43.7, 82.6, 53.5)},
    "group-4": {"test": (52.4, 43.9, 82.9, 55.7)},
    "kl-5e-2": {"test": (54.4, 46.1, 82.9, 55.8)},
    "seed-48": {"test": (53.9, 45.4, 82.0, 56.2)},
    "seed-80": {"test": (55.1, 47.6, 82.9, 55.7)},
}


def paper_row(name: str, split: str) -> dict[str, float | None]:
    """The paper's numbers for an experiment of that name, None where it has none."""
    values = PAPER_ROWS.get(name, {}).get(split)
    return {f"paper {c}": (values[i] if values else None) for i, c in enumerate(COLUMNS)}


def experiment_row(name: str, split: str, metrics: dict) -> dict:
    seg = metrics["segmentation"]["all"]
    qa = {t: metrics["qa"][t]["all"] for t in ("mvqa", "ovqa")}

    def pct(task: str) -> float | None:
        # the profile's division (QAScore): an empty group is None under paper, 0.0 under reference_code
        accuracy = QAScore(**qa[task]).accuracy
        return None if math.isnan(accuracy) else 100.0 * accuracy

    return {"experiment": name, "split": split, "samples": metrics["samples"],
            "gIoU": 100.0 * seg["giou"], "cIoU": 100.0 * seg["ciou"], "MVQA": pct("mvqa"), "OVQA": pct("ovqa"),
            **paper_row(name, split)}


def experiment_table_stage(experiments: dict[str, dict[str, str]], table_out: str, md_out: str) -> None:
    """experiments: {name: {split: metrics.json}}."""
    rows = [experiment_row(name, split, json.loads(open(path).read()))
            for name, splits in experiments.items() for split, path in splits.items()]
    write_parquet(table_out, pa.Table.from_pylist(rows))
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["# FineRS experiments (All column, %)", "",
             "Each cell is ours / the paper's (FineRS Table 4 and Table A3; `-`: the paper has no such row).", "",
             "| experiment | split | samples | " + " | ".join(COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(COLUMNS)]
    lines += [f"| {r['experiment']} | {r['split']} | {r['samples']} | "
              + " | ".join(f"{fmt(r[c])} / {fmt(r['paper ' + c])}" for c in COLUMNS) + " |" for r in rows]
    write_text(md_out, "\n".join(lines) + "\n")
