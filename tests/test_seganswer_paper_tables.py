"""SegAnswer's tables in the paper's layouts: every checkpoint beside the paper's numbers, by label."""
import math

import pytest

from reproseg.seganswer import paper_tables as pt


def test_paper_numbers_are_the_papers_rows():
    # seganswer.txt Table 3 and Table 1, SegAnswer rows; Table 1's Qwen2.5-VL-7B row (the base model)
    assert [pt.PAPER_TABLE3[k] for k in ("RefCOCO val", "RefCOCO+ test-B", "RefCOCOg test-u")] == [79.9, 67.5, 76.4]
    assert [pt.PAPER_TABLE1[k] for k in ("V*", "HR-Bench 4K", "HR-Bench 8K")] == [86.4, 74.8, 71.3]
    assert [pt.PAPER_TABLE1_BASE[k] for k in ("V*", "HR-Bench 4K", "HR-Bench 8K")] == [77.5, 68.7, 63.4]


def test_checkpoints_up_to_a_stage():
    assert pt.checkpoints_up_to("stage1") == ["base", "stage1"]
    assert pt.checkpoints_up_to("stage3") == ["base", "stage1", "stage2", "stage3"]
    with pytest.raises(ValueError):
        pt.checkpoints_up_to("base")


def _qa(correct_mc, n_mc, correct_open, n_open, unanswered_mc=0, unanswered_open=0, seg_calls=0):
    def part(c, n, u):
        return {"accuracy": c / n if n else math.nan, "n": n, "correct": c, "unanswered": u}
    return {**part(correct_mc + correct_open, n_mc + n_open, unanswered_mc + unanswered_open),
            "multiple_choice": part(correct_mc, n_mc, unanswered_mc),
            "open": part(correct_open, n_open, unanswered_open), "seg_calls": seg_calls}


def _metrics():
    """Two checkpoints, hand-made: base never answers or segments; stage 1 does."""
    base = {"referring": {"RefCOCO val": {"giou": 0.0, "ciou": 0.0, "n": 4, "n_missing": 4},
                          "shapes test": {"giou": 0.0, "ciou": 0.0, "n": 2, "n_missing": 2}},
            "questions": {"V*": _qa(0, 3, 0, 0, unanswered_mc=3),
                          "shapes test": _qa(0, 2, 0, 2, unanswered_mc=2, unanswered_open=2)}}
    stage1 = {"referring": {"RefCOCO val": {"giou": 0.5, "ciou": 0.25, "n": 4, "n_missing": 1},
                            "shapes test": {"giou": 0.9, "ciou": 0.8, "n": 2, "n_missing": 0}},
              "questions": {"V*": _qa(2, 3, 0, 0, unanswered_mc=1), "shapes test": _qa(1, 2, 2, 2, seg_calls=4)}}
    return {"base": base, "stage1": stage1}


def test_rows_put_each_checkpoint_beside_the_paper():
    rows = pt.table_rows(_metrics())
    by = {r["row"]: r for r in rows}
    assert list(by) == ["RefCOCO val gIoU", "RefCOCO val cIoU", "shapes test gIoU", "shapes test cIoU",
                        "V* accuracy", "shapes test accuracy", "shapes test MC accuracy", "shapes test open accuracy"]
    r = by["RefCOCO val cIoU"]
    assert (r["base"], r["stage1"], r["ours"], r["paper"], r["n"]) == (0.0, 25.0, 25.0, 79.9, 4)
    assert (r["missing_base"], r["missing_stage1"], r["missing"]) == (4, 1, 1)
    assert by["RefCOCO val gIoU"]["paper"] is None and by["shapes test cIoU"]["paper"] is None
    # V* is all multiple choice: one row, the paper's SegAnswer and base-model numbers beside it
    v = by["V* accuracy"]
    assert (v["base"], v["stage1"], v["paper"], v["paper_base"]) == (0.0, 66.7, 86.4, 77.5)
    # a mixed benchmark: all, MC (1 of 2) and open (2 of 2)
    assert [by[f"shapes test {k}"]["stage1"] for k in ("accuracy", "MC accuracy", "open accuracy")] == [75.0, 50.0,
                                                                                                      100.0]
    assert by["shapes test open accuracy"]["missing_base"] == 2 and by["shapes test accuracy"]["missing_base"] == 4
    table = pt.arrow_table(rows)
    assert table.column_names[:7] == ["row", "table", "benchmark", "metric", "paper", "paper_base", "n"]
    assert {"base", "stage1", "ours", "missing_base", "missing_stage1", "missing"} <= set(table.column_names)
    assert "stage2" not in table.column_names


def test_markdown_layouts():
    md = pt.markdown("stage1", pt.table_rows(_metrics()), ["- note"])
    assert "- base (untrained): the base Qwen2.5-VL + SAM 2.1" in md
    assert "| model | RefCOCO val gIoU | RefCOCO val cIoU | shapes test gIoU | shapes test cIoU |" in md
    assert "| SegAnswer (paper, cIoU) | - | 79.9 | - | - |" in md
    assert "| ours: base (untrained) | 0.0 | 0.0 | 0.0 | 0.0 |" in md
    assert "| ours: stage 1 | 50.0 | 25.0 | 90.0 | 80.0 |" in md
    assert "| samples (missing: base / stage 1) | 4 (4 / 1) | 4 (4 / 1) | 2 (2 / 0) | 2 (2 / 0) |" in md
    # Table 1: V* whole, the mixed benchmark as its MC and open parts; Δ of the last checkpoint over base
    assert "| model | V* | shapes test MC | shapes test open |" in md
    assert "| SegAnswer (paper) | 86.4 | - | - |" in md
    assert "| Qwen2.5-VL-7B (paper; SegAnswer's base model) | 77.5 | - | - |" in md
    assert "| ours: stage 1 | 66.7 | 50.0 | 100.0 |" in md
    assert "| ours: Δ stage 1 over base | +66.7 | +50.0 | +100.0 |" in md
    assert "| samples (unanswered: base / stage 1) | 3 (3 / 1) | 2 (2 / 0) | 2 (2 / 0) |" in md
    assert md.rstrip().endswith("- note")


def test_checkpoints_must_share_their_benchmarks():
    m = _metrics()
    del m["stage1"]["referring"]["shapes test"]
    with pytest.raises(ValueError, match="stage1 evaluated"):
        pt.table_rows(m)


def test_the_response_given_rows_have_their_own_table():
    m = _metrics()
    for c, (g, ci) in {"base": (0.2, 0.1), "stage1": (0.9, 0.8)}.items():
        for label in ("RefCOCO val", "shapes test"):
            m[c]["referring"][label]["given"] = {"giou": g, "ciou": ci, "n": m[c]["referring"][label]["n"],
                                                 "n_missing": 0}
    rows = pt.table_rows(m)
    by = {r["row"]: r for r in rows}
    given = by["RefCOCO val cIoU, response given"]
    # the paper's number stands only beside the protocol it used (the model's own answer)
    assert (given["table"], given["base"], given["stage1"], given["paper"]) == ("Table 3, response given", 10.0,
                                                                                 80.0, None)
    assert by["RefCOCO val cIoU"]["paper"] == 79.9
    md = pt.markdown("stage1", rows, [])
    section = md.split("given instead of generated")[1].split("## Table 1")[0]
    assert "| ours: base (untrained) | 20.0 | 10.0 | 20.0 | 10.0 |" in section
    assert "| samples (missing: base / stage 1) | 4 (0 / 0) | 4 (0 / 0) | 2 (0 / 0) | 2 (0 / 0) |" in section
