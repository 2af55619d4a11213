"""The authors' FineRS evaluation protocol (reference_code) against hand-computed readings
of their extract_bbox_points_think and dynamic_box, and the two-stage inference under it."""
import numpy as np
import pytest
from PIL import Image

from conftest import section
from reproseg.data.masks import polygon_to_rle, rle_decode
from reproseg.finers import prompts as P
from reproseg.finers.eval_protocol import NO_ANSWER, AuthorsProtocol, authors_answer, dynamic_crop, protocol
from reproseg.finers.inference import infer_rows

W, H = 200, 100


@pytest.mark.parametrize("text, factors, box, points, response", [
    # plain JSON inside the answer block, scaled by 2
    ('<think>t</think><answer>{"bbox": [10, 20, 30, 40], "points_1": [12, 22], "points_2": [14, 24]}</answer>',
     (2, 2), [20, 40, 60, 80], [[24, 44], [28, 48]], ""),
    # single quotes: ast.literal_eval; int() truncates 10.7 to 10 before the scale
    ("{'bbox': [10.7, 20, 30, 40], 'response': 'A'}", (1.5, 1), [15, 20, 45, 40], None, "A"),
    # the ']"' repair makes this JSON valid
    ('{"bbox": [1, 2, 3, 4]", "response": "x"}', (1, 1), [1, 2, 3, 4], None, "x"),
    # numeric strings go through int()
    ('{"bbox": ["10", "20", "30", "40"]}', (1, 1), [10, 20, 30, 40], None, ""),
    # keys found by substring, any case; a third points key is ignored; a point's extra number too
    ('{"Pred_BBox": [0, 0, 8, 8], "points_a": [1, 2, 9], "points_b": [3, 4], "points_c": [5, 6]}',
     (1, 1), [0, 0, 8, 8], [[1, 2], [3, 4]], ""),
    # Python's round: half to even (2.5 -> 2, 3.5 -> 4)
    ('{"bbox": [5, 7, 9, 11]}', (0.5, 0.5), [2, 4, 4, 6], None, ""),
    # a fence does not hide the object from the regex; '{}' is skipped
    ('<answer>```json\n{} {"bbox": [1, 1, 2, 2], "response": 3}\n```</answer>', (1, 1), [1, 1, 2, 2], None, ""),
    # a box of five numbers is no box; the points still read
    ('{"bbox": [1, 2, 3, 4, 5], "points_1": [1, 1], "points_2": [2, 2]}', (1, 1), None, [[1, 1], [2, 2]], ""),
])
def test_authors_answer_by_hand(text, factors, box, points, response):
    a = authors_answer(text, *factors)
    assert (a.box, a.points, a.response) == (box, points, response)


@pytest.mark.parametrize("text", [
    "no braces at all",
    '{"bbox": ["12.5", 0, 1, 1]}',          # int("12.5") raises in their script
    "{1, 2}",                              # a set: .keys() raises
    "{1: [0, 0, 1, 1]}",                   # a key that is not text
    '{"bbox": 7}',                         # len() of a number raises
    '{"points_1": 3, "points_2": 4}',      # indexing a number raises
    "{" + "[" * 5000 + "}",                # deep nesting
])
def test_authors_answer_where_their_script_raises_or_finds_nothing(text):
    assert authors_answer(text, 1, 1) == NO_ANSWER


def test_dynamic_crop_by_hand():
    # centred square of max(96, longest side); corners rounded half to even, then clipped
    assert dynamic_crop([100, 100, 120, 140], 640, 360, 96) == ([62.0, 72.0, 158.0, 168.0], False)
    assert dynamic_crop([0, 0, 20, 20], 640, 360, 96) == ([0.0, 0.0, 58.0, 58.0], True)
    # the far edge clips to W-1 / H-1 (the slice then leaves out the last column and row)
    assert dynamic_crop([620, 340, 640, 360], 640, 360, 96) == ([582.0, 302.0, 639.0, 359.0], True)
    # cx - side/2 = 62.5 rounds to 62
    assert dynamic_crop([100.5, 100, 120.5, 140], 640, 360, 96)[0][0] == 62.0
    # a box larger than the minimum gives its own side
    assert dynamic_crop([100, 100, 300, 150], 640, 360, 96) == ([100.0, 25.0, 300.0, 225.0], False)
    # a crop left empty by clipping is the whole frame
    assert dynamic_crop([700, 10, 720, 20], 640, 360, 96) == ([0.0, 0.0, 640.0, 360.0], True)


def test_lpr_reading_scales_a_stretched_crop_back():
    # a 57 x 57 border crop shown at 96: the whole view maps back onto the crop
    reading = AuthorsProtocol().lpr('{"bbox": [0, 0, 96, 96], "points_1": [48, 48], "points_2": [0, 96]}',
                                    [582.0, 302.0, 639.0, 359.0], 96)
    assert reading.box == [582, 302, 639, 359]
    assert reading.points == [[582 + 28, 302 + 28], [582, 359]]   # round(48 * 57/96) = round(28.5) = 28
    assert AuthorsProtocol().lpr('{"points_1": [1, 1], "points_2": [2, 2]}', [0, 0, 96, 96], 96) is None


class ThreeMasks:
    """SAM2 stand-in with multimask output: the second mask scores best."""

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, box, point_coords=None, point_labels=None, multimask_output=False):
        self.kwargs = {"points": point_coords, "multimask": multimask_output}
        masks = np.zeros((3, *self.shape), bool)
        masks[1, :2, :3] = True
        return masks, np.array([0.1, 0.9, 0.5]), None


def test_authors_segment_keeps_the_best_scoring_of_three_masks():
    sam = ThreeMasks()
    mask = AuthorsProtocol().segment(sam, np.zeros((5, 5, 3), np.uint8), [0, 0, 4, 4], [])
    assert sam.kwargs == {"points": None, "multimask": True}     # box alone without points
    assert mask.sum() == 6 and mask[:2, :3].all()
    with pytest.raises(ValueError, match="unknown FineRS reward profile"):
        protocol("nonsense")


CFG = section("finers", {
    "gse_size": [100, 50], "lpr_crop": 40, "region_size": 20, "reward_profile": "reference_code",
    "inference": {"batch_size": 4, "max_new_tokens": 8},
    "prompts": {"lpr": {t: "{question}{options} LPR" for t in P.TASK_TYPES},
                "gse": {t: "{question}{options} GSE {region_size}" for t in P.TASK_TYPES}, "look": "Look."},
})


class BoxMask(ThreeMasks):
    def predict(self, box, point_coords=None, point_labels=None, multimask_output=False):
        masks = np.zeros((3, *self.shape), bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        masks[2, y0:y1, x0:x1] = True
        return masks, np.array([0.0, 0.1, 0.7]), None


@pytest.fixture
def row(tmp_path):
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "f.png")
    rle = polygon_to_rle([(120, 40), (130, 40), (130, 50), (120, 50)], W, H)
    return {"id": "r1", "image_path": "f.png", "width": W, "height": H, "box": [120.0, 40.0, 130.0, 50.0],
            "points_centre_jitter": [[125.0, 45.0]] * 2, "points_inscribed": [[125.0, 45.0]] * 2,
            "task_type": "option", "question": "What colour?", "options": ["red", "blue"],
            "option_letters": ["A", "B"], "answer": "B", "answer_option": "B", "attribute": "colors",
            "size_bucket": "s", "rle_counts": rle["counts"]}


def test_inference_under_reference_code(row, tmp_path):
    # GSE at 100 x 50 of a 200 x 100 frame: factors 2; the box [55,15,65,25] -> [110,30,130,50],
    # a 40-px square around its centre (120, 40): [100, 20, 140, 60].
    gse = lambda ims, prompts, n: ["<answer>{'bbox': [55, 15, 65, 25], 'response': 'B'}</answer>"] * len(ims)  # noqa: E731
    # LPR at 40 px of a 40-px crop: the GT box [120,40,130,50] is [20,20,30,30] in the crop
    lpr = lambda ims, prompts, n: ['{"bbox": [20, 20, 30, 30], "points_1": [25, 25], "points_2": [26, 26]}'] * len(ims)  # noqa: E731
    rec = infer_rows([row], str(tmp_path), CFG, gse, lpr, BoxMask(), {"gse": False, "lpr": False})[0]
    assert rec["status"] == "ok" and rec["crop"] == [100.0, 20.0, 140.0, 60.0] and not rec["region_clipped"]
    assert rec["region_gse"] == [55, 15, 65, 25] and rec["pred_response"] == "B"
    assert rec["pred_box"] == [120, 40, 130, 50] and rec["pred_points"] == [[125, 45], [126, 46]]
    mask = rle_decode({"size": [H, W], "counts": rec["pred_rle"]})
    assert mask.sum() == 100 and mask[40:50, 120:130].all()
    # no box from GSE: no crop and no answer, so the QA counts as wrong
    nobox = lambda ims, prompts, n: ['{"response": "B"}'] * len(ims)  # noqa: E731
    rec = infer_rows([row], str(tmp_path), CFG, nobox, lpr, BoxMask(), {"gse": False, "lpr": False})[0]
    assert rec["status"] == "gse_unparsed" and rec["pred_response"] is None
