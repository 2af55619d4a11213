"""Importers for SegAnswer's question data, each from its public file format, into the
normalised question table (`tables.QUESTION_SCHEMA`).

Formats
-------
V* Bench (`import_vstar`; spec: name, file, images, split="test")
    `test_questions.jsonl`, one object per line: `image` (path under the benchmark
    folder), `text` (the question, one "(A) ..." line per option, then an answer-format
    instruction line), `category`, `question_id`, `label` (the answer letter). The
    question is the text before the first option line; whatever follows the last
    option line is the instruction and is dropped. Copies that put the options inline,
    "What is the colour of the bag? (A) red (B) blue", are read from the first line
    holding an uppercase "(X)" marker (after whitespace or at the line's start): the
    question is the text before its first marker, each option runs to the next marker,
    the last to the end of that line, less a trailing "Answer with the option's letter
    ..." instruction. A record with its own `options` field (a list, "A. text" items, or
    a letter -> text map) takes its options from it; the question is then `text` (or
    `question`) up to any option lines / markers, less a trailing instruction.
HR-Bench 4K / 8K (`import_hrbench`; spec: name, file, split="test"; needs images_out)
    `hr_bench_4k.tsv` / `hr_bench_8k.tsv`, or a .parquet with the same columns: index,
    question, answer (a letter), category, optional cycle_category, A..D, image (a
    base64 JPEG/PNG). The images are embedded, so each is decoded and written byte for
    byte (never re-encoded) to `images_out/{index}.{ext of the decoded format}`;
    image_path is relative to images_out. category and cycle_category are kept as
    given (the official score is per category, averaged over cycles:
    seganswer.evaluate.hrbench_accuracy); a file with a cycle_category column must
    fill it on every row (a blank is malformed), a file without one gets null.
VisualCoT (`import_visualcot`; spec: name, file, images, split="train")
    LLaVA-style JSON list (or JSONL) of {id, image, conversations}: human question +
    bounding-box instruction, gpt box, human "<image>", gpt answer. `image` is a path
    or [original, crop of the original]; the first is used, so the list is not a
    multi-image record. Only the question and the final answer are kept (open
    questions): SegAnswer predicts its own region, the box turn is ignored. Also the
    metadata JSONL form with plain question / answer / image fields. category is the
    record's sub-dataset: its `dataset` field, else the folder in "cot/<dataset>/...",
    else null.
    Ids: f"{name}/{sub-dataset}/{question_id}" (`question_id`, else `id`, else the
    record's position in the file), or f"{name}/{native id}" for a record with no
    sub-dataset. The release's conversion script (tools/convert_data_to_llava_format.py)
    numbers question_id from 0 in each sub-dataset's file, so viscot_363k.json, their
    concatenation, repeats every id once per sub-dataset; the `dataset` field comes
    first because "textcap" records share the cot/textvqa image folder with "textvqa"
    ones and are numbered apart from them.
Generic QA table (`import_qa_table`; spec: name, file, images, split="train", and the
    optional column names question_key, answer_key, image_key, options_key, id_key,
    category_key)
    RL data such as ViRL39K as .parquet, .jsonl or a .json list: question, answer,
    image (a path or a one-element list), optionally options. A `\\boxed{...}` answer
    wrapper is removed. With options the row is multiple choice and the answer is
    mapped to its letter; without, it is open.

Choices
-------
* Ids are f"{name}/{native id}" (VisualCoT: namespaced by sub-dataset, above). The
  benchmarks must carry their own id (question_id, index) because predictions are
  matched back to the benchmark by it, so a record without one is malformed; the
  training sets fall back to the record's position.
* Multiple choice: option letters, sorted, must be exactly A, B, C, ... (downstream
  letters the options by position), at least two, none empty, and the answer must map
  to one of them (`answer_letter`: the letter, "A. text" or the text itself).
* Every field a row is built from is checked for presence and type before it is used,
  and each problem names the file, the record (index and id) and the field: a field of
  the wrong type (a list where text belongs, a bool, NaN or an infinite number) is a
  `wrong_type` problem, not a missing or silently dropped value. Ids are text or
  integers (an integral float counts as its integer: pandas writes integer columns with
  gaps as floats); answers may be numbers (their text). NaN means "absent" only in
  HR-Bench's option columns (pandas writes a missing option as NaN).
* Here an image exists when `Path.is_file()` under spec["images"]; `verify.py` then
  decodes each image of the imported rows once (at most the spec's `max_image_pixels`
  pixels). An absolute path, "..", or one that resolves through a symlink outside the
  image root is an `unsafe_path` problem and is never opened.
* "<image>" placeholder tokens are removed from questions: SegAnswer's prompt places
  the single image itself.
* Every problem of a record is reported, not only the first. Of duplicate ids the
  first record is kept and the later ones reported.
* HR-Bench images are written as the records are read, and only for records that pass
  every check: the 8K file is GBs, so decoded images are not held until the end. Under
  "fail" an earlier valid record's image may already be written when the import
  raises; the rule's output folder goes with the failed job.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
import string
from pathlib import Path, PurePosixPath
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ...data.annotations import (WHOLE, WRONG_TYPE, AnnotationError, Report, answer_letter, parse_options,
                                 report_summary, type_name)
from ...data.images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_TOO_LARGE, UNSAFE_PATH, is_file, path_problem
from ...io_atomic import atomic_path
from .tables import question_table

# Problem classes named in the report.
MALFORMED_RECORD = "malformed_record"
MISSING_IMAGE = "missing_image"
EMPTY_QUESTION = "empty_question"
MISSING_ANSWER = "missing_answer"
BAD_OPTIONS = "bad_options"
DUPLICATE_ID = "duplicate_id"
MULTI_IMAGE = "multi_image"  # SegAnswer's prompt holds one image

POLICIES = ("fail", "drop_and_report")

_IMAGE_TOKEN = re.compile(r"<image>")
_VSTAR_OPTION = re.compile(r"^\(([A-Za-z])\)\s?(.*)$")
# An inline option marker: "(A)" at the line's start or after whitespace, then whitespace or the end.
_INLINE_MARKER = re.compile(r"(?:(?<=\s)|^)\(([A-Z])\)(?=\s|$)")
_VSTAR_INSTRUCTION = re.compile(r"\s*Answer with the option'?s letter\b.*$", re.IGNORECASE)
_BOX_INSTRUCTION = re.compile(
    r"\s*Please provide the bounding box coordinate of the region that can help you "
    r"answer the question better\.?", re.IGNORECASE)
_BOXED = "\\boxed{"
# PIL names some camera JPEGs "MPO" (JPEG with extra frames); they are still .jpg files.
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tif"}


class _NotJSON:
    """A JSONL line that did not parse; kept so it is reported with its line number."""

    def __init__(self, error: str):
        self.error = error


# ---------------------------------------------------------------------------- common

def _start(spec: dict, on_invalid: str, default_split: str) -> tuple[str, str, Report]:
    if on_invalid not in POLICIES:
        raise ValueError(f"on_invalid must be one of {POLICIES}, not {on_invalid!r}")
    name = spec.get("name")
    if not _nonempty_str(name):
        raise ValueError("spec needs a non-empty 'name' (the source name)")
    return name, spec.get("split") or default_split, Report(source=name, policy=on_invalid,
                                                            file=str(spec["file"]) if spec.get("file") else None)


def _require(spec: dict, key: str) -> Path:
    if not spec.get(key):
        raise ValueError(f"spec for source {spec.get('name')!r} needs {key!r}")
    return Path(spec[key])


def _finish(rows: list[dict], report: Report, on_invalid: str) -> tuple[pa.Table, Report]:
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return question_table(rows), report


def _nonempty_str(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _empty(v) -> bool:
    """None, NaN (pandas writes missing options as NaN) or blank."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _text(v) -> str | None:
    """A field as stripped text; numbers (JSON answers like 3) become their text."""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]:
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return str(v)
    return None


def _field(index, rid, item: dict, key: str, report: Report, *, numbers: bool = True,
           missing: str | None = None, missing_message: str | None = None) -> str | None:
    """item[key] as stripped text (numbers as their text if `numbers`), None when absent,
    blank or of the wrong type. A wrong type is a wrong_type problem; an absent or
    blank field is a `missing` problem when `missing` names its class."""
    v = item.get(key)
    text = _text(v) if numbers else (v.strip() if isinstance(v, str) else None)
    if text is None and v is not None:
        report.add(index, rid, WRONG_TYPE, f"{key!r} is {type_name(v)}, not text", field_name=key)
        return None
    if not text:
        if missing is not None:
            report.add(index, rid, missing, missing_message or f"{key!r} is missing or empty", field_name=key)
        return None
    return text


def _clean_question(q: str) -> str:
    return _IMAGE_TOKEN.sub("", q).strip()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not readable: {exc}") from exc


def _jsonl_records(path: Path) -> list[tuple[str, object]]:
    """(where, object) per non-blank line; a line that is not JSON becomes a _NotJSON."""
    records = []
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which
    # splitlines() would take as a line break.
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except ValueError as exc:
            records.append((f"line {lineno}", _NotJSON(str(exc))))
    return records


def _json_list_records(path: Path) -> list[tuple[str, object]]:
    try:
        doc = json.loads(_read_text(path))
    except ValueError as exc:
        raise AnnotationError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(doc, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got a {type(doc).__name__}")
    return [(f"record {i}", item) for i, item in enumerate(doc)]


def _object_or_report(index: int, where: str, item, report: Report) -> bool:
    """True if `item` is a JSON object; otherwise reports it as malformed."""
    if isinstance(item, _NotJSON):
        report.add(index, None, MALFORMED_RECORD, f"{where}: not valid JSON: {item.error}", field_name=WHOLE)
        return False
    if not isinstance(item, dict):
        report.add(index, None, MALFORMED_RECORD, f"{where}: record is {type_name(item)}, not an object",
                   field_name=WHOLE)
        return False
    return True


def _id_text(v) -> tuple[str | None, str | None]:
    """(an id field as text, why it cannot be an id): text or an integer; an integral float
    is its integer (pandas writes integer columns with gaps as floats); None or blank: (None, None)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None, None
    if isinstance(v, str):
        return v.strip(), None
    if isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]:
        return str(v), None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and _INT64[0] <= v <= _INT64[1]:
        return str(int(v)), None
    return None, f"is {type_name(v)}, not text or a 64-bit integer"


def _native_id(item: dict, keys: tuple[str, ...], index: int | None = None, report: Report | None = None,
               where: str = ""):
    """The record's own id: the first of `keys` it holds. One of the wrong type is reported
    (with `report`) as a wrong_type problem of the record, and the id is then None."""
    for key in keys:
        text, problem = _id_text(item.get(key))
        if problem is not None:
            if report is not None:
                report.add(index, None, WRONG_TYPE, f"{where + ': ' if where else ''}{key!r} {problem}",
                           field_name=key)
            return _BAD_ID
        if text is not None:
            return text
    return None


_BAD_ID = object()  # _native_id's answer for an id of the wrong type (already reported)
_INT64 = (-2**63, 2**63 - 1)


def _claim_id(index: int, rid: str, seen: dict, report: Report) -> bool:
    if rid in seen:
        report.add(index, rid, DUPLICATE_ID, f"duplicate id {rid!r} (first at record {seen[rid]})",
                   field_name="id")
        return False
    seen[rid] = index
    return True


def _single_image(value) -> tuple[str | None, str | None, str | None]:
    """(path, problem class, message) for a field that is a path or a list of paths."""
    if isinstance(value, list):
        if len(value) > 1:
            return None, MULTI_IMAGE, f"record has {len(value)} images; SegAnswer's prompt holds one"
        value = value[0] if value else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, MISSING_IMAGE, "record has no image"
    if not isinstance(value, str):
        return None, WRONG_TYPE, f"image field is {type_name(value)}, not a path"
    return value.strip(), None, None


def _image_problem(root: Path, rel: str) -> tuple[str, str] | None:
    """(class, message) of an image path that is not a file inside `root`; nothing is opened."""
    why = path_problem(root, rel)
    if why is not None:
        return UNSAFE_PATH, why
    if not is_file(root / rel):
        return MISSING_IMAGE, f"image {rel[:200]!r} not found under {root}"
    return None


def _check_image(index, rid, value, root: Path, report: Report, key: str = "image") -> str | None:
    path, cls, msg = _single_image(value)
    if cls is None and (problem := _image_problem(root, path)) is not None:
        cls, msg = problem
    if cls is not None:
        report.add(index, rid, cls, msg, field_name=key)
        return None
    return path


def _choices(letters: list[str], texts: list[str], answer: str | None
             ) -> tuple[list[str], str | None, str | None]:
    """(option texts in letter order, answer letter, problem message or None)."""
    letters = [str(l).strip().upper() for l in letters]
    if len(set(letters)) != len(letters):
        return [], None, f"duplicate option letters {letters}"
    if len(letters) < 2:
        return [], None, f"fewer than 2 options ({len(letters)})"
    pairs = sorted(zip(letters, texts))
    letters, texts = [l for l, _ in pairs], [t for _, t in pairs]
    if letters != list(string.ascii_uppercase[:len(letters)]):
        return [], None, f"option letters {letters} are not A, B, C, ... in sequence"
    if any(_empty(t) for t in texts):
        return [], None, f"empty option text among {letters}"
    if answer is None:  # missing_answer is reported by the caller
        return texts, None, None
    letter = answer_letter(answer, letters, texts)
    if letter is None:
        return [], None, f"answer {answer!r} is not one of the options {letters}"
    return texts, letter, None


def _row(rid, name, split, image_path, question, answer, options, category, cycle_category=None) -> dict:
    return {"id": rid, "source": name, "split": split, "image_path": image_path,
            "question": question, "answer": answer, "options": options,
            "task": "MVQA" if options is not None else "OVQA", "category": category,
            "cycle_category": cycle_category}


# ------------------------------------------------------------------------------ V*

def _split_vstar_text(text: str) -> tuple[str, list[str], list[str], str | None]:
    """(question, letters, texts, problem) from the question + "(A) ..." lines, or
    from one line with the options inline."""
    lines = text.split("\n")
    option_at = [i for i, line in enumerate(lines) if _VSTAR_OPTION.match(line.strip())]
    if not option_at:
        return _split_inline_options(lines)
    first, last = option_at[0], option_at[-1]
    if len(option_at) != last - first + 1:
        return "", [], [], "a line between the option lines is not an option"
    letters, texts = [], []
    for line in lines[first:last + 1]:
        m = _VSTAR_OPTION.match(line.strip())
        letters.append(m.group(1).upper())
        texts.append(m.group(2).strip())
    # lines[last + 1:] is the answer-format instruction: dropped.
    return "\n".join(lines[:first]).strip(), letters, texts, None


def _split_inline_options(lines: list[str]) -> tuple[str, list[str], list[str], str | None]:
    """As _split_vstar_text for "Question? (A) red (B) blue" on one line; the lines after
    it are the instruction (dropped). No marker: the whole text, less a trailing
    instruction, is the question."""
    for i, line in enumerate(lines):
        marks = list(_INLINE_MARKER.finditer(line))
        if not marks:
            continue
        letters = [m.group(1) for m in marks]
        ends = [m.start() for m in marks[1:]] + [len(line)]
        texts = [line[m.end():end].strip() for m, end in zip(marks, ends)]
        texts[-1] = _VSTAR_INSTRUCTION.sub("", texts[-1]).strip()
        question = "\n".join(lines[:i] + [line[:marks[0].start()]]).strip()
        return question, letters, texts, None
    return _VSTAR_INSTRUCTION.sub("", "\n".join(lines)).strip(), [], [], None


def import_vstar(spec: dict, *, on_invalid: str = "fail", images_out: Path | None = None
                 ) -> tuple[pa.Table, Report]:
    """V* Bench test_questions.jsonl -> multiple-choice question rows."""
    name, split, report = _start(spec, on_invalid, "test")
    path, root = _require(spec, "file"), _require(spec, "images")
    records = _jsonl_records(path)
    report.total = len(records)
    rows, seen = [], {}
    for index, (where, item) in enumerate(records):
        if not _object_or_report(index, where, item, report):
            continue
        native = _native_id(item, ("question_id",), index, report, where)
        if native is _BAD_ID:
            continue
        if native is None:
            report.add(index, None, MALFORMED_RECORD, f"{where}: no question_id", field_name="question_id")
            continue
        rid = f"{name}/{native}"
        if not _claim_id(index, rid, seen, report):
            continue
        n_before = len(report.problems)
        image = _check_image(index, rid, item.get("image"), root, report)
        key = "text" if "text" in item else "question"
        text = _field(index, rid, item, key, report, numbers=False)
        question, letters, texts, problem = _split_vstar_text(text) if text else ("", [], [], None)
        given = _options_value(item.get("options"))
        if given is not None:
            # A separate options field is the record's options, whatever the text holds.
            try:
                (letters, texts), problem = parse_options(given), None
            except ValueError as exc:
                problem = f"{exc} (got {type_name(given)})"
        if not question and len(report.problems) == n_before:
            report.add(index, rid, EMPTY_QUESTION, "question text is missing or empty", field_name=key)
        answer = _field(index, rid, item, "label", report, missing=MISSING_ANSWER)
        options, letter = [], None
        if problem is None and (text or given is not None):  # no text: named above, it has no options
            options, letter, problem = _choices(letters, texts, answer)
        if problem is not None:
            report.add(index, rid, BAD_OPTIONS, problem, field_name="options" if given is not None else key)
        category = _field(index, rid, item, "category", report)
        if len(report.problems) == n_before:
            rows.append(_row(rid, name, split, image, question, letter, options, category))
    return _finish(rows, report, on_invalid)


# ------------------------------------------------------------------------ HR-Bench

_HRBENCH_REQUIRED = ("index", "question", "answer", "A", "B", "image")


def _hrbench_records(path: Path) -> Iterator[dict]:
    """Records of the TSV or parquet one at a time (the 8K file is GBs)."""
    if path.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
            _check_columns(path, pf.schema_arrow.names, _HRBENCH_REQUIRED)
            for batch in pf.iter_batches(batch_size=32):
                yield from batch.to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise AnnotationError(f"{path}: not a readable parquet file: {exc}") from exc
        return
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a base64 image field is MBs; csv's default is 128 kB
    try:
        # utf-8-sig: tolerate a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if reader.fieldnames is None:
                raise AnnotationError(f"{path}: empty file, no header")
            reader.fieldnames = [n.strip() for n in reader.fieldnames]
            _check_columns(path, reader.fieldnames, _HRBENCH_REQUIRED)
            yield from reader
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(f"{path}: not a readable TSV file: {exc}") from exc
    finally:
        csv.field_size_limit(old_limit)


def _check_columns(path: Path, names, required) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise AnnotationError(f"{path}: missing column(s) {missing} (has {list(names)})")


class _NotAnImage(ValueError):
    def __init__(self, message: str, cls: str = MISSING_IMAGE):
        super().__init__(message)
        self.cls = cls


def _decode_image(value, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[bytes, str]:
    """(the image bytes as embedded, file extension); _NotAnImage says why not. An image
    of more than `max_pixels` pixels is refused from its header, never decoded; the
    written file is decoded completely by verify.py."""
    if isinstance(value, str):
        value = value.encode("ascii", "ignore")
    if not isinstance(value, bytes):
        raise _NotAnImage(f"image field is {type_name(value)}, not base64 text", WRONG_TYPE)
    if not value.strip():
        raise _NotAnImage("image field is empty")
    try:
        data = base64.b64decode(b"".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _NotAnImage("image field is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > max_pixels:
                raise _NotAnImage(f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}",
                                  IMAGE_TOO_LARGE)
            im.verify()  # catches truncated / corrupt data that the header alone does not
    except _NotAnImage:
        raise
    except Image.DecompressionBombError as exc:
        raise _NotAnImage(f"image is too large: {exc}", IMAGE_TOO_LARGE) from None
    except Exception as exc:  # PIL raises many types on arbitrary bytes; all mean "not an image"
        raise _NotAnImage(f"image field does not decode to an image ({type(exc).__name__})") from None
    if not fmt:
        raise _NotAnImage("image field does not decode to an image (no format)")
    return data, _EXTENSIONS.get(fmt, fmt.lower())


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_MAX_NAME = 128  # file systems refuse names past 255 bytes


def import_hrbench(spec: dict, *, on_invalid: str = "fail", images_out: Path | None = None
                   ) -> tuple[pa.Table, Report]:
    """HR-Bench TSV / parquet -> multiple-choice rows; writes the embedded images."""
    name, split, report = _start(spec, on_invalid, "test")
    path = _require(spec, "file")
    if images_out is None:
        raise ValueError(f"source {name!r}: HR-Bench embeds its images; images_out is required")
    images_out = Path(images_out)
    max_pixels = spec.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    rows, seen = [], {}
    index = -1
    for index, item in enumerate(_hrbench_records(path)):
        # csv.DictReader files extra fields under None and fills missing ones with None.
        if path.suffix != ".parquet" and (None in item or None in item.values()):
            report.add(index, None, MALFORMED_RECORD, f"row {index + 1}: wrong number of fields", field_name=WHOLE)
            continue
        native = _native_id(item, ("index",), index, report, f"row {index + 1}")
        if native is _BAD_ID:
            continue
        if native is None or not _SAFE_NAME.match(native) or len(native) > _MAX_NAME:
            # The index names the image file, so it must be a plain file name.
            report.add(index, None, MALFORMED_RECORD, f"row {index + 1}: index {str(item.get('index'))[:60]!r} "
                       "is missing or not usable as a file name", field_name="index")
            continue
        rid = f"{name}/{native}"
        if not _claim_id(index, rid, seen, report):
            continue
        n_before = len(report.problems)
        question = _field(index, rid, item, "question", report, numbers=False, missing=EMPTY_QUESTION)
        answer = _field(index, rid, item, "answer", report, missing=MISSING_ANSWER)
        # NaN is an absent option here: pandas writes a missing option as NaN.
        letters = [c for c in string.ascii_uppercase if c in item and not _empty(item[c])]
        texts = [_field(index, rid, item, c, report) for c in letters]
        if all(t is not None for t in texts):
            options, letter, problem = _choices(letters, texts, answer)
            if problem is not None:
                report.add(index, rid, BAD_OPTIONS, problem, field_name="answer" if "answer" in problem else "A")
        category = _field(index, rid, item, "category", report)
        raw_cycle = item.get("cycle_category")
        cycle = _field(index, rid, item, "cycle_category", report)
        if cycle is None and "cycle_category" in item and (raw_cycle is None or isinstance(raw_cycle, str)):
            # Every record has each column of the file. The official score averages over
            # cycles; a row in none would be left out of it.
            report.add(index, rid, MALFORMED_RECORD, f"index {native}: cycle_category is empty",
                       field_name="cycle_category")
        try:
            data, ext = _decode_image(item.get("image"), max_pixels)
        except _NotAnImage as exc:
            report.add(index, rid, exc.cls, f"index {native}: {exc}", field_name="image")
        if len(report.problems) > n_before:
            continue
        file_name = f"{native}.{ext}"
        with atomic_path(images_out / file_name) as tmp:
            tmp.write_bytes(data)  # as embedded: re-encoding would change the pixels
        rows.append(_row(rid, name, split, file_name, question, letter, options, category, cycle))
    report.total = index + 1
    return _finish(rows, report, on_invalid)


# ----------------------------------------------------------------------- VisualCoT

_HUMAN, _GPT = ("human", "user"), ("gpt", "assistant")


def _visualcot_conversation(conv) -> tuple[str | None, str | None, str | None]:
    """(question, answer, malformed message) from a LLaVA conversation list."""
    if not isinstance(conv, list) or not all(
            isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
            for t in conv):
        return None, None, "conversations is not a list of {from, value} turns"
    humans = [t["value"] for t in conv if t["from"].lower() in _HUMAN]
    gpts = [t["value"] for t in conv if t["from"].lower() in _GPT]
    first = humans[0] if humans else ""
    asks_for_box = bool(_BOX_INSTRUCTION.search(first))
    question = _clean_question(_BOX_INSTRUCTION.sub("", first))
    # With the box instruction the first gpt turn is the box, not the answer.
    answers = gpts[1:] if asks_for_box else gpts
    answer = answers[-1].strip() if answers else None
    return question, answer, None


def _cot_category(item: dict, image: str | None) -> str | None:
    """The record's sub-dataset: its `dataset` field, else the folder of "cot/<dataset>/..."."""
    if _nonempty_str(item.get("dataset")):
        return item["dataset"].strip()
    parts = PurePosixPath(image.strip()).parts if image else ()
    return parts[1] if len(parts) > 2 and parts[0] == "cot" else None


def import_visualcot(spec: dict, *, on_invalid: str = "fail", images_out: Path | None = None
                     ) -> tuple[pa.Table, Report]:
    """VisualCoT JSON / JSONL (conversation or metadata form) -> open question rows."""
    name, split, report = _start(spec, on_invalid, "train")
    path, root = _require(spec, "file"), _require(spec, "images")
    records = _jsonl_records(path) if path.suffix == ".jsonl" else _json_list_records(path)
    report.total = len(records)
    rows, seen = [], {}
    for index, (where, item) in enumerate(records):
        if not _object_or_report(index, where, item, report):
            continue
        image = item.get("image")
        # [original, crop of the original]: one image, the original.
        image = image[:1] if isinstance(image, list) else image
        first_image = image[0] if isinstance(image, list) and image else image
        dataset = item.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            report.add(index, None, WRONG_TYPE, f"{where}: 'dataset' is {type_name(dataset)}, not text",
                       field_name="dataset")
            continue
        subset = _cot_category(item, first_image if isinstance(first_image, str) else None)
        native = _native_id(item, ("question_id", "id"), index, report, where)
        if native is _BAD_ID:
            continue
        native = native or str(index)
        rid = f"{name}/{subset}/{native}" if subset else f"{name}/{native}"
        if not _claim_id(index, rid, seen, report):
            continue
        n_before = len(report.problems)
        if "conversations" in item:
            question, answer, malformed = _visualcot_conversation(item["conversations"])
            fields = ("conversations", "conversations")
        elif "question" in item:
            q = _field(index, rid, item, "question", report, numbers=False)
            question = _clean_question(_BOX_INSTRUCTION.sub("", q)) if q else None
            answer, malformed = _field(index, rid, item, "answer", report), None
            fields = ("question", "answer")
        else:
            question, answer, malformed = None, None, "neither 'conversations' nor 'question'"
        if malformed:
            report.add(index, rid, MALFORMED_RECORD, f"{where}: {malformed}", field_name="conversations")
            continue
        image = _check_image(index, rid, image, root, report)
        if not question and len(report.problems) == n_before:
            report.add(index, rid, EMPTY_QUESTION, "question is missing or empty", field_name=fields[0])
        if not answer and len(report.problems) == n_before:
            report.add(index, rid, MISSING_ANSWER, "no answer turn / answer is empty", field_name=fields[1])
        if len(report.problems) == n_before:
            rows.append(_row(rid, name, split, image, question, answer, None, subset))
    return _finish(rows, report, on_invalid)


# ---------------------------------------------------------------- generic QA table

def strip_boxed(answer: str) -> str:
    """The contents of the last `\\boxed{...}` (braces balanced), else `answer` unchanged."""
    start = answer.rfind(_BOXED)
    if start < 0:
        return answer
    depth, i = 1, start + len(_BOXED)
    while i < len(answer):
        depth += {"{": 1, "}": -1}.get(answer[i], 0)
        if depth == 0:
            return answer[start + len(_BOXED):i].strip()
        i += 1
    return answer  # unbalanced: leave it for a person to see


def _table_records(path: Path, required: tuple[str, ...]) -> list[tuple[str, object]]:
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise AnnotationError(f"{path}: not a readable parquet file: {exc}") from exc
        _check_columns(path, table.column_names, required)
        return [(f"row {i}", r) for i, r in enumerate(table.to_pylist())]
    return _jsonl_records(path) if path.suffix == ".jsonl" else _json_list_records(path)


def _options_value(value):
    """Options as given, or None when the row has none (then it is open)."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:  # parquet tables often hold the option list as a JSON string
            value = json.loads(value)
        except ValueError:
            return value  # parse_options rejects it below -> bad_options
    return None if value is None or (isinstance(value, (list, dict)) and not value) else value


def import_qa_table(spec: dict, *, on_invalid: str = "fail", images_out: Path | None = None
                    ) -> tuple[pa.Table, Report]:
    """A generic QA table (.parquet / .jsonl / .json) -> open or multiple-choice rows."""
    name, split, report = _start(spec, on_invalid, "train")
    path, root = _require(spec, "file"), _require(spec, "images")
    qk, ak = spec.get("question_key") or "question", spec.get("answer_key") or "answer"
    ik, ok = spec.get("image_key") or "image", spec.get("options_key")
    idk, ck = spec.get("id_key") or "id", spec.get("category_key") or "category"
    records = _table_records(path, (qk, ak, ik) + ((ok,) if ok else ()))
    report.total = len(records)
    rows, seen = [], {}
    for index, (where, item) in enumerate(records):
        if not _object_or_report(index, where, item, report):
            continue
        native = _native_id(item, (idk,), index, report, where)
        if native is _BAD_ID:
            continue
        rid = f"{name}/{native or index}"
        if not _claim_id(index, rid, seen, report):
            continue
        n_before = len(report.problems)
        image = _check_image(index, rid, item.get(ik), root, report, ik)
        q = _field(index, rid, item, qk, report, numbers=False)
        question = _clean_question(q) if q else ""
        if not question and len(report.problems) == n_before:
            report.add(index, rid, EMPTY_QUESTION, f"{qk!r} is missing or empty", field_name=qk)
        answer = _field(index, rid, item, ak, report)
        answer = strip_boxed(answer) if answer else None
        if not answer and len(report.problems) == n_before:
            report.add(index, rid, MISSING_ANSWER, f"{ak!r} is missing or empty", field_name=ak)
            answer = None
        options = _options_value(item.get(ok)) if ok else None
        if options is not None:
            try:
                letters, texts = parse_options(options)
                options, answer_or_letter, problem = _choices(letters, texts, answer)
                answer = answer_or_letter
            except ValueError as exc:
                problem = f"{exc} (got {type_name(options)})"
            if problem is not None:
                report.add(index, rid, BAD_OPTIONS, problem, field_name=ok)
        category = _field(index, rid, item, ck, report)
        if len(report.problems) == n_before:
            rows.append(_row(rid, name, split, image, question, answer, options, category))
    return _finish(rows, report, on_invalid)


IMPORTERS = {"vstar": import_vstar, "hrbench": import_hrbench,
             "visualcot": import_visualcot, "qa_table": import_qa_table}
# Sources whose importer writes the images (embedded in the file) into images_out.
