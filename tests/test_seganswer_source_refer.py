"""RefCOCO-family importer (reproseg.seganswer.sources.refer) on a hand-made fixture."""
import json
import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from reproseg.data.annotations import AnnotationError
from reproseg.data.masks import rle_decode
from reproseg.seganswer.sources import refer
from reproseg.seganswer.sources.tables import REFERRING_SCHEMA

# Image 2 (6 wide, 4 high): a 2x2 block at rows 0-1, columns 3-4; column-major runs.
BLOCK_RUNS = [12, 2, 2, 2, 6]
BLOCK_COUNTS = mask_utils.frPyObjects({"size": [4, 6], "counts": BLOCK_RUNS}, 4, 6)["counts"].decode()


def _ref(ref_id, ann_id, image_id, category_id, split, sentences):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
            "split": split, "file_name": f"x_{ann_id}.jpg", "sent_ids": [s["sent_id"] for s in sentences],
            "sentences": sentences}


def _sent(sent_id, sent, raw=None):
    return {"sent_id": sent_id, "sent": sent, "raw": raw if raw is not None else sent,
            "tokens": sent.split()}


def _good_refs():
    return [
        _ref(0, 101, 1, 1, "train", [_sent(10, "  man on left "), _sent(11, "", "the person")]),
        _ref(1, 102, 2, 2, "testA", [_sent(12, "dog")]),
        _ref(2, 103, 2, 2, "val", [_sent(13, "small dog")]),
    ]


def _write_fixture(tmp_path, refs, extra_images=(), extra_annotations=(), refs_bytes=None):
    """Writes refs(unc).p, instances.json and the images; returns the import spec."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    images = [{"id": 1, "file_name": "img1.png", "width": 10, "height": 8},
              {"id": 2, "file_name": "img2.png", "width": 6, "height": 4}, *extra_images]
    for im in images[:2]:
        Image.new("RGB", (im["width"], im["height"])).save(images_dir / im["file_name"])
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]],
         "bbox": [2, 2, 4, 3], "area": 12.0, "iscrowd": 0},
        {"id": 102, "image_id": 2, "category_id": 2, "segmentation": {"size": [4, 6], "counts": BLOCK_COUNTS},
         "bbox": [3, 0, 2, 2], "area": 4.0, "iscrowd": 0},
        {"id": 103, "image_id": 2, "category_id": 2, "segmentation": {"size": [4, 6], "counts": [5, 3, 16]},
         "bbox": [1, 1, 1, 3], "area": 3.0, "iscrowd": 1},
        *extra_annotations,
    ]
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}))
    refs_path = tmp_path / "refs(unc).p"
    if refs_bytes is not None:
        refs_path.write_bytes(refs_bytes)
    else:
        with open(refs_path, "wb") as f:
            pickle.dump(refs, f, protocol=2)
    return {"name": "refcoco", "refs": str(refs_path), "instances": str(tmp_path / "instances.json"),
            "images": str(images_dir)}


def _rows(table):
    return {r["id"]: r for r in table.to_pylist()}


def _mask(row):
    return rle_decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})


def test_rectangle_polygon_mask_area_and_bounds(tmp_path):
    table, report = refer.import_refer(_write_fixture(tmp_path, _good_refs()))
    assert table.schema == REFERRING_SCHEMA
    row = _rows(table)["refcoco/0/10"]
    assert (row["width"], row["height"], row["image_path"]) == (10, 8, "img1.png")
    m = _mask(row)
    assert m.shape == (8, 10)
    # pycocotools fills the polygon 2,2 -> 6,2 -> 6,5 -> 2,5 as pixels x in 2..5, y in 2..4
    # (the right/bottom edges are exclusive): 4 x 3 = 12 pixels.
    assert int(m.sum()) == 12
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 2, 4)
    assert report.total == 4 and report.problems == []


def test_two_sentences_of_one_ref_give_two_rows(tmp_path):
    rows = _rows(refer.import_refer(_write_fixture(tmp_path, _good_refs()))[0])
    assert sorted(rows) == ["refcoco/0/10", "refcoco/0/11", "refcoco/1/12", "refcoco/2/13"]
    a, b = rows["refcoco/0/10"], rows["refcoco/0/11"]
    assert a["phrase"] == "man on left"          # stripped
    assert b["phrase"] == "the person"           # empty `sent` falls back to `raw`
    for r in (a, b):
        assert (r["source"], r["split"], r["category"]) == ("refcoco", "train", "person")
    assert a["rle_counts"] == b["rle_counts"]
    assert (rows["refcoco/1/12"]["split"], rows["refcoco/1/12"]["category"]) == ("testA", "dog")


def test_split_filter_keeps_only_asked_splits(tmp_path):
    refs = _good_refs() + [_ref(9, 999, 1, 1, "val", [_sent(90, "bad but not selected")])]
    spec = _write_fixture(tmp_path, refs)
    table, report = refer.import_refer({**spec, "splits": ["testA", "train"]})
    assert sorted(_rows(table)) == ["refcoco/0/10", "refcoco/0/11", "refcoco/1/12"]
    assert report.total == 3 and report.problems == []
    table, report = refer.import_refer({**spec, "splits": ["testB"]})
    assert table.num_rows == 0 and report.total == 0


def test_compressed_rle_passes_through_and_uncompressed_is_encoded(tmp_path):
    rows = _rows(refer.import_refer(_write_fixture(tmp_path, _good_refs()))[0])
    block = rows["refcoco/1/12"]
    assert block["rle_counts"] == BLOCK_COUNTS
    ys, xs = np.nonzero(_mask(block))
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(0, 3), (0, 4), (1, 3), (1, 4)]
    # Runs [5, 3, 16] column-major at 4 rows: pixels 5, 6, 7 = column 1, rows 1-3.
    ys, xs = np.nonzero(_mask(rows["refcoco/2/13"]))
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(1, 1), (2, 1), (3, 1)]


def _bad_fixture(tmp_path):
    refs = _good_refs() + [
        "not a ref",                                                          # malformed, no id
        {"ref_id": 50, "image_id": 1, "category_id": 1, "split": "train",    # malformed: no ann_id
         "sentences": [_sent(500, "x")]},
        _ref(60, 999, 1, 1, "train", [_sent(600, "no annotation")]),
        _ref(61, 104, 3, 1, "train", [_sent(610, "image not in instances")]),
        _ref(62, 105, 4, 1, "train", [_sent(620, "image file not on disk")]),
        _ref(63, 106, 1, 1, "train", [_sent(630, "two points")]),
        _ref(64, 107, 1, 1, "train", [_sent(640, "odd coordinates")]),
        _ref(65, 108, 1, 1, "train", [_sent(650, "unparsable")]),
        _ref(66, 109, 1, 1, "train", [_sent(660, "outside the image")]),
        _ref(67, 101, 1, 1, "train", [_sent(670, "   ", "")]),
        _ref(68, 101, 1, 1, "train", [_sent(680, "first"), _sent(680, "second")]),
    ]
    extra_images = [{"id": 4, "file_name": "absent.png", "width": 10, "height": 8}]
    extra_annotations = [
        {"id": 104, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 4]]},
        {"id": 105, "image_id": 4, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 4]]},
        {"id": 106, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 3, 1]]},
        {"id": 107, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 3, 1, 3, 3, 1]]},
        {"id": 108, "image_id": 1, "category_id": 1, "segmentation": "nonsense"},
        {"id": 109, "image_id": 1, "category_id": 1, "segmentation": [[20, 1, 30, 1, 30, 5, 20, 5]]},
    ]
    return _write_fixture(tmp_path, refs, extra_images, extra_annotations)


EXPECTED_BAD = {
    None: refer.MALFORMED,
    "refcoco/50/500": refer.MALFORMED,
    "refcoco/60/600": refer.MISSING_ANNOTATION,
    "refcoco/61/610": refer.MISSING_IMAGE,
    "refcoco/62/620": refer.MISSING_IMAGE,
    "refcoco/63/630": refer.BAD_SEGMENTATION,
    "refcoco/64/640": refer.BAD_SEGMENTATION,
    "refcoco/65/650": refer.BAD_SEGMENTATION,
    "refcoco/66/660": refer.EMPTY_MASK,
    "refcoco/67/670": refer.EMPTY_PHRASE,
    "refcoco/68/680": refer.DUPLICATE,
}


def test_bad_records_dropped_and_reported(tmp_path):
    table, report = refer.import_refer(_bad_fixture(tmp_path), on_invalid="drop_and_report")
    rows = _rows(table)
    assert sorted(rows) == ["refcoco/0/10", "refcoco/0/11", "refcoco/1/12", "refcoco/2/13", "refcoco/68/680"]
    assert rows["refcoco/68/680"]["phrase"] == "first"  # the first of a duplicated id is kept
    assert {p["id"]: p["class"] for p in report.problems} == EXPECTED_BAD
    assert len(report.problems) == len(EXPECTED_BAD)
    assert report.total == 4 + 12  # every sentence, plus the unreadable ref as one record
    by_id = {p["id"]: p for p in report.problems}
    assert "999" in by_id["refcoco/60/600"]["message"]
    assert "absent.png" in by_id["refcoco/62/620"]["message"]
    assert "2 point" in by_id["refcoco/63/630"]["message"]
    assert "odd" in by_id["refcoco/64/640"]["message"]
    assert "ann_id" in by_id["refcoco/50/500"]["message"]
    # Records are numbered by sentence within the run: the 4 good sentences come first.
    assert by_id[None]["record"] == 4 and by_id["refcoco/50/500"]["record"] == 5
    assert by_id["refcoco/68/680"]["record"] == 15


def test_bad_records_fail_by_default(tmp_path):
    with pytest.raises(AnnotationError) as err:
        refer.import_refer(_bad_fixture(tmp_path))
    assert "refcoco/60/600" in str(err.value) and "missing_annotation" in str(err.value)
    assert "refs(unc).p" in str(err.value)
    assert {p["id"] for p in err.value.report.problems} == set(EXPECTED_BAD)  # whole file checked


def test_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="on_invalid"):
        refer.import_refer(_write_fixture(tmp_path, _good_refs()), on_invalid="skip")


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["ordereddict", "os.system"])
def test_pickle_with_globals_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = OrderedDict(a=1) if payload == "ordereddict" else _Hostile(marker)
    refs = _good_refs() + [obj]
    spec = _write_fixture(tmp_path, None, refs_bytes=pickle.dumps(refs, protocol=2))
    with pytest.raises(AnnotationError, match="refused") as err:
        refer.import_refer(spec, on_invalid="drop_and_report")
    assert "refs(unc).p" in str(err.value)
    assert not marker.exists()


def test_corrupt_files_raise_naming_the_file(tmp_path):
    spec = _write_fixture(tmp_path, None, refs_bytes=pickle.dumps(_good_refs(), protocol=2)[:40])
    with pytest.raises(AnnotationError, match=r"refs\(unc\)\.p"):
        refer.import_refer(spec, on_invalid="drop_and_report")
    spec = _write_fixture(tmp_path, _good_refs())
    (tmp_path / "instances.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="instances.json"):
        refer.import_refer(spec, on_invalid="drop_and_report")


def _py2_pickle(obj, encoding="latin1") -> bytes:
    """Protocol-2 pickle as Python 2 writes it: `str` as SHORT_BINSTRING bytes, here the
    text in `encoding` (a `bytes` value is written as it is)."""
    def enc(o):
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        data = o if isinstance(o, bytes) else o.encode(encoding)
        return b"U" + bytes([len(data)]) + data
    return b"\x80\x02" + enc(obj) + b"."


def test_python2_pickle_strings_are_read(tmp_path):
    refs = [_ref(0, 101, 1, 1, "train", [_sent(10, "caf\xe9 table")])]
    spec = _write_fixture(tmp_path, None, refs_bytes=_py2_pickle(refs))
    rows = _rows(refer.import_refer(spec)[0])
    assert rows["refcoco/0/10"]["phrase"] == "caf\xe9 table"
    assert rows["refcoco/0/10"]["split"] == "train"


def test_python2_pickle_utf8_text_is_decoded_as_utf8(tmp_path):
    # Python 2 wrote UTF-8 text into its byte strings: "café" is b"caf\xc3\xa9", "狗" 3 bytes.
    refs = [_ref(0, 101, 1, 1, "train", [_sent(10, "caf\xe9 table"), _sent(11, "\u72d7 on the left")]),
            # one sentence whose bytes are not UTF-8: latin-1, where every byte is a character
            _ref(1, 102, 2, 2, "testA", [_sent(12, "na\xefve".encode("latin1"))])]
    spec = _write_fixture(tmp_path, None, refs_bytes=_py2_pickle(refs, encoding="utf-8"))
    rows = _rows(refer.import_refer(spec)[0])
    assert rows["refcoco/0/10"]["phrase"] == "caf\xe9 table"
    assert rows["refcoco/0/11"]["phrase"] == "\u72d7 on the left"
    assert rows["refcoco/1/12"]["phrase"] == "na\xefve"
    assert (rows["refcoco/0/10"]["split"], rows["refcoco/1/12"]["split"]) == ("train", "testA")


def _refclef_fixture(tmp_path, segmentations: dict):
    """RefClef-style annotations on image 2 (6 wide, 4 high): segmentation = a list of RLE objects."""
    annotations = [{"id": ann_id, "image_id": 2, "category_id": 2, "segmentation": seg}
                   for ann_id, seg in segmentations.items()]
    refs = [_ref(80 + i, ann_id, 2, 2, "test", [_sent(800 + i, f"thing {i}")])
            for i, ann_id in enumerate(segmentations)]
    return {**_write_fixture(tmp_path, refs, extra_annotations=annotations), "name": "refclef"}


def test_refclef_list_of_rle_objects(tmp_path):
    block = {"size": [4, 6], "counts": BLOCK_COUNTS}     # rows 0-1, columns 3-4
    column = {"size": [4, 6], "counts": [5, 3, 16]}      # column 1, rows 1-3
    spec = _refclef_fixture(tmp_path, {
        201: [block],                                    # the RefClef form: one RLE in a list
        202: [block, column],                            # several: their union
        203: [column, {"size": [4, 7], "counts": BLOCK_COUNTS}],   # second RLE at the wrong size
        204: [block, [[1, 1, 4, 1, 4, 4]]],              # RLE and polygon mixed
        205: block,                                      # the bare dict, as before
    })
    table, report = refer.import_refer(spec, on_invalid="drop_and_report")
    rows = _rows(table)
    assert sorted(rows) == ["refclef/80/800", "refclef/81/801", "refclef/84/804"]
    assert rows["refclef/80/800"]["rle_counts"] == BLOCK_COUNTS == rows["refclef/84/804"]["rle_counts"]
    ys, xs = np.nonzero(_mask(rows["refclef/81/801"]))
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(0, 3), (0, 4), (1, 1), (1, 3), (1, 4), (2, 1), (3, 1)]
    assert {p["id"]: p["class"] for p in report.problems} == {
        "refclef/82/802": refer.BAD_SEGMENTATION, "refclef/83/803": refer.BAD_SEGMENTATION}
    by_id = {p["id"]: p["message"] for p in report.problems}
    assert "RLE 2 of 2" in by_id["refclef/82/802"] and "[4, 7]" in by_id["refclef/82/802"]


def test_compressed_rle_parser_matches_pycocotools_and_rejects_bad_strings(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (4, 6), (37, 23)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            m = rng.random(shape) < density
            counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
            flat = m.flatten(order="F").astype(int)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            runs = np.diff(np.concatenate([[0], edges])).tolist()
            parsed = refer._compressed_counts(counts)
            assert parsed == runs
    # Wrong size, or runs that do not cover the image: reported, never decoded.
    bad = [{"id": 110, "image_id": 2, "category_id": 2, "segmentation": {"size": [4, 7], "counts": BLOCK_COUNTS}},
           {"id": 111, "image_id": 2, "category_id": 2, "segmentation": {"size": [4, 6], "counts": "b0"}}]
    refs = _good_refs() + [_ref(70, 110, 2, 2, "val", [_sent(700, "a")]),
                           _ref(71, 111, 2, 2, "val", [_sent(710, "b")])]
    _, report = refer.import_refer(_write_fixture(tmp_path, refs, extra_annotations=bad),
                                   on_invalid="drop_and_report")
    assert {p["id"]: p["class"] for p in report.problems} == {
        "refcoco/70/700": refer.BAD_SEGMENTATION, "refcoco/71/710": refer.BAD_SEGMENTATION}
    assert "[4, 7]" in report.problems[0]["message"]


# --------------------------------------------- every field checked, paths kept inside

def _mutated_fixture(tmp_path, mutate_ref=None, mutate_image=None, mutate_ann=None):
    refs = _good_refs()
    if mutate_ref:
        mutate_ref(refs[1])
    spec = _write_fixture(tmp_path, refs)
    doc = json.loads((tmp_path / "instances.json").read_text())
    if mutate_image:
        mutate_image(doc["images"][1])                       # image 2, of refs 1 and 2
    if mutate_ann:
        mutate_ann(doc["annotations"][1])                    # annotation 102, of ref 1
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    return spec


@pytest.mark.parametrize("mutate, cls, field", [
    (lambda r: r.update(ref_id=[1]), refer.MALFORMED, "ref_id"),
    (lambda r: r.update(ann_id=True), refer.MALFORMED, "ann_id"),
    (lambda r: r.update(image_id=10 ** 30), refer.MALFORMED, "image_id"),      # not a 64-bit id
    (lambda r: r.update(split=""), refer.MALFORMED, "split"),
    (lambda r: r.update(split=["testA"]), "wrong_type", "split"),
    (lambda r: r["sentences"][0].update(sent_id=[12]), "wrong_type", "sent_id"),
    (lambda r: r["sentences"][0].update(sent=7), "wrong_type", "sent"),
    (lambda r: r["sentences"][0].update(raw={"a": 1}), "wrong_type", "sent"),
    (lambda r: r.update(sentences="dog"), refer.MALFORMED, "sentences"),
])
def test_wrong_types_in_a_ref_are_named(tmp_path, mutate, cls, field):
    table, report = refer.import_refer(_mutated_fixture(tmp_path, mutate_ref=mutate), on_invalid="drop_and_report")
    assert "refcoco/1/12" not in _rows(table) and len(_rows(table)) == 3
    [p] = report.problems
    assert (p["record"], p["class"], p["field"], p["file"]) == (2, cls, field, str(tmp_path / "refs(unc).p"))


@pytest.mark.parametrize("mutate_image, mutate_ann, cls, field, message", [
    (lambda im: im.update(width=float("nan")), None, refer.MISSING_IMAGE, "width", "NaN"),
    (lambda im: im.update(height="4"), None, refer.MISSING_IMAGE, "width", "text"),
    (lambda im: im.update(width=100_000, height=100_000), None, "image_too_large", "width", "limit"),
    (lambda im: im.update(file_name="../images/img2.png"), None, "unsafe_path", "file_name", "'..'"),
    (lambda im: im.update(file_name="/etc/hostname"), None, "unsafe_path", "file_name", "absolute"),
    (lambda im: im.update(file_name=["img2.png"]), None, refer.MISSING_IMAGE, "file_name", "a list"),
    (None, lambda a: a.update(segmentation=[[0, 0, 5, 0, 1e12, 3]]), refer.BAD_SEGMENTATION, "segmentation",
     "further outside"),                                    # pycocotools would walk a 5e12-px outline
    (None, lambda a: a.update(segmentation=[[0, 0, 5, 0, 10 ** 400, 3]]), refer.BAD_SEGMENTATION,
     "segmentation", "finite"),
])
def test_bad_instances_fields_are_named_on_their_sentences(tmp_path, mutate_image, mutate_ann, cls, field,
                                                            message):
    spec = _mutated_fixture(tmp_path, mutate_image=mutate_image, mutate_ann=mutate_ann)
    table, report = refer.import_refer(spec, on_invalid="drop_and_report")
    expected_ids = {"refcoco/1/12", "refcoco/2/13"} if mutate_image else {"refcoco/1/12"}
    assert {p["id"] for p in report.problems} == expected_ids
    assert all((p["class"], p["field"]) == (cls, field) and message in p["message"] for p in report.problems)


def test_a_symlink_out_of_the_images_folder_is_never_opened(tmp_path):
    spec = _write_fixture(tmp_path, _good_refs())
    outside = tmp_path / "elsewhere.png"
    (tmp_path / "images/img2.png").rename(outside)
    (tmp_path / "images/img2.png").symlink_to(outside)
    table, report = refer.import_refer(spec, on_invalid="drop_and_report")
    assert {(p["id"], p["class"]) for p in report.problems} == {("refcoco/1/12", "unsafe_path"),
                                                               ("refcoco/2/13", "unsafe_path")}
    assert "outside the image root" in report.problems[0]["message"]


def test_an_instances_entry_without_a_usable_id_fails_naming_it(tmp_path):
    spec = _write_fixture(tmp_path, _good_refs())
    doc = json.loads((tmp_path / "instances.json").read_text())
    doc["annotations"][0]["id"] = [101]                      # was a bare TypeError: unhashable type: 'list'
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"instances.json: annotations\[0\] has an 'id' that is a list"):
        refer.import_refer(spec, on_invalid="drop_and_report")


def test_image_size_differing_from_the_record_is_named_at_import(tmp_path):
    from reproseg.seganswer.sources import import_source

    spec = _write_fixture(tmp_path, _good_refs())
    Image.new("RGB", (7, 4)).save(tmp_path / "images/img2.png")   # instances.json says 6 x 4
    spec = {"format": "refer", **{k: v for k, v in spec.items() if k != "name"}, "on_invalid": "drop_and_report"}
    referring, _, report = import_source("refcoco", spec, images_out=tmp_path / "out")
    assert referring.column("id").to_pylist() == ["refcoco/0/10", "refcoco/0/11"]
    assert {(p["id"], p["class"], p["field"], p["file"]) for p in report.problems} == {
        (rid, "image_size_mismatch", "image_path", spec["refs"]) for rid in ("refcoco/1/12", "refcoco/2/13")}
    # ... and the configured pixel limit holds for the decoded files too
    spec = {**spec, "max_image_pixels": 50}                    # img1 is 10 x 8 = 80 pixels
    referring, _, report = import_source("refcoco", spec, images_out=tmp_path / "out")
    assert {p["class"] for p in report.problems if p["id"] == "refcoco/0/10"} == {"image_too_large"}
