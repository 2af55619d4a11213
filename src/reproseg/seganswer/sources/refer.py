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
  pycocotools clips them when rasterising; a polygon needs 3+ vertices.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path, PurePosixPath

import pyarrow as pa
from pycocotools import mask as mask_utils

from ...data.annotations import AnnotationError, Report, report_summary
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
            if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                       for c in p):
                raise _BadSegmentation("polygon coordinates must be finite numbers")
            if len(p) % 2:
                raise _BadSegmentation(f"polygon has an odd number of coordinates ({len(p)})")
            if len(p) < 6:
                # Also guards pycocotools, which reads a 4-number list as a box, not a polygon.
                raise _BadSegmentation(f"polygon has {len(p) // 2} point(s), needs at least 3")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        area = int(mask_utils.area(rle))
    else:
        raise _BadSegmentation("segmentation is neither polygons, an RLE object nor a list of RLE objects: "
                               f"{str(seg)[:60]!r}")
    counts = rle["counts"]
    return (counts.decode("ascii") if isinstance(counts, bytes) else counts), area


def _image_problem(image: dict, images_dir: Path) -> str | None:
    w, h, name = image.get("width"), image.get("height"), image.get("file_name")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        return f"image {image['id']!r} has no valid width/height ({w!r} x {h!r})"
    if not isinstance(name, str) or not name.strip():
        return f"image {image['id']!r} has no file_name"
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return f"image file_name {name!r} is not a path inside the images folder"
    if not (images_dir / rel).is_file():
        return f"image file {name!r} not found under {images_dir}"
    return None


def _phrase(sentence: dict) -> str:
    for key in ("sent", "raw"):
        v = sentence.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""


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

    # Refs share annotations and images: rasterise / stat each once.
    masks: dict = {}         # ann_id -> (counts, None) or (None, (class, message))
    image_checks: dict = {}  # image_id -> problem message or None

    def mask_of(ann: dict, height: int, width: int):
        if ann["id"] not in masks:
            try:
                counts, area = _segmentation_rle(ann.get("segmentation"), height, width)
                masks[ann["id"]] = ((counts, None) if area > 0 else
                                    (None, (EMPTY_MASK, f"annotation {ann['id']!r} covers no pixel "
                                                        f"of the {width}x{height} image")))
            except (_BadSegmentation, TypeError, ValueError) as exc:
                masks[ann["id"]] = (None, (BAD_SEGMENTATION, f"annotation {ann['id']!r}: {exc}"))
        return masks[ann["id"]]

    def ref_problems(ref: dict) -> tuple[list, dict | None]:
        """Problems shared by every sentence of the ref, and the row fields if none."""
        problems = []
        ann = annotations.get(ref["ann_id"])
        if ann is None:
            problems.append((MISSING_ANNOTATION, f"ann_id {ref['ann_id']!r} not in the instances annotations"))
        elif ann.get("image_id") != ref["image_id"]:
            problems.append((MALFORMED, f"ref image_id {ref['image_id']!r} but its annotation "
                                        f"{ref['ann_id']!r} is on image {ann.get('image_id')!r}"))
        category = categories.get(ref["category_id"])
        if category is None or not isinstance(category.get("name"), str):
            problems.append((MALFORMED, f"category_id {ref['category_id']!r} not in the instances categories"))
        if not isinstance(ref["split"], str):
            problems.append((MALFORMED, f"split {ref['split']!r} is not a string"))
        image = images.get(ref["image_id"])
        if image is None:
            problems.append((MISSING_IMAGE, f"image_id {ref['image_id']!r} not in the instances images"))
        else:
            if ref["image_id"] not in image_checks:
                image_checks[ref["image_id"]] = _image_problem(image, images_dir)
            if image_checks[ref["image_id"]]:
                problems.append((MISSING_IMAGE, image_checks[ref["image_id"]]))
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
            rid = f"{name}/{ref['ref_id']}" if isinstance(ref, dict) and "ref_id" in ref else None
            what = (f"ref #{ref_pos} is a {type(ref).__name__}, not a dict" if not isinstance(ref, dict)
                    else f"ref #{ref_pos} has no non-empty 'sentences' list")
            report.total += 1
            report.add(index, rid, MALFORMED, what)
            index += 1
            continue
        absent = [k for k in _REF_KEYS if k not in ref]
        # Ids are looked up in dicts, so they must be scalars.
        bad_ids = [k for k in _REF_KEYS[:4] if k in ref and not isinstance(ref[k], (int, str))]
        if absent or bad_ids:
            shared, fields = [(MALFORMED, f"ref #{ref_pos} "
                               + "; ".join(([f"lacks {absent}"] if absent else [])
                                           + ([f"has non-scalar {bad_ids}"] if bad_ids else [])))], None
        else:
            shared, fields = ref_problems(ref)
        for j, sentence in enumerate(ref["sentences"]):
            sid = sentence.get("sent_id") if isinstance(sentence, dict) else None
            rid = f"{name}/{ref.get('ref_id')}/{sid if sid is not None else f'#{j}'}"
            report.total += 1
            if rid in first_seen:
                report.add(index, rid, DUPLICATE, f"duplicate id {rid!r} (first at record {first_seen[rid]})")
                index += 1
                continue
            first_seen[rid] = index
            n_before = len(report.problems)
            for cls, message in shared:
                report.add(index, rid, cls, message)
            if not isinstance(sentence, dict) or sid is None:
                report.add(index, rid, MALFORMED, f"sentence {j} of ref #{ref_pos} is not a dict with a sent_id")
            else:
                phrase = _phrase(sentence)
                if not phrase:
                    report.add(index, rid, EMPTY_PHRASE, "sentence has no text in 'sent' or 'raw'")
                if len(report.problems) == n_before:
                    rows.append({"id": rid, **fields, "phrase": phrase})
            index += 1
    if report.problems and on_invalid == "fail":
        raise AnnotationError(report_summary(report), report)
    return referring_table(rows), report
