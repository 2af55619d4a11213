"""Crop and region geometry between the three FineRS coordinate frames.

- original: the full-resolution frame (3840x2160 in FineRS-4k);
- GSE: the frame resized to the GSE input (1920x1080 in the paper);
- LPR: a square crop of the original, resized to the LPR input (512 in the paper).

Boxes are [x1, y1, x2, y2] floats with exclusive x2/y2, as everywhere in the project.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def clip_box(box, width: float, height: float) -> tuple[list[float], bool]:
    """The box clipped to the image, and whether anything was clipped."""
    x1, y1, x2, y2 = box
    out = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
           min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    return out, out != [float(v) for v in box]


def _span(lo: float, hi: float, side: float, limit: float, rng: np.random.Generator | None) -> float:
    """Start of a window of `side` in [0, limit] that covers [lo, hi]; random or centred."""
    side = min(side, limit)
    first = max(0.0, hi - side)          # leftmost start that still covers hi
    last = min(lo, limit - side)         # rightmost start that still covers lo
    if first > last:                     # the object is larger than the window: centre it
        return float(min(max((lo + hi - side) / 2, 0.0), limit - side))
    if rng is None:
        return float(min(max((lo + hi - side) / 2, first), last))
    return float(rng.uniform(first, last))


def crop_covering(box, width: int, height: int, side: int, rng: np.random.Generator | None = None) -> list[float]:
    """A side x side window inside the image that contains `box`: at a random offset, or
    centred on the box when rng is None (the 'w/o random input region' ablation)."""
    x0 = _span(box[0], box[2], side, width, rng)
    y0 = _span(box[1], box[3], side, height, rng)
    return [x0, y0, x0 + min(side, width), y0 + min(side, height)]


@dataclass(frozen=True)
class CropFrame:
    """A crop of the original image, shown to the model resized to `input_size` square."""
    crop: tuple[float, float, float, float]
    input_size: int

    @property
    def scale(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.crop
        return self.input_size / (x2 - x1), self.input_size / (y2 - y1)

    def to_input(self, box):
        sx, sy = self.scale
        return [(box[0] - self.crop[0]) * sx, (box[1] - self.crop[1]) * sy,
                (box[2] - self.crop[0]) * sx, (box[3] - self.crop[1]) * sy]

    def to_original(self, box):
        sx, sy = self.scale
        return [box[0] / sx + self.crop[0], box[1] / sy + self.crop[1],
                box[2] / sx + self.crop[0], box[3] / sy + self.crop[1]]

    def point_to_input(self, p):
        sx, sy = self.scale
        return [(p[0] - self.crop[0]) * sx, (p[1] - self.crop[1]) * sy]

    def point_to_original(self, p):
        sx, sy = self.scale
        return [p[0] / sx + self.crop[0], p[1] / sy + self.crop[1]]


def to_gse(box, width: int, height: int, gse_size) -> list[float]:
    sx, sy = gse_size[0] / width, gse_size[1] / height
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def from_gse(box, width: int, height: int, gse_size) -> list[float]:
    sx, sy = gse_size[0] / width, gse_size[1] / height
    return [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]


def region_to_crop(region_gse, width: int, height: int, gse_size, min_side: int) -> tuple[list[float], bool]:
    """The GSE region as a crop of the original: at least min_side on each side, centred on
    the region and kept inside the image. Returns (crop, clipped?)."""
    x1, y1, x2, y2 = from_gse(region_gse, width, height, gse_size)
    (x1, y1, x2, y2), clipped = clip_box([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], width, height)
    side_x = min(max(x2 - x1, min_side), width)
    side_y = min(max(y2 - y1, min_side), height)
    side = max(side_x, side_y)  # square, as LPR was trained on square crops
    side = min(side, width, height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return [x0, y0, x0 + side, y0 + side], clipped
