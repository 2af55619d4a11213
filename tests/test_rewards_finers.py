"""FineRS reward terms (LPR Eq. 6, GSE Eq. 7) and the box geometry under them.

Expected values are worked out by hand in the comments."""
import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import parse
from reproseg.finers import gse_rewards, lpr_rewards
from reproseg.finers.gse_rewards import (cover_reward, gse_format_reward, gse_response_reward, region_iou_reward,
                                         region_l1_reward, size_reward)
from reproseg.finers.lpr_rewards import (box_iou_reward, box_l1_reward, lpr_format_reward, lpr_response_reward,
                                         pair_distance, point_reward)
from reproseg.finers.reward_terms import FinersTarget, RewardProfile, think_reward
from reproseg.finers.reward_terms import total_reward as _total

LPR_TERMS, GSE_TERMS = tuple(lpr_rewards.TERMS), tuple(gse_rewards.TERMS)


def total_reward(parsed, gt, profile=None, disabled=frozenset(), stage="lpr"):
    """The stage's terms and their sum (the helper takes the stage's TERMS)."""
    terms = lpr_rewards.TERMS if stage == "lpr" else gse_rewards.TERMS
    return _total(parsed, gt, terms, profile, disabled)

PAPER = RewardProfile.paper()
CODE = RewardProfile.reference_code()
BOTH = [PAPER, CODE]


def completion(answer: dict | str, think: str = "The cup is on the left.") -> str:
    body = answer if isinstance(answer, str) else json.dumps(answer)
    return parse(f"<think>{think}</think>\n<answer>{body}</answer>")


def lpr_answer(bbox=(100, 100, 200, 200), p1=(120, 130), p2=(170, 160), response="The object is found."):
    return {"bbox": list(bbox), "points_1": list(p1), "points_2": list(p2), "response": response}


LPR_GT = FinersTarget(qtype="referring", answer="The object is found.", bbox=(100, 100, 200, 200),
                      points=((120, 130), (170, 160)))


# ---------------------------------------------------------------- geometry

def test_iou_conventions():
    # Continuous: (0,0,100,50) in (0,0,100,100) -> 5000 / 10000.
    assert geo.box_iou((0, 0, 100, 50), (0, 0, 100, 100)) == 0.5
    # +1 pixels: (0,0,99,49) is 100x50 = 5000 px inside 100x100 -> 0.5 as well.
    assert geo.box_iou((0, 0, 99, 49), (0, 0, 99, 99), plus_one=True, strict=True) == 0.5
    # Identical one-pixel boxes: empty (continuous), 1/1 (+1), 0 under the strict test.
    one = (5, 5, 5, 5)
    assert geo.box_iou(one, one) == 0.0
    assert geo.box_iou(one, one, plus_one=True) == 1.0
    assert geo.box_iou(one, one, plus_one=True, strict=True) == 0.0
    # Boxes sharing one pixel column: (0,0,10,10) and (10,0,20,10).
    # +1: inter 1 x 11 = 11, areas 121 each -> 11 / 231; strict test (10 < 10 fails) -> 0.
    assert geo.box_iou((0, 0, 10, 10), (10, 0, 20, 10), plus_one=True) == pytest.approx(11 / 231)
    assert geo.box_iou((0, 0, 10, 10), (10, 0, 20, 10), plus_one=True, strict=True) == 0.0
    assert geo.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    # Inverted, huge and disjoint boxes score 0, never NaN.
    assert geo.box_iou((10, 10, 0, 0), (0, 0, 10, 10)) == 0.0
    assert geo.box_iou((10, 10, 0, 0), (10, 10, 0, 0), plus_one=True) == 0.0
    assert geo.box_iou((-1e308, -1e308, 1e308, 1e308), (0, 0, 1, 1)) == 0.0
    assert geo.box_iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0


def test_iou_matrix_shapes_and_points():
    m = geo.iou_matrix([(0, 0, 10, 10), (0, 0, 5, 10)], [(0, 0, 10, 10)])
    assert m.shape == (2, 1) and m[0, 0] == 1.0 and m[1, 0] == 0.5
    assert geo.iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)
    assert geo.box_l1((0, 0, 100, 100), (10, 10, 110, 110)) == 10.0
    assert geo.point_distance((0, 0), (3, 4)) == 5.0 and geo.point_l1((0, 0), (3, -4)) == 7.0
    assert geo.point_in_box((0, 10), (0, 0, 10, 10)) and not geo.point_in_box((10.5, 5), (0, 0, 10, 10))
    assert geo.box_contains((0, 0, 10, 10), (0, 0, 10, 10)) and not geo.box_contains((1, 0, 10, 10), (0, 0, 5, 5))
    assert geo.box_size((0, 0, 240, 10), plus_one=True) == (241.0, 11.0)
    assert list(geo.points_in_boxes([(1, 1), (5, 5)], [(0, 0, 2, 2), (0, 0, 2, 2)])) == [True, False]


# ---------------------------------------------------------------- LPR

@pytest.mark.parametrize("profile", BOTH, ids=lambda p: p.name)
def test_perfect_lpr_answer_scores_6(profile):
    out = total_reward(completion(lpr_answer()), LPR_GT, profile, stage="lpr")
    assert out == {"box_iou": 1.0, "box_l1": 1.0, "point": 1.0, "format": 1.0, "think": 1.0,
                   "response": 1.0, "total": 6.0}


def test_box_iou_is_strictly_greater_than_half():
    gt = FinersTarget(bbox=(0, 0, 100, 100))
    # Paper, continuous: 100x50 in 100x100 -> 0.5 -> 0; 100x51 -> 0.51 -> 1.
    assert box_iou_reward(completion(lpr_answer(bbox=(0, 0, 100, 50))), gt, PAPER) == 0.0
    assert box_iou_reward(completion(lpr_answer(bbox=(0, 0, 100, 51))), gt, PAPER) == 1.0
    # Code, +1 pixels: GT (0,0,99,99) = 10000 px; (0,0,99,49) = 5000 px -> 0.5 -> 0;
    # (0,0,99,50) = 5100 px -> 0.51 -> 1.
    gt1 = FinersTarget(bbox=(0, 0, 99, 99))
    assert box_iou_reward(completion(lpr_answer(bbox=(0, 0, 99, 49))), gt1, CODE) == 0.0
    assert box_iou_reward(completion(lpr_answer(bbox=(0, 0, 99, 50))), gt1, CODE) == 1.0
    # Identical one-pixel boxes: the code's strict overlap test gives IoU 0.
    gt_px = FinersTarget(bbox=(5, 5, 5, 5))
    assert box_iou_reward(completion(lpr_answer(bbox=(5, 5, 5, 5))), gt_px, CODE) == 0.0


def test_box_l1_is_strictly_below_10():
    gt = FinersTarget(bbox=(0, 0, 100, 100))
    # All four coordinates off by 10 -> mean 10 -> 0.
    assert box_l1_reward(completion(lpr_answer(bbox=(10, 10, 110, 110))), gt, PAPER) == 0.0
    # (9 + 10 + 10 + 10) / 4 = 9.75 -> 1.
    for profile in BOTH:
        assert box_l1_reward(completion(lpr_answer(bbox=(9, 10, 110, 110))), gt, profile) == 1.0


def test_point_term_paper_l1_boundary_and_pairing():
    # GT points g1=(120,130), g2=(170,160).
    # p1=(180,170): L1 to g1 = 60+40 = 100; p2=(230,200): L1 to g2 = 60+40 = 100 -> mean 100 -> 0.
    # Crossed: p1-g2 = 10+10 = 20, p2-g1 = 110+70 = 180 -> mean 100 as well -> 0.
    ans = lpr_answer(bbox=(0, 0, 300, 300), p1=(180, 170), p2=(230, 200))
    assert point_reward(completion(ans), LPR_GT, PAPER) == 0.0
    # p2=(229,200): straight 100 + 99 = 199 -> 99.5 < 100 -> 1.
    ans = lpr_answer(bbox=(0, 0, 300, 300), p1=(180, 170), p2=(229, 200))
    assert point_reward(completion(ans), LPR_GT, PAPER) == 1.0
    # Swapped points score through the crossed pairing.
    assert point_reward(completion(lpr_answer(p1=(170, 160), p2=(120, 130))), LPR_GT, PAPER) == 1.0
    assert pair_distance(((170, 160), (120, 130)), ((120, 130), (170, 160)), "l1") == 0.0


def test_point_term_code_rules():
    gt = FinersTarget(points=((0, 0), (0, 0)))
    # Euclidean vs L1: (60,60) is 84.85 px away (code: 1) but 120 px in L1 (paper: 0).
    ans = lpr_answer(bbox=(0, 0, 100, 100), p1=(60, 60), p2=(60, 60))
    assert point_reward(completion(ans), gt, CODE) == 1.0
    assert point_reward(completion(ans), gt, PAPER) == 0.0
    # Points outside the predicted box: code 0, paper does not ask.
    gt2 = FinersTarget(points=((150, 150), (160, 150)))
    ans = lpr_answer(bbox=(100, 100, 200, 200), p1=(150, 150), p2=(250, 150))   # p2 outside
    assert point_reward(completion(ans), gt2, PAPER) == 1.0   # (0 + 90) / 2 = 45 < 100
    assert point_reward(completion(ans), gt2, CODE) == 0.0
    # Truncation: (0.9, 0) becomes (0, 0), exactly 100 px from (100, 0) -> 0; untruncated 99.1 -> 1.
    gt3 = FinersTarget(points=((100, 0), (100, 0)))
    ans = lpr_answer(bbox=(0, 0, 200, 200), p1=(0.9, 0), p2=(0.9, 0))
    assert point_reward(completion(ans), gt3, CODE) == 0.0
    assert point_reward(completion(ans), gt3, dataclasses.replace(CODE, point_truncate=False)) == 1.0
    assert point_reward(completion(ans), gt3, PAPER) == 1.0   # L1 99.1


def test_lpr_format_exact_keys_vs_code_checks():
    ok = lpr_answer()
    extra = {**ok, "score": 1}
    blank = {**ok, "response": "   "}
    strings = {**ok, "bbox": ["a", "b", "c", "d"]}
    missing = {k: v for k, v in ok.items() if k != "points_2"}
    cases = {"ok": (ok, 1, 1), "extra": (extra, 0, 1), "blank": (blank, 1, 0),
             "strings": (strings, 0, 1), "missing": (missing, 0, 0)}
    for name, (ans, paper, code) in cases.items():
        assert lpr_format_reward(completion(ans), None, PAPER) == paper, name
        assert lpr_format_reward(completion(ans), None, CODE) == code, name


def test_code_profile_reads_the_first_flat_object_anywhere():
    # JSON only in the think block: the code still finds it; the paper reads <answer> only.
    text = "<think>" + json.dumps(lpr_answer()) + "</think><answer>none</answer>"
    assert lpr_format_reward(parse(text), None, CODE) == 1.0
    assert lpr_format_reward(parse(text), None, PAPER) == 0.0
    # A brace in the reasoning comes first and hides the answer from the code.
    p = completion(lpr_answer(), think="the set {a, b} is small")
    assert total_reward(p, LPR_GT, CODE)["total"] == 1.0        # think only
    assert total_reward(p, LPR_GT, PAPER)["total"] == 6.0


def test_think_term():
    assert think_reward(completion(lpr_answer())) == 1.0
    assert think_reward(parse("<answer>{}</answer>")) == 0.0
    assert think_reward(parse("<think>a</think><answer>{}</answer> trailing")) == 0.0


@pytest.mark.parametrize("response, paper, code", [
    ("The object is found.", 1, 1),
    ("IT IS DETECTED", 1, 1),
    ("This is foundational.", 0, 1),     # substring only for the code
    ("The object was found.", 0, 0),
])
def test_response_instruction_segmentation(response, paper, code):
    gt = FinersTarget(qtype="referring", answer="The object is found.")
    ans = completion(lpr_answer(response=response))
    assert lpr_response_reward(ans, gt, PAPER) == paper
    assert lpr_response_reward(ans, gt, CODE) == code


@pytest.mark.parametrize("gt_answer, response, paper, code", [
    ("B", "B", 1, 1),
    ("B", "(b).", 1, 1),
    # The GT option may carry its text for the paper rule; the code takes the MVQA rule for
    # a GT of exactly a-d only, so "b. red" goes to the open rule: "B" vs "b. red" -> 0.
    ("B. red", "B", 1, 0),
    # A letter outside a-d: the paper rule still reads it as the option; the code's open
    # rule compares the words as written with "e": "E" 0, "e" 1 (ratio 1), "(e)" 2/4 = 0.5 -> 0.
    ("E", "E", 1, 0),
    ("E", "e", 1, 1),
    ("E", "(e)", 1, 0),
    ("B", "A or B", 0, 1),           # any standalone letter counts for the code
    ("B", "The answer is b", 0, 1),
    ("A", "a cat", 0, 1),            # even the article
    ("B", "bb", 0, 0),
    ("B", "C", 0, 0),
    ("", "B", 0, 0),                 # no GT letter
])
def test_response_multiple_choice(gt_answer, response, paper, code):
    gt = FinersTarget(qtype="option", answer=gt_answer)
    ans = completion(lpr_answer(response=response))
    assert lpr_response_reward(ans, gt, PAPER) == paper
    assert lpr_response_reward(ans, gt, CODE) == code


@pytest.mark.parametrize("response, paper, lpr_code, gse_code", [
    # "yell" vs "yellow": 4 matching chars, 2*4/(4+6) = 0.8 exactly -> >= 0.8 passes.
    ("yell", 1, 1, 1),
    # "yel": 2*3/9 = 0.667 -> 0.
    ("yel", 0, 0, 0),
    # Paper lower-cases the whole response; the code compares words as written.
    ("  YELLOW ", 1, 0, 0),
    # Paper: whole string vs answer, 2*6/(12+6) = 0.667 -> 0; code: the word "yellow" -> 1.
    ("it is yellow", 0, 1, 1),
    # Four words: the code's LPR reward gives 0, its GSE reward has no word limit.
    ("the cup is yellow", 0, 0, 1),
])
def test_response_open_ended(response, paper, lpr_code, gse_code):
    gt = FinersTarget(qtype="reasoning", answer="Yellow")
    ans = completion(lpr_answer(response=response))
    assert lpr_response_reward(ans, gt, PAPER) == paper
    assert lpr_response_reward(ans, gt, CODE) == lpr_code
    gse = completion({"bbox": [0, 0, 1, 1], "region": [0, 0, 1, 1], "response": response})
    assert gse_response_reward(gse, gt, CODE) == gse_code
    assert gse_response_reward(gse, gt, PAPER) == paper


@pytest.mark.parametrize("qtype, gt_answer, response, paper, code", [
    # The code picks its rule from the GT response text, not from the question type.
    # A reasoning answer "A" is an option letter there: any standalone "a" scores.
    ("reasoning", "A", "the answer is a", 0, 1),   # paper: ratio("the answer is a", "a") = 2/16
    # A referring sample's GT response is always "The object is found." in the code.
    ("referring", "", "it is found", 1, 1),
    ("referring", "a red cup", "is detected here", 1, 1),
    # An option answer that is the referring sentence takes the IS rule in the code.
    ("option", "The object is found.", "object is found", 0, 1),
    # No GT answer: the code asserts on an empty GT response and scores 0.
    ("reasoning", "  ", "anything", 0, 0),
    # Surrounding whitespace of the GT is stripped by both.
    ("reasoning", " Yellow ", "yellow", 1, 1),
])
def test_code_response_rule_comes_from_the_answer_text(qtype, gt_answer, response, paper, code):
    gt = FinersTarget(qtype=qtype, answer=gt_answer)
    ans = completion(lpr_answer(response=response))
    assert lpr_response_reward(ans, gt, PAPER) == paper
    assert lpr_response_reward(ans, gt, CODE) == code


def test_response_unknown_qtype_or_missing_response_is_zero():
    assert lpr_response_reward(completion(lpr_answer()), FinersTarget(qtype="other"), PAPER) == 0.0
    assert lpr_response_reward(completion({"bbox": [0, 0, 1, 1]}), LPR_GT, PAPER) == 0.0


# ---------------------------------------------------------------- GSE

GSE_GT = FinersTarget(qtype="referring", answer="The object is found.", bbox=(200, 200, 220, 220),
                      region=(100, 100, 356, 356))


def test_perfect_gse_answers_score_7():
    paper = completion({"region": [100, 100, 356, 356], "response": "The object is found."})
    assert total_reward(paper, GSE_GT, PAPER, stage="gse") == {
        "region_iou": 1.0, "region_l1": 1.0, "size": 1.0, "cover": 1.0, "format": 1.0,
        "think": 1.0, "response": 1.0, "total": 7.0}
    # The code reads "bbox" and counts inclusive pixels: 100..355 is 256 px.
    gt = dataclasses.replace(GSE_GT, region=(100, 100, 355, 355))
    code = completion({"bbox": [100, 100, 355, 355], "response": "The object is found."})
    assert total_reward(code, gt, CODE, stage="gse")["total"] == 7.0
    # Each profile's key is invisible to the other: only think and response remain.
    assert total_reward(code, gt, PAPER, stage="gse")["total"] == 2.0
    assert total_reward(paper, GSE_GT, CODE, stage="gse")["total"] == 2.0


def test_region_iou_thresholds():
    gt = FinersTarget(region=(0, 0, 99, 99))
    # Code (+1): (0,0,99,89) = 100x90 = 9000 of 10000 px -> 0.9 -> not > 0.9 -> 0; ..90 -> 0.91 -> 1.
    assert region_iou_reward(completion({"bbox": [0, 0, 99, 89]}), gt, CODE) == 0.0
    assert region_iou_reward(completion({"bbox": [0, 0, 99, 90]}), gt, CODE) == 1.0
    # Paper (continuous): 99*89 / 99*99 = 0.899 > 0.5 -> 1; exactly 0.5 -> 0.
    assert region_iou_reward(completion({"region": [0, 0, 99, 89]}), gt, PAPER) == 1.0
    gt2 = FinersTarget(region=(0, 0, 100, 100))
    assert region_iou_reward(completion({"region": [0, 0, 100, 50]}), gt2, PAPER) == 0.0


def test_region_l1_thresholds():
    gt = FinersTarget(region=(100, 100, 356, 356))
    shifted = lambda d, key: completion({key: [100 + d, 100 + d, 356 + d, 356 + d]})  # noqa: E731
    assert region_l1_reward(shifted(10, "region"), gt, PAPER) == 0.0      # 10 is not < 10
    assert region_l1_reward(shifted(9.5, "region"), gt, PAPER) == 1.0
    assert region_l1_reward(shifted(15, "bbox"), gt, CODE) == 1.0         # < 20
    assert region_l1_reward(shifted(20, "bbox"), gt, CODE) == 0.0         # 20 is not < 20


@pytest.mark.parametrize("box, paper, code", [
    # Paper widths are x2 - x1; code widths x2 - x1 + 1. Both accept 256 +- 15 = 241..271.
    ((0, 0, 241, 241), 1.0, 1.0),    # paper 241, code 242
    ((0, 0, 271, 271), 1.0, 0.0),    # paper 271, code 272
    ((0, 0, 240, 240), 0.0, 1.0),    # paper 240, code 241
    ((0, 0, 272, 272), 0.0, 0.0),
    ((0, 0, 239, 239), 0.0, 0.0),    # code 240
    ((0, 0, 241, 240), 0.5, 1.0),    # one side fits (paper)
    ((0, 0, 256, 300), 0.5, 0.5),
])
def test_size_reward(box, paper, code):
    assert size_reward(completion({"region": list(box)}), None, PAPER) == paper
    assert size_reward(completion({"bbox": list(box)}), None, CODE) == code


def test_cover_reward_includes_borders():
    gt = FinersTarget(bbox=(200, 200, 220, 220))
    for profile in BOTH:
        key = profile.gse_box_key
        assert cover_reward(completion({key: [200, 200, 220, 220]}), gt, profile) == 1.0
        assert cover_reward(completion({key: [201, 100, 400, 400]}), gt, profile) == 0.0
        assert cover_reward(completion({key: [0, 0, 219.9, 400]}), gt, profile) == 0.0


def test_gse_format():
    assert gse_format_reward(completion({"region": [0, 0, 1, 1], "response": ""}), None, PAPER) == 1.0
    assert gse_format_reward(completion({"region": [0, 0, 1, 1], "response": "x", "bbox": [0, 0, 1, 1]}),
                             None, PAPER) == 0.0     # not exactly {region, response}
    assert gse_format_reward(completion({"bbox": [0, 0, 1, 1], "response": "x", "extra": 1}), None, CODE) == 1.0
    assert gse_format_reward(completion({"bbox": [0, 0, 1, 1], "response": ""}), None, CODE) == 0.0
    assert gse_format_reward(completion({"bbox": [0, 0, 1], "response": "x"}), None, CODE) == 0.0


# ---------------------------------------------------------------- fences and loose values

FENCED_LPR = "<think>t</think><answer>```json\n" + json.dumps(lpr_answer()) + "\n```</answer>"
FENCED_GSE = '<think>t</think><answer>```json\n{"region": [100, 100, 356, 356], "bbox": [100, 100, 355, 355], ' \
             '"response": "The object is found."}\n```</answer>'


@pytest.mark.parametrize("text, stage, paper, code, paper_no_strip", [
    # The paper profile removes a whole-answer fence: the JSON is the answer, 6 of 6.
    # The code's regex finds the first {...} inside the fence, so it scores as unfenced: 6.
    # A paper profile without fence stripping sees no JSON in <answer>: think only.
    (FENCED_LPR, "lpr", 6.0, 6.0, 1.0),
    # GSE with both keys (so each profile finds its own): paper 7 - 1 (format: not exactly
    # {region, response}) = 6; code reads "bbox" through the fence: 7; no strip: think only.
    (FENCED_GSE, "gse", 6.0, 7.0, 1.0),
    # A fence with text after it is no whole-answer fence: the paper reads nothing.
    ("<think>t</think><answer>```json\n" + json.dumps(lpr_answer()) + "\n``` done</answer>", "lpr", 1.0, 6.0, 1.0),
])
def test_fenced_answers(text, stage, paper, code, paper_no_strip):
    gt = LPR_GT if stage == "lpr" else dataclasses.replace(GSE_GT, region=(100, 100, 355, 355))
    assert total_reward(text, gt, PAPER, stage=stage)["total"] == paper
    assert total_reward(text, gt, CODE, stage=stage)["total"] == code
    assert total_reward(text, gt, dataclasses.replace(PAPER, strip_fence=False), stage=stage)["total"] == paper_no_strip


# LPR GT box (100,100,200,200), points (120,130) and (170,160); the answers differ from
# lpr_answer() in one value. Columns: the six terms under paper and under the code.
INF = float("inf")


@pytest.mark.parametrize("change, paper, code", [
    # Numeric strings: int("120") works in the code, so the point term and (lists of 2)
    # the format still score there; the paper's strict reading rejects both.
    ({"points_1": ["120", "130"]}, dict(point=0, format=0), dict(point=1, format=1)),
    # int() truncates: (120.9, 130.9) -> (120, 130); the paper's L1 0.9 + 0.9 is < 100 too.
    ({"points_1": [120.9, 130.9]}, dict(point=1, format=1), dict(point=1, format=1)),
    # A point of three numbers: the code uses the first two (point 1) but its format check
    # wants a list of 2 (format 0); the paper rejects the point.
    ({"points_1": [120, 130, 7]}, dict(point=0, format=0), dict(point=1, format=0)),
    # A string point "12" indexes as "1", "2" in the code: (1, 2), outside the box
    # (100,100,200,200) -> 0 (test_lpr_string_point_indexes_like_the_code has it inside);
    # not a list -> format 0 under both.
    ({"points_1": "12"}, dict(point=0, format=0), dict(point=0, format=0)),
    # NaN coordinates: int(nan) raises in the code -> point 0; the paper rejects them.
    ({"points_1": [float("nan"), 130]}, dict(point=0, format=0), dict(point=0, format=1)),
    # An infinite box holds every point (Python comparisons) and its area is infinite:
    # IoU inter/inf = 0, L1 inf -> 0, point 1, format 1 (a list of 4) in the code; the
    # paper rejects the box (IoU, L1, format 0) and does not ask for the points inside it.
    ({"bbox": [-INF, -INF, INF, INF]}, dict(box_iou=0, box_l1=0, point=1, format=0),
     dict(box_iou=0, box_l1=0, point=1, format=1)),
    # A numeric-string box: max("100", 100) raises in the code: every box term 0, the point
    # term too (its inside test compares the box); the format only checks a list of 4.
    ({"bbox": ["100", 100, 200, 200]}, dict(box_iou=0, box_l1=0, point=1, format=0),
     dict(box_iou=0, box_l1=0, point=0, format=1)),
    # Booleans are numbers to Python: True = 1 is 99 px off on one side, mean L1 24.75 -> 0,
    # IoU (+1) = 101*101 / (200*101) = 0.505 > 0.5 -> 1; the paper rejects booleans.
    ({"bbox": [True, 100, 200, 200]}, dict(box_iou=0, box_l1=0, point=1, format=0),
     dict(box_iou=1, box_l1=0, point=1, format=1)),
])
def test_lpr_loose_values(change, paper, code):
    ans = {**lpr_answer(), **change}
    text = "<think>t</think><answer>" + json.dumps(ans) + "</answer>"
    base = {"box_iou": 1.0, "box_l1": 1.0, "point": 1.0, "format": 1.0, "think": 1.0, "response": 1.0}
    for profile, expected in ((PAPER, paper), (CODE, code)):
        out = total_reward(text, LPR_GT, profile, stage="lpr")
        want = {**base, **{k: float(v) for k, v in expected.items()}}
        assert {k: out[k] for k in base} == want, (profile.name, change)


def test_lpr_string_point_indexes_like_the_code():
    # points_1 "12" reads as (1, 2); GT points (0, 0) and (0, 0), points_2 (3, 4):
    # (sqrt(1 + 4) + 5) / 2 = 3.6 < 100 -> 1 (inside the box (0,0,100,100)); paper 0.
    gt = FinersTarget(points=((0, 0), (0, 0)))
    ans = completion({"bbox": [0, 0, 100, 100], "points_1": "12", "points_2": [3, 4], "response": "x"})
    assert point_reward(ans, gt, CODE) == 1.0 and point_reward(ans, gt, PAPER) == 0.0


@pytest.mark.parametrize("box, terms", [
    # GT region (100,100,355,355) (256 px with +1), object (200,200,220,220).
    # A NaN width fails the size test on its own; the height 355 - 100 + 1 = 256 passes: 0.5.
    # IoU: max/min meet NaN -> inter 0, area NaN -> 0; L1 NaN -> 0; cover 100 <= 200 ... NaN >= 220 -> 0.
    ([100, 100, float("nan"), 355], dict(region_iou=0, region_l1=0, size=0.5, cover=0, format=1)),
    # An infinite box covers the object (cover 1), has infinite sides (size 0) and area.
    ([-INF, -INF, INF, INF], dict(region_iou=0, region_l1=0, size=0, cover=1, format=1)),
    # A huge integer: exact Python comparisons still cover the object, 10**400 + 1 is no
    # side of 256; IoU and L1 overflow a float in the code and score 0.
    ([0, 0, 10 ** 400, 10 ** 400], dict(region_iou=0, region_l1=0, size=0, cover=1, format=1)),
    # A numeric string: the code's arithmetic raises in every box term; format sees a list of 4.
    (["100", 100, 355, 355], dict(region_iou=0, region_l1=0, size=0, cover=0, format=1)),
])
def test_gse_loose_values(box, terms):
    gt = FinersTarget(qtype="referring", answer="", bbox=(200, 200, 220, 220), region=(100, 100, 355, 355))
    text = '<think>t</think><answer>{"bbox": ' + json.dumps(box) + ', "response": "It is found."}</answer>'
    out = total_reward(text, gt, CODE, stage="gse")
    assert {k: out[k] for k in terms} == {k: float(v) for k, v in terms.items()}
    assert out["think"] == out["response"] == 1.0
    # The paper's strict reading rejects all of these boxes: think and response only.
    paper_text = text.replace('"bbox"', '"region"')
    assert total_reward(paper_text, gt, PAPER, stage="gse")["total"] == 2.0


# ---------------------------------------------------------------- totals, ablations, garbage

def test_disabled_terms_report_zero_and_leave_the_total():
    out = total_reward(completion(lpr_answer()), LPR_GT, PAPER, disabled={"response"}, stage="lpr")
    assert out["response"] == 0.0 and out["total"] == 5.0
    paper = completion({"region": [100, 100, 356, 356], "response": "The object is found."})
    out = total_reward(paper, GSE_GT, PAPER, disabled=frozenset({"size", "cover"}), stage="gse")
    assert out["size"] == out["cover"] == 0.0 and out["total"] == 5.0
    assert set(out) == set(GSE_TERMS) | {"total"}
    with pytest.raises(ValueError, match="unknown reward terms"):
        total_reward(paper, GSE_GT, PAPER, disabled={"point"}, stage="gse")   # an LPR term


def test_total_reward_parses_strings_and_defaults_to_paper():
    text = "<think>t</think><answer>" + json.dumps(lpr_answer()) + "</answer>"
    assert total_reward(text, LPR_GT)["total"] == 6.0
    assert RewardProfile.by_name("reference_code") == CODE
    with pytest.raises(ValueError):
        RewardProfile.by_name("nope")


def test_target_from_mapping():
    gt = FinersTarget.from_mapping({"qtype": "option", "answer": "C", "bbox": [1, 2, 3, 4],
                                    "points": [[1, 2], [3, 4]], "region": None})
    assert gt == FinersTarget("option", "C", (1.0, 2.0, 3.0, 4.0), ((1.0, 2.0), (3.0, 4.0)), None)
    assert FinersTarget.from_mapping({"points": [[1, 2]]}).points is None


@pytest.mark.parametrize("profile", BOTH, ids=lambda p: p.name)
@pytest.mark.parametrize("stage", ["lpr", "gse"])
def test_garbage_scores_zero_everywhere(profile, stage):
    gt = LPR_GT if stage == "lpr" else GSE_GT
    for text in ["", "hello", "<answer>{bbox: 1}</answer>", '{"bbox": "x", "response": 7}',
                 "<think>", '<answer>[{"bbox": [NaN, 0, 1, 1]}]</answer>', None, 42]:
        out = total_reward(text, gt, profile, stage=stage)
        assert set(out) == set(LPR_TERMS if stage == "lpr" else GSE_TERMS) | {"total"}
        assert all(v == 0.0 for v in out.values()), (text, out)


_num = st.one_of(st.integers(-10**400, 10**400), st.floats(allow_nan=True, allow_infinity=True),
                 st.booleans(), st.text(max_size=3), st.none())
_answer = st.fixed_dictionaries({}, optional={
    "bbox": st.lists(_num, max_size=5), "region": st.lists(_num, max_size=5),
    "points_1": st.lists(_num, max_size=3), "points_2": st.lists(_num, max_size=3),
    "response": st.one_of(st.text(max_size=20), _num)})


@settings(max_examples=200, deadline=None)
@given(_answer, st.sampled_from(["referring", "option", "reasoning", "junk"]), st.text(max_size=10))
def test_fuzz_rewards_never_raise(answer, qtype, gt_answer):
    try:
        body = json.dumps(answer)
    except (ValueError, OverflowError):
        body = str(answer)
    p = parse("<think>x</think><answer>" + body + "</answer>")
    gt = FinersTarget(qtype=qtype, answer=gt_answer, bbox=(0, 0, 10, 10), points=((1, 1), (2, 2)),
                      region=(0, 0, 256, 256))
    for profile in BOTH:
        for stage in ("lpr", "gse"):
            out = total_reward(p, gt, profile, stage=stage)
            assert all(math.isfinite(v) for v in out.values())
            assert 1.0 <= out["total"] <= (6.0 if stage == "lpr" else 7.0)   # think is always 1
