"""The processes of every training job: `--config resources='{gpu_train: {processes: N}}'`
reaches every training rule's params (a stage's own `processes` wins over it, and it is
no Slurm resource), and the LPR branch of the default DAG (format warm-up SFT, LPR GRPO)
runs on two CPU processes (torchrun, gloo), each training log and provenance record
stating world size 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
# Every training rule; the SAM 2.1 warm-up keeps one process (reproseg.models.sam2_warmup).
TRAINING_RULES = {"warmup_policy", "train_lpr", "train_gse", "seganswer_stage1_projector", "seganswer_stage1_lora",
                  "seganswer_stage2_sft", "seganswer_stage3_dapo", "drseg_warmup", "drseg_train"}
# The DAG as Snakemake plans it from the same `--config` words the CLI takes; each job's
# evaluated params and resources, as JSON.
PROBE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.cli import parse_config
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

snakefile, workdir, *config = sys.argv[1:]
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(ResourceSettings(cores=1), ConfigSettings(config=parse_config(config)),
                      snakefile=Path(snakefile), workdir=Path(workdir))
    wf.dag(DAGSettings(targets={"all", "drseg_all"})).execute_workflow(executor="dryrun")
    jobs = {job.rule.name: {"params": dict(job.params.items()), "resources": dict(job.resources.items())}
            for job in wf._workflow.dag.jobs}
print("JOBS " + json.dumps(jobs, default=str))
"""
SMALL = """
data:
  synthetic: {n_videos: 4, width: 320, height: 180, n_frames: 8}
  splits: {proportions: {train: 2, val: 1, test: 1}}
finers:
  warmup: {max_steps: 4}
  lpr: {grpo: {max_steps: 2, per_device_batch_size: 4, max_completion_length: 24, candidate_every: 1}}
"""
pytestmark = pytest.mark.workflow


def test_processes_reach_every_training_rule(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = subprocess.run([sys.executable, str(probe), str(ROOT / "Snakefile"), str(tmp_path),
                          f"results={tmp_path}/results", "resources={gpu_train: {processes: 2}}",
                          "seganswer={stage2: {processes: 1}}"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = json.loads(out.stdout.split("JOBS ", 1)[1])
    given = {rule: job["params"]["processes"] for rule, job in jobs.items() if "processes" in job["params"]}
    assert given == {**dict.fromkeys(TRAINING_RULES, 2), "seganswer_stage2_sft": 1}
    assert not any("processes" in job["resources"] for job in jobs.values())


def test_lpr_branch_trains_on_two_processes(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    target = "results/finers/lpr/main/train_log.parquet.prov.json"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                          "--cores", "2", "--configfile", str(tmp_path / "small.yaml"),
                          "--config", "resources={gpu_train: {processes: 2}}", "--", target],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    finers = tmp_path / "results/finers"
    for stage in ("warmup", "lpr"):
        log = pq.read_table(finers / stage / "main/train_log.parquet").to_pydict()
        assert log["world_size"] == [2] * len(log["step"]) and log["step"]
        record = json.loads((finers / stage / "main/train_log.parquet.prov.json").read_text())
        assert record["params"]["processes"] == 2 and record["outcome"]["world_size"] == 2
        assert "processes" not in record["resources"]
        assert "trained on 2 process(es)" in (tmp_path / record["log"][0]).read_text()
    summary = json.loads((finers / "warmup/main/checkpoint/sft_summary.json").read_text())
    assert summary["world_size"] == 2
    assert json.loads((finers / "lpr/main/checkpoint/engine_summary.json").read_text())["world_size"] == 2
