"""VisionReasoner's multi-object task under Dr. Seg: the answer, the 840 frame and the
reward terms, against hand-computed cases at their boundaries."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from reproseg.drseg.rewards import DrSegProfile
from reproseg.drseg.visionreasoner import rewards as vr
from reproseg.drseg.visionreasoner import task

VR = DrSegProfile.visionreasoner()
PAPER = DrSegProfile.paper()
CODE = DrSegProfile.reference_code()


def answer(objs, think="I see it.") -> str:
    return f"<think>{think}</think><answer>{json.dumps(objs)}</answer>"


def obj(box, point) -> dict:
    return {"bbox_2d": list(box), "point_2d": list(point)}


# ------------------------------------------------------------------ prompt and answer

def test_prompts_lower_case_and_strip_the_query():
    p = task.render_prompt("The Red Car.")
    assert p.startswith('Please find "the red car" with bboxs and points.Compare the difference')
    assert p.endswith("<answer>" + task.EXAMPLE_ANSWER + "</answer>")
    e = task.render_prompt('Where is it?"', task.LOOK_TO_CONFIRM_TEMPLATE, task.EVAL_STRIP)
    assert e.startswith('Please find "where is it" with')
    assert "<look> [your visual focus] </look>" in e
    # the training strip keeps '?' and '"'
    assert task.clean_query('Where is it?"') == 'where is it?"'


def test_answer_objects_reads_the_list_or_fails_as_a_whole():
    objs = task.answer_objects(answer([obj([1, 2, 3, 4], [2, 3]), obj([5, 6, 7, 8], [6, 7])]))
    assert objs.boxes == ((1, 2, 3, 4), (5, 6, 7, 8)) and objs.points == ((2, 3), (6, 7))
    assert len(task.answer_objects("<answer>[]</answer>")) == 0          # no object: valid
    assert task.answer_objects("no answer") is None
    assert task.answer_objects('<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 2]}</answer>') is None
    assert task.answer_objects(answer([obj([1, 2, 3, 4], [2, 3]), {"bbox_2d": [1, 2, 3, 4]}])) is None
    assert task.answer_objects(answer([obj([1, 2, 3, 4, 5], [2, 3])])) is None
    assert task.answer_objects(answer([obj([1, 2, 3, "4"], [2, 3])])) is None
    fenced = '<answer>```json\n[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]\n```</answer>'
    assert task.answer_objects(fenced) is None                       # the scripts' json.loads fails
    assert len(task.answer_objects(fenced, strip_fence=True)) == 1


def test_rescale_to_the_original_rounds_half_up():
    objs = task.Objects(((10, 11, 20, 21),), ((3, 3),))
    # 1680 x 420: factors 2 and 0.5; 11 * 0.5 + 0.5 = 6.0 -> 6, 3 * 0.5 + 0.5 = 2.0 -> 2
    out = task.to_original(objs, 1680, 420)
    assert out.boxes == ((20, 6, 40, 11),) and out.points == ((6, 2),)
    # 1000 wide: 420 * 1000 / 840 = 500.0 -> 500; 1 * 1.19 + 0.5 = 1.69 -> 1
    out = task.to_original(task.Objects(((420, 0, 1, 840),), ((0, 0),)), 1000, 840)
    assert out.boxes == ((500, 0, 1, 840),)
    back = task.to_policy(task.Objects(((20, 6, 40, 11),), ((6, 2),)), 1680, 420)
    assert back.boxes == ((10, 12, 20, 22),) and back.points == ((3, 4),)   # 6 * 2 + 0.5 -> 12
    assert json.loads(out.as_json()) == [{"bbox_2d": [500, 0, 1, 840], "point_2d": [0, 0]}]


def test_policy_image_is_840_rgb():
    im = task.policy_image(Image.new("L", (100, 50), 7))
    assert im.size == (840, 840) and im.mode == "RGB"
    same = Image.effect_noise((840, 840), 40).convert("RGB")
    assert task.policy_image(same).tobytes() == same.tobytes()     # no resampling at 840


# ------------------------------------------------------------------ multi-object accuracy

GT1 = [obj([100, 100, 200, 200], [150, 150])]


@pytest.mark.parametrize("profile, pred_box, expected", [
    # +1-pixel areas: GT [0,0,9,9] is 100 px; [0,0,9,19] 200 px, inter 100 -> IoU 0.5, not > 0.5
    (VR, [0, 0, 9, 19], 2.0),
    (VR, [0, 0, 9, 18], 3.0),   # 100 / 190 = 0.526
    # continuous areas (paper): [0,0,10,10] is 100, [0,0,10,20] 200 -> 0.5
    (PAPER, [0, 0, 10, 20], 2.0),
    (PAPER, [0, 0, 10, 19], 3.0),
])
def test_accuracy_iou_boundary(profile, pred_box, expected):
    gt_box = [0, 0, 9, 9] if profile is VR else [0, 0, 10, 10]
    gt = [obj(gt_box, [5, 5])]
    # L1 is 2.5 or 2.25 (< 10), the point is on the GT point and inside its box
    assert vr.accuracy(answer([obj(pred_box, [5, 5])]), gt, profile) == expected


@pytest.mark.parametrize("profile", [VR, PAPER, CODE])
def test_accuracy_l1_boundary(profile):
    # L1 = (10 + 10 + 10 + 10) / 4 = 10: not < 10; IoU 0.68 either way; point exact
    assert vr.accuracy(answer([obj([110, 110, 210, 210], [150, 150])]), GT1, profile) == 2.0
    # L1 = (9 + 10 + 10 + 10) / 4 = 9.75
    assert vr.accuracy(answer([obj([109, 110, 210, 210], [150, 150])]), GT1, profile) == 3.0


@pytest.mark.parametrize("profile", [VR, PAPER])
def test_accuracy_point_on_the_box_edge(profile):
    box = [100, 100, 200, 200]
    gt = [obj(box, [190, 150])]
    assert vr.accuracy(answer([obj(box, [200, 150])]), gt, profile) == 3.0    # on the edge: inside
    assert vr.accuracy(answer([obj(box, [100, 100])]), [obj(box, [110, 110])], profile) == 3.0  # a corner
    assert vr.accuracy(answer([obj(box, [201, 150])]), gt, profile) == 2.0    # 11 px away, outside the box
    # distance exactly 30: not < 30
    assert vr.accuracy(answer([obj(box, [150, 150])]), [obj(box, [180, 150])], profile) == 2.0
    assert vr.accuracy(answer([obj(box, [151, 150])]), [obj(box, [180, 150])], profile) == 3.0


@pytest.mark.parametrize("profile", [VR, PAPER])
def test_accuracy_m_not_n(profile):
    far = obj([600, 600, 700, 700], [650, 650])
    # two predictions, one GT: the perfect pair scores 3, divided by max(2, 1)
    assert vr.accuracy(answer([far, GT1[0]]), GT1, profile) == 1.5
    # one prediction, two GT objects
    assert vr.accuracy(answer(GT1), GT1 + [far], profile) == 1.5
    # three predictions for two GT objects: 2 * 3 / 3
    assert vr.accuracy(answer([GT1[0], far, obj([0, 0, 5, 5], [2, 2])]), GT1 + [far], profile) == 2.0
    # Hungarian, not greedy: rows a, b and columns g1, g2 score [[3, 2], [2, 0]]; greedy
    # takes a-g1 (3) and leaves b-g2 (0), the assignment a-g2 + b-g1 = 4
    a, b = obj([0, 0, 10, 10], [5, 5]), obj([-1, -1, 9, 9], [50, 50])
    g1, g2 = obj([0, 0, 10, 10], [5, 5]), obj([9, 9, 19, 19], [14, 14])
    assert vr.accuracy(answer([a, b]), [g1, g2], profile) == 4 / 2


def grid(n: int) -> list[dict]:
    """n distinct 20-px objects on a 60-px grid (13 per row) in the 840 frame."""
    out = []
    for i in range(n):
        x, y = (i % 13) * 60, (i // 13) * 60
        out.append(obj([x, y, x + 20, y + 20], [x + 10, y + 10]))
    return out


@pytest.mark.parametrize("profile", [VR, PAPER, CODE])
def test_accuracy_cuts_both_lists_to_120(profile):
    gt = grid(130)
    # the first 120 predicted exactly: 360 / max(120, 120) after the cut (not 360 / 130)
    assert vr.accuracy(answer(gt[:120]), gt, profile) == 3.0
    # 125 predictions, the last 5 far off: the cut leaves the 120 perfect ones
    assert vr.accuracy(answer(gt[:120] + [obj([800, 800, 830, 830], [810, 810])] * 5), gt[:120], profile) == 3.0
    # 119 of 130: 357 / 120
    assert vr.accuracy(answer(gt[:119]), gt, profile) == pytest.approx(357 / 120)


def test_accuracy_empty_lists():
    assert vr.accuracy(answer([]), GT1, VR) == 0.0
    assert vr.accuracy(answer(GT1), [], VR) == 0.0
    assert vr.accuracy(answer([]), [], VR) == 0.0       # the code: an empty list fails
    assert vr.accuracy(answer([]), [], PAPER) == 3.0    # the paper profile: right about "nothing"


@pytest.mark.parametrize("bad", ["", "garbage", None, 12, b"\xff\xfe", "<answer>[{]</answer>",
                                 '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 2]}</answer>',
                                 '<answer>[["bbox_2d"]]</answer>', '<answer>[{"bbox_2d": null}]</answer>',
                                 "<answer>" + "[" * 5000 + "</answer>"])
@pytest.mark.parametrize("profile", [VR, PAPER, CODE])
def test_every_term_scores_zero_on_garbage(bad, profile):
    for name, fn in {**vr.VISIONREASONER_TERMS, "look": vr.look}.items():
        v = fn(bad, GT1, profile)
        assert isinstance(v, float)
        if name in ("accuracy", "think", "answer_format", "look"):
            assert v == 0.0, (name, bad)


# ------------------------------------------------------------------ format, non-repeat, look

def test_format_terms():
    good = answer(GT1)
    assert vr.think_format(good, None, VR) == 1.0
    assert vr.think_format("<answer>[]</answer>", None, VR) == 0.0
    # per item (code): item 1 scores 2, item 2 (a 3-number box) 1: (2 + 1) / 2
    two = answer([obj([1, 2, 3, 4], [1, 2]), {"bbox_2d": [1, 2, 3], "point_2d": [1, 2]}])
    assert vr.answer_format(two, None, VR) == 1.5
    assert vr.answer_format(two, None, PAPER) == 0.0        # the paper: the whole list conforms, or 0
    assert vr.answer_format(good, None, VR) == 2.0 and vr.answer_format(good, None, PAPER) == 1.0


def test_non_repeat_per_profile():
    # "<think>Hm" is a sentence of its own (the code splits the whole completion)
    once = answer(GT1, think="Hm. The car is red. The car is red. It is left.")
    twice = answer(GT1, think="Hm. The car is red. The car is red. The car is red.")
    assert vr.non_repeat(once, None, VR) == 1.0            # VisionReasoner: 0 from the second repeat
    assert vr.non_repeat(twice, None, VR) == 0.0
    assert vr.non_repeat(once, None, PAPER) == 0.0         # the paper: any repeat
    cased = answer(GT1, think="Hm. The car is red. the car is red. the car is red.")
    assert vr.non_repeat(cased, None, VR) == 1.0           # case-sensitive: one repeat
    assert vr.non_repeat(cased, None, CODE) == 0.0         # Dr. Seg's code lower-cases
    copied = answer(GT1, think="[your reasoning text] <look> [your visual focus] </look>")
    assert vr.non_repeat(copied, None, CODE) == 0.0 and vr.non_repeat(copied, None, VR) == 1.0


def test_look_term():
    assert vr.look(answer(GT1, think="Hm. <look>the red car on the left</look> so."), None, PAPER) == 1.0
    assert vr.look(answer(GT1, think="Hm. <look>  </look>"), None, PAPER) == 0.0
    assert vr.look(answer(GT1), None, PAPER) == 0.0


# ------------------------------------------------------------------ as TRL reward functions

def test_reward_functions_per_setting():
    base = vr.reward_functions(profile="visionreasoner", look_to_confirm=False, distribution_ranked=False)
    assert sorted(base) == ["vr/accuracy", "vr/answer_format", "vr/non_repeat", "vr/think"]
    drseg = vr.reward_functions(profile="paper", look_to_confirm=True, distribution_ranked=True, queue_size=4)
    assert sorted(drseg) == ["vr/accuracy", "vr/answer_format", "vr/look", "vr/non_repeat", "vr/ranked_accuracy",
                             "vr/think"]
    # under the ranked reward the binary accuracy is logged but weighs 0; the baseline trains on it
    assert vr.monitor_weights(drseg, distribution_ranked=True) == {"vr/accuracy": 0.0}
    assert vr.monitor_weights(base, distribution_ranked=False) == {}
    chat = [[{"role": "assistant", "content": [{"type": "text", "text": answer(GT1)}]}], "garbage"]
    gt = [json.dumps(GT1)] * 2
    total = {k: f(chat, gt_objects=gt) for k, f in base.items()}
    assert total == {"vr/accuracy": [3.0, 0.0], "vr/answer_format": [2.0, 0.0], "vr/non_repeat": [1.0, 1.0],
                     "vr/think": [1.0, 0.0]}
    ranked = drseg["vr/ranked_accuracy"]
    # first step: the queue holds zero rows only, so every vector ranks 1.0
    assert ranked(chat, gt_objects=gt) == [1.0, 1.0]
    ranked.on_step_end()
    assert ranked.last_flush == {"added": 2, "dropped": 2, "size": 4, "skipped": 0}
    # now the rows are 2 zeros, x = (1, 1, 1) and x = (0, 0, 0): the perfect answer ranks
    # 4/4 in each dimension, the garbage one 3/4
    assert ranked(chat, gt_objects=gt) == [1.0, 0.75]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["bbox_2d", "point_2d", "x"]),
                                                                        c, max_size=3), max_leaves=20),
       st.text(max_size=30))
def test_fuzz_terms_never_raise(value, think):
    text = answer(value, think=think)
    for profile in (VR, PAPER, CODE):
        for fn in (*vr.VISIONREASONER_TERMS.values(), vr.look):
            v = fn(text, GT1, profile)
            assert isinstance(v, float) and 0.0 <= v <= 3.0
        objs = task.answer_objects(text)
        assert objs is None or len(objs.boxes) == len(objs.points)


def test_train_stage_gives_the_monitor_weight_zero(tmp_path, monkeypatch):
    """The monitor reaches the engine with weight 0 (so it never enters the advantage),
    and a user's own reward weight for it wins."""
    from reproseg.drseg.visionreasoner import train as vr_train

    seen = {}

    def fake_run(job, *, num_gpus, policy_dir, dataset_rows, reward_fns, settings, out_dir, log_path):
        seen["weights"], seen["fns"] = settings["reward_weights"], sorted(reward_fns)
        raise RuntimeError("stop here")

    monkeypatch.setattr(vr_train, "training_rows", lambda *a: [{"id": "x"}])
    monkeypatch.setattr(vr_train.pq, "read_table", lambda path: None)
    monkeypatch.setattr(vr_train, "run_distributed", fake_run)
    rewards = {"profile": "paper", "look_to_confirm": True, "distribution_ranked": True, "queue_size": 8,
               "raw_accuracy": False}
    out = tmp_path / "run" / "checkpoint"
    for grpo, want in (({"reward_weights": None}, {"vr/accuracy": 0.0}),
                       ({"reward_weights": {"vr/accuracy": 0.5}}, {"vr/accuracy": 0.5})):
        with pytest.raises(RuntimeError, match="stop here"):
            vr_train.train_stage("t.parquet", "img", "policy", str(out), "log", "curves", rewards, grpo, 56)
        assert seen["weights"] == want and "vr/accuracy" in seen["fns"]
    with pytest.raises(RuntimeError, match="stop here"):
        vr_train.train_stage("t.parquet", "img", "policy", str(out), "log", "curves",
                             {**rewards, "profile": "visionreasoner", "distribution_ranked": False,
                              "look_to_confirm": False}, {"reward_weights": None}, 56)
    assert seen["weights"] is None
