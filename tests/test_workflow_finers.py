"""The whole default DAG but Dr. Seg's branch (small; tests/test_drseg_workflow.py runs
that), then precise re-runs: after each kind of change the exact set of planned jobs is
checked. The workflow runs from a copy of the repository, so library edits here do not
touch the checkout."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
data:
  synthetic: {n_videos: 4, width: 320, height: 180, n_frames: 8}
  splits: {proportions: {train: 2, val: 1, test: 1}}
finers:
  warmup: {max_steps: 4, sam2: {max_steps: 2}}
  lpr: {grpo: {max_steps: 4, per_device_batch_size: 8, max_completion_length: 24, candidate_every: 2}}
  gse: {grpo: {max_steps: 4, per_device_batch_size: 8, max_completion_length: 24, candidate_every: 2}}
  selection: {max_new_tokens: 24}
  inference: {shards: 2}   # the default's is 1; two exercise the sharding and the merge
seganswer:
  sources:
    shapes: {format: shapes, counts: {train: 16, val: 4, test: 4}, size: [224, 126], seed: 0, tasks: [MVQA]}
  stage1:
    projector: {learning_rate: 3.0e-3, epochs: 1, batch_size: 4, max_steps: 2}
    lora: {learning_rate: 1.0e-3, lora_learning_rate: 1.0e-4, epochs: 1, batch_size: 4, max_steps: 2, lora_r: 8,
           lora_alpha: 16}
  stage2: {max_steps: 2}
  stage3: {grpo: {max_steps: 2, candidate_every: 1}}
# Dr. Seg's branch has its own test (tests/test_drseg_workflow.py).
drseg: {run: false}
"""
pytestmark = pytest.mark.workflow


def planned(copy, *extra, config=None):
    """{rule: count} of a dry run."""
    cfg = [str(copy / "small.yaml")] + ([str(config)] if config else [])
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(copy),
                          "--cores", "2", "-n", *extra, "--configfile", *cfg],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
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
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(dst / "Snakefile"), "-d", str(dst),
                          "--cores", "2", "--configfile", str(dst / "small.yaml")],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return dst


REGIONS = {"retrospective_regions": 1, "merge_region_shards": 1}
# The two FineRS tables and the experiment table change, so do their HTML renderings.
TABLES = {"evaluate_finers": 2, "finers_experiment_table": 1, "markdown_html": 3, "all": 1}
DOWNSTREAM_OF_GSE = {"train_gse": 1, "select_gse": 1, "infer_finers": 4, **TABLES}
LPR = {"train_lpr": 1, "select_lpr": 1}


def test_default_dag_writes_the_finers_tables(copy):
    import json

    res = copy / "results"
    for split in ("val", "test"):
        m = json.loads((res / f"finers/metrics/main/{split}.json").read_text())
        # One video (2 frames x 3 objects) per split; every sample has a status.
        assert m["samples"] == sum(m["status"].values()) == 6
        assert set(m["segmentation"]) == {"s", "xs", "xxs", "all"}
        md = (res / f"tables/finers_main_{split}.md").read_text()
        assert "FineRS (paper" in md and "Ours (reproduced)" in md and "Ours, untrained" in md
        # The untrained reference went through the same inference, from the warm-up.
        u = json.loads((res / f"finers/untrained/metrics/main/{split}.json").read_text())
        assert u["samples"] == 6
    assert (res / "finers/warmup/main/checkpoint/model.safetensors").is_file()
    assert (res / "finers/warmup/main/sam2/model.pt").is_file()
    assert (res / "finers/lpr/main/checkpoint/model.safetensors").is_file()
    assert (res / "finers/gse/main/checkpoint/model.safetensors").is_file()
    assert (res / "finers/lpr/main/curves.png").read_bytes()[:4] == b"\x89PNG"
    log = __import__("pyarrow.parquet", fromlist=["x"]).read_table(res / "finers/lpr/main/train_log.parquet")
    assert log.num_rows == 4 and {"reward_mean", "reward_std", "kl", "entropy", "frac_zero_std",
                                  "completion_length_mean", "reward_lpr/box_iou_mean"} <= set(log.column_names)
    assert "main" in (res / "tables/finers_experiments.md").read_text()


def test_seganswer_checkpoints_reload_and_tables(copy):
    import json

    from reproseg.seganswer.model import SegAnswerModel

    res = copy / "results/seganswer"
    for ckpt in ("stage1_projector/checkpoint", "stage1/checkpoint", "stage2/checkpoint", "stage3/checkpoint",
                 "stage3/candidates/step-000001", "stage3_select/checkpoint"):
        model = SegAnswerModel.from_pretrained(res / ckpt)
        assert model.processor.tokenizer.convert_tokens_to_ids("<|seg|>") is not None
    imported = json.loads((res / "data/shapes/report.json").read_text())
    assert imported["invalid"] == 0 and imported["total"] == 24  # 16 train + 4 val + 4 test pictures
    selection = json.loads((res / "stage3_select/selection.json").read_text())
    assert [c["step"] for c in selection["candidates"]] == [1, 2] and selection["metric"] == "accuracy"
    # Scored on the val pictures: 4 questions, so every accuracy is a multiple of 1/4.
    assert all(c["scores"]["accuracy"] * 4 == int(c["scores"]["accuracy"] * 4) for c in selection["candidates"])
    for ckpt in ("base", "stage1", "stage2", "stage3"):
        m = json.loads((res / f"metrics/{ckpt}.json").read_text())
        # One referring row and one multiple-choice question per test picture.
        assert m["checkpoint"] == ckpt
        assert m["referring"]["shapes test"]["n"] == 4 and m["questions"]["shapes test"]["n"] == 4
    for table in ("stage1", "stage3"):
        md = (copy / f"results/tables/seganswer_{table}.md").read_text()
        assert "| model | shapes test gIoU | shapes test cIoU |" in md and "| ours: base (untrained) |" in md
        assert "| SegAnswer (paper, cIoU) | - | - |" in md
    assert "| ours: stage 3 |" in (copy / "results/tables/seganswer_stage3.md").read_text()
    log = __import__("pyarrow.parquet", fromlist=["x"]).read_table(res / "stage3/train_log.seganswer.parquet")
    assert {"seg_calls_mean", "unanswered", "dropped_groups", "refill_rounds"} <= set(log.column_names)
    assert (res / "stage3/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_seganswer_eval_setting_reruns_only_its_evaluations(copy, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seganswer: {eval: {max_turns: 2}}\n")
    assert planned(copy, config=cfg) == {"evaluate_seganswer": 4, "seganswer_table": 2, "markdown_html": 2,
                                         "all": 1}
    cfg.write_text("seganswer: {stage2: {max_steps: 3}}\n")
    assert planned(copy, config=cfg) == {"seganswer_stage2_sft": 1, "seganswer_stage2_select": 1, "seganswer_stage3_dapo": 1,
                                         "seganswer_stage3_select": 1, "evaluate_seganswer": 2, "seganswer_table": 1, "markdown_html": 1,
                                         "all": 1}


def test_seganswer_selection_reruns_only_the_choice_and_its_evaluation(copy, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seganswer: {selection: {stage3: {choose: last}}}\n")
    assert planned(copy, config=cfg) == {"seganswer_stage3_select": 1, "evaluate_seganswer": 1,
                                         "seganswer_table": 1, "markdown_html": 1, "all": 1}
    cfg.write_text("seganswer: {selection: {data: [shapes/test]}}\n")
    with pytest.raises(AssertionError, match="val data only"):
        planned(copy, config=cfg)


def test_audit_a_seganswer_number(copy, capsys):
    from reproseg.cli import main

    table = copy / "results/tables/seganswer_stage3.parquet"
    assert main(["audit", str(table), "--row", "shapes test cIoU", "--column", "n",
                 "--results", str(copy / "results"), "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "[shapes test cIoU, n] = 4" in out   # the test pictures
    assert "selection best by accuracy (max) on val" in out
    for rule in ("seganswer_table", "evaluate_seganswer", "seganswer_stage3_select", "seganswer_stage3_dapo",
                 "seganswer_stage2_sft",
                 "seganswer_stage1_merge", "seganswer_stage1_lora", "seganswer_stage1_projector",
                 "seganswer_import_source"):
        assert f"== {rule}" in out


def test_no_op(copy):
    assert planned(copy) == {}


def test_touching_an_input_reruns_nothing(copy):
    os.utime(copy / "results/synthetic/annotations.json")
    os.utime(copy / "results/splits/train.parquet")
    assert planned(copy) == {}


def test_copying_the_results_elsewhere_reruns_nothing(copy, tmp_path):
    # `cp -r` without -p: every file and folder gets a new mtime, in copy order.
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-r", str(copy), str(moved)], check=True)
    assert planned(moved) == {}


def test_new_ablation_adds_only_its_own_jobs(copy, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("experiments: {run: [no-size-reward]}\n")
    # A GSE-only ablation reuses the data, LPR and the regions; the experiment table
    # gains a row so it is rebuilt.
    assert planned(copy, config=cfg) == DOWNSTREAM_OF_GSE
    cfg.write_text("experiments: {run: [no-retrospective]}\n")
    assert planned(copy, config=cfg) == {**REGIONS, **DOWNSTREAM_OF_GSE}
    cfg.write_text("experiments: {run: [no-random-region]}\n")
    assert planned(copy, config=cfg) == {**LPR, **REGIONS, **DOWNSTREAM_OF_GSE}


def test_config_value_of_one_stage(copy, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finers: {gse: {grpo: {max_steps: 2}}}\n")
    assert planned(copy, config=cfg) == DOWNSTREAM_OF_GSE
    cfg.write_text("finers: {inference: {max_new_tokens: 32}}\n")
    # The untrained reference goes through the same inference, so it re-runs too.
    assert planned(copy, config=cfg) == {"infer_finers": 4, "infer_finers_untrained": 4,
                                         "evaluate_finers_untrained": 2, **TABLES}
    cfg.write_text("finers: {warmup: {max_steps: 3}}\n")
    # Every policy starts from the warm-up: all FineRS training and inference re-runs,
    # SAM 2.1's warm-up (same keys) too; the data and SegAnswer do not.
    assert planned(copy, config=cfg) == {"warmup_policy": 1, "warmup_sam2": 1, **LPR, **REGIONS,
                                         "infer_finers_untrained": 4, "evaluate_finers_untrained": 2,
                                         **DOWNSTREAM_OF_GSE}


def test_selection_change_reruns_only_the_selection_and_what_follows(copy, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finers: {selection: {gse: {choose: last}}}\n")
    assert planned(copy, config=cfg) == {"select_gse": 1, "infer_finers": 4, **TABLES}
    cfg.write_text("finers: {selection: {lpr: {choose: best, metric: total}}}\n")
    assert planned(copy, config=cfg) == {"select_lpr": 1, **REGIONS, **DOWNSTREAM_OF_GSE}
    cfg.write_text("finers: {selection: {lpr: {choose: best, metric: gIoU}}}\n")
    with pytest.raises(AssertionError, match="finers.selection.lpr.metric"):
        planned(copy, config=cfg)


def test_selection_reads_val_only_and_records_every_candidate(copy):
    import json

    from reproseg.audit import RecordIndex, chain

    idx = RecordIndex.load(copy / "results", copy)
    for stage in ("lpr", "gse"):
        sel = copy / f"results/finers/{stage}_select/main/selection.json"
        selection = json.loads(sel.read_text())
        assert [c["step"] for c in selection["candidates"]] == [2, 4]
        assert selection["chosen"]["step"] in (2, 4) and selection["split"] == "val"
        record = json.loads((copy / f"results/finers/{stage}_select/main/selection.json.prov.json").read_text())
        assert record["outcome"]["selection"] == selection
        # Nothing upstream of the choice, back to the raw data, read the test split.
        inputs = [e["path"] for rec in chain(idx, str(sel)) for entries in rec["inputs"].values() for e in entries]
        assert any(p.endswith("splits/val.parquet") for p in inputs)
        assert not any(p.endswith("splits/test.parquet") for p in inputs), stage
    # The test table's policies are the chosen ones.
    infer = json.loads(next((copy / "results/finers/predictions/main/test").glob("shard-*.parquet.prov.json"))
                       .read_text())
    assert infer["params"]["lpr"].endswith("finers/lpr_select/main/checkpoint")
    assert infer["params"]["gse"].endswith("finers/gse_select/main/checkpoint")


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return text


def test_library_module_of_one_stage(copy):
    path = copy / "src/reproseg/finers/retrospective.py"
    before = edit(path, "return best if scores[best] > 0", "return best if scores[best] >= 0")
    try:
        assert planned(copy) == {**REGIONS, **DOWNSTREAM_OF_GSE}
    finally:
        path.write_text(before)


SEG_STAGE3 = {"seganswer_stage3_dapo": 1, "seganswer_stage3_select": 1, "evaluate_seganswer": 1,
              "seganswer_table": 1, "markdown_html": 1, "all": 1}


@pytest.mark.parametrize("path, old, new, expected", [
    # An LPR term: LPR, its selection, the regions it picks and everything of GSE after them.
    ("src/reproseg/finers/lpr_rewards.py", "< profile.box_l1_max", "<= profile.box_l1_max",
     {**LPR, **REGIONS, **DOWNSTREAM_OF_GSE}),
    # A GSE term (the size reward's half credit): GSE and what follows, not LPR or the regions.
    ("src/reproseg/finers/gse_rewards.py", "else 0.5 if any(ok)", "else 0.6 if any(ok)", DOWNSTREAM_OF_GSE),
    # A Dr. Seg term: no stage of the main run uses Dr. Seg's rewards.
    ("src/reproseg/drseg/rewards.py", "return float(any(b.strip() for b in blocks))",
     "return float(any(b.strip() for b in blocks[:8]))", {}),
    # A SegAnswer stage-3 term: stage 3, its selection, its evaluation and table.
    ("src/reproseg/seganswer/rewards.py", "if not answered or not turns:", "if not (answered and turns):",
     SEG_STAGE3),
])
def test_reward_term_edit_reruns_exactly_its_stage(copy, path, old, new, expected):
    before = edit(copy / path, old, new)
    try:
        assert planned(copy) == expected
    finally:
        (copy / path).write_text(before)


def test_drseg_term_edit_reruns_the_stages_that_use_it(copy, tmp_path):
    """Dr. Seg's option is loaded by name, so its code joins a stage's code param only when
    the stage's config turns it on: an edit of a Dr. Seg term re-runs lpr-drseg's LPR."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("experiments: {run: [lpr-drseg]}\n")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(copy),
                          "--cores", "2", "--configfile", str(copy / "small.yaml"), str(cfg), "--",
                          "results/finers/lpr/lpr-drseg/train_log.parquet"],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built = planned(copy, config=cfg)
    assert "train_lpr" not in built and built["select_lpr"] == 1   # lpr-drseg's LPR is there
    path = copy / "src/reproseg/drseg/rewards.py"
    before = edit(path, "return float(any(b.strip() for b in blocks))",
                  "return float(any(b.strip() for b in blocks[:8]))")
    try:
        assert planned(copy, config=cfg) == {**built, "train_lpr": 1}
        assert planned(copy) == {}   # the main run has no Dr. Seg stage
    finally:
        path.write_text(before)


def test_comment_or_docstring_edit_reruns_nothing(copy):
    path = copy / "src/reproseg/finers/reward_terms.py"
    before = path.read_text()
    path.write_text('"""Edited docstring."""\n# a new comment\n' + before.split('"""', 2)[2])
    try:
        assert planned(copy) == {}
    finally:
        path.write_text(before)


def test_shared_library_module_reruns_every_stage_using_it(copy):
    path = copy / "src/reproseg/io_atomic.py"
    before = edit(path, "_CHUNK = 1 << 20", "_CHUNK = 1 << 21")
    try:
        jobs = planned(copy)
        assert {"synthesize_dataset", "extract_frames", "import_annotations", "make_splits", "build_tiny_models",
                "train_lpr", "retrospective_regions", "train_gse", "infer_finers", "evaluate_finers"} <= set(jobs)
    finally:
        path.write_text(before)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--dump-dom"]


def chromium_dom(path, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is missing: run `make test`, which installs it (Debian package chromium)")
    profile = tmp_path / f"chromium-{path.stem}"
    out = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_html_report_renders_tables_and_images(copy, tmp_path):
    import base64

    report = tmp_path / "report.html"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(copy),
                          "--report", str(report), "--configfile", str(copy / "small.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and report.is_file(), out.stderr[-3000:]
    # The report app runs in Chromium and lists its result categories.
    dom = chromium_dom(report, tmp_path)
    for category in ("tables", "training curves", "splits"):
        assert category in dom
    # Each embedded table and image renders on its own in Chromium.
    text = report.read_text()
    tables = re.findall(r"data:text/html;[^,\"]*base64,([A-Za-z0-9+/=]+)", text)
    images = re.findall(r"data:image/png;[^,\"]*base64,([A-Za-z0-9+/=]+)", text)
    assert len(tables) >= 5 and len(images) >= 4
    finers = next(base64.b64decode(t).decode() for t in tables if "Ours (reproduced)" in base64.b64decode(t).decode())
    page = tmp_path / "table.html"
    page.write_text(finers)
    dom = chromium_dom(page, tmp_path)
    assert "<td>Ours (reproduced)</td>" in dom and "<td>FineRS (paper, Table 2)</td>" in dom
    wrapper = tmp_path / "images.html"
    wrapper.write_text("<html><body>" + "".join(
        f"<img src='data:image/png;base64,{b}' onload=\"document.body.dataset.ok=(+(document.body.dataset.ok||0)+"
        f"(this.naturalWidth>100?1:0))\">" for b in images) + "</body></html>")
    dom = chromium_dom(wrapper, tmp_path)
    assert f'data-ok="{len(images)}"' in dom


def test_audit_a_number_in_a_metrics_table(copy, capsys):
    from reproseg.cli import main

    table = copy / "results/tables/finers_main_test.parquet"
    assert main(["audit", str(table), "--row", "gIoU", "--column", "IoU/All paper",
                 "--results", str(copy / "results"), "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    # The paper's Table 2 gIoU (All) is 55.1; the chain reaches the raw inputs.
    assert "[gIoU, IoU/All paper] = 55.1" in out
    assert "selection best by iou (max) on val" in out and "selection best by covered (max) on val" in out
    for rule in ("evaluate_finers", "infer_finers", "select_gse", "train_gse", "select_lpr", "train_lpr",
                 "retrospective_regions", "merge_region_shards",
                 "build_tiny_models", "make_splits", "synthesize_dataset"):
        assert f"== {rule}" in out
