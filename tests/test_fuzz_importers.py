"""Fuzzing every importer at its entry point (the rule's import_stage): valid records of
each format are mutated (a key deleted, a type changed, NaN or infinite numbers, empty
or huge values, points that are not pairs, an image broken, a path that leaves the
image root) and each mutated file must either import with the mutated record named
in the report (file, record, field) or fail naming it; no other exception escapes,
under `fail` no output is written, and under `drop_and_report` every record is either
a row of the output or named in the report.

Each test counts the mutated records it ran and prints the count with the kinds of
mutation (`pytest -s` shows them); it asserts a minimum so a change of settings that
stops the fuzzing fails.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import pickle
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reproseg.data import annotations as finers_import
from reproseg.data.annotations import AnnotationError
from reproseg.seganswer.sources import import_stage as seganswer_import_stage

EXAMPLES = 100         # mutated files per importer (hypothesis examples)
MIN_RECORDS = 60       # each test must have run at least this many distinct mutated records
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- values

HUGE_TEXT = "x" * 100_000
VALUES = {
    "list": [1, 2], "dict": {"k": 1}, "int": 7, "bool": True, "null": None, "nan": math.nan,
    "inf": math.inf, "-inf": -math.inf, "empty": "", "huge_text": HUGE_TEXT, "huge_number": 1e308,
    "big_int": 10 ** 400, "text": "zzz",
}
MUTATIONS = ["delete", *VALUES]
IMAGE_BREAKS = ["truncate", "garbage", "zero_bytes", "empty_file", "bomb_limit", "bomb_pil", "symlink_out",
                "absolute", "dotdot", "directory"]


def expected(kind: str, required: bool, mutation: str) -> bool | None:
    """True: the record must be named; None: it may import (the value is valid for the field)."""
    absent = mutation in ("delete", "null", "empty")
    if absent:
        return True if required else None
    if kind == "text":            # free text
        return None if mutation in ("text", "huge_text") else True
    if kind == "enum":            # text from a closed set (a task type, an answer letter)
        return True
    if kind == "answer":          # free text or a number
        return True if mutation in ("list", "dict", "bool", "nan", "inf", "-inf") else None
    if kind == "id":              # text or a 64-bit integer
        return True if mutation in ("list", "dict", "bool", "nan", "inf", "-inf", "big_int") else None
    if kind == "category":        # optional text or number
        return True if mutation in ("list", "dict", "bool", "nan", "inf", "-inf") else None
    if kind == "percent":         # a number in [0, 100]
        return None if mutation == "int" else True
    if kind == "coordinate":      # a polygon coordinate: any number near the image
        return None if mutation == "int" else True
    if kind in ("always", "image", "points", "options"):
        return True
    if kind == "optional_options":  # options besides the text's own: absent is fine, anything else named
        return True
    raise AssertionError(kind)


def apply(record, path: tuple, mutation: str) -> bool:
    """Mutates record at `path` (keys / indices) in place; False if the path is not there."""
    parent = record
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return False
    last = path[-1]
    if isinstance(parent, dict):
        if mutation == "delete":
            if last not in parent:
                return False
            del parent[last]
        else:
            parent[last] = copy.deepcopy(VALUES[mutation])
        return True
    if isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        if mutation == "delete":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(VALUES[mutation])
        return True
    return False


def png_bytes(size=(8, 6), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def break_image(root: Path, rel: str, how: str, outside: Path) -> str | None:
    """Breaks the image `root/rel`; returns the path a record should now give (None: as before)."""
    path = root / rel
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"definitely not an image " * 20)
    elif how == "zero_bytes":
        data = bytearray(path.read_bytes())
        data[16:-12] = bytes(len(data) - 28)
        path.write_bytes(bytes(data))
    elif how == "empty_file":
        path.write_bytes(b"")
    elif how == "bomb_limit":       # over the configured 100-megapixel limit, under PIL's own
        path.write_bytes(bomb_png(12_000, 10_000))
    elif how == "bomb_pil":         # over PIL's decompression-bomb limit too
        path.write_bytes(bomb_png(40_000, 40_000))
    elif how == "symlink_out":      # a valid image, but outside the root
        path.unlink()
        path.symlink_to(outside)
    elif how == "absolute":
        return str(outside)
    elif how == "dotdot":
        return "../" * (len(Path(rel).parts)) + "../" + outside.name
    elif how == "directory":
        path.unlink()
        path.mkdir()
    else:
        raise AssertionError(how)
    return None


def deleted_element(path, how) -> bool:
    """A list element deleted: the shorter list may still be valid (a triangle of a square)."""
    return how == "delete" and isinstance(path[-1], int)


def named(problems: list[dict], indices=(), ids=()) -> bool:
    return any(p["record"] in indices or p.get("id") in ids or p["record"] in ids for p in problems)


class Tally:
    """What a fuzz test ran: mutated records, by kind of mutation and by outcome."""

    def __init__(self, name):
        self.name, self.records, self.kinds, self.outcomes = name, set(), Counter(), Counter()

    def add(self, key, kinds, outcome):
        self.records.add(key)
        self.kinds.update(kinds)
        self.outcomes[outcome] += 1

    def close(self):
        print(f"\n{self.name}: {len(self.records)} distinct mutated records in {sum(self.outcomes.values())} "
              f"files; outcomes {dict(self.outcomes)}; mutations {dict(sorted(self.kinds.items()))}")
        assert len(self.records) >= MIN_RECORDS
        assert self.outcomes["named"] >= MIN_RECORDS // 2


def mutation_strategy(fields: dict, breaks: bool):
    """One or two (field path, mutation) pairs on one record, or one broken image."""
    pair = st.tuples(st.sampled_from(sorted(fields, key=repr)), st.sampled_from(MUTATIONS))
    field_mutations = st.lists(pair, min_size=1, max_size=2, unique_by=lambda p: p[0])
    if not breaks:
        return field_mutations
    return st.one_of(field_mutations, st.sampled_from(IMAGE_BREAKS).map(lambda how: [("image", how)]))


def outputs_absent(*paths) -> bool:
    return not any(Path(p).exists() for p in paths)


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# -------------------------------------------------------------------- FineRS-4k JSON

FINERS_FIELDS = {  # path -> (kind, required)
    ("image_path",): ("image", True), ("Q",): ("text", True), ("A",): ("text", True),
    ("Q-type",): ("enum", True), ("attribute",): ("enum", True), ("points",): ("points", True),
    ("points", 0): ("points", True), ("points", 1, 0): ("coordinate", True), ("area_percent",): ("percent", False),
    # "zzz" as an option is option A (a letter-less option takes its position's letter): valid
    ("options",): ("options", True), ("options", 0): ("text", True),
}


def finers_records():
    def rec(i, **over):
        r = {"image_path": f"v/{i:06d}.png", "Q": "What colour is the car?", "A": "red", "Q-type": "reasoning",
             "attribute": "colors", "points": [[1, 1], [6, 1], [6, 4], [1, 4]], "area_percent": 0.5}
        r.update(over)
        return r
    return [rec(0), rec(1, **{"Q-type": "option", "A": "B", "options": ["A. blue", "B. red"]}),
            rec(2, **{"Q-type": "option", "A": "A", "options": ["A. blue", "B. red"]}), rec(3)]


@FUZZ
@given(data=st.data())
def _fuzz_finers(data, tally):
    records = finers_records()
    target = data.draw(st.integers(0, len(records) - 1), label="record")
    mutations = data.draw(mutation_strategy(FINERS_FIELDS, breaks=True), label="mutations")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, outside = tmp / "images", tmp / "outside.png"
        (images / "v").mkdir(parents=True)
        for i in range(len(records)):
            (images / f"v/{i:06d}.png").write_bytes(png_bytes())
        outside.write_bytes(png_bytes())
        must = False
        for path, how in mutations:
            if path == "image":
                new = break_image(images, records[target]["image_path"], how, outside)
                if new is not None:
                    records[target]["image_path"] = new
                must = True
                continue
            kind, required = FINERS_FIELDS[path]
            if path == ("A",) and records[target]["Q-type"] == "option":
                kind = "enum"                       # an MVQA answer must be one of its options
            if apply(records[target], path, how):
                e = expected(kind, required, how)
                if path[0] == "options" and records[target]["Q-type"] != "option":
                    # An OVQA record's options are not read: a list or an object passes, another type is named.
                    e = None if how in ("null", "list", "dict") else True
                must = must or bool(e and not deleted_element(path, how))
        ann = tmp / "ann.json"
        ann.write_text(json.dumps({"annotations": records}))
        out = tmp / "out"

        def run(policy):
            return finers_import.import_stage(
                str(ann), str(out / "table.parquet"), str(out / "report.json"), str(out / "report.md"),
                str(out / "log.json"), manifest=None, images_dir=str(images), on_invalid=policy,
                point_jitter=0.25, seed=0, max_image_pixels=100_000_000)

        run("drop_and_report")
        report = json.loads((out / "report.json").read_text())
        rows = pq.read_table(out / "table.parquet").column("id").to_pylist()
        was_named = named(report["problems"], indices={target})
        assert report["valid"] == len(rows) and report["total"] == len(records)
        assert all(p["file"] == str(ann) and p["field"] for p in report["problems"] if p["record"] == target)
        if must:
            assert was_named, (mutations, report["problems"])
        else:
            assert was_named or (f"ann#{target}" in rows and not report["problems"]), report["problems"]
        # Under fail: the job fails naming the record, and writes nothing (the log keeps the report).
        fail_out = tmp / "fail"
        out = fail_out
        if was_named:
            with pytest.raises(AnnotationError, match=f"record {target} "):
                run("fail")
            assert outputs_absent(out / "table.parquet", out / "report.json", out / "report.md")
            assert json.loads((out / "log.json").read_text())["invalid"] >= 1
        else:
            run("fail")
        assert no_partials(tmp)
    tally.add((target, tuple(sorted(map(repr, mutations)))), [how for _, how in mutations],
              "named" if was_named else "imported")


def test_fuzz_finers4k_json():
    tally = Tally("FineRS-4k JSON")
    _fuzz_finers(tally=tally)
    tally.close()


# ------------------------------------------------------------------ RefCOCO family

REF_FIELDS = {
    ("ref_id",): ("id", True), ("ann_id",): ("always", True), ("image_id",): ("always", True),
    ("category_id",): ("always", True), ("split",): ("text", True), ("sentences",): ("always", True),
    ("sentences", 0): ("always", True), ("sentences", 0, "sent_id"): ("id", True),
    ("sentences", 0, "sent"): ("text", False), ("sentences", 0, "raw"): ("text", False),
}
INSTANCE_FIELDS = {
    ("width",): ("always", True), ("height",): ("always", True), ("file_name",): ("image", True),
    ("segmentation",): ("always", True), ("segmentation", 0): ("always", True),
    ("segmentation", 0, 1): ("coordinate", True),
}


def refer_fixture():
    refs = [{"ref_id": r, "ann_id": 100 + r, "image_id": r, "category_id": 1, "split": "train",
             "file_name": f"x_{r}.jpg", "sent_ids": [10 * r, 10 * r + 1],
             "sentences": [{"sent_id": 10 * r, "sent": f"thing {r}", "raw": f"thing {r}", "tokens": []},
                           {"sent_id": 10 * r + 1, "sent": f"the thing {r}", "raw": f"the thing {r}", "tokens": []}]}
            for r in range(3)]
    images = [{"id": r, "file_name": f"img{r}.png", "width": 8, "height": 6} for r in range(3)]
    anns = [{"id": 100 + r, "image_id": r, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 4, 1, 4]]}
            for r in range(3)]
    return refs, {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def seganswer_run(tmp: Path, name: str, spec: dict, policy: str):
    out = tmp / f"out_{policy}"
    paths = [out / n for n in ("referring.parquet", "questions.parquet", "images", "report.json", "report.md")]
    seganswer_import_stage(name, {**spec, "on_invalid": policy}, *map(str, paths), str(out / "log.json"))
    return out, paths


def check_seganswer(tmp, name, spec, must, indices, ids, table="questions.parquet"):
    """Runs both policies; returns whether the record was named."""
    out, paths = seganswer_run(tmp, name, spec, "drop_and_report")
    report = json.loads((out / "report.json").read_text())
    rows = pq.read_table(out / table).column("id").to_pylist()
    assert report["valid"] == len(rows)
    was_named = named(report["problems"], indices=indices, ids=ids)
    mine = [p for p in report["problems"] if p["record"] in indices or p.get("id") in ids or p["record"] in ids]
    assert all(p.get("file") and p.get("field") for p in mine), mine
    if must:
        assert was_named, report["problems"]
    else:  # not named: it imported, and so did every other record
        assert was_named or not report["problems"], report["problems"]
    fail = tmp / "out_fail"
    if report["problems"]:
        with pytest.raises(AnnotationError):
            seganswer_run(tmp, name, spec, "fail")
        assert outputs_absent(*[fail / p.name for p in paths])
        assert json.loads((fail / "log.json").read_text())["invalid"] >= 1
    else:
        seganswer_run(tmp, name, spec, "fail")
    assert no_partials(tmp)
    return was_named


@FUZZ
@given(data=st.data())
def _fuzz_refer(data, tally):
    refs, instances = refer_fixture()
    target = data.draw(st.integers(0, 2), label="ref")
    where = data.draw(st.sampled_from(["ref", "instances"]), label="where")
    fields = REF_FIELDS if where == "ref" else INSTANCE_FIELDS
    mutations = data.draw(mutation_strategy(fields, breaks=where == "instances"), label="mutations")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, outside = tmp / "images", tmp / "outside.png"
        images.mkdir()
        for r in range(3):
            (images / f"img{r}.png").write_bytes(png_bytes())
        outside.write_bytes(png_bytes())
        must = False
        for path, how in mutations:
            if path == "image":
                new = break_image(images, f"img{target}.png", how, outside)
                if new is not None:
                    instances["images"][target]["file_name"] = new
                must = True
                continue
            kind, required = fields[path]
            if where == "ref":
                ok = apply(refs[target], path, how)
            elif path[0] == "segmentation":
                ok = apply(instances["annotations"][target], path, how)
            else:
                ok = apply(instances["images"][target], path, how)
            if ok:
                e = expected(kind, required, how)
                if path[-1] in ("sent", "raw") and how in ("delete", "null", "empty"):
                    e = None  # the other of `sent` and `raw` holds the text too
                must = must or bool(e and not deleted_element(path, how))
        (tmp / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
        (tmp / "instances.json").write_text(json.dumps(instances))
        spec = {"format": "refer", "refs": str(tmp / "refs(unc).p"), "instances": str(tmp / "instances.json"),
                "images": str(images)}
        # Records are numbered by sentence: ref r's two sentences are 2r and 2r + 1.
        indices = {2 * target, 2 * target + 1}
        ids = {f"refcoco/{target}/{10 * target}", f"refcoco/{target}/{10 * target + 1}"}  # image problems
        try:
            was_named = check_seganswer(tmp, "refcoco", spec, must, indices, ids, table="referring.parquet")
        except AnnotationError as exc:
            # A broken instances entry id breaks every ref to it: the file fails, naming the entry.
            assert "instances.json" in str(exc) or "refs(unc).p" in str(exc), exc
            was_named = True
    tally.add((where, target, tuple(sorted(map(repr, mutations)))), [how for _, how in mutations],
              "named" if was_named else "imported")


def test_fuzz_refcoco_family():
    tally = Tally("RefCOCO family")
    _fuzz_refer(tally=tally)
    tally.close()


# --------------------------------------------------------- question formats (JSON)

def question_fixture(fmt: str):
    """(records, the field table, image path of record i, the importer's spec keys)."""
    if fmt == "vstar":
        text = "What colour is the car?\n(A) red\n(B) blue\nAnswer with the option's letter."
        recs = [{"question_id": i, "image": f"d/{i}.png", "text": text, "label": "A", "category": "colors"}
                for i in range(4)]
        fields = {("question_id",): ("id", True), ("image",): ("image", True), ("text",): ("enum", True),
                  ("label",): ("enum", True), ("category",): ("category", False),
                  ("options",): ("optional_options", False)}
        return recs, fields, {}
    if fmt == "visualcot":
        recs = [{"id": f"q{i}", "image": [f"cot/gqa/{i}.png", f"cot/gqa/{i}.png###[1, 2, 3, 4]"], "dataset": "gqa",
                 "conversations": [
                     {"from": "human", "value": "<image>\nWhat is the man holding? Please provide the bounding "
                      "box coordinate of the region that can help you answer the question better."},
                     {"from": "gpt", "value": "[0.1, 0.2, 0.3, 0.4]"},
                     {"from": "human", "value": "<image>"},
                     {"from": "gpt", "value": "An umbrella."}]} for i in range(4)]
        fields = {("id",): ("id", False), ("image",): ("image", True), ("image", 0): ("image", True),
                  ("dataset",): ("category", False), ("conversations",): ("always", True),
                  ("conversations", 0): ("always", True), ("conversations", 0, "value"): ("text", True),
                  ("conversations", 3, "value"): ("text", True), ("conversations", 3, "from"): ("always", True)}
        return recs, fields, {}
    recs = [{"id": f"r{i}", "question": "Which shape has four sides?", "answer": "\\boxed{B}",
             "image": [f"images/{i}.png"], "options": ["A. circle", "B. square"], "category": "math"}
            for i in range(4)]
    # "zzz" as the second option is option B: valid
    fields = {("id",): ("id", False), ("question",): ("text", True), ("answer",): ("enum", True),
              ("image",): ("image", True), ("image", 0): ("image", True), ("options",): ("options", False),
              ("options", 1): ("text", True), ("category",): ("category", False)}
    return recs, fields, {"options_key": "options"}


def image_of(fmt: str, rec) -> str:
    image = rec["image"]
    return image[0] if isinstance(image, list) else image


def _fuzz_questions(fmt: str, data, tally):
    recs, fields, keys = question_fixture(fmt)
    target = data.draw(st.integers(0, len(recs) - 1), label="record")
    mutations = data.draw(mutation_strategy(fields, breaks=True), label="mutations")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, outside = tmp / "images", tmp / "outside.png"
        for r in recs:
            (images / image_of(fmt, r)).parent.mkdir(parents=True, exist_ok=True)
            (images / image_of(fmt, r)).write_bytes(png_bytes())
        outside.write_bytes(png_bytes())
        rel = image_of(fmt, recs[target])
        must = False
        for path, how in mutations:
            if path == "image":
                new = break_image(images, rel, how, outside)
                if new is not None:
                    if isinstance(recs[target].get("image"), list) and recs[target]["image"]:
                        recs[target]["image"][0] = new
                    else:
                        recs[target]["image"] = new
                must = True
                continue
            kind, required = fields[path]
            if apply(recs[target], path, how):
                # qa_table without options: an open row, its answer "\boxed{B}" still an answer
                e = expected(kind, required, how)
                must = must or bool(e and not deleted_element(path, how))
        name = {"vstar": "vstar", "visualcot": "visualcot", "qa_table": "virl"}[fmt]
        suffix = ".json" if fmt == "visualcot" else ".jsonl"
        path = tmp / f"{name}{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(recs))
        else:
            path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
        spec = {"format": fmt, "file": str(path), "images": str(images), **keys}
        ids = {{"vstar": f"vstar/{target}", "visualcot": f"visualcot/gqa/q{target}", "qa_table": f"virl/r{target}"}[fmt]}
        was_named = check_seganswer(tmp, name, spec, must, {target}, ids)
    tally.add((target, tuple(sorted(map(repr, mutations)))), [how for _, how in mutations],
              "named" if was_named else "imported")


@FUZZ
@given(data=st.data())
def _fuzz_vstar(data, tally):
    _fuzz_questions("vstar", data, tally)


@FUZZ
@given(data=st.data())
def _fuzz_visualcot(data, tally):
    _fuzz_questions("visualcot", data, tally)


@FUZZ
@given(data=st.data())
def _fuzz_qa_table(data, tally):
    _fuzz_questions("qa_table", data, tally)


def test_fuzz_vstar():
    tally = Tally("V* Bench JSONL")
    _fuzz_vstar(tally=tally)
    tally.close()


def test_fuzz_visualcot():
    tally = Tally("VisualCoT JSON")
    _fuzz_visualcot(tally=tally)
    tally.close()


def test_fuzz_qa_table():
    tally = Tally("ViRL39K-style qa_table JSONL")
    _fuzz_qa_table(tally=tally)
    tally.close()


# ------------------------------------------------------------------- HR-Bench TSV

HR_COLUMNS = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]
# A TSV holds text only: a "type change" is the text of another type's value.
# A deleted cell is a row with too few fields; null is written as an empty cell.
HR_EXPECT = {  # column -> mutations that must be named; a mutation not listed may import
    "index": {"delete", "empty", "null", "list", "dict", "huge_text", "huge_number", "big_int"},  # names a file
    "question": {"delete", "empty", "null"},
    "answer": set(MUTATIONS),                         # only a letter of the options is an answer
    "A": {"delete", "empty", "null"}, "B": {"delete", "empty", "null"}, "C": {"delete"},
    "category": {"delete"}, "cycle_category": {"delete", "empty", "null"}, "image": set(MUTATIONS),
}


def hr_cell(value) -> str:
    return "" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))


@FUZZ
@given(data=st.data())
def _fuzz_hrbench(data, tally):
    png = base64.b64encode(png_bytes()).decode()
    recs = [{"index": i, "question": "What colour is the sign?", "answer": "B", "category": "single",
             "cycle_category": "cycle_1", "A": "red", "B": "blue", "C": "green", "D": "", "image": png}
            for i in range(4)]
    target = data.draw(st.integers(0, 3), label="record")
    column = data.draw(st.sampled_from(sorted(HR_EXPECT)), label="column")
    how = data.draw(st.sampled_from(MUTATIONS + ["truncate", "garbage", "bomb_limit", "bomb_pil"]
                                    if column == "image" else MUTATIONS), label="mutation")
    cells = [[hr_cell(r[c]) for c in HR_COLUMNS] for r in recs]
    col = HR_COLUMNS.index(column)
    if how == "delete":
        del cells[target][col]
    elif how == "truncate":
        cells[target][col] = base64.b64encode(png_bytes()[:40]).decode()
    elif how == "garbage":
        cells[target][col] = base64.b64encode(b"garbage" * 20).decode()
    elif how in ("bomb_limit", "bomb_pil"):
        cells[target][col] = base64.b64encode(bomb_png(12_000, 10_000) if how == "bomb_limit"
                                              else bomb_png(40_000, 40_000)).decode()
    else:
        cells[target][col] = hr_cell(VALUES[how])
    must = how in HR_EXPECT[column] or how in ("truncate", "garbage", "bomb_limit", "bomb_pil")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "hr_bench_4k.tsv"
        path.write_text("\n".join("\t".join(row) for row in [HR_COLUMNS, *cells]) + "\n")
        spec = {"format": "hrbench", "file": str(path)}
        native = cells[target][0] if how != "delete" or column != "index" else None
        was_named = check_seganswer(tmp, "hr", spec, must, {target}, {f"hr/{native}"})
        # The images of the rows that were not imported are not left in the output folder.
        out = tmp / "out_drop_and_report"
        rows = pq.read_table(out / "questions.parquet").to_pylist()
        assert sorted(p.name for p in (out / "images").iterdir()) == sorted(r["image_path"] for r in rows)
    tally.add((target, column, how), [how], "named" if was_named else "imported")


def test_fuzz_hrbench_tsv():
    tally = Tally("HR-Bench TSV")
    _fuzz_hrbench(tally=tally)
    tally.close()


def test_bomb_png_is_what_it_claims(tmp_path):
    (tmp_path / "b.png").write_bytes(bomb_png(12_000, 10_000))
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == (12_000, 10_000)
    assert os.path.getsize(tmp_path / "b.png") < 200
