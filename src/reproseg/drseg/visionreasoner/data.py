"""Importer of VisionReasoner's multi-object training set as released
(`Ricky06662/VisionReasoner_multi_object_7k_840`, Dr. Seg sec. 5.1 and Appendix D).

Its columns (Seg-Zero prepare_dataset/gen_training_dataset.py, read by
verl/utils/rl_dataset.py with prompt_key `problem` and the reward's `solution`):

    id          string
    problem     string, the query
    solution    string, JSON [{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...] in the
                840x840 frame (each coordinate int(v * 840 / side + 0.5) of the original)
    image       Image(): {"bytes", "path"}, the picture already resized to 840x840
    img_height, img_width   int64, the original picture's size

Each record is checked and becomes one row of TABLE_SCHEMA, its image written under
`images_out` as embedded; the validation report (reproseg.data.annotations.Report)
names every bad record, by file, record and field, with one of the classes below or an
image class of reproseg.data.images. Under `on_invalid: fail` a bad record fails the
import after the report is built; under `drop_and_report` it is left out and listed.

A box is degenerate when it has no area (x2 <= x1 or y2 <= y1; the papers' continuous
convention); it is outside the image when a coordinate leaves [0, width] x [0, height]
of the stored image (840 x 840 as released); a point must lie in its own box, borders
included (the reward's own inside test). The authors' code checks none of these.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from reproseg.answers.parsing import MAX_OBJECTS, loads_json, to_box, to_point
from reproseg.data.annotations import BAD_RECORD, DUPLICATE, EMPTY_QUESTION, WHOLE, WRONG_TYPE, Report, type_name
from reproseg.data.images import ImageRef

from .hfdata import FieldProblem, embedded_image, import_rows, native_id, positive_int, write_image, write_import
from .task import POLICY_SIZE, TEMPLATES, messages, read_objects, render_prompt, to_policy

COLUMNS = ("id", "problem", "solution", "image", "img_height", "img_width")

# Problem classes of the report (besides the shared ones imported above).
BAD_SOLUTION = "bad_solution"          # not JSON, not a list of {bbox_2d: 4 numbers, point_2d: 2 numbers}
NO_OBJECTS = "no_objects"              # an empty object list
DEGENERATE_BOX = "degenerate_box"
BOX_OUTSIDE = "box_outside_image"
POINT_OUTSIDE = "point_outside_box"
BAD_SIZE = "bad_image_size"            # img_height / img_width not a positive integer

TABLE_SCHEMA = pa.schema([
    ("id", pa.string()),           # "<source>/<the record's id>"
    ("source", pa.string()),
    ("split", pa.string()),
    ("image_path", pa.string()),   # relative to the import's images folder
    ("width", pa.int64()),         # the stored image (840 x 840 as released)
    ("height", pa.int64()),
    ("orig_width", pa.int64()),    # img_width / img_height: the original picture
    ("orig_height", pa.int64()),
    ("query", pa.string()),        # `problem`, as written
    ("objects", pa.string()),      # JSON object list, in the stored image's pixels
    ("n_objects", pa.int64()),
])


def check_objects(solution: Any, width: int | None, height: int | None) -> tuple[list[dict] | None, list[tuple]]:
    """(objects, problems): the solution's objects, and (class, message) for each problem.
    `width` / `height` of the stored image, None when unknown (then no bounds test)."""
    value = loads_json(solution) if isinstance(solution, (str, bytes)) else solution
    if isinstance(solution, (str, bytes)) and value is None:
        return None, [(BAD_SOLUTION, "solution is not valid JSON")]
    if not isinstance(value, list):
        return None, [(BAD_SOLUTION, f"solution is {type_name(value)}, not a list of objects")]
    if not value:
        return None, [(NO_OBJECTS, "solution lists no object")]
    objects, problems = [], []
    for k, item in enumerate(value):
        box = to_box(item.get("bbox_2d")) if isinstance(item, dict) else None
        point = to_point(item.get("point_2d")) if isinstance(item, dict) else None
        if box is None or point is None:
            problems.append((BAD_SOLUTION, f"object {k}: not {{bbox_2d: 4 numbers, point_2d: 2 numbers}} "
                                           f"(got {str(item)[:80]})"))
            continue
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            problems.append((DEGENERATE_BOX, f"object {k}: box {list(box)} has no area"))
        elif width is not None and height is not None and (x1 < 0 or y1 < 0 or x2 > width or y2 > height):
            problems.append((BOX_OUTSIDE, f"object {k}: box {list(box)} leaves the {width}x{height} image"))
        if not (x1 <= point[0] <= x2 and y1 <= point[1] <= y2):
            problems.append((POINT_OUTSIDE, f"object {k}: point {list(point)} is outside its box {list(box)}"))
        objects.append({"bbox_2d": item["bbox_2d"], "point_2d": item["point_2d"]})
    return (None if problems else objects), problems


def _record(index: int, item: Any, split: str, seen: dict, ordinal: int, images_out: Path, max_pixels: int,
            report: Report, file: str, *, name: str) -> dict | None:
    """One row, or None when the record has a problem (each one reported)."""
    def bad(cls: str, field: str, message: str) -> None:
        report.add(index, rid, cls, message, file=file, field_name=field)

    rid = None
    if not isinstance(item, dict):
        bad(BAD_RECORD, WHOLE, f"row {index} is {type_name(item)}, not a record")
        return None
    native = native_id(item.get("id"))
    if native is None:
        bad(WRONG_TYPE if item.get("id") is not None else BAD_RECORD, "id",
            f"id {str(item.get('id'))[:60]!r} is missing or not text / an integer")
        return None
    rid = f"{name}/{native}"
    if rid in seen:
        bad(DUPLICATE, "id", f"id {native!r} repeats record {seen[rid]}")
        return None
    seen[rid] = index
    n_before = len(report.problems)
    query = item.get("problem")
    if not isinstance(query, str):
        bad(WRONG_TYPE if query is not None else EMPTY_QUESTION, "problem", f"problem is {type_name(query)}, not text")
    elif not query.strip():
        bad(EMPTY_QUESTION, "problem", "problem is empty")
    orig = {}
    for key in ("img_width", "img_height"):
        orig[key] = positive_int(item.get(key))
        if orig[key] is None:
            bad(BAD_SIZE, key, f"{key} is {str(item.get(key))[:40]!r}, not a positive integer")
    width = height = None
    try:
        data, ext, width, height = embedded_image(item.get("image"), max_pixels)
    except FieldProblem as exc:
        bad(exc.cls, "image", str(exc))
    objects, problems = check_objects(item.get("solution"), width, height)
    for cls, message in problems:
        bad(cls, "solution", message)
    if len(report.problems) > n_before:
        return None
    if len(objects) > MAX_OBJECTS:
        report.note(index, rid, "over_120_objects", f"{len(objects)} objects; the rewards read the first "
                    f"{MAX_OBJECTS}", file=file, field_name="solution")
    image_path = f"{ordinal:07d}.{ext}"
    write_image(images_out, image_path, data)
    return {"id": rid, "source": name, "split": split, "image_path": image_path, "width": width, "height": height,
            "orig_width": orig["img_width"], "orig_height": orig["img_height"], "query": query,
            "objects": json.dumps(objects), "n_objects": len(objects)}


def import_training_set(spec: dict, *, images_out: str | Path, on_invalid: str = "fail") -> tuple[pa.Table, Report]:
    """(table, report) of one release. `spec`: name, path (file or folder), split (default
    "train"), max_image_pixels. Every image is decoded once (hfdata.verify_written)."""
    return import_rows(spec, columns=COLUMNS, schema=TABLE_SCHEMA, record=partial(_record, name=spec["name"]),
                       default_split="train", images_out=images_out, on_invalid=on_invalid)


def import_stage(spec: dict, table_out: str, images_out: str, report_json: str, report_md: str,
                 report_log: str) -> None:
    """The import rule: table, images folder and report (hfdata.write_import)."""
    write_import(import_training_set, spec, table_out, images_out, report_json, report_md, report_log)


def training_rows(table: pa.Table, images_root: str, template: str = "visionreasoner",
                  size: int = POLICY_SIZE) -> list[dict]:
    """Engine rows of an imported table: the prompt (TEMPLATES[template]), the image as an
    ImageRef decoded when served, and `gt_objects` in the size x size policy frame. The
    released images are 840 x 840 already, so neither is resampled; another size is
    resized (bicubic) and its objects scaled as the release was built."""
    rows = []
    for rec in table.to_pylist():
        objs = read_objects(json.loads(rec["objects"]))
        same = (rec["width"], rec["height"]) == (size, size)
        if not same:
            objs = to_policy(objs, rec["width"], rec["height"], size)
        rows.append({"id": rec["id"], "prompt": messages(render_prompt(rec["query"], TEMPLATES[template])),
                     "image": ImageRef(str(images_root), rec["image_path"], size=None if same else (size, size)),
                     "gt_objects": objs.as_json()})
    return rows
