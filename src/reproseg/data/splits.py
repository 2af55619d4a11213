"""Leakage-free, deterministic, stratified train/val/test splits and dataset statistics.

Samples are grouped by source (video, or image when no video is known): a group is
assigned whole, so no source appears in two splits. Groups are assigned greedily, in
a seeded order, to the split whose deficit is largest, where the deficit counts both
the overall target size and the (task, size bucket) strata the group contains.

FineRS-4k as released (annotations with a `release_split`, from separate train and
test files): test is exactly the test file's records, and val is drawn the same way
from the train file's records only, at val / (train + val) of them (the test
proportion is unused). A source the release puts in both files is its own overlap:
it is logged, named in the statistics, and kept out of val.
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


def release_splits(table: pa.Table) -> list[str | None]:
    """Each record's file in the release ("train" / "test"), None for one-file JSON."""
    if "release_split" not in table.column_names:
        return [None] * table.num_rows
    out = table.column("release_split").to_pylist()
    if len({r is None for r in out}) > 1 or not set(out) <= {None, "train", "test"}:
        raise SplitError("release_split must be train/test for every record or for none, got "
                         f"{sorted(set(out), key=str)}")
    return out


def release_overlap(table: pa.Table, group_by: str) -> list[str]:
    """Sources (by `group_by`) the release has in both its train and its test file."""
    groups, release = group_keys(table, group_by), release_splits(table)
    return sorted({g for g, r in zip(groups, release) if r == "train"}
                  & {g for g, r in zip(groups, release) if r == "test"})


def make_splits(table: pa.Table, *, seed: int, proportions: dict, group_by: str,
                official: str | Path | None = None) -> dict[str, pa.Table]:
    groups = group_keys(table, group_by)
    ids = table.column("id").to_pylist()
    strata = [f"{t}/{b}" for t, b in zip(table.column("task").to_pylist(),
                                          table.column("size_bucket").to_pylist())]
    release = release_splits(table)
    shared: set[str] = set()
    if release and release[0] is not None:
        if official:
            raise SplitError(f"{official}: an official split file and the release's train and test files "
                             "both define the splits; use one (data.splits.official or data.annotations_json)")
        shared = set(release_overlap(table, group_by))
        split_of = _from_release(groups, strata, release, shared, proportions, seed)
    elif official:
        split_of = _official(Path(official), ids)
    else:
        by_group = assign_groups(groups, strata, proportions, seed)
        split_of = [by_group[g] for g in groups]
    check_no_leakage(groups, split_of, allowed=shared)
    labels = pa.array(split_of, pa.string())
    return {s: table.filter(pc.equal(labels, s)) for s in SPLITS}


def _from_release(groups, strata, release, shared, proportions, seed) -> list[str]:
    """test = the test file; val drawn from the train file's groups not also in test."""
    drawable = [i for i, r in enumerate(release) if r == "train" and groups[i] not in shared]
    by_group = assign_groups([groups[i] for i in drawable], [strata[i] for i in drawable],
                             {"train": proportions["train"], "val": proportions["val"], "test": 0}, seed)
    return ["test" if r == "test" else by_group.get(g, "train") for g, r in zip(groups, release)]


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


def check_no_leakage(groups: list[str], split_of: list[str], allowed: set[str] = frozenset()) -> None:
    """No source in two splits, except the `allowed` ones (the release's own train/test
    overlap), which may be in train and test but never in val."""
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, split_of):
        seen[g].add(s)
        if len(seen[g]) > 1 and (g not in allowed or "val" in seen[g]):
            a, b = sorted(seen[g], key=SPLITS.index)[:2]
            raise SplitError(f"source {g!r} is in both {a} and {b}")


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


def statistics_markdown(stats: pa.Table, splits: dict[str, pa.Table], group_by: str,
                        overlap: list[str] = ()) -> str:
    rows = stats.to_pylist()
    lines = ["# Dataset statistics", ""]
    if overlap:
        lines += [f"The release's train and test files share {len(overlap)} source(s) (by {group_by}), kept "
                  f"in train and out of val: {', '.join(overlap[:10])}{' ...' if len(overlap) > 10 else ''}.", ""]
    lines += ["| split | samples | sources | IS | MVQA | OVQA | S | XS | XXS |",
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
    log = logging.getLogger(__name__)
    table = pq.read_table(annotations)
    splits = make_splits(table, seed=seed, proportions=proportions, group_by=group_by, official=official)
    overlap = release_overlap(table, group_by)
    if overlap:
        log.warning("the release's train and test files share %d source(s), e.g. %s", len(overlap), overlap[:5])
    for name, t in splits.items():
        write_parquet(outputs[name], t)
        log.info("%s: %d samples", name, t.num_rows)
    stats = statistics(splits)
    write_parquet(stats_parquet, stats)
    write_text(stats_md, statistics_markdown(stats, splits, group_by, overlap))
    with atomic_path(plot_png) as tmp:
        plot_sizes(splits, tmp)
