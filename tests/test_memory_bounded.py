"""A training worker's memory is bounded by the batch, not the dataset: LPR GRPO on 1x and
10x the training rows, same batch and steps, each in a fresh process, peak RSS compared.

The rows reference one 1024 x 1024 frame and each trains on a 512-px crop of it (768 KB
decoded). Served lazily (ImageRef, decoded per batch), ten times the rows adds only their
metadata. A variant that decodes every crop up front, as a dataset-sized list would, adds
about 250 MB at 10x and must fail the same bound: the check can fail.
"""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import section
from reproseg.config import deep_merge
from reproseg.models.tiny_bundle import build_tiny_policy

ROWS = 32          # 1x; 10x is 320
SIDE = 1024
BOUND = 1.10       # peak RSS at 10x < 1.1 x peak RSS at 1x

# The worker's own high-water mark (VmHWM, of the memory it mapped after exec). Not
# getrusage's ru_maxrss: Linux carries that across fork and exec, so a worker started by a
# pytest process already holding 2 GB reported 2 GB whatever it did.
WORKER = r"""
import json, sys
from reproseg.finers import train as T
from reproseg.finers.lpr_rewards import TERMS

job = json.loads(sys.argv[1])
if job["eager"]:
    # What a dataset-sized list of decoded samples would hold (the bug this test guards against).
    lazy = T.lpr_training_rows
    T.lpr_training_rows = lambda *a, **k: [{**r, "image": r["image"].open()} for r in lazy(*a, **k)]
T.train_lpr_stage(job["split"], job["images"], job["policy"], job["checkpoint"], job["log"], job["curves"],
                  job["cfg"], TERMS, processes=1)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", int(hwm.split()[1]))
"""


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x, y = (float(v) for v in rng.uniform(100, SIDE - 140, 2))
        out.append({"id": f"r{i}", "image_path": "frame.png", "width": SIDE, "height": SIDE,
                    "box": [x, y, x + 30.0, y + 20.0],
                    "points_centre_jitter": [[x + 15, y + 10], [x + 16, y + 11]],
                    "points_inscribed": [[x + 15, y + 10]] * 2, "task_type": "referring",
                    "question": "Segment the red car.", "options": None, "option_letters": None,
                    "answer": "The red car is found.", "answer_option": None, "attribute": "colors",
                    "size_bucket": "xs"})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / "frame.png")
    for n in (ROWS, 10 * ROWS):
        pq.write_table(pa.Table.from_pylist(_rows(n)), root / f"split_{n}.parquet")
    build_tiny_policy(root / "policy", {}, ["Segment the red car. The red car is found."], seed=0)
    cfg = deep_merge(section("finers"), {
        "lpr_crop": 512,
        "lpr": {"grpo": {"max_steps": 3, "per_device_batch_size": 4, "num_generations": 2,
                         "max_completion_length": 8, "candidate_every": None, "report_to": [], "save_steps": 100}},
    })
    return root, cfg


def _peak_rss_mb(setup, n: int, eager: bool, tag: str) -> float:
    root, cfg = setup
    run = root / tag
    job = {"split": str(root / f"split_{n}.parquet"), "images": str(root), "policy": str(root / "policy"),
           "checkpoint": str(run / "checkpoint"), "log": str(run / "train_log.parquet"),
           "curves": str(run / "curves.png"), "cfg": cfg, "eager": eager}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    kb = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    assert len(pq.read_table(job["log"])) == 3   # it trained: three optimizer steps
    return kb[0] / 1024


def test_peak_rss_grows_under_ten_percent_at_ten_times_the_rows(setup):
    one = _peak_rss_mb(setup, ROWS, eager=False, tag="lazy_1x")
    ten = _peak_rss_mb(setup, 10 * ROWS, eager=False, tag="lazy_10x")
    print(f"peak RSS: {one:.0f} MB at {ROWS} rows, {ten:.0f} MB at {10 * ROWS} ({ten / one:.3f}x)")
    assert ten < BOUND * one, (one, ten)
    # Decoded up front, the same 10x set breaks the bound (the test can fail).
    eager = _peak_rss_mb(setup, 10 * ROWS, eager=True, tag="eager_10x")
    print(f"eager: {eager:.0f} MB at {10 * ROWS} rows ({eager / one:.3f}x)")
    assert eager > BOUND * one, (one, eager)
