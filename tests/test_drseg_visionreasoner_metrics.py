"""Evaluation metrics of Dr. Seg's own setting, hand-checked: SAM2 mask union and
gIoU / cIoU, REC accuracy, counting, COCO AP through COCOeval."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reproseg.drseg.visionreasoner import metrics as m
from reproseg.drseg.visionreasoner.task import Objects, answer_objects, to_original


class FakeSAM:
    """A predictor that answers each prompt with three masks: its box filled (score 0.9),
    the whole frame (0.5) and nothing (0.1); it records its calls."""

    def __init__(self, h: int, w: int):
        self.h, self.w, self.calls, self.images = h, w, [], []

    def set_image(self, image):
        self.images.append(image)

    def predict(self, point_coords=None, point_labels=None, box=None, **kw):
        self.calls.append((point_coords.tolist(), point_labels.tolist(), box.tolist()))
        x1, y1, x2, y2 = (int(v) for v in box)
        filled = np.zeros((self.h, self.w), bool)
        filled[y1:y2, x1:x2] = True
        return np.stack([np.ones_like(filled), filled, np.zeros_like(filled)]), np.array([0.5, 0.9, 0.1]), None


def test_union_mask_prompts_each_object_and_ors_the_best_masks():
    sam = FakeSAM(20, 30)
    objs = Objects(((0, 0, 10, 10), (5, 5, 15, 20)), ((3, 3), (8, 9)))
    mask = m.union_mask(sam, "img", objs, 20, 30)
    assert sam.images == ["img"]
    assert sam.calls == [([[3.0, 3.0]], [1], [0.0, 0.0, 10.0, 10.0]), ([[8.0, 9.0]], [1], [5.0, 5.0, 15.0, 20.0])]
    assert mask.sum() == 100 + 150 - 25                       # two boxes, 5 x 5 shared
    empty = FakeSAM(20, 30)
    assert not m.union_mask(empty, "img", Objects((), ()), 20, 30).any() and empty.images == []


def test_segment_sample_and_parse_failure():
    gt = np.zeros((20, 30), bool)
    gt[0:10, 0:20] = True                                      # 200 px
    sam = FakeSAM(20, 30)
    assert m.segment_sample(sam, "img", Objects(((0, 0, 10, 10),), ((3, 3),)), gt) == (100, 200)
    assert m.segment_sample(sam, "img", None, gt) == (0, 200)            # parse failure: I 0, U |gt|
    assert m.segment_sample(sam, "img", Objects((), ()), gt) == (0, 200)  # no object: an empty mask
    # from completion to (I, U): the policy's 840 frame mapped to the 30 x 20 original
    text = '<think>x</think><answer>[{"bbox_2d": [0, 0, 280, 420], "point_2d": [10, 10]}]</answer>'
    objs = to_original(answer_objects(text), 30, 20)
    assert objs.boxes == ((0, 0, 10, 10),)                    # 280 * 30 / 840 = 10, 420 * 20 / 840 = 10
    assert m.segment_sample(FakeSAM(20, 30), "img", objs, gt) == (100, 200)
    with pytest.raises(ValueError, match="predicted mask"):
        m.intersection_union(np.zeros((2, 2)), gt)


def test_giou_ciou():
    pairs = [(50, 100), (0, 40), (0, 0)]
    s = m.segmentation_scores(pairs)
    assert s["gIoU"] == pytest.approx((0.5 + 0 + 0) / 3) and s["cIoU"] == pytest.approx(50 / 140) and s["n"] == 3
    assert m.segmentation_scores(pairs, empty=1.0)["gIoU"] == pytest.approx(0.5)
    assert m.segmentation_scores([(0, 0)])["cIoU"] == 0.0
    assert math.isnan(m.segmentation_scores([])["gIoU"])


def test_rec_accuracy():
    gt = [0, 0, 10, 10]
    assert not m.rec_hit(Objects(((0, 0, 10, 20),), ((1, 1),)), gt)                  # IoU 0.5: not > 0.5
    assert m.rec_hit(Objects(((50, 50, 60, 60), (0, 0, 10, 19)), ((55, 55), (1, 1))), gt)   # 100 / 190
    assert not m.rec_hit(None, gt) and not m.rec_hit(Objects((), ()), gt)
    assert m.rec_accuracy([True, False, False, True]) == 0.5
    assert math.isnan(m.rec_accuracy([]))


def test_counting():
    objs = answer_objects('<answer>[{"bbox_2d": [1, 1, 2, 2], "point_2d": [1, 1]}, '
                          '{"bbox_2d": [3, 3, 4, 4], "point_2d": [3, 3]}]</answer>')
    assert m.predicted_count(objs) == 2 and m.predicted_count(None) == 0
    s = m.counting_scores([3, 0, 5], [3, 1, 2])
    assert s["accuracy"] == pytest.approx(1 / 3) and s["mae"] == pytest.approx(4 / 3)
    assert s["rmse"] == pytest.approx(math.sqrt(10 / 3)) and s["n"] == 3
    with pytest.raises(ValueError):
        m.counting_scores([1], [1, 2])


COCO_GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0}],
    "categories": [{"id": 3, "name": "cup"}],
}
A, B = (10, 10, 40, 40), (60, 60, 80, 80)     # the two GT boxes as x1, y1, x2, y2


def dets(*boxes):
    return m.coco_detections(1, 3, Objects(tuple(boxes), tuple((b[0], b[1]) for b in boxes)), 100, 100)


def test_coco_detections_are_xywh_scored_by_area():
    assert dets(A) == [{"image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.09}]
    no_gt = m.coco_detections(1, 3, Objects((A,), ((0, 0),)), 100, 100, has_gt=False)
    assert no_gt[0]["score"] == 0.0
    assert m.coco_detections(1, 3, None, 100, 100) == []


def test_coco_ap_hand_computed(tmp_path):
    assert m.coco_ap(COCO_GT, dets(A, B))["AP"] == pytest.approx(1.0)
    # one of two found: precision 1 up to recall 0.5, i.e. 51 of COCO's 101 recall points
    half = m.coco_ap(COCO_GT, dets(A))
    assert half["AP"] == pytest.approx(51 / 101) and half["AR100"] == pytest.approx(0.5)
    # a false positive with the largest area ranks first: precisions 0, 1/2, 2/3 at recalls
    # 0, 0.5, 1, interpolated to 2/3 everywhere
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(COCO_GT))
    fp = m.coco_ap(path, dets(A, B, (0, 0, 90, 90)))
    assert fp["AP"] == pytest.approx(2 / 3) and fp["AP50"] == pytest.approx(2 / 3)
    assert fp["AP_medium"] == -1.0                          # no medium GT object: COCOeval's -1
    # A's box 8 px low: IoU 22 / 38 = 0.58, a match at thresholds 0.5 and 0.55 only; from
    # 0.6 on it is a false positive ranked above B: precision 1/2 up to recall 0.5
    shifted = m.coco_ap(COCO_GT, dets((10, 18, 40, 48), B))
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP75"] == pytest.approx(0.5 * 51 / 101)
    assert shifted["AP"] == pytest.approx((2 * 1.0 + 8 * 0.5 * 51 / 101) / 10)
    assert m.coco_ap(COCO_GT, []) == dict.fromkeys(m.COCO_STATS, 0.0)


# ---------------------------------------------------------------- Table 7: P / R / F1 at IoU 0.5

def test_matched_boxes_one_to_one_at_iou_half():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    # [0, 0, 10, 20] has IoU exactly 100 / 200 = 0.5 with gt 0: a match (COCOeval's >=);
    # [0, 0, 10, 21] has 100 / 210 < 0.5: none.
    assert m.matched_boxes([[0, 0, 10, 20]], gt) == 1
    assert m.matched_boxes([[0, 0, 10, 21]], gt) == 0
    # Two predictions on one GT box count once.
    assert m.matched_boxes([[0, 0, 10, 10], [1, 0, 11, 10]], [[0, 0, 10, 10]]) == 1
    wide = [[0, 0, 30, 10]]          # IoU 1/3 with each half: no match
    assert m.matched_boxes(wide, gt) == 0
    # p0 has IoU 90/110 with both GT boxes, p1 70/130 with gt0 only (50/150 with gt1): a
    # greedy pick of p0's best (gt0) leaves p1 unmatched; the one-to-one optimum pairs both.
    assert m.matched_boxes([[1, 0, 11, 10], [-3, 0, 7, 10]], [[0, 0, 10, 10], [2, 0, 12, 10]]) == 2
    assert m.matched_boxes([], gt) == 0 and m.matched_boxes(gt, []) == 0


def test_detection_prf_by_hand():
    # 3 matched of 4 predicted boxes and 6 GT boxes: P 0.75, R 0.5, F1 2 * 0.375 / 1.25 = 0.6.
    got = m.detection_prf(3, 4, 6)
    assert got["precision"] == 0.75 and got["recall"] == 0.5 and got["f1"] == pytest.approx(0.6)
    assert m.detection_prf(0, 0, 5) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m.detection_prf(0, 3, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
