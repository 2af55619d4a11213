"""The Slurm profile on a real single-node Slurm cluster (scripts/slurm/cluster.sh).

The module starts the cluster (or reuses one that is already running, and then leaves
it running), runs the fixture workflow tests/slurm/Snakefile once with profiles/slurm
(the GPU chain and the memory-retry rule side by side, to halve the wall time), and
checks the result against Slurm's own records (squeue / scontrol), not only against
what the jobs wrote. Where the daemons cannot run on this machine, every test is
skipped with the reason that `cluster.sh start` gave.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "scripts" / "slurm" / "cluster.sh"
PROFILE = "profiles/slurm"
SNAKEFILE = "tests/slurm/Snakefile"
RUN_TIMEOUT_S = 300


def _cluster(cmd: str, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _clean_env() -> dict:
    """The caller's environment without anything that could fake a result: no GPU
    selection and no Slurm job variables inherited from outside (e.g. when pytest
    itself runs inside a Slurm job)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "CUDA_VISIBLE_DEVICES"}
    # The venv's bin first, so the jobs find the same snakemake.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def slurm_env():
    """Environment for the Slurm clients and Snakemake, with the cluster running."""
    env = _clean_env()
    already_running = _cluster("status", env).returncode == 0
    if not already_running:
        try:
            started = _cluster("start", env)
        except subprocess.TimeoutExpired:
            pytest.skip("Slurm test cluster cannot run here: `cluster.sh start` timed out")
        if started.returncode != 0:
            errors = [l for l in started.stderr.splitlines() if "ERROR" in l]
            reason = errors[-1] if errors else (started.stderr.strip() or started.stdout.strip())
            reason = reason.replace("[slurm-cluster] ERROR: ", "")
            pytest.skip(f"Slurm test cluster cannot run here: {reason}")
    out = _cluster("env", env).stdout
    match = re.search(r"SLURM_CONF=(\S+)", out)
    assert match, out
    env["SLURM_CONF"] = match.group(1)
    yield env
    if not already_running:
        stopped = _cluster("stop", env)
        assert stopped.returncode == 0, stopped.stderr


def _run_snakemake(env: dict, workdir: Path, *targets: str) -> tuple[str, str]:
    """Run the fixture workflow with the Slurm profile; return (run uuid, output)."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", PROFILE, "-s", SNAKEFILE,
           "--directory", str(workdir), *targets]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"snakemake did not finish in {RUN_TIMEOUT_S}s:\n{out[-6000:]}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{out[-6000:]}"
    match = re.search(r"SLURM run ID: (\S+)", out)
    assert match, f"no 'SLURM run ID' in the output:\n{out[-3000:]}"
    return match.group(1), out


def _read_kv(path: Path) -> dict:
    """KEY=value lines of a job's output; a later line wins."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _slurm_jobs(env: dict, run_uuid: str) -> list[dict]:
    """Slurm's own record of every job of one Snakemake run (the plugin names each
    job after the run's UUID), oldest first: squeue's row plus `scontrol show job -d`."""
    listed = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_uuid, "--format=%i|%T|%m|%k"],
        env=env, capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in listed.splitlines():
        if not line.strip():
            continue
        jobid, state, min_mem, comment = line.split("|", 3)
        detail = subprocess.run(["scontrol", "show", "job", "-d", "--oneliner", jobid],
                                env=env, capture_output=True, text=True, check=True).stdout
        record = dict(re.findall(r"(\S+?)=(\S*)", detail))
        record.update(id=int(jobid), state=state, min_mem=min_mem, comment=comment)
        jobs.append(record)
    return sorted(jobs, key=lambda j: j["id"])


@pytest.fixture(scope="module")
def workflow_run(slurm_env, tmp_path_factory):
    """One run of both targets: the chain (`all`) and the memory-retry rule."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    run_uuid, out = _run_snakemake(slurm_env, workdir, "all", "mem_hog.txt")
    return workdir, _slurm_jobs(slurm_env, run_uuid)


def test_chain_with_gpu_job_runs_on_slurm(workflow_run):
    workdir, all_jobs = workflow_run
    prep = _read_kv(workdir / "prep.txt")
    cpu = _read_kv(workdir / "cpu.txt")
    gpu = _read_kv(workdir / "gpu.txt")
    # The localrule ran on the submit host, outside any Slurm job.
    assert prep["SLURM_JOB_ID"] == ""
    assert cpu["SLURM_JOB_ID"] and gpu["SLURM_JOB_ID"]
    assert cpu["SLURM_JOB_ID"] != gpu["SLURM_JOB_ID"]
    # The GPU job saw the GPU that Slurm gave it (the test's own environment has no
    # CUDA_VISIBLE_DEVICES, so it can only come from Slurm).
    assert gpu["SLURM_GPUS_ON_NODE"] == "1"
    assert re.fullmatch(r"\d+", gpu["CUDA_VISIBLE_DEVICES"]), gpu
    assert cpu["SLURM_GPUS_ON_NODE"] == ""

    # Only the non-local rules went through Slurm: no job for `prepare` or `all`.
    assert {j["comment"] for j in all_jobs} == {"rule_cpu_step", "rule_gpu_step",
                                                "rule_mem_hog"}, all_jobs
    jobs = [j for j in all_jobs if j["comment"] in ("rule_cpu_step", "rule_gpu_step")]
    # Each chain rule once, completed, and the very job that wrote the output.
    assert len(jobs) == 2, jobs
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    by_rule = {j["comment"]: j for j in jobs}
    cpu_job, gpu_job = by_rule["rule_cpu_step"], by_rule["rule_gpu_step"]
    assert str(cpu_job["id"]) == cpu["SLURM_JOB_ID"]
    assert str(gpu_job["id"]) == gpu["SLURM_JOB_ID"]
    # The GPU allocation as Slurm recorded it: requested (TresPerJob) and allocated
    # (JOB_GRES); the CPU job has none.
    assert gpu_job.get("TresPerJob") == "gres:gpu:1", gpu_job
    assert re.match(r"gpu(:[\w-]+)?:1\b", gpu_job.get("JOB_GRES", "")), gpu_job
    assert "TresPerJob" not in cpu_job, cpu_job
    assert cpu_job.get("JOB_GRES") == "(null)", cpu_job
    # The profile's defaults reached sbatch: mem_mb = 2000 * attempt, runtime = 60 * attempt.
    assert cpu_job["MinMemoryNode"] == "2000M", cpu_job
    assert cpu_job["TimeLimit"] == "01:00:00", cpu_job


def test_memory_kill_is_retried_as_new_slurm_job_with_more_memory(workflow_run):
    workdir, all_jobs = workflow_run
    jobs = [j for j in all_jobs if j["comment"] == "rule_mem_hog"]
    assert len(jobs) == 2, all_jobs
    first, second = jobs
    # Attempt 1: 1000 MB, killed by Slurm for exceeding it (the job itself never
    # looks at its limit; it only holds ~1.4 GB for 2 seconds).
    assert first["MinMemoryNode"] == "1000M", first
    assert first["state"] in {"FAILED", "OUT_OF_MEMORY"}, first
    kept_log = workdir / ".snakemake" / "slurm_logs" / "rule_mem_hog" / f"{first['id']}.log"
    assert f"StepId={first['id']}.0 exceeded memory limit" in kept_log.read_text(), \
        kept_log.read_text()[-3000:]
    # Attempt 2: a new Slurm job (not a retry inside the old allocation) with twice
    # the memory, which completed and wrote the output.
    assert second["id"] != first["id"]
    assert second["MinMemoryNode"] == "2000M", second
    assert second["state"] == "COMPLETED", second
    result = _read_kv(workdir / "mem_hog.txt")
    assert result["SLURM_JOB_ID"] == str(second["id"])
    assert result["mem_mb"] == "2000"
