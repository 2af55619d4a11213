"""SegAnswer pieces that need no model: losses, positions, rewards, dynamic sampling, observation mask.

Every expectation is worked out by hand (scalar math), not by calling the code under test twice.
"""
import math

import numpy as np
import pytest
import torch

from reproseg.seganswer.losses import (
    IGNORE_INDEX,
    Stage1LossWeights,
    actual_iou,
    dice_loss,
    iou_mae_loss,
    next_token_loss,
    object_bce_loss,
    sigmoid_focal_loss,
    stage1_loss,
)
from reproseg.seganswer.positions import SequenceBuilder, mask_patch_keep
from reproseg.seganswer.rollout import Rollout
from reproseg.answers.qa import answer_correct
from reproseg.seganswer.rewards import REWARD_WEIGHTS, accuracy_reward, format_ok, format_reward, total_reward
from reproseg.seganswer.stage3 import Group, collate_rollouts, dynamic_sampling, group_advantages


def sig(x):
    return 1 / (1 + math.exp(-x))


# -- losses --------------------------------------------------------------------------------
def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # pixel 1: p = 0.5, t = 1: ce = ln 2, p_t = 0.5, alpha_t = 0.25
    l1 = 0.25 * (1 - 0.5) ** 2 * math.log(2)
    # pixel 2: p = sigmoid(2), t = 0: ce = ln(1 + e^2), p_t = 1 - p, alpha_t = 0.75
    p = sig(2.0)
    l2 = 0.75 * (1 - (1 - p)) ** 2 * math.log(1 + math.e ** 2)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_dice_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p1, p2 = 0.5, sig(2.0)
    expected = 1 - (2 * p1 + 1) / ((p1 + p2) + 1 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_iou_mae_and_object_bce_by_hand():
    logits = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # predicted {0, 2}, target {0, 1}: I = 1, U = 3
    assert actual_iou(logits, targets).item() == pytest.approx(1 / 3)
    assert iou_mae_loss(torch.tensor([[0.5]]), logits, targets).item() == pytest.approx(0.5 - 1 / 3, rel=1e-6)
    # object present, logit 0 -> ln 2; object absent, logit 1 -> ln(1 + e)
    got = object_bce_loss(torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert got.tolist() == pytest.approx([math.log(2), math.log(1 + math.e)], rel=1e-6)
    # both empty -> IoU 1 by convention
    assert actual_iou(torch.tensor([[-1.0]]), torch.tensor([[0.0]])).item() == 1.0


def test_next_token_loss_by_hand():
    # logits[t] predicts labels[t+1]; label 0 at t=1 (uniform logits), label 1 at t=2 (logits [1, 0])
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    expected = (math.log(2) + math.log(1 + math.e)) / 2
    assert next_token_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_stage1_loss_combines_weighted_terms_and_skips_empty_targets_for_mask_terms():
    w = Stage1LossWeights(ce=2.0, focal=20.0, dice=1.0, iou=3.0, obj=0.5)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    mask_logits = torch.tensor([[[0.0, 2.0]], [[3.0, 3.0]]])  # (S=2, 1, 2)
    targets = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # second target empty
    iou_pred = torch.tensor([[0.5], [0.9]])
    obj_logits = torch.tensor([[0.0], [1.0]])
    out = stage1_loss(logits, labels, mask_logits, targets, iou_pred, obj_logits, w)
    p = sig(2.0)
    focal = (0.25 * 0.25 * math.log(2) + 0.75 * p ** 2 * math.log(1 + math.e ** 2)) / 2  # first mask only
    dice = 1 - 2 / (0.5 + p + 2)
    # mask 1: logits [0, 2] -> predicted {1} (0 is not > 0); target {0}: IoU 0 -> |0.5 - 0| = 0.5
    iou = 0.5
    obj = (math.log(2) + math.log(1 + math.e)) / 2
    ce = math.log(2)
    assert out["focal"].item() == pytest.approx(focal, rel=1e-6)
    assert out["dice"].item() == pytest.approx(dice, rel=1e-6)
    assert out["iou"].item() == pytest.approx(iou, rel=1e-6)
    assert out["obj"].item() == pytest.approx(obj, rel=1e-6)
    assert out["loss"].item() == pytest.approx(2 * ce + 20 * focal + dice + 3 * iou + 0.5 * obj, rel=1e-6)


# -- positions -------------------------------------------------------------------------------
def test_mask_patch_keep_on_a_4x4_merged_grid():
    mask = np.zeros((40, 40), bool)  # grid 8x8 patches -> 4x4 merged, each 10x10 px
    mask[2, 15] = True  # merged patch (0, 1)
    mask[12, 13] = True  # (1, 1)
    mask[35, 25] = True  # (3, 2)
    keep = mask_patch_keep(mask, (1, 8, 8), 2)
    assert np.flatnonzero(keep).tolist() == [1, 5, 14]


def test_segmented_image_keeps_the_original_positions():
    b = SequenceBuilder(image_token_id=99, vision_start_id=97, vision_end_id=98, merge_size=2)
    b.add_text([1, 2, 3])  # positions 0, 1, 2
    b.add_image((1, 8, 8))  # <vs> at 3; patches from s = 4: (4, 4 + r, 4 + c); counter += 4 -> <ve> at 8
    b.add_text([4, 5], by_policy=True)  # 9, 10
    keep = np.zeros(16, bool)
    keep[[1, 5, 14]] = True
    b.add_segmented_image(0, keep)  # <vs> at 11; patches (0,1), (1,1), (3,2) at original ids; <ve> at 12
    b.add_text([6])  # 13

    whole = [[4, 4 + r, 4 + c] for r in range(4) for c in range(4)]
    seg = [[4, 4, 5], [4, 5, 5], [4, 7, 6]]
    expected = ([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]] + whole + [[8, 8, 8], [9, 9, 9], [10, 10, 10],
                [11, 11, 11]] + seg + [[12, 12, 12], [13, 13, 13]])
    assert b.position_ids.T.tolist() == expected
    assert b.ids == [1, 2, 3, 97] + [99] * 16 + [98, 4, 5, 97, 99, 99, 99, 98, 6]
    assert b.policy_mask == [0] * 21 + [1, 1] + [0] * 6
    assert b.mm_types.count(1) == 19
    assert [k is None for k in b.image_keeps] == [True, False]


# -- rewards ---------------------------------------------------------------------------------
def test_reward_weights_are_0_8_and_0_2():
    assert REWARD_WEIGHTS == {"acc": 0.8, "format": 0.2}
    assert total_reward([1, 0, 1, 0], [1, 1, 0, 0]).tolist() == pytest.approx([1.0, 0.2, 0.8, 0.0])


def test_accuracy_and_format_rewards():
    turns = [
        ["look <|seg|>.<|im_end|>", "<answer>B</answer><|im_end|>"],  # right, good format
        ["<answer>A</answer>"],  # wrong answer, good format (no segmentation is allowed)
        ["look <|seg|>", "look again <|seg|>"],  # never answered (turn limit): 0 and 0
        ["<answer>B</answer> <|seg|>"],  # right answer, bad format
    ]
    answered = [True, True, False, True]
    kw = dict(answer=["B"] * 4, options=[["red", "blue"]] * 4, turns=turns, answered=answered)
    assert accuracy_reward(["x"] * 4, **kw) == [1.0, 0.0, 0.0, 1.0]
    assert format_reward(["x"] * 4, turns=turns, answered=answered) == [1.0, 1.0, 0.0, 0.0]
    assert answer_correct("blue", "B", ["red", "blue"])  # the option's text also counts
    assert answer_correct("3.0", "3") and not answer_correct("4", "3")
    assert not format_ok(["<answer>x</answer><answer>y</answer>"], True)


# -- dynamic sampling -------------------------------------------------------------------------
def _g(name, rewards):
    return Group(row={"name": name}, rollouts=[name] * len(rewards), rewards=np.asarray(rewards, float))


def test_dynamic_sampling_drops_equal_groups_and_refills():
    first = [_g("p1", [1, 1, 1, 1]), _g("p2", [0, 1, 0, 1])]
    supply = {1: [_g("p3", [0.2, 0.2, 0.2, 0.2])], 2: [_g("p4", [0.2, 1, 0.2, 0.2])]}
    asked = []

    def draw_more(k, rnd):
        asked.append((k, rnd))
        return supply[rnd]

    kept, stats = dynamic_sampling(first, 2, draw_more, max_rounds=4)
    assert [g.row["name"] for g in kept] == ["p2", "p4"]
    assert asked == [(1, 1), (1, 2)]
    assert (stats.dropped, stats.refill_rounds, stats.padded) == (2, 2, 0)
    assert len(stats.generated_groups) == 4


def test_dynamic_sampling_pads_with_dropped_groups_when_rounds_run_out():
    first = [_g("p1", [1, 1, 1, 1]), _g("p2", [0, 1, 0, 1])]
    kept, stats = dynamic_sampling(first, 2, lambda k, r: [_g("p3", [0, 0, 0, 0])], max_rounds=1)
    assert [g.row["name"] for g in kept] == ["p2", "p1"]
    assert (stats.dropped, stats.refill_rounds, stats.padded) == (2, 1, 1)


def test_group_advantages():
    a = group_advantages(np.array([0.0, 1.0, 0.0, 1.0]))
    std = math.sqrt(((0.5 ** 2) * 4) / 3)  # sample std
    assert a.tolist() == pytest.approx([-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)] * 2)


# -- observation mask -------------------------------------------------------------------------
def _rollout(ids, loss, prompt_len, pos_offset=0):
    pos = torch.arange(len(ids)).expand(3, -1) + pos_offset
    return Rollout(ids=ids, positions=pos.clone(), policy_mask=loss, prompt_len=prompt_len,
                   pixel_values=[torch.zeros(4, 3)], grids=[torch.tensor([[1, 2, 2]])], keeps=[None],
                   turns=["t"], seg_calls=0, answered=True)


def test_observation_tokens_are_out_of_the_policy_mask():
    # prompt p0 p1 p2 | generated g0 g1 | observation o0 o1 o2 | generated g2
    r1 = _rollout([10, 11, 12, 20, 21, 30, 31, 32, 22], [0, 0, 0, 1, 1, 0, 0, 0, 1], 3)
    r2 = _rollout([13, 14, 23], [0, 0, 1], 2, pos_offset=100)
    b = collate_rollouts([r1, r2], [1.0, -1.0], pad_id=0)
    assert b["prompt_ids"].tolist() == [[10, 11, 12], [0, 13, 14]]
    assert b["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert b["completion_ids"].tolist() == [[20, 21, 30, 31, 32, 22], [23, 0, 0, 0, 0, 0]]
    in_loss = b["completion_mask"] * b["tool_mask"]
    assert in_loss.tolist() == [[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    # positions follow the same left/right padding as the ids
    assert b["position_ids"][0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert b["position_ids"][0, 1].tolist() == [0, 100, 101, 102, 0, 0, 0, 0, 0]
    assert b["advantages"].tolist() == [1.0, -1.0]
    assert b["image_grid_thw"].shape == (2, 3) and b["image_keeps"] == [None, None]


def test_reasoning_prompt_from_config_reaches_every_question_turn():
    """seganswer.reasoning_prompt is the first user turn of stage 2, stage 3 and the evaluation."""
    from reproseg.seganswer import stage2, stage3
    from reproseg.seganswer.prompts import REASONING_PROMPT

    template = "Q? {question} Use <|seg|> if it helps."
    row = {"question": "What colour is the car?", "options": ["red", "blue"], "answer": "B",
           "image": __import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8))}
    s2 = stage2.Stage2Settings(reasoning_prompt=template)
    text = stage2.first_turn_messages(row, s2)[0]["content"][1]["text"]
    assert text.startswith("Q? What colour is the car?") and text.endswith("Use <|seg|> if it helps.")
    served = stage3.stage3_rows([row], template)[0]["prompt"][0]["content"][1]["text"]
    assert served == text
    # the library's own default is the default config's prompt
    assert stage3.Stage3Settings().reasoning_prompt == REASONING_PROMPT == stage2.Stage2Settings().reasoning_prompt
