"""SegAnswer samples: the FineRS splits as normalised tables, then selections read from them."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg.data.masks import polygon_to_rle
from reproseg.seganswer.sources import image_root, import_source
from reproseg.seganswer.sources.finers import phrase_of
from reproseg.seganswer.sources.rows import SampleError, Selection, select


def test_phrase_of():
    assert phrase_of({"answer": "The orange diamond is found.", "question": "Segment the diamond."}) == "orange diamond"
    assert phrase_of({"answer": "", "question": "Segment the red car."}) == "red car"
    assert phrase_of({"answer": "x", "question": "Where is the dog?"}) == "Where is the dog?"


@pytest.fixture
def finers_tables(tmp_path):
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "f.png")
    rle = polygon_to_rle([(0, 0), (20, 0), (20, 10), (0, 10)], 40, 20)["counts"]   # the top-left quarter
    base = {"image_path": "f.png", "width": 40, "height": 20, "rle_counts": rle, "attribute": "colors"}
    train = [dict(base, id="a", task="IS", question="Segment the box.", answer="The blue box is found.",
                  answer_option=None, options=[]),
             dict(base, id="b", task="MVQA", question="Colour?", answer="blue", answer_option="B",
                  options=["red", "blue"]),
             dict(base, id="c", task="OVQA", question="Colour?", answer="blue", answer_option=None, options=[])]
    test = [dict(base, id="d", task="IS", question="Segment the car.", answer="", answer_option=None, options=[])]
    splits = {}
    for name, rows in (("train", train), ("test", test)):
        splits[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.Table.from_pylist(rows), splits[name])
    referring, questions, report = import_source("syn", {"format": "finers"}, images_out=tmp_path / "img",
                                                 finers_splits=splits)
    pq.write_table(referring, tmp_path / "referring.parquet")
    pq.write_table(questions, tmp_path / "questions.parquet")
    return tmp_path, report


def test_finers_source_becomes_normalised_tables(finers_tables):
    d, report = finers_tables
    ref = pq.read_table(d / "referring.parquet").to_pylist()
    assert [(r["id"], r["split"], r["phrase"]) for r in ref] == [("syn/d", "test", "car"), ("syn/a", "train", "blue box")]
    qa = pq.read_table(d / "questions.parquet").to_pylist()
    assert [(q["id"], q["task"], q["answer"], q["options"]) for q in qa] == [
        ("syn/b", "MVQA", "B", ["red", "blue"]), ("syn/c", "OVQA", "blue", None)]
    assert report.total == 4 and not report.problems


def test_selection_reads_one_split_at_native_resolution(finers_tables):
    d, _ = finers_tables
    ref = select([str(d / "referring.parquet")], [str(d)], ["syn/train"], "referring")
    assert len(ref) == 1 and ref[0]["phrase"] == "blue box"
    # Not resized: the mask is the top-left 20 x 10 quarter of the 40 x 20 image.
    m = ref[0]["mask"]
    assert m.shape == (20, 40) and m.sum() == 200 and m[:10, :20].all() and ref[0]["image"].size == (40, 20)
    both = select([str(d / "referring.parquet")], [str(d)], ["syn"], "referring")
    assert [r["id"] for r in both] == ["syn/d", "syn/a"]
    assert [r["id"] for r in select([str(d / "referring.parquet")], [str(d)], ["syn"], "referring", limit=1)] == [
        "syn/d"]
    qa = select([str(d / "questions.parquet")], [str(d)], ["syn/train"], "questions")
    assert [(q["answer"], q["options"]) for q in qa] == [("B", ["red", "blue"]), ("blue", None)]


def test_a_selection_that_matches_nothing_is_named(finers_tables):
    d, _ = finers_tables
    with pytest.raises(ValueError, match="'syn/vall'"):
        select([str(d / "referring.parquet")], [str(d)], ["syn/vall"], "referring")


def test_an_image_that_fails_to_load_names_its_record(finers_tables):
    d, _ = finers_tables
    (d / "f.png").write_bytes(b"not a png")
    rows = select([str(d / "questions.parquet")], [str(d)], ["syn/train"], "questions")
    with pytest.raises(SampleError, match="record syn/b"):
        rows[0]


def test_a_picture_of_another_size_than_its_mask_names_its_record(finers_tables):
    d, _ = finers_tables
    rows = select([str(d / "referring.parquet")], [str(d)], ["syn/train"], "referring")
    Image.new("RGB", (20, 40)).save(d / "f.png")  # transposed: the RLE would land elsewhere
    with pytest.raises(SampleError, match="record syn/a: image f.png is 20x40, its mask 40x20"):
        rows[0]


def test_selection_parsing_and_image_roots():
    assert (Selection.parse("refcoco/testA").source, Selection.parse("refcoco/testA").split) == ("refcoco", "testA")
    assert Selection.parse("vstar").split is None
    assert image_root({"format": "finers"}, "res/data/x/images", "frames") == "frames"
    assert image_root({"format": "hrbench", "file": "h.tsv"}, "res/data/hr/images", "frames") == "res/data/hr/images"
    assert image_root({"format": "refer", "images": "/coco"}, "res/data/r/images", "frames") == "/coco"


@pytest.mark.workflow
def test_paper_config_plans_one_import_per_source_and_the_papers_selections(tmp_path):
    """config/paper.yaml: each SegAnswer stage reads the tables of the paper's datasets."""
    import importlib.util
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_workflow", root / "benchmarks/bench_workflow.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    env = bench.paper_layout(tmp_path)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml",
                          "--config", f"results={tmp_path}/results"],
                         cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", out.stdout + out.stderr):
        m = re.match(r"rule (\w+):", block)
        if m:
            jobs.setdefault(m.group(1), []).append(block)
    imports = sorted(re.search(r"wildcards: source=(\S+)", b).group(1) for b in jobs["seganswer_import_source"])
    assert imports == sorted(["refcoco", "refcoco+", "refcocog", "refclef", "visualcot", "virl39k", "vstar",
                              "hrbench4k", "hrbench8k"])  # not the default's synthetic source

    def inputs(rule):
        return re.search(r"input: (.*)", jobs[rule][0]).group(1)

    stage1 = inputs("seganswer_stage1_projector")
    for name in ("refcoco", "refcoco+", "refcocog", "refclef"):
        assert f"seganswer/data/{name}/referring.parquet" in stage1
    assert "seganswer/data/visualcot/questions.parquet" in inputs("seganswer_stage2_sft")
    assert "seganswer/data/virl39k/questions.parquet" in inputs("seganswer_stage3_dapo")
    ev = inputs("evaluate_seganswer")
    assert "seganswer/data/vstar/questions.parquet" in ev and "seganswer/data/hrbench8k/questions.parquet" in ev


def test_an_image_that_does_not_decode_is_reported_at_import(tmp_path):
    from test_seganswer_source_refer import _good_refs, _write_fixture

    from reproseg.data.annotations import AnnotationError

    spec = _write_fixture(tmp_path, _good_refs())
    spec = {"format": "refer", **{k: v for k, v in spec.items() if k != "name"}}
    png = (tmp_path / "images/img2.png").read_bytes()
    (tmp_path / "images/img2.png").write_bytes(png[: len(png) // 2])  # truncated: the header still reads
    with pytest.raises(AnnotationError, match="refcoco/1/12") as err:
        import_source("refcoco", spec, images_out=tmp_path / "out")
    assert {p["id"] for p in err.value.report.problems} == {"refcoco/1/12", "refcoco/2/13"}
    referring, _, report = import_source("refcoco", {**spec, "on_invalid": "drop_and_report"},
                                         images_out=tmp_path / "out")
    # image 1's two sentences stay; image 2's two are dropped and named
    assert referring.column("id").to_pylist() == ["refcoco/0/10", "refcoco/0/11"]
    d = report.as_dict()
    assert d["by_class"] == {"unreadable_image": 2} and (d["total"], d["valid"]) == (4, 2)
