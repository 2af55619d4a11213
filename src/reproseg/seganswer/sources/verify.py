"""Every image a source's rows point to is decoded once, at import.

The importers check each record's fields and that its image path stays inside the
image root; here each distinct image is opened and fully loaded, in threads
(reproseg.data.images.check_images, the check the FineRS-4k import runs too). A row
whose image is missing, does not decode, is empty, has more pixels than the source's
`max_image_pixels`, or (referring rows) differs in size from the width and height its
record gives, is a problem of the report named by row id, and fails the import or is
dropped under the source's `on_invalid` policy. A path that leaves the root is never
opened.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ...data.annotations import AnnotationError, Report, report_summary
from ...data.images import DEFAULT_MAX_IMAGE_PIXELS, check_images

UNREADABLE = "unreadable_image"
SIZE_MISMATCH = "image_size_mismatch"


def verify_images(table: pa.Table, root: str | os.PathLike, report: Report, on_invalid: str,
                  workers: int | None = None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  file: str | None = None, remove_bad: bool = False) -> pa.Table:
    """`table` without the rows whose image fails (each reported); raises under 'fail'.
    `remove_bad`: the import wrote these images (they were embedded in its file), so the
    files of the rows left out are deleted with them."""
    if table.num_rows == 0:
        return table
    paths = table.column("image_path").to_pylist()
    checks = check_images(root, paths, max_pixels, workers)
    sizes = (zip(table.column("width").to_pylist(), table.column("height").to_pylist())
             if {"width", "height"} <= set(table.column_names) else [None] * len(paths))
    bad = []
    for rid, path, size in zip(table.column("id").to_pylist(), paths, sizes):
        check = checks[path]
        problem = None
        if not check.ok:
            problem = (check.cls, check.message)
        elif size is not None and tuple(size) != (check.width, check.height):
            problem = (SIZE_MISMATCH, f"image {path!r} is {check.width}x{check.height}, its record says "
                                      f"{size[0]}x{size[1]}")
        if problem is not None:
            report.add(rid, rid, problem[0], problem[1], file=file, field_name="image_path")
        bad.append(problem is not None)
    if not any(bad):
        return table
    if remove_bad:
        for path, is_bad in zip(paths, bad):
            if is_bad and checks[path].cls != "unsafe_path":
                (Path(root) / path).unlink(missing_ok=True)
    if on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return table.filter(pc.invert(pa.array(bad)))
