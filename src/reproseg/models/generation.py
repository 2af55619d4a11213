"""Batched generation with a Qwen2.5-VL policy, one user turn per image (FineRS's search,
inference and selection; Dr. Seg's inference and selection)."""
from __future__ import annotations

import time

import torch

from .loading import load_policy


class Policy:
    def __init__(self, qwen_dir: str, device: str | None = None, dtype: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
        self.model, self.processor = load_policy(qwen_dir, dtype=dtype, device=self.device)
        self.model.eval()
        self.seconds = 0.0   # generation wall time, for per-image timings

    def generate(self, images, prompts: list[list[dict]], max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        """One completion per (image, user prompt); the image goes before the text. Greedy
        at temperature 0; above it, sampled (top_p 1) from torch's RNG seeded with `seed`
        (seeded only then, so greedy callers keep their RNG state)."""
        texts = []
        for msgs in prompts:
            turn = [{"role": m["role"], "content": [{"type": "image"}, {"type": "text", "text": m["content"]}]}
                    for m in msgs]
            texts.append(self.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True))
        inputs = self.processor(text=texts, images=list(images), padding=True, return_tensors="pt").to(self.device)
        sampling = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
            torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)
