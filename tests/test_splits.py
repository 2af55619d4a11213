"""Splits: deterministic, grouped (no leakage), proportioned, stratified; statistics."""
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reproseg.data.splits import SplitError, assign_groups, make_splits, splits_stage, statistics

PAPER = {"train": 8956, "val": 749, "test": 2427}


def table(n_videos=40, per_video=6):
    rows = []
    for v in range(n_videos):
        for k in range(per_video):
            rows.append({"id": f"{v}-{k}", "video": f"video_{v:03d}", "image_path": f"video_{v:03d}/{k:06d}.png",
                         "task": ("IS", "MVQA", "OVQA")[k % 3], "size_bucket": ("s", "xs", "xxs")[(k + v) % 3],
                         "attribute": ("colors", "shape", "position", "others")[k % 4]})
    return pa.Table.from_pylist(rows)


def test_deterministic_and_seed_dependent():
    t = table()
    a = make_splits(t, seed=0, proportions=PAPER, group_by="video")
    b = make_splits(t, seed=0, proportions=PAPER, group_by="video")
    c = make_splits(t, seed=1, proportions=PAPER, group_by="video")
    ids = lambda s: {k: v.column("id").to_pylist() for k, v in s.items()}
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_no_source_in_two_splits_and_nothing_lost():
    t = table()
    s = make_splits(t, seed=3, proportions=PAPER, group_by="video")
    videos = {k: set(v.column("video").to_pylist()) for k, v in s.items()}
    assert not videos["train"] & videos["val"] and not videos["train"] & videos["test"] \
        and not videos["val"] & videos["test"]
    assert sum(v.num_rows for v in s.values()) == t.num_rows


def test_proportions_follow_the_paper():
    # 40 videos x 6 samples = 240. Paper fractions: 0.738 / 0.062 / 0.200
    # -> targets 177.2 / 14.8 / 48.0 samples; groups of 6 allow +-6.
    s = make_splits(table(), seed=0, proportions=PAPER, group_by="video")
    n = {k: v.num_rows for k, v in s.items()}
    assert abs(n["train"] - 177.2) <= 6 and abs(n["val"] - 14.8) <= 6 and abs(n["test"] - 48.0) <= 6


def test_stratification_where_groups_differ():
    # 60 single-sample groups, 30 of stratum a, 30 of b, 50/50 split: each split must get
    # 15 of each (a greedy fill by size alone could put all a's first).
    groups = [f"g{i}" for i in range(60)]
    strata = ["a"] * 30 + ["b"] * 30
    out = assign_groups(groups, strata, {"train": 1, "val": 0, "test": 1}, seed=0)
    per = Counter((out[g], s) for g, s in zip(groups, strata))
    assert per == Counter({("train", "a"): 15, ("train", "b"): 15, ("test", "a"): 15, ("test", "b"): 15})


def test_official_split_file(tmp_path):
    t = table(n_videos=2, per_video=2)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["0-0", "0-1"], "val": [], "test": ["1-0", "1-1"]}))
    s = make_splits(t, seed=0, proportions=PAPER, group_by="video", official=path)
    assert s["test"].column("id").to_pylist() == ["1-0", "1-1"]
    path.write_text(json.dumps({"train": ["0-0", "1-1"], "test": ["0-1", "1-0"]}))
    with pytest.raises(SplitError, match="video:video_000.* in both"):
        make_splits(t, seed=0, proportions=PAPER, group_by="video", official=path)
    path.write_text(json.dumps({"train": ["0-0"]}))
    with pytest.raises(SplitError, match="3 annotation id"):
        make_splits(t, seed=0, proportions=PAPER, group_by="video", official=path)


def test_statistics_counts():
    t = table(n_videos=2, per_video=6)
    s = make_splits(t, seed=0, proportions={"train": 1, "val": 0, "test": 1}, group_by="video")
    stats = statistics(s).to_pylist()
    assert sum(r["samples"] for r in stats) == 12
    # video_000, k=0..5: tasks IS,MVQA,OVQA,IS,MVQA,OVQA; buckets (k+0)%3 -> s,xs,xxs,s,xs,xxs;
    # so (IS, s) has k=0 and k=3 with attributes k % 4: colors (0) and others (3).
    split0 = next(k for k, v in s.items() if "video_000" in v.column("video").to_pylist())
    got = {(r["attribute"]) for r in stats if r["split"] == split0 and r["task"] == "IS" and r["size_bucket"] == "s"}
    assert got == {"colors", "others"}


def release_table(n_train_videos=30, n_test_videos=10, per_video=4, shared=()):
    """Rows as the import writes them for the release's two files (release_split)."""
    rows = []
    for split, videos in (("train", range(n_train_videos)), ("test", range(100, 100 + n_test_videos))):
        for v in [*videos, *(shared if split == "test" else ())]:
            for k in range(per_video):
                rows.append({"id": f"{split}#{v}-{k}", "video": f"video_{v:03d}",
                             "image_path": f"video_{v:03d}/{k:06d}.png", "task": ("IS", "MVQA", "OVQA")[k % 3],
                             "size_bucket": ("s", "xs", "xxs")[(k + v) % 3], "attribute": "colors",
                             "area_percent": 0.01 * (k + 1), "release_split": split})
    return pa.Table.from_pylist(rows)


def test_release_test_file_is_the_test_split_and_val_comes_from_train():
    t = release_table()
    s = make_splits(t, seed=0, proportions=PAPER, group_by="video")
    # test: exactly the test file's 10 x 4 records, whatever the test proportion says.
    assert s["test"].column("id").to_pylist() == [f"test#{v}-{k}" for v in range(100, 110) for k in range(4)]
    assert set(s["val"].column("release_split").to_pylist()) == {"train"}
    assert set(s["train"].column("release_split").to_pylist()) == {"train"}
    # val: 749 / (8956 + 749) = 7.7 % of the train file's 120 records = 9.3, in whole videos of 4.
    assert s["val"].num_rows in (8, 12) and s["train"].num_rows == 120 - s["val"].num_rows
    videos = {k: set(v.column("video").to_pylist()) for k, v in s.items()}
    assert not videos["train"] & videos["val"]
    assert make_splits(t, seed=0, proportions=PAPER, group_by="video")["val"].column("id").to_pylist() \
        == s["val"].column("id").to_pylist()
    # No val at all when its proportion is 0.
    none = make_splits(t, seed=0, proportions={"train": 1, "val": 0, "test": 5}, group_by="video")
    assert (none["train"].num_rows, none["val"].num_rows, none["test"].num_rows) == (120, 0, 40)


def test_release_overlap_stays_out_of_val():
    # Videos 0..29 of the train file also appear in the test file (all of them): none of
    # them can go to val, so val is empty and train keeps them; test is still the test file.
    t = release_table(n_train_videos=30, n_test_videos=0, shared=range(30))
    s = make_splits(t, seed=0, proportions={"train": 1, "val": 1, "test": 1}, group_by="video")
    assert (s["train"].num_rows, s["val"].num_rows, s["test"].num_rows) == (120, 0, 120)
    # Video 3 only is shared: val (half the train file by proportion) never takes it.
    t = release_table(n_train_videos=30, n_test_videos=2, shared=[3])
    s = make_splits(t, seed=0, proportions={"train": 1, "val": 1, "test": 1}, group_by="video")
    assert "video_003" not in s["val"].column("video").to_pylist()
    assert s["val"].num_rows > 40 and s["test"].num_rows == 12


def test_release_and_an_official_split_file_conflict(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": [], "val": [], "test": []}))
    with pytest.raises(SplitError, match="use one"):
        make_splits(release_table(), seed=0, proportions=PAPER, group_by="video", official=path)


def test_release_overlap_is_named_in_the_statistics(tmp_path):
    t = release_table(n_train_videos=4, n_test_videos=1, shared=[2])
    paths = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "val", "test")}
    pq.write_table(t, tmp_path / "ann.parquet")
    splits_stage(str(tmp_path / "ann.parquet"), paths, str(tmp_path / "stats.parquet"), str(tmp_path / "stats.md"),
                 str(tmp_path / "sizes.png"), seed=0, proportions=PAPER, group_by="video")
    md = (tmp_path / "stats.md").read_text()
    assert "share 1 source(s) (by video), kept in train and out of val: video:video_002." in md
    assert pq.read_table(paths["test"]).num_rows == 8
