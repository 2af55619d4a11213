"""Snakefile parse time, dry-run time and no-op re-run time, as wall-clock figures.

`--list-rules` parses the Snakefile and builds no DAG, so it measures parsing plus
Snakemake's own start-up; the interpreter start-up alone is printed for reference.
Usage: python benchmarks/bench_parse.py [extra snakemake args, e.g. --configfile x.yaml]
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    extra = sys.argv[1:]
    smk = [sys.executable, "-m", "snakemake", "--cores", "1", *extra]
    python = timed([sys.executable, "-c", "import snakemake.cli"])
    parse = timed([*smk, "--list-rules"])
    dry = timed([*smk, "-n"])
    print(f"python + import snakemake:      {python:6.2f} s")
    print(f"Snakefile parse (--list-rules): {parse:6.2f} s  ({parse - python:5.2f} s beyond importing snakemake)")
    print(f"dry-run (-n):                   {dry:6.2f} s")
    print("no-op run (after `make run`):   ", end="", flush=True)
    print(f"{timed(smk):6.2f} s")


if __name__ == "__main__":
    main()
