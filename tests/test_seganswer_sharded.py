"""Stage 2 across processes: two workers (gloo, CPU) with the language model sharded
(FSDP2) take the same step as one process averaging the two slices' gradients."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq
import torch

from reproseg.seganswer import stage2, synthetic
from reproseg.seganswer.model import SegAnswerModel
from reproseg.seganswer.stage1 import _batches


def test_two_processes_take_the_step_of_one_averaging_their_gradients(seganswer_checkpoint, tmp_path):
    stage1_dir = seganswer_checkpoint
    rows = synthetic.qa_rows(4, seed=3)
    s = stage2.Stage2Settings(batch_size=1, max_steps=1, learning_rate=1e-3, processes=2, device="cpu")
    stage2.train_stage2(stage1_dir, rows, tmp_path / "two", s, log_path=tmp_path / "two.parquet")
    assert not (tmp_path / "two.job.pkl").exists()
    import json

    assert json.loads((tmp_path / "two" / stage2.SUMMARY_FILE).read_text())["processes"] == 2

    # The same step in this process: the global batch's two slices, gradients averaged.
    model = SegAnswerModel.from_pretrained(stage1_dir)
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    params = stage2.configure_trainable(model, s)
    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    model.train()
    model.sam.eval()
    _, idx = next(_batches(len(rows), 2, s.epochs, s.seed))
    losses = [stage2.stage2_step_loss(model, [rows[i]], s) for i in idx]
    (sum(losses) / 2).backward()
    torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
    opt.step()

    two = SegAnswerModel.from_pretrained(tmp_path / "two")
    got = dict(two.lm.named_parameters())
    changed = 0
    for n, p in model.lm.named_parameters():
        torch.testing.assert_close(got[n], p.detach(), atol=2e-6, rtol=1e-5, msg=n)
        changed += not torch.equal(p.detach(), before[n])
    assert changed > 0  # the step moved the weights
    log = pq.read_table(tmp_path / "two.parquet").to_pylist()
    assert len(log) == 1 and abs(log[0]["loss"] - float(sum(losses)) / 2) < 1e-5
