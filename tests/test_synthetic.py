"""Synthetic drone data: reproducible bytes, FineRS-4k format, answers true of the frames."""
import hashlib
import json
import re

import numpy as np
import pytest

from reproseg.data.annotations import import_annotations, lookup_from_manifest
from reproseg.data.masks import rle_decode
from reproseg.data.synthetic import COLORS, generate
from reproseg.data.video import extract_stage, merge_manifests_stage

ARGS = dict(n_videos=2, width=320, height=180, n_frames=8, fps=8, objects_per_video=3, qp=18, stride=4)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root / "videos", root / "ann.json", seed=7, **ARGS)
    manifests = []
    for v in ("video_000", "video_001"):
        extract_stage(str(root / "videos" / f"{v}.mp4"), str(root / "frames" / v),
                      str(root / f"{v}.parquet"), stride=4)
        manifests.append(str(root / f"{v}.parquet"))
    merge_manifests_stage(manifests, str(root / "manifest.parquet"))
    import pyarrow.parquet as pq
    table, report = import_annotations(root / "ann.json", lookup_from_manifest(pq.read_table(root / "manifest.parquet")))
    return root, table, report


def test_same_seed_same_bytes(tmp_path, dataset):
    root = dataset[0]
    generate(tmp_path / "videos", tmp_path / "ann.json", seed=7, **ARGS)
    assert digest(tmp_path / "videos") == digest(root / "videos")
    assert (tmp_path / "ann.json").read_bytes() == (root / "ann.json").read_bytes()
    generate(tmp_path / "other", tmp_path / "other.json", seed=8, **ARGS)
    assert digest(tmp_path / "other") != digest(root / "videos")


def test_format_and_coverage(dataset):
    root, table, report = dataset
    doc = json.loads((root / "ann.json").read_text())
    item = doc["annotations"][0]
    assert {"image_path", "Q", "A", "Q-type", "points", "attribute", "area_percent"} <= set(item)
    assert report.as_dict()["invalid"] == 0
    rows = table.to_pylist()
    # 2 videos x 2 annotated frames (0, 4) x 3 objects = 12 records.
    assert len(rows) == 12
    assert {r["task_type"] for r in rows} == {"referring", "option", "reasoning"}
    assert {r["attribute"] for r in rows} == {"colors", "shape", "position", "others"}
    assert {r["size_bucket"] for r in rows} == {"s", "xs", "xxs"}
    assert all(r["options"] for r in rows if r["task"] == "MVQA")


def test_answers_are_true_of_the_decoded_frames(dataset):
    """Colour answers match the mask's pixels in the extracted (lossy) frame; position
    answers match the mask's centre; IS answers say 'is found'."""
    from PIL import Image

    root, table, _ = dataset
    checked = 0
    for r in table.to_pylist():
        mask = rle_decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]})
        if r["task"] == "IS":
            assert "is found" in r["answer"]
            continue
        truth = r["answer"] if r["task"] == "OVQA" else r["options"][r["option_letters"].index(r["answer_option"])]
        if r["attribute"] == "colors":
            img = np.asarray(Image.open(root / "frames" / r["image_path"]).convert("RGB"), float)
            ys, xs = np.nonzero(mask)
            inner = [(y, x) for y, x in zip(ys, xs)
                     if mask[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].all()] or list(zip(ys, xs))
            mean = np.mean([img[y, x] for y, x in inner], axis=0)
            nearest = min(COLORS, key=lambda c: np.linalg.norm(mean - np.array(COLORS[c])))
            assert nearest == truth, r["id"]
            checked += 1
        if r["attribute"] == "position":
            cx = (r["box"][0] + r["box"][2]) / 2
            assert truth == ("left", "middle", "right")[min(int(3 * cx / r["width"]), 2)]
            checked += 1
    assert checked >= 2


def test_bucket_cycle_and_area_override(tmp_path):
    args = {**ARGS, "n_videos": 2, "objects_per_video": 3}
    generate(tmp_path / "v", tmp_path / "a.json", seed=3, buckets=["s", "s", "xs"], bucket_area={"s": 0.004}, **args)
    items = json.loads((tmp_path / "a.json").read_text())["annotations"]
    by_object = {}
    for it in items:
        by_object.setdefault(it["id"].rsplit("-", 1)[0][:9] + it["id"][-1], []).append(it["area_percent"])
    # Per video: two S objects near 0.4 % of the frame and one XS one near 0.035 %.
    areas = sorted(a for v in by_object.values() for a in v[:1])
    assert len(areas) == 6
    assert sum(0.3 < a < 0.5 for a in areas) == 4 and sum(0.025 < a < 0.045 for a in areas) == 2
    # An area outside its bucket's FineRS-4k range is refused, naming it.
    with pytest.raises(ValueError, match="bucket_area xs=0.001"):
        generate(tmp_path / "w", tmp_path / "b.json", seed=3, bucket_area={"xs": 0.001}, **args)


def test_drawn_objects_are_exactly_the_imported_masks(tmp_path, monkeypatch):
    """Before encoding, the pixels of each object's colour near it are exactly the mask
    the importer computes from the JSON's vertices (the authors' OpenCV fill)."""
    import reproseg.data.synthetic as synthetic
    from reproseg.data.annotations import ImageInfo

    drawn = {}   # video name -> its frames, as they go to the encoder
    monkeypatch.setattr(synthetic, "write_video", lambda path, frames, fps, qp: drawn.update(
        {re.search(r"video_\d{3}", path.name).group(): list(frames)}))
    generate(tmp_path / "v", tmp_path / "a.json", seed=7, **ARGS)
    lookup = {f"video_{v:03d}/{t:06d}.png": ImageInfo(320, 180, f"video_{v:03d}", t)
              for v in range(2) for t in (0, 4)}
    table, _ = import_annotations(tmp_path / "a.json", lookup.get)
    assert table.num_rows == 12
    for r in table.to_pylist():
        frame = drawn[r["video"]][r["frame_index"]]
        mask = rle_decode({"size": [180, 320], "counts": r["rle_counts"]})
        colours = {tuple(c) for c in frame[mask]}
        assert len(colours) == 1 and colours <= {tuple(c) for c in COLORS.values()}, r["id"]
        x1, y1, x2, y2 = (int(v) for v in r["box"])
        near = np.zeros_like(mask)
        near[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = True
        same = (frame == np.array(next(iter(colours)), np.uint8)).all(-1) & near
        assert (same == mask).all(), r["id"]


def test_every_object_lands_in_the_bucket_it_was_drawn_for(dataset):
    # Default cycle (s, xs, xxs) over the objects: object k of video v is bucket (3v + k) % 3.
    _, table, _ = dataset
    for r in table.to_pylist():
        v, k = int(r["video"][-3:]), int(r["id"][-1])
        assert r["size_bucket"] == ("s", "xs", "xxs")[(3 * v + k) % 3], r["id"]
        # The JSON's own area_percent, which sets the bucket, is the mask's.
        assert r["area_percent_json"] == pytest.approx(r["area_percent"], abs=1e-6)
