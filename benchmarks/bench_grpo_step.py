"""Seconds per GRPO optimizer step of the project's engine on a tiny random Qwen2.5-VL.

Each step generates n=8 completions for every prompt, scores them with a toy reward,
runs the reference model (KL term) and takes one AdamW step. The first step (warm-up:
allocation, first-call overheads) is left out of the median.

    .venv/bin/python benchmarks/bench_grpo_step.py [--steps 6] [--hidden 64] [--prompts 2]
        [--image 112] [--new-tokens 32]

Runs on the GPU (bf16) when there is one, else on the CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def toy_reward(completions, **columns):
    return [float(len(c) % 5) for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (each gets n completions)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--image", type=int, default=112, help="square image side in pixels")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from reproseg.models.tiny_bundle import build_tiny_policy
    from reproseg.grpo.engine import train_grpo

    rng = np.random.default_rng(0)
    rows = [
        {"prompt": [{"role": "user", "content": f"Find the object number {i} and give its box."}],
         "image": Image.fromarray(rng.integers(0, 255, (args.image, args.image, 3), dtype=np.uint8))}
        for i in range(args.prompts)
    ]
    settings = dict(
        n=args.n, per_device_batch_size=args.n * args.prompts, max_completion_length=args.new_tokens,
        max_steps=args.steps, save_steps=10**6, gradient_checkpointing=False, seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        heads = max(1, args.hidden // 16)
        build_tiny_policy(tmp / "qwen", {"hidden_size": args.hidden, "num_hidden_layers": args.layers,
                                         "num_attention_heads": heads, "num_key_value_heads": heads,
                                         "intermediate_size": 2 * args.hidden,
                                         "max_pixels": max(args.image, 56) ** 2}, [], seed=0)
        t0 = time.perf_counter()
        train_grpo(tmp / "qwen", rows, {"toy": toy_reward}, settings, tmp / "run", tmp / "log.parquet")
        total = time.perf_counter() - t0
        log = pq.read_table(tmp / "log.parquet").to_pylist()

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    walls = [b["wall_time"] - a["wall_time"] for a, b in zip(log, log[1:])]
    trl_times = [r["step_time_s"] for r in log[1:]]
    print(f"device: {device}; hidden {args.hidden}, {args.layers} layers, {args.prompts} prompts x n={args.n}, "
          f"{args.image}px images, {args.new_tokens} new tokens, KL beta 5e-3")
    print(f"seconds per GRPO step (median of {len(walls)} after warm-up, wall clock): {statistics.median(walls):.3f}")
    print(f"seconds per GRPO step (median, TRL step_time): {statistics.median(trl_times):.3f}")
    print(f"whole call incl. model load, {args.steps} steps and final save: {total:.1f} s")


if __name__ == "__main__":
    main()
