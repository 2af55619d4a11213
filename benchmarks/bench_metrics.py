"""Time gIoU / cIoU over a FineRS-4k-sized test set: 2,427 masks at 3840x2160.

GT masks are random polygons of FineRS-4k object sizes (about 300 to 20,000 px, so all
three buckets occur); predictions are the same polygons moved by a few pixels, and 5 %
are missing. Masks go in as RLE dicts with str counts in a pyarrow table, as the
pipeline stores them. Only the metric call is timed. Target: under 10 s on 2 cores.

    .venv/bin/python benchmarks/bench_metrics.py [--n 2427] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from reproseg.data.masks import size_bucket
from reproseg.metrics.segmentation import segmentation_metrics

WIDTH, HEIGHT = 3840, 2160


def polygon(rng: np.random.Generator, dx: float = 0.0, dy: float = 0.0, shape=None) -> tuple[list[float], tuple]:
    """A star-shaped polygon; `shape` re-uses the same one, moved by (dx, dy)."""
    if shape is None:
        k = int(rng.integers(6, 16))
        cx, cy = rng.uniform(100, WIDTH - 100), rng.uniform(100, HEIGHT - 100)
        radius = rng.uniform(10, 80)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = radius * rng.uniform(0.6, 1.0, k)
        shape = (cx, cy, angles, radii)
    cx, cy, angles, radii = shape
    xs = cx + dx + radii * np.cos(angles)
    ys = cy + dy + radii * np.sin(angles)
    return np.column_stack([xs, ys]).ravel().tolist(), shape


def to_rle(flat: list[float]) -> dict:
    r = mask_utils.merge(mask_utils.frPyObjects([flat], HEIGHT, WIDTH))
    return {"size": [HEIGHT, WIDTH], "counts": r["counts"].decode("ascii")}


def build(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        gt_poly, shape = polygon(rng)
        gt = to_rle(gt_poly)
        pred = None
        if rng.random() >= 0.05:
            pred = to_rle(polygon(rng, *rng.uniform(-6, 6, 2), shape=shape)[0])
        area = int(mask_utils.area({"size": gt["size"], "counts": gt["counts"].encode()}))
        rows.append({"id": f"bench-{i}", "gt_rle": gt, "pred_rle": pred,
                     "size_bucket": size_bucket(area, WIDTH, HEIGHT)})
    return pa.Table.from_pylist(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2427)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    table = build(args.n)
    print(f"built {args.n} GT + prediction masks at {WIDTH}x{HEIGHT} in {time.perf_counter() - t0:.1f} s")

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        scores = segmentation_metrics(table)
        times.append(time.perf_counter() - t0)
    for group, s in scores.items():
        print(f"  {group:>3}: n={s.n:5d}  gIoU={100 * s.giou:5.1f}  cIoU={100 * s.ciou:5.1f}  "
              f"missing={s.n_missing}")
    best, median = min(times), float(np.median(times))
    print(f"metric time: best {best:.2f} s, median {median:.2f} s over {args.repeat} runs "
          f"({args.n / median:.0f} masks/s at the median); goal < 10 s")


if __name__ == "__main__":
    main()
