"""Seconds per optimizer step and peak job memory of every training stage, from runs' logs,
side by side (for instance one process against two per training job).

Reads the step logs a workflow run wrote (their `wall_time` or `step_time_s` column and
`world_size`) and the job's Snakemake benchmark file (`max_rss`: the job's peak resident
memory, its workers included), for the main run's variant of each stage. Seconds per
step are the mean over every step but the first (first-call overheads): a GRPO stage
that reuses a rollout batch for several steps (steps_per_generation) alternates a
generating step with cheaper ones, so the mean is its throughput. A second and later run is shown with
its ratio to the first. Run the workflow first, e.g. the default on one and on two
processes per training job:

    .venv/bin/snakemake --cores 2
    .venv/bin/snakemake --cores 2 --config results=results-2p 'resources={gpu_train: {processes: 2}}'
    .venv/bin/python benchmarks/bench_training_steps.py results 2p=results-2p

More SegAnswer steps than the default's few: `--configfile benchmarks/seganswer_steps.yaml`.
Peak memory at ten times the training data: benchmarks/data_10x.yaml says how.
"""
import argparse
import csv
import statistics
from pathlib import Path

import pyarrow.parquet as pq

# stage: (step log, Snakemake benchmark file), relative to a results folder
STAGES = {
    "FineRS policy warm-up (SFT)": ("finers/warmup/main/train_log.parquet", "finers/benchmarks/warmup_policy/main.tsv"),
    "FineRS SAM 2.1 warm-up": ("finers/warmup/main/sam2_log.parquet", "finers/benchmarks/warmup_sam2/main.tsv"),
    "FineRS LPR GRPO": ("finers/lpr/main/train_log.parquet", "finers/benchmarks/train_lpr/main.tsv"),
    "FineRS GSE GRPO": ("finers/gse/main/train_log.parquet", "finers/benchmarks/train_gse/main.tsv"),
    "Dr. Seg warm-up (SFT)": ("drseg/warmup/main/train_log.parquet", "drseg/benchmarks/drseg_warmup/main.tsv"),
    "Dr. Seg GRPO": ("drseg/train/main/train_log.parquet", "drseg/benchmarks/drseg_train/main.tsv"),
    "SegAnswer stage 1a (projector)": ("seganswer/stage1_projector/train_log.parquet",
                                       "seganswer/benchmarks/stage1_projector.tsv"),
    "SegAnswer stage 1b (LoRA)": ("seganswer/stage1_lora/train_log.parquet", "seganswer/benchmarks/stage1_lora.tsv"),
    "SegAnswer stage 2 (SFT)": ("seganswer/stage2/train_log.parquet", "seganswer/benchmarks/stage2.tsv"),
    "SegAnswer stage 3 (DAPO)": ("seganswer/stage3/train_log.parquet", "seganswer/benchmarks/stage3.tsv"),
}


def step_seconds(log: Path) -> tuple[list[float], int | None]:
    """(seconds of each step but the first, world size) of one step log."""
    table = pq.read_table(log)
    cols = table.schema.names
    world = int(max(table.column("world_size").to_pylist())) if "world_size" in cols else None
    if "step_time_s" in cols:
        times = [t for t in table.column("step_time_s").to_pylist() if t is not None][1:]
    else:
        # one row per logged step: seconds per step from consecutive wall times
        rows = sorted(zip(table.column("step").to_pylist(), table.column("wall_time").to_pylist()))
        times = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(rows, rows[1:]) if s1 > s0]
    return times, world


def peak_rss_mb(bench: Path) -> float | None:
    """The job's max_rss (MB) in its Snakemake benchmark file (the last repeat)."""
    if not bench.is_file():
        return None
    with bench.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    value = rows[-1].get("max_rss") if rows else None
    return float(value) if value not in (None, "", "NA", "-") else None


def measure(results: Path) -> dict[str, dict]:
    out = {}
    for stage, (log, bench) in STAGES.items():
        if not (results / log).is_file():
            continue
        times, world = step_seconds(results / log)
        out[stage] = {"world": world, "steps": len(times) + 1,
                      "s_per_step": statistics.fmean(times) if times else float("nan"),
                      "rss_mb": peak_rss_mb(results / bench)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="results folders, each optionally LABEL=folder")
    ap.add_argument("--targets", metavar="FOLDER",
                    help="print the step logs of every stage under FOLDER (Snakemake targets) and exit")
    args = ap.parse_args()
    if args.targets:
        print(" ".join(str(Path(args.targets) / log) for log, _ in STAGES.values()))
        return
    if not args.runs:
        ap.error("give at least one results folder")
    runs = [(r.split("=", 1) if "=" in r else (r, r)) for r in args.runs]
    figures = {label: measure(Path(folder)) for label, folder in runs}
    first = runs[0][0]
    header = f"{'stage':32s}"
    for label, _ in runs:
        header += f" | {label[:14]:>14s}: procs steps  s/step  peak MB"
        if label != first:
            header += "  s/step x  MB x"
    print(header)
    for stage in STAGES:
        if not any(stage in f for f in figures.values()):
            continue
        line = f"{stage:32s}"
        base = figures[first].get(stage)
        for label, _ in runs:
            f = figures[label].get(stage)
            if f is None:
                line += f" | {'(no log)':>14s}" + " " * 30
                continue
            rss = f"{f['rss_mb']:8.0f}" if f["rss_mb"] is not None else f"{'-':>8s}"
            line += f" | {'':>14s}  {f['world'] or '-':>5} {f['steps']:5d} {f['s_per_step']:7.3f} {rss}"
            if label != first and base is not None:
                ratio = f["s_per_step"] / base["s_per_step"] if base["s_per_step"] else float("nan")
                mem = (f"{f['rss_mb'] / base['rss_mb']:5.2f}" if f["rss_mb"] and base["rss_mb"] else f"{'-':>5s}")
                line += f"  {ratio:8.2f} {mem}"
        print(line)


if __name__ == "__main__":
    main()
