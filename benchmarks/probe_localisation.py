"""What the default's tiny Qwen2.5-VL learns to see in a minute of SFT: what an object is, or where it is.

The default run's localisation cells stay where the warm-up leaves them: FineRS's XXS
bucket, GSE's region terms, and Dr. Seg's segmentation, REC and detection. So does
FineRS's QA (README, "What the default run shows"). This probe isolates the cause. One
object of a random colour and shape sits on the default's terrain, at a random place in
a 96 x 96 crop, as in LPR's crops. The tiny policy (config/config.yaml models.tiny.spec,
random weights) is fine-tuned with the project's SFT trainer, at lr 1e-3 by default
(the warm-up's 3e-3 did worse here: colour 31 % after 300 steps, side 47 %).
Every step gets fresh crops (none is seen twice). Its greedy answers on 64 held-out
crops are then scored:

- colour: "Find the object." -> its colour (7 classes; chance about 14 %);
- shape:  "Find the object." -> its shape (4 classes; chance 25 %);
- side:   "left" or "right" of the crop's centre (chance 50 %). The prompt either names
          the object (its length varies, as the questions' lengths do) or is always the same;
- box:    the bbox JSON that LPR writes, scored by its centre error beside the error of
          always answering the crop's centre.

Some cases run at `rope_theta` 1 instead of Qwen's 1e6. That is the base of the text
model's M-RoPE. At 1e6, with the tiny model's 16-dimensional heads, it turns the width
axis by at most 1.8e-4 rad per patch, so a column offset hardly changes an attention score.
Usage: python benchmarks/probe_localisation.py [--steps N] [--cases colour,side,...]
It prints one JSON line per case, then a Markdown table (about a minute a case on 2 cores).
"""
import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reproseg import config as cfglib
from reproseg.data.synthetic import COLORS, SHAPES, _terrain, shape_polygon
from reproseg.models.generation import Policy
from reproseg.models.sft import train_sft
from reproseg.models.tiny_bundle import build_tiny_policy

SIDE = 96
# name: (task, prompt names the object, rope_theta, default steps)
CASES = {
    "colour": ("colour", False, 1e6, 300),
    "shape": ("shape", False, 1e6, 1000),
    "side": ("side", True, 1e6, 1000),
    "side_fixed": ("side", False, 1e6, 1000),
    "side_fixed_theta1": ("side", False, 1.0, 1000),
    "side_theta1": ("side", True, 1.0, 1000),
    "box": ("box", True, 1e6, 1000),
    "box_fixed_theta1": ("box", False, 1.0, 1000),
}


def crop(rng: np.random.Generator):
    img, _ = _terrain(rng, SIDE, SIDE)
    img = Image.fromarray(img)
    color, shape = list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
    r = 0.16 * SIDE   # about an S object of the default in LPR's crop
    cx, cy = rng.uniform(r + 2, SIDE - r - 2, 2)
    poly = shape_polygon(shape, cx, cy, r)
    ImageDraw.Draw(img).polygon(poly, fill=COLORS[color])
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return img, color, shape, [min(xs), min(ys), max(xs), max(ys)]


def example(rng, task: str, named: bool) -> dict:
    img, color, shape, box = crop(rng)
    prompt = f"Find the {color} {shape}. Answer with its bbox." if named else "Find the object."
    target = {"colour": color, "shape": shape,
              "side": "left" if (box[0] + box[2]) / 2 < SIDE / 2 else "right",
              "box": '<think>Looking.</think><answer>{"bbox": %s}</answer>' % json.dumps([round(v) for v in box])}[task]
    return {"image": img, "prompt": [{"role": "user", "content": prompt}], "target": target, "box": box}


def centre(b):
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def score(task: str, val: list[dict], outs: list[str]) -> dict:
    if task != "box":
        return {"accuracy": float(np.mean([o.strip() == v["target"] for v, o in zip(val, outs)]))}
    err, base = [], []
    for v, o in zip(val, outs):
        c = centre(v["box"])
        base.append(math.hypot(c[0] - SIDE / 2, c[1] - SIDE / 2))
        m = re.search(r'"bbox": \[(-?\d+), (-?\d+), (-?\d+), (-?\d+)\]', o)
        p = centre([int(g) for g in m.groups()]) if m else (math.inf, math.inf)
        err.append(math.hypot(p[0] - c[0], p[1] - c[1]))
    return {"median_centre_error_px": float(np.median(err)), "centre_answer_error_px": float(np.median(base))}


def run_case(name: str, steps: int | None, lr: float, spec: dict, work: Path) -> dict:
    task, named, theta, default_steps = CASES[name]
    steps = steps or default_steps
    qwen = work / name / "qwen"
    build_tiny_policy(qwen, {**spec, "rope_theta": theta}, [], seed=0)
    rng = np.random.default_rng(0)
    train = [example(rng, task, named) for _ in range(8 * steps)]
    val = [example(np.random.default_rng([1, i]), task, named) for i in range(64)]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):   # the Trainer's per-step lines; stdout keeps the figures
        train_sft(qwen, train, dict(learning_rate=lr, max_steps=steps, batch_size=8, warmup_steps=10,
                                    lr_scheduler_type="cosine", report_to=[], seed=0, save_steps=10 ** 9),
                  work / name / "run", work / name / "log.parquet")
    seconds = time.perf_counter() - t0
    outs = Policy(str(work / name / "run" / "checkpoint"), device="cpu").generate(
        [v["image"] for v in val], [v["prompt"] for v in val], max_new_tokens=48 if task == "box" else 6)
    return {"case": name, "task": task, "prompt": "names the object" if named else "fixed", "rope_theta": theta,
            "steps": steps, "lr": lr, "train_s": round(seconds, 1), **score(task, val, outs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="SFT steps of every case (default: each case's own)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    spec = dict(cfglib.load_yaml(root / "config/config.yaml")["models"]["tiny"]["spec"])
    work = Path(args.work or tempfile.mkdtemp(prefix="probe_localisation_"))
    rows = []
    for name in args.cases.split(","):
        rows.append(run_case(name, args.steps, args.lr, spec, work))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | task | prompt | rope_theta | steps | result |\n|---|---|---|---:|---:|---|")
    for r in rows:
        result = (f"accuracy {100 * r['accuracy']:.0f} %" if "accuracy" in r else
                  f"centre error {r['median_centre_error_px']:.1f} px (answering the centre: "
                  f"{r['centre_answer_error_px']:.1f} px)")
        print(f"| {r['case']} | {r['task']} | {r['prompt']} | {r['rope_theta']:g} | {r['steps']} | {result} |")


if __name__ == "__main__":
    main()
