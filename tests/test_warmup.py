"""The default's warm-ups: the format SFT of the policy and the prompted mask training of
SAM 2.1. Targets score full format reward, labels cover exactly the target tokens, and
both trainings improve on a fixed set, while a broken variant (no step, a shifted mask)
does not."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import StopAt, section
from reproseg.data.images import ImageRef, load_image
from reproseg.data.masks import MaskCrop, polygon_to_rle
from reproseg.finers import prompts as P
from reproseg.finers.rewards import profile_for
from reproseg.finers.warmup import gse_target, lpr_target, sam2_examples, warmup_examples
from reproseg.models.sam2_warmup import example_image, example_mask, mean_iou, train_sam2
from reproseg.models.sft import IGNORE, SFTCollator, target_loss, train_sft
from reproseg.runs import CHECKPOINT_TIMES, STOP_FILE, TrainingInterrupted, completed_checkpoints
from reproseg.models.tiny_bundle import build_tiny_policy, build_tiny_sam2
from reproseg.answers.parsing import parse
from reproseg.drseg.rewards import look_reward, non_repeat_reward
from reproseg.finers import gse_rewards, lpr_rewards
from reproseg.finers.reward_terms import FinersTarget

TERMS = {"lpr": lpr_rewards.TERMS, "gse": gse_rewards.TERMS}

W, H = 160, 96
CFG = section("finers", {
    "gse_size": [80, 48], "lpr_crop": 56, "region_size": 28, "reward_profile": "paper",
    "lpr": {"gt_points": "centre_jitter", "random_region": True},
    "prompts": {"lpr": {t: "{question}{options} Box it." for t in P.TASK_TYPES},
                "gse": {t: "{question}{options} Region {region_size}." for t in P.TASK_TYPES}, "look": "Look."},
})


def _row(i: int, x: int, y: int, tmp_path) -> dict:
    image = np.full((H, W, 3), 90, np.uint8)
    image[y:y + 12, x:x + 12] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / f"f{i}.png")
    rle = polygon_to_rle([(x, y), (x + 12, y), (x + 12, y + 12), (x, y + 12)], W, H)
    return {"id": f"r{i}", "image_path": f"f{i}.png", "width": W, "height": H, "box": [x, y, x + 12, y + 12],
            "points_centre_jitter": [[x + 6, y + 6], [x + 5, y + 7]], "points_inscribed": [[x + 6, y + 6]] * 2,
            "task_type": "referring", "question": "Segment the red square.", "options": None,
            "option_letters": None, "answer": "The red square is found.", "answer_option": None,
            "rle_counts": rle["counts"]}


@pytest.fixture
def rows(tmp_path):
    return [_row(i, 10 + 23 * i, 8 + 11 * (i % 6), tmp_path) for i in range(6)]


def test_targets_score_every_format_term(rows, tmp_path):
    profile = profile_for("paper", CFG["region_size"])
    examples = warmup_examples(rows, str(tmp_path), CFG, seed=0)
    looked = [e for e in examples if "<look>" in e["target"]]
    plain = [e for e in examples if "<look>" not in e["target"]]
    # Records 0 and 3 also get the Look-to-Confirm prompt, and answer with a <look> block.
    assert len(plain) == 2 * len(rows) and len(looked) == 2
    for e in looked:
        assert e["prompt"][0]["content"].endswith("Look.")
        assert look_reward(parse(e["target"])) == 1.0 and non_repeat_reward(parse(e["target"])) == 1.0
        assert TERMS["lpr"]["format"](parse(e["target"]), FinersTarget(), profile_for("paper", 28)) == 1.0
    for row, lpr, gse in zip(rows, plain[0::2], plain[1::2]):
        lp, gp = parse(lpr["target"]), parse(gse["target"])
        lpr_gt = FinersTarget(qtype="referring", answer=row["answer"])
        assert TERMS["lpr"]["format"](lp, lpr_gt, profile) == 1.0
        assert TERMS["lpr"]["think"](lp, lpr_gt, profile) == 1.0
        assert TERMS["lpr"]["response"](lp, lpr_gt, profile) == 1.0
        assert TERMS["gse"]["format"](gp, lpr_gt, profile) == 1.0
        # The GSE region is lpr_crop original px = region_size at the GSE size, and
        # covers the object (original box / 2).
        x1, y1, x2, y2 = gp.answer["region"]
        assert (x2 - x1, y2 - y1) == (28, 28)
        bx1, by1, bx2, by2 = (v / 2 for v in row["box"])
        assert x1 <= bx1 and y1 <= by1 and x2 >= bx2 and y2 >= by2
    # Coordinates are integers, exactly as the template shows them.
    assert lpr_target({"bbox": [1.4, 2.6, 3.5, 4.0], "points": [[1.2, 2.2], [3.0, 3.9]], "answer": "A"}) == (
        '<think>Looking at the scene.</think><answer>{"bbox": [1, 3, 4, 4], "points_1": [1, 2], '
        '"points_2": [3, 4], "response": "A"}</answer>')
    assert gse_target([0.2, 9.7, 28.2, 37.7], "B").endswith('{"region": [0, 10, 28, 38], "response": "B"}</answer>')


def test_examples_hold_file_references_that_decode_to_the_views(rows, tmp_path):
    """Memory follows the batch: every example holds an ImageRef (a crop and a size of the
    frame file), decoded when a batch is made, to the crop and resize of the decoded frame."""
    from reproseg.finers.regions import CropFrame
    from reproseg.finers.samples import crop_image, gse_image

    examples = warmup_examples(rows[:1], str(tmp_path), CFG, seed=0)   # LPR, LPR with <look>, GSE
    assert all(isinstance(e["image"], ImageRef) for e in examples)
    frame = load_image(str(tmp_path), rows[0]["image_path"])
    x0, y0, x1, y1 = examples[0]["image"].crop
    lpr = crop_image(frame, CropFrame((x0, y0, x1, y1), CFG["lpr_crop"]))
    for e, want in zip(examples, (lpr, lpr, gse_image(frame, CFG))):
        assert np.array_equal(np.asarray(e["image"].open()), np.asarray(want))


def test_decoded_views_are_kept_up_to_the_cap_and_no_further(rows, tmp_path):
    from reproseg.models.sft import _ListDataset

    examples = warmup_examples(rows[:2], str(tmp_path), CFG, seed=0)   # LPR, LPR <look>, GSE, LPR, GSE
    one = 56 * 56 * 3                                                   # an LPR view's RGB bytes
    ds = _ListDataset(examples, image_cache_mb=1.5 * one / 2**20)       # room for one LPR view
    first = ds[0]["image"]
    assert np.array_equal(np.asarray(first), np.asarray(examples[0]["image"].open()))
    assert ds[0]["image"] is first                                      # kept: decoded once
    ds[1]                                                               # the next one pushes it out
    assert ds[0]["image"] is not first and ds.views.nbytes <= ds.views.max_bytes
    assert _ListDataset(examples)[0]["image"] is not _ListDataset(examples)[0]["image"]
    nothing = _ListDataset(examples, 0)
    assert nothing[0]["image"] is not nothing[0]["image"] and not nothing.views   # cap 0: none kept


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "qwen"
    build_tiny_policy(path, {}, ["Segment the red square. Box it."], seed=0)
    return path


def test_labels_cover_exactly_the_target(rows, tmp_path, policy):
    from transformers import AutoProcessor

    examples = warmup_examples(rows[:2], str(tmp_path), CFG, seed=0)   # one look example among them
    for side in ("left", "right"):
        proc = AutoProcessor.from_pretrained(policy, padding_side=side)
        batch = SFTCollator(proc)(examples)
        for i, e in enumerate(examples):
            labelled = batch["input_ids"][i][batch["labels"][i] != IGNORE]
            assert proc.tokenizer.decode(labelled) == e["target"] + "<|im_end|>"


def test_sft_loss_falls_on_a_fixed_batch_and_not_without_steps(rows, tmp_path, policy):
    torch.set_num_threads(1)
    examples = warmup_examples(rows, str(tmp_path), CFG, seed=0)
    settings = {"learning_rate": 3e-3, "max_steps": 25, "batch_size": 4, "warmup_steps": 2, "report_to": []}
    out = train_sft(policy, examples, settings, tmp_path / "run", tmp_path / "log.parquet", held_out=examples)
    assert out["held_out_loss_after"] < 0.6 * out["held_out_loss_before"]
    log = pq.read_table(tmp_path / "log.parquet").to_pydict()
    assert log["step"] == list(range(1, 26)) and log["loss"][-1] < log["loss"][0]
    assert (tmp_path / "run/checkpoint/model.safetensors").is_file()
    # The same measure with a zero learning rate stays where it was.
    frozen = train_sft(policy, examples, {**settings, "learning_rate": 0.0, "max_steps": 3}, tmp_path / "run0",
                       tmp_path / "log0.parquet", held_out=examples)
    assert frozen["held_out_loss_after"] == pytest.approx(frozen["held_out_loss_before"], rel=1e-5)


def _warmup_and_a_run_stopped_at_step_3(rows, tmp_path, policy):
    """An uninterrupted 5-step warm-up (tmp_path/ref) and the same run stopped at step 3
    (tmp_path/run, resume states at steps 2 and 3); returns the examples, settings, the
    stopped run's folder and its TrainingInterrupted."""
    torch.set_num_threads(1)
    examples = warmup_examples(rows, str(tmp_path), CFG, seed=0)
    settings = {"learning_rate": 3e-3, "max_steps": 5, "batch_size": 2, "warmup_steps": 1, "save_steps": 2,
                "report_to": []}
    train_sft(policy, examples, settings, tmp_path / "ref", tmp_path / "ref.parquet")
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_sft(policy, examples, settings, run, tmp_path / "log.parquet",
                  callbacks=[StopAt(run / "resume" / STOP_FILE, 3)])
    return examples, settings, run, stopped.value


def test_warmup_stopped_and_resumed_ends_at_the_weights_of_an_uninterrupted_run(rows, tmp_path, policy):
    """Stopped at step 3 (between the resume states of steps 2 and 4), the warm-up resumes
    from the state saved there and ends bit for bit where an uninterrupted run ends (CPU,
    one process); the resume state is removed once the model is written."""
    from safetensors.torch import load_file

    examples, settings, run, stopped = _warmup_and_a_run_stopped_at_step_3(rows, tmp_path, policy)
    assert stopped.step == 3 and stopped.code == 143
    assert [p.name for p in completed_checkpoints(run / "resume")] == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / "log.parquet").exists() and not (run / "checkpoint").exists()
    # the state is this run's: another learning rate refuses it, naming the difference
    with pytest.raises(ValueError, match=r"different run.*settings"):
        train_sft(policy, examples, {**settings, "learning_rate": 1e-3}, run, tmp_path / "log.parquet")
    train_sft(policy, examples, settings, run, tmp_path / "log.parquet")
    assert not (run / "resume").exists()
    log, ref_log = (pq.read_table(tmp_path / f).to_pylist() for f in ("log.parquet", "ref.parquet"))
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    assert log[-1]["loss"] < log[0]["loss"]   # it trained: equal runs that did not would show nothing
    want, got = (load_file(d / "checkpoint" / "model.safetensors") for d in (tmp_path / "ref", run))
    assert set(want) == set(got) and all(torch.equal(want[n], got[n]) for n in want)
    times = [json.loads(line) for line in (run / CHECKPOINT_TIMES).read_text().splitlines()]
    assert [(t["event"], t["step"]) for t in times] == [("start", 0), ("save", 2), ("save", 3), ("start", 3),
                                                        ("save", 4)]


def test_a_damaged_newest_state_is_skipped_with_a_warning_and_the_one_before_resumed(rows, tmp_path, policy,
                                                                                     caplog):
    """The state of step 3, truncated after the stop (a disk that filled up, a copy cut
    short), is named in a warning and left aside: the warm-up resumes from step 2's state
    and still ends bit for bit where an uninterrupted run ends."""
    from safetensors.torch import load_file

    examples, settings, run, _ = _warmup_and_a_run_stopped_at_step_3(rows, tmp_path, policy)
    weights = run / "resume" / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="reproseg.runs"):
        train_sft(policy, examples, settings, run, tmp_path / "log.parquet")
    assert any("checkpoint-3 is skipped: model.safetensors has" in r.getMessage() for r in caplog.records)
    times = [json.loads(line) for line in (run / CHECKPOINT_TIMES).read_text().splitlines()]
    assert [(t["event"], t["step"]) for t in times][-3:] == [("save", 3), ("start", 2), ("save", 4)]
    log, ref_log = (pq.read_table(tmp_path / f).to_pylist() for f in ("log.parquet", "ref.parquet"))
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    want, got = (load_file(d / "checkpoint" / "model.safetensors") for d in (tmp_path / "ref", run))
    assert all(torch.equal(want[n], got[n]) for n in want)


def test_target_loss_is_the_mean_token_cross_entropy(rows, tmp_path, policy):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    examples = warmup_examples(rows[:2], str(tmp_path), CFG, seed=0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy, dtype=torch.float32)
    collator = SFTCollator(AutoProcessor.from_pretrained(policy, padding_side="right"))
    batch = collator(examples)
    # The model's own loss (mean over labelled tokens) is the same number.
    with torch.no_grad():
        expected = float(model(**batch).loss)
    assert target_loss(model, collator, examples) == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2") / "sam2"
    build_tiny_sam2(path, {"sam2_image_size": 128}, seed=0)
    return path


def test_sam2_mask_iou_rises_and_a_shifted_target_scores_lower(rows, tmp_path, sam2):
    torch.set_num_threads(1)
    examples = sam2_examples(rows, str(tmp_path), CFG, seed=0, box_jitter=0.1)
    for e, row in zip(examples, rows):   # the crop holds the whole 12 x 12 object
        # held as references to the frame file and the RLE, decoded per batch
        assert isinstance(e["image"], ImageRef) and isinstance(e["mask"], MaskCrop)
        image, mask = example_image(e), example_mask(e)
        assert image.shape[:2] == mask.shape == (56, 56) and mask.sum() == 144
        x0, y0, x1, y1 = e["mask"].crop
        assert np.array_equal(image, np.asarray(load_image(str(tmp_path), row["image_path"]))[y0:y1, x0:x1])
    settings = {"learning_rate": 3e-3, "max_steps": 30, "batch_size": 4}
    out = train_sam2(sam2, examples, settings, tmp_path / "s", tmp_path / "slog.parquet", held_out=examples)
    assert out["held_out_iou_after"] > out["held_out_iou_before"] + 0.3
    assert out["held_out_iou_after"] > 0.5
    # Without the feature cache every batch runs the encoder again: the same training.
    uncached = train_sam2(sam2, examples, {**settings, "feature_cache_mb": 0}, tmp_path / "s0",
                          tmp_path / "slog0.parquet", held_out=examples)
    assert uncached["held_out_iou_after"] == pytest.approx(out["held_out_iou_after"], abs=1e-3)
    from reproseg.models.sam_loading import load_sam2_predictor

    trained = load_sam2_predictor(tmp_path / "s")
    assert mean_iou(trained, examples) == pytest.approx(out["held_out_iou_after"], abs=1e-6)
    # A mask pasted 8 px off its object: the trained model's masks match it far worse.
    shifted = [{**e, "mask": np.roll(example_mask(e), 8, axis=1)} for e in examples]
    assert mean_iou(trained, shifted) < out["held_out_iou_after"] - 0.3


def test_sam2_warmup_stopped_and_resumed_ends_at_the_weights_of_an_uninterrupted_run(rows, tmp_path, sam2,
                                                                                     monkeypatch, caplog):
    """A stop request at step 3 (between the states of steps 2 and 4): the state is saved
    there, the retry resumes from it and ends bit for bit at the uninterrupted run's model
    and log; a state cut off half-written is skipped for the one before it."""
    from reproseg.models import sam2_warmup

    torch.set_num_threads(1)
    examples = sam2_examples(rows, str(tmp_path), CFG, seed=0, box_jitter=0.1)
    settings = {"learning_rate": 3e-3, "max_steps": 5, "batch_size": 2, "save_steps": 2}
    train_sam2(sam2, examples, settings, tmp_path / "ref", tmp_path / "ref.parquet")
    resume = tmp_path / "resume"

    class StopAtThird(sam2_warmup.StopSignal):
        calls = 0

        def requested(self):
            StopAtThird.calls += 1
            return StopAtThird.calls == 3

    monkeypatch.setattr(sam2_warmup, "StopSignal", StopAtThird)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_sam2(sam2, examples, settings, tmp_path / "out", tmp_path / "log.parquet", resume_dir=resume,
                   checkpoint_times=tmp_path / "times.jsonl")
    monkeypatch.undo()
    assert stopped.value.step == 3 and stopped.value.code == 143
    assert sorted(p.name for p in resume.glob("state-*.pt")) == ["state-000003.pt"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "log.parquet").exists()
    with pytest.raises(ValueError, match=r"different run.*settings"):
        train_sam2(sam2, examples, {**settings, "learning_rate": 1e-3}, tmp_path / "out", tmp_path / "log.parquet",
                   resume_dir=resume)
    train_sam2(sam2, examples, settings, tmp_path / "out", tmp_path / "log.parquet", resume_dir=resume,
               checkpoint_times=tmp_path / "times.jsonl")
    assert not resume.exists()
    times = [json.loads(line) for line in (tmp_path / "times.jsonl").read_text().splitlines()]
    assert [(t["event"], t["step"]) for t in times] == [("start", 0), ("save", 2), ("save", 3), ("start", 3),
                                                        ("save", 4)]
    assert times[3]["resumed_from"] == str(resume / "state-000003.pt") and all(t["seconds"] >= 0 for t in times)
    log, ref_log = (pq.read_table(tmp_path / f).to_pylist() for f in ("log.parquet", "ref.parquet"))
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log] and log[-1]["loss"] < log[0]["loss"]
    want, got = (torch.load(d / "model.pt")["model"] for d in (tmp_path / "ref", tmp_path / "out"))
    assert all(torch.equal(want[k], got[k]) for k in want)
    # A newest state that does not load (cut off) is skipped, naming it; the one before is used.
    resume.mkdir()
    sam2_warmup._save_state(resume, {"step": 2, "marker": "older"})
    (resume / "state-000004.pt").write_bytes(b"PK\x03\x04 cut off")
    assert sam2_warmup._newest_state(resume)["marker"] == "older"
    assert "state-000004.pt does not load" in caplog.text


def test_an_example_whose_image_is_gone_when_served_is_named_with_its_file(tmp_path, policy):
    examples = [{"image": ImageRef(str(tmp_path), "video_000/000004.png"), "target": "x", "id": "video_000-000004-0",
                 "prompt": [{"role": "user", "content": "Find it."}]}]
    with pytest.raises(OSError, match=r"row video_000-000004-0: .*video_000/000004\.png: cannot load image"):
        train_sft(policy, examples, {"max_steps": 1, "batch_size": 1, "report_to": []}, tmp_path / "run",
                  tmp_path / "log.parquet")
