"""Synthetic drone-like videos with FineRS-4k style annotations, for the embedded default.

A textured terrain (fields, a road) is filmed by a slowly panning camera. Each video
holds a few small static objects of known colour, shape and size; they are drawn with
the mask the annotation importer computes (the FineRS-4k authors' OpenCV fill of the
very vertices written to the JSON), so the ground truth is exact. Questions cover the
three FineRS task types and four attribute categories, and every answer is true of the
drawn frame. The same seed gives the same bytes.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_atomic import atomic_path, write_text
from .masks import bucket_of_percent, polygon_to_rle_opencv, rle_area, rle_decode
from .video import selected, write_video

COLORS = {
    "red": (215, 35, 35), "blue": (35, 75, 220), "yellow": (235, 215, 40),
    "white": (248, 248, 248), "black": (18, 18, 18), "orange": (245, 135, 25),
    "purple": (140, 45, 185),
}
SHAPES = ("square", "circle", "triangle", "diamond")
# Target area as a fraction of the frame, one per FineRS-4k bucket (xxs < 0.017 %,
# xs 0.017-0.055 %, s > 0.055 %), chosen well inside each range.
BUCKET_AREA = {"s": 0.0015, "xs": 0.00035, "xxs": 0.00009}
# FineRS-4k's bucket bounds on the area fraction (xxs < 0.017 %, s > 0.055 %).
BUCKET_RANGE = {"s": (0.00055, 1.0), "xs": (0.00017, 0.00055), "xxs": (0.0, 0.00017)}
DEFAULT_BUCKETS = ("s", "xs", "xxs")
SURFACES = ("road", "grass")
POSITIONS = ("left", "middle", "right")
TASK_TYPES = ("referring", "option", "reasoning")
ATTRIBUTES = ("colors", "shape", "position", "others")


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    bucket: str
    x: float   # centre in world coordinates
    y: float
    size: float  # circumradius in pixels


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        a = r / math.sqrt(2)
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "circle":
        return [(cx + r * math.cos(2 * math.pi * k / 16), cy + r * math.sin(2 * math.pi * k / 16))
                for k in range(16)]
    raise ValueError(f"unknown shape {shape!r}")


# Area and perimeter of each polygon per unit circumradius (r^2 and r).
_AREA = {"square": 2.0, "diamond": 2.0, "triangle": 3 * math.sqrt(3) / 4, "circle": 8 * math.sin(2 * math.pi / 16)}
_PERIMETER = {"square": 4 * math.sqrt(2), "diamond": 4 * math.sqrt(2), "triangle": 3 * math.sqrt(3),
              "circle": 32 * math.sin(math.pi / 16)}


def _radius_for_area(shape: str, area: float) -> float:
    """The circumradius of the polygon of this area (an area-sampling fill, pycocotools)."""
    return math.sqrt(area / _AREA[shape])


def _radius_for_fill(shape: str, area: float) -> float:
    """The circumradius whose OpenCV fill covers about `area` pixels. That fill counts the
    lattice points inside and on the outline, about A + P/2 + 1 by Pick's theorem, so
    solve a r^2 + p r / 2 + 1 = area for A = a r^2 and P = p r."""
    a, half = _AREA[shape], _PERIMETER[shape] / 2
    return (-half + math.sqrt(half * half + 4 * a * max(area - 1, 0.0))) / (2 * a)


def _vertices(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The polygon as written to the JSON (3 decimals), which is also what is drawn."""
    return [(round(x, 3), round(y, 3)) for x, y in shape_polygon(shape, cx, cy, r)]


def _area_percent(area_px: int, width: int, height: int) -> float:
    return round(100 * area_px / (width * height), 6)


def _terrain(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB terrain and a boolean road map."""
    coarse = rng.random((h // 32 + 2, w // 32 + 2))
    field = np.kron(coarse, np.ones((32, 32)))[:h, :w]
    fine = rng.random((h, w))
    base = np.stack([70 + 50 * field, 110 + 60 * field, 45 + 30 * field], -1) + 25 * (fine[..., None] - 0.5)
    road = np.zeros((h, w), bool)
    yy, xx = np.indices((h, w))
    slope = rng.uniform(-0.3, 0.3)
    y0 = rng.uniform(0.35, 0.65) * h
    half = max(8, h // 10)
    road |= np.abs(yy - (y0 + slope * (xx - w / 2))) < half
    base[road] = 118 + 12 * (fine[road, None] - 0.5)
    return np.clip(base, 0, 255).astype(np.uint8), road


def bucket_areas(buckets, bucket_area: dict | None) -> dict[str, float]:
    """Area fraction per bucket (BUCKET_AREA with overrides), each checked against its bounds."""
    areas = {**BUCKET_AREA, **(bucket_area or {})}
    for name in set(buckets) | set(bucket_area or {}):
        if name not in BUCKET_RANGE:
            raise ValueError(f"unknown size bucket {name!r}; buckets are {sorted(BUCKET_RANGE)}")
        lo, hi = BUCKET_RANGE[name]
        if not lo < areas[name] < hi:
            raise ValueError(f"bucket_area {name}={areas[name]} is outside that bucket's range ({lo}, {hi})")
    return areas


def _place_objects(rng, road, n, width, height, pan, buckets, areas) -> list[SceneObject]:
    colors = rng.permutation(list(COLORS))[:n]
    shapes = rng.permutation(SHAPES)[:n]
    objs = []
    h, w = road.shape
    for i in range(n):
        bucket = buckets[i]
        shape = str(shapes[i])
        r = _radius_for_fill(shape, areas[bucket] * width * height)
        want_road = i % 2 == 1
        for _ in range(1000):
            # Always inside the frame whatever the camera offset (0..pan).
            x = rng.uniform(pan + r + 2, width - r - 2)
            y = rng.uniform(pan + r + 2, height - r - 2)
            spaced = all(math.hypot(x - o.x, y - o.y) > 4 * (r + o.size) for o in objs)
            on_road = bool(road[int(y), int(x)])
            if spaced and on_road == want_road and _surface_uniform(road, x, y, r) \
                    and _bucket_at(shape, x, y, r, width, height) == bucket:
                break
        else:
            raise RuntimeError("could not place a synthetic object; enlarge the frame")
        objs.append(SceneObject(str(colors[i]), shape, bucket, x, y, r))
    return objs


def _bucket_at(shape, x, y, r, width, height) -> str:
    """The bucket the importer will give the object: the pixel count of a small fill
    depends on where its vertices fall in their pixels. The camera pans by whole pixels,
    so the count is the same in every frame."""
    rle = polygon_to_rle_opencv(_vertices(shape, x, y, r), width, height)
    return bucket_of_percent(_area_percent(rle_area(rle), width, height))


def _surface_uniform(road, x, y, r) -> bool:
    y0, y1, x0, x1 = int(y - r), int(y + r) + 1, int(x - r), int(x + r) + 1
    patch = road[max(y0, 0):y1, max(x0, 0):x1]
    return bool(patch.all() or not patch.any())


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _question(obj: SceneObject, surface: str, position: str, task: str, attribute: str, rng):
    """(question, answer, options or None) for one object, all true of the frame."""
    name = f"{obj.color} {obj.shape}"
    if attribute == "colors":
        truth, pool, ask = obj.color, list(COLORS), f"What colour is the {obj.shape}?"
        refer = f"Segment the {obj.shape}."
    elif attribute == "shape":
        truth, pool, ask = obj.shape, list(SHAPES), f"What shape is the {obj.color} object?"
        refer = f"Segment the {obj.color} object."
    elif attribute == "position":
        truth, pool = position, list(POSITIONS)
        ask = f"In which part of the image (left, middle or right) is the {name}?"
        refer = f"Segment the {obj.shape} in the {position} part of the image."
    else:
        truth, pool = surface, [*SURFACES, "water", "roof"]
        ask = f"What surface is the {name} lying on?"
        refer = f"Segment the {obj.shape} lying on the {surface}."
    if task == "referring":
        return refer, f"The {name} is found.", None
    if task == "reasoning":
        return ask, truth, None
    distractors = [c for c in pool if c != truth]
    picked = list(rng.permutation(distractors)[: min(3, len(distractors))])
    choices = list(rng.permutation([truth, *picked]))
    letters = _letters(len(choices))
    options = [f"{letter}. {text}" for letter, text in zip(letters, choices)]
    return ask, letters[choices.index(truth)], options


def generate(out_dir: str | Path, annotations_json: str | Path, *, seed: int, n_videos: int,
             width: int, height: int, n_frames: int, fps: int, objects_per_video: int,
             qp: int, stride: int, indices=None, buckets=DEFAULT_BUCKETS, bucket_area: dict | None = None) -> dict:
    """Writes `video_XXX.mp4` files into out_dir and one FineRS-4k JSON. Returns counts.

    Object sizes cycle through `buckets` over all objects of all videos (the default gives
    every video one S, one XS and one XXS object); `bucket_area` overrides a bucket's
    area fraction within its FineRS-4k range."""
    out_dir = Path(out_dir)
    buckets = list(buckets)
    areas = bucket_areas(buckets, bucket_area)
    wanted = frozenset(indices) if indices is not None else None
    pan = max(8, min(width, height) // 12)
    annotations = []
    counter = 0
    for v in range(n_videos):
        rng = np.random.default_rng([seed, v])
        name = f"video_{v:03d}"
        world, road = _terrain(rng, height + pan, width + pan)
        sizes = [buckets[(v * objects_per_video + i) % len(buckets)] for i in range(objects_per_video)]
        objs = _place_objects(rng, road, objects_per_video, width, height, pan, sizes, areas)
        frames = []
        for t in range(n_frames):
            off = int(round(pan * t / max(n_frames - 1, 1)))
            img = world[off:off + height, off:off + width].copy()
            polys = []
            for obj in objs:
                poly = _vertices(obj.shape, obj.x - off, obj.y - off, obj.size)
                rle = polygon_to_rle_opencv(poly, width, height)
                img[rle_decode(rle)] = COLORS[obj.color]
                polys.append((obj, poly, rle))
            frames.append(img)
            if not selected(t, stride, wanted):
                continue
            for k, (obj, poly, rle) in enumerate(polys):
                task = TASK_TYPES[counter % 3]
                attribute = ATTRIBUTES[(counter // 3) % 4]
                counter += 1
                cx = obj.x - off
                position = POSITIONS[min(int(3 * cx / width), 2)]
                surface = "road" if road[int(obj.y), int(obj.x)] else "grass"
                q, a, options = _question(obj, surface, position, task, attribute, rng)
                item = {
                    "id": f"{name}-{t:06d}-{k}",
                    "image_path": f"{name}/{t:06d}.png",
                    "Q": q, "A": a, "Q-type": task, "attribute": attribute,
                    "points": [[x, y] for x, y in poly],
                    "area_percent": _area_percent(rle_area(rle), width, height),
                }
                if options is not None:
                    item["options"] = options
                annotations.append(item)
        with atomic_path(out_dir / f"{name}.mp4") as tmp:
            write_video(tmp, frames, fps=fps, qp=qp)
    write_text(annotations_json, json.dumps({"annotations": annotations}, indent=1) + "\n")
    return {"videos": n_videos, "annotations": len(annotations)}


def synthesize_stage(videos_dir: str, annotations_json: str, synthetic: dict, frames: dict) -> None:
    """Rule synthesize_dataset. Frames selection is shared with extract_frames so that
    exactly the extracted frames are annotated."""
    counts = generate(videos_dir, annotations_json, stride=frames["stride"],
                      indices=frames.get("indices"), **synthetic)
    logging.getLogger(__name__).info("synthesised %(videos)d videos and %(annotations)d annotations", counts)
