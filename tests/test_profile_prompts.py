"""A FineRS reward profile carries its GSE prompt and its parser together: the config is
refused at parse time when a GSE prompt asks for another JSON key than the one the
profile's terms read (otherwise every GSE box term scores 0 for every completion)."""
import copy
from pathlib import Path

import pytest

from reproseg import config as cfglib
from reproseg.finers import gse_rewards
from reproseg.finers.prompts import render
from reproseg.finers.reward_terms import FinersTarget, RewardProfile, total_reward

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = cfglib.load_yaml(ROOT / "config" / "schema.yaml")
TASKS = ("referring", "option", "reasoning")

# The authors' GSE prompt (JiazuoYu/Fines verl/utils/rl_dataset.py, unified_qa_model), in
# the templates' placeholders; its example answer names 'bbox' in single quotes.
AUTHORS_GSE = {
    "referring": "Based on the '{question}', identify a {region_size}*{region_size} bounding box that best "
                 "localizes the region most relevant to the query. And respond with whether the object is found. "
                 "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. "
                 "i.e., <think> thinking process here </think><answer>{{'bbox': [x_min,y_min,x_max,y_max], "
                 "'response': 'The object is found.'}}</answer>",
    "option": "Based on the '{question}', identify a {region_size}*{region_size} bounding box that best localizes "
              "the region most relevant to the query. And give me a correct option from {options}. "
              "<answer>{{'bbox': [x_min,y_min,x_max,y_max], 'response': 'A'}}</answer>",
    "reasoning": "Based on the '{question}', identify a {region_size}*{region_size} bounding box that best "
                 "localizes the region most relevant to the query. And give me a final response with a word or "
                 "phrase. <answer>{{'bbox': [x_min,y_min,x_max,y_max], 'response': 'white'}}</answer>",
}


@pytest.fixture
def default():
    return cfglib.resolve(cfglib.load_yaml(ROOT / "config" / "config.yaml"))


def _errors(cfg) -> str:
    try:
        cfglib.validate(cfg, SCHEMA)
    except cfglib.ConfigError as exc:
        return str(exc)
    return ""


def test_default_prompts_go_with_the_paper_profile(default):
    assert default["finers"]["reward_profile"] == "paper"
    assert _errors(default) == ""


def test_reference_code_with_the_region_prompt_is_refused(default):
    cfg = copy.deepcopy(default)
    cfg["finers"]["reward_profile"] = "reference_code"
    msg = _errors(cfg)
    for task in TASKS:
        assert f"config key 'finers.prompts.gse.{task}'" in msg
    assert "'bbox'" in msg and "region" in msg


def test_reference_code_with_the_authors_prompt_is_accepted(default):
    cfg = copy.deepcopy(default)
    cfg["finers"]["reward_profile"] = "reference_code"
    cfg["finers"]["prompts"]["gse"] = dict(AUTHORS_GSE)
    assert _errors(cfg) == ""
    # ... and the paper profile refuses that prompt in turn.
    cfg["finers"]["reward_profile"] = "paper"
    assert "config key 'finers.prompts.gse.referring'" in _errors(cfg)


def test_a_prompt_naming_both_keys_is_refused(default):
    cfg = copy.deepcopy(default)
    cfg["finers"]["prompts"]["gse"]["option"] += ' (or {{"bbox": [x1, y1, x2, y2]}})'
    msg = _errors(cfg)
    assert "finers.prompts.gse.option" in msg and "finers.prompts.gse.referring" not in msg


@pytest.mark.parametrize("name", ["paper", "reference_code"])
def test_the_check_reads_the_key_the_profile_reads(default, name):
    # The table in config._cross_checks must agree with RewardProfile.gse_box_key: a prompt
    # naming the profile's own key passes, and an answer in that key scores every box term.
    key = RewardProfile.by_name(name).gse_box_key
    cfg = copy.deepcopy(default)
    cfg["finers"]["reward_profile"] = name
    cfg["finers"]["prompts"]["gse"] = {t: f'{{question}} Answer {{{{"{key}": [x1, y1, x2, y2], "response": "..."}}}}'
                                       for t in TASKS}
    assert _errors(cfg) == ""
    prompt = render(cfg["finers"]["prompts"], "gse", "referring", question="the cup", region_size=256)
    assert f'"{key}"' in prompt
    gt = FinersTarget(qtype="referring", answer="The object is found.", bbox=(200, 200, 220, 220),
                      region=(100, 100, 355, 355) if name == "reference_code" else (100, 100, 356, 356))
    box = list(gt.region)
    text = f'<think>t</think><answer>{{"{key}": {box}, "response": "The object is found."}}</answer>'
    out = total_reward(text, gt, gse_rewards.TERMS, RewardProfile.by_name(name))
    assert out["total"] == 7.0
