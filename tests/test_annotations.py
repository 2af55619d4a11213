"""FineRS-4k import: each validation class, both policies, and the table's values."""
import json

import pytest

from reproseg.data.annotations import (AnnotationError, ImageInfo, answer_letter, import_annotations,
                                       parse_options)

IMAGES = {"v/000000.png": ImageInfo(100, 100, "v", 0), "v/000004.png": ImageInfo(100, 100, "v", 4)}


def rec(**over):
    base = {"id": "a", "image_path": "v/000000.png", "Q": "What colour is the car?", "A": "red",
            "Q-type": "reasoning", "attribute": "colors",
            "points": [[10, 10], [20, 10], [20, 15], [10, 15]], "area_percent": 0.5}
    base.update(over)
    return base


def run(tmp_path, records, policy="fail"):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"annotations": records}))
    return import_annotations(path, IMAGES.get, on_invalid=policy, point_jitter=0.25, seed=0)


def test_valid_record_values(tmp_path):
    table, report = run(tmp_path, [rec()])
    row = table.to_pylist()[0]
    assert report.as_dict()["invalid"] == 0
    assert row["box"] == [10.0, 10.0, 20.0, 15.0]
    assert row["area_px"] == 50                       # 10 x 5 pixels
    assert row["area_percent"] == pytest.approx(0.5)  # 50 / 10,000 x 100
    assert row["size_bucket"] == "s"                  # 0.5 % > 0.055 %
    assert row["task"] == "OVQA" and row["video"] == "v" and row["frame_index"] == 0
    assert row["points_centre_jitter"][0] == [15.0, 12.5]
    # 10 x 5 block (rows 10..14, cols 10..19): the distance peaks at 3 on row 12, cols
    # 12..17, first at col 12 -> (12.5, 12.5). No other radius-3 centre is >= 6 px away, so
    # the second circle has radius 2 and must be >= 5 px away; in row-major order the
    # first such pixel is row 11, col 17 (distance hypot(1, 5) = 5.10) -> (17.5, 11.5).
    assert row["points_inscribed"] == [[12.5, 12.5], [17.5, 11.5]]


def test_option_record(tmp_path):
    table, _ = run(tmp_path, [rec(**{"Q-type": "option", "A": "B", "options": ["A. blue", "B. red"]})])
    row = table.to_pylist()[0]
    assert row["options"] == ["blue", "red"] and row["option_letters"] == ["A", "B"]
    assert row["answer_option"] == "B"


@pytest.mark.parametrize("bad, cls", [
    (rec(points=[[10, 10], [120, 10], [20, 15]]), "bad_polygon"),          # out of bounds
    (rec(points=[[10, 10], [20, 20], [30, 30]]), "bad_polygon"),           # collinear: zero area
    (rec(points=[[10, 10], [20, 10]]), "bad_polygon"),                     # two vertices
    (rec(points=[[10, 10], [10.2, 10], [10.2, 10.2]]), "bad_polygon"),     # covers no pixel
    (rec(image_path="v/999999.png"), "missing_image"),
    (rec(**{"Q-type": "counting"}), "unknown_task_type"),
    (rec(**{"Q-type": "option", "A": "A"}), "bad_options"),                # MVQA without options
    (rec(**{"Q-type": "option", "A": "C", "options": ["A. red", "B. blue"]}), "bad_options"),
    (rec(Q="   "), "empty_question"),
    (rec(attribute="size"), "unknown_attribute"),
])
def test_each_validation_class_is_named(tmp_path, bad, cls):
    bad = dict(bad, id="bad-1")
    with pytest.raises(AnnotationError, match="bad-1") as info:
        run(tmp_path, [rec(), bad])
    problems = info.value.report.as_dict()["problems"]
    assert [(p["record"], p["id"], p["class"]) for p in problems] == [(1, "bad-1", cls)]


def test_duplicate_id(tmp_path):
    with pytest.raises(AnnotationError, match="duplicate id 'a' \\(first at record 0\\)"):
        run(tmp_path, [rec(), rec()])


def test_drop_and_report_keeps_valid_and_lists_invalid(tmp_path):
    table, report = run(tmp_path, [rec(id="ok"), rec(id="x", Q=""), rec(id="y", image_path="nope.png")],
                        policy="drop_and_report")
    assert table.column("id").to_pylist() == ["ok"]
    d = report.as_dict()
    assert (d["total"], d["valid"], d["invalid"]) == (3, 1, 2)
    assert d["by_class"] == {"empty_question": 1, "missing_image": 1}
    assert "| 1 | x | empty_question |" in report.markdown()


def test_not_a_record_and_not_json(tmp_path):
    with pytest.raises(AnnotationError, match="record is a str"):
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
