"""`reproseg learning`: first / last means over finite points, per quantity, by hand."""
import math

import pyarrow as pa
import pyarrow.parquet as pq

from reproseg.cli import main
from reproseg.learning import find_logs, trends

NAN = math.nan


def _write(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def test_grpo_log_means_count_each_rollout_once(tmp_path):
    # 8 optimizer steps, rollouts on every other one (steps_per_generation 2): the update-only
    # steps repeat their rollout's rewards. Rollouts: 1, 2, 3, 4 -> first quarter [1], last [4].
    log = _write(tmp_path / "lpr" / "train_log.parquet", {
        "step": [8, 1, 2, 3, 4, 5, 6, 7],   # out of order: sorted by step
        "generated": [0.0, 1.0, 0, 1, 0, 1, 0, 1],
        "loss": [0.1, -0.5, 0.2, 0.3, 0.0, 0.4, 0.1, 0.9],
        "reward_mean": [4.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0],
        "reward_lpr/box_iou_mean": [0.2, 0.5, 0.5, 0.4, 0.4, 0.3, 0.3, 0.2],
        "reward_lpr/box_iou_std": [0.1] * 8,
        "kl": [NAN] * 8,
    })
    got = {t.quantity: t for t in trends(log)}
    assert set(got) == {"reward_mean", "reward_lpr/box_iou_mean"}   # no surrogate loss, std or all-NaN KL
    assert (got["reward_mean"].points, got["reward_mean"].first, got["reward_mean"].last) == (4, 1.0, 4.0)
    assert got["reward_mean"].improved
    assert (got["reward_lpr/box_iou_mean"].first, got["reward_lpr/box_iou_mean"].last) == (0.5, 0.2)
    assert not got["reward_lpr/box_iou_mean"].improved


def test_sft_loss_falls_and_mask_iou_rises(tmp_path):
    log = _write(tmp_path / "stage1" / "train_log.parquet", {
        "step": list(range(1, 9)),
        "loss": [8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.5, 0.5],
        "mask_iou": [0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    })
    got = {t.quantity: t for t in trends(log, fraction=0.5)}
    assert (got["loss"].first, got["loss"].last) == ((8 + 6 + 5 + 4) / 4, (3 + 2 + 1.5 + 0.5) / 4)
    assert got["loss"].improved and not got["loss"].higher_is_better
    assert math.isclose(got["mask_iou"].first, 0.325) and math.isclose(got["mask_iou"].last, 0.75)
    assert got["mask_iou"].improved


def test_cli_lists_every_log(tmp_path, capsys):
    _write(tmp_path / "a" / "train_log.parquet", {"step": [1, 2], "loss": [2.0, 1.0]})
    _write(tmp_path / "b" / "sam2_log.parquet", {"step": [1, 2], "loss": [1.0, 3.0]})
    assert len(find_logs(tmp_path)) == 2
    assert main(["learning", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 2 | 1 | yes |" in out and "| 2 | 1 | 3 | no |" in out
    assert main(["learning", "--results", str(tmp_path / "none")]) == 1
