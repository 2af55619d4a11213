"""Dr. Seg's own branch end to end on the synthetic multi-object fixture (a few GRPO steps),
with the FineRS main run its comparison table reads, then exact re-run sets after each
kind of change, from a copy of the repository."""
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reproseg.data.masks import rle_decode

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
data:
  synthetic: {n_videos: 4, width: 320, height: 180, n_frames: 8}
  splits: {proportions: {train: 2, val: 1, test: 1}}
# drseg_all's comparison table reads the FineRS main run: its stages as small as the FineRS test's.
finers:
  warmup: {max_steps: 4, sam2: {max_steps: 2}}
  lpr: {grpo: {max_steps: 4, per_device_batch_size: 8, max_completion_length: 24, candidate_every: 2}}
  gse: {grpo: {max_steps: 4, per_device_batch_size: 8, max_completion_length: 24, candidate_every: 2}}
  selection: {max_new_tokens: 24}
drseg:
  synthetic: {counts: {train: 8, val: 4, test: 4}}
  warmup: {max_steps: 4}
  grpo: {max_steps: 2, candidate_every: 1, max_completion_length: 32}
  selection: {max_new_tokens: 32}
  eval: {max_new_tokens: 32}
"""
pytestmark = pytest.mark.workflow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def smk(copy, *args, config=None):
    cfg = [str(copy / "small.yaml")] + ([str(config)] if config else [])
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(copy),
                           "--cores", "1", *args, "--configfile", *cfg], capture_output=True, text=True, env=ENV)


def planned(copy, config=None, target="drseg_all"):
    """{rule: count} of a dry run of the Dr. Seg branch."""
    out = smk(copy, "-n", target, config=config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "src", "envs", "report"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    (dst / "small.yaml").write_text(SMALL)
    out = smk(dst, "drseg_all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return dst


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BENCHES = ("synthetic_test", "synthetic_count", "synthetic_rec", "synthetic_det")
TABLES = {"drseg_table": 1, "markdown_html": 6, "drseg_all": 1}
EVALUATED = {"drseg_infer": 4, "drseg_evaluate": 4, **TABLES}
TRAINED = {"drseg_train": 1, "drseg_select": 1, **EVALUATED}
UNTRAINED = {"drseg_infer_untrained": 4, "drseg_evaluate_untrained": 4}
# The main variant's segmentation scores feed the FineRS comparison too (and its HTML): 6 tables + 1.
COMPARED = {"drseg_finers_comparison": 1, "markdown_html": 7}
# A FineRS change from GSE on: its training and what follows, and the comparison.
FINERS_GSE = {"train_gse": 1, "select_gse": 1, "infer_finers": 2, "evaluate_finers": 2,  # one shard per split
              "drseg_finers_comparison": 1, "markdown_html": 1, "drseg_all": 1}
FINERS_LPR = {"train_lpr": 1, "select_lpr": 1, "retrospective_regions": 1, "merge_region_shards": 1, **FINERS_GSE}


def test_default_run_holds_the_branch_from_its_warmup():
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(ROOT), "-n",
                          "--config", "results=/tmp/reproseg-drseg-dry"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for rule in ("drseg_warmup", "drseg_train", "drseg_select", "drseg_table"):
        assert f"rule {rule}:" in text
    # GRPO and the untrained row start from the warm-up; masks come from FineRS's SAM 2.1.
    train = text.split("rule drseg_train:")[1].split("rule ")[0]
    assert "drseg/warmup/main/train_log.parquet.prov.json" in train
    select = text.split("rule drseg_select:")[1].split("rule ")[0]
    assert "finers/warmup/main/sam2_log.parquet.prov.json" in select


def test_tables_hold_the_papers_numbers_and_ours(copy):
    t2 = pq.read_table(copy / "results/tables/drseg_table2.parquet").to_pylist()
    rows = {r["method"]: r for r in t2}
    assert rows["Dr. Seg (paper)"]["RCO testA"] == 80.2 and rows["Dr. Seg (paper)"]["avg"] == 74.0
    assert rows["Dr. Seg (paper)"]["source"] == "paper: Dr. Seg, Table 2"
    assert rows["Qwen2.5-VL (paper)"]["ReasonSeg val"] == 56.9
    main = json.loads((copy / "results/drseg/metrics/main/synthetic_test.json").read_text())
    assert rows["ours: main"]["synthetic test"] == pytest.approx(100 * main["giou"])
    assert rows["ours: main"]["RCO testA"] is None and "ours: untrained" in rows
    t3 = {r["method"]: r for r in pq.read_table(copy / "results/tables/drseg_table3.parquet").to_pylist()}
    count = json.loads((copy / "results/drseg/metrics/main/synthetic_count.json").read_text())
    assert t3["ours: main"]["synthetic count"] == pytest.approx(100 * count["count_accuracy"])
    assert t3["Dr. Seg (paper)"]["CountBench test"] == 91.5
    # The main run is Dr. Seg (LC and DR, queue 2048, ranked): one row in each ablation.
    for name, paper in (("table4", "LC yes, DR yes (paper)"), ("table5", "Distribution-Ranked (paper)"),
                        ("table6", "queue 2048 (16 steps) (paper)")):
        t = {r["method"]: r for r in pq.read_table(copy / f"results/tables/drseg_{name}.parquet").to_pylist()}
        assert t["ours: main"]["source"] == f"ours: main, beside {paper}"
        assert "ours: untrained" not in t


def test_parse_failure_scores_intersection_0_union_gt_area(copy):
    """Every sample's (I, U) against the GT mask, counted by hand from the imported RLE."""
    table = {r["id"]: r for r in pq.read_table(copy / "results/drseg/data/synthetic_test/table.parquet").to_pylist()}
    samples = pq.read_table(copy / "results/drseg/metrics/main/synthetic_test.samples.parquet").to_pylist()
    preds = {p["id"]: p for p in pq.read_table(copy / "results/drseg/predictions/main/synthetic_test.parquet")
             .to_pylist()}
    assert len(samples) == len(table) == 4
    ious = []
    for s in samples:
        row = table[s["id"]]
        gt = rle_decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        assert s["parsed"] == preds[s["id"]]["parsed"]
        if not s["parsed"]:
            assert (s["intersection"], s["union"]) == (0, int(gt.sum()))
        assert 0 <= s["intersection"] <= int(gt.sum()) <= s["union"]
        ious.append(s["intersection"] / s["union"])
    metrics = json.loads((copy / "results/drseg/metrics/main/synthetic_test.json").read_text())
    assert metrics["giou"] == pytest.approx(np.mean(ious))
    counts = pq.read_table(copy / "results/drseg/metrics/main/synthetic_count.samples.parquet").to_pylist()
    gts = {r["id"]: r["count"] for r in pq.read_table(copy / "results/drseg/data/synthetic_count/table.parquet")
           .to_pylist()}
    assert all(s["gt_count"] == gts[s["id"]] and (s["parsed"] or s["count"] == 0) for s in counts)


def test_training_logs_every_term_and_flushes_the_ranked_queue(copy):
    log = pq.read_table(copy / "results/drseg/train/main/train_log.parquet").to_pydict()
    assert log["step"] == [1, 2]
    for term in ("think", "answer_format", "non_repeat", "look", "ranked_accuracy"):
        assert f"reward_vr/{term}_mean" in log
    # Step 1 ranks every answer against the queue's zero rows: each quantile is 1.0.
    assert log["reward_vr/ranked_accuracy_mean"][0] == 1.0
    candidates = (copy / "results/drseg/train/main/candidates").glob("step-*")
    assert sorted(p.name for p in candidates) == ["step-000001", "step-000002"]


def test_selection_reads_val_only_and_records_every_candidate(copy):
    from reproseg.audit import RecordIndex, chain

    sel = copy / "results/drseg/select/main/selection.json"
    selection = json.loads(sel.read_text())
    assert [c["step"] for c in selection["candidates"]] == [1, 2] and selection["split"] == "val"
    record = json.loads((copy / "results/drseg/select/main/selection.json.prov.json").read_text())
    assert record["outcome"]["selection"] == selection
    idx = RecordIndex.load(copy / "results", copy)
    inputs = [e["path"] for rec in chain(idx, str(sel)) for entries in rec["inputs"].values() for e in entries]
    assert any("drseg/data/synthetic_val/" in p for p in inputs)
    assert not any(f"drseg/data/{b}/" in p for p in inputs for b in BENCHES)
    infer = json.loads((copy / "results/drseg/predictions/main/synthetic_test.parquet.prov.json").read_text())
    assert infer["params"]["policy"].endswith("drseg/select/main/checkpoint")


@pytest.mark.parametrize("row, column, value", [("Dr. Seg (paper)", "RCO testA", "80.2"),
                                                ("ours: main", "synthetic test", None)])
def test_audit_a_number(copy, capsys, row, column, value):
    from reproseg.cli import main

    table = copy / "results/tables/drseg_table2.parquet"
    assert main(["audit", str(table), "--row", row, "--column", column, "--results", str(copy / "results"),
                 "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    if value is not None:
        assert f"[{row}, {column}] = {value}" in out
    assert "selection best by giou (max) on val" in out
    for rule in ("drseg_table", "drseg_evaluate", "drseg_infer", "drseg_select", "drseg_train",
                 "drseg_import_source", "drseg_synthesize", "build_tiny_models"):
        assert f"== {rule}" in out


def test_no_op(copy):
    assert planned(copy) == {}


@pytest.mark.parametrize("change, expected", [
    # A Dr. Seg option re-runs its training and what follows; the imports and the untrained
    # policy's answers stay.
    ("drseg: {rewards: {queue_size: 512}}", {**TRAINED, **COMPARED}),
    ("drseg: {grpo: {learning_rate: 1.0e-4}}", {**TRAINED, **COMPARED}),
    # The format warm-up: every policy of the branch, trained or not.
    ("drseg: {warmup: {learning_rate: 1.0e-3}}", {"drseg_warmup": 1, **TRAINED, **UNTRAINED, **COMPARED}),
    # Look-to-Confirm changes the prompt too, so the untrained policy is asked again.
    ("drseg: {rewards: {look_to_confirm: false}}", {**TRAINED, **UNTRAINED, **COMPARED}),
    ("drseg: {selection: {choose: last}}", {"drseg_select": 1, **EVALUATED, **COMPARED}),
    ("drseg: {eval: {max_new_tokens: 24}}", {**EVALUATED, **UNTRAINED, **COMPARED}),
    # A new experiment adds its own training and evaluations; the table gains a row (not
    # the comparison: DR alone is neither Dr. Seg nor its baseline).
    ("experiments: {run: [drseg-dr-only]}", TRAINED),
    # ... VisionReasoner's rewards are the comparison's baseline row as well.
    ("experiments: {run: [drseg-visionreasoner]}", {**TRAINED, **COMPARED}),
    # A FineRS experiment without Dr. Seg's rewards shares every job of drseg_all; a FineRS
    # change re-runs its FineRS stages and the comparison, no Dr. Seg job.
    ("experiments: {run: [no-size-reward]}", {}),
    ("finers: {lpr: {grpo: {learning_rate: 1.0e-3}}}", FINERS_LPR),
    # FineRS with Dr. Seg's rewards on LPR: its own FineRS runs (the shared warm-up stays)
    # and the comparison's new row.
    ("experiments: {run: [lpr-drseg]}", FINERS_LPR),
])
def test_config_change_reruns_exactly(copy, tmp_path, change, expected):
    assert planned(copy, write(tmp_path, change + "\n")) == expected


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return text


@pytest.mark.parametrize("path, old, new, expected", [
    # A Dr. Seg reward term: the training and what follows.
    ("src/reproseg/drseg/rewards.py", "return float(any(b.strip() for b in blocks))",
     "return float(any(b.strip() for b in blocks[:8]))", {**TRAINED, **COMPARED}),
    # The evaluation's metric code: every evaluation, the selection (it scores by it) and what follows.
    ("src/reproseg/drseg/visionreasoner/metrics.py", "REC_IOU = 0.5", "REC_IOU = 0.5000001",
     {"drseg_select": 1, **EVALUATED, "drseg_evaluate_untrained": 4, **COMPARED}),
    # FineRS code: no Dr. Seg job, only the FineRS run the comparison reads.
    ("src/reproseg/finers/gse_rewards.py", "else 0.5 if any(ok)", "else 0.6 if any(ok)", FINERS_GSE),
])
def test_code_edit_reruns_exactly(copy, path, old, new, expected):
    before = edit(copy / path, old, new)
    try:
        assert planned(copy) == expected
    finally:
        (copy / path).write_text(before)


def comparison_inputs(copy, config):
    """The metrics files the dry-run's drseg_finers_comparison job reads."""
    out = smk(copy, "-n", "-f", "drseg_finers_comparison", "drseg_all", config=config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job = (out.stdout + out.stderr).split("rule drseg_finers_comparison:")[1]
    return sorted(p.strip() for p in re.search(r"input: (.*)", job).group(1).split(","))


def test_comparison_reads_the_declared_runs_in_drseg_all(copy, tmp_path):
    both = [f"results/finers/metrics/{e}/{s}.json" for e in ("lpr-drseg", "main") for s in ("test", "val")]
    drseg = [f"results/drseg/metrics/{e}/synthetic_test.json" for e in ("drseg-visionreasoner", "main")]
    # Only the segmentation benchmark, and no FineRS experiment that experiments.run lacks.
    assert comparison_inputs(copy, None) == sorted([*both[2:], drseg[1]])
    cfg = write(tmp_path, "experiments: {run: [lpr-drseg, drseg-visionreasoner, drseg-dr-only, no-size-reward]}\n")
    assert comparison_inputs(copy, cfg) == sorted([*both, *drseg])


def test_comparison_table_says_what_it_compares(copy):
    rows = {r["row"]: r for r in pq.read_table(copy / "results/tables/drseg_finers_comparison.parquet").to_pylist()}
    assert set(rows) == {"FineRS: main, synthetic FineRS-4k val", "FineRS: main, synthetic FineRS-4k test",
                         "Dr. Seg: main, synthetic test"}
    finers = json.loads((copy / "results/finers/metrics/main/test.json").read_text())["segmentation"]["all"]
    assert rows["FineRS: main, synthetic FineRS-4k test"]["gIoU"] == pytest.approx(100 * finers["giou"])
    drseg = json.loads((copy / "results/drseg/metrics/main/synthetic_test.json").read_text())
    assert rows["Dr. Seg: main, synthetic test"]["cIoU"] == pytest.approx(100 * drseg["ciou"])
    md = (copy / "results/tables/drseg_finers_comparison.md").read_text()
    assert "No paper reports this comparison" in md and "The benchmarks differ" in md
    assert "No 'FineRS with Dr. Seg's rewards' row: add an experiment" in md


def test_detection_ap_is_cocoeval_of_the_rows_and_predictions(copy):
    """The COCO AP of the detection benchmark, recomputed here with COCOeval on a GT written
    from the imported rows and the predictions' boxes."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows = pq.read_table(copy / "results/drseg/data/synthetic_det/table.parquet").to_pylist()
    metrics = json.loads((copy / "results/drseg/metrics/main/synthetic_det.json").read_text())
    assert metrics["task"] == "detection" and metrics["n"] == len(rows) > 0
    t3 = {r["method"]: r for r in pq.read_table(copy / "results/tables/drseg_table3.parquet").to_pylist()}
    assert t3["ours: main"]["synthetic det"] == pytest.approx(100 * metrics["coco_ap"])
    preds = {p["id"]: p for p in pq.read_table(copy / "results/drseg/predictions/main/synthetic_det.parquet")
             .to_pylist()}
    gt = {"images": [{"id": int(i), "width": 96, "height": 72} for i in sorted({r["image_id"] for r in rows})],
          "categories": [{"id": c} for c in sorted({r["category_id"] for r in rows})], "annotations": []}
    dets = []
    for r in rows:
        for x1, y1, x2, y2 in r["boxes"]:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": int(r["image_id"]),
                                      "category_id": r["category_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        p = preds[r["id"]]
        for o in json.loads(p["objects"]) if p["parsed"] else []:
            x1, y1, x2, y2 = o["bbox_2d"]
            dets.append({"image_id": int(r["image_id"]), "category_id": r["category_id"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": (x2 - x1) * (y2 - y1) / (96 * 72) if r["boxes"] else 0.0})
    assert metrics["detections"] == len(dets)
    # Table 7's P / R / F1 at IoU 0.5: the most one-to-one pairs per row, by brute force.
    def iou(a, b):
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        inter = max(w, 0) * max(h, 0)
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    matched = predicted = total = 0
    for r in rows:
        p = preds[r["id"]]
        boxes = [o["bbox_2d"] for o in json.loads(p["objects"])] if p["parsed"] else []
        predicted, total = predicted + len(boxes), total + len(r["boxes"])
        short, long_ = sorted((boxes, r["boxes"]), key=len)
        matched += max((sum(iou(a, b) >= 0.5 for a, b in zip(short, perm))
                        for perm in itertools.permutations(long_, len(short))), default=0)
    prec, rec = (matched / predicted if predicted else 0.0), (matched / total if total else 0.0)
    assert (metrics["det_precision"], metrics["det_recall"]) == pytest.approx((prec, rec))
    assert metrics["det_f1"] == pytest.approx(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    t7 = {r["method"]: r for r in pq.read_table(copy / "results/tables/drseg_table7.parquet").to_pylist()}
    assert t7["ours: main"]["synthetic det P@0.5"] == pytest.approx(100 * prec)
    assert t7["Dr. Seg (paper)"]["COCO val F1"] == 66.8
    if not dets:   # COCOeval's loadRes refuses an empty list; the evaluation scores 0
        assert metrics["coco_ap"] == metrics["coco_ap50"] == 0.0
        return
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [metrics[k] for k in ("coco_ap", "coco_ap50", "coco_ap75")] == pytest.approx(list(ev.stats[:3]))


def test_selection_on_an_evaluated_benchmark_is_refused(copy, tmp_path):
    out = smk(copy, "-n", "drseg_all", config=write(tmp_path, "drseg: {selection: {data: synthetic_test}}\n"))
    assert out.returncode != 0
    assert "drseg.selection.data" in out.stdout + out.stderr and "evaluated benchmark" in out.stdout + out.stderr


def test_bad_record_under_each_policy(copy, tmp_path):
    """A training record whose box has no area: `fail` stops the import naming the record,
    `drop_and_report` imports the rest and reports it."""
    from reproseg.drseg.visionreasoner import synthetic

    rows = synthetic.records("train", 3, 0, "bad", (96, 72), 3, 56)
    rows[1]["solution"] = json.dumps([{"bbox_2d": [10, 10, 10, 20], "point_2d": [10, 15]}])
    data = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=synthetic.SCHEMAS["train"]), data)
    for policy in ("fail", "drop_and_report"):
        cfg = write(tmp_path, f"drseg: {{sources: {{bad: {{task: train, path: {data}, split: train, "
                              f"on_invalid: {policy}, max_image_pixels: 1000000}}}}, train_data: bad}}\n")
        out = smk(copy, "results/drseg/data/bad/table.parquet", config=cfg)
        report = copy / "results/drseg/logs/drseg_import_source/bad.validation_report.json"
        problems = json.loads(report.read_text())["problems"]
        assert [(p["record"], p["class"], p["field"]) for p in problems] == [(1, "degenerate_box", "solution")]
        if policy == "fail":
            assert out.returncode != 0 and not (copy / "results/drseg/data/bad/table.parquet").exists()
        else:
            assert out.returncode == 0, out.stderr[-3000:]
            assert pq.read_table(copy / "results/drseg/data/bad/table.parquet").num_rows == 2


def test_bad_detection_row_under_each_policy(copy, tmp_path):
    """A COCO-format detection row with a box leaving its image and one with a non-integer
    cat_id: `fail` stops the import naming both, `drop_and_report` imports the rest."""
    from reproseg.drseg.visionreasoner import synthetic

    rows = synthetic.records("detection", 2, 0, "bad_det", (96, 72), 3, 56)
    rows[1]["bbox"] = [[10.0, 10.0, 97.0, 20.0]]
    rows[2]["cat_id"] = None
    data = tmp_path / "bad_det.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=synthetic.SCHEMAS["detection"]), data)
    table = copy / "results/drseg/data/bad_det/table.parquet"
    for policy in ("fail", "drop_and_report"):
        cfg = write(tmp_path, f"drseg: {{sources: {{bad_det: {{task: detection, path: {data}, split: test, "
                              f"on_invalid: {policy}, max_image_pixels: 1000000}}}}}}\n")
        out = smk(copy, str(table.relative_to(copy)), config=cfg)
        report = copy / "results/drseg/logs/drseg_import_source/bad_det.validation_report.json"
        problems = json.loads(report.read_text())["problems"]
        assert [(p["record"], p["class"], p["field"]) for p in problems] == [
            (1, "box_outside_image", "bbox"), (2, "bad_category", "cat_id")]
        if policy == "fail":
            assert out.returncode != 0 and not table.exists()
        else:
            assert out.returncode == 0, out.stderr[-3000:]
            assert pq.read_table(table).num_rows == len(rows) - 2
            report_md = (copy / "results/drseg/data/bad_det/report.md").read_text()
            assert "box_outside_image" in report_md and "bad_category" in report_md
