"""SegAnswer's own synthetic source (`format: shapes`): one large object on drone-like terrain.

The embedded default trains tiny random models for a minute on CPU, so its task must be
one that such a model can learn in that time (DESIGN.md, "A default that learns"): the
FineRS frames' objects cover well under 1 % of the frame (6 x 6 px at SegAnswer's
224 x 126), this source's cover `area` (default 5-15 %) of it. Each picture is the
FineRS synthesiser's terrain (fields and a road, reproseg.data.synthetic) with one
object of a colour from `colors` and one of its four shapes, drawn with the same
polygon rasterisation as its ground-truth mask, so the mask is exact. Per picture:

- one referring row, phrase "{colour} {shape}" (stage 1, Table 3);
- a multiple-choice row (task MVQA) "What colour is the {shape}?" with the options
  `colors` in their configured order (so the answer letter is a fixed function of the
  colour: an easy task on purpose), and an open row (OVQA) with the same question,
  answer the colour name (stages 2-3, Table 1); `tasks` picks which of the two.

Spec keys: `counts` {split: number of pictures}, `size` [width, height], `seed`,
optional `colors` (names of reproseg.data.synthetic.COLORS, default red, blue, yellow,
white: all far from the terrain's greens and greys), `area` [min, max] fraction of the
frame and `tasks` (default [MVQA, OVQA]). The same spec gives the same bytes (PNG,
written by the import).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ...data.annotations import Report
from ...data.masks import polygon_to_rle, rle_decode
from ...data.synthetic import COLORS, SHAPES, _radius_for_area, _terrain, shape_polygon
from ...io_atomic import atomic_path
from .tables import question_table, referring_table

DEFAULT_COLORS = ("red", "blue", "yellow", "white")
DEFAULT_AREA = (0.05, 0.15)
QUESTION = "What colour is the {shape}?"
TASKS = ("MVQA", "OVQA")


def draw(rng: np.random.Generator, width: int, height: int, colors, area) -> tuple[np.ndarray, dict, str, str]:
    """(RGB picture, COCO RLE of the object, colour, shape) of one scene."""
    img, _ = _terrain(rng, height, width)
    color = str(colors[int(rng.integers(len(colors)))])
    shape = str(SHAPES[int(rng.integers(len(SHAPES)))])
    r = _radius_for_area(shape, float(rng.uniform(*area)) * width * height)
    if 2 * r + 4 > min(width, height):
        raise ValueError(f"an object of {area[1]:.0%} of a {width}x{height} picture does not fit in it")
    cx = float(rng.uniform(r + 2, width - r - 2))
    cy = float(rng.uniform(r + 2, height - r - 2))
    rle = polygon_to_rle(shape_polygon(shape, cx, cy, r), width, height)
    img[rle_decode(rle)] = COLORS[color]
    return img, rle, color, shape


def import_shapes(spec: dict, *, images_out: Path):
    """(referring table, question table, report); writes the pictures to `images_out`."""
    name = spec["name"]
    width, height = (int(v) for v in spec.get("size", (224, 126)))
    colors = list(spec.get("colors") or DEFAULT_COLORS)
    unknown = sorted(set(colors) - set(COLORS))
    if unknown or len(set(colors)) != len(colors) or len(colors) < 2:
        raise ValueError(f"source {name!r}: colors must be two or more distinct names of {sorted(COLORS)}, "
                         f"got {colors}")
    area = tuple(float(v) for v in spec.get("area", DEFAULT_AREA))
    if not (len(area) == 2 and 0 < area[0] <= area[1] < 1):
        raise ValueError(f"source {name!r}: area must be [min, max] with 0 < min <= max < 1, got {list(area)}")
    tasks = list(spec.get("tasks") or TASKS)
    if not tasks or set(tasks) - set(TASKS) or len(set(tasks)) != len(tasks):
        raise ValueError(f"source {name!r}: tasks must be distinct names of {list(TASKS)}, got {tasks}")
    counts = spec.get("counts") or {}
    if not counts:
        raise ValueError(f"source {name!r}: counts (pictures per split) is required")
    images_out = Path(images_out)
    letters = [chr(ord("A") + i) for i in range(len(colors))]
    referring, questions = [], []
    report = Report(source=f"synthetic shapes {dict(counts)}", policy="fail")
    for split, n in sorted(counts.items()):
        # one stream per split, so adding a split changes no other split's pictures
        rng = np.random.default_rng([int(spec.get("seed", 0)), zlib.crc32(split.encode())])
        for i in range(int(n)):
            img, rle, color, shape = draw(rng, width, height, colors, area)
            file_name = f"{split}/{i:05d}.png"
            (images_out / split).mkdir(parents=True, exist_ok=True)
            with atomic_path(images_out / file_name) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            base = {"source": name, "split": split, "image_path": file_name}
            rid = f"{name}/{split}/{i:05d}"
            referring.append({**base, "id": rid, "width": width, "height": height, "rle_counts": rle["counts"],
                              "phrase": f"{color} {shape}", "category": shape})
            question = QUESTION.format(shape=shape)
            if "MVQA" in tasks:
                questions.append({**base, "id": f"{rid}/mc", "question": question,
                                  "answer": letters[colors.index(color)], "options": colors, "task": "MVQA",
                                  "category": "colors"})
            if "OVQA" in tasks:
                questions.append({**base, "id": f"{rid}/open", "question": question, "answer": color,
                                  "options": None, "task": "OVQA", "category": "colors"})
            report.total += 1
    return referring_table(referring), question_table(questions), report
