"""A small synthetic stand-in for Dr. Seg's data, in the released parquet formats.

Each picture is a textured background with 2 to `max_objects + 1` filled shapes
(rectangles and ellipses) in a few colours; a query names one colour ("the red
shapes"), and every shape of that colour is a target, so most queries have several
objects (VisionReasoner's multi-object task). A shape's box is its bounding box and its
point the box centre, which lies inside an ellipse as well as a rectangle.

Tasks (the columns the importers read, reproseg.drseg.visionreasoner.data / benchmarks):
- train: `id, problem, solution, image, img_height, img_width`; the image stored at
  `policy_size` x `policy_size` and the solution in that frame, as the 7k_840 release
  stores 840 x 840 images (coordinates int(v * size / side + 0.5)); img_* the original;
- segmentation: the original image, `text`, `mask` (rows of booleans: the union of the
  targets), ids and size;
- rec: one target (a colour present once), `bbox` its box;
- counting: `count`, the number of targets;
- detection (VisionReasoner's coco_val columns): one row per colour of a picture, its
  name the query, `bbox` the list of every shape of that colour ([x1, y1, x2, y2]) and
  `cat_id` the colour's category (CATEGORIES); the picture's colours, then one it lacks
  (an empty box list: every answer to it is a false positive, scored 0).

Deterministic in (seed, name): two sources with the same split draw different pictures.
"""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from reproseg.io_atomic import write_parquet

from .task import scale

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
SHAPES = ("rectangle", "ellipse")
TASKS = ("train", "segmentation", "rec", "counting", "detection")
# The detection split's category id of each colour (COCO's ids start at 1).
CATEGORIES = {colour: k for k, colour in enumerate(COLOURS, 1)}

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_BASE = [("image", _IMAGE), ("text", pa.string()), ("image_id", pa.string()), ("ann_id", pa.string()),
         ("img_height", pa.int64()), ("img_width", pa.int64())]
SCHEMAS = {
    "train": pa.schema([("id", pa.string()), ("problem", pa.string()), ("solution", pa.string()), ("image", _IMAGE),
                        ("img_height", pa.int64()), ("img_width", pa.int64())]),
    "segmentation": pa.schema([*_BASE, ("mask", pa.list_(pa.list_(pa.bool_())))]),
    "rec": pa.schema([*_BASE, ("bbox", pa.list_(pa.float64()))]),
    "counting": pa.schema([*_BASE, ("count", pa.int64())]),
    "detection": pa.schema([*_BASE, ("bbox", pa.list_(pa.list_(pa.float64()))), ("cat_id", pa.int64())]),
}


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")])


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def scene(rng: np.random.Generator, width: int, height: int, max_objects: int, single: bool = False):
    """(image, colour, targets): targets are (box, point, mask) of every shape of `colour`
    (exactly one with `single`); shapes do not overlap, so each mask is its own shape."""
    image, colour, shapes = scene_shapes(rng, width, height, max_objects, single)
    return image, colour, [(box, point, mask) for kind, box, point, mask in shapes if kind == colour]


def scene_shapes(rng: np.random.Generator, width: int, height: int, max_objects: int, single: bool = False):
    """(image, colour, shapes) of scene(): every shape drawn, as (its colour, box, point,
    mask), the query colour's first."""
    base = rng.integers(70, 130, size=3)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    names = list(COLOURS)
    colour = names[int(rng.integers(len(names)))]
    n_target = 1 if single else int(rng.integers(1, max_objects + 1))
    others = [c for c in names if c != colour]
    kinds = [colour] * n_target + [others[int(rng.integers(len(others)))] for _ in range(int(rng.integers(1, 3)))]
    lo, hi = max(6, min(width, height) // 6), max(8, min(width, height) // 3)
    placed, shapes = [], []
    for kind in kinds:
        for _ in range(50):   # rejection sampling of a free place
            w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x1, y1, x1 + w, y1 + h)
            if all(box[2] + 1 < b[0] or b[2] + 1 < box[0] or box[3] + 1 < b[1] or b[3] + 1 < box[1] for b in placed):
                break
        else:
            continue
        placed.append(box)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        mask_img = Image.new("L", (width, height), 0)
        # PIL's shapes include their right / bottom pixel: draw to x2 - 1 so the box is exact.
        xy = (box[0], box[1], box[2] - 1, box[3] - 1)
        getattr(draw, shape)(xy, fill=COLOURS[kind])
        getattr(ImageDraw.Draw(mask_img), shape)(xy, fill=1)
        shapes.append((kind, list(map(float, box)), [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
                       np.asarray(mask_img, dtype=bool)))
    if not any(kind == colour for kind, *_ in shapes):   # no free place for any target (tiny images): draw again
        return scene_shapes(rng, width, height, max_objects, single)
    return image, colour, shapes


def records(task: str, n: int, seed: int, name: str, size: tuple[int, int], max_objects: int,
            policy_size: int) -> list[dict]:
    """`n` rows of `task` (TASKS) in the released column format."""
    if task not in TASKS:
        raise ValueError(f"synthetic task {task!r} not in {TASKS}")
    rng, (width, height) = _rng(seed, name), size
    rows = []
    for i in range(n):
        if task == "detection":
            rows += _detection_rows(i, *scene_shapes(rng, width, height, max_objects), width, height)
            continue
        image, colour, targets = scene(rng, width, height, max_objects, single=task == "rec")
        query = f"the {colour} shape." if len(targets) == 1 else f"the {colour} shapes."
        if task == "train":
            fx, fy = policy_size / width, policy_size / height
            solution = [{"bbox_2d": [scale(b[0], fx), scale(b[1], fy), scale(b[2], fx), scale(b[3], fy)],
                         "point_2d": [scale(p[0], fx), scale(p[1], fy)]} for b, p, _ in targets]
            stored = image.resize((policy_size, policy_size), Image.BICUBIC)
            rows.append({"id": f"{name}-{i:05d}", "problem": query, "solution": json.dumps(solution),
                         "image": {"bytes": _png(stored), "path": f"{i:05d}.png"},
                         "img_height": height, "img_width": width})
            continue
        row = {"image": {"bytes": _png(image), "path": f"{i:05d}.png"}, "text": query, "image_id": f"{i:05d}",
               "ann_id": "0", "img_height": height, "img_width": width}
        if task == "segmentation":
            row["mask"] = np.logical_or.reduce([m for _, _, m in targets]).tolist()
        elif task == "rec":
            row["bbox"] = targets[0][0]
        else:
            row["count"] = len(targets)
        rows.append(row)
    return rows


def _detection_rows(i: int, image: Image.Image, colour: str, shapes: list, width: int, height: int) -> list[dict]:
    present = list(dict.fromkeys(kind for kind, *_ in shapes))
    absent = [c for c in COLOURS if c not in present][:1]
    picture = {"bytes": _png(image), "path": f"{i:05d}.png"}
    return [{"image": picture, "text": f"the {c} shapes.", "image_id": f"{i:05d}", "ann_id": str(CATEGORIES[c]),
             "img_height": height, "img_width": width, "bbox": [box for kind, box, *_ in shapes if kind == c],
             "cat_id": CATEGORIES[c]} for c in present + absent]


def write_source(out: str, task: str, n: int, seed: int, name: str, size, max_objects: int,
                 policy_size: int) -> None:
    """One source's parquet file (atomically)."""
    rows = records(task, n, seed, name, tuple(size), max_objects, policy_size)
    write_parquet(out, pa.Table.from_pylist(rows, schema=SCHEMAS[task]))
