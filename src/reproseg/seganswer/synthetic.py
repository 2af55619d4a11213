"""Tiny synthetic SegAnswer data (for tests and the workflow's smoke run): coloured shapes on noise.

Stage-1 rows: {"image", "mask", "phrase"}; QA rows (stages 2/3, evaluation):
{"image", "question", "answer", "options", "mask"}. The same seed gives the same rows.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def _draw(rng: np.random.Generator, h: int, w: int):
    arr = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    r = int(rng.integers(max(4, min(h, w) // 8), max(5, min(h, w) // 3)))
    cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
    yy, xx = np.mgrid[:h, :w]
    if shape == "square":
        mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    else:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    arr[mask] = COLORS[color]
    return Image.fromarray(arr), mask, color, shape


def seg_rows(n: int, seed: int = 0, size: tuple[int, int] = (56, 84)) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image, mask, color, shape = _draw(rng, *size)
        out.append({"image": image, "mask": mask, "phrase": f"{color} {shape}"})
    return out


def qa_rows(n: int, seed: int = 0, size: tuple[int, int] = (56, 84), multiple_choice: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    names = list(COLORS)
    for _ in range(n):
        image, mask, color, shape = _draw(rng, *size)
        options = names if multiple_choice else None
        answer = "ABCD"[names.index(color)] if multiple_choice else color
        out.append({"image": image, "mask": mask, "question": f"What color is the {shape}?",
                    "answer": answer, "options": options})
    return out
