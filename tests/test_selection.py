"""Checkpoint selection: the declared rule on hand-made scores, the linked folder and its
record, and the FineRS val metrics on hand-written completions."""
import json
import math
import os

import pytest

from conftest import section
from reproseg.finers import gse_rewards, lpr_rewards
from reproseg.finers.selection import score_completions, val_metrics
from reproseg.finers.warmup import gse_target, lpr_target
from reproseg.selection import SelectionSettings, candidate_name, choose, describe, list_candidates, select

CANDS = [{"step": 40, "scores": {"box_iou": 0.30}}, {"step": 20, "scores": {"box_iou": 0.50}},
         {"step": 60, "scores": {"box_iou": 0.20}}]


def test_last_is_the_highest_step_whatever_the_order_or_scores():
    assert choose(CANDS, SelectionSettings("last", "box_iou")) == 2


def test_best_by_max_and_by_min():
    assert choose(CANDS, SelectionSettings("best", "box_iou")) == 1
    assert choose(CANDS, SelectionSettings("best", "box_iou", "min")) == 2


def test_best_ties_go_to_the_later_step_and_nan_is_worst():
    cands = [{"step": 20, "scores": {"m": 0.5}}, {"step": 40, "scores": {"m": 0.5}},
             {"step": 60, "scores": {"m": math.nan}}]
    assert choose(cands, SelectionSettings("best", "m")) == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="needs a metric"):
        SelectionSettings("best")
    with pytest.raises(ValueError, match="choose"):
        SelectionSettings("first", "m")
    with pytest.raises(ValueError, match="not a val metric"):
        SelectionSettings("best", "gIoU").check_metric(val_metrics("lpr", lpr_rewards.TERMS), "finers.selection.lpr")
    SelectionSettings("best", "iou").check_metric(val_metrics("lpr", lpr_rewards.TERMS), "finers.selection.lpr")
    SelectionSettings("best", "covered").check_metric(val_metrics("gse", gse_rewards.TERMS), "finers.selection.gse")


def _candidates(root, steps):
    for s in steps:
        (root / candidate_name(s)).mkdir(parents=True)
        (root / candidate_name(s) / "model.safetensors").write_text(f"weights {s}")
    (root / ".snakemake_timestamp").write_text("")   # Snakemake's marker is not a candidate


def test_select_links_the_chosen_candidate_and_records_every_score(tmp_path):
    _candidates(tmp_path / "cands", [20, 40, 60])
    assert [s for s, _ in list_candidates(tmp_path / "cands")] == [20, 40, 60]
    scores = {20: 0.1, 40: 0.7, 60: 0.4}
    seen = []

    def score(path):
        seen.append(path.name)
        return {"box_iou": scores[int(path.name.split("-")[1])], "format": 1.0}

    out = select(tmp_path / "cands", score, SelectionSettings("best", "box_iou"), tmp_path / "chosen",
                 tmp_path / "selection.json")
    assert seen == ["step-000020", "step-000040", "step-000060"]
    assert (tmp_path / "chosen" / "model.safetensors").read_text() == "weights 40"
    assert os.stat(tmp_path / "chosen" / "model.safetensors").st_ino == \
        os.stat(tmp_path / "cands" / "step-000040" / "model.safetensors").st_ino
    on_disk = json.loads((tmp_path / "selection.json").read_text())
    assert on_disk == json.loads(json.dumps(out))
    assert on_disk["chosen"] == {"step": 40, "path": str(tmp_path / "cands" / "step-000040"), "value": 0.7}
    assert [c["scores"]["box_iou"] for c in on_disk["candidates"]] == [0.1, 0.7, 0.4]
    assert on_disk["split"] == "val"
    lines = describe(on_disk)
    assert lines[0] == "selection best by box_iou (max) on val"
    assert [ln.startswith(" *") for ln in lines[1:]] == [False, True, False]


def test_last_without_a_metric_scores_nothing(tmp_path):
    _candidates(tmp_path / "cands", [5, 10])
    out = select(tmp_path / "cands", None, SelectionSettings("last"), tmp_path / "chosen", tmp_path / "s.json")
    assert out["chosen"]["step"] == 10 and (tmp_path / "chosen" / "model.safetensors").read_text() == "weights 10"
    with pytest.raises(ValueError, match="needs val scores"):
        select(tmp_path / "cands", None, SelectionSettings("best", "m"), tmp_path / "c2", tmp_path / "s2.json")


def test_a_missing_metric_or_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no candidates folder"):
        list_candidates(tmp_path / "none")
    _candidates(tmp_path / "cands", [5])
    with pytest.raises(KeyError, match="box_iou"):
        select(tmp_path / "cands", lambda p: {"format": 1.0}, SelectionSettings("best", "box_iou"),
               tmp_path / "chosen", tmp_path / "s.json")
    assert not (tmp_path / "chosen").exists() and not (tmp_path / "s.json").exists()


CFG = section("finers", {"reward_profile": "paper", "region_size": 48, "lpr": {"disabled_rewards": ["response"]},
                         "gse": {"disabled_rewards": []}})


def test_lpr_val_metrics_of_exact_shifted_and_garbage_answers():
    sample = {"qtype": "referring", "answer": "the car is found", "bbox": [10, 10, 30, 30],
              "points": [[15, 15], [25, 25]]}
    shifted = {**sample, "bbox": [20, 10, 40, 30]}   # IoU with the GT: 200 / 600 = 1/3
    texts = [lpr_target(sample), lpr_target(shifted), "no answer at all"]
    s = score_completions("lpr", lpr_rewards.TERMS, texts, [sample] * 3, CFG)
    assert set(s) == set(val_metrics("lpr", lpr_rewards.TERMS))
    # Paper Eq. 6: the box IoU reward is 1 above IoU 0.5: the exact and garbage answers
    # score 1 and 0, the shifted one (IoU 1/3) 0.
    assert s["box_iou"] == pytest.approx(1 / 3)
    assert s["format"] == pytest.approx(2 / 3)
    # The continuous score: IoU 1, 1/3 and 0 (no box).
    assert s["iou"] == pytest.approx((1 + 1 / 3) / 3)
    # total: the trained terms only (response is disabled), averaged over the three.
    one = score_completions("lpr", lpr_rewards.TERMS, texts[:1], [sample], CFG)
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k not in ("total", "response", "iou")))
    assert one["response"] == 1.0
    assert score_completions("lpr", lpr_rewards.TERMS, texts[2:], [sample], CFG)["total"] == 0.0


def test_gse_cover_follows_the_object_box_not_the_target_region():
    sample = {"qtype": "referring", "answer": "the car is found", "bbox": [50, 50, 60, 60],
              "region": [30, 30, 78, 78]}
    covering, missing = gse_target([40, 40, 88, 88], "the car is found"), gse_target([0, 0, 48, 48], "x")
    s = score_completions("gse", gse_rewards.TERMS, [covering, missing], [sample] * 2, CFG)
    assert s["cover"] == pytest.approx(0.5)
    # Share of the 10 x 10 GT box inside the region: all of it, then none.
    assert s["covered"] == pytest.approx(0.5)
    half = gse_target([55, 0, 103, 48], "x")   # x 55-60 of 50-60, y 50-60 outside 0-48: none
    corner = gse_target([55, 55, 103, 103], "x")   # 5 x 5 of 10 x 10
    s = score_completions("gse", gse_rewards.TERMS, [half, corner], [sample] * 2, CFG)
    assert s["covered"] == pytest.approx(0.25 / 2)
