"""HR-Bench end to end: category and cycle_category from the TSV to the samples, and the
official score (per cycle, then averaged over cycles) in the metrics and the paper table."""
import base64
import csv
import io
import json
import math

import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.seganswer import paper_tables as pt
from reproseg.seganswer.evaluate import hrbench_accuracy, qa_accuracy
from reproseg.seganswer.sources.rows import select
from reproseg.seganswer.sources.vqa import import_hrbench

OPTIONS = ["red", "blue", "green", "white"]


def rec(cycle, category, right, answer="A"):
    """An answered record as answer_questions writes it: right or wrong by its letter."""
    wrong = "B" if answer != "B" else "C"
    return {"question": "q", "answer": answer, "options": OPTIONS, "category": category, "cycle_category": cycle,
            "pred_response": answer if right else wrong}


# Two cycles of unequal size (as a `limit`ed run can give):
#   cycle 0: single 1, 1; cross 0        -> 2/3; single 1, cross 0
#   cycle 1: single 0;    cross 1, 0, 1  -> 2/4; single 0, cross 2/3
RECORDS = [rec("0", "single", True), rec("0", "single", True), rec("0", "cross", False),
           rec("1", "single", False), rec("1", "cross", True), rec("1", "cross", False), rec("1", "cross", True)]


def test_official_score_averages_the_cycles():
    got = hrbench_accuracy(RECORDS)
    assert got["accuracy"] == pytest.approx((2 / 3 + 2 / 4) / 2)             # 7/12, not the pooled 4/7
    assert got["pooled_accuracy"] == pytest.approx(4 / 7)
    assert got["cycles"] == pytest.approx({"0": 2 / 3, "1": 0.5})
    assert got["categories"] == pytest.approx({"cross": (0 + 2 / 3) / 2, "single": (1 + 0) / 2})
    # the overall score is not the mean of the category scores (5/12) either
    assert got["accuracy"] != pytest.approx(sum(got["categories"].values()) / 2)
    assert got["scoring"] == "hrbench"


def test_a_category_missing_from_a_cycle_is_averaged_over_the_cycles_that_hold_it():
    records = [rec("0", "single", True), rec("0", "cross", True), rec("1", "single", False)]
    got = hrbench_accuracy(records)
    assert got["accuracy"] == pytest.approx((1 + 0) / 2)
    assert got["categories"] == pytest.approx({"cross": 1.0, "single": 0.5})


def test_qa_accuracy_uses_the_official_score_only_for_hrbench_records():
    got = qa_accuracy(RECORDS)
    assert (got["n"], got["correct"], got["unanswered"]) == (7, 4, 0)
    assert got["accuracy"] == pytest.approx(7 / 12) and got["categories"]["single"] == pytest.approx(0.5)
    # other benchmarks (no cycle_category) and pools of several sources: correct / n, as before
    plain = [{**r, "cycle_category": None} for r in RECORDS]
    assert qa_accuracy(plain) == {"accuracy": pytest.approx(4 / 7), "n": 7, "correct": 4, "unanswered": 0}
    mixed = qa_accuracy(RECORDS + plain[:1])
    assert mixed["accuracy"] == pytest.approx(5 / 8) and "categories" not in mixed
    assert math.isnan(qa_accuracy([])["accuracy"])


def test_hrbench_metrics_render_in_the_paper_table():
    def metrics(records):
        # what workflow_stages.evaluate_stage writes, through JSON as the table job reads it
        m = {**qa_accuracy(records), "multiple_choice": qa_accuracy([r for r in records if r.get("options")]),
             "open": qa_accuracy([r for r in records if not r.get("options")]), "seg_calls": 0}
        return json.loads(json.dumps({"referring": {}, "questions": {"HR-Bench 4K": m}}))

    base = metrics([{**r, "pred_response": None} for r in RECORDS])
    stage1 = metrics(RECORDS)
    assert stage1["questions"]["HR-Bench 4K"]["categories"] == pytest.approx({"cross": 1 / 3, "single": 0.5})
    rows = pt.table_rows({"base": base, "stage1": stage1})
    assert [r["row"] for r in rows] == ["HR-Bench 4K accuracy"]
    r = rows[0]
    assert (r["base"], r["stage1"], r["paper"], r["paper_base"], r["n"], r["missing_base"]) == \
        (0.0, 58.3, 74.8, 68.7, 7, 7)
    md = pt.markdown("stage1", rows, [])
    assert "| ours: stage 1 | 58.3 |" in md


def test_category_and_cycle_reach_the_samples(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    tsv = tmp_path / "hr_bench_4k.tsv"
    columns = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]
    with tsv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        w.writeheader()
        for index, (category, cycle) in enumerate([("single", "0"), ("cross", "0"), ("single", "1")]):
            w.writerow({"index": index, "question": "What colour is it?", "answer": "B", "category": category,
                        "cycle_category": cycle, "A": "red", "B": "green", "C": "blue", "D": "white",
                        "image": image})
    images = tmp_path / "images"
    table, report = import_hrbench({"name": "hr4k", "file": str(tsv)}, images_out=images)
    assert report.problems == []
    pq.write_table(table, tmp_path / "questions.parquet")
    rows = select([str(tmp_path / "questions.parquet")], [str(images)], ["hr4k"], "questions")
    assert [(s["id"], s["category"], s["cycle_category"], s["answer"]) for s in rows] == [
        ("hr4k/0", "single", "0", "B"), ("hr4k/1", "cross", "0", "B"), ("hr4k/2", "single", "1", "B")]
