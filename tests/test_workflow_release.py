"""FineRS-4k as released through the workflow: separate train and test JSON files in the
authors' layout (no ids), the test file as the test split, val drawn from train only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2"]

pytestmark = pytest.mark.workflow


def record(image, k):
    return {"image_path": image, "Q": f"What colour is object {k}?", "A": "red", "Q-type": "reasoning",
            "attribute": "colors", "points": [[1 + k, 1], [12 + k, 1], [12 + k, 9], [1 + k, 9]],
            "area_percent": 0.3}


def release(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.new("RGB", (64, 48)).save(images / f"{i:03d}.png")
    # Train: images 000..009, two questions each; test: images 010, 011, two each.
    train = [record(f"{i:03d}.png", k) for i in range(10) for k in range(2)]
    test = [record(f"{i:03d}.png", k) for i in (10, 11) for k in range(2)]
    for name, recs in (("train_v5", train), ("test_v5", test)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"annotations": recs}))
    return images


def smk(workdir, config, *args):
    (workdir / "release.yaml").write_text(config)
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), "data_all", *args, "--configfile",
                           str(workdir / "release.yaml")], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def config(tmp_path):
    return (f"data:\n  source: images\n  images_dir: {tmp_path / 'images'}\n"
            f"  annotations_json: {{train: {tmp_path / 'train_v5.json'}, test: {tmp_path / 'test_v5.json'}}}\n"
            "  splits: {group_by: image, proportions: {train: 3, val: 2, test: 100}}\n")


def test_release_files_make_the_splits(tmp_path):
    release(tmp_path)
    out = smk(tmp_path, config(tmp_path))
    assert out.returncode == 0, out.stderr[-4000:]
    res = tmp_path / "results"
    table = pq.read_table(res / "annotations" / "annotations.parquet")
    assert table.num_rows == 24
    assert table.column("id").to_pylist()[:2] == ["train_v5#0", "train_v5#1"]
    splits = {s: pq.read_table(res / "splits" / f"{s}.parquet") for s in ("train", "val", "test")}
    # test: the test file, whatever test's proportion; val: 2 / 5 of the train file by image.
    assert splits["test"].column("id").to_pylist() == [f"test_v5#{i}" for i in range(4)]
    assert set(splits["val"].column("release_split").to_pylist()) == {"train"}
    assert splits["val"].num_rows == 8 and splits["train"].num_rows == 12
    images = [set(t.column("image_path").to_pylist()) for t in splits.values()]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])


def test_release_files_and_an_official_split_file_stop_the_parse(tmp_path):
    release(tmp_path)
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    cfg = config(tmp_path).replace("splits: {", f"splits: {{official: {tmp_path / 'split.json'}, ")
    out = smk(tmp_path, cfg, "-n")
    assert out.returncode != 0
    assert "'data.splits.official' and 'data.annotations_json' ({train, test}) both define" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()
