"""SegAnswer rows built from the project's splits."""
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from reproseg.data.masks import polygon_to_rle
from reproseg.seganswer.workflow_stages import phrase_of, question_rows, referring_rows


def test_phrase_of():
    assert phrase_of({"answer": "The orange diamond is found.", "question": "Segment the diamond."}) == "orange diamond"
    assert phrase_of({"answer": "", "question": "Segment the red car."}) == "red car"
    assert phrase_of({"answer": "x", "question": "Where is the dog?"}) == "Where is the dog?"


def test_rows_from_a_split(tmp_path):
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "f.png")
    rle = polygon_to_rle([(0, 0), (20, 0), (20, 10), (0, 10)], 40, 20)["counts"]   # the top-left quarter
    base = {"image_path": "f.png", "width": 40, "height": 20, "rle_counts": rle, "attribute": "colors"}
    rows = [dict(base, id="a", task="IS", question="Segment the box.", answer="The blue box is found.",
                 answer_option=None, options=[]),
            dict(base, id="b", task="MVQA", question="Colour?", answer="B", answer_option="B", options=["red", "blue"]),
            dict(base, id="c", task="OVQA", question="Colour?", answer="blue", answer_option=None, options=[])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    ref = referring_rows(str(tmp_path / "s.parquet"), str(tmp_path), [20, 10])
    assert [r["phrase"] for r in ref] == ["blue box"]
    # Halved: the mask is the top-left 10 x 5 quarter of a 20 x 10 image.
    assert ref[0]["mask"].shape == (10, 20) and ref[0]["mask"].sum() == 50 and ref[0]["mask"][:5, :10].all()
    qa = question_rows(str(tmp_path / "s.parquet"), str(tmp_path), [20, 10])
    assert [(q["answer"], q["options"]) for q in qa] == [("B", ["red", "blue"]), ("blue", None)]
    assert qa[0]["image"].size == (20, 10)
