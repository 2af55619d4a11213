"""FineRS-4k annotation JSON -> one validated Parquet table + a validation report.

Layouts. `{"annotations": [record, ...]}`, each record with `image_path`, `Q`, `A`,
`Q-type` (option / referring / reasoning), `options` (option only), `points` ([[x, y],
...], the object's polygon), `attribute` and `area_percent`, as the authors' code reads
it (JiazuoYu/Fines: `data["annotations"]`). The release comes as two such files, one
for train and one for test (`import_annotations({"train": ..., "test": ...})`); each
row then keeps the file it came from in `release_split`, which make_splits honours.
One file (the embedded default, a user's own JSON) leaves `release_split` null.

Record ids. A record's own `id` is used when it has one (the synthetic data does);
the released records have none, so theirs is `<file stem>#<index>`: the file name
without its extension and the record's 0-based position in that file's `annotations`
list (`all_annotations_final_test_v5#0`). It is stable as long as the file is; two
files with one stem would give clashing ids and are refused.

Geometry. The mask is the authors' rasterisation (masks.polygon_to_rle_opencv), stored
as COCO RLE; a vertex less than 1 px outside the frame is clipped as their code
effectively does; further out the record is invalid. The size bucket comes from the
record's `area_percent` when it has one (as the authors bucket), else from the mask.

Checks. Every field is checked for presence, type and range before anything uses it: a
field of the wrong JSON type (a list where the question type belongs, NaN, a bool) is a
`wrong_type` problem naming the field; `points` must be [x, y] pairs (or a flat list) of
finite numbers; `image_path` must be a relative path that stays inside the images folder
(absolute paths, "..", and symlinks out of it are `unsafe_path` and never opened); each
released image (`lookup_from_directory`) is decoded once at import, in threads
(reproseg.data.images.check_images), and one that does not decode, is empty, or has
more than `max_image_pixels` pixels is named too. Frames this workflow extracted are
looked up in its manifest (`lookup_from_manifest`).

Every invalid record is named in the report (file, record index, id, field, problem
class, message); nothing is dropped silently. With on_invalid="fail" (the default) any
invalid record fails the import; with "drop_and_report" the valid records are kept and
the report lists the rest.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..io_atomic import write_json, write_parquet, write_text
from .images import (DEFAULT_MAX_IMAGE_PIXELS, MISSING_IMAGE, UNSAFE_PATH, ImageCheck, check_images,
                     relative_path_problem)
from .masks import (GeometryError, as_polygon, bucket_of_percent, centre_jitter_points, check_polygon,
                    clip_to_frame, inscribed_circle_points, polygon_to_rle_opencv, rle_area, rle_box,
                    rle_decode, size_bucket)

TASKS = {"referring": "IS", "option": "MVQA", "reasoning": "OVQA"}
ATTRIBUTES = ("colors", "shape", "position", "others")
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Za-z])[.):]\s*(.*)$")

# Problem classes named in the report.
BAD_RECORD = "malformed_record"
GEOMETRY = "bad_polygon"
UNKNOWN_TASK = "unknown_task_type"
UNKNOWN_ATTRIBUTE = "unknown_attribute"
OPTIONS = "bad_options"
MISSING_ANSWER = "missing_answer"
DUPLICATE = "duplicate_id"
EMPTY_QUESTION = "empty_question"
AREA = "bad_area_percent"
WRONG_TYPE = "wrong_type"   # a field of the wrong JSON type (a list where text belongs, NaN, ...)
WHOLE = "(record)"          # the field of a problem of the whole record (not an object, not JSON)
# Not a problem: a record whose polygon had vertices clipped into the frame.
CLIPPED = "clipped_vertex"
# The files of the release, in the order the rule lists them.
RELEASE_SPLITS = ("train", "test")


class AnnotationError(ValueError):
    """Invalid records under on_invalid='fail'; the message names them."""

    def __init__(self, message: str, report: "Report | None" = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    video: str | None = None
    frame_index: int | None = None


def _entry(index, rid, cls, message, file, field_name) -> dict:
    entry = {"record": index, "id": rid, "class": cls, "message": message}
    # Only the sources that know them (FineRS-4k) name the file and the field, so the
    # other importers' reports keep their shape.
    if file is not None:
        entry["file"] = file
    if field_name is not None:
        entry["field"] = field_name
    return entry


@dataclass
class Report:
    source: str
    policy: str
    total: int = 0
    problems: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    # The file an entry names when add() is given none (a source read from one file).
    file: str | None = None

    def add(self, index: int, rid, cls: str, message: str, *, file: str | None = None,
            field_name: str | None = None) -> None:
        self.problems.append(_entry(index, rid, cls, message, file if file is not None else self.file,
                                    field_name))

    def note(self, index: int, rid, cls: str, message: str, *, file: str | None = None,
             field_name: str | None = None) -> None:
        """A change made to a record that stays valid (vertices clipped into the frame)."""
        self.notes.append(_entry(index, rid, cls, message, file, field_name))

    @property
    def invalid_records(self) -> set[tuple]:
        # Record indices restart in every file, so the file is part of the key.
        return {(p.get("file"), p["record"]) for p in self.problems}

    def as_dict(self) -> dict:
        d = {
            "source": self.source, "policy": self.policy, "total": self.total,
            "invalid": len(self.invalid_records), "valid": self.total - len(self.invalid_records),
            "by_class": dict(sorted(Counter(p["class"] for p in self.problems).items())),
            "problems": self.problems,
        }
        if self.notes:
            d["notes"] = self.notes
        return d

    def markdown(self) -> str:
        d = self.as_dict()
        lines = [f"# Annotation validation: {self.source}", "",
                 f"{d['total']} records, {d['valid']} valid, {d['invalid']} invalid "
                 f"(policy: {self.policy}).", ""]
        if self.problems:
            lines += _entries_table(self.problems)
        if self.notes:
            lines += ["", f"## Notes ({len(self.notes)}, the records stay valid)", ""]
            lines += _entries_table(self.notes)
        return "\n".join(lines) + "\n"


def _entries_table(entries: list[dict]) -> list[str]:
    if not any("file" in p or "field" in p for p in entries):
        return ["| record | id | class | problem |", "|---|---|---|---|",
                *(f"| {p['record']} | {p['id']} | {p['class']} | {p['message']} |" for p in entries)]
    return ["| file | record | id | class | field | problem |", "|---|---|---|---|---|---|",
            *(f"| {p.get('file', '')} | {p['record']} | {p['id']} | {p['class']} | {p.get('field') or ''} "
              f"| {p['message']} |" for p in entries)]


def parse_options(options) -> tuple[list[str], list[str]]:
    """(letters, texts) from ["A. red", ...], ["red", ...] or {"A": "red", ...}."""
    if isinstance(options, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
            raise ValueError("options must map letters to text")
        items = [(k.strip().upper(), v.strip()) for k, v in options.items()]
    elif isinstance(options, list) and all(isinstance(o, str) for o in options):
        items = []
        for i, opt in enumerate(options):
            m = _OPTION_PREFIX.match(opt)
            items.append((m.group(1).upper(), m.group(2).strip()) if m else (chr(65 + i), opt.strip()))
    else:
        raise ValueError("options must be a list of strings or a letter->text mapping")
    letters = [k for k, _ in items]
    if len(set(letters)) != len(letters):
        raise ValueError(f"duplicate option letters {letters}")
    return letters, [t for _, t in items]


def answer_letter(answer: str, letters: list[str], texts: list[str]) -> str | None:
    a = answer.strip()
    m = _OPTION_PREFIX.match(a)
    if a.upper() in letters:
        return a.upper()
    if m and m.group(1).upper() in letters and (not m.group(2) or m.group(2) in texts):
        return m.group(1).upper()
    lowered = [t.lower() for t in texts]
    return letters[lowered.index(a.lower())] if a.lower() in lowered else None


def _nonempty_str(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def type_name(v) -> str:
    """How a report names a value's type: 'a list', 'NaN', 'infinite', 'a bool'..."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, float) and math.isinf(v):
        return "infinite"
    return {type(None): "null", bool: "a bool", int: "an integer", float: "a number", str: "text",
            list: "a list", dict: "an object"}.get(type(v), f"a {type(v).__name__}")


def _area_percent(value) -> float | None:
    """The record's area_percent, None when absent; ValueError when it is not a percentage."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)) or not 0 <= value <= 100:
        raise ValueError(f"area_percent {value!r} is not a number in [0, 100]")
    return float(value)


def _text_field(item, key, bad, *, empty_cls, required=True) -> str | None:
    """item[key] as text: a missing or blank one is an `empty_cls` problem (if required),
    one of another type a wrong_type problem; None unless it is non-empty text."""
    if key not in item or item[key] is None:
        if required:
            bad(empty_cls, key, f"{key!r} is missing")
        return None
    value = item[key]
    if not isinstance(value, str):
        bad(WRONG_TYPE, key, f"{key!r} is {type_name(value)}, not text")
        return None
    if not value.strip():
        if required:
            bad(empty_cls, key, f"{key!r} is empty")
        return None
    return value


def _check_options(options, answer, bad) -> tuple[list, list, str | None]:
    """(letters, texts, answer letter) of an MVQA record; problems go to `bad`."""
    try:
        letters, texts = parse_options(options)
    except ValueError as exc:
        bad(OPTIONS, "options", f"{exc} (got {type_name(options)})")
        return [], [], None
    if len(letters) < 2:
        bad(OPTIONS, "options", f"fewer than 2 options ({len(letters)})")
        return [], [], None
    if any(not t for t in texts):
        bad(OPTIONS, "options", f"an option's text is empty: {options!r}"[:200])
        return [], [], None
    letter = None
    if answer is not None:
        letter = answer_letter(answer, letters, texts)
        if letter is None:
            bad(OPTIONS, "A", f"answer {answer!r} is not among the options {options}"[:300])
    return letters, texts, letter


def _check(item, index, rid, lookup, report, file) -> dict | None:
    """Validates one record, every field for presence, type and range before any is
    used; returns its normalised fields, or None if invalid."""
    n_before = len(report.problems)

    def bad(cls, field_name, message):
        report.add(index, rid, cls, message, file=file, field_name=field_name)

    question = _text_field(item, "Q", bad, empty_cls=EMPTY_QUESTION)
    task = _text_field(item, "Q-type", bad, empty_cls=UNKNOWN_TASK)
    if task is not None and task not in TASKS:
        bad(UNKNOWN_TASK, "Q-type", f"unknown Q-type {task!r} (expected one of {sorted(TASKS)})"[:200])
        task = None
    attribute = _text_field(item, "attribute", bad, empty_cls=UNKNOWN_ATTRIBUTE)
    if attribute is not None and attribute not in ATTRIBUTES:
        bad(UNKNOWN_ATTRIBUTE, "attribute",
            f"unknown attribute {attribute!r} (expected one of {list(ATTRIBUTES)})"[:200])
    # IS answers ("The X is found.") are optional; MVQA and OVQA records need one.
    answer = _text_field(item, "A", bad, empty_cls=MISSING_ANSWER, required=task in ("option", "reasoning"))
    letters, texts, letter = [], [], None
    options = item.get("options")
    if task == "option":
        if options is None or (isinstance(options, (list, dict)) and not options):
            bad(OPTIONS, "options", "MVQA record without options")
        else:
            letters, texts, letter = _check_options(options, answer, bad)
    elif options is not None and not isinstance(options, (list, dict)):
        bad(WRONG_TYPE, "options", f"'options' is {type_name(options)}, not a list or an object")
    area_percent = None
    try:
        area_percent = _area_percent(item.get("area_percent"))
    except ValueError as exc:
        bad(AREA, "area_percent", str(exc))
    image_path = item.get("image_path")
    info = None
    if image_path is None:
        bad(MISSING_IMAGE, "image_path", "'image_path' is missing")
    elif not isinstance(image_path, str):
        bad(WRONG_TYPE, "image_path", f"'image_path' is {type_name(image_path)}, not text")
    elif (why := relative_path_problem(image_path)) is not None:
        bad(UNSAFE_PATH if image_path.strip() else MISSING_IMAGE, "image_path", why)  # never opened
    else:
        found = lookup(image_path)
        if isinstance(found, ImageCheck):
            bad(found.cls, "image_path", found.message)
        elif found is None:
            bad(MISSING_IMAGE, "image_path", f"image {image_path!r} not found")
        else:
            info = found
    geometry = None
    if "points" not in item:
        bad(GEOMETRY, "points", "'points' is missing")
    elif info is not None:
        try:
            raw = as_polygon(item["points"])
            check_polygon(raw, info.width, info.height)
            poly = clip_to_frame(raw, info.width, info.height)
            rle = polygon_to_rle_opencv(poly, info.width, info.height)
            area = rle_area(rle)
            if area == 0:
                raise GeometryError("degenerate polygon: it covers no pixel of the frame")
            geometry = (poly, rle, area, sum(a != b for a, b in zip(raw, poly)))
        except GeometryError as exc:
            bad(GEOMETRY, "points", str(exc))
    else:
        try:  # no frame to check it against, but its form is still checked and named
            as_polygon(item["points"])
        except GeometryError as exc:
            bad(GEOMETRY, "points", str(exc))
    if len(report.problems) > n_before:
        return None
    poly, rle, area, clipped = geometry
    if clipped:
        report.note(index, rid, CLIPPED, f"{clipped} vertex(es) less than 1 px outside the "
                    f"{info.width}x{info.height} image clipped into it", file=file, field_name="points")
    return {"task": task, "attribute": attribute, "question": question, "answer": answer or "",
            "letters": letters, "texts": texts, "letter": letter, "info": info,
            "poly": poly, "rle": rle, "area": area, "area_percent": area_percent}


def _record_id(item: dict, default: str) -> tuple[str | None, str | None]:
    """(the record's id, problem): its own `id` (text or an integer) or `default` without one."""
    rid = item.get("id")
    if rid is None:
        return default, None
    if isinstance(rid, str) and rid.strip():
        return rid, None
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid), None
    return None, f"'id' is {type_name(rid)}{' (empty)' if isinstance(rid, str) else ''}, not text or an integer"


def annotation_files(source) -> dict[str | None, Path]:
    """{None: path} for one JSON file; {"train": path, "test": path} for the release."""
    if isinstance(source, Mapping):
        if set(source) != set(RELEASE_SPLITS):
            raise AnnotationError(f"annotation files {sorted(source)}: expected exactly {list(RELEASE_SPLITS)}")
        files = {split: Path(source[split]) for split in RELEASE_SPLITS}
        stems = [p.stem for p in files.values()]
        if len(set(stems)) != len(stems):
            raise AnnotationError(f"the train and test files share the name {stems[0]!r}: the ids "
                                  "'<file stem>#<index>' of their records would clash")
        return files
    return {None: Path(source)}


def _read_items(json_path: Path) -> list:
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{json_path}: not readable JSON: {exc}") from exc
    items = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise AnnotationError(f"{json_path}: expected an object with an 'annotations' list")
    return items


def import_annotations(source, lookup: Callable[[str], ImageInfo | None], *,
                       on_invalid: str = "fail", point_jitter: float = 0.25, seed: int = 0
                       ) -> tuple[pa.Table, Report]:
    """Reads FineRS-4k JSON: one file (a path) or the release's two ({"train": path,
    "test": path}). `lookup(image_path)` gives the image size, or None if the image does
    not exist. Returns the table of valid records and the report; raises AnnotationError
    (after building the report) under on_invalid='fail'."""
    files = annotation_files(source)
    report = Report(source=", ".join(f"{split}: {path}" if split else str(path) for split, path in files.items()),
                    policy=on_invalid)
    rows, first_seen = [], {}
    items_of = {split: _read_items(json_path) for split, json_path in files.items()}
    prefetch = getattr(lookup, "prefetch", None)
    if prefetch is not None:  # decode every image once, in threads, before the records are checked
        prefetch([item.get("image_path") for items in items_of.values() for item in items
                  if isinstance(item, dict)])
    for split, json_path in files.items():
        items = items_of[split]
        report.total += len(items)
        file = str(json_path)
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                report.add(index, None, BAD_RECORD, f"record is a {type(item).__name__}, not an object",
                           file=file, field_name=WHOLE)
                continue
            rid, problem = _record_id(item, f"{json_path.stem}#{index}")
            if problem is not None:
                report.add(index, None, WRONG_TYPE, problem, file=file, field_name="id")
                continue
            if rid in first_seen:
                first_file, first_index = first_seen[rid]
                where = f"record {first_index}" + (f" of {first_file}" if first_file != file else "")
                report.add(index, rid, DUPLICATE, f"duplicate id {rid!r} (first at {where})", file=file,
                           field_name="id")
                continue
            first_seen[rid] = (file, index)
            checked = _check(item, index, rid, lookup, report, file)
            if checked is not None:
                rows.append(_row(item, rid, checked, split, point_jitter, seed))
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return _to_table(rows), report


def report_summary(report: Report, limit: int = 10) -> str:
    shown = "\n  ".join(f"{p['file'] + ' ' if 'file' in p else ''}record {p['record']} (id {p['id']}): "
                        f"{p['class']}{' [' + p['field'] + ']' if 'field' in p else ''}: {p['message']}"
                        for p in report.problems[:limit])
    more = len(report.problems) - limit
    return (f"{report.source}: {len(report.invalid_records)} invalid record(s) of {report.total}:\n  "
            + shown + (f"\n  ... and {more} more problem(s) in the validation report" if more > 0 else ""))


def _row(item, rid, c, release_split, point_jitter, seed) -> dict:
    info: ImageInfo = c["info"]
    box = rle_box(c["rle"])
    # The authors bucket by the record's area_percent; the mask decides only without one.
    bucket = (bucket_of_percent(c["area_percent"]) if c["area_percent"] is not None
              else size_bucket(c["area"], info.width, info.height))
    return {
        "id": rid,
        "image_path": item["image_path"],
        "video": info.video,
        "frame_index": info.frame_index,
        "width": info.width,
        "height": info.height,
        "task_type": c["task"],
        "task": TASKS[c["task"]],
        "attribute": c["attribute"],
        "question": c["question"].strip(),
        "answer": c["answer"].strip(),
        "options": c["texts"],
        "option_letters": c["letters"],
        "answer_option": c["letter"],
        "polygon": [list(p) for p in c["poly"]],
        "rle_counts": c["rle"]["counts"],
        "box": box,
        "area_px": c["area"],
        "area_percent": 100.0 * c["area"] / (info.width * info.height),
        "area_percent_json": c["area_percent"],
        "size_bucket": bucket,
        "release_split": release_split,
        "points_centre_jitter": centre_jitter_points(box, point_jitter, f"{seed}:{rid}"),
        "points_inscribed": inscribed_circle_points(rle_decode(c["rle"])),
    }


SCHEMA = pa.schema([
    ("id", pa.string()), ("image_path", pa.string()), ("video", pa.string()),
    ("frame_index", pa.int64()), ("width", pa.int64()), ("height", pa.int64()),
    ("task_type", pa.string()), ("task", pa.string()), ("attribute", pa.string()),
    ("question", pa.string()), ("answer", pa.string()), ("options", pa.list_(pa.string())),
    ("option_letters", pa.list_(pa.string())), ("answer_option", pa.string()),
    ("polygon", pa.list_(pa.list_(pa.float64()))), ("rle_counts", pa.string()),
    ("box", pa.list_(pa.float64())), ("area_px", pa.int64()), ("area_percent", pa.float64()),
    ("area_percent_json", pa.float64()), ("size_bucket", pa.string()), ("release_split", pa.string()),
    ("points_centre_jitter", pa.list_(pa.list_(pa.float64()))),
    ("points_inscribed", pa.list_(pa.list_(pa.float64()))),
])


def _to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def lookup_from_manifest(manifest: pa.Table) -> Callable[[str], ImageInfo | None]:
    """Images extracted from videos: image_path is '<video>/<frame:06d>.png'."""
    index = {
        f"{v}/{f}": ImageInfo(int(w), int(h), v, int(i))
        for v, f, w, h, i in zip(*(manifest.column(c).to_pylist()
                                   for c in ("video", "file", "width", "height", "frame_index")))
    }
    return index.get


class DirectoryImages:
    """Released FineRS-4k images under `root`: `prefetch` decodes each image once
    (reproseg.data.images.check_images, in threads); a call gives its ImageInfo, or the
    ImageCheck naming its problem (missing, outside the root, not decoding, empty, more
    than `max_pixels` pixels)."""

    def __init__(self, root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 workers: int | None = None):
        self.root, self.max_pixels, self.workers = Path(root), max_pixels, workers
        self.checks: dict[str, ImageCheck] = {}

    def prefetch(self, paths) -> None:
        todo = [p for p in paths if isinstance(p, str) and p not in self.checks and relative_path_problem(p) is None]
        self.checks.update(check_images(self.root, todo, self.max_pixels, self.workers))

    def __call__(self, image_path: str) -> ImageInfo | ImageCheck:
        if image_path not in self.checks:
            self.prefetch([image_path])
        check = self.checks.get(image_path) or ImageCheck(cls=UNSAFE_PATH, message=relative_path_problem(image_path))
        return ImageInfo(check.width, check.height, None, None) if check.ok else check


def lookup_from_directory(root: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DirectoryImages:
    """Released FineRS-4k images under `root`, each decoded once at import."""
    return DirectoryImages(root, max_pixels)


@contextlib.contextmanager
def failed_report_to(report_log: str):
    """On an AnnotationError, writes its report to `report_log` (the job's log, which
    Snakemake keeps when the job fails, so a failed import still names its bad records)."""
    try:
        yield
    except AnnotationError as exc:
        if exc.report is not None:
            write_json(report_log, exc.report.as_dict())
        raise


def write_reports(report: Report, report_log: str, report_json: str, report_md: str) -> dict:
    """The report as JSON (job log and output) and Markdown; returns its dict."""
    d = report.as_dict()
    write_json(report_log, d)
    write_json(report_json, d)
    write_text(report_md, report.markdown())
    return d


def import_stage(annotations, table_out: str, report_json: str, report_md: str,
                 report_log: str, *, manifest: str | None, images_dir: str | None,
                 on_invalid: str, point_jitter: float, seed: int,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Rule import_annotations: `annotations` is one JSON path or the release's
    {"train": path, "test": path}. Frames extracted by this workflow are looked up in the
    `manifest`; released images under `images_dir` are each decoded once (at most
    `max_image_pixels` pixels). The report also goes to the job's log, which Snakemake
    keeps when the job fails, so a failed import still leaves the list of bad records."""
    lookup = (lookup_from_manifest(pq.read_table(manifest)) if manifest
              else lookup_from_directory(images_dir, max_image_pixels))
    with failed_report_to(report_log):
        table, report = import_annotations(annotations, lookup, on_invalid=on_invalid,
                                           point_jitter=point_jitter, seed=seed)
    d = write_reports(report, report_log, report_json, report_md)
    write_parquet(table_out, table)
    logging.getLogger(__name__).info("imported %d of %d records (%d invalid, %d with clipped vertices, policy %s)",
                                     d["valid"], d["total"], d["invalid"], len(report.notes), on_invalid)
