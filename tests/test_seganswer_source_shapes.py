"""SegAnswer's own synthetic source: one large object per picture, exact masks, colour questions."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.data.masks import rle_decode
from reproseg.data.synthetic import COLORS
from reproseg.seganswer.sources import image_root, import_source, import_stage
from reproseg.seganswer.sources.rows import select

SPEC = {"format": "shapes", "counts": {"train": 5, "test": 3}, "size": [96, 64], "seed": 0}


def test_pictures_masks_and_questions_agree(tmp_path):
    referring, questions, report = import_source("shapes", SPEC, images_out=tmp_path)
    ref, qa = referring.to_pylist(), questions.to_pylist()
    assert report.total == 8 and not report.problems
    assert [r["id"] for r in ref] == [f"shapes/test/{i:05d}" for i in range(3)] + [f"shapes/train/{i:05d}"
                                                                                   for i in range(5)]
    for r in ref:
        img = np.asarray(Image.open(tmp_path / r["image_path"]))
        mask = rle_decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]})
        color, shape = r["phrase"].split()
        assert img.shape == (64, 96, 3) and shape == r["category"]
        # every mask pixel is painted in the object's colour, and the object is large (5-15 % by default)
        assert (img[mask] == COLORS[color]).all()
        assert 0.04 < mask.mean() < 0.16
        mc, open_ = [q for q in qa if q["image_path"] == r["image_path"]]
        assert mc["question"] == open_["question"] == f"What colour is the {shape}?"
        # options in the configured order: the letter is the colour's place in it
        assert mc["options"] == ["red", "blue", "yellow", "white"] and mc["task"] == "MVQA"
        assert mc["answer"] == "ABCD"[mc["options"].index(color)]
        assert (open_["answer"], open_["options"], open_["task"]) == (color, None, "OVQA")


def test_same_spec_same_bytes_and_splits_independent(tmp_path):
    import_source("shapes", SPEC, images_out=tmp_path / "a")
    import_source("shapes", SPEC, images_out=tmp_path / "b")
    import_source("shapes", {**SPEC, "counts": {"train": 5}}, images_out=tmp_path / "c")
    for i in range(5):
        a = (tmp_path / f"a/train/{i:05d}.png").read_bytes()
        assert a == (tmp_path / f"b/train/{i:05d}.png").read_bytes() == (tmp_path / f"c/train/{i:05d}.png").read_bytes()
    import_source("shapes", {**SPEC, "seed": 1}, images_out=tmp_path / "d")
    assert (tmp_path / "d/train/00000.png").read_bytes() != (tmp_path / "a/train/00000.png").read_bytes()


def test_tasks_colors_and_area_options(tmp_path):
    spec = {**SPEC, "tasks": ["MVQA"], "colors": ["white", "red"], "area": [0.2, 0.2]}
    referring, questions, _ = import_source("shapes", spec, images_out=tmp_path)
    qa = questions.to_pylist()
    assert len(qa) == 8 and {q["task"] for q in qa} == {"MVQA"}
    assert all(q["options"] == ["white", "red"] for q in qa)
    for r in referring.to_pylist():
        mask = rle_decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]})
        assert mask.mean() == pytest.approx(0.2, abs=0.02)  # the polygon's area, rasterised


@pytest.mark.parametrize("bad, match", [({"colors": ["red", "mauve"]}, "colors"), ({"colors": ["red"]}, "colors"),
                                        ({"area": [0.3, 0.1]}, "area"), ({"tasks": ["IS"]}, "tasks"),
                                        ({"counts": {}}, "counts"), ({"area": [0.5, 0.9]}, "does not fit")])
def test_bad_specs_are_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        import_source("shapes", {**SPEC, **bad}, images_out=tmp_path)


def test_the_import_rule_writes_its_pictures_where_the_stages_read_them(tmp_path):
    out = tmp_path / "data"
    import_stage("shapes", SPEC, out / "referring.parquet", out / "questions.parquet", out / "images",
                 out / "report.json", out / "report.md", out / "log.json")
    root = image_root(SPEC, out / "images", finers_images="frames")
    assert root == str(out / "images")
    rows = select([str(out / "referring.parquet")], [root], ["shapes/test"], "referring")
    size = tuple(SPEC["size"])  # the pictures' own size: nothing resizes them
    assert len(rows) == 3 and rows[0]["image"].size == size and rows[0]["mask"].shape == size[::-1]
    assert pq.read_table(out / "questions.parquet").num_rows == 16
