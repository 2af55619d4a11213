"""FineRS-4k import: each validation class, both policies, and the table's values."""
import json
import struct
import zlib

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.data.annotations import (AnnotationError, ImageInfo, answer_letter, import_annotations,
                                       import_stage, lookup_from_directory, parse_options)
from reproseg.data.masks import rle_decode

IMAGES = {"v/000000.png": ImageInfo(100, 100, "v", 0), "v/000004.png": ImageInfo(100, 100, "v", 4)}


def rec(**over):
    """A record as the FineRS-4k release writes it: no id."""
    base = {"image_path": "v/000000.png", "Q": "What colour is the car?", "A": "red",
            "Q-type": "reasoning", "attribute": "colors",
            "points": [[10, 10], [20, 10], [20, 15], [10, 15]], "area_percent": 0.5}
    base.update(over)
    return base


def write(path, records):
    path.write_text(json.dumps({"annotations": records}))
    return path


def run(tmp_path, records, policy="fail"):
    path = write(tmp_path / "ann.json", records)
    return import_annotations(path, IMAGES.get, on_invalid=policy, point_jitter=0.25, seed=0)


def test_valid_record_values(tmp_path):
    table, report = run(tmp_path, [rec()])
    row = table.to_pylist()[0]
    assert report.as_dict()["invalid"] == 0
    assert row["id"] == "ann#0"                        # <file stem>#<index>
    # The authors' fill: vertices are pixel indices and the outline is in the mask, so
    # (10, 10)-(20, 15) covers x = 10..20, y = 10..15: 11 x 6 pixels.
    assert row["box"] == [10.0, 10.0, 21.0, 16.0]
    assert row["area_px"] == 66
    assert row["area_percent"] == pytest.approx(0.66)  # 66 / 10,000 x 100
    assert row["area_percent_json"] == 0.5
    assert row["size_bucket"] == "s"                   # 0.5 % > 0.055 %
    assert row["release_split"] is None
    assert row["task"] == "OVQA" and row["video"] == "v" and row["frame_index"] == 0
    assert row["points_centre_jitter"][0] == [15.5, 13.0]
    # 11 x 6 block (rows 10..15, cols 10..20): the distance peaks at 3 on rows 12-13,
    # cols 12..18, first at (row 12, col 12) -> (12.5, 12.5). The second radius-3 centre
    # must be >= 6 px away: in row-major order (row 12, col 18) -> (18.5, 12.5).
    assert row["points_inscribed"] == [[12.5, 12.5], [18.5, 12.5]]


def test_mask_is_the_authors_fill_stored_as_rle(tmp_path):
    points = [[12.7, 30.2], [60.9, 33.8], [44.5, 71.3], [20.1, 55.5]]
    table, _ = run(tmp_path, [rec(points=points)])
    row = table.to_pylist()[0]
    authors = np.zeros((100, 100), np.uint8)
    cv2.polylines(authors, np.array([points], dtype=np.int32), True, 1, 1)
    cv2.fillPoly(authors, np.array([points], dtype=np.int32), 1)
    mask = rle_decode({"size": [100, 100], "counts": row["rle_counts"]})
    assert (mask == authors.astype(bool)).all() and row["area_px"] == int(authors.sum())


@pytest.mark.parametrize("area_percent, bucket", [
    # The mask (66 px of 10,000 = 0.66 %) would be S: the record's own area_percent wins.
    (0.016, "xxs"), (0.017, "xs"), (0.055, "xs"), (0.056, "s"),
])
def test_size_bucket_from_area_percent(tmp_path, area_percent, bucket):
    table, _ = run(tmp_path, [rec(area_percent=area_percent)])
    assert table.column("size_bucket").to_pylist() == [bucket]


def test_size_bucket_from_the_mask_without_area_percent(tmp_path):
    # (10, 10)-(11, 10)-(11, 11)-(10, 11) covers 2 x 2 = 4 px of 100 x 100 = 0.04 %: XS.
    small = rec(points=[[10, 10], [11, 10], [11, 11], [10, 11]])
    del small["area_percent"]
    table, _ = run(tmp_path, [small, rec(area_percent=None, points=[[0, 0], [1, 0], [0, 1]])])
    # The second: 3 px = 0.03 %, also XS; 0.017 % of 10,000 is 1.7 px, so 1 px would be XXS.
    assert table.column("size_bucket").to_pylist() == ["xs", "xs"]
    assert table.column("area_percent_json").to_pylist() == [None, None]
    one = rec(points=[[5.2, 5.1], [5.9, 5.3], [5.5, 5.8]])     # all truncate to (5, 5): 1 px
    del one["area_percent"]
    table, _ = run(tmp_path, [one])
    assert table.column("area_px").to_pylist() == [1] and table.column("size_bucket").to_pylist() == ["xxs"]


def test_vertex_less_than_1px_outside_is_clipped_and_noted(tmp_path):
    points = [[-0.5, 10], [10, 10], [10, 15], [-0.9, 15]]
    table, report = run(tmp_path, [rec(points=points), rec(points=[[95, 90], [100.99, 90], [99, 99.5]])])
    rows = table.to_pylist()
    assert rows[0]["polygon"] == [[0.0, 10.0], [10.0, 10.0], [10.0, 15.0], [0.0, 15.0]]
    assert rows[0]["area_px"] == 11 * 6 and rows[0]["box"] == [0.0, 10.0, 11.0, 16.0]
    assert rows[1]["polygon"] == [[95.0, 90.0], [100.0, 90.0], [99.0, 99.5]]
    d = report.as_dict()
    assert d["invalid"] == 0
    assert [(n["record"], n["id"], n["class"], n["field"]) for n in d["notes"]] == [
        (0, "ann#0", "clipped_vertex", "points"), (1, "ann#1", "clipped_vertex", "points")]
    assert "2 vertex(es)" in d["notes"][0]["message"]


@pytest.mark.parametrize("points", [
    [[-1, 10], [10, 10], [10, 15]],        # exactly 1 px outside
    [[10, 10], [20, 10], [20, 101.5]],
    [[0, 0], [10, 0], [-3, 8]],
])
def test_vertex_1px_or_more_outside_is_an_invalid_record(tmp_path, points):
    with pytest.raises(AnnotationError, match="ann#1") as info:
        run(tmp_path, [rec(), rec(points=points)])
    [p] = info.value.report.as_dict()["problems"]
    assert (p["record"], p["id"], p["class"], p["field"]) == (1, "ann#1", "bad_polygon", "points")
    assert "1 px or more outside the 100x100 image" in p["message"]


def test_option_record(tmp_path):
    table, _ = run(tmp_path, [rec(**{"Q-type": "option", "A": "B", "options": ["A. blue", "B. red"]})])
    row = table.to_pylist()[0]
    assert row["options"] == ["blue", "red"] and row["option_letters"] == ["A", "B"]
    assert row["answer_option"] == "B"


@pytest.mark.parametrize("bad, cls, field", [
    (rec(points=[[10, 10], [120, 10], [20, 15]]), "bad_polygon", "points"),        # out of bounds
    (rec(points=[[10, 10], [20, 20], [30, 30]]), "bad_polygon", "points"),         # collinear: zero area
    (rec(points=[[10, 10], [20, 10]]), "bad_polygon", "points"),                   # two vertices
    # Inside the 1-px margin right of the frame, all truncate to column 100: no pixel.
    (rec(points=[[100.1, 10], [100.5, 10], [100.5, 12]]), "bad_polygon", "points"),
    (rec(image_path="v/999999.png"), "missing_image", "image_path"),
    (rec(**{"Q-type": "counting"}), "unknown_task_type", "Q-type"),
    (rec(**{"Q-type": "option", "A": "A"}), "bad_options", "options"),          # MVQA without options
    (rec(**{"Q-type": "option", "A": "C", "options": ["A. red", "B. blue"]}), "bad_options", "A"),
    (rec(Q="   "), "empty_question", "Q"),
    (rec(attribute="size"), "unknown_attribute", "attribute"),
    (rec(area_percent="0.5"), "bad_area_percent", "area_percent"),
    (rec(area_percent=-0.1), "bad_area_percent", "area_percent"),
    (rec(area_percent=True), "bad_area_percent", "area_percent"),
])
def test_each_validation_class_is_named(tmp_path, bad, cls, field):
    with pytest.raises(AnnotationError, match="ann#1") as info:
        run(tmp_path, [rec(), bad])
    problems = info.value.report.as_dict()["problems"]
    assert [(p["file"], p["record"], p["id"], p["class"], p["field"]) for p in problems] == [
        (str(tmp_path / "ann.json"), 1, "ann#1", cls, field)]


def test_own_ids_are_kept_and_duplicates_named(tmp_path):
    # The project's own layout (the synthetic data) carries ids; they are used as given.
    table, _ = run(tmp_path, [rec(id="a"), rec(id="b")])
    assert table.column("id").to_pylist() == ["a", "b"]
    with pytest.raises(AnnotationError, match="duplicate id 'a' \\(first at record 0\\)"):
        run(tmp_path, [rec(id="a"), rec(id="a")])


def test_drop_and_report_keeps_valid_and_lists_invalid(tmp_path):
    table, report = run(tmp_path, [rec(), rec(Q=""), rec(image_path="nope.png")], policy="drop_and_report")
    assert table.column("id").to_pylist() == ["ann#0"]
    d = report.as_dict()
    assert (d["total"], d["valid"], d["invalid"]) == (3, 1, 2)
    assert d["by_class"] == {"empty_question": 1, "missing_image": 1}
    assert f"| {tmp_path / 'ann.json'} | 1 | ann#1 | empty_question | Q |" in report.markdown()


def test_not_a_record_and_not_json(tmp_path):
    with pytest.raises(AnnotationError,
                       match="ann.json record 1 \\(id None\\): malformed_record \\[\\(record\\)\\]: record is a str"):
        run(tmp_path, [rec(), "junk"])
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="broken.json: not readable JSON"):
        import_annotations(path, IMAGES.get)


def test_option_formats():
    assert parse_options(["A. red", "B) blue", "(C) green"]) == (["A", "B", "C"], ["red", "blue", "green"])
    assert parse_options({"a": "red", "b": "blue"}) == (["A", "B"], ["red", "blue"])
    assert parse_options(["red", "blue"]) == (["A", "B"], ["red", "blue"])
    assert answer_letter("blue", ["A", "B"], ["red", "blue"]) == "B"
    assert answer_letter("b.", ["A", "B"], ["red", "blue"]) == "B"
    assert answer_letter("green", ["A", "B"], ["red", "blue"]) is None


def release(tmp_path, train, test):
    files = {"train": write(tmp_path / "all_annotations_final_train_v5.json", train),
             "test": write(tmp_path / "all_annotations_final_test_v5.json", test)}
    return files


def test_release_train_and_test_files(tmp_path):
    files = release(tmp_path, [rec(), rec(image_path="v/000004.png")],
                    [rec(**{"Q-type": "referring", "A": "The car is found."})])
    table, report = import_annotations(files, IMAGES.get)
    assert table.column("id").to_pylist() == ["all_annotations_final_train_v5#0", "all_annotations_final_train_v5#1",
                                              "all_annotations_final_test_v5#0"]
    assert table.column("release_split").to_pylist() == ["train", "train", "test"]
    assert report.as_dict()["total"] == 3
    assert str(files["train"]) in report.source and str(files["test"]) in report.source


def test_release_bad_records_name_their_file(tmp_path):
    # Record 0 of each file is bad: two invalid records, each named with its own file.
    files = release(tmp_path, [rec(Q=""), rec()], [rec(attribute="size")])
    table, report = import_annotations(files, IMAGES.get, on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["all_annotations_final_train_v5#1"]
    d = report.as_dict()
    assert (d["total"], d["valid"], d["invalid"]) == (3, 1, 2)
    assert [(p["file"], p["record"], p["id"], p["field"]) for p in d["problems"]] == [
        (str(files["train"]), 0, "all_annotations_final_train_v5#0", "Q"),
        (str(files["test"]), 0, "all_annotations_final_test_v5#0", "attribute")]
    with pytest.raises(AnnotationError, match="all_annotations_final_test_v5.json record 0"):
        import_annotations(files, IMAGES.get)


def test_release_files_need_distinct_stems_and_both_splits(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same = {"train": write(tmp_path / "a" / "ann.json", [rec()]), "test": write(tmp_path / "b" / "ann.json", [rec()])}
    with pytest.raises(AnnotationError, match="share the name 'ann'"):
        import_annotations(same, IMAGES.get)
    with pytest.raises(AnnotationError, match="expected exactly \\['train', 'test'\\]"):
        import_annotations({"train": same["train"]}, IMAGES.get)


def test_duplicate_own_id_across_files_names_the_first_file(tmp_path):
    files = release(tmp_path, [rec(id="x")], [rec(id="x")])
    with pytest.raises(AnnotationError, match="duplicate id 'x' \\(first at record 0 of .*train_v5.json\\)"):
        import_annotations(files, IMAGES.get)


# ------------------------------------------- every field checked before it is used

@pytest.mark.parametrize("over, cls, field", [
    ({"Q-type": ["option"]}, "wrong_type", "Q-type"),           # was a bare TypeError: unhashable type: 'list'
    ({"attribute": {"colors": 1}}, "wrong_type", "attribute"),
    ({"Q": 42}, "wrong_type", "Q"),
    ({"A": ["red"]}, "wrong_type", "A"),
    ({"A": float("nan")}, "wrong_type", "A"),
    ({"image_path": 7}, "wrong_type", "image_path"),
    ({"id": ["a"]}, "wrong_type", "id"),
    ({"id": float("nan")}, "wrong_type", "id"),
    ({"id": True}, "wrong_type", "id"),
    ({"id": ""}, "wrong_type", "id"),
    ({"area_percent": float("nan")}, "bad_area_percent", "area_percent"),
    ({"area_percent": float("inf")}, "bad_area_percent", "area_percent"),
    ({"area_percent": 10 ** 400}, "bad_area_percent", "area_percent"),   # was an OverflowError
    ({"points": [[10, 10], [20, float("nan")], [20, 15]]}, "bad_polygon", "points"),
    ({"points": [[10, 10], [20], [20, 15]]}, "bad_polygon", "points"),    # not pairs
    ({"points": [[10, 10], [20, 10, 3], [20, 15]]}, "bad_polygon", "points"),
    ({"points": [["10", 10], [20, 10], [20, 15]]}, "bad_polygon", "points"),  # text is not a number
    ({"points": [[True, 10], [20, 10], [20, 15]]}, "bad_polygon", "points"),
    ({"points": [[10 ** 400, 10], [20, 10], [20, 15]]}, "bad_polygon", "points"),
    ({"points": {"x": 1}}, "bad_polygon", "points"),
    ({"Q-type": "option", "A": "A", "options": ["A. red", 3]}, "bad_options", "options"),
    ({"Q-type": "option", "A": "A", "options": {"A": "red", "B": None}}, "bad_options", "options"),
    ({"Q-type": "option", "A": "A", "options": ["A. red"]}, "bad_options", "options"),       # one option
    ({"Q-type": "option", "A": "A", "options": ["A. red", "B. "]}, "bad_options", "options"),  # empty text
    ({"Q-type": "option", "A": "A", "options": "A. red B. blue"}, "bad_options", "options"),
    ({"Q-type": "reasoning", "options": 5}, "wrong_type", "options"),
    ({"image_path": "/etc/passwd"}, "unsafe_path", "image_path"),
    ({"image_path": "../v/000000.png"}, "unsafe_path", "image_path"),
    ({"image_path": ""}, "missing_image", "image_path"),
])
def test_every_field_is_checked_for_type_and_range(tmp_path, over, cls, field):
    with pytest.raises(AnnotationError, match="ann.json record 1 ") as info:
        run(tmp_path, [rec(), rec(**over)])
    problems = [(p["record"], p["class"], p["field"]) for p in info.value.report.as_dict()["problems"]]
    assert (1, cls, field) in problems and all(r == 1 for r, _, _ in problems)
    table, report = run(tmp_path, [rec(), rec(**over)], policy="drop_and_report")
    assert table.column("id").to_pylist() == ["ann#0"]
    assert all(p["file"] == str(tmp_path / "ann.json") and p["field"] for p in report.problems)


@pytest.mark.parametrize("key, cls", [("Q", "empty_question"), ("Q-type", "unknown_task_type"),
                                      ("attribute", "unknown_attribute"), ("A", "missing_answer"),
                                      ("image_path", "missing_image"), ("points", "bad_polygon")])
def test_a_missing_key_is_named(tmp_path, key, cls):
    bad = rec()
    del bad[key]
    with pytest.raises(AnnotationError) as info:
        run(tmp_path, [bad])
    [p] = info.value.report.problems
    assert (p["record"], p["class"], p["field"]) == (0, cls, key) and "missing" in p["message"]


# --------------------------------------------- released images, decoded at import

def png(path, size=(100, 100)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 120, 30)).save(path)
    return path


def bomb_png(path, width, height):
    """A PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def released(tmp_path, records, policy="fail", max_pixels=100_000_000):
    ann = write(tmp_path / "ann.json", records)
    out = tmp_path / "out"
    import_stage(str(ann), str(out / "t.parquet"), str(out / "r.json"), str(out / "r.md"), str(out / "log.json"),
                 manifest=None, images_dir=str(tmp_path / "images"), on_invalid=policy, point_jitter=0.25,
                 seed=0, max_image_pixels=max_pixels)
    return out


def test_released_images_are_decoded_at_import(tmp_path):
    images = tmp_path / "images"
    good = png(images / "good.png")
    data = good.read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])          # the header still reads: passed before
    (images / "empty.png").write_bytes(b"")
    (images / "junk.png").write_bytes(b"not a png at all" * 10)
    bomb_png(images / "bomb.png", 12_000, 10_000)                     # 120 megapixels, a few bytes
    bomb_png(images / "huge.png", 40_000, 40_000)                     # past PIL's own limit too
    (images / "dir.png").mkdir()
    outside = png(tmp_path / "outside.png")
    (images / "link.png").symlink_to(outside)                         # a symlink out of the root
    (images / "inner.png").symlink_to(good)                           # one inside it is fine
    names = ["good", "cut", "empty", "junk", "bomb", "huge", "dir", "link", "inner"]
    records = [rec(image_path=f"{n}.png") for n in names] + [rec(image_path=str(outside))]
    with pytest.raises(AnnotationError, match="ann.json record 1 ") as info:
        released(tmp_path, records)
    assert not (tmp_path / "out" / "t.parquet").exists() and not (tmp_path / "out" / "r.json").exists()
    assert json.loads((tmp_path / "out" / "log.json").read_text())["invalid"] == 8
    out = released(tmp_path, records, policy="drop_and_report")
    assert pq.read_table(out / "t.parquet").column("image_path").to_pylist() == ["good.png", "inner.png"]
    by_record = {p["record"]: (p["class"], p["field"]) for p in json.loads((out / "r.json").read_text())["problems"]}
    assert by_record == {1: ("unreadable_image", "image_path"), 2: ("unreadable_image", "image_path"),
                         3: ("unreadable_image", "image_path"), 4: ("image_too_large", "image_path"),
                         5: ("image_too_large", "image_path"), 6: ("missing_image", "image_path"),
                         7: ("unsafe_path", "image_path"), 9: ("unsafe_path", "image_path")}
    # The limit is the configured one.
    with pytest.raises(AnnotationError, match="more than the limit of 9999"):
        released(tmp_path, [rec(image_path="good.png")], max_pixels=9_999)


def test_a_path_out_of_the_root_is_never_opened(tmp_path, monkeypatch):
    import PIL.Image

    images = tmp_path / "images"
    png(images / "a.png")
    outside = png(tmp_path / "secret.png")
    (images / "link.png").symlink_to(outside)
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    lookup = lookup_from_directory(images)
    recs = [rec(image_path="a.png"), rec(image_path="link.png"), rec(image_path=str(outside)),
            rec(image_path="../secret.png")]
    table, report = import_annotations(write(tmp_path / "ann.json", recs), lookup, on_invalid="drop_and_report")
    assert table.num_rows == 1 and [p["class"] for p in report.problems] == ["unsafe_path"] * 3
    assert opened == [str(images / "a.png")]
