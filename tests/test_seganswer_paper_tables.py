"""SegAnswer's tables in the paper's layouts: our numbers beside the paper's, by label."""
import math

from reproseg.seganswer import paper_tables as pt


def test_paper_numbers_are_the_papers_segAnswer_rows():
    # seganswer.txt Table 3 and Table 1, SegAnswer rows
    assert [pt.PAPER_TABLE3[k] for k in ("RefCOCO val", "RefCOCO+ test-B", "RefCOCOg test-u")] == [79.9, 67.5, 76.4]
    assert [pt.PAPER_TABLE1[k] for k in ("V*", "HR-Bench 4K", "HR-Bench 8K")] == [86.4, 74.8, 71.3]


def test_long_rows_put_the_paper_beside_our_ciou_and_accuracy():
    ref = {"RefCOCO val": {"giou": 0.5, "ciou": 0.25, "n": 4, "n_missing": 1},
           "synthetic test": {"giou": 0.0, "ciou": 0.0, "n": 2, "n_missing": 2}}
    qa = {"V*": {"accuracy": 2 / 3, "n": 3, "unanswered": 1}, "synthetic test": {"accuracy": math.nan, "n": 0,
                                                                                  "unanswered": 0}}
    rows = pt.long_rows(ref, qa)
    by = {(r["benchmark"], r["metric"]): r for r in rows}
    assert by[("RefCOCO val", "gIoU")]["ours"] == 50.0 and by[("RefCOCO val", "gIoU")]["paper"] is None
    assert by[("RefCOCO val", "cIoU")]["ours"] == 25.0 and by[("RefCOCO val", "cIoU")]["paper"] == 79.9
    assert by[("synthetic test", "cIoU")]["paper"] is None
    assert by[("V*", "accuracy")]["ours"] == 66.7 and by[("V*", "accuracy")]["paper"] == 86.4
    assert by[("synthetic test", "accuracy")]["ours"] is None  # no questions: no number, not 0
    table = pt.arrow_table(rows)
    assert table.num_rows == 6 and table.column_names[0] == "row"
    assert table.column("row").to_pylist()[:2] == ["RefCOCO val gIoU", "RefCOCO val cIoU"]

    md = pt.markdown("stage1", rows, ["- note"])
    assert "| model | RefCOCO val | synthetic test |" in md
    assert "| SegAnswer (paper, cIoU) | 79.9 | - |" in md
    assert "| ours, gIoU | 50.0 | 0.0 |" in md and "| ours, cIoU | 25.0 | 0.0 |" in md
    assert "| samples (missing) | 4 (1) | 2 (2) |" in md
    assert "| SegAnswer (paper) | 86.4 | - |" in md and "| ours | 66.7 | - |" in md
    assert md.rstrip().endswith("- note")
