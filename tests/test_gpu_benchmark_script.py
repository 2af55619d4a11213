"""benchmarks/bench_gpu_real_sizes.py only meets a GPU in the sessions that are lent one;
its --smoke mode runs the same code at tiny sizes on CPU, here, so that it keeps up with
the library in between (it had fallen behind: a moved module, a changed signature)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_benchmark_runs_at_tiny_sizes_on_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_gpu_real_sizes.py"), "--smoke", "--steps", "1",
                          "--new-tokens", "8", "--work", str(tmp_path)], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu (smoke)"
    for stage in ("lpr", "gse"):   # one GRPO step each, timed
        assert len(figures[f"{stage}_grpo_step_s"]) == 1 and figures[f"{stage}_grpo_step_s"][0] > 0
    assert len(figures["seganswer_stage3_step_s"]) == 1 and figures["seganswer_stage3_step_s"][0] > 0
    assert figures["gse_s_per_image"] > 0 and figures["lpr_plus_sam2_s_per_image"] > 0
