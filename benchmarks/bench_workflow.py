"""Workflow overheads: Snakefile parse and dry-run on the paper config, a no-op re-run,
and the per-job overhead under Slurm (on the project's single-node test cluster).

Usage: python benchmarks/bench_workflow.py [--slurm]
The paper config is parsed against a throwaway folder layout (empty files where its
inputs would be), since only Snakemake's planning is measured.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, env=None, cwd=ROOT, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return statistics.median(times)


def paper_layout(root: Path) -> dict:
    data, models = root / "data", root / "models"
    (data / "finers4k/images").mkdir(parents=True)
    # the release's two files (config/paper.yaml data.annotations_json)
    for name in ("all_annotations_final_train_v5.json", "all_annotations_final_test_v5.json"):
        (data / "finers4k" / name).write_text('{"annotations": []}')
    # SegAnswer's sources in config/paper.yaml (empty files: only planned, never read here)
    for rel in ("refer/refcoco/refs(unc).p", "refer/refcoco+/refs(unc).p", "refer/refcocog/refs(umd).p",
                "refer/refclef/refs(unc).p", "visualcot/viscot_363k.json", "virl39k/39Krelease.parquet",
                "vstar_bench/test_questions.jsonl", "hr_bench/hr_bench_4k.tsv", "hr_bench/hr_bench_8k.tsv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"")
        if rel.startswith("refer/"):
            ((data / rel).parent / "instances.json").write_bytes(b"")
    # Dr. Seg's sources (config/paper.yaml drseg.sources): Hugging Face dataset folders
    for rel in ("VisionReasoner_multi_object_7k_840", "refcoco_val", "refcoco_testA", "refcocoplus_testA",
                "refcocog_test", "ReasonSeg_val", "ReasonSeg_test", "pixmo_count_val", "pixmo_count_test",
                "countbench", "coco_val"):
        (data / "visionreasoner" / rel).mkdir(parents=True)
    (models / "Qwen2.5-VL-7B-Instruct").mkdir(parents=True)
    (models / "sam2.1_hiera_large.pt").write_bytes(b"")
    return dict(os.environ, REPROSEG_DATA=str(data), REPROSEG_MODELS=str(models))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slurm", action="store_true", help="also measure per-job overhead on the test cluster")
    args = ap.parse_args()
    smk = [sys.executable, "-m", "snakemake", "--cores", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        env = paper_layout(Path(tmp))
        paper = ["--configfile", "config/paper.yaml"]
        (Path(tmp) / "Snakefile").write_text('rule all:\n    output: "x"\n    shell: "touch {output}"\n')
        base = timed([*smk, "--list-rules", "-s", str(Path(tmp) / "Snakefile")], cwd=tmp)
        parse = timed([*smk, "--list-rules", *paper], env=env)
        dry = timed([*smk, "-n", *paper], env=env)
        jobs = subprocess.run([*smk, "-n", "--quiet", "rules", *paper], cwd=ROOT, env=env,
                              capture_output=True, text=True).stdout
    print(f"snakemake --list-rules, 1-rule Snakefile: {base:6.2f} s (Snakemake's own start-up)")
    print(f"paper config, Snakefile parse:           {parse:6.2f} s ({parse - base:.2f} s of it is this Snakefile)")
    print(f"paper config, dry-run of the whole DAG:  {dry:6.2f} s")
    counts = dict(line.split() for line in jobs.split("Job stats:")[-1].splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    counts.pop("total", None)
    print(f"  planned jobs: {sum(int(v) for v in counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if (ROOT / "results/tables/finers_experiments.md").is_file():
        print(f"default config, no-op re-run:            {timed(smk):6.2f} s")
    else:
        print("default config, no-op re-run:            (run `make run` first)")
    if args.slurm:
        slurm_overhead()


def slurm_overhead() -> None:
    """Two chained one-line jobs through the Slurm profile vs. the same run locally."""
    cluster = ROOT / "scripts/slurm/cluster.sh"
    start = subprocess.run(["bash", str(cluster), "start"], capture_output=True, text=True)
    if start.returncode != 0:
        print("Slurm test cluster cannot run here:", start.stderr.strip()[-300:])
        return
    try:
        conf = subprocess.run(["bash", str(cluster), "env"], capture_output=True, text=True).stdout
        env = dict(os.environ, **dict(line.replace("export ", "").split("=", 1) for line in conf.split() if "=" in line))
        with tempfile.TemporaryDirectory() as wd:
            cmd = [sys.executable, "-m", "snakemake", "-s", "tests/slurm/Snakefile", "--directory", wd, "all"]
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--profile", "profiles/slurm"], cwd=ROOT, env=env, check=True, capture_output=True)
            slurm = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as wd:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "snakemake", "-s", "tests/slurm/Snakefile", "--directory", wd,
                            "all", "--cores", "1"], cwd=ROOT, check=True, capture_output=True)
            local = time.perf_counter() - t0
        print(f"Slurm, 2 chained jobs + 1 local: {slurm:.1f} s; locally: {local:.1f} s; "
              f"overhead per Slurm job: {(slurm - local) / 2:.1f} s (submission, polling, in-job Snakemake start)")
    finally:
        subprocess.run(["bash", str(cluster), "stop"], capture_output=True)


if __name__ == "__main__":
    main()
