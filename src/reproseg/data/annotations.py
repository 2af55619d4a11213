"""FineRS-4k annotation JSON -> one validated Parquet table + a validation report.

Every invalid record is named in the report with its problem class; nothing is
dropped silently. With on_invalid="fail" (the default) any invalid record fails the
import; with "drop_and_report" the valid records are kept and the report lists the
rest.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..io_atomic import write_json, write_parquet, write_text
from .masks import (GeometryError, as_polygon, centre_jitter_points, check_polygon,
                    inscribed_circle_points, polygon_to_rle, rle_area, rle_box, rle_decode,
                    size_bucket)

TASKS = {"referring": "IS", "option": "MVQA", "reasoning": "OVQA"}
ATTRIBUTES = ("colors", "shape", "position", "others")
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Za-z])[.):]\s*(.*)$")

# Problem classes named in the report.
BAD_RECORD = "malformed_record"
GEOMETRY = "bad_polygon"
MISSING_IMAGE = "missing_image"
UNKNOWN_TASK = "unknown_task_type"
UNKNOWN_ATTRIBUTE = "unknown_attribute"
OPTIONS = "bad_options"
MISSING_ANSWER = "missing_answer"
DUPLICATE = "duplicate_id"
EMPTY_QUESTION = "empty_question"


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


@dataclass
class Report:
    source: str
    policy: str
    total: int = 0
    problems: list[dict] = field(default_factory=list)

    def add(self, index: int, rid, cls: str, message: str) -> None:
        self.problems.append({"record": index, "id": rid, "class": cls, "message": message})

    @property
    def invalid_records(self) -> set[int]:
        return {p["record"] for p in self.problems}

    def as_dict(self) -> dict:
        return {
            "source": self.source, "policy": self.policy, "total": self.total,
            "invalid": len(self.invalid_records), "valid": self.total - len(self.invalid_records),
            "by_class": dict(sorted(Counter(p["class"] for p in self.problems).items())),
            "problems": self.problems,
        }

    def markdown(self) -> str:
        d = self.as_dict()
        lines = [f"# Annotation validation: {self.source}", "",
                 f"{d['total']} records, {d['valid']} valid, {d['invalid']} invalid "
                 f"(policy: {self.policy}).", ""]
        if self.problems:
            lines += ["| record | id | class | problem |", "|---|---|---|---|"]
            lines += [f"| {p['record']} | {p['id']} | {p['class']} | {p['message']} |" for p in self.problems]
        return "\n".join(lines) + "\n"


def parse_options(options) -> tuple[list[str], list[str]]:
    """(letters, texts) from ["A. red", ...], ["red", ...] or {"A": "red", ...}."""
    if isinstance(options, dict):
        items = [(str(k).strip().upper(), str(v).strip()) for k, v in options.items()]
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


def _check(item, index, rid, lookup, report) -> dict | None:
    """Validates one record; returns its normalised fields, or None if invalid."""
    n_before = len(report.problems)
    if not _nonempty_str(item.get("Q")):
        report.add(index, rid, EMPTY_QUESTION, "question 'Q' is missing or empty")
    task = item.get("Q-type")
    if task not in TASKS:
        report.add(index, rid, UNKNOWN_TASK, f"unknown Q-type {task!r} (expected one of {sorted(TASKS)})")
    attribute = item.get("attribute")
    if attribute not in ATTRIBUTES:
        report.add(index, rid, UNKNOWN_ATTRIBUTE, f"unknown attribute {attribute!r} (expected one of {list(ATTRIBUTES)})")
    answer = item.get("A")
    if task in ("option", "reasoning") and not _nonempty_str(answer):
        report.add(index, rid, MISSING_ANSWER, "answer 'A' is missing or empty")
    letters, texts, letter = [], [], None
    if task == "option":
        if not item.get("options"):
            report.add(index, rid, OPTIONS, "MVQA record without options")
        else:
            try:
                letters, texts = parse_options(item["options"])
                if _nonempty_str(answer):
                    letter = answer_letter(answer, letters, texts)
                    if letter is None:
                        report.add(index, rid, OPTIONS, f"answer {answer!r} is not among the options {item['options']}")
            except ValueError as exc:
                report.add(index, rid, OPTIONS, str(exc))
    image_path = item.get("image_path")
    info = lookup(image_path) if _nonempty_str(image_path) else None
    if info is None:
        report.add(index, rid, MISSING_IMAGE, f"image {image_path!r} not found")
    geometry = None
    if info is not None:
        try:
            poly = as_polygon(item.get("points"))
            check_polygon(poly, info.width, info.height)
            rle = polygon_to_rle(poly, info.width, info.height)
            area = rle_area(rle)
            if area == 0:
                raise GeometryError("degenerate polygon: it covers no pixel")
            geometry = (poly, rle, area)
        except GeometryError as exc:
            report.add(index, rid, GEOMETRY, str(exc))
    if len(report.problems) > n_before:
        return None
    poly, rle, area = geometry
    return {"task": task, "attribute": attribute, "answer": answer if isinstance(answer, str) else "",
            "letters": letters, "texts": texts, "letter": letter, "info": info,
            "poly": poly, "rle": rle, "area": area}


def import_annotations(json_path: str | Path, lookup: Callable[[str], ImageInfo | None], *,
                       on_invalid: str = "fail", point_jitter: float = 0.25, seed: int = 0
                       ) -> tuple[pa.Table, Report]:
    """Reads a FineRS-4k JSON. `lookup(image_path)` gives the image size, or None if the
    image does not exist. Returns the table of valid records and the report; raises
    AnnotationError (after building the report) under on_invalid='fail'."""
    json_path = Path(json_path)
    report = Report(source=str(json_path), policy=on_invalid)
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{json_path}: not readable JSON: {exc}") from exc
    items = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise AnnotationError(f"{json_path}: expected an object with an 'annotations' list")
    report.total = len(items)
    rows, first_seen = [], {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            report.add(index, None, BAD_RECORD, f"record is a {type(item).__name__}, not an object")
            continue
        rid = str(item["id"]) if item.get("id") is not None else f"{json_path.stem}#{index}"
        if rid in first_seen:
            report.add(index, rid, DUPLICATE, f"duplicate id {rid!r} (first at record {first_seen[rid]})")
            continue
        first_seen[rid] = index
        checked = _check(item, index, rid, lookup, report)
        if checked is not None:
            rows.append(_row(item, rid, checked, point_jitter, seed))
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return _to_table(rows), report


def report_summary(report: Report, limit: int = 10) -> str:
    shown = "\n  ".join(f"record {p['record']} (id {p['id']}): {p['class']}: {p['message']}"
                        for p in report.problems[:limit])
    more = len(report.problems) - limit
    return (f"{report.source}: {len(report.invalid_records)} invalid record(s) of {report.total}:\n  "
            + shown + (f"\n  ... and {more} more problem(s) in the validation report" if more > 0 else ""))


def _row(item, rid, c, point_jitter, seed) -> dict:
    info: ImageInfo = c["info"]
    box = rle_box(c["rle"])
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
        "question": item["Q"].strip(),
        "answer": c["answer"].strip(),
        "options": c["texts"],
        "option_letters": c["letters"],
        "answer_option": c["letter"],
        "polygon": [list(p) for p in c["poly"]],
        "rle_counts": c["rle"]["counts"],
        "box": box,
        "area_px": c["area"],
        "area_percent": 100.0 * c["area"] / (info.width * info.height),
        "area_percent_json": float(item["area_percent"]) if isinstance(item.get("area_percent"), (int, float)) else None,
        "size_bucket": size_bucket(c["area"], info.width, info.height),
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
    ("area_percent_json", pa.float64()), ("size_bucket", pa.string()),
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


def lookup_from_directory(root: str | Path) -> Callable[[str], ImageInfo | None]:
    """Released FineRS-4k images under `root`; only the header is read for the size."""
    root = Path(root)

    def lookup(image_path: str) -> ImageInfo | None:
        path = root / image_path
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            return None
        return ImageInfo(w, h, None, None)

    return lookup


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


def import_stage(annotations_json: str, table_out: str, report_json: str, report_md: str,
                 report_log: str, *, manifest: str | None, images_dir: str | None,
                 on_invalid: str, point_jitter: float, seed: int) -> None:
    """Rule import_annotations. The report also goes to the job's log, which Snakemake
    keeps when the job fails, so a failed import still leaves the list of bad records."""
    lookup = lookup_from_manifest(pq.read_table(manifest)) if manifest else lookup_from_directory(images_dir)
    with failed_report_to(report_log):
        table, report = import_annotations(annotations_json, lookup, on_invalid=on_invalid,
                                           point_jitter=point_jitter, seed=seed)
    d = write_reports(report, report_log, report_json, report_md)
    write_parquet(table_out, table)
    logging.getLogger(__name__).info("imported %d of %d records (%d invalid, policy %s)",
                                     d["valid"], d["total"], d["invalid"], on_invalid)
