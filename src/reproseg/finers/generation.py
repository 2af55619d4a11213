"""Batched generation with a Qwen2.5-VL policy (retrospective search and inference)."""
from __future__ import annotations

import time

import torch

from ..models.loading import load_policy


class Policy:
    def __init__(self, qwen_dir: str, device: str | None = None, dtype: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
        self.model, self.processor = load_policy(qwen_dir, dtype=dtype, device=self.device)
        self.model.eval()
        self.seconds = 0.0   # generation wall time, for per-image timings

    def generate(self, images, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy completions, one per (image, user prompt); the image goes before the text."""
        texts = []
        for msgs in prompts:
            turn = [{"role": m["role"], "content": [{"type": "image"}, {"type": "text", "text": m["content"]}]}
                    for m in msgs]
            texts.append(self.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True))
        inputs = self.processor(text=texts, images=list(images), padding=True, return_tensors="pt").to(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)

