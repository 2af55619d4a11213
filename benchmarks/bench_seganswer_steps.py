"""Seconds per optimizer step of each SegAnswer training stage, from a run's step logs.

Reads the step logs a workflow run wrote (stage 1 phase a and b, stage 2, stage 3) and
prints the median and mean seconds per step, leaving out the first step (warm-up:
first-call overheads). Run the workflow first, e.g. with more steps than the default:

    .venv/bin/snakemake --cores 2 --config results=results-bench \\
        --configfile benchmarks/seganswer_steps.yaml results-bench/seganswer/stage3/train_log.parquet
    .venv/bin/python benchmarks/bench_seganswer_steps.py --results results-bench
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

LOGS = {
    "stage 1a (projector)": ("seganswer/stage1_projector/train_log.parquet", "step_time_s"),
    "stage 1b (LoRA + projector + decoder)": ("seganswer/stage1_lora/train_log.parquet", "step_time_s"),
    "stage 2 (interleaved SFT)": ("seganswer/stage2/train_log.parquet", "step_time_s"),
    "stage 3 (multi-turn DAPO)": ("seganswer/stage3/train_log.parquet", "step_time_s"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    args = ap.parse_args()
    import pyarrow.parquet as pq

    print(f"{'stage':40s} {'steps':>5s} {'median s/step':>14s} {'mean s/step':>12s}")
    for name, (rel, col) in LOGS.items():
        path = Path(args.results) / rel
        if not path.is_file():
            print(f"{name:40s} missing: {path}")
            continue
        times = [t for t in pq.read_table(path).column(col).to_pylist() if t is not None]
        timed = times[1:] or times  # the first step is warm-up
        print(f"{name:40s} {len(times):5d} {statistics.median(timed):14.2f} {statistics.fmean(timed):12.2f}")


if __name__ == "__main__":
    main()
