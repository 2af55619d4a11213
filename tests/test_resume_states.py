"""Which Trainer checkpoints a retried job may resume from (reproseg.runs): a state is whole
once every rank's files are in it and their sizes are recorded (seal_checkpoint); one cut
off while saving, or damaged since, is named in a warning and left aside."""
import json
import logging

import pytest

from reproseg.runs import CHECKPOINT_FILES, checkpoint_damage, completed_checkpoints, seal_checkpoint


def _state(root, step, seal=True):
    folder = root / f"checkpoint-{step}"
    (folder / "dcp").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "dcp" / "shard_1.distcp").write_bytes(b"s" * 10)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if seal:
        seal_checkpoint(folder)
    return folder


def test_a_sealed_state_records_every_file_but_its_seal(tmp_path):
    folder = _state(tmp_path, 2)
    assert json.loads((folder / CHECKPOINT_FILES).read_text()) == {
        "dcp/shard_1.distcp": 10, "model.safetensors": 100, "trainer_state.json": len('{"global_step": 2}')}
    assert checkpoint_damage(folder) is None


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / CHECKPOINT_FILES).unlink(), "checkpoint_files.json is missing (the save did not finish)"),
    (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing (the save did not finish)"),
    (lambda f: (f / "dcp" / "shard_1.distcp").unlink(), "dcp/shard_1.distcp is missing"),
    (lambda f: (f / "model.safetensors").write_bytes(b"w" * 50), "model.safetensors has 50 bytes, 100 when it was"),
    (lambda f: (f / "trainer_state.json").write_text('{"global_st'), "unreadable JSON"),
])
def test_each_damage_is_named(tmp_path, damage, reason):
    folder = _state(tmp_path, 4)
    damage(folder)
    assert reason in checkpoint_damage(folder)


def test_the_newest_whole_state_is_last_and_the_others_are_warned_of(tmp_path, caplog):
    _state(tmp_path, 2)
    _state(tmp_path, 10)
    _state(tmp_path, 12, seal=False)          # killed while saving
    (tmp_path / "checkpoint-14").mkdir()      # killed before anything was written
    (tmp_path / "checkpoint-latest").mkdir()  # not a Trainer state
    with caplog.at_level(logging.WARNING, logger="reproseg.runs"):
        done = completed_checkpoints(tmp_path)
    assert [p.name for p in done] == ["checkpoint-2", "checkpoint-10"]   # by step, not by name
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 2 and "checkpoint-12 is skipped" in warned[0] and "checkpoint-14 is skipped" in warned[1]
