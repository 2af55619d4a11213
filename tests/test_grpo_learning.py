"""The GRPO engine learns, and a broken update does not: tests that can fail.

Toy task: the reward is the share of the letter "e" in a 16-token completion of the tiny
random policy (hidden 64, 2 layers), dense, so every prompt group has variance from the
first step. 4 prompts x 8 completions, lr 1e-3, beta 0, 40 optimizer steps. The share
starts near 0.08. Measured with seeds 0-2, the mean of the last quarter of the steps
exceeds that of the first quarter by 0.062-0.064 (GRPO), 0.063-0.065 (DAPO) and
0.057-0.060 (Dr. Seg's ranked reward, measured on the raw accuracy); with the advantage
flipped it falls by 0.027-0.038, with advantages shuffled across completions it moves by
+0.004 to +0.010. MARGIN sits between the two.

The broken variants are EngineGRPOTrainer subclasses passed as `trainer_cls`: they edit
the advantages TRL's `_generate_and_score_completions` returns (what the loss
multiplies), so everything else, rewards and logs included, is the engine's own.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reproseg.models.tiny_bundle import build_tiny_policy
from reproseg.grpo.engine import TENSORBOARD_DIR, train_grpo
from reproseg.grpo.trainer import EngineGRPOTrainer
from reproseg.drseg.rewards import DistributionRankedReward, DrSegProfile

LETTER = "e"
STEPS = 40
MARGIN = 0.03  # last- minus first-quarter mean of the letter share
COMPLETIONS_PER_STEP = 4 * 8
BASE = dict(n=8, lr=1e-3, beta=0.0, weight_decay=0.0, per_device_batch_size=COMPLETIONS_PER_STEP,
            max_completion_length=16, max_steps=STEPS, save_steps=STEPS, gradient_checkpointing=False, seed=0)
LOSSES = {
    "grpo": dict(loss_type="grpo"),
    "dapo": dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28),
}
ROWS = [{"prompt": [{"role": "user", "content": f"Write a short line, number {i}."}]} for i in range(4)]
# Dr. Seg's toy ground truth: the answer box [0, 0, 100 * share, 100] against this one has IoU = share.
GT = json.dumps([{"bbox_2d": [0, 0, 100, 100], "point_2d": [50, 50]}])


def letter_share(completions, **_):
    return [c.count(LETTER) / max(len(c), 1) for c in completions]


class BoxFromShare:
    """Dr. Seg's distribution-ranked reward on a toy accuracy the policy can learn.

    Each completion becomes a one-object answer whose box covers `share` of the GT box
    (x1 = IoU = share, x2 = 1, x3 = point score of the box centre), which the real
    DistributionRankedReward then ranks against its queue. Its state calls are passed
    on, so the engine flushes and checkpoints the queue as for the real stage.
    """

    def __init__(self):
        # The paper's queue is 16 steps of 128 rollouts after one step of zeros; the same in toy steps.
        profile = replace(DrSegProfile.paper(), capacity=16 * COMPLETIONS_PER_STEP, init_rows=COMPLETIONS_PER_STEP)
        self.drr = DistributionRankedReward(profile)

    def __call__(self, completions, gt_objects, **_):
        answers = []
        for share in letter_share(completions):
            w = 100.0 * share
            answers.append("<answer>" + json.dumps([{"bbox_2d": [0, 0, w, 100], "point_2d": [w / 2, 50]}])
                           + "</answer>")
        return self.drr(answers, gt_objects=gt_objects)

    def on_step_end(self):
        self.drr.on_step_end()

    def state_dict(self):
        return self.drr.state_dict()

    def load_state_dict(self, state):
        self.drr.load_state_dict(state)


class FlippedAdvantage(EngineGRPOTrainer):
    """Broken on purpose: the loss ascends the negated advantage."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        out["advantages"] = -out["advantages"]
        return out


class ShuffledAdvantage(EngineGRPOTrainer):
    """Broken on purpose: each completion gets another one's advantage, so the update is
    as large as usual but no longer tied to what the completion scored."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        a = out["advantages"]
        g = torch.Generator().manual_seed(1000 + int(self.state.global_step))
        out["advantages"] = a[torch.randperm(a.numel(), generator=g)]
        return out


BROKEN = {"flipped": FlippedAdvantage, "shuffled": ShuffledAdvantage}


def quarter_means(values) -> tuple[float, float]:
    """Means of the first and the last quarter of a per-step column (NaN steps left out)."""
    v = np.asarray(values, dtype=float)
    q = max(len(v) // 4, 1)
    return float(np.nanmean(v[:q])), float(np.nanmean(v[-q:]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 64-wide matrices gain nothing from intra-op threads, and on a shared 2-core machine
    # a second spinning thread makes each run several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "qwen"
    build_tiny_policy(path, {}, ["write a short line"], seed=0)
    return path


@pytest.fixture(scope="module")
def run(policy, tmp_path_factory):
    """run(method, broken=None) -> (out_dir, log rows, reward objects); each run once per module."""
    done = {}

    def _run(method: str, broken: str | None = None):
        key = (method, broken)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{method}-{broken or 'ok'}")
            if method == "drseg":
                # The ranked reward drives the update; the raw accuracy (IoU = share) is
                # logged beside it with weight 0, since ranks are relative to the queue and
                # do not rise with the policy by design.
                rewards = {"ranked": BoxFromShare(), "iou": letter_share}
                rows = [dict(r, gt_objects=GT) for r in ROWS]
                settings = dict(BASE, loss_type="grpo", reward_weights={"ranked": 1.0, "iou": 0.0})
            else:
                rewards, rows, settings = {"share": letter_share}, ROWS, dict(BASE, **LOSSES[method])
            train_grpo(policy, rows, rewards, settings, out, out / "log.parquet",
                       trainer_cls=BROKEN[broken] if broken else None)
            done[key] = out, pq.read_table(out / "log.parquet").to_pylist(), rewards
        return done[key]

    return _run


def _share_column(method: str) -> str:
    return "reward_iou_mean" if method == "drseg" else "reward_mean"


def test_quarter_means_by_hand():
    assert quarter_means([1, 2, 3, 4, 5, 6, 7, 8]) == (1.5, 7.5)
    assert quarter_means([1, math.nan, 3, 4, 5, 6, 7, math.nan]) == (1.0, 7.0)
    assert quarter_means([2.0, 4.0]) == (2.0, 4.0)


@pytest.mark.parametrize("method", ["grpo", "dapo", "drseg"])
def test_reward_rises(run, method):
    _, log, _ = run(method)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    first, last = quarter_means([r[_share_column(method)] for r in log])
    assert last - first >= MARGIN, (method, first, last)
    # One update per rollout batch: the policy that is trained is the one that sampled.
    assert all(r["clip_ratio"] == 0.0 for r in log)


@pytest.mark.parametrize("method,broken", [("grpo", "flipped"), ("grpo", "shuffled"), ("dapo", "flipped"),
                                           ("drseg", "shuffled")])
def test_broken_update_fails_the_margin(run, method, broken):
    _, log, _ = run(method, broken)
    first, last = quarter_means([r[_share_column(method)] for r in log])
    assert last - first < MARGIN, (method, broken, first, last)
    if broken == "flipped":
        assert last < first  # it unlearns: the override reached the loss


def test_drseg_queue_is_ranked_and_flushed(run):
    _, log, rewards = run("drseg")
    # Step 1 ranks against the initial zero rows only: every answer ranks 1.0 in every
    # dimension, so all completions score 1 and every group has zero std.
    assert log[0]["reward_ranked_mean"] == 1.0 and log[0]["frac_zero_std"] == 1.0
    assert all(0.0 <= r["reward_ranked_mean"] <= 1.0 for r in log)
    queue = rewards["ranked"].drr.queue
    # One flush per optimizer step: 32 + 40 x 32 rows pushed, the newest `capacity` kept.
    assert len(queue) == 16 * COMPLETIONS_PER_STEP and queue.buffered == 0
    assert (queue.rows[:, 1] == 1.0).all()  # x2 = min(M, N) / max(M, N) = 1 for one box against one GT box


def test_tensorboard_holds_the_reward(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, log, _ = run("grpo")
    tb = out / TENSORBOARD_DIR
    assert list(tb.glob("events.out.tfevents.*")), f"no event file in {tb}"
    events = EventAccumulator(str(tb))
    events.Reload()
    scalars = events.Scalars("train/reward")
    assert [e.step for e in scalars] == [r["step"] for r in log]
    for e, r in zip(scalars, log):
        assert e.value == pytest.approx(r["reward_mean"], rel=1e-6)  # TensorBoard stores float32
    assert "train/clip_ratio/region_mean" in events.Tags()["scalars"]
    assert not (out / "resume").exists() and (out / "checkpoint" / "model.safetensors").is_file()


def _clip_run(policy, out, **settings):
    s = dict(BASE, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, lr=1e-2, **settings)
    train_grpo(policy, ROWS, {"share": letter_share}, s, out, out / "log.parquet")
    return pq.read_table(out / "log.parquet").to_pylist()


def test_clipping_acts_only_with_several_updates_per_rollout(policy, tmp_path):
    # 4 optimizer steps of 8 completions per rollout batch of 32, two rollout batches.
    log = _clip_run(policy, tmp_path / "split", per_device_batch_size=8, steps_per_generation=4,
                    max_steps=8, save_steps=4)
    assert [r["step"] for r in log] == list(range(1, 9))
    for r in log:
        first_of_rollout = r["step"] % 4 == 1
        # The first update of a rollout batch starts from the sampling policy: ratio 1, no clip.
        assert (r["clip_ratio"] == 0.0) if first_of_rollout else (r["clip_ratio"] > 0.0), r
        # The rollout's columns come from the step that generated; the batch's other steps
        # repeat them, since they train on the same completions.
        assert r["generated"] == float(first_of_rollout)
        assert math.isfinite(r["reward_mean"])
        rollout = log[(r["step"] - 1) // 4 * 4]
        assert r["reward_mean"] == rollout["reward_mean"] and r["reward_std"] == rollout["reward_std"]
        # Low and high clipping are disjoint (they need opposite advantage signs); float32 means.
        assert r["clip_ratio"] == pytest.approx(r["clip_ratio_low"] + r["clip_ratio_high"], abs=1e-6)

    # The same lr and micro-batches, one optimizer step per rollout batch (gradient accumulation 4).
    single = _clip_run(policy, tmp_path / "single", per_device_batch_size=8, gradient_accumulation_steps=4,
                       max_steps=2, save_steps=2)
    assert [r["clip_ratio"] for r in single] == [0.0, 0.0]
    assert all(math.isfinite(r["reward_mean"]) for r in single)
