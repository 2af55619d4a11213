"""The data half of the DAG on the embedded default (smaller), run for real by Snakemake."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reproseg.io_atomic import sha256_path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2"]
SMALL = """
data:
  synthetic: {n_videos: 4, width: 320, height: 180, n_frames: 8}
"""
DATA_TARGET = "data_all"


def smk(workdir, *args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # --configfile takes several values, so it goes last.
    out = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args, "--configfile", str(workdir / "small.yaml")],
                         capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    (work / "small.yaml").write_text(SMALL)
    smk(work, DATA_TARGET)
    return work


pytestmark = pytest.mark.workflow


def test_outputs_and_no_leakage(run):
    res = run / "results"
    splits = {s: pq.read_table(res / "splits" / f"{s}.parquet") for s in ("train", "val", "test")}
    total = pq.read_table(res / "annotations" / "annotations.parquet").num_rows
    # 4 videos x 2 annotated frames (0, 4) x 3 objects.
    assert total == 24 and sum(t.num_rows for t in splits.values()) == 24
    videos = [set(t.column("video").to_pylist()) for t in splits.values()]
    assert not (videos[0] & videos[1] or videos[0] & videos[2] or videos[1] & videos[2])
    manifest = pq.read_table(res / "frames" / "manifest.parquet").to_pylist()
    assert [(m["video"], m["frame_index"]) for m in manifest] == [
        (f"video_{v:03d}", i) for v in range(4) for i in (0, 4)]
    for m in manifest:
        assert (res / "frames" / m["video"] / m["file"]).is_file()
    assert "| train |" in (res / "splits" / "stats.md").read_text()
    assert (res / "splits" / "mask_sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_every_job_wrote_a_provenance_record_that_matches(run):
    records = sorted((run / "results").rglob("*.prov.json"))
    rules = {json.loads(p.read_text())["rule"] for p in records}
    assert rules == {"synthesize_dataset", "extract_frames", "merge_frame_manifests", "import_annotations",
                     "make_splits"}
    for path in records:
        rec = json.loads(path.read_text())
        for entries in rec["outputs"].values():
            for e in entries:
                assert e["sha256"] == sha256_path(run / e["path"]), (path, e["path"])
        for entries in rec["inputs"].values():
            for e in entries:
                assert e["sha256"] == sha256_path(run / e["path"])
        assert rec["code"]["fingerprint"] and rec["code"]["modules"]
        assert rec["environment"]["packages"]["snakemake"] and rec["environment"]["host"]
        assert rec["started"] <= rec["ended"]
        assert "cfg" in rec["params"]
    split = json.loads((run / "results/splits/stats.parquet.prov.json").read_text())
    assert split["seed"] == {"data.splits.seed": 0}
    assert split["params"]["cfg"]["data"]["splits"]["group_by"] == "video"


def test_second_run_is_a_no_op(run):
    out = smk(run, DATA_TARGET, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_config_change_reruns_only_the_stage_that_reads_it(run):
    out = smk(run, DATA_TARGET, "-n", "--config", "unused=1", check=False)
    assert out.returncode != 0 and "'unused' was unexpected" in out.stdout + out.stderr
    (run / "seed.yaml").write_text(SMALL + "  splits: {seed: 5}\n")
    out = subprocess.run([*SNAKEMAKE, "-d", str(run), DATA_TARGET, "-n", "--quiet", "rules",
                          "--configfile", str(run / "seed.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "make_splits" in out.stdout and "extract_frames" not in out.stdout \
        and "import_annotations" not in out.stdout


def test_invalid_config_stops_before_any_job(tmp_path):
    (tmp_path / "small.yaml").write_text("data:\n  frames: {stride: 0}\n")
    out = smk(tmp_path, DATA_TARGET, check=False)
    assert out.returncode != 0
    assert "config key 'data.frames.stride'" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_invalid_annotation_fails_the_job_and_keeps_the_report(tmp_path):
    """A user's FineRS-4k JSON with a bad record: the rule fails, names the record, and
    the report survives in the log folder; no annotation table is left behind."""
    images = tmp_path / "images" / "scene"
    images.mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (64, 48)).save(images / "a.png")
    ann = {"annotations": [
        {"id": "good", "image_path": "scene/a.png", "Q": "Segment the car.", "A": "The car is found.",
         "Q-type": "referring", "attribute": "colors", "points": [[1, 1], [10, 1], [10, 10]]},
        {"id": "broken", "image_path": "scene/a.png", "Q": "Which?", "A": "Z", "Q-type": "option",
         "options": ["A. red", "B. blue"], "attribute": "colors", "points": [[1, 1], [10, 1], [10, 10]]},
    ]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "small.yaml").write_text(
        f"data:\n  source: images\n  images_dir: {tmp_path / 'images'}\n  annotations_json: {tmp_path / 'ann.json'}\n"
        "  splits: {group_by: image}\n")
    out = smk(tmp_path, DATA_TARGET, check=False)
    assert out.returncode != 0
    log = (tmp_path / "results/logs/import_annotations.log").read_text()
    assert "broken" in log and "bad_options" in log
    report = json.loads((tmp_path / "results/logs/import_annotations.validation_report.json").read_text())
    assert [(p["id"], p["class"]) for p in report["problems"]] == [("broken", "bad_options")]
    assert not (tmp_path / "results/annotations/annotations.parquet").exists()
    # The policy switch keeps going and still reports.
    with open(tmp_path / "small.yaml", "a") as f:
        f.write("  annotations: {on_invalid: drop_and_report}\n")
    smk(tmp_path, DATA_TARGET)
    assert pq.read_table(tmp_path / "results/annotations/annotations.parquet").column("id").to_pylist() == ["good"]
    assert json.loads((tmp_path / "results/annotations/validation_report.json").read_text())["invalid"] == 1


def test_lint_is_clean():
    out = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


def test_parsing_never_imports_torch(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                          "-d", str(tmp_path), "-n", "--cores", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "import time:" in line}
    assert "snakemake" in imported and "reproseg" in imported
    # numpy and pyarrow come with Snakemake itself; the heavy ML stack must not.
    assert not imported & {"torch", "transformers", "trl", "peft", "deepspeed", "sam2", "av", "scipy"}


def test_audit_walks_back_to_the_raw_inputs(run):
    from reproseg.audit import RecordIndex, chain

    records = chain(RecordIndex.load(run / "results", run), "results/splits/val.parquet")
    assert [r["rule"] for r in records][:2] == ["make_splits", "import_annotations"]
    assert {r["rule"] for r in records} == {"make_splits", "import_annotations", "synthesize_dataset",
                                            "merge_frame_manifests", "extract_frames"}
    assert sum(r["rule"] == "extract_frames" for r in records) == 4


def test_verify_names_hand_edits_and_missing_files(run, tmp_path):
    import shutil

    from reproseg.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(run / "results", copy / "results")   # new mtimes, same bytes
    assert main(["verify", "--results", str(copy / "results"), "--workdir", str(copy)]) == 0
    (copy / "results/splits/stats.md").write_text("edited by hand\n")
    (copy / "results/frames/video_001/000004.png").unlink()
    from reproseg.audit import RecordIndex, verify

    found = {(f.path, f.problem) for f in verify(RecordIndex.load(copy / "results", copy))}
    assert ("results/splits/stats.md", "changed") in found
    assert ("results/frames/video_001", "changed") in found          # a frame is gone from the folder
    assert main(["verify", "--results", str(copy / "results"), "--workdir", str(copy)]) == 1


def test_ro_crate_export(run):
    from reproseg.cli import main

    assert main(["crate", "--results", str(run / "results"), "--workdir", str(run)]) == 0
    graph = json.loads((run / "ro-crate-metadata.json").read_text())["@graph"]
    by_id = {e["@id"]: e for e in graph}
    root = by_id["./"]
    assert root["mainEntity"] == {"@id": "Snakefile"}
    assert {"@id": "https://w3id.org/ro/wfrun/workflow/0.5"} in root["conformsTo"]
    actions = [e for e in graph if e["@type"] == "CreateAction"]
    records = sorted((run / "results").rglob("*.prov.json"))
    assert len(actions) == len(records) == 8   # synthesize, 4 x extract, merge, import, splits
    split = next(a for a in actions if a["name"] == "make_splits")
    assert {"@id": "results/splits/val.parquet"} in split["result"]
    assert split["object"] == [{"@id": "results/annotations/annotations.parquet"}]
    val = by_id["results/splits/val.parquet"]
    assert val["sha256"] == sha256_path(run / "results/splits/val.parquet")
    assert json.loads(split["description"])["params"]["cfg"]["data"]["splits"]["seed"] == 0
