"""Leakage-free, deterministic, stratified train/val/test splits and dataset statistics.

Samples are grouped by source (video, or image when no video is known): a group is
assigned whole, so no source appears in two splits. Groups are assigned greedily, in
a seeded order, to the split whose deficit is largest, where the deficit counts both
the overall target size and the (task, size bucket) strata the group contains.
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import duckdb
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io_atomic import atomic_path, write_parquet, write_text

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    pass


def group_keys(table: pa.Table, group_by: str) -> list[str]:
    images = table.column("image_path").to_pylist()
    if group_by == "image":
        return images
    videos = table.column("video").to_pylist()
    return [f"video:{v}" if v is not None else f"image:{i}" for v, i in zip(videos, images)]


def assign_groups(groups: list[str], strata: list[str], proportions: dict[str, float], seed: int) -> dict[str, str]:
    """Maps each group to a split. Deterministic for (groups, strata, proportions, seed)."""
    total_p = sum(proportions.values())
    p = {s: proportions.get(s, 0) / total_p for s in SPLITS}
    members: dict[str, Counter] = defaultdict(Counter)
    for g, st in zip(groups, strata):
        members[g][st] += 1
    n = len(groups)
    stratum_total = Counter(strata)
    order = sorted(members)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    order.sort(key=lambda g: -sum(members[g].values()))  # stable: big groups first
    size = Counter()
    per_stratum: dict[str, Counter] = {s: Counter() for s in SPLITS}
    out = {}
    for g in order:
        m = members[g]
        k = sum(m.values())

        def deficit(s):
            overall = p[s] * n - size[s]
            strat = sum(c * (p[s] * stratum_total[st] - per_stratum[s][st]) for st, c in m.items()) / k
            return (overall + 0.5 * strat, -SPLITS.index(s))

        best = max((s for s in SPLITS if p[s] > 0), key=deficit)
        out[g] = best
        size[best] += k
        per_stratum[best].update(m)
    return out


def make_splits(table: pa.Table, *, seed: int, proportions: dict, group_by: str,
                official: str | Path | None = None) -> dict[str, pa.Table]:
    groups = group_keys(table, group_by)
    ids = table.column("id").to_pylist()
    if official:
        split_of = _official(Path(official), ids)
    else:
        strata = [f"{t}/{b}" for t, b in zip(table.column("task").to_pylist(),
                                              table.column("size_bucket").to_pylist())]
        by_group = assign_groups(groups, strata, proportions, seed)
        split_of = [by_group[g] for g in groups]
    check_no_leakage(groups, split_of)
    labels = pa.array(split_of)
    return {s: table.filter(pc.equal(labels, s)) for s in SPLITS}


def _official(path: Path, ids: list[str]) -> list[str]:
    doc = json.loads(path.read_text())
    where = {}
    for split in SPLITS:
        for rid in doc.get(split, []):
            if rid in where:
                raise SplitError(f"{path}: id {rid!r} is in both {where[rid]} and {split}")
            where[rid] = split
    missing = [rid for rid in ids if rid not in where]
    if missing:
        raise SplitError(f"{path}: {len(missing)} annotation id(s) in no split, e.g. {missing[:5]}")
    return [where[rid] for rid in ids]


def check_no_leakage(groups: list[str], split_of: list[str]) -> None:
    seen: dict[str, str] = {}
    for g, s in zip(groups, split_of):
        if seen.setdefault(g, s) != s:
            raise SplitError(f"source {g!r} is in both {seen[g]} and {s}")


def statistics(splits: dict[str, pa.Table]) -> pa.Table:
    """Counts by split x task x size bucket x attribute, computed with DuckDB."""
    parts = [t.select(["task", "size_bucket", "attribute"]).append_column(
        "split", pa.array([s] * t.num_rows, pa.string())) for s, t in splits.items()]
    samples = pa.concat_tables(parts)
    con = duckdb.connect()
    con.register("samples", samples)
    return con.sql("""
        SELECT split, task, size_bucket, attribute, count(*) AS samples
        FROM samples GROUP BY split, task, size_bucket, attribute
        ORDER BY array_position(['train','val','test'], split), task,
                 array_position(['s','xs','xxs'], size_bucket), attribute
    """).to_arrow_table()


def statistics_markdown(stats: pa.Table, splits: dict[str, pa.Table], group_by: str) -> str:
    rows = stats.to_pylist()
    lines = ["# Dataset statistics", "", "| split | samples | sources | IS | MVQA | OVQA | S | XS | XXS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, t in splits.items():
        task = Counter(t.column("task").to_pylist())
        size = Counter(t.column("size_bucket").to_pylist())
        sources = len(set(group_keys(t, group_by)))
        lines.append(f"| {s} | {t.num_rows} | {sources} | {task['IS']} | {task['MVQA']} | {task['OVQA']} "
                     f"| {size['s']} | {size['xs']} | {size['xxs']} |")
    lines += ["", "## split x task x size x attribute", "",
              "| split | task | size | attribute | samples |", "|---|---|---|---|---|"]
    lines += [f"| {r['split']} | {r['task']} | {r['size_bucket']} | {r['attribute']} | {r['samples']} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_sizes(splits: dict[str, pa.Table], target) -> None:
    """Mask-size distribution per split (the paper's Fig. A1a), log-scaled area %."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    values = {s: np.asarray(t.column("area_percent").to_pylist(), float) for s, t in splits.items()}
    allv = np.concatenate([v for v in values.values() if v.size] or [np.array([1e-3, 1.0])])
    bins = np.logspace(np.log10(allv.min()) - 0.1, np.log10(allv.max()) + 0.1, 30)
    for s, v in values.items():
        if v.size:
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=f"{s} ({v.size})", density=True)
    for edge, name in ((0.017, "XXS|XS"), (0.055, "XS|S")):
        ax.axvline(edge, color="grey", linestyle="--", linewidth=1)
        ax.text(edge, ax.get_ylim()[1] * 0.95, name, rotation=90, va="top", ha="right", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("mask area (% of image)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, format="png")
    plt.close(fig)


def splits_stage(annotations: str, outputs: dict[str, str], stats_parquet: str, stats_md: str,
                 plot_png: str, *, seed: int, proportions: dict, group_by: str, official=None) -> None:
    """Rule make_splits."""
    table = pq.read_table(annotations)
    splits = make_splits(table, seed=seed, proportions=proportions, group_by=group_by, official=official)
    for name, t in splits.items():
        write_parquet(outputs[name], t)
        logging.getLogger(__name__).info("%s: %d samples", name, t.num_rows)
    stats = statistics(splits)
    write_parquet(stats_parquet, stats)
    write_text(stats_md, statistics_markdown(stats, splits, group_by))
    with atomic_path(plot_png) as tmp:
        plot_sizes(splits, tmp)
