"""Dr. Seg rewards: Look-to-Confirm format terms, Seg-Zero multi-object accuracy, the
accuracy vector and the quantile queue. Expected values are worked out in the comments."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reproseg.answers.parsing import parse
from reproseg.drseg.rewards import (TEMPLATE_PLACEHOLDERS, DistributionRankedReward, DrSegProfile,
                                       QuantileQueue, accuracy_vector, answer_format_reward, gt_objects,
                                       look_reward, non_repeat_reward, point_score, ranked_reward,
                                       segzero_accuracy_reward, think_reward)

PAPER = DrSegProfile.paper()
CODE = DrSegProfile.reference_code()
VR = DrSegProfile.visionreasoner()
NAN = float("nan")


def obj(box, point):
    return {"bbox_2d": list(box), "point_2d": list(point)}


def answer(objs, think="I look at the scene.") -> str:
    return f"<think>{think}</think><answer>{json.dumps(objs)}</answer>"


# ---------------------------------------------------------------- format terms

def test_look_reward():
    assert look_reward("<think>a <look>red handle</look> b</think><answer>[]</answer>", PAPER) == 1.0
    assert look_reward("<think>a <look> \n </look></think><answer>[]</answer>", PAPER) == 0.0   # blank
    assert look_reward("<think>a <look></look> <look>x</look></think><answer>[]</answer>", PAPER) == 1.0
    in_answer = "<think>no tag</think><answer><look>x</look>[]</answer>"
    assert look_reward(in_answer, PAPER) == 0.0 and look_reward(in_answer, CODE) == 1.0
    assert look_reward("<look>outside</look>", PAPER) == 0.0
    assert look_reward(parse("<think><look>x</look></think>"), CODE) == 1.0   # a Parsed works too
    assert think_reward(answer([])) == 1.0 and think_reward("<answer>[]</answer>") == 0.0


def test_answer_format_reward():
    good = [obj((1, 2, 3, 4), (2, 3))]
    assert answer_format_reward(answer(good), PAPER) == 1.0
    assert answer_format_reward(answer([]), PAPER) == 1.0                  # "no object" answer
    assert answer_format_reward(answer([{**good[0], "label": "x"}]), PAPER) == 0.0   # not exact keys
    assert answer_format_reward(answer([obj((1, 2, 3), (2, 3))]), PAPER) == 0.0
    assert answer_format_reward(answer(good[0]), PAPER) == 0.0             # a dict, not a list
    # Code: per item +1 (bbox_2d list of 4) +1 (point_2d list of 2), averaged: (2 + 1) / 2.
    mixed = [obj((1, 2, 3, 4), (2, 3)), {"bbox_2d": [1, 2, 3, 4], "point_2d": [1]}]
    assert answer_format_reward(answer(mixed), CODE) == 1.5
    assert answer_format_reward(answer([]), CODE) == 0.0
    assert answer_format_reward(answer([{"bbox_2d": ["a", "b", "c", "d"], "point_2d": [0, 0]}]), CODE) == 2.0
    assert answer_format_reward("garbage", CODE) == answer_format_reward("garbage", PAPER) == 0.0


def test_non_repeat_reward_paper_vs_code():
    # The code reads the whole completion, so "<think>" sticks to the first sentence ("Go").
    # One repeat: paper 0 (from the first repeat); code 1 (0 from the second).
    once = answer([], think="Go. A cat. A cat.")
    assert non_repeat_reward(once, PAPER) == 0.0 and non_repeat_reward(once, CODE) == 1.0
    twice = answer([], think="Go. A cat. A cat. A cat.")
    assert non_repeat_reward(twice, PAPER) == 0.0 and non_repeat_reward(twice, CODE) == 0.0
    # Case: paper is case-sensitive (three different sentences), code lower-cases (two repeats).
    cased = answer([], think="Go. A cat. a cat. A CAT.")
    assert non_repeat_reward(cased, PAPER) == 1.0 and non_repeat_reward(cased, CODE) == 0.0
    # Sentence ends: paper splits on '.' only, the code on ! and ? too.
    bangs = answer([], think="Go. Look! Look? Look!")
    assert non_repeat_reward(bangs, PAPER) == 1.0 and non_repeat_reward(bangs, CODE) == 0.0
    # The code strips surrounding quotes and brackets before comparing.
    quoted = answer([], think='Go. "A cat". (a cat). [A cat]. End')
    assert non_repeat_reward(quoted, CODE) == 0.0
    assert non_repeat_reward(answer([], think="One. Two. Three."), CODE) == 1.0


def test_non_repeat_reward_placeholders():
    copied = answer([], think="Your reasoning text here. <look>Your -visual- focus</look>")
    assert non_repeat_reward(copied, CODE) == 0.0
    assert non_repeat_reward(copied, PAPER) == 1.0
    # Placeholders are a parameter: any profile can use them, custom phrases too.
    assert non_repeat_reward(copied, PAPER, placeholders=TEMPLATE_PLACEHOLDERS) == 0.0
    whale = answer([], think="A Blue-whale swims.")
    assert non_repeat_reward(whale, PAPER, placeholders=["blue whale"]) == 0.0
    assert non_repeat_reward(whale, CODE, placeholders=[]) == 1.0
    # Word boundaries: "yourreasoning text" is not the phrase.
    assert non_repeat_reward(answer([], think="yourreasoning texts."), CODE) == 1.0


def test_paper_non_repeat_reads_the_think_block():
    # The repeat sits outside <think>: the paper checks the thinking trace only.
    text = "<think>One. Two.</think><answer>[]</answer>. Two. Two."
    assert non_repeat_reward(text, PAPER) == 1.0
    assert non_repeat_reward(text, CODE) == 0.0      # "two" three times in the whole text
    assert non_repeat_reward("no tags. no tags.", PAPER) == 0.0   # no think block: whole text


@pytest.mark.parametrize("think, paper, code, vr", [
    # Columns: Dr. Seg paper, Dr. Seg code, VisionReasoner code (whole completion, '.' only,
    # case-sensitive, 0 from the second repeat, no placeholders).
    ("Go. A cat. A cat.", 0, 1, 1),                 # one repeat
    ("Go. A cat. A cat. A cat.", 0, 0, 0),          # two repeats
    ("Go. A cat. a cat. A CAT.", 1, 0, 1),          # only Dr. Seg's code lower-cases
    ("Go. Look! Look? Look!", 1, 0, 1),             # only Dr. Seg's code splits on ! and ?
    ("Your reasoning text here. More reasoning text.", 1, 0, 1),   # placeholders: Dr. Seg's code only
    # Dr. Seg's code strips outer quotes and spaces but keeps an outer newline as one
    # space: '"\nA cat"' -> " a cat", unlike "a cat": one repeat only -> 1.
    ('Go. "\nA cat". A cat. A cat', 0, 1, 1),
])
def test_non_repeat_three_rules(think, paper, code, vr):
    text = answer([], think=think)
    assert non_repeat_reward(text, PAPER) == paper
    assert non_repeat_reward(text, CODE) == code
    assert non_repeat_reward(text, VR) == vr


def test_visionreasoner_profile_is_its_own():
    assert DrSegProfile.by_name("visionreasoner") == VR and VR.name == "visionreasoner"
    assert VR.placeholders == () and not VR.nr_code_rule and VR != CODE
    with pytest.raises(ValueError, match="visionreasoner"):
        DrSegProfile.by_name("nope")
    # Its non-repeat rule reads the whole completion: two repeats after </answer> -> 0.
    assert non_repeat_reward("<think>One. Two.</think><answer>[]</answer>. Two. Two.", VR) == 0.0


def test_look_reward_code_regex():
    # Dr. Seg's regex <look>\s*\S[\s\S]*?</look> lets \S be the '<' of a closing tag, so two
    # empty blocks in a row score 1 there; the paper wants a non-blank block.
    two_empty = "<think>a <look></look><look></look></think><answer>[]</answer>"
    assert look_reward(two_empty, PAPER) == 0.0 and look_reward(two_empty, CODE) == 1.0
    assert look_reward("<think><look> </look></think><answer>[]</answer>", CODE) == 0.0


def test_fenced_answers_are_no_answer_for_the_code():
    fenced = "<think>t</think><answer>```json\n" + json.dumps([G1]) + "\n```</answer>"
    # Paper: the fence is removed, the answer is exact.
    assert segzero_accuracy_reward(fenced, [G1], PAPER) == 3.0
    assert list(accuracy_vector(fenced, [G1], PAPER)) == [1.0, 1.0, 1.0]
    assert answer_format_reward(fenced, PAPER) == 1.0
    # Code (Dr. Seg and VisionReasoner): json.loads of the fenced block fails: nothing;
    # x2 = min(0, 1) / max(1, 1) = 0.
    for profile in (CODE, VR):
        assert segzero_accuracy_reward(fenced, [G1], profile) == 0.0
        assert answer_format_reward(fenced, profile) == 0.0
        assert list(accuracy_vector(fenced, [G1], profile)) == [0.0, 0.0, 0.0]


def test_code_values_through_numpy():
    # Numeric strings: Dr. Seg's accuracy vector builds float arrays ("0" -> 0.0), so the
    # exact box scores x = (1, 1, 1); the paper's strict reading counts the object (x2 = 1)
    # but has no pair. VisionReasoner's accuracy builds a string array: it fails (0).
    strings = answer([{"bbox_2d": ["0", "0", "99", "99"], "point_2d": ["50", "50"]}])
    assert list(accuracy_vector(strings, [G1], CODE)) == [1.0, 1.0, 1.0]
    assert list(accuracy_vector(strings, [G1], PAPER)) == [0.0, 1.0, 0.0]
    assert segzero_accuracy_reward(strings, [G1], VR) == segzero_accuracy_reward(strings, [G1], CODE) == 0.0
    assert answer_format_reward(strings, CODE) == 2.0 and answer_format_reward(strings, PAPER) == 0.0
    # null -> NaN: IoU NaN (x1 NaN), the point is exact (x3 = 1); NaN fails every criterion.
    null = answer([{"bbox_2d": [0, 0, 99, None], "point_2d": [50, 50]}])
    x = accuracy_vector(null, [G1], CODE)
    assert math.isnan(x[0]) and list(x[1:]) == [1.0, 1.0]
    assert list(accuracy_vector(null, [G1], PAPER)) == [0.0, 1.0, 0.0]
    # A NaN point: distance NaN -> the point score (200 - nan) / 170 is NaN in the code.
    nan_point = answer([{"bbox_2d": [0, 0, 99, 99], "point_2d": [NAN, 50]}])
    x = accuracy_vector(nan_point, [G1], CODE)
    assert x[0] == 1.0 and x[1] == 1.0 and math.isnan(x[2])
    # VisionReasoner's accuracy: IoU and L1 criteria hold, the NaN point fails its own: 2.
    assert segzero_accuracy_reward(nan_point, [G1], VR) == 2.0
    # Such a NaN enters the code's history and ranks 1.0 there (torch's search).
    reward = DistributionRankedReward(CODE)
    reward.on_step_end()
    assert reward([nan_point], gt_objects=[[G1]]) == [3.0]
    # A point of three numbers: the distance broadcast fails -> x1 = x3 = 0 (M still counts).
    three = answer([{"bbox_2d": [0, 0, 99, 99], "point_2d": [50, 50, 1]}])
    assert list(accuracy_vector(three, [G1], CODE)) == [0.0, 1.0, 0.0]


def test_code_per_item_format_stops_at_an_unreadable_item():
    good = obj((1, 2, 3, 4), (2, 3))
    # The code's loop raises on a string item naming a key ('bbox_2d' in "bbox_2d" is True,
    # then "bbox_2d"["bbox_2d"] fails) and keeps what it summed before: 0, then 2/2 = 1.
    for profile in (CODE, VR):
        assert answer_format_reward(answer(["bbox_2d", good]), profile) == 0.0
        assert answer_format_reward(answer([good, "bbox_2d"]), profile) == 1.0
        assert answer_format_reward(answer([good, "junk"]), profile) == 1.0     # (2 + 0) / 2
        assert answer_format_reward(answer([None, good]), profile) == 0.0      # 'bbox_2d' in None
        assert answer_format_reward(answer({"bbox_2d": [1, 2, 3, 4]}), profile) == 0.0   # a dict


# ---------------------------------------------------------------- Seg-Zero accuracy

G1, G2 = obj((0, 0, 99, 99), (50, 50)), obj((200, 200, 299, 299), (250, 250))


@pytest.mark.parametrize("profile", [PAPER, CODE], ids=lambda p: p.name)
def test_segzero_accuracy(profile):
    gt = [G1, G2]
    # One exact object of two: 3 criteria / max(1, 2) = 1.5.
    assert segzero_accuracy_reward(answer([G2]), gt, profile) == 1.5
    # Both, in swapped order: Hungarian recovers 3 + 3, / 2 = 3.
    assert segzero_accuracy_reward(answer([G2, G1]), gt, profile) == 3.0
    # Plus one stray object: 6 / 3 = 2.
    assert segzero_accuracy_reward(answer([G1, G2, obj((500, 500, 510, 510), (505, 505))]), gt, profile) == 2.0
    # The GT may come as its JSON string.
    assert segzero_accuracy_reward(answer([G1]), json.dumps([G1]), profile) == 3.0
    # Point 25 px away and inside its box: 3. Exactly 30 px: the point criterion fails -> 2.
    assert segzero_accuracy_reward(answer([obj((0, 0, 99, 99), (75, 50))]), [G1], profile) == 3.0
    assert segzero_accuracy_reward(answer([obj((0, 0, 99, 99), (80, 50))]), [G1], profile) == 2.0
    # Point on the GT point but outside its own predicted box (0,0,40,40): no point credit;
    # IoU(+1) = 41^2/100^2 = 0.17, L1 = (59 + 59) / 4 = 29.5 -> 0.
    assert segzero_accuracy_reward(answer([obj((0, 0, 40, 40), (50, 50))]), [G1], profile) == 0.0
    # Malformed values and garbage score 0.
    assert segzero_accuracy_reward(answer([{"bbox_2d": [0, 0, "a", 9], "point_2d": [1, 1]}]), [G1], profile) == 0.0
    assert segzero_accuracy_reward("garbage", [G1], profile) == 0.0
    assert segzero_accuracy_reward(answer([]), [G1], profile) == 0.0


def test_segzero_accuracy_empty_cases_and_cut():
    # Empty answer for empty GT: the code's reward fails (0); the paper profile calls it right.
    assert segzero_accuracy_reward(answer([]), [], CODE) == 0.0
    assert segzero_accuracy_reward(answer([]), [], PAPER) == 3.0
    # 125 exact copies of G1 against 125 GT copies: both cut to 120 -> 120 * 3 / 120.
    assert segzero_accuracy_reward(answer([G1] * 125), [G1] * 125, CODE) == 3.0
    # 121 predictions for 1 GT: cut to 120 -> 3 / 120.
    assert segzero_accuracy_reward(answer([G1] * 121), [G1], CODE) == pytest.approx(3 / 120)


# ---------------------------------------------------------------- accuracy vector

def test_point_score_boundaries():
    assert point_score(0) == 1.0 and point_score(30) == 1.0
    assert point_score(31) == pytest.approx(169 / 170)
    assert point_score(115) == 0.5                     # (200 - 115) / 170
    assert point_score(199.999) == pytest.approx(0.001 / 170)
    assert point_score(200) == 0.0 and point_score(1e9) == 0.0
    assert point_score(float("nan")) == 0.0


def test_accuracy_vector_paper():
    gt = [obj((0, 0, 100, 100), (50, 50))]
    # IoU (continuous) 5000 / 10000 = 0.5; point 30 px away -> 1; one of one -> x2 = 1.
    assert list(accuracy_vector(answer([obj((0, 0, 100, 50), (50, 80))]), gt, PAPER)) == [0.5, 1.0, 1.0]
    # Point 115 px away -> 0.5; 200 px -> 0.
    assert accuracy_vector(answer([obj((0, 0, 100, 100), (50, 165))]), gt, PAPER)[2] == 0.5
    assert accuracy_vector(answer([obj((0, 0, 100, 100), (50, 250))]), gt, PAPER)[2] == 0.0
    # x3 has no inside-the-box requirement: the point lies outside its box, still scores 1.
    assert accuracy_vector(answer([obj((0, 0, 10, 10), (50, 50))]), gt, PAPER)[2] == 1.0
    # Three predictions for two GT objects: x2 = 2/3.
    gt2 = [obj((0, 0, 100, 100), (50, 50)), obj((200, 200, 300, 300), (250, 250))]
    x = accuracy_vector(answer([gt2[0], gt2[1], obj((500, 500, 600, 600), (550, 550))]), gt2, PAPER)
    assert list(x) == pytest.approx([1.0, 2 / 3, 1.0])


def test_accuracy_vector_empty_and_garbage():
    gt = [obj((0, 0, 100, 100), (50, 50))]
    for profile in (PAPER, CODE):
        assert list(accuracy_vector(answer([]), [], profile)) == [0.0, 1.0, 0.0]    # both empty
        assert list(accuracy_vector(answer([]), gt, profile)) == [0.0, 0.0, 0.0]
        assert list(accuracy_vector("garbage", gt, profile)) == [0.0, 0.0, 0.0]
        assert list(accuracy_vector(answer([gt[0]]), "not json", profile)) == [0.0, 0.0, 0.0]  # bad GT: N = 0
        # An item without point_2d voids the whole list (M = 0), as in the code.
        assert list(accuracy_vector(answer([gt[0], {"bbox_2d": [0, 0, 1, 1]}]), gt, profile)) == [0, 0, 0]
        # Keys present but a value malformed: M counts (x2 = 1/2), no pairs.
        bad = {"bbox_2d": [0, 0, "x", 1], "point_2d": [0, 0]}
        assert list(accuracy_vector(answer([gt[0], bad]), gt, profile)) == [0.0, 0.5, 0.0]


def test_accuracy_vector_matching_differs_between_profiles():
    # g1 = (0,0,100,100) with point (10,10); g2 = (0,20,100,120) with point (50,40).
    # Prediction P = (0,0,100,45) with point (50,40).
    # Paper matches on IoU: IoU(P,g1) = 4500/10000 = 0.45 beats IoU(P,g2) = 2500/12000 = 0.208,
    #   so x1 = 0.45 and x3 = g(|(50,40)-(10,10)| = 50) = 150/170.
    # Code matches on criteria: P-g1 scores 0 (IoU 0.455, L1 13.75, point 50 px);
    #   P-g2 scores 1 (point 0 px, inside P), so x1 = IoU+1(P,g2) = 101*26 / (101*46 + 101*101 - 101*26)
    #   = 2626 / 12221, x3 = g(0) = 1.
    gt = [obj((0, 0, 100, 100), (10, 10)), obj((0, 20, 100, 120), (50, 40))]
    pred = answer([obj((0, 0, 100, 45), (50, 40))])
    assert list(accuracy_vector(pred, gt, PAPER)) == pytest.approx([0.45, 0.5, 150 / 170])
    assert list(accuracy_vector(pred, gt, CODE)) == pytest.approx([2626 / 12221, 0.5, 1.0])


def test_gt_objects_cut_and_malformed():
    boxes, points = gt_objects([G1] * 130)
    assert boxes.shape == (120, 4) and points.shape == (120, 2)
    assert gt_objects([{"bbox_2d": [0, 0, 1, 1]}])[0].shape == (0, 4)
    assert gt_objects(None)[0].shape == (0, 4)


# ---------------------------------------------------------------- quantile queue

def test_queue_first_step_ranks_one_against_zero_rows():
    q = QuantileQueue()
    assert len(q) == 128 and q.capacity == 2048 and not q.rows.any()
    # count(0 <= x) = 128 of 128 for any x >= 0, also x = 0.
    assert list(q.rank([0.3, 0.0, 0.9])) == [1.0, 1.0, 1.0]
    assert list(q.rank([-0.1, 0.0, float("nan")])) == [0.0, 1.0, 0.0]
    assert q.rank([[0.1, 0.2, 0.3], [0, 0, 0]]).shape == (2, 3)


def test_queue_push_buffers_until_flush():
    q = QuantileQueue()
    q.push([0.5, 0.5, 0.5])
    assert len(q) == 128 and q.buffered == 1
    assert list(q.rank([0.4, 0.5, 0.6])) == [1.0, 1.0, 1.0]       # buffer not visible yet
    assert q.flush() == {"added": 1, "dropped": 0, "size": 129, "skipped": 0}
    assert q.buffered == 0
    # dim 0: 128 zeros <= 0.4 but not 0.5 -> 128/129; dims 1, 2: 129/129.
    assert list(q.rank([0.4, 0.5, 0.6])) == pytest.approx([128 / 129, 1.0, 1.0])


def test_queue_fifo_eviction():
    q = QuantileQueue(capacity=4, init_rows=2)
    q.push([[1, 1, 1], [2, 2, 2]])
    q.push([3, 3, 3])
    # 2 zeros + 3 rows = 5 > 4: the oldest zero goes.
    assert q.flush() == {"added": 3, "dropped": 1, "size": 4, "skipped": 0}
    assert q.rows[:, 0].tolist() == [0, 1, 2, 3]
    q.push([4, 4, 4])
    q.flush()
    assert q.rows[:, 0].tolist() == [1, 2, 3, 4]
    assert list(q.rank([0.5, 2, 4])) == [0.0, 0.5, 1.0]           # 0/4, 2/4, 4/4
    assert QuantileQueue(capacity=3, init_rows=10).rows.shape == (3, 3)
    with pytest.raises(ValueError):
        QuantileQueue(capacity=0)


def test_queue_skips_and_counts_malformed_rows():
    # The authors' client drops a row that is None, not 3 long, or not float()-able, and
    # goes on; the queue does the same and counts it instead of stopping the training job.
    q = QuantileQueue(capacity=16, init_rows=0)
    q.push(None)                                     # missing: 1
    q.push([1, 2])                                   # wrong length: 2
    q.push(["a", 0.1, 0.2])                          # float("a") fails: 3
    q.push([[0.1, 0.2, 0.3], [0.1, 0.2], None])      # one good row of three: 5
    q.push(["0.5", 0.5, 0.5])                        # float("0.5") works, as in the client
    q.push([0.1, 0.2, float("inf")])                 # paper: non-finite rows are skipped: 6
    assert q.skipped == 6 and q.buffered == 2
    assert q.flush() == {"added": 2, "dropped": 0, "size": 2, "skipped": 6}
    assert q.rows.tolist() == [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]
    q.push([1, 2, 3, 4])
    assert q.flush()["skipped"] == 1 and q.skipped == 7            # since the last flush / in all
    # A malformed query ranks 0 in every dimension, as the service answers it.
    assert list(q.rank([0.5, 0.5])) == [0.0, 0.0, 0.0] and list(q.rank(None)) == [0.0, 0.0, 0.0]
    # The count survives a checkpoint.
    r = QuantileQueue(capacity=16, init_rows=0)
    r.load_state_dict(json.loads(json.dumps(q.state_dict())))
    assert r.skipped == 7
    # The ranked reward exposes it for the engine's log.
    reward = DistributionRankedReward(PAPER)
    reward.queue.push(None)
    assert reward.skipped == 1
    reward.on_step_end()
    assert reward.last_flush == {"added": 0, "dropped": 0, "size": 128, "skipped": 1}


def test_code_queue_keeps_nan_rows_and_ranks_like_torch():
    # The service keeps NaN rows (float(nan) passes its checks); torch.sort puts them last
    # and torch.searchsorted(right=True) moves right unless s[mid] > x, so a NaN met at a
    # midpoint counts as <= x. Sorted dim 0: [0, 0.2, 0.5, nan, nan], n = 5.
    q = QuantileQueue(capacity=8, init_rows=0, dtype="float32", code_rules=True)
    q.push([[0.0, 0, 0], [0.5, 0, 0], [NAN, 0, 0], [0.2, 0, 0], [NAN, 0, 0]])
    assert q.flush() == {"added": 5, "dropped": 0, "size": 5, "skipped": 0}
    # x = 1.0: mid 2 (0.5 <= 1: right), mid 4 (nan: right) -> 5, not numpy's 3.
    # x = 0.3: mid 2 (0.5 > 0.3: left), mid 1 (0.2: right) -> 2. x = NaN: always right -> 5.
    assert q.rank([1.0, 0, 0])[0] == 1.0 and q.rank([0.3, 0, 0])[0] == 0.4 and q.rank([NAN, 0, 0])[0] == 1.0
    # The paper queue skips the NaN rows (3 left) and ranks a NaN query 0.
    p = QuantileQueue(capacity=8, init_rows=0)
    p.push([[0.0, 0, 0], [0.5, 0, 0], [NAN, 0, 0], [0.2, 0, 0], [NAN, 0, 0]])
    assert p.flush()["skipped"] == 2
    assert p.rank([1.0, 0, 0])[0] == 1.0 and p.rank([0.3, 0, 0])[0] == pytest.approx(2 / 3)
    assert p.rank([NAN, 0, 0])[0] == 0.0


def test_queue_empty_and_float32():
    q = QuantileQueue(init_rows=0)
    assert list(q.rank([1, 1, 1])) == [0.0, 0.0, 0.0]
    # float32: 0.1000000001 and 0.1 are the same float32, so the stored row counts as <= 0.1;
    # in float64 it is larger than 0.1 and does not.
    for dtype, expected in (("float32", 1.0), ("float64", 0.0)):
        q = QuantileQueue(capacity=4, init_rows=0, dtype=dtype)
        q.push([0.1000000001] * 3)
        q.flush()
        assert q.rank([0.1, 0.1, 0.1])[0] == expected


def test_queue_state_round_trip():
    q = QuantileQueue(capacity=8, init_rows=2, dtype="float32")
    q.push([[0.25, 0.5, 0.1], [0.7, 0.2, 0.9]])
    q.flush()
    q.push([0.3, 0.3, 0.3])                        # still buffered when saved
    state = json.loads(json.dumps(q.state_dict()))  # JSON-able
    r = QuantileQueue(capacity=8, init_rows=0, dtype="float32")
    r.load_state_dict(state)
    assert np.array_equal(r.rows, q.rows) and r.rows.dtype == np.float32 and r.buffered == 1
    assert np.array_equal(r.rank([0.3, 0.3, 0.3]), q.rank([0.3, 0.3, 0.3]))
    q.flush()
    r.flush()
    assert np.array_equal(r.rows, q.rows)
    # numpy arrays are accepted too; rows beyond capacity keep the newest.
    s = QuantileQueue(capacity=2, init_rows=0)
    s.load_state_dict({"rows": np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]]), "buffer": np.zeros((0, 3))})
    assert s.rows[:, 0].tolist() == [2, 3]
    with pytest.raises(ValueError):
        s.load_state_dict({"dim": 2, "rows": []})


def test_queue_gather_hook_sees_every_flush():
    calls = []
    other_rank = np.array([[0.9, 0.9, 0.9]])

    def gather(local):
        calls.append(local.copy())
        return np.concatenate([local, other_rank])    # rank 0's rows, then rank 1's

    q = QuantileQueue(capacity=16, init_rows=1, gather_fn=gather)
    q.push([0.2, 0.2, 0.2])
    assert q.flush() == {"added": 2, "dropped": 0, "size": 3, "skipped": 0}
    assert [c.tolist() for c in calls] == [[[0.2, 0.2, 0.2]]]
    assert q.rows[:, 0].tolist() == pytest.approx([0, 0.2, 0.9])
    q.flush()                                           # empty local buffer: still gathers
    assert len(calls) == 2 and calls[1].shape == (0, 3) and len(q) == 4


def test_ranked_reward_aggregation():
    assert ranked_reward([1 / 3, 0.5, 1.0], PAPER) == pytest.approx(0.61111111)
    # Code: each quantile rounded to one decimal (Python round), then summed:
    # 1/3 -> 0.3, 0.5 -> 0.5, 1.0 -> 1.0 = 1.8; 0.25 -> 0.2, 0.75 -> 0.8, 0.05 -> 0.1 = 1.1.
    assert ranked_reward([1 / 3, 0.5, 1.0], CODE) == pytest.approx(1.8)
    assert ranked_reward([0.25, 0.75, 0.05], CODE) == pytest.approx(1.1)
    assert ranked_reward([1, 1, 1], CODE) == 3.0 and ranked_reward([1, 1, 1], PAPER) == 1.0


def test_distribution_ranked_reward_over_steps():
    gt = [obj((0, 0, 100, 100), (50, 50))]
    good, junk = answer(gt), "no answer at all"
    r = DistributionRankedReward(PAPER)
    # Step 1: against 128 zero rows every answer, even junk with x = (0, 0, 0), ranks 1.0.
    assert r([good, junk], gt_objects=[gt, gt]) == [1.0, 1.0]
    assert r.last_details[0]["x1"] == 1.0 and r.last_details[1]["x2"] == 0.0
    r.on_step_end()
    # Step 2: the queue holds 129 zero rows and (1, 1, 1): junk ranks 129/130, good 130/130.
    out = r([junk, good], gt_objects=[json.dumps(gt), gt])
    assert out == pytest.approx([129 / 130, 1.0])
    code = DistributionRankedReward(CODE, gt_column="solution")
    assert code([junk], solution=[gt]) == [3.0]          # 3 x round(1.0, 1)
    # State goes through the queue.
    fresh = DistributionRankedReward(PAPER)
    fresh.load_state_dict(r.state_dict())
    assert len(fresh.queue) == 130 and fresh.queue.buffered == 2
    with pytest.raises(ValueError):
        r([good], gt_objects=[])                         # one GT per completion


_val = st.one_of(st.integers(-10**400, 10**400), st.floats(), st.text(max_size=3), st.none(), st.booleans())
_item = st.one_of(st.fixed_dictionaries({}, optional={"bbox_2d": st.lists(_val, max_size=5),
                                                      "point_2d": st.lists(_val, max_size=3)}), _val)


@settings(max_examples=200, deadline=None)
@given(st.lists(_item, max_size=6), st.text(max_size=60))
def test_fuzz_drseg_terms_never_raise(items, think):
    text = f"<think>{think}</think><answer>{json.dumps(items)}</answer>"
    gt = [obj((0, 0, 10, 10), (5, 5))]
    for profile in (PAPER, CODE, VR):
        x = accuracy_vector(text, gt, profile)
        # The code's x1 and x3 are NaN where its arithmetic makes them NaN (null coordinates).
        finite = x[np.isfinite(x)] if profile.code_arrays else x
        assert x.shape == (3,) and ((0 <= finite) & (finite <= 1)).all() and np.isfinite(x[1])
        for v in (look_reward(text, profile), answer_format_reward(text, profile),
                  non_repeat_reward(text, profile), segzero_accuracy_reward(text, gt, profile)):
            assert math.isfinite(v) and 0.0 <= v <= 3.0
        reward = DistributionRankedReward(profile)
        assert math.isfinite(reward([text], gt_objects=[gt])[0])
