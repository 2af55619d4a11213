"""SegAnswer question importers (V*, HR-Bench, VisualCoT, generic QA table): parsed
values, every problem class under both policies, and unreadable files."""
import base64
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.data.annotations import AnnotationError
from reproseg.seganswer.sources import QUESTION_FORMATS, WRITES_IMAGES
from reproseg.seganswer.sources.vqa import (IMPORTERS, import_hrbench,
                                            import_qa_table, import_visualcot, import_vstar,
                                            strip_boxed)

VSTAR_TEXT = ("What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) leather\n(D) silk\n"
              "Answer with the option's letter from the given choices directly.")
BOX = " Please provide the bounding box coordinate of the region that can help you answer the question better."


def image_bytes(fmt: str, colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buf, format=fmt)
    return buf.getvalue()


def make_images(root: Path, *rels: str) -> Path:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(image_bytes("PNG"))
    return root


def write_jsonl(path: Path, lines) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def classes(report) -> dict:
    return {(p["class"], p["id"]) for p in report.problems}


# ------------------------------------------------------------------------------ V*

def vstar_rec(qid, **over):
    rec = {"image": "direct_attributes/sa_1.jpg", "text": VSTAR_TEXT, "category": "direct_attributes",
           "question_id": qid, "label": "A"}
    rec.update(over)
    return rec


def vstar_spec(tmp_path, lines):
    images = make_images(tmp_path / "vstar", "direct_attributes/sa_1.jpg", "relative_position/sa_2.jpg")
    return {"name": "vstar", "file": str(write_jsonl(tmp_path / "test_questions.jsonl", lines)),
            "images": str(images)}


def test_vstar_splits_question_options_and_letter(tmp_path):
    rel = vstar_rec(1, image="relative_position/sa_2.jpg", category="relative_position", label="B",
                    text="Is the cup on the left or right side of the dog?\n(A) left\n(B) right\n"
                         "Answer with the option's letter from the given choices directly.")
    table, report = import_vstar(vstar_spec(tmp_path, [vstar_rec(0), rel]))
    assert report.problems == [] and report.total == 2
    assert table.to_pylist() == [
        {"id": "vstar/0", "source": "vstar", "split": "test", "image_path": "direct_attributes/sa_1.jpg",
         "question": "What is the material of the glove?", "answer": "A",
         "options": ["rubber", "cotton", "leather", "silk"], "task": "MVQA", "category": "direct_attributes",
         "cycle_category": None},
        {"id": "vstar/1", "source": "vstar", "split": "test", "image_path": "relative_position/sa_2.jpg",
         "question": "Is the cup on the left or right side of the dog?", "answer": "B",
         "options": ["left", "right"], "task": "MVQA", "category": "relative_position", "cycle_category": None},
    ]


def test_vstar_drop_and_report_names_each_problem(tmp_path):
    lines = [
        vstar_rec(0),
        "{not json",                                                  # line 2
        vstar_rec(2, image="direct_attributes/absent.jpg"),
        vstar_rec(3, text="\n(A) rubber\n(B) cotton\nAnswer with the option's letter."),
        vstar_rec(4, label=""),
        vstar_rec(5, label="E"),
        vstar_rec(6, text="What?\n(A) rubber\nAnswer with the option's letter."),
        vstar_rec(7, text="What?\n(A) rubber\n(A) cotton\nAnswer."),
        vstar_rec(0),
        vstar_rec(9, image=["direct_attributes/sa_1.jpg", "relative_position/sa_2.jpg"]),
        vstar_rec(10, split="x"),
    ]
    table, report = import_vstar(vstar_spec(tmp_path, lines), on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["vstar/0", "vstar/10"]
    assert report.total == 11
    assert classes(report) == {
        ("malformed_record", None), ("missing_image", "vstar/2"), ("empty_question", "vstar/3"),
        ("missing_answer", "vstar/4"), ("bad_options", "vstar/5"), ("bad_options", "vstar/6"),
        ("bad_options", "vstar/7"), ("duplicate_id", "vstar/0"), ("multi_image", "vstar/9")}
    malformed = next(p for p in report.problems if p["class"] == "malformed_record")
    assert malformed["message"].startswith("line 2:")


def test_vstar_fail_names_offending_id(tmp_path):
    spec = vstar_spec(tmp_path, [vstar_rec(0), vstar_rec(5, label="E")])
    with pytest.raises(AnnotationError, match="vstar/5") as info:
        import_vstar(spec)
    assert [p["id"] for p in info.value.report.problems] == ["vstar/5"]


def test_vstar_inline_options(tmp_path):
    lines = [
        # options inline on one line, the instruction on the next
        vstar_rec(0, text="What is the colour of the bag? (A) red (B) dark blue (C) white (D) green\n"
                          "Answer with the option's letter from the given choices directly."),
        # inline, the instruction on the same line; an option holding parentheses
        vstar_rec(1, label="B", text="Is the cup left or right of the dog? (A) left (B) right (of it) "
                                     "Answer with the option's letter from the given choices directly."),
        # today's layout, one option per line, still works
        vstar_rec(2),
        # a separate options field wins over the text
        vstar_rec(3, text="Which animal is it?\nAnswer with the option's letter.", options=["cat", "dog"],
                  label="B"),
        # inline letters out of sequence
        vstar_rec(4, text="What colour? (A) red (C) blue"),
    ]
    table, report = import_vstar(vstar_spec(tmp_path, lines), on_invalid="drop_and_report")
    rows = {r["id"]: r for r in table.to_pylist()}
    assert [(rows[i]["question"], rows[i]["options"], rows[i]["answer"]) for i in ("vstar/0", "vstar/1", "vstar/2",
                                                                                   "vstar/3")] == [
        ("What is the colour of the bag?", ["red", "dark blue", "white", "green"], "A"),
        ("Is the cup left or right of the dog?", ["left", "right (of it)"], "B"),
        ("What is the material of the glove?", ["rubber", "cotton", "leather", "silk"], "A"),
        ("Which animal is it?", ["cat", "dog"], "B"),
    ]
    assert classes(report) == {("bad_options", "vstar/4")}
    assert "A, B, C" in report.problems[0]["message"]


def test_unknown_policy_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="on_invalid"):
        import_vstar(vstar_spec(tmp_path, [vstar_rec(0)]), on_invalid="ignore")


# ------------------------------------------------------------------------ HR-Bench

HR_COLUMNS = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]


def hr_rec(index, img: bytes | str, **over):
    rec = {"index": index, "question": "What colour is the sign?", "answer": "B", "category": "single",
           "cycle_category": "cycle_1", "A": "red", "B": "blue", "C": "green", "D": "",
           "image": img if isinstance(img, str) else base64.b64encode(img).decode()}
    rec.update(over)
    return rec


def write_tsv(path: Path, recs, columns=HR_COLUMNS) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        w.writeheader()
        w.writerows(recs)
    return path


def test_hrbench_tsv_writes_embedded_images_byte_for_byte(tmp_path):
    limit_before = csv.field_size_limit()
    png, jpg = image_bytes("PNG"), image_bytes("JPEG", (0, 90, 200))
    big = png + b"\0" * 200_000  # a field past csv's default 128 kB limit; PNG ignores trailing bytes
    tsv = write_tsv(tmp_path / "hr_bench_4k.tsv",
                    [hr_rec(1, big), hr_rec(2, jpg, answer="A", cycle_category="cycle_2", category="cross")])
    out = tmp_path / "images"
    table, report = import_hrbench({"name": "hrbench_4k", "file": str(tsv)}, images_out=out)
    assert report.problems == [] and report.total == 2
    rows = table.to_pylist()
    assert rows == [
        {"id": "hrbench_4k/1", "source": "hrbench_4k", "split": "test", "image_path": "1.png",
         "question": "What colour is the sign?", "answer": "B", "options": ["red", "blue", "green"],
         "task": "MVQA", "category": "single", "cycle_category": "cycle_1"},
        {"id": "hrbench_4k/2", "source": "hrbench_4k", "split": "test", "image_path": "2.jpg",
         "question": "What colour is the sign?", "answer": "A", "options": ["red", "blue", "green"],
         "task": "MVQA", "category": "cross", "cycle_category": "cycle_2"},
    ]
    for row, expected in zip(rows, (big, jpg)):
        path = (out / row["image_path"]).resolve()
        assert path.parent == out.resolve()
        assert path.read_bytes() == expected
    assert csv.field_size_limit() == limit_before  # the raised limit does not leak


def test_hrbench_parquet_drops_nan_options(tmp_path):
    recs = [hr_rec(7, image_bytes("PNG"), D=float("nan"), C=None, answer="A")]
    path = tmp_path / "hr_bench_8k.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path)
    table, report = import_hrbench({"name": "hr8k", "file": str(path), "split": "val"},
                                   images_out=tmp_path / "img")
    row = table.to_pylist()[0]
    assert (row["id"], row["split"], row["options"], row["answer"], row["image_path"]) == \
        ("hr8k/7", "val", ["red", "blue"], "A", "7.png")
    assert (tmp_path / "img" / "7.png").read_bytes() == image_bytes("PNG")


def test_hrbench_problems_reported_and_no_images_written_for_them(tmp_path):
    png = image_bytes("PNG")
    recs = [hr_rec(1, png), hr_rec(2, base64.b64encode(b"not an image").decode()),
            hr_rec(3, "%%% not base64 %%%"), hr_rec(4, png, answer="D"), hr_rec(1, png),
            hr_rec(5, png, question="  "), hr_rec(6, png, answer="")]
    out = tmp_path / "images"
    spec = {"name": "hr", "file": str(write_tsv(tmp_path / "hr.tsv", recs))}
    table, report = import_hrbench(spec, on_invalid="drop_and_report", images_out=out)
    assert table.column("id").to_pylist() == ["hr/1"]
    assert classes(report) == {("missing_image", "hr/2"), ("missing_image", "hr/3"), ("bad_options", "hr/4"),
                               ("duplicate_id", "hr/1"), ("empty_question", "hr/5"),
                               ("missing_answer", "hr/6")}
    assert "index 2" in next(p["message"] for p in report.problems if p["id"] == "hr/2")
    assert sorted(p.name for p in out.iterdir()) == ["1.png"]
    with pytest.raises(AnnotationError, match="hr/4"):
        import_hrbench(spec, images_out=tmp_path / "again")


def test_hrbench_needs_images_out(tmp_path):
    tsv = write_tsv(tmp_path / "hr.tsv", [hr_rec(1, image_bytes("PNG"))])
    with pytest.raises(ValueError, match="images_out"):
        import_hrbench({"name": "hr", "file": str(tsv)})


def test_hrbench_keeps_category_and_cycle_category(tmp_path):
    png = image_bytes("PNG")
    recs = [hr_rec(1, png, category="single", cycle_category="0"),
            hr_rec(2, png, category="cross", cycle_category="1"),
            hr_rec(3, png, category="cross", cycle_category=" ")]   # the file has the column: a blank is malformed
    spec = {"name": "hr", "file": str(write_tsv(tmp_path / "hr.tsv", recs))}
    table, report = import_hrbench(spec, on_invalid="drop_and_report", images_out=tmp_path / "img")
    assert [(r["id"], r["category"], r["cycle_category"]) for r in table.to_pylist()] == [
        ("hr/1", "single", "0"), ("hr/2", "cross", "1")]
    assert classes(report) == {("malformed_record", "hr/3")}
    assert "cycle_category" in report.problems[0]["message"]
    # a file without the column: null cycles, the category as given
    no_cycle = [c for c in HR_COLUMNS if c != "cycle_category"]
    recs = [{k: v for k, v in hr_rec(5, png, category="cross").items() if k != "cycle_category"}]
    spec = {"name": "hr", "file": str(write_tsv(tmp_path / "hr2.tsv", recs, columns=no_cycle))}
    table, report = import_hrbench(spec, images_out=tmp_path / "img2")
    assert [(r["category"], r["cycle_category"]) for r in table.to_pylist()] == [("cross", None)]


# ----------------------------------------------------------------------- VisualCoT

def cot_rec(rid, question="What is the man holding?", answer="A red umbrella.", **over):
    rec = {"id": rid, "image": ["cot/flickr30k/a.jpg", "cot/flickr30k/a.jpg###[1, 2, 30, 40]"],
           "conversations": [{"from": "human", "value": f"<image>\n{question}{BOX}"},
                             {"from": "gpt", "value": "[0.10, 0.22, 0.35, 0.60]"},
                             {"from": "human", "value": "<image>"},
                             {"from": "gpt", "value": answer}]}
    rec.update(over)
    return rec


def cot_spec(tmp_path, doc, suffix=".json"):
    path = tmp_path / f"viscot{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(doc))
    else:
        write_jsonl(path, doc)
    images = make_images(tmp_path / "cot_images", "cot/flickr30k/a.jpg", "gqa/b.jpg")
    return {"name": "visualcot", "file": str(path), "images": str(images)}


def test_visualcot_conversation_keeps_question_and_final_answer(tmp_path):
    table, report = import_visualcot(cot_spec(tmp_path, [cot_rec("x1")]))
    assert report.problems == []
    assert table.to_pylist() == [
        {"id": "visualcot/flickr30k/x1", "source": "visualcot", "split": "train",
         "image_path": "cot/flickr30k/a.jpg",
         "question": "What is the man holding?", "answer": "A red umbrella.", "options": None,
         "task": "OVQA", "category": "flickr30k", "cycle_category": None}]


def test_visualcot_metadata_jsonl(tmp_path):
    lines = [{"question_id": 11, "question": "Which room is this?" + BOX, "answer": "kitchen",
              "image": "gqa/b.jpg", "dataset": "gqa"},
             {"question": "Is it raining?", "answer": "no", "image": "gqa/b.jpg"}]
    table, report = import_visualcot(cot_spec(tmp_path, lines, ".jsonl"))
    assert report.problems == []
    rows = table.to_pylist()
    assert [(r["id"], r["question"], r["answer"], r["category"], r["task"]) for r in rows] == [
        ("visualcot/gqa/11", "Which room is this?", "kitchen", "gqa", "OVQA"),
        ("visualcot/1", "Is it raining?", "no", None, "OVQA")]


def test_visualcot_problems(tmp_path):
    only_box = cot_rec("x3")
    only_box["conversations"] = only_box["conversations"][:2]
    doc = [cot_rec("x1"), cot_rec("x2", question="  "), only_box,
           cot_rec("x4", image=["cot/flickr30k/absent.jpg"]), cot_rec("x5", conversations="hi"), 42,
           cot_rec("x6", image="../outside.jpg")]
    table, report = import_visualcot(cot_spec(tmp_path, doc), on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["visualcot/flickr30k/x1"]
    assert classes(report) == {("empty_question", "visualcot/flickr30k/x2"),
                               ("missing_answer", "visualcot/flickr30k/x3"),
                               ("missing_image", "visualcot/flickr30k/x4"),
                               ("malformed_record", "visualcot/flickr30k/x5"),
                               ("malformed_record", None), ("unsafe_path", "visualcot/x6")}  # never opened


def test_visualcot_ids_are_namespaced_by_sub_dataset(tmp_path):
    """viscot_363k.json concatenates the per-dataset conversions, each numbering question_id from 0."""
    def llava(qid, dataset, folder, question):
        rec = cot_rec(None, question=question, image=[f"cot/{folder}/a.jpg", f"cot/{folder}/a.jpg###[1, 2, 3, 4]"],
                      dataset=dataset, split="train", question_id=qid)
        del rec["id"]
        return rec

    doc = [llava(0, "flickr30k", "flickr30k", "Q flickr 0?"), llava(1, "flickr30k", "flickr30k", "Q flickr 1?"),
           llava(0, "gqa", "gqa", "Q gqa 0?"),
           llava(0, "textcap", "textvqa", "Q textcap 0?"),   # textcap's images live in cot/textvqa
           llava(0, "textvqa", "textvqa", "Q textvqa 0?")]
    no_field = llava(7, None, "gqa", "Q folder only?")
    del no_field["dataset"]
    doc.append(no_field)
    images = tmp_path / "cot_images"
    make_images(images, "cot/flickr30k/a.jpg", "cot/gqa/a.jpg", "cot/textvqa/a.jpg")
    path = tmp_path / "viscot_363k.json"
    path.write_text(json.dumps(doc))
    table, report = import_visualcot({"name": "visualcot", "file": str(path), "images": str(images)})
    assert report.problems == []
    assert [(r["id"], r["question"], r["category"]) for r in table.to_pylist()] == [
        ("visualcot/flickr30k/0", "Q flickr 0?", "flickr30k"), ("visualcot/flickr30k/1", "Q flickr 1?", "flickr30k"),
        ("visualcot/gqa/0", "Q gqa 0?", "gqa"), ("visualcot/textcap/0", "Q textcap 0?", "textcap"),
        ("visualcot/textvqa/0", "Q textvqa 0?", "textvqa"), ("visualcot/gqa/7", "Q folder only?", "gqa")]
    # a true repeat within one sub-dataset is still a reported duplicate
    path.write_text(json.dumps(doc + [llava(1, "flickr30k", "flickr30k", "again")]))
    with pytest.raises(AnnotationError, match="visualcot/flickr30k/1"):
        import_visualcot({"name": "visualcot", "file": str(path), "images": str(images)})


# ---------------------------------------------------------------- generic QA table

def qa_spec(tmp_path, recs, fmt="jsonl", **keys):
    path = tmp_path / f"qa.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(recs), path)
    else:
        write_jsonl(path, recs)
    images = make_images(tmp_path / "qa_images", "images/1.png", "images/2.png")
    return {"name": "virl", "file": str(path), "images": str(images), **keys}


def test_qa_table_boxed_answers_options_and_open_rows(tmp_path):
    recs = [{"qid": "q1", "question": "<image>Which shape has four sides?", "answer": "\\boxed{B}",
             "image": ["images/1.png"], "choices": ["A. circle", "B. square"], "category": "(GradeSchool) Math"},
            {"qid": "q2", "question": "How many apples?", "answer": "\\boxed{\\frac{1}{2}}",
             "image": "images/2.png", "choices": None},
            {"qid": "q3", "question": "Pick the colour.", "answer": "green", "image": "images/2.png",
             "choices": {"B": "green", "A": "red"}}]
    spec = qa_spec(tmp_path, recs, options_key="choices", id_key="qid")
    table, report = import_qa_table(spec)
    assert report.problems == []
    assert [(r["id"], r["question"], r["answer"], r["options"], r["task"], r["image_path"], r["category"])
            for r in table.to_pylist()] == [
        ("virl/q1", "Which shape has four sides?", "B", ["circle", "square"], "MVQA", "images/1.png",
         "(GradeSchool) Math"),
        ("virl/q2", "How many apples?", "\\frac{1}{2}", None, "OVQA", "images/2.png", None),
        ("virl/q3", "Pick the colour.", "B", ["red", "green"], "MVQA", "images/2.png", None)]


def test_strip_boxed():
    assert strip_boxed("\\boxed{B}") == "B"
    assert strip_boxed("so \\boxed{\\frac{a}{b}}.") == "\\frac{a}{b}"
    assert strip_boxed("42") == "42"
    assert strip_boxed("\\boxed{4") == "\\boxed{4"


def test_qa_table_parquet_problems_under_both_policies(tmp_path):
    good = {"id": "g", "question": "Q?", "answer": "\\boxed{B}", "image": ["images/1.png"], "options": ["x", "y"]}
    recs = [good,
            {**good, "id": "multi", "image": ["images/1.png", "images/2.png"]},
            {**good, "id": "badopt", "answer": "\\boxed{C}"},
            {**good, "id": "oneopt", "options": ["x"]},
            {**good, "id": "noans", "answer": "\\boxed{}"},
            {**good, "id": "noimg", "image": ["images/9.png"]},
            {**good, "id": "noq", "question": ""},
            {**good, "id": "g"}]
    spec = qa_spec(tmp_path, recs, fmt="parquet", options_key="options")
    table, report = import_qa_table(spec, on_invalid="drop_and_report")
    assert table.to_pylist() == [{"id": "virl/g", "source": "virl", "split": "train", "image_path": "images/1.png",
                                  "question": "Q?", "answer": "B", "options": ["x", "y"], "task": "MVQA",
                                  "category": None, "cycle_category": None}]
    assert classes(report) == {("multi_image", "virl/multi"), ("bad_options", "virl/badopt"),
                               ("bad_options", "virl/oneopt"), ("missing_answer", "virl/noans"),
                               ("missing_image", "virl/noimg"), ("empty_question", "virl/noq"),
                               ("duplicate_id", "virl/g")}
    with pytest.raises(AnnotationError, match="virl/multi"):
        import_qa_table(spec)


# ------------------------------------------------------------------ corrupt files

def corrupt_case(tmp_path, kind):
    if kind == "vstar":
        path = tmp_path / "test_questions.jsonl"
        path.write_bytes(b'{"question_id": 0}\n\xff\xfe garbage\n')   # not UTF-8
        return import_vstar, {"name": "vstar", "file": str(path), "images": str(tmp_path)}, path
    if kind == "hrbench_tsv":
        path = tmp_path / "hr_bench_4k.tsv"
        path.write_text("index\tquestion\n1\tq\n")                     # no answer/options/image columns
        return import_hrbench, {"name": "hr", "file": str(path)}, path
    if kind == "hrbench_parquet":
        path = tmp_path / "hr_bench_4k.parquet"
        path.write_bytes(b"PAR1 truncated")
        return import_hrbench, {"name": "hr", "file": str(path)}, path
    if kind == "visualcot":
        path = tmp_path / "viscot.json"
        path.write_text('[{"id": "x1", "conver')
        return import_visualcot, {"name": "cot", "file": str(path), "images": str(tmp_path)}, path
    if kind == "qa_table":
        path = tmp_path / "virl.parquet"
        path.write_bytes(b"\x00" * 64)
        return import_qa_table, {"name": "virl", "file": str(path), "images": str(tmp_path)}, path
    path = tmp_path / "absent.jsonl"
    return import_qa_table, {"name": "virl", "file": str(path), "images": str(tmp_path)}, path


@pytest.mark.parametrize("kind", ["vstar", "hrbench_tsv", "hrbench_parquet", "visualcot", "qa_table", "missing"])
def test_unreadable_file_raises_naming_it(tmp_path, kind):
    importer, spec, path = corrupt_case(tmp_path, kind)
    with pytest.raises(AnnotationError, match=str(path.name)):
        importer(spec, on_invalid="drop_and_report", images_out=tmp_path / "out")


def test_registry():
    assert IMPORTERS == {"vstar": import_vstar, "hrbench": import_hrbench,
                         "visualcot": import_visualcot, "qa_table": import_qa_table}
    # shapes generates its pictures, hrbench decodes them from its file; finers and shapes have their own modules
    assert WRITES_IMAGES == {"hrbench", "shapes"} and set(IMPORTERS) == QUESTION_FORMATS - {"finers", "shapes"}


# ------------------------------------------- every field checked before it is used

def problems_of(report):
    return {(p["record"], p["class"], p["field"]) for p in report.problems}


def test_vstar_wrong_types_are_named_with_their_field(tmp_path):
    lines = [vstar_rec(0), vstar_rec([1]), vstar_rec(2, label=["A"]), vstar_rec(3, category={"a": 1}),
             vstar_rec(4, text=42), vstar_rec(5, image=7), vstar_rec(float("nan")), vstar_rec(7, options=True),
             vstar_rec(8, label=float("inf"))]
    spec = vstar_spec(tmp_path, lines)
    table, report = import_vstar(spec, on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["vstar/0"]
    assert problems_of(report) == {
        (1, "wrong_type", "question_id"), (2, "wrong_type", "label"), (3, "wrong_type", "category"),
        (4, "wrong_type", "text"), (5, "wrong_type", "image"), (6, "wrong_type", "question_id"),
        (7, "bad_options", "options"), (8, "wrong_type", "label")}
    assert all(p["file"] == spec["file"] for p in report.problems)


def test_image_paths_out_of_the_root_are_never_opened(tmp_path):
    spec = vstar_spec(tmp_path, [vstar_rec(0), vstar_rec(1, image="direct_attributes/link.jpg"),
                                 vstar_rec(2, image=str(tmp_path / "secret.png")),
                                 vstar_rec(3, image="direct_attributes/../../secret.png")])
    (tmp_path / "secret.png").write_bytes(image_bytes("PNG"))
    (Path(spec["images"]) / "direct_attributes/link.jpg").symlink_to(tmp_path / "secret.png")
    table, report = import_vstar(spec, on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["vstar/0"]
    assert problems_of(report) == {(i, "unsafe_path", "image") for i in (1, 2, 3)}


def test_qa_table_and_visualcot_wrong_types(tmp_path):
    good = {"id": "g", "question": "Q?", "answer": "B", "image": "images/1.png", "options": ["x", "y"]}
    recs = [good, {**good, "id": "a", "answer": ["B"]}, {**good, "id": float("inf")},
            {**good, "id": "c", "category": {"k": 1}}, {**good, "id": "q", "question": ["Q?"]},
            {**good, "id": "o", "options": {"A": "x", "B": 2}}]
    table, report = import_qa_table(qa_spec(tmp_path, recs, options_key="options"), on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["virl/g"]
    assert problems_of(report) == {(1, "wrong_type", "answer"), (2, "wrong_type", "id"),
                                   (3, "wrong_type", "category"), (4, "wrong_type", "question"),
                                   (5, "bad_options", "options")}
    doc = [cot_rec("x1"), cot_rec("x2", dataset=["gqa"]), cot_rec(float("nan")),
           {"question": "Is it raining?", "answer": [1], "image": "gqa/b.jpg"}]
    table, report = import_visualcot(cot_spec(tmp_path, doc), on_invalid="drop_and_report")
    assert table.column("id").to_pylist() == ["visualcot/flickr30k/x1"]
    assert problems_of(report) == {(1, "wrong_type", "dataset"), (2, "wrong_type", "id"),
                                   (3, "wrong_type", "answer")}


def bomb_png(width, height) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_hrbench_bombs_long_indices_and_undecodable_images(tmp_path):
    from reproseg.seganswer.sources import import_source

    import zlib

    png = image_bytes("PNG")
    # Its pixel data zeroed under a valid CRC: verify() passes it, only the full decode fails.
    i = png.index(b"IDAT")
    n = int.from_bytes(png[i - 4:i], "big")
    zeroed = png[:i + 4] + bytes(n) + zlib.crc32(b"IDAT" + bytes(n)).to_bytes(4, "big") + png[i + 8 + n:]
    recs = [hr_rec(1, png), hr_rec(2, bomb_png(12_000, 10_000)), hr_rec("9" * 300, png), hr_rec(4, zeroed)]
    spec = {"format": "hrbench", "file": str(write_tsv(tmp_path / "hr.tsv", recs)), "on_invalid": "drop_and_report"}
    _, questions, report = import_source("hr", spec, images_out=tmp_path / "out")
    assert questions.column("id").to_pylist() == ["hr/1"]
    assert {(p["record"], p["class"], p["field"]) for p in report.problems} == {
        (1, "image_too_large", "image"), (2, "malformed_record", "index"), ("hr/4", "unreadable_image", "image_path")}
    # Only the imported row's image is left in the folder: the undecodable one is removed.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.png"]
