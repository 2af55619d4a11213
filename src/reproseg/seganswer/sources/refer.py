"""RefCOCO / RefCOCO+ / RefCOCOg / RefClef (the `refer` annotation format) -> referring table.

The format, per dataset folder: `refs(<splitBy>).p`, a pickled list of refs
`{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
sentences: [{sent_id, sent, raw, tokens}]}`, and `instances.json`, COCO style
(`images`, `annotations` with polygon or RLE `segmentation`, `categories`). The
image of a ref is `<images>/<images[image_id].file_name>`.

Choices:
- one row per sentence (the unit a referring-segmentation sample is made of); a ref's
  annotation is rasterised once and shared by all its sentences;
- the pickle is read by an unpickler that resolves no global at all, so a hostile
  file cannot run code (the real files hold only dicts, lists, str, int, float). The
  public files were written by Python 2, whose `str` is bytes: they are read as bytes
  and each is decoded as UTF-8 where it is valid UTF-8, else as latin-1 (which
  decodes any byte string), so non-ASCII sentences keep their characters;
- `segmentation` is polygons (a list of coordinate lists: RefCOCO, RefCOCO+, RefCOCOg),
  one RLE object `{counts, size}`, or a list of RLE objects (RefClef, which the owners'
  refer.py decodes one mask per object and sums); a list's masks are merged (their
  union). Counts are compressed strings or uncompressed run lists;
- each sentence is a record of the validation report; problems of its ref (missing
  annotation, image, bad mask) are reported on every sentence of that ref;
- polygon vertices slightly outside the image are accepted (COCO has many), as
  pycocotools clips them when rasterising; a polygon needs 3+ vertices, and one with a
  vertex further outside it than 4 times its width or height is invalid (its
  rasterisation would take memory in proportion to its size);
- every field a row is built from is checked for presence and type before it is used:
  ids are integers or text (in the pickle and in instances.json, where an entry without
  a usable id breaks every ref to it and fails the import naming it), sentence text is
  text, image sizes are positive integers whose product is at most the source's
  `max_image_pixels`, and `file_name` is a relative path that stays inside the images
  folder (symlinks included), never opened otherwise. Each problem names the refs file,
  the record (sentence) index and id, and the field.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pyarrow as pa
from pycocotools import mask as mask_utils

from ...data.annotations import WHOLE, WRONG_TYPE, AnnotationError, Report, report_summary, type_name
from ...data.images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_TOO_LARGE, UNSAFE_PATH, is_file, path_problem
from .tables import referring_table

# Problem classes named in the report.
MALFORMED = "malformed_record"
MISSING_ANNOTATION = "missing_annotation"
MISSING_IMAGE = "missing_image"
BAD_SEGMENTATION = "bad_segmentation"
EMPTY_MASK = "empty_mask"
EMPTY_PHRASE = "empty_phrase"
DUPLICATE = "duplicate_id"

POLICIES = ("fail", "drop_and_report")
# A polygon vertex may lie this many image widths (heights) outside the image, no more.
_FAR = 4
_REF_KEYS = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only the pickle's built-in containers and scalars: every global
    (class, function) is refused, which is what stops code from running."""

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{module}.{name}")


def _text(data: bytes) -> str:
    """A Python 2 `str`: UTF-8 if it is valid UTF-8 (the sentences' text), else latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decoded(obj):
    """`obj` with every byte string (keys included) decoded by `_text`."""
    if isinstance(obj, bytes):
        return _text(obj)
    if isinstance(obj, list):
        return [_decoded(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decoded(v) for v in obj)
    if isinstance(obj, dict):
        return {_decoded(k): _decoded(v) for k, v in obj.items()}
    return obj


def _load_refs(path: Path) -> list:
    try:
        with open(path, "rb") as f:
            refs = _decoded(_DataOnlyUnpickler(f, encoding="bytes").load())
    except _RefusedGlobal as exc:
        raise AnnotationError(f"{path}: refused to unpickle: it references the global {exc}, "
                              "but a refs file holds only lists, dicts, strings and numbers") from None
    except Exception as exc:  # truncated or corrupt pickles raise many kinds of errors
        raise AnnotationError(f"{path}: not a readable refs pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(refs, list):
        raise AnnotationError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def _index(path: Path, doc: dict, key: str) -> dict:
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a list under {key!r}")
    index = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e:
            raise AnnotationError(f"{path}: {key}[{i}] is not an object with an 'id'")
        if not _is_id(e["id"]):
            raise AnnotationError(f"{path}: {key}[{i}] has an 'id' that is {type_name(e['id'])}, "
                                  "not an integer or text")
        if e["id"] in index:
            # Two entries with one id make every ref to it ambiguous: the file is broken.
            raise AnnotationError(f"{path}: duplicate {key} id {e['id']!r}")
        index[e["id"]] = e
    return index


def _load_instances(path: Path) -> tuple[dict, dict, dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise AnnotationError(f"{path}: expected a COCO instances object")
    return _index(path, doc, "images"), _index(path, doc, "annotations"), _index(path, doc, "categories")


class _BadSegmentation(ValueError):
    pass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v) -> bool:
    """COCO ids: 64-bit integers, or (some copies) text."""
    return (_is_int(v) and -2**63 <= v < 2**63) or (isinstance(v, str) and v.strip() != "")


def _finite_number(v) -> bool:
    if _is_int(v):
        return abs(v) < 2**63  # a larger one would overflow pycocotools' doubles and ints
    return isinstance(v, float) and math.isfinite(v)


def _compressed_counts(s: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' encoding: 5 bits per
    char, offset 48, 6th bit = continuation, counts after the second are deltas).
    Parsed here so a malformed string is caught before pycocotools, which does not
    bound-check, ever decodes it."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise _BadSegmentation("compressed RLE string ends inside a count")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise _BadSegmentation(f"compressed RLE has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_runs(counts: list[int], size, height: int, width: int, kind: str) -> None:
    if list(size) != [height, width]:
        raise _BadSegmentation(f"{kind} size {list(size)} differs from the image size [{height}, {width}]")
    if any(c < 0 for c in counts):
        raise _BadSegmentation(f"{kind} has a negative run length")
    if sum(counts) != height * width:
        raise _BadSegmentation(f"{kind} runs cover {sum(counts)} pixels, the image has {height * width}")


def _rle_object(seg: dict, height: int, width: int) -> tuple[dict, int]:
    """(pycocotools RLE with compressed counts, mask area) of one RLE object, validated first."""
    counts, size = seg.get("counts"), seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise _BadSegmentation(f"RLE size {size!r} is not [height, width]")
    if isinstance(counts, (bytes, str)):  # compressed: validated, then passed through unchanged
        try:
            text = counts.decode("ascii") if isinstance(counts, bytes) else counts
        except UnicodeDecodeError:
            raise _BadSegmentation("compressed RLE counts are not ASCII") from None
        runs = _compressed_counts(text)
        _check_runs(runs, size, height, width, "compressed RLE")
        return {"size": [height, width], "counts": text.encode("ascii")}, sum(runs[1::2])
    if isinstance(counts, list) and all(_is_int(c) for c in counts):
        _check_runs(counts, size, height, width, "uncompressed RLE")
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return rle, int(mask_utils.area(rle))
    raise _BadSegmentation("RLE counts are neither a string nor a list of integers")


def _segmentation_rle(seg, height: int, width: int) -> tuple[str, int]:
    """(compressed RLE counts, mask area) of a COCO segmentation at (height, width)."""
    if isinstance(seg, dict):
        rle, area = _rle_object(seg, height, width)
    elif isinstance(seg, list) and seg and all(isinstance(p, dict) for p in seg):
        parts = []
        for i, p in enumerate(seg):
            try:
                parts.append(_rle_object(p, height, width))
            except _BadSegmentation as exc:
                raise _BadSegmentation(f"RLE {i + 1} of {len(seg)}: {exc}") from None
        if len(parts) == 1:
            rle, area = parts[0]
        else:
            rle = mask_utils.merge([r for r, _ in parts], intersect=False)
            area = int(mask_utils.area(rle))
    elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
        for p in seg:
            if not all(_finite_number(c) for c in p):
                raise _BadSegmentation("polygon coordinates must be finite numbers")
            if len(p) % 2:
                raise _BadSegmentation(f"polygon has an odd number of coordinates ({len(p)})")
            if len(p) < 6:
                # Also guards pycocotools, which reads a 4-number list as a box, not a polygon.
                raise _BadSegmentation(f"polygon has {len(p) // 2} point(s), needs at least 3")
            # pycocotools walks the outline at 5x resolution: a far-off vertex would cost
            # memory in proportion to its distance, so the outline must stay near the image.
            far = [(x, y) for x, y in zip(p[0::2], p[1::2])
                   if not (-_FAR * width <= x <= (_FAR + 1) * width and -_FAR * height <= y <= (_FAR + 1) * height)]
            if far:
                raise _BadSegmentation(f"polygon vertex {far[0]} is further outside the {width}x{height} "
                                       f"image than {_FAR} times its size")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        area = int(mask_utils.area(rle))
    else:
        raise _BadSegmentation("segmentation is neither polygons, an RLE object nor a list of RLE objects: "
                               f"{str(seg)[:60]!r}")
    counts = rle["counts"]
    return (counts.decode("ascii") if isinstance(counts, bytes) else counts), area


def _image_problem(image: dict, images_dir: Path, max_pixels: int) -> tuple[str, str, str] | None:
    """(class, field, message) of an instances image entry that cannot be a row's image."""
    w, h, name = image.get("width"), image.get("height"), image.get("file_name")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        return (MISSING_IMAGE, "width", f"image {image['id']!r} has no valid width/height "
                f"({type_name(w)} {w!r} x {type_name(h)} {h!r})"[:200])
    if w * h > max_pixels:
        return (IMAGE_TOO_LARGE, "width", f"image {image['id']!r} is {w}x{h} = {w * h} pixels, more than "
                f"the limit of {max_pixels}")
    if not isinstance(name, str) or not name.strip():
        return MISSING_IMAGE, "file_name", f"image {image['id']!r} has no file_name ({type_name(name)})"
    why = path_problem(images_dir, name)
    if why is not None:
        return UNSAFE_PATH, "file_name", f"image {image['id']!r}: {why}"  # never opened
    if not is_file(images_dir / name):
        return MISSING_IMAGE, "file_name", f"image file {name[:200]!r} not found under {images_dir}"
    return None


def _phrase(sentence: dict) -> tuple[str, str | None]:
    """(the sentence's text from `sent`, else `raw`; the problem of a field of the wrong type)."""
    for key in ("sent", "raw"):
        v = sentence.get(key)
        if v is not None and not isinstance(v, str):
            return "", f"{key!r} is {type_name(v)}, not text"
    for key in ("sent", "raw"):
        v = sentence.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip(), None
    return "", None


def import_refer(spec: dict, *, on_invalid: str = "fail") -> tuple[pa.Table, Report]:
    """Reads one RefCOCO-family source: spec = {name, refs, instances, images, [splits]}.
    Returns (referring table of the valid sentences, report); under on_invalid='fail'
    raises AnnotationError once every sentence has been checked, if any is invalid."""
    if on_invalid not in POLICIES:
        raise ValueError(f"on_invalid must be one of {POLICIES}, got {on_invalid!r}")
    missing = [k for k in ("name", "refs", "instances", "images") if k not in spec]
    if missing:
        raise ValueError(f"refer source spec lacks {missing}")
    name = str(spec["name"])
    refs_path, images_dir = Path(spec["refs"]), Path(spec["images"])
    splits = spec.get("splits")
    keep = None if splits is None else {str(s) for s in splits}

    refs = _load_refs(refs_path)
    images, annotations, categories = _load_instances(Path(spec["instances"]))
    report = Report(source=f"{name} ({refs_path})", policy=on_invalid)
    max_pixels = spec.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    file = str(refs_path)

    def add(index, rid, cls, message, field_name=None):
        report.add(index, rid, cls, message, file=file, field_name=field_name)

    # Refs share annotations and images: rasterise / stat each once.
    masks: dict = {}         # ann_id -> (counts, None) or (None, (class, field, message))
    image_checks: dict = {}  # image_id -> (class, field, message) or None

    def mask_of(ann: dict, height: int, width: int):
        if ann["id"] not in masks:
            try:
                counts, area = _segmentation_rle(ann.get("segmentation"), height, width)
                masks[ann["id"]] = ((counts, None) if area > 0 else
                                    (None, (EMPTY_MASK, "segmentation", f"annotation {ann['id']!r} covers no "
                                                                        f"pixel of the {width}x{height} image")))
            except (_BadSegmentation, TypeError, ValueError, OverflowError) as exc:
                masks[ann["id"]] = (None, (BAD_SEGMENTATION, "segmentation", f"annotation {ann['id']!r}: {exc}"))
        return masks[ann["id"]]

    def ref_problems(ref: dict) -> tuple[list, dict | None]:
        """Problems (class, field, message) shared by every sentence of the ref, and the row fields if none."""
        problems = []
        ann = annotations.get(ref["ann_id"])
        if ann is None:
            problems.append((MISSING_ANNOTATION, "ann_id",
                             f"ann_id {ref['ann_id']!r} not in the instances annotations"))
        elif ann.get("image_id") != ref["image_id"]:
            problems.append((MALFORMED, "image_id", f"ref image_id {ref['image_id']!r} but its annotation "
                                                    f"{ref['ann_id']!r} is on image {ann.get('image_id')!r}"[:300]))
        category = categories.get(ref["category_id"])
        if category is None or not isinstance(category.get("name"), str):
            problems.append((MALFORMED, "category_id",
                             f"category_id {ref['category_id']!r} not in the instances categories"))
        if not isinstance(ref["split"], str):
            problems.append((WRONG_TYPE, "split", f"split is {type_name(ref['split'])}, not text"))
        elif not ref["split"].strip():
            problems.append((MALFORMED, "split", "split is empty"))
        image = images.get(ref["image_id"])
        if image is None:
            problems.append((MISSING_IMAGE, "image_id", f"image_id {ref['image_id']!r} not in the instances images"))
        else:
            if ref["image_id"] not in image_checks:
                image_checks[ref["image_id"]] = _image_problem(image, images_dir, max_pixels)
            if image_checks[ref["image_id"]]:
                problems.append(image_checks[ref["image_id"]])
        if problems:
            return problems, None
        counts, problem = mask_of(ann, image["height"], image["width"])
        if problem:
            return [problem], None
        return [], {"source": name, "split": ref["split"], "image_path": image["file_name"],
                    "width": image["width"], "height": image["height"], "rle_counts": counts,
                    "category": category["name"]}

    rows, first_seen, index = [], {}, 0
    for ref_pos, ref in enumerate(refs):
        if (keep is not None and isinstance(ref, dict) and isinstance(ref.get("split"), str)
                and ref["split"] not in keep):
            continue  # a selection, not invalid data (a ref whose split is unreadable is reported)
        if not isinstance(ref, dict) or not isinstance(ref.get("sentences"), list) or not ref["sentences"]:
            # No sentences to enumerate: the whole ref is one invalid record.
            rid = f"{name}/{ref['ref_id']}" if isinstance(ref, dict) and _is_id(ref.get("ref_id")) else None
            what = (f"ref #{ref_pos} is {type_name(ref)}, not a dict" if not isinstance(ref, dict)
                    else f"ref #{ref_pos} has no non-empty 'sentences' list "
                         f"({type_name(ref.get('sentences'))})")
            report.total += 1
            add(index, rid, MALFORMED, what, WHOLE if not isinstance(ref, dict) else "sentences")
            index += 1
            continue
        absent = [k for k in _REF_KEYS if k not in ref]
        # Ids are looked up in dicts and make row ids, so they must be integers or text.
        bad_ids = [k for k in _REF_KEYS[:4] if k in ref and not _is_id(ref[k])]
        if absent or bad_ids:
            shared, fields = [(MALFORMED, (absent + bad_ids)[0], f"ref #{ref_pos} "
                               + "; ".join(([f"lacks {absent}"] if absent else [])
                                           + ([f"has {', '.join(f'{k} {type_name(ref[k])}' for k in bad_ids)}, "
                                               "not an integer or text"] if bad_ids else [])))], None
        else:
            shared, fields = ref_problems(ref)
        ref_label = ref["ref_id"] if _is_id(ref.get("ref_id")) else f"#{ref_pos}"
        for j, sentence in enumerate(ref["sentences"]):
            sid = sentence.get("sent_id") if isinstance(sentence, dict) else None
            rid = f"{name}/{ref_label}/{sid if _is_id(sid) else f'#{j}'}"
            report.total += 1
            if rid in first_seen:
                add(index, rid, DUPLICATE, f"duplicate id {rid!r} (first at record {first_seen[rid]})", "sent_id")
                index += 1
                continue
            first_seen[rid] = index
            n_before = len(report.problems)
            for cls, field_name, message in shared:
                add(index, rid, cls, message, field_name)
            if not isinstance(sentence, dict) or sid is None:
                add(index, rid, MALFORMED, f"sentence {j} of ref #{ref_pos} is not a dict with a sent_id",
                    "sentences")
            elif not _is_id(sid):
                add(index, rid, WRONG_TYPE, "sent_id is empty" if isinstance(sid, str) else
                    f"sent_id is {type_name(sid)}, not a 64-bit integer or text", "sent_id")
            else:
                phrase, problem = _phrase(sentence)
                if problem is not None:
                    add(index, rid, WRONG_TYPE, problem, "sent")
                elif not phrase:
                    add(index, rid, EMPTY_PHRASE, "sentence has no text in 'sent' or 'raw'", "sent")
                if len(report.problems) == n_before:
                    rows.append({"id": rid, **fields, "phrase": phrase})
            index += 1
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return referring_table(rows), report
