"""Stages 1 and 2 across processes (gloo, CPU): stage 2 with the language model sharded
(FSDP2) takes the step of one process averaging the two slices' gradients and resumes
from its sharded state; stage 1 (DDP) takes the steps of one process."""
import json
import os
import signal
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq
import pytest
import torch

from reproseg.runs import TrainingInterrupted, completed_checkpoints
from reproseg.seganswer import stage1, stage2, synthetic
from reproseg.seganswer.model import SegAnswerModel
from reproseg.seganswer.sft_trainer import SHARDED_DIR as sharded_dir


def test_two_processes_take_the_step_of_one_averaging_their_gradients(seganswer_checkpoint, tmp_path):
    """Stage 2 on the Trainer over two workers, the language model sharded (FSDP2), one row
    each: one step equals a hand-made step on both rows with the two losses averaged."""
    stage1_dir = seganswer_checkpoint
    rows = synthetic.qa_rows(2, seed=3)  # the global batch (2 processes x 1 row) is both rows
    s = stage2.Stage2Settings(batch_size=1, max_steps=1, learning_rate=1e-3, processes=2, device="cpu")
    stage2.train_stage2(stage1_dir, rows, tmp_path / "two", s, log_path=tmp_path / "two.parquet")
    assert not (tmp_path / "two.job.pkl").exists()
    assert json.loads((tmp_path / "two" / stage2.SUMMARY_FILE).read_text())["processes"] == 2

    # The same step in this process: each row's loss, averaged, AdamW after clipping at 1.0.
    model = SegAnswerModel.from_pretrained(stage1_dir)
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    params = stage2.configure_trainable(model, s)
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    model.train()
    model.sam.eval()
    losses = [stage2.stage2_step_loss(model, [r], s) for r in rows]
    (sum(losses) / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
    opt.step()

    two = SegAnswerModel.from_pretrained(tmp_path / "two")
    got = dict(two.lm.named_parameters())
    changed = 0
    for n, p in model.lm.named_parameters():
        torch.testing.assert_close(got[n], p.detach(), atol=2e-6, rtol=1e-5, msg=n)
        changed += not torch.equal(p.detach(), before[n])
    assert changed > 0  # the step moved the weights
    log = pq.read_table(tmp_path / "two.parquet").to_pylist()
    assert len(log) == 1 and abs(log[0]["loss"] - float(sum(losses).detach()) / 2) < 1e-5
    assert log[0]["grad_norm"] == pytest.approx(float(norm), rel=1e-4)


def test_two_processes_stopped_and_resumed_end_at_the_weights_of_an_uninterrupted_run(seganswer_checkpoint,
                                                                                    tmp_path):
    """A sharded stage-2 run sent SIGTERM after its first resume state saves each rank's
    shards (model, optimizer), the scheduler and the RNG states, stops with 143, and the
    same call again ends where a run never stopped ends."""
    rows = synthetic.qa_rows(4, seed=3)
    s = stage2.Stage2Settings(batch_size=1, max_steps=4, save_steps=1, learning_rate=1e-3, processes=2,
                              device="cpu", report_to=[])
    stage2.train_stage2(seganswer_checkpoint, rows, tmp_path / "ref", s)
    resume = tmp_path / "resume"

    def stop_after_first_state():
        while not completed_checkpoints(resume):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends; the launcher passes it on

    watcher = threading.Thread(target=stop_after_first_state, daemon=True)
    watcher.start()
    with pytest.raises(TrainingInterrupted) as stopped:
        stage2.train_stage2(seganswer_checkpoint, rows, tmp_path / "out", s, resume_dir=resume)
    watcher.join()
    assert 1 <= stopped.value.step < 4 and not (tmp_path / "out").exists()
    done = completed_checkpoints(resume)
    assert (done[-1] / sharded_dir).is_dir() and (done[-1] / "rng_state_1.pth").is_file()
    stage2.train_stage2(seganswer_checkpoint, rows, tmp_path / "out", s, resume_dir=resume,
                        log_path=tmp_path / "log.parquet")
    assert [r["step"] for r in pq.read_table(tmp_path / "log.parquet").to_pylist()] == [1, 2, 3, 4]
    want = dict(SegAnswerModel.from_pretrained(tmp_path / "ref").lm.named_parameters())
    got = dict(SegAnswerModel.from_pretrained(tmp_path / "out").lm.named_parameters())
    assert set(want) == set(got)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-5, msg=n)


def _trained(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_stage1_two_processes_take_the_steps_of_one_with_the_same_global_batch(seganswer_checkpoint, tmp_path):
    """Stage 1 phase b (LoRA + projector + mask decoder) over two DDP workers (gloo, CPU), two
    rows each, ends where one process ends on the same four rows per step. It could not if
    the workers saw the same rows (a two-row gradient) or if their gradients were not
    reduced (rank 0 would keep its own half's step)."""
    rows = synthetic.seg_rows(4, seed=0)
    common = {"learning_rate": 1e-2, "epochs": 1000, "max_steps": 3, "lora_dropout": 0.0, "device": "cpu",
              "sam_feature_cache_mb": 0}
    one = stage1.Stage1Settings.from_dict({**common, "batch_size": 4, "processes": 1}, "b")
    two = stage1.Stage1Settings.from_dict({**common, "batch_size": 2, "processes": 2}, "b")
    stage1.train_stage1_lora(seganswer_checkpoint, rows, tmp_path / "one", one, log_path=tmp_path / "one.parquet")
    stage1.train_stage1_lora(seganswer_checkpoint, rows, tmp_path / "two", two, log_path=tmp_path / "two.parquet",
                             resume_dir=tmp_path / "two.resume")
    assert not (tmp_path / "two.job.pkl").exists() and not (tmp_path / "two.resume").exists()
    start = SegAnswerModel.from_pretrained(seganswer_checkpoint)
    a = SegAnswerModel.from_pretrained(tmp_path / "one", lora_trainable=True)
    b = SegAnswerModel.from_pretrained(tmp_path / "two", lora_trainable=True)
    stage1.configure_trainable(a, "b", one)
    stage1.configure_trainable(b, "b", two)
    want, got = _trained(a), _trained(b)
    assert set(want) == set(got) and want
    # Adam divides by the gradients' own scale, so a float-level difference in a near-zero
    # gradient (a reduction's order) moves a weight by a fraction of the learning rate
    # (measured: at most 9e-4 after 3 steps at lr 1e-2); a rank that kept its own gradient
    # moves it by about the learning rate at every step.
    worst = max((got[n] - want[n]).abs().max().item() for n in want)
    assert worst < 0.2 * common["learning_rate"]
    # the steps moved the projector away from where it started
    assert any(not torch.equal(p, q) for p, q in zip(a.projector.parameters(), start.projector.parameters()))
    one_log = pq.read_table(tmp_path / "one.parquet").to_pylist()
    two_log = pq.read_table(tmp_path / "two.parquet").to_pylist()
    assert [r["step"] for r in two_log] == [1, 2, 3]
    # the global batch's loss and gradient norm at every step, the later ones after the same updates
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in two_log] == [pytest.approx(r[key], rel=1e-3) for r in one_log]


def test_ranks_after_the_first_build_the_language_model_without_its_weights(seganswer_checkpoint):
    """lm_meta (a sharded stage's ranks but the first): the language model's structure on the
    meta device, nothing read or allocated; SAM 2.1 and the projector are whole. Rank 0's
    broadcast fills the shards (the two-process tests above fail without it)."""
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, lm_meta=True)
    whole = SegAnswerModel.from_pretrained(seganswer_checkpoint)
    assert all(p.is_meta for p in model.lm.parameters())
    assert [(n, p.shape) for n, p in model.lm.named_parameters()] == [(n, p.shape) for n, p in whole.lm.named_parameters()]
    assert not any(p.is_meta for p in model.sam.parameters()) and not any(p.is_meta for p in model.projector.parameters())
