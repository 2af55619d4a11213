"""Annotation geometry: polygon -> COCO RLE -> box -> area -> size bucket -> GT points.

Conventions (used everywhere in the project):
- pixel (x, y) covers [x, x+1) x [y, y+1);
- FineRS-4k masks are rasterised as the authors' code does (JiazuoYu/Fines, every
  `get_mask_from_points`): the vertices are cast to int32 (truncated towards zero), then
  OpenCV's `polylines` (closed, thickness 1) and `fillPoly` draw into the frame, which
  clips what falls outside. So a vertex is a pixel index and the outline's pixels are
  part of the mask: the square with corners (10, 20) and (20, 25) covers 11 x 6 pixels,
  where pycocotools' area-sampling fill (`polygon_to_rle`, for COCO-format polygons)
  covers 10 x 5;
- a vertex less than 1 px outside the frame is clipped (its truncated pixel index is the
  same, or off the frame and clipped by OpenCV, as in the authors' code); further out
  the polygon is invalid;
- masks are stored as COCO RLE, whichever rasteriser made them;
- boxes are [x1, y1, x2, y2] with exclusive x2/y2, so width = x2 - x1;
- the size bucket follows FineRS-4k: xxs below 0.017 % of the image area, s above
  0.055 %, xs in between, boundaries included in xs. From a record's `area_percent`
  it is compared as the authors' evaluation compares it (floats, `bucket_of_percent`);
  from a mask area, in exact integers (`size_bucket`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt

XXS_MAX_PERCENT_X1000 = 17   # 0.017 %
XS_MAX_PERCENT_X1000 = 55    # 0.055 %
# The same bounds as the authors' evaluation writes them (XXS_TH, S_TH), in percent.
XXS_MAX_PERCENT = 0.017
XS_MAX_PERCENT = 0.055
# A vertex closer than this to the frame is clipped, not rejected.
FRAME_SLACK_PX = 1.0


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
    if not all(isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool) for c in flat):
        raise GeometryError("polygon coordinates must be numbers")
    try:
        coords = [float(c) for c in flat]
    except OverflowError:  # an integer too large for a float
        raise GeometryError("polygon coordinates must be finite") from None
    if not all(np.isfinite(coords)):
        raise GeometryError("polygon coordinates must be finite")
    return list(zip(coords[0::2], coords[1::2]))


def shoelace_area(poly: list[tuple[float, float]]) -> float:
    x = np.array([p[0] for p in poly])
    y = np.array([p[1] for p in poly])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def check_polygon(poly: list[tuple[float, float]], width: int, height: int) -> None:
    """Raises GeometryError for fewer than 3 vertices, a vertex 1 px or more outside the
    frame, or zero area. A vertex less than 1 px outside passes (clip_to_frame)."""
    if len(poly) < 3:
        raise GeometryError(f"degenerate polygon: {len(poly)} vertices (need 3+)")
    slack = FRAME_SLACK_PX
    bad = [(x, y) for x, y in poly if not (-slack < x < width + slack and -slack < y < height + slack)]
    if bad:
        raise GeometryError(f"polygon vertex {bad[0]} is {slack:g} px or more outside the {width}x{height} image")
    if shoelace_area(poly) == 0:
        raise GeometryError("degenerate polygon: zero area")


def clip_to_frame(poly: list[tuple[float, float]], width: int, height: int) -> list[tuple[float, float]]:
    """Vertices clamped to [0, width] x [0, height]. For a vertex less than 1 px outside,
    the int32 truncation of polygon_to_rle_opencv gives the same pixel index either way
    (-0.5 -> 0; width + 0.5 -> width, a column OpenCV clips), so the mask is unchanged."""
    return [(min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))) for x, y in poly]


def polygon_to_rle(poly: list[tuple[float, float]], width: int, height: int) -> dict:
    """COCO RLE (counts as str) of the polygon's fill, via pycocotools: COCO-format
    polygons (the SegAnswer sources). FineRS-4k uses polygon_to_rle_opencv."""
    flat = [c for p in poly for c in p]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def fill_polygon_opencv(poly, width: int, height: int) -> np.ndarray:
    """The FineRS-4k authors' mask of a polygon ([[x, y], ...] or (x, y) pairs), as a
    bool (height, width) array: int32-truncated vertices, a 1-px closed outline, then
    the fill, drawn by OpenCV (which clips to the frame)."""
    pts = np.asarray(poly, dtype=np.float64).reshape(1, -1, 2).astype(np.int32)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.polylines(mask, pts, True, 1, 1)
    cv2.fillPoly(mask, pts, 1)
    return mask.astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE (counts as str) of a bool (height, width) mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def polygon_to_rle_opencv(poly, width: int, height: int) -> dict:
    """COCO RLE of fill_polygon_opencv: the FineRS-4k ground truth."""
    return mask_to_rle(fill_polygon_opencv(poly, width, height))


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


@dataclass(frozen=True)
class MaskCrop:
    """A crop of an RLE-coded mask, decoded by `decode()` when used: a training example holds
    this (a few hundred bytes) instead of the decoded mask of its whole frame."""
    size: tuple[int, int]              # (height, width) of the whole mask
    counts: str | bytes
    crop: tuple[int, int, int, int]    # (x0, y0, x1, y1)

    def decode(self) -> np.ndarray:
        x0, y0, x1, y1 = self.crop
        return np.ascontiguousarray(rle_decode({"size": list(self.size), "counts": self.counts})[y0:y1, x0:x1])


def size_bucket(area_px: int, width: int, height: int) -> str:
    """FineRS-4k bucket of a mask area, exact at 0.017 % and 0.055 % (for records
    without an `area_percent`)."""
    scaled = area_px * 100 * 1000   # area percent x 1000, times the image area
    image = width * height
    if scaled < XXS_MAX_PERCENT_X1000 * image:
        return "xxs"
    if scaled > XS_MAX_PERCENT_X1000 * image:
        return "s"
    return "xs"


def bucket_of_percent(area_percent: float) -> str:
    """FineRS-4k bucket of a record's `area_percent` (mask area / image area x 100), as
    the authors' evaluation assigns it: s above 0.055, xxs below 0.017, else xs."""
    if area_percent > XS_MAX_PERCENT:
        return "s"
    if area_percent < XXS_MAX_PERCENT:
        return "xxs"
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
