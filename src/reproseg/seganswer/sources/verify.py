"""Every image a source's rows point to is decoded once, at import.

The importers only check that image files exist; a truncated or corrupt file would
otherwise surface as an error in the middle of a training run. Here each distinct
image is opened and fully loaded (threads: decoding releases the GIL); rows whose
image fails are `unreadable_image` problems of the report, named by row id, and
fail the import or are dropped under the source's `on_invalid` policy.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ...data.annotations import AnnotationError, Report, report_summary

UNREADABLE = "unreadable_image"


def _problem(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{path}: {exc}"
    return None


def verify_images(table: pa.Table, root: str | os.PathLike, report: Report, on_invalid: str,
                  workers: int | None = None) -> pa.Table:
    """`table` without the rows whose image does not decode (each reported); raises under 'fail'."""
    if table.num_rows == 0:
        return table
    paths = table.column("image_path").to_pylist()
    distinct = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        problems = dict(zip(distinct, pool.map(lambda p: _problem(Path(root) / p), distinct)))
    bad = [problems[p] is not None for p in paths]
    if not any(bad):
        return table
    for rid, path, is_bad in zip(table.column("id").to_pylist(), paths, bad):
        if is_bad:
            report.add(rid, rid, UNREADABLE, f"image does not decode: {problems[path]}")
    if on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return table.filter(pc.invert(pa.array(bad)))
