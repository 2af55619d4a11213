"""The project's own workflow on the real single-node Slurm cluster: train_lpr and
retrospective_regions are dispatched as GPU jobs, and a training job sent SIGTERM
mid-run (what Slurm sends before a preemption or the time limit) saves its state, fails
that attempt, and resumes from its checkpoint in the retried job instead of starting over."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_slurm_cluster import _slurm_jobs, slurm_env  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
CONFIG = f"""
data:
  synthetic: {{n_videos: 4, width: 320, height: 180, n_frames: 8}}
  splits: {{proportions: {{train: 2, val: 1, test: 1}}}}
finers:
  warmup: {{max_steps: 4}}
  lpr:
    grpo: {{max_steps: {STEPS}, save_steps: 2, per_device_batch_size: 8, max_completion_length: 16}}
resources:
  gpu_train: {{mem_mb: 4000, runtime: 20, cpus_per_task: 1, gpu: 1}}
  gpu_infer: {{mem_mb: 4000, runtime: 20, cpus_per_task: 1, gpu: 1}}
"""
TARGET = "results/finers/regions/main/regions.parquet"


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the workflow with the data and base models already built locally, so
    that only the GPU rules go through Slurm."""
    dst = tmp_path_factory.mktemp("slurm_repo")
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "src", "envs", "report"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    (dst / "small.yaml").write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "data_all", "models_all",
                          "--configfile", "small.yaml"], cwd=dst, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return dst


def test_gpu_rules_on_slurm_and_resume_after_sigterm(copy, slurm_env):  # noqa: F811
    env = dict(slurm_env, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", TARGET,
                             "--configfile", "small.yaml"], cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _signal_and_check(proc, copy, env)
    finally:
        if proc.poll() is None:
            proc.kill()


def _signal_and_check(proc, copy, env):
    resume = copy / "results/finers/lpr/main/resume"
    deadline = time.monotonic() + 240
    # Wait until the training job has saved a few checkpoints, then signal it.
    while not (resume.is_dir() and any(p.name.startswith("checkpoint-") for p in resume.iterdir())):
        assert proc.poll() is None, proc.stdout.read()[-5000:]
        assert time.monotonic() < deadline, "training never saved a checkpoint"
        time.sleep(0.5)
    jobs = subprocess.run(["squeue", "--noheader", "--format=%i|%k|%Z", "--states=RUNNING"], env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    # This run's jobs (by working directory); the plugin comments each with its rule.
    train = [j.split("|")[0] for j in jobs
             if j.split("|")[1].startswith("rule_train_lpr") and j.split("|")[2] == str(copy)]
    assert len(train) == 1, jobs
    signalled_at = time.time()
    subprocess.run(["scancel", "--signal=TERM", train[0]], env=env, check=True)
    try:
        output, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the Slurm run did not finish: " + (proc.stdout.read() or "")[-5000:])
    assert proc.returncode == 0, output[-6000:]
    run_uuid = next(line.split("SLURM run ID:")[1].strip() for line in output.splitlines() if "SLURM run ID:" in line)
    records = _slurm_jobs(env, run_uuid)
    trains = [j for j in records if j["comment"].startswith("rule_train_lpr")]
    regions = [j for j in records if j["comment"].startswith("rule_retrospective_regions")]
    # Attempt 1 was ended by the signal; attempt 2 is a new Slurm job that completed.
    assert len(trains) == 2, records
    assert str(trains[0]["id"]) == train[0] and trains[0]["state"] != "COMPLETED"
    assert trains[1]["state"] == "COMPLETED" and regions[0]["state"] == "COMPLETED"
    for job in (trains[1], regions[0]):   # both were GPU jobs in Slurm's own record
        assert job.get("TresPerJob") == "gres:gpu:1", job
    # The log holds every step once; steps from before the signal were kept, not re-run.
    log = pq.read_table(copy / "results/finers/lpr/main/train_log.parquet").to_pydict()
    assert log["step"] == list(range(1, STEPS + 1))
    before = [s for s, t in zip(log["step"], log["wall_time"]) if t < signalled_at]
    assert before and before == list(range(1, len(before) + 1)) and len(before) < STEPS
    # The job's provenance record names the Slurm job that produced the checkpoint.
    import json
    rec = json.loads((copy / "results/finers/lpr/main/train_log.parquet.prov.json").read_text())
    assert rec["slurm"]["SLURM_JOB_ID"] == str(trains[1]["id"])
    assert rec["slurm"]["CUDA_VISIBLE_DEVICES"]
