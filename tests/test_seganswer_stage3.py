"""SegAnswer stage 3 end to end on the project's GRPO engine (tiny bundle, one DAPO step)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import zlib

import pyarrow.parquet as pq
import pytest
import torch

from reproseg.seganswer import stage3, synthetic
from reproseg.seganswer.model import SegAnswerModel


@pytest.fixture(scope="module")
def policy_dir(seganswer_checkpoint):
    return seganswer_checkpoint


def _spread(completions, **_):
    """A reward that differs between rollouts of one prompt (the random policy never answers)."""
    return [zlib.crc32(c.encode()) % 1000 / 1000 for c in completions]


@pytest.mark.slow
def test_one_dapo_step_with_segmentation_turns(policy_dir, tmp_path, monkeypatch):
    seg_id = SegAnswerModel.from_pretrained(policy_dir).seg_token_id
    real_rollout = stage3.rollout_batch

    def first_turn_segments(model, prompts, s, lm=None, generators=None, samplers=None):
        end = model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

        def script(gen):
            def pick(logits, done):  # turn 1 is "<|seg|><|im_end|>", then the policy samples
                if not done:
                    return seg_id
                if len(done) == 1:
                    return end
                return int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen))
            return pick

        return real_rollout(model, prompts, s, lm=lm, generators=generators,
                            samplers=[script(g) for g in generators])

    monkeypatch.setattr(stage3, "rollout_batch", first_turn_segments)
    rows = synthetic.qa_rows(3, seed=0)
    final = stage3.train_stage3(
        policy_dir, rows, tmp_path / "out", tmp_path / "log.parquet",
        grpo={"per_device_batch_size": 4, "max_steps": 1, "save_steps": 100, "seed": 0, "learning_rate": 1e-3},
        settings={"rollout": {"max_turns": 3, "max_turn_tokens": 5, "max_completion_tokens": 64},
                  "max_refill_rounds": 1},
        reward_fns={"acc": _spread, "format": stage3.format_reward},
    )
    log = pq.read_table(tmp_path / "log.parquet").to_pylist()
    extra = pq.read_table(tmp_path / "log.seganswer.parquet").to_pylist()
    assert len(log) == 1 and len(extra) == 1
    row, ex = log[0], extra[0]
    # every rollout segmented once (turn 1), then sampled turns 2-3 without answering
    assert ex["seg_calls_mean"] == pytest.approx(1.0) and ex["rollouts"] >= 4
    assert ex["unanswered"] == ex["rollouts"]
    assert row["reward_mean"] == pytest.approx(0.8 * row["reward_acc_mean"] + 0.2 * row["reward_format_mean"])
    assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
    # the policy moved, the heads came along unchanged, and the result reloads
    before = SegAnswerModel.from_pretrained(policy_dir)
    after = SegAnswerModel.from_pretrained(final)
    moved = any(not torch.equal(a, b) for (_, a), (_, b) in zip(before.lm.named_parameters(),
                                                                after.lm.named_parameters()))
    assert moved
    assert all(torch.isfinite(p).all() for p in after.lm.parameters())
    assert torch.equal(before.projector.fc1.weight, after.projector.fc1.weight)
    # SAM 2.1 and the heads are stage 2's files, hard-linked: one copy on disk however many candidates
    from reproseg.seganswer.model import HEADS_FILE, SAM2_SUBDIR
    for rel in (HEADS_FILE, *(f"{SAM2_SUBDIR}/{p.name}" for p in (policy_dir / SAM2_SUBDIR).iterdir())):
        assert os.stat(final / rel).st_ino == os.stat(policy_dir / rel).st_ino, rel
