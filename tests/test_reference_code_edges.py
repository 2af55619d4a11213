"""Where `reference_code` reaches beyond the reward terms: the QA accuracy's smoothing,
the GSE key the format warm-up teaches, and the selection's localisation reading."""
import math

import numpy as np
import pytest
from PIL import Image

from conftest import section
from reproseg.answers.parsing import parse
from reproseg.answers.qa import QAScore, qa_metrics
from reproseg.data.masks import polygon_to_rle
from reproseg.finers import gse_rewards
from reproseg.finers import prompts as P
from reproseg.finers.reward_terms import FinersTarget, RewardProfile
from reproseg.finers.rewards import stage_profile
from reproseg.finers.selection import localisation
from reproseg.finers.warmup import warmup_examples

RECORDS = [{"task_type": "option", "attribute": "colors", "answer": "A", "pred_response": "A"},
           {"task_type": "option", "attribute": "colors", "answer": "A", "pred_response": "B"},
           {"task_type": "option", "attribute": "colors", "answer": "B", "pred_response": "B"}]


def test_qa_accuracy_divides_as_each_profile_does():
    paper, code = qa_metrics(RECORDS, "paper"), qa_metrics(RECORDS, "reference_code")
    assert paper["mvqa"]["colors"].accuracy == 2 / 3
    assert code["mvqa"]["colors"].accuracy == 2 / (3 + 1e-10)        # the script's n + 1e-10
    assert code["mvqa"]["colors"].accuracy != 2 / 3
    # an attribute nobody was asked about: NaN (not measured) vs the script's 0.0
    assert math.isnan(paper["mvqa"]["shape"].accuracy) and code["mvqa"]["shape"].accuracy == 0.0
    assert math.isnan(paper["ovqa"]["all"].accuracy) and code["ovqa"]["all"].accuracy == 0.0
    assert QAScore(0, 0).accuracy != QAScore(0, 0).accuracy   # NaN by default


CFG = section("finers", {
    "gse_size": [80, 48], "lpr_crop": 56, "region_size": 28,
    "lpr": {"gt_points": "centre_jitter", "random_region": True},
    "prompts": {"lpr": {t: "{question}{options} Box it." for t in P.TASK_TYPES},
                "gse": {t: "{question}{options} Region {region_size} bbox region." for t in P.TASK_TYPES},
                "look": "Look."},
})


@pytest.mark.parametrize("profile, key", [("paper", "region"), ("reference_code", "bbox")])
def test_the_warm_up_writes_the_gse_key_the_profile_reads(tmp_path, profile, key):
    image = np.full((96, 160, 3), 90, np.uint8)
    Image.fromarray(image).save(tmp_path / "f.png")
    rle = polygon_to_rle([(40, 30), (52, 30), (52, 42), (40, 42)], 160, 96)
    row = {"id": "r1", "image_path": "f.png", "width": 160, "height": 96, "box": [40, 30, 52, 42],
           "points_centre_jitter": [[46, 36], [45, 37]], "points_inscribed": [[46, 36]] * 2,
           "task_type": "referring", "question": "Segment the square.", "options": None, "option_letters": None,
           "answer": "The grey square is found.", "answer_option": None, "rle_counts": rle["counts"]}
    cfg = {**CFG, "reward_profile": profile}
    gse = warmup_examples([row], str(tmp_path), cfg, seed=1)[-1]      # LPR, LPR with <look>, GSE
    answer = parse(gse["target"]).answer
    assert set(answer) == {key, "response"}
    prof = stage_profile("gse", cfg)
    assert gse_rewards.TERMS["format"](parse(gse["target"]), FinersTarget(), prof) == 1.0


@pytest.mark.parametrize("text, paper, code", [
    ('<answer>{"bbox": [0, 0, 10, 10]}</answer>', 1.0, 1.0),
    # a boolean: no number for the strict reading, 0 for the authors' Python arithmetic
    ('<answer>{"bbox": [false, 0, 10, 10]}</answer>', 0.0, 1.0),
    # numeric strings: no box under either (Python does not compare text with numbers)
    ('<answer>{"bbox": ["0", "0", "10", "10"]}</answer>', 0.0, 0.0),
    # a NaN coordinate: no box strictly; loosely a NaN score, which counts as 0
    ('<answer>{"bbox": [NaN, 0, 10, 10]}</answer>', 0.0, 0.0),
])
def test_selection_localisation_reads_as_the_profile(text, paper, code):
    gt = (0.0, 0.0, 10.0, 10.0)
    assert localisation("lpr", text, gt, RewardProfile.by_name("paper")) == pytest.approx(paper)
    # inclusive pixels under reference_code: identical boxes still IoU 1
    assert localisation("lpr", text, gt, RewardProfile.by_name("reference_code")) == pytest.approx(code)


def test_gse_localisation_reads_the_profiles_key():
    text = '<answer>{"bbox": [0, 0, 20, 20], "response": "x"}</answer>'
    gt = (5.0, 5.0, 15.0, 25.0)                   # half of it inside the region
    assert localisation("gse", text, gt, RewardProfile.by_name("reference_code")) == pytest.approx(0.75)
    assert localisation("gse", text, gt, RewardProfile.by_name("paper")) == 0.0   # paper reads "region"
