"""Importers of the evaluation sets (RefCOCO/+/g, ReasonSeg, REC, COCO, Pixmo-Count,
CountBench) on fixtures in their owners' parquet format: image ({"bytes", "path"}), text,
mask (rows of booleans), image_id, ann_id, img_height, img_width, and per task bbox /
cat_id / count."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.data.annotations import AnnotationError
from reproseg.data.masks import rle_decode
from reproseg.drseg.visionreasoner import benchmarks as bm
from reproseg.drseg.visionreasoner import metrics

W, H = 12, 8
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
BASE = [("image", IMAGE), ("text", pa.string()), ("image_id", pa.string()), ("ann_id", pa.string()),
        ("img_height", pa.int64()), ("img_width", pa.int64())]
EXTRA = {"segmentation": [("mask", pa.list_(pa.list_(pa.bool_()))), ("bbox", pa.list_(pa.float64()))],
         "rec": [("bbox", pa.list_(pa.float64()))],
         "detection": [("bbox", pa.list_(pa.list_(pa.int64()))), ("cat_id", pa.int64())],
         "counting": [("count", pa.int64())]}


def png(w=W, h=H) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 20, 200)).save(buf, format="PNG")
    return buf.getvalue()


def mask_rows(x1, y1, x2, y2) -> list[list[bool]]:
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m.tolist()


def rows(task: str, n: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        r = {"image": {"bytes": png(), "path": f"{i}.jpg"}, "text": f"the cup {i}", "image_id": str(100 + i),
             "ann_id": str(i), "img_height": H, "img_width": W}
        if task == "segmentation":
            r.update(mask=mask_rows(1, 1, 4 + i, 5), bbox=[1.0, 1.0, 4.0 + i, 5.0])
        elif task == "rec":
            r.update(bbox=[0.0, 0.0, 6.0, 4.0 + i])
        elif task == "detection":
            r.update(bbox=[[0, 0, 3, 3], [5, 5, 9, 8]][: i], cat_id=3)
        else:
            r.update(count=i * 2)
        out.append(r)
    return out


def write(tmp, task, recs) -> str:
    path = tmp / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(recs, schema=pa.schema(BASE + EXTRA[task])), path)
    return str(tmp)


def run(tmp, task, src, policy="fail", out="out"):
    o = tmp / out
    spec = {"name": f"b_{task}", "task": task, "path": src, "on_invalid": policy}
    bm.import_stage(spec, str(o / "t.parquet"), str(o / "images"), str(o / "r.json"), str(o / "r.md"),
                    str(o / "log.json"))
    return pq.read_table(o / "t.parquet").to_pylist(), json.loads((o / "r.json").read_text())


def test_segmentation_rows_hold_the_mask_as_rle(tmp_path):
    table, report = run(tmp_path, "segmentation", write(tmp_path, "segmentation", rows("segmentation")))
    assert report["valid"] == 3 and [r["id"] for r in table] == ["b_segmentation/100/0", "b_segmentation/101/1",
                                                                 "b_segmentation/102/2"]
    r = table[2]
    gt = rle_decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]})
    assert gt.sum() == 5 * 4 and np.array_equal(gt, np.array(mask_rows(1, 1, 6, 5)))
    assert r["box"] == [1.0, 1.0, 6.0, 5.0] and r["text"] == "the cup 2" and r["task"] == "segmentation"
    # the imported GT through the metric: a prediction of x 1..4, y 1..4 (16 px) of the 20
    pred = np.zeros((H, W), bool)
    pred[1:5, 1:5] = True
    assert metrics.intersection_union(pred, gt) == (16, 20)
    assert Image.open(tmp_path / "out" / "images" / r["image_path"]).size == (W, H)


@pytest.mark.parametrize("task, check", [
    ("rec", lambda t: t[1]["box"] == [0.0, 0.0, 6.0, 5.0] and t[1]["rle_counts"] is None),
    ("detection", lambda t: [r["boxes"] for r in t] == [[], [[0, 0, 3, 3]], [[0, 0, 3, 3], [5, 5, 9, 8]]]
     and t[0]["category_id"] == 3),
    ("counting", lambda t: [r["count"] for r in t] == [0, 2, 4]),
])
def test_each_task_imports(tmp_path, task, check):
    table, report = run(tmp_path, task, write(tmp_path, task, rows(task)))
    assert report["valid"] == 3 and check(table)


BAD = {  # record 1 broken -> (task, class, field)
    "mask_rows": ("segmentation", lambda r: r.update(mask=r["mask"][:-1]), "bad_mask", "mask"),
    "mask_cols": ("segmentation", lambda r: r["mask"][3].pop(), "bad_mask", "mask"),
    "size": ("segmentation", lambda r: r.update(img_width=W + 1), "image_size_mismatch", "image"),
    "undecodable": ("counting", lambda r: r["image"].update(bytes=b"nope" * 20), "unreadable_image", "image"),
    "no_text": ("counting", lambda r: r.update(text=" "), "empty_question", "text"),
    "rec_degenerate": ("rec", lambda r: r.update(bbox=[3.0, 3.0, 3.0, 5.0]), "degenerate_box", "bbox"),
    "rec_outside": ("rec", lambda r: r.update(bbox=[0.0, 0.0, 13.0, 5.0]), "box_outside_image", "bbox"),
    "rec_short": ("rec", lambda r: r.update(bbox=[0.0, 0.0, 3.0]), "bad_box", "bbox"),
    "det_outside": ("detection", lambda r: r.update(bbox=[[0, 0, 3, 9]]), "box_outside_image", "bbox"),
    "det_category": ("detection", lambda r: r.update(cat_id=None), "bad_category", "cat_id"),
    "count": ("counting", lambda r: r.update(count=-1), "bad_count", "count"),
    "duplicate": ("counting", lambda r: r.update(image_id="100", ann_id="0"), "duplicate_id", "ann_id"),
    "no_image_id": ("counting", lambda r: r.update(image_id=None), "malformed_record", "image_id"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_are_named(tmp_path, case):
    task, mutate, cls, field = BAD[case]
    recs = rows(task)
    mutate(recs[1])
    src = write(tmp_path, task, recs)
    table, report = run(tmp_path, task, src, "drop_and_report")
    assert len(table) == 2 and report["invalid"] == 1
    [p] = [p for p in report["problems"] if p["class"] == cls]
    assert p["field"] == field and p["record"] == 1
    with pytest.raises(AnnotationError, match=cls):
        run(tmp_path, task, src, "fail", "fail")
    assert not (tmp_path / "fail" / "t.parquet").exists()


def test_columns_and_task_are_checked(tmp_path):
    src = write(tmp_path, "counting", rows("counting"))
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['mask'\]"):
        run(tmp_path, "segmentation", src)
    with pytest.raises(ValueError, match="unknown task"):
        run(tmp_path, "panoptic", src)


def test_an_empty_target_is_a_note(tmp_path):
    recs = rows("segmentation", 1)
    recs[0]["mask"] = np.zeros((H, W), bool).tolist()
    recs[0]["bbox"] = None
    table, report = run(tmp_path, "segmentation", write(tmp_path, "segmentation", recs))
    assert len(table) == 1 and report["notes"][0]["class"] == "empty_mask" and table[0]["box"] is None
