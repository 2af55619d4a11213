"""Metrics on hand-built masks and answers; every expected value is worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from reproseg.metrics import paper_numbers
from reproseg.answers.qa import is_correct, option_correct, open_correct, qa_metrics
from reproseg.metrics.segmentation import RLEError, per_sample, segmentation_metrics, to_coco_rle
from reproseg.metrics.tables import build_table, to_markdown, write_tables

H, W = 40, 60


def rle(x0: int, y0: int, w: int, h: int, size=(H, W), as_str: bool = True) -> dict:
    """RLE of the filled rectangle columns x0..x0+w-1, rows y0..y0+h-1."""
    m = np.zeros(size, np.uint8, order="F")
    m[y0:y0 + h, x0:x0 + w] = 1
    r = mask_utils.encode(m)
    return {"size": list(r["size"]), "counts": r["counts"].decode() if as_str else r["counts"]}


def sample(i, gt, pred, bucket="s"):
    return {"id": i, "gt_rle": gt, "pred_rle": pred, "size_bucket": bucket}


# --- segmentation ---------------------------------------------------------------------

def test_overlapping_squares_iou_one_third():
    # Two 10x10 squares, the second shifted right by 5 columns:
    # overlap 5 cols x 10 rows = 50; union = 100 + 100 - 50 = 150; I/U = 1/3.
    t = per_sample([sample("a", rle(0, 0, 10, 10), rle(5, 0, 10, 10))])
    assert t.column("intersection").to_pylist() == [50]
    assert t.column("union").to_pylist() == [150]
    assert t.column("iou").to_pylist()[0] == pytest.approx(1 / 3)
    assert t.column("pred_status").to_pylist() == ["ok"]


def test_empty_target_empty_prediction_scores_one():
    empty = rle(0, 0, 0, 0)
    s = segmentation_metrics([sample("e", empty, empty)])["all"]
    # U = 0 -> the LISA rule gives IoU 1; cIoU = 0/0 is undefined -> NaN.
    assert (s.n, s.giou, s.intersection, s.union) == (1, 1.0, 0, 0)
    assert math.isnan(s.ciou)


def test_empty_target_nonempty_prediction_scores_zero():
    s = segmentation_metrics([sample("e", rle(0, 0, 0, 0), rle(0, 0, 4, 5))])["all"]
    # I = 0, U = 20 (the prediction) -> 0.
    assert (s.giou, s.ciou, s.union) == (0.0, 0.0, 20)


def test_missing_and_unreadable_predictions_count_gt_area():
    gt = rle(0, 0, 10, 10)                                     # 100 px
    good = rle(0, 0, 10, 10)
    truncated = {"size": good["size"], "counts": good["counts"][:-1]}
    records = [
        sample("none", gt, None),
        sample("trunc", gt, truncated),
        sample("json", gt, "{not json"),
        sample("size", gt, rle(0, 0, 10, 10, size=(H + 1, W))),   # wrong frame size
        sample("ok", gt, good),
    ]
    t = per_sample(records)
    assert t.column("pred_status").to_pylist() == ["missing", "invalid", "invalid", "invalid", "ok"]
    assert t.column("intersection").to_pylist() == [0, 0, 0, 0, 100]
    assert t.column("union").to_pylist() == [100, 100, 100, 100, 100]
    s = segmentation_metrics(records)["all"]
    # gIoU = (0+0+0+0+1)/5 = 0.2; cIoU = 100 / 500 = 0.2.
    assert (s.giou, s.ciou, s.n_missing, s.n_invalid) == (0.2, 0.2, 1, 3)


def test_giou_and_ciou_differ_and_group_by_bucket():
    records = [
        # s: 20x20 GT (400), pred the left 10 cols (200): I = 200, U = 400, IoU 0.5.
        sample(1, rle(0, 0, 20, 20), rle(0, 0, 10, 20), "s"),
        # xs: 4x4 GT (16), identical pred: I = U = 16, IoU 1.
        sample(2, rle(30, 0, 4, 4), rle(30, 0, 4, 4), "xs"),
        # xxs: 2x2 GT (4), pred 2x2 elsewhere: I = 0, U = 8, IoU 0.
        sample(3, rle(50, 30, 2, 2), rle(40, 30, 2, 2), "xxs"),
        # xxs: 2x2 GT, pred covers it plus 2 px: I = 4, U = 6, IoU 2/3.
        sample(4, rle(50, 30, 2, 2), rle(50, 30, 2, 3), "XXS"),
    ]
    s = segmentation_metrics(pa.Table.from_pylist(records))
    assert s["s"].giou == pytest.approx(0.5) and s["s"].ciou == pytest.approx(0.5)
    assert s["xs"].giou == 1.0 and s["xs"].ciou == 1.0
    # xxs: gIoU = (0 + 2/3)/2 = 1/3; cIoU = (0 + 4)/(8 + 6) = 2/7.
    assert s["xxs"].n == 2
    assert s["xxs"].giou == pytest.approx(1 / 3)
    assert s["xxs"].ciou == pytest.approx(2 / 7)
    # all: gIoU = (0.5 + 1 + 0 + 2/3)/4 = 13/24; cIoU = (200+16+0+4)/(400+16+8+6) = 220/430.
    assert s["all"].n == 4
    assert s["all"].giou == pytest.approx(13 / 24)
    assert s["all"].ciou == pytest.approx(220 / 430)
    assert s["all"].giou != pytest.approx(s["all"].ciou)


def test_many_masks():
    # 300 > 255 masks (pycocotools' area() overflows on longer lists): GT 2x2 = 4 px,
    # pred 2x1 inside it: I = 2, U = 4, every IoU 0.5, cIoU = 600/1200 = 0.5.
    s = segmentation_metrics([sample(i, rle(i % 50, 0, 2, 2), rle(i % 50, 0, 2, 1)) for i in range(300)])
    assert (s["all"].n, s["all"].intersection, s["all"].union) == (300, 600, 1200)
    assert s["all"].giou == pytest.approx(0.5) and s["all"].ciou == pytest.approx(0.5)


def test_reference_code_smoothing_and_empty_unions():
    # The authors' script: per-sample I / (U + 1e-5), +1 when U == 0; cIoU
    # sum I / (sum U + 1e-10). Every union empty: gIoU 1 both; cIoU NaN (paper), 0.0 (code).
    empty = rle(0, 0, 0, 0)
    records = [sample("e1", empty, empty), sample("e2", empty, None)]
    paper = segmentation_metrics(records)["all"]
    code = segmentation_metrics(records, profile="reference_code")["all"]
    assert paper.giou == code.giou == 1.0
    assert math.isnan(paper.ciou) and code.ciou == 0.0
    # A perfect 10x10 mask (I = U = 100) and a half one (I = 50, U = 100), both "s":
    # paper gIoU (1 + 0.5) / 2, cIoU 150 / 200; code 100 / 100.00001 and 50 / 100.00001,
    # cIoU 150 / (200 + 1e-10).
    records = [sample("a", rle(0, 0, 10, 10), rle(0, 0, 10, 10)), sample("b", rle(0, 0, 10, 10), rle(0, 0, 5, 10))]
    paper = segmentation_metrics(records)["s"]
    code = segmentation_metrics(records, profile="reference_code")["s"]
    assert (paper.giou, paper.ciou) == (0.75, 0.75)
    assert code.giou == pytest.approx((100 / (100 + 1e-5) + 50 / (100 + 1e-5)) / 2, abs=1e-15)
    assert code.giou != 0.75 and code.ciou == 150 / (200 + 1e-10)
    t = per_sample(records, profile="reference_code")
    assert t.column("iou").to_pylist() == [100 / (100 + 1e-5), 50 / (100 + 1e-5)]
    # A group without samples: the script divides by its length and stops; NaN under both.
    xs = segmentation_metrics(records, "reference_code")["xs"]
    assert xs.n == 0 and math.isnan(xs.giou) and math.isnan(xs.ciou)
    with pytest.raises(ValueError, match="metric profile"):
        segmentation_metrics(records, profile="nope")


def test_empty_group_is_nan_and_unknown_bucket_raises():
    s = segmentation_metrics([sample(1, rle(0, 0, 2, 2), rle(0, 0, 2, 2), "s")])
    assert s["xs"].n == 0 and math.isnan(s["xs"].giou) and math.isnan(s["xs"].ciou)
    with pytest.raises(ValueError, match="size bucket"):
        segmentation_metrics([sample(1, rle(0, 0, 2, 2), None, "m")])


def test_bad_gt_raises():
    with pytest.raises(ValueError, match="bad GT"):
        per_sample([sample(1, {"size": [H, W], "counts": "zz"}, None)])


def test_rle_forms_accepted():
    # bytes counts, JSON text and uncompressed runs describe the same 3x2 block.
    by = rle(1, 1, 3, 2, as_str=False)
    runs = [H + 1, 2, H - 2, 2, H - 2, 2, H * W - (3 * H + 3)]   # column-major, 3 cols x 2 rows
    assert sum(runs) == H * W
    t = per_sample([
        sample(1, by, {"size": [H, W], "counts": runs}),
        sample(2, rle(1, 1, 3, 2), '{"size": [%d, %d], "counts": "%s"}' % (H, W, rle(1, 1, 3, 2)["counts"])),
    ])
    assert t.column("iou").to_pylist() == [1.0, 1.0]
    with pytest.raises(RLEError):
        to_coco_rle({"size": [H, W], "counts": runs[:-1]})    # covers too few pixels


# --- QA --------------------------------------------------------------------------------

def test_option_rules():
    assert option_correct("B", "b")
    assert option_correct("B", " (B). ")
    assert not option_correct("B", "A")
    assert not option_correct("B", "A or B")                          # paper: exact letter only
    assert option_correct("B", "A or B", profile="reference_code")    # authors' eval: any standalone
    assert not option_correct("B", "Bus", profile="reference_code")
    assert not option_correct("B", None)


@pytest.mark.parametrize("answer, response, paper, code", [
    # The evaluation script searches the lower-cased GT answer, as written, between word
    # boundaries / brackets / quotes / punctuation in the lower-cased response.
    ("B", "(b)", True, True),
    ("B", "[B].", True, True),
    ("B", "a or b", False, True),
    ("E", "e", True, True),               # any letter: no a-d list in the evaluation
    ("E", "the answer is e!", False, True),
    ("B. red", "b. red", False, True),    # paper: the response must be the letter alone
    ("B. red", "b: red", False, True),    # code: the GT is a pattern there, '.' matches ':'
    ("B", "bus", False, False),
    ("B", None, False, False),
])
def test_option_rules_table(answer, response, paper, code):
    assert option_correct(answer, response, "paper") is paper
    assert option_correct(answer, response, "reference_code") is code


def test_reference_code_needs_no_option_letter():
    # The script needs no leading letter; the paper rule still refuses such a GT.
    assert option_correct("1", "option 1", "reference_code")
    with pytest.raises(ValueError):
        option_correct("1", "option 1", "paper")
    # A GT that is no valid pattern scores wrong (the script itself would stop there).
    assert option_correct("(b", "(b", "reference_code") is False
    # OVQA: the GT is lower-cased but its whitespace kept: "red " vs "red" = 6/7 >= 0.8,
    # "red  car" vs "red" 2*3/11 < 0.8 for the code; the paper collapses it ("red car").
    assert open_correct("red ", "red", "reference_code")
    assert open_correct("Red  Car", "red car", "paper") and not open_correct("Red  Car", "red car", "reference_code")


def test_open_rules():
    # ratio("red", "red") = 1; "dark red" vs "red": 2*3/(8+3) = 0.545 < 0.8.
    assert open_correct("Red", "  red ")
    assert not open_correct("red", "dark red")
    assert open_correct("red", "dark red", profile="reference_code")
    # "grey" vs "gray": 3 matching chars, 2*3/8 = 0.75 < 0.8; "rectangle" vs "rectangles": 18/19 = 0.947.
    assert not open_correct("gray", "grey")
    assert open_correct("rectangles", "rectangle")
    with pytest.raises(ValueError):
        is_correct("referring", "x", "x")


def test_qa_accuracy_by_attribute():
    rows = [
        {"task_type": "option", "attribute": "colors", "answer": "A", "pred_response": "A"},       # right
        {"task_type": "option", "attribute": "colors", "answer": "C", "pred_response": "B"},       # wrong
        {"task_type": "option", "attribute": "shape", "answer": "D", "pred_response": "d."},       # right
        {"task_type": "reasoning", "attribute": "position", "answer": "left", "pred_response": "Left"},  # right
        {"task_type": "reasoning", "attribute": "position", "answer": "top", "pred_response": None},     # wrong
        {"task_type": "reasoning", "attribute": "others", "answer": "car", "pred_response": "truck"},     # wrong
        {"task_type": "referring", "attribute": "colors", "answer": "", "pred_response": "is found"},    # skipped
    ]
    r = qa_metrics(pa.Table.from_pylist(rows))
    # MVQA: colors 1/2, shape 1/1, all 2/3; OVQA: position 1/2, others 0/1, all 1/3.
    assert (r["mvqa"]["colors"].n, r["mvqa"]["colors"].correct) == (2, 1)
    assert r["mvqa"]["shape"].accuracy == 1.0
    assert r["mvqa"]["all"].accuracy == pytest.approx(2 / 3)
    assert r["mvqa"]["position"].n == 0 and math.isnan(r["mvqa"]["position"].accuracy)
    assert r["ovqa"]["position"].accuracy == 0.5
    assert r["ovqa"]["others"].accuracy == 0.0
    assert r["ovqa"]["all"].accuracy == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="attribute"):
        qa_metrics([{**rows[0], "attribute": "size"}])


# --- paper numbers ----------------------------------------------------------------------

def test_paper_numbers_spot_checks():
    t, v = paper_numbers.TEST, paper_numbers.VAL
    # Table 2, finers.txt line 131.
    assert (t.giou["s"], t.ciou["s"]) == (62.2, 52.6)
    assert (t.giou["xxs"], t.ciou["xxs"]) == (47.2, 27.5)
    assert (t.giou["all"], t.ciou["all"]) == (55.1, 46.5)
    assert (t.mvqa["colors"], t.ovqa["colors"]) == (85.8, 60.5)
    assert (t.mvqa["position"], t.ovqa["position"]) == (63.2, 27.8)
    assert (t.mvqa["all"], t.ovqa["all"]) == (83.3, 56.7)
    # Table A1, line 651.
    assert (v.giou["xs"], v.ciou["xs"]) == (50.8, 27.1)
    assert (v.giou["all"], v.ciou["all"]) == (49.7, 38.6)
    assert (v.mvqa["others"], v.ovqa["others"]) == (100.0, 30.8)
    assert (v.mvqa["all"], v.ovqa["all"]) == (86.8, 60.4)
    assert paper_numbers.TIMING_S_PER_IMAGE == {"GSE": 7.31, "LPR+SAM2": 5.57}
    assert paper_numbers.paper_result("val") is v
    with pytest.raises(ValueError):
        paper_numbers.paper_result("train")


# --- tables -----------------------------------------------------------------------------

def _results():
    seg = segmentation_metrics([
        sample(1, rle(0, 0, 10, 10), rle(5, 0, 10, 10), "s"),     # 1/3
        sample(2, rle(30, 0, 4, 4), rle(30, 0, 4, 4), "xs"),      # 1
        sample(3, rle(50, 30, 2, 2), None, "xxs"),                # 0
    ])
    qa = qa_metrics([
        {"task_type": "option", "attribute": "colors", "answer": "A", "pred_response": "A"},
        {"task_type": "option", "attribute": "shape", "answer": "A", "pred_response": "B"},
        {"task_type": "reasoning", "attribute": "colors", "answer": "red", "pred_response": "red"},
    ])
    return seg, qa


def test_table_layout_and_values(tmp_path):
    seg, qa = _results()
    table = write_tables(tmp_path / "t2.parquet", tmp_path / "t2.md", seg, qa, "test",
                         timing={"GSE": 1.5, "LPR+SAM2": 0.25})
    back = pq.read_table(tmp_path / "t2.parquet")
    assert back.schema.equals(table.schema, check_metadata=True)
    assert repr(back.to_pydict()) == repr(table.to_pydict())   # NaN != NaN, so compare text
    d = back.to_pydict()
    assert d["metric"] == ["gIoU", "cIoU", "MVQA", "OVQA", "GSE time", "LPR+SAM2 time"]
    assert "IoU/S paper" in d and "QA/All paper" in d
    # gIoU row: S = 100/3 %, All = (1/3 + 1 + 0)/3 = 4/9 -> 44.44 %; paper 62.2 and 55.1.
    assert d["IoU/S ours"][0] == pytest.approx(100 / 3)
    assert d["IoU/S paper"][0] == 62.2
    assert d["IoU/All ours"][0] == pytest.approx(400 / 9)
    assert d["IoU/All paper"][0] == 55.1
    # cIoU row, All: (50 + 16 + 0) / (150 + 16 + 4) = 66/170; paper 46.5.
    assert d["IoU/All ours"][1] == pytest.approx(6600 / 170)
    assert d["IoU/All paper"][1] == 46.5
    assert d["IoU/All n"][1] == 3
    # MVQA row: colors 1/1, shape 0/1, all 1/2; paper Color 85.8; IoU cells empty.
    assert d["QA/Color ours"][2] == 100.0 and d["QA/Color paper"][2] == 85.8
    assert d["QA/Shape ours"][2] == 0.0 and d["QA/All ours"][2] == 50.0
    assert d["IoU/S ours"][2] is None and d["IoU/S paper"][2] is None
    # OVQA row: colors 1/1, no shape samples -> NaN, n 0; paper Shape 49.2.
    assert d["QA/Color ours"][3] == 100.0
    assert math.isnan(d["QA/Shape ours"][3]) and d["QA/Shape n"][3] == 0
    assert d["QA/Shape paper"][3] == 49.2
    # Timing rows.
    assert d["Time s/img ours"][4:] == [1.5, 0.25]
    assert d["Time s/img paper"][4:] == [7.31, 5.57]

    md = (tmp_path / "t2.md").read_text()
    assert md == to_markdown(table)
    lines = md.splitlines()
    header = next(l for l in lines if l.startswith("| Method | S"))
    assert header == ("| Method | S | XS | XXS | All (IoU) | Color | Shape | Others | Position | All (QA) |")
    ours = next(l for l in lines if l.startswith("| Ours (reproduced) | 33.3"))
    paper = next(l for l in lines if l.startswith("| FineRS (paper, Table 2) |"))
    # S: gIoU 33.3 / cIoU 33.3; All (QA): MVQA 50.0 / OVQA 100.0.
    assert ours.split(" | ")[1] == "33.3/33.3" and ours.split(" | ")[-1] == "50.0/100.0 |"
    assert paper.split(" | ")[1:3] == ["62.2/52.6", "59.0/43.1"]
    assert "| 7.31 | 5.57 |" in md and "| 1.50 | 0.25 |" in md
    assert not list(tmp_path.glob(".*partial"))                 # no temporary files left


def test_val_table_uses_table_a1_and_skips_timing():
    seg, qa = _results()
    table = build_table(seg, qa, "val")
    d = table.to_pydict()
    assert d["metric"] == ["gIoU", "cIoU", "MVQA", "OVQA"]
    assert "Time s/img ours" not in d
    assert d["IoU/XS paper"][1] == 27.1 and d["QA/Others paper"][2] == 100.0
    assert "Table A1" in to_markdown(table)
    with pytest.raises(ValueError):
        build_table(seg, qa, "test", timing={"SAM": 1.0})


def test_untrained_reference_columns_and_row(tmp_path):
    import json

    from reproseg.metrics.tables import scores_from_metrics

    seg, qa = _results()
    # The untrained reference: only the XS sample segmented (1/1), the MVQA shape answer right.
    seg_u = segmentation_metrics([
        sample(1, rle(0, 0, 10, 10), None, "s"),
        sample(2, rle(30, 0, 4, 4), rle(30, 0, 4, 4), "xs"),
        sample(3, rle(50, 30, 2, 2), None, "xxs"),
    ])
    qa_u = qa_metrics([
        {"task_type": "option", "attribute": "colors", "answer": "A", "pred_response": "B"},
        {"task_type": "option", "attribute": "shape", "answer": "A", "pred_response": "A"},
        {"task_type": "reasoning", "attribute": "colors", "answer": "red", "pred_response": "blue"},
    ])
    # Through the metrics JSON, as rule evaluate_finers_untrained writes it.
    metrics = json.loads(json.dumps({
        "segmentation": {k: vars(v) for k, v in seg_u.items()},
        "qa": {t: {g: {"n": s.n, "correct": s.correct, "smoothing": s.smoothing} for g, s in groups.items()}
               for t, groups in qa_u.items()},
    }))
    table = write_tables(tmp_path / "t.parquet", tmp_path / "t.md", seg, qa, "test",
                         untrained=scores_from_metrics(metrics))
    d = table.to_pydict()
    assert d["IoU/All untrained"][0] == pytest.approx(100 / 3)       # (0 + 1 + 0) / 3
    assert d["IoU/S untrained"][0] == 0.0 and d["IoU/XS untrained"][0] == 100.0
    assert d["IoU/All ours"][0] == pytest.approx(400 / 9)
    assert d["QA/Shape untrained"][2] == 100.0 and d["QA/Color untrained"][2] == 0.0
    assert d["QA/Color untrained"][3] == 0.0 and d["IoU/S untrained"][2] is None
    md = (tmp_path / "t.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| Ours, untrained"))
    assert row.split(" | ")[1:3] == ["0.0/0.0", "100.0/100.0"]
    # Without a reference there is no such column or row.
    assert "IoU/All untrained" not in build_table(seg, qa, "test").column_names
