"""Dr. Seg's format warm-up (rule drseg_warmup): its targets are what the rewards score
full marks on, its prompts are the ones GRPO and inference render, its frame is the
policy's, it holds records out, and it trains on one or two processes."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reproseg.answers.parsing import parse
from reproseg.drseg.rewards import DrSegProfile
from reproseg.drseg.visionreasoner import data as vrdata
from reproseg.drseg.visionreasoner import rewards as vr
from reproseg.drseg.visionreasoner import synthetic
from reproseg.drseg.visionreasoner.task import TEMPLATES, Objects, answer_objects, read_objects
from reproseg.drseg.visionreasoner.warmup import held_out_split, target_text, warmup_examples, warmup_stage
from reproseg.models.tiny_bundle import build_tiny_policy


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A synthetic training source imported as the workflow imports it: (rows, images)."""
    root = tmp_path_factory.mktemp("vr")
    synthetic.write_source(str(root / "train.parquet"), "train", 6, 0, "t", (96, 72), 3, 56)
    table, report = vrdata.import_training_set({"name": "t", "path": str(root / "train.parquet"), "split": "train",
                                                "max_image_pixels": 10**8}, images_out=root / "images")
    return table.to_pylist(), root / "images"


def test_targets_score_full_marks_under_each_prompt(imported):
    rows, images = imported
    examples = warmup_examples(pa.Table.from_pylist(rows), images, 56)
    assert len(examples) == 2 * len(rows)
    paper = DrSegProfile.by_name("paper")
    for rec, (plain, looked) in zip(rows, zip(examples[::2], examples[1::2])):
        gt = rec["objects"]
        for e in (plain, looked):
            p = parse(e["target"])
            assert vr.think_format(p, gt, paper) == 1.0
            assert vr.answer_format(p, gt, paper) == 1.0
            assert vr.non_repeat(p, gt, paper) == 1.0
            assert vr.accuracy(p, gt, DrSegProfile.by_name("visionreasoner")) == 3.0   # the GT itself
            assert answer_objects(e["target"]) == read_objects(json.loads(gt))
        assert vr.look(parse(looked["target"]), gt, paper) == 1.0
        assert vr.look(parse(plain["target"]), gt, paper) == 0.0


def test_prompts_are_the_ones_grpo_renders(imported):
    rows, images = imported
    examples = warmup_examples(pa.Table.from_pylist(rows), images, 56)
    for template in TEMPLATES:
        served = vrdata.training_rows(pa.Table.from_pylist(rows), str(images), template, 56)
        mine = examples[0::2] if template == "visionreasoner" else examples[1::2]
        assert [e["prompt"] for e in mine] == [r["prompt"] for r in served]
        assert [answer_objects(e["target"]) for e in mine] == [read_objects(json.loads(r["gt_objects"]))
                                                               for r in served]
        assert all(e["image"].size == (56, 56) for e in mine)


def test_another_policy_size_scales_the_targets(imported):
    rows, images = imported
    at28 = warmup_examples(pa.Table.from_pylist(rows[:1]), images, 28)[0]
    at56 = warmup_examples(pa.Table.from_pylist(rows[:1]), images, 56)[0]
    big, small = answer_objects(at56["target"]), answer_objects(at28["target"])
    # int(v * 28 / 56 + 0.5), the authors' rounding (task.scale)
    assert small.boxes == tuple(tuple(int(v * 0.5 + 0.5) for v in b) for b in big.boxes)
    assert at28["image"].size == (28, 28)


def test_target_text_is_compact_integer_json():
    text = target_text("The red shapes.", Objects(((1.4, 2.6, 10.0, 20.0),), ((5.0, 9.5),)), look=True)
    assert text == '<think><look>the red shapes</look></think><answer>[{"bbox_2d":[1,3,10,20],"point_2d":[5,10]}]</answer>'


def test_held_out_split_takes_every_nth_record():
    rows = [{"id": i} for i in range(10)]
    kept, held = held_out_split(rows, 4)
    assert [r["id"] for r in held] == [3, 7]
    assert [r["id"] for r in kept] == [0, 1, 2, 4, 5, 6, 8, 9]


@pytest.mark.parametrize("processes", [1, 2])
def test_warmup_trains_on_the_jobs_processes(imported, tmp_path, processes):
    """The rule's path on one process and on two (torchrun, gloo; each worker builds its
    examples from the table): the checkpoint, the log and the world size in the summary."""
    rows, images = imported
    table = tmp_path / "table.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    policy = tmp_path / "qwen"
    build_tiny_policy(policy, {}, ["the red shapes"], seed=0)
    settings = {"enabled": True, "learning_rate": 3e-3, "max_steps": 2, "batch_size": 2, "warmup_steps": 0,
                "lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0, "report_to": [],
                "seed": 0, "held_out_every": 3}
    run = tmp_path / "run"
    warmup_stage(str(table), str(images), str(policy), str(run / "checkpoint"), str(tmp_path / "log.parquet"),
                 str(tmp_path / "curves.png"), settings, 56, processes=processes)
    summary = json.loads((run / "checkpoint" / "sft_summary.json").read_text())
    assert summary["world_size"] == processes
    assert summary["examples"] == 8 and summary["held_out"] == 4     # 6 records: 4 trained, 2 held out, 2 prompts
    assert (run / "checkpoint" / "model.safetensors").is_file() and (tmp_path / "curves.png").is_file()
    assert pq.read_table(tmp_path / "log.parquet").column("step").to_pylist() == [1, 2]
