"""The VisionReasoner multi-object training set importer, on fixtures in the release's
format: Hub parquet shards (and a save_to_disk Arrow folder) with the columns id,
problem, solution (JSON), image ({"bytes", "path"}), img_height, img_width."""
from __future__ import annotations

import copy
import io
import json
import math
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reproseg.data.annotations import AnnotationError
from reproseg.drseg.visionreasoner import data as vrdata

SCHEMA = pa.schema([("id", pa.string()), ("problem", pa.string()), ("solution", pa.string()),
                    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                    ("img_height", pa.int64()), ("img_width", pa.int64())])


def png(size=(64, 64), colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def records(n=3, size=64) -> list[dict]:
    """n records; record i has i + 1 objects in a size x size stored image."""
    out = []
    for i in range(n):
        objs = [{"bbox_2d": [2 + 10 * k, 2, 9 + 10 * k, 20], "point_2d": [5 + 10 * k, 10]} for k in range(i + 1)]
        out.append({"id": f"lvis_{i}", "problem": f"Find the cups {i}.", "solution": objs,
                    "image": {"bytes": png((size, size)), "path": f"{i}.jpg"}, "img_height": 480, "img_width": 640})
    return out


def write_release(root: Path, recs: list[dict], layout: str = "hub") -> Path:
    rows = [{**r, "solution": r["solution"] if isinstance(r["solution"], str) or r["solution"] is None
             else json.dumps(r["solution"])} for r in recs]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    if layout == "hub":   # data/train-00000-of-00002.parquet, ... (two shards)
        (root / "data").mkdir(parents=True)
        half = max(1, len(rows) // 2)
        pq.write_table(table.slice(0, half), root / "data" / "train-00000-of-00002.parquet")
        pq.write_table(table.slice(half), root / "data" / "train-00001-of-00002.parquet")
    else:                 # datasets.save_to_disk: train/data-00000-of-00001.arrow, an Arrow stream
        (root / "train").mkdir(parents=True)
        with pa.OSFile(str(root / "train" / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    return root


def run(tmp: Path, release: Path, policy: str, out: str = "out"):
    o = tmp / out
    spec = {"name": "vr7k", "path": str(release), "on_invalid": policy, "max_image_pixels": 100_000_000}
    vrdata.import_stage(spec, str(o / "train.parquet"), str(o / "images"), str(o / "report.json"),
                        str(o / "report.md"), str(o / "log.json"))
    return o


@pytest.mark.parametrize("layout", ["hub", "save_to_disk"])
def test_imports_the_release(tmp_path, layout):
    release = write_release(tmp_path / "rel", records(), layout)
    o = run(tmp_path, release, "fail")
    t = pq.read_table(o / "train.parquet").to_pylist()
    assert [r["id"] for r in t] == ["vr7k/lvis_0", "vr7k/lvis_1", "vr7k/lvis_2"]
    assert [r["n_objects"] for r in t] == [1, 2, 3]
    assert t[1]["objects"] == json.dumps(records()[1]["solution"])
    assert (t[0]["width"], t[0]["height"], t[0]["orig_width"], t[0]["orig_height"]) == (64, 64, 640, 480)
    assert t[0]["query"] == "Find the cups 0." and t[0]["split"] == "train"
    assert Image.open(o / "images" / t[2]["image_path"]).size == (64, 64)
    report = json.loads((o / "report.json").read_text())
    assert (report["total"], report["valid"], report["invalid"]) == (3, 3, 0)


def test_training_rows_in_the_policy_frame(tmp_path):
    release = write_release(tmp_path / "rel", records(2, size=840))
    o = run(tmp_path, release, "fail")
    rows = vrdata.training_rows(pq.read_table(o / "train.parquet"), str(o / "images"), "look_to_confirm")
    assert rows[0]["prompt"][0]["content"].startswith('Please find "find the cups 0" with bboxs')
    assert "<look>" in rows[0]["prompt"][0]["content"]
    assert json.loads(rows[1]["gt_objects"]) == records(2)[1]["solution"]   # 840: as stored
    assert rows[1]["image"].size is None and rows[1]["image"].open().size == (840, 840)
    # a 420-px stored image: the objects double, the image is resized
    release = write_release(tmp_path / "rel420", records(1, size=420))
    o = run(tmp_path, release, "fail", "out420")
    row = vrdata.training_rows(pq.read_table(o / "train.parquet"), str(o / "images"))[0]
    assert json.loads(row["gt_objects"]) == [{"bbox_2d": [4, 4, 18, 40], "point_2d": [10, 20]}]
    assert row["image"].open().size == (840, 840)


BAD = {  # record 1 broken in one way -> (class, field)
    "no_objects": (lambda r: r.update(solution=[]), "no_objects", "solution"),
    "degenerate": (lambda r: r["solution"][0].update(bbox_2d=[10, 5, 10, 9]), "degenerate_box", "solution"),
    "inverted": (lambda r: r["solution"][0].update(bbox_2d=[10, 9, 4, 2]), "degenerate_box", "solution"),
    "outside": (lambda r: r["solution"][0].update(bbox_2d=[2, 2, 65, 20], point_2d=[5, 5]), "box_outside_image",
                "solution"),
    "negative": (lambda r: r["solution"][0].update(bbox_2d=[-1, 2, 9, 20]), "box_outside_image", "solution"),
    "point_outside": (lambda r: r["solution"][1].update(point_2d=[2, 21]), "point_outside_box", "solution"),
    "not_json": (lambda r: r.update(solution="[{"), "bad_solution", "solution"),
    "no_point": (lambda r: r["solution"][0].pop("point_2d"), "bad_solution", "solution"),
    "string_coordinate": (lambda r: r["solution"][0]["bbox_2d"].__setitem__(0, "2"), "bad_solution", "solution"),
    "undecodable": (lambda r: r["image"].update(bytes=b"not an image at all" * 3), "unreadable_image", "image"),
    "truncated": (lambda r: r["image"].update(bytes=r["image"]["bytes"][:60]), "unreadable_image", "image"),
    "no_bytes": (lambda r: r["image"].update(bytes=None), "missing_image", "image"),
    "bomb": (lambda r: r["image"].update(bytes=bomb_png(12_000, 10_000)), "image_too_large", "image"),
    "zero_width": (lambda r: r.update(img_width=0), "bad_image_size", "img_width"),
    "empty_problem": (lambda r: r.update(problem="  "), "empty_question", "problem"),
    "no_id": (lambda r: r.update(id=None), "malformed_record", "id"),
    "duplicate": (lambda r: r.update(id="lvis_0"), "duplicate_id", "id"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_are_named_and_the_policy_applies(tmp_path, case):
    recs = records()
    mutate, cls, field = BAD[case]
    mutate(recs[1])
    release = write_release(tmp_path / "rel", recs)
    o = run(tmp_path, release, "drop_and_report")
    report = json.loads((o / "report.json").read_text())
    ids = [r["id"] for r in pq.read_table(o / "train.parquet").to_pylist()]
    assert ids == ["vr7k/lvis_0", "vr7k/lvis_2"]
    assert (report["total"], report["valid"], report["invalid"]) == (3, 2, 1)
    [p] = [p for p in report["problems"] if p["class"] == cls]
    assert p["field"] == field and p["file"]
    assert p["id"] in ("vr7k/lvis_1", "vr7k/lvis_0", None)
    assert cls in (o / "report.md").read_text()
    assert sorted(x.name for x in (o / "images").iterdir()) == ["0000000.png", "0000002.png"]
    with pytest.raises(AnnotationError, match=cls):
        run(tmp_path, release, "fail", "fail")
    f = tmp_path / "fail"
    assert not (f / "train.parquet").exists() and not (f / "images").exists() and not (f / "report.json").exists()
    assert json.loads((f / "log.json").read_text())["invalid"] == 1


def test_file_level_errors(tmp_path):
    with pytest.raises(AnnotationError, match="no parquet shard"):
        run(tmp_path, tmp_path, "fail")
    bad = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["a"], "problem": ["b"]}), bad)
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['solution', 'image'"):
        run(tmp_path, bad, "drop_and_report")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(AnnotationError, match="not a readable"):
        run(tmp_path, junk, "drop_and_report")


def test_over_120_objects_is_a_note(tmp_path):
    recs = records(1)
    recs[0]["solution"] = [{"bbox_2d": [1, 1, 3, 3], "point_2d": [2, 2]}] * 121
    o = run(tmp_path, write_release(tmp_path / "rel", recs), "fail")
    report = json.loads((o / "report.json").read_text())
    assert report["valid"] == 1 and report["notes"][0]["class"] == "over_120_objects"


# -------------------------------------------------------------------- fuzz

VALUES = {"list": [1, 2], "dict": {"k": 1}, "int": 7, "bool": True, "null": None, "nan": math.nan,
          "inf": math.inf, "empty": "", "huge_number": 1e308, "big_int": 10 ** 400, "text": "zzz"}
# Inside the solution JSON any value can appear; a column keeps its Arrow type.
OBJECT_PATHS = [("solution", 0), ("solution", 0, "bbox_2d"), ("solution", 0, "point_2d"),
                *[("solution", 0, "bbox_2d", i) for i in range(4)], *[("solution", 0, "point_2d", i) for i in range(2)]]
COLUMN_VALUES = {"id": [None, "", "zzz", "x" * 10_000], "problem": [None, "", " ", "zzz", "x" * 100_000],
                 "solution": [None, "", "zzz", "[]", "{}", "[1]", "[" * 10_000, "null"],
                 "img_width": [None, 0, -1, 7, 2 ** 40], "img_height": [None, 0, 7, 2 ** 62]}
IMAGE_BREAKS = ["truncate", "garbage", "empty", "null_bytes", "null_struct", "bomb", "bomb_pil"]


def column_must(col: str, value) -> bool:
    """Whether a column value must get the record named."""
    if col in ("id", "problem"):
        return value is None or not str(value).strip()
    if col == "solution":
        return True
    return not (isinstance(value, int) and 0 < value < 2 ** 31)


def mutate_object(rec: dict, path: tuple, how: str) -> bool | None:
    """Mutates the solution list in place; True: must be named, None: may import, False: not applied."""
    parent = rec
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if how == "delete":
        if isinstance(parent, list):
            del parent[last]
            # one object fewer: record 0 keeps none (named), the others stay valid
            return True if not parent or isinstance(last, str) or len(path) > 2 else None
        del parent[last]
        return True
    parent[last] = copy.deepcopy(VALUES[how])
    return None if (how == "int" and len(path) == 4) else True


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def _fuzz_training_set(data, tally: Counter):
    recs = records()
    target = data.draw(st.integers(0, 2), label="record")
    where = data.draw(st.sampled_from(["object", "column", "image"]), label="where")
    must = False
    if where == "object":
        path = data.draw(st.sampled_from(OBJECT_PATHS), label="path")
        how = data.draw(st.sampled_from(["delete", *VALUES]), label="how")
        e = mutate_object(recs[target], path, how)
        must = bool(e)
        if path == ("solution", 0) and how == "delete" and target == 0:
            must = True
    elif where == "column":
        col = data.draw(st.sampled_from(sorted(COLUMN_VALUES)), label="column")
        value = data.draw(st.sampled_from(COLUMN_VALUES[col]), label="value")
        recs[target][col] = value
        must = column_must(col, value)
    else:
        how = data.draw(st.sampled_from(IMAGE_BREAKS), label="break")
        img = recs[target]["image"]
        if how == "truncate":
            img["bytes"] = img["bytes"][: len(img["bytes"]) // 2]
        elif how == "garbage":
            img["bytes"] = b"definitely not an image " * 20
        elif how == "empty":
            img["bytes"] = b""
        elif how == "null_bytes":
            img["bytes"] = None
        elif how == "null_struct":
            recs[target]["image"] = None
        elif how == "bomb":
            img["bytes"] = bomb_png(12_000, 10_000)
        else:
            img["bytes"] = bomb_png(40_000, 40_000)
        must = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        release = write_release(tmp / "rel", recs)
        o = run(tmp, release, "drop_and_report")
        report = json.loads((o / "report.json").read_text())
        ids = [r["id"] for r in pq.read_table(o / "train.parquet").to_pylist()]
        rid = f"vr7k/{recs[target]['id']}" if recs[target]["id"] else None
        # record numbers restart in each shard: records(3) is [0] in shard 0 and [1, 2] in shard 1
        shard, local = ("train-00000", 0) if target == 0 else ("train-00001", target - 1)
        named = any((p["record"] == local and shard in p["file"]) or (rid and p["id"] == rid)
                    for p in report["problems"])
        assert report["total"] == 3 and report["valid"] == len(ids)
        assert all(p["field"] and p["file"] for p in report["problems"])
        if must:
            assert named, (where, report["problems"])
        else:
            assert named or (len(ids) == 3 and not report["problems"]), report["problems"]
        assert len(list((o / "images").iterdir())) == len(ids)
        if report["problems"]:
            with pytest.raises(AnnotationError):
                run(tmp, release, "fail", "fail")
            assert not (tmp / "fail" / "train.parquet").exists() and not (tmp / "fail" / "images").exists()
        else:
            run(tmp, release, "fail", "fail")
        assert not [p for p in tmp.rglob("*") if p.name.endswith(".partial")]
    tally["named" if named else "imported"] += 1
    tally[f"{where}"] += 1


def test_fuzz_training_set_importer():
    """Mutated fields, JSON values inside the solution and broken images; the count of runs
    and of named records is asserted so that a change of settings that stops it fails."""
    tally: Counter = Counter()
    _fuzz_training_set(tally=tally)
    print(dict(tally))
    assert tally["named"] + tally["imported"] >= 90 and tally["named"] >= 45
    assert min(tally["object"], tally["column"], tally["image"]) >= 10
