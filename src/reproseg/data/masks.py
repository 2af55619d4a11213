"""Annotation geometry: polygon -> COCO RLE -> box -> area -> size bucket -> GT points.

Conventions (used everywhere in the project):
- pixel (x, y) covers [x, x+1) x [y, y+1); polygons are in continuous image coordinates;
- boxes are [x1, y1, x2, y2] with exclusive x2/y2, so width = x2 - x1;
- the size bucket follows FineRS-4k: xxs below 0.017 % of the image area, s above
  0.055 %, xs in between, boundaries included in xs; compared in exact integers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt

XXS_MAX_PERCENT_X1000 = 17   # 0.017 %
XS_MAX_PERCENT_X1000 = 55    # 0.055 %


class GeometryError(ValueError):
    """A polygon that cannot be an object mask (the message says why)."""


def as_polygon(points) -> list[tuple[float, float]]:
    """Accepts [[x, y], ...] or a flat [x0, y0, x1, y1, ...] list."""
    if not isinstance(points, (list, tuple)) or not points:
        raise GeometryError("polygon is empty or not a list")
    if all(isinstance(p, (list, tuple)) for p in points):
        if any(len(p) != 2 for p in points):
            raise GeometryError("polygon vertices must be [x, y] pairs")
        flat = [c for p in points for c in p]
    else:
        flat = list(points)
        if len(flat) % 2:
            raise GeometryError("flat polygon has an odd number of coordinates")
    try:
        coords = [float(c) for c in flat]
    except (TypeError, ValueError):
        raise GeometryError("polygon coordinates must be numbers") from None
    if not all(np.isfinite(coords)):
        raise GeometryError("polygon coordinates must be finite")
    return list(zip(coords[0::2], coords[1::2]))


def shoelace_area(poly: list[tuple[float, float]]) -> float:
    x = np.array([p[0] for p in poly])
    y = np.array([p[1] for p in poly])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def check_polygon(poly: list[tuple[float, float]], width: int, height: int) -> None:
    if len(poly) < 3:
        raise GeometryError(f"degenerate polygon: {len(poly)} vertices (need 3+)")
    bad = [(x, y) for x, y in poly if not (0 <= x <= width and 0 <= y <= height)]
    if bad:
        raise GeometryError(f"polygon vertex {bad[0]} outside the {width}x{height} image")
    if shoelace_area(poly) == 0:
        raise GeometryError("degenerate polygon: zero area")


def polygon_to_rle(poly: list[tuple[float, float]], width: int, height: int) -> dict:
    """COCO RLE (counts as str) of the polygon's fill, via pycocotools."""
    flat = [c for p in poly for c in p]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _coco(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_area(rle: dict) -> int:
    return int(mask_utils.area(_coco(rle)))


def rle_box(rle: dict) -> list[float]:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(_coco(rle)))
    return [x, y, x + w, y + h]


def rle_decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(_coco(rle)).astype(bool)


def size_bucket(area_px: int, width: int, height: int) -> str:
    """FineRS-4k bucket of a mask area, exact at 0.017 % and 0.055 %."""
    scaled = area_px * 100 * 1000   # area percent x 1000, times the image area
    image = width * height
    if scaled < XXS_MAX_PERCENT_X1000 * image:
        return "xxs"
    if scaled > XS_MAX_PERCENT_X1000 * image:
        return "s"
    return "xs"


def centre_jitter_points(box: list[float], jitter: float, key: str) -> list[list[float]]:
    """Point 1: the box centre. Point 2: the centre moved by up to `jitter` x box size,
    drawn from a generator seeded by `key` so each record always gets the same point."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    dx, dy = np.random.default_rng(seed).uniform(-jitter, jitter, size=2)
    px = min(max(cx + dx * (x2 - x1), x1), x2)
    py = min(max(cy + dy * (y2 - y1), y1), y2)
    return [[cx, cy], [float(px), float(py)]]


@dataclass(frozen=True)
class Circle:
    x: float
    y: float
    radius: float


def inscribed_circle_points(mask: np.ndarray) -> list[list[float]]:
    """Centres of the two largest disjoint inscribed circles (Seg-Zero's GT points).

    The first is the distance-transform maximum; the second the largest circle whose
    centre p satisfies |p - c1| >= r1 + r(p). Pixel centres are at +0.5. For a mask too
    small to hold two disjoint circles, both points are the first centre.
    """
    if not mask.any():
        raise GeometryError("empty mask has no inscribed circle")
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    first = np.unravel_index(int(np.argmax(dist)), dist.shape)
    r1 = dist[first]
    yy, xx = np.indices(mask.shape)
    gap = np.hypot(yy - first[0], xx - first[1])
    allowed = mask & (gap >= r1 + dist)
    if allowed.any():
        second = np.unravel_index(int(np.argmax(np.where(allowed, dist, -1))), dist.shape)
    else:
        second = first
    return [[first[1] + 0.5, first[0] + 0.5], [second[1] + 0.5, second[0] + 0.5]]
