"""Seconds per GRPO optimizer step of the project's engine on a tiny random Qwen2.5-VL,
beside bare TRL `GRPOTrainer` on the same model, rows, group size, generation length and
GRPOConfig (the engine's own build_grpo_config), in one run, with their ratio.

Each step generates n=8 completions for every prompt, scores them with a toy reward,
runs the reference model (KL term) and takes one AdamW step. The first step (warm-up:
allocation, first-call overheads) is left out of the medians. The engine adds its Parquet
step log, the reward adapters, its seeded sampler and lazy rows; bare TRL gets a
datasets.Dataset of the same rows and the same reward on the completion's text.

    .venv/bin/python benchmarks/bench_grpo_step.py [--steps 6] [--hidden 64] [--prompts 2]
        [--image 112] [--new-tokens 32] [--no-trl]

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
    ap.add_argument("--no-trl", action="store_true", help="the engine only, without the bare-TRL run")
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
        bare = None if args.no_trl else bare_trl_step_times(tmp / "qwen", rows, settings, tmp / "trl")

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    walls = [b["wall_time"] - a["wall_time"] for a, b in zip(log, log[1:])]
    trl_times = [r["step_time_s"] for r in log[1:]]
    print(f"device: {device}; hidden {args.hidden}, {args.layers} layers, {args.prompts} prompts x n={args.n}, "
          f"{args.image}px images, {args.new_tokens} new tokens, KL beta 5e-3")
    print(f"seconds per GRPO step (median of {len(walls)} after warm-up, wall clock): {statistics.median(walls):.3f}")
    print(f"seconds per GRPO step (median, TRL step_time): {statistics.median(trl_times):.3f}")
    print(f"whole call incl. model load, {args.steps} steps and final save: {total:.1f} s")
    if bare:
        engine, trl = statistics.median(walls), statistics.median(bare)
        print(f"bare TRL GRPOTrainer, same config (median of {len(bare)} after warm-up, wall clock): {trl:.3f}")
        print(f"engine / bare TRL: {engine / trl:.3f}x")


def bare_trl_step_times(policy_dir: Path, rows: list[dict], settings: dict, out_dir: Path) -> list[float]:
    """Wall seconds of each optimizer step after the first, of TRL's GRPOTrainer on the
    engine's own GRPOConfig (no checkpoints, no reporters)."""
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOTrainer

    from reproseg.grpo.engine import GRPOSettings, build_grpo_config

    args = build_grpo_config(GRPOSettings.from_dict(settings), out_dir, ["toy"])
    args.save_strategy, args.report_to = "no", []
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    def toy(completions, **_):  # the engine's adapter hands its reward the completion's text
        return toy_reward([c[-1]["content"] if isinstance(c, list) else c for c in completions])

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy_dir, dtype=torch.float32, local_files_only=True)
    processor = AutoProcessor.from_pretrained(policy_dir, local_files_only=True, padding_side="left")
    data = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "image": [r["image"] for r in rows]})
    GRPOTrainer(model=model, reward_funcs=[toy], args=args, train_dataset=data, processing_class=processor,
                callbacks=[Stamp()]).train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


if __name__ == "__main__":
    main()
