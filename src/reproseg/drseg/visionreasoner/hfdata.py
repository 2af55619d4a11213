"""Hugging Face dataset files as the VisionReasoner sets are released, read row by row.

A set is a parquet file, a folder of the Hub's parquet shards (`data/<split>-00000-of-0000N.parquet`),
or a `datasets.save_to_disk` folder (`<split>/data-00000-of-0000N.arrow`, Arrow stream
files: what the authors' training scripts load with load_from_disk). An `Image()`
column holds the struct {"bytes": encoded file, "path": original name}; a
`Sequence(Sequence(Value("bool")))` mask is a list of rows.

Rows are read one record batch at a time, so a 7k-image set never sits in memory whole.
import_rows and write_import are the part every importer of this branch shares (the
training set's, reproseg.drseg.visionreasoner.data, and the benchmarks'): the loop over
records, the `on_invalid` policy, and the rule's atomic outputs with the report.
"""
from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from reproseg.data.annotations import (WRONG_TYPE, AnnotationError, Report, failed_report_to, report_summary,
                                       type_name, write_reports)
from reproseg.data.images import (DEFAULT_MAX_IMAGE_PIXELS, IMAGE_TOO_LARGE, MISSING_IMAGE, UNREADABLE_IMAGE,
                                  check_images)
from reproseg.io_atomic import atomic_dir, atomic_path, write_parquet

BATCH_ROWS = 64
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
# PIL names some camera JPEGs "MPO" (JPEG with extra frames); they are still .jpg files.
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tif", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
_SPLIT = re.compile(r"^[A-Za-z0-9_.-]+$")
SIZE_MISMATCH = "image_size_mismatch"   # the class reproseg.seganswer.sources.verify names it with
POLICIES = ("fail", "drop_and_report")


def dataset_files(path: str | Path, split: str) -> list[Path]:
    """The files of `split` under `path` (see the module text); a file is taken as it is."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise AnnotationError(f"{path}: no such dataset file or folder")
    if not _SPLIT.match(split):
        raise AnnotationError(f"{path}: bad split name {split!r}")
    files = sorted(path.rglob(f"{split}-*.parquet")) or sorted(path.glob(f"{split}.parquet"))
    if not files:
        files = sorted((path / split).glob("data-*.arrow"))
    if not files:
        raise AnnotationError(f"{path}: no parquet shard '{split}-*.parquet' and no '{split}/data-*.arrow' file")
    return files


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:   # an Arrow file (random access) rather than a stream
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
                return
            yield from reader
        return
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)


def schema_names(path: Path) -> list[str]:
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            try:
                return list(pa.ipc.open_stream(source).schema.names)
            except pa.ArrowInvalid:
                return list(pa.ipc.open_file(source).schema.names)
    return list(pq.read_schema(path).names)


def iter_rows(path: Path, required: Sequence[str]) -> Iterator[dict]:
    """The rows of one file as dicts; AnnotationError if it is unreadable or lacks a column."""
    try:
        names = schema_names(path)
    except (OSError, pa.ArrowException) as exc:
        raise AnnotationError(f"{path}: not a readable parquet / Arrow file: {exc}") from exc
    missing = [c for c in required if c not in names]
    if missing:
        raise AnnotationError(f"{path}: missing column(s) {missing} (has {names})")
    try:
        for batch in _batches(path):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise AnnotationError(f"{path}: not a readable parquet / Arrow file: {exc}") from exc


# ---------------------------------------------------------------------- field values

class FieldProblem(ValueError):
    """A field that cannot be used; `cls` is the report's problem class."""

    def __init__(self, cls: str, message: str):
        super().__init__(message)
        self.cls = cls


def native_id(value: Any) -> str | None:
    """A record id as text: non-blank text, or an integer in int64 range; else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return str(value)
    return None


def positive_int(value: Any) -> int | None:
    """An image side: an integer > 0 (booleans and floats are not)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2 ** 31:
        return int(value)
    return None


def count_value(value: Any) -> int | None:
    """An object count: an integer >= 0, or a float holding one (pandas writes 3.0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2 ** 31:
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and 0 <= value < 2 ** 31:
        return int(value)
    return None


def embedded_image(value: Any, max_pixels: int) -> tuple[bytes, str, int, int]:
    """(bytes, file extension, width, height) of an `Image()` value: the struct, or bare
    bytes. Only the header is read here; the written file is decoded completely by
    verify_written. Raises FieldProblem."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(value, dict) and data is None:
        raise FieldProblem(MISSING_IMAGE, f"image has no embedded bytes (path {str(value.get('path'))[:80]!r})")
    if not isinstance(data, (bytes, bytearray)):
        raise FieldProblem(WRONG_TYPE, f"image is {type_name(value)}, not an image struct or bytes")
    if not data:
        raise FieldProblem(MISSING_IMAGE, "image bytes are empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as exc:
        raise FieldProblem(IMAGE_TOO_LARGE, f"image is too large: {exc}") from None
    except Exception as exc:  # PIL raises many types on arbitrary bytes; all mean "not an image"
        raise FieldProblem(UNREADABLE_IMAGE, f"image bytes do not decode ({type(exc).__name__})") from None
    if w * h > max_pixels:
        raise FieldProblem(IMAGE_TOO_LARGE, f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
    return bytes(data), _EXTENSIONS.get(fmt or "", (fmt or "img").lower()), w, h


def write_image(images_out: Path, name: str, data: bytes) -> None:
    """The embedded bytes as they are (re-encoding would change the pixels)."""
    with atomic_path(images_out / name) as tmp:
        tmp.write_bytes(data)


def verify_written(table: pa.Table, root: Path, report: Report, on_invalid: str, max_pixels: int,
                   file: str) -> pa.Table:
    """`table` without the rows whose written image does not decode completely or differs
    from the row's width x height (reproseg.data.images.check_images, in threads); each is
    reported by row id and its file deleted. Raises AnnotationError under 'fail'."""
    if table.num_rows == 0:
        return table
    paths = table.column("image_path").to_pylist()
    checks = check_images(root, paths, max_pixels)
    bad = []
    for rid, path, w, h in zip(table.column("id").to_pylist(), paths, table.column("width").to_pylist(),
                               table.column("height").to_pylist()):
        c = checks[path]
        problem = (c.cls, c.message) if not c.ok else (
            (SIZE_MISMATCH, f"image {path!r} decodes to {c.width}x{c.height}, its header said {w}x{h}")
            if (c.width, c.height) != (w, h) else None)
        if problem is not None:
            report.add(rid, rid, problem[0], problem[1], file=file, field_name="image")
            (root / path).unlink(missing_ok=True)
        bad.append(problem is not None)
    if any(bad) and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return table.filter(pc.invert(pa.array(bad))) if any(bad) else table


# ---------------------------------------------------------------------- one import

# record(index, item, split, seen, ordinal, images_out, max_pixels, report, file) -> row
# or None: checks one record, reports each problem, writes its image (data._record,
# benchmarks._record).
RecordFn = Callable[[int, Any, str, dict, int, Path, int, Report, str], "dict | None"]


def import_rows(spec: dict, *, columns: Sequence[str], schema: pa.Schema, record: RecordFn, default_split: str,
                images_out: str | Path, on_invalid: str) -> tuple[pa.Table, Report]:
    """(table, report) of one source: every row of its split's files through `record`;
    under `fail` any problem raises AnnotationError once every record has been checked.
    `spec`: name, path, split (default `default_split`), max_image_pixels."""
    if on_invalid not in POLICIES:
        raise ValueError(f"on_invalid must be one of {POLICIES}, not {on_invalid!r}")
    split = spec.get("split") or default_split
    max_pixels = spec.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    images_out = Path(images_out)
    images_out.mkdir(parents=True, exist_ok=True)
    report = Report(source=spec["name"], policy=on_invalid)
    rows, seen, ordinal = [], {}, 0
    for path in dataset_files(spec["path"], split):
        for index, item in enumerate(iter_rows(path, columns)):
            report.total += 1
            row = record(index, item, split, seen, ordinal, images_out, max_pixels, report, str(path))
            ordinal += 1
            if row is not None:
                rows.append(row)
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    table = pa.Table.from_pylist(rows, schema=schema)
    return verify_written(table, images_out, report, on_invalid, max_pixels, str(spec["path"])), report


def write_import(importer: Callable[..., tuple[pa.Table, Report]], spec: dict, table_out: str, images_out: str,
                 report_json: str, report_md: str, report_log: str) -> None:
    """An import rule's outputs: `importer(spec, images_out=, on_invalid=)`'s table, its
    images folder and the validation report, each written atomically; when the import
    fails only the job's log (the report) is left."""
    on_invalid = spec.get("on_invalid", "fail")
    with atomic_dir(images_out) as tmp_images, failed_report_to(report_log):
        table, report = importer(spec, images_out=tmp_images, on_invalid=on_invalid)
    d = write_reports(report, report_log, report_json, report_md)
    write_parquet(table_out, table)
    logging.getLogger(__name__).info("%s (%s): %d of %d records imported (%d invalid, policy %s)", spec["name"],
                                     spec.get("task", "train"), table.num_rows, d["total"], d["invalid"], on_invalid)
