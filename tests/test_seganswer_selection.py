"""Candidates and val selection of SegAnswer stages 1 and 2: a candidate every
`candidate_every` optimizer steps and the final model, each scored on the val split only
(the test split's pictures are made unreadable first: reading one would fail the job),
the recorded scores equal to the measures computed here, and the chosen candidate linked."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from conftest import section
from safetensors.torch import load_file

from reproseg.seganswer import stage1, stage2, synthetic
from reproseg.seganswer.evaluate import answer_questions, giou_ciou, qa_accuracy
from reproseg.seganswer.model import HEADS_FILE, SegAnswerModel
from reproseg.seganswer.selection import select_stage1, select_stage2
from reproseg.seganswer.sources import image_root, import_stage
from reproseg.seganswer.sources.rows import SampleError, select
from reproseg.selection import describe

SIZE = [84, 56]
SPEC = {"format": "shapes", "counts": {"train": 4, "val": 3, "test": 3}, "size": SIZE, "seed": 0, "tasks": ["MVQA"]}


@pytest.fixture
def shapes(tmp_path):
    """The shapes source imported (train / val / test), its test pictures then made unreadable."""
    out = tmp_path / "data"
    import_stage("shapes", SPEC, out / "referring.parquet", out / "questions.parquet", out / "images",
                 out / "report.json", out / "report.md", out / "log.json")
    root = image_root(SPEC, out / "images", finers_images="frames")
    tests = sorted((out / "images" / "test").glob("*.png"))
    assert len(tests) == 3
    for p in tests:
        p.write_bytes(b"not a picture")
    return out, root


def _cfg(selection: dict) -> dict:
    return section("seganswer", {"sam_feature_cache_mb": 16,
                                 "eval": {"device": "cpu", "dtype": "float32"},
                                 "selection": {"data": ["shapes/val"], "referring_data": ["shapes/val"],
                                               "max_new_tokens": 4, "max_turns": 2, "limit": None, **selection}})


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_stage1_lora_candidates_scored_on_val_masks(seganswer_checkpoint, shapes, tmp_path):
    data, root = shapes
    run = tmp_path / "lora"
    s = {"learning_rate": 3e-3, "epochs": 1000, "batch_size": 4, "max_steps": 4, "candidate_every": 2,
         "lora_dropout": 0.0, "sam_feature_cache_mb": 16}
    stage1.train_stage1_lora(seganswer_checkpoint, synthetic.seg_rows(4, seed=0), run / "checkpoint", s,
                             candidates_dir=run / "candidates")
    cands = run / "candidates"
    assert _names(cands) == ["step-000002", "step-000004"]
    # the final candidate is the checkpoint itself (hard links), the earlier one other weights
    final_heads = cands / "step-000004" / HEADS_FILE
    assert os.path.samefile(final_heads, run / "checkpoint" / HEADS_FILE)
    early = load_file(str(cands / "step-000002" / HEADS_FILE))
    late = load_file(str(final_heads))
    assert any(not torch.equal(early[k], late[k]) for k in early)
    assert json.loads((cands / "step-000002" / stage1.SUMMARY_FILE).read_text())["steps"] == 2

    cfg = _cfg({"stage1": {"choose": "best", "metric": "giou", "mode": "max"}})
    out = select_stage1([str(data / "referring.parquet")], [root], str(cands), str(tmp_path / "chosen"),
                        str(tmp_path / "selection.json"), cfg)["selection"]
    # the scores are the val masks' gIoU / cIoU with the response given, computed here again
    val = select([str(data / "referring.parquet")], [root], ["shapes/val"], "referring")
    assert len(val) == 3
    want = {}
    for c in out["candidates"]:
        model = SegAnswerModel.from_pretrained(c["path"])
        m = giou_ciou(stage1.predict_masks(model, val), [r["mask"] for r in val])
        want[c["step"]] = m["giou"]
        assert c["scores"] == pytest.approx({"giou": m["giou"], "ciou": m["ciou"]}, abs=1e-9)
    best = max(want, key=lambda k: (want[k], k))
    assert out["chosen"]["step"] == best and out["split"] == "val"
    assert np.isclose(out["chosen"]["value"], want[best])
    assert _names(tmp_path / "chosen") == _names(cands / f"step-{best:06d}")
    assert describe(out)[0] == "selection best by giou (max) on val"
    # the fixture's unreadable test pictures do fail a selection that reads them
    with pytest.raises(SampleError, match="shapes/test"):
        select_stage1([str(data / "referring.parquet")], [root], str(cands), str(tmp_path / "t"),
                      str(tmp_path / "t.json"), {**cfg, "selection": {**cfg["selection"],
                                                                      "referring_data": ["shapes/test"]}})


def test_stage2_candidates_scored_on_val_answers(seganswer_checkpoint, shapes, tmp_path):
    data, root = shapes
    run = tmp_path / "stage2"
    s = {"learning_rate": 3e-3, "epochs": 1000, "batch_size": 4, "max_steps": 4, "candidate_every": 2,
         "processes": 1, "seg_response": "<|seg|>", "sam_feature_cache_mb": 16, "report_to": []}
    stage2.train_stage2(seganswer_checkpoint, synthetic.qa_rows(4, seed=0), run / "checkpoint", s,
                        candidates_dir=run / "candidates")
    cands = run / "candidates"
    assert _names(cands) == ["step-000002", "step-000004"]
    assert os.path.samefile(cands / "step-000004" / "model.safetensors", run / "checkpoint" / "model.safetensors")
    questions = [str(data / "questions.parquet")]
    cfg = _cfg({"stage2": {"choose": "best", "metric": "accuracy", "mode": "max"}})
    out = select_stage2(questions, [root], str(cands), str(tmp_path / "chosen"), str(tmp_path / "sel.json"),
                        cfg)["selection"]
    val = select(questions, [root], ["shapes/val"], "questions")
    assert len(val) == 3
    for c in out["candidates"]:
        records = answer_questions(SegAnswerModel.from_pretrained(c["path"]), val, max_turns=2, max_turn_tokens=4,
                                   template=cfg["reasoning_prompt"])
        q = qa_accuracy(records)
        assert c["scores"] == pytest.approx({"accuracy": q["accuracy"], "answered": 1 - q["unanswered"] / 3})
    acc = {c["step"]: c["scores"]["accuracy"] for c in out["candidates"]}
    assert out["chosen"]["step"] == max(acc, key=lambda k: (acc[k], k))
    # `last` scores nothing (no val data needed) and takes the final step
    last = select_stage2([], [], str(cands), str(tmp_path / "last"), str(tmp_path / "last.json"),
                         _cfg({"stage2": {"choose": "last", "metric": None, "mode": "max"}, "data": []}))
    assert last["selection"]["chosen"]["step"] == 4 and last["selection"]["candidates"][0]["scores"] == {}
