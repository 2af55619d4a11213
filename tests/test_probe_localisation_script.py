"""benchmarks/probe_localisation.py backs the README's account of what the tiny policy cannot
learn; run at a few steps here so that it keeps up with the library it calls (the SFT
trainer, the policy wrapper, the tiny bundle, the synthetic terrain)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_probe_runs_a_classification_and_a_box_case(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/probe_localisation.py"), "--steps", "3",
                          "--cases", "side_fixed_theta1,box", "--work", str(tmp_path)], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()   # DeepSpeed prints its accelerator line to stdout first
    side, box = (json.loads(line) for line in lines if line.startswith('{"case"'))
    assert side["case"] == "side_fixed_theta1" and side["rope_theta"] == 1.0 and side["steps"] == 3
    assert 0.0 <= side["accuracy"] <= 1.0
    # the crop centre is at most half a diagonal from any object centre
    assert 0.0 < box["centre_answer_error_px"] < 96 / 2 ** 0.5
    assert box["median_centre_error_px"] >= 0.0
    assert lines[-1].startswith("| box | box | names the object | 1e+06 | 3 |")
