"""The pieces behind Dr. Seg's DAG stages, on hand-computed values: the synthetic fixture,
the raw reward, scoring with a fake SAM2, the tables, and the config's cross checks."""
import copy
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reproseg import config as cfglib
from reproseg.drseg.visionreasoner import evaluate, synthetic, tables
from reproseg.drseg.visionreasoner.inference import template_of
from reproseg.drseg.visionreasoner.rewards import RankedAccuracy, reward_functions
from reproseg.drseg.visionreasoner.task import read_objects

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = cfglib.resolve(cfglib.load_yaml(ROOT / "config" / "config.yaml"))
SCHEMA = cfglib.load_yaml(ROOT / "config" / "schema.yaml")


# ---------------------------------------------------------------- synthetic fixture

def test_training_rows_are_in_the_policy_frame():
    rows = synthetic.records("train", 4, 3, "t", (96, 72), 3, 56)
    again = synthetic.records("train", 4, 3, "t", (96, 72), 3, 56)
    assert [r["solution"] for r in rows] == [r["solution"] for r in again]      # deterministic
    assert rows[0]["solution"] != synthetic.records("train", 1, 3, "other", (96, 72), 3, 56)[0]["solution"]
    for r in rows:
        assert (r["img_width"], r["img_height"]) == (96, 72)
        assert Image.open(io.BytesIO(r["image"]["bytes"])).size == (56, 56)
        objs = read_objects(json.loads(r["solution"]))
        assert 1 <= len(objs) <= 3
        for (x1, y1, x2, y2), (px, py) in zip(objs.boxes, objs.points):
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 56 and x1 <= px <= x2 and y1 <= py <= y2


def test_segmentation_mask_is_the_union_of_the_targets_pixels():
    rng = np.random.default_rng(0)
    image, colour, targets = synthetic.scene(rng, 96, 72, 3)
    pixels = np.asarray(image)
    union = np.logical_or.reduce([m for _, _, m in targets])
    # Every target pixel has the query's colour; each target's mask lies inside its box.
    assert (pixels[union] == synthetic.COLOURS[colour]).all()
    for (x1, y1, x2, y2), _, m in targets:
        ys, xs = np.nonzero(m)
        assert xs.min() >= x1 and xs.max() <= x2 - 1 and ys.min() >= y1 and ys.max() <= y2 - 1
    row = synthetic.records("segmentation", 1, 0, "s", (96, 72), 3, 56)[0]
    assert np.asarray(row["mask"]).shape == (72, 96)
    rec = synthetic.records("rec", 5, 0, "r", (96, 72), 3, 56)
    assert all(r["text"].endswith("shape.") for r in rec)   # a single target
    count = synthetic.records("counting", 5, 0, "c", (96, 72), 3, 56)
    assert all(1 <= r["count"] <= 3 for r in count)


def test_detection_rows_list_every_shape_of_their_colour():
    rows = synthetic.records("detection", 3, 4, "d", (96, 72), 3, 56)
    _, colour, first = synthetic.scene_shapes(synthetic._rng(4, "d"), 96, 72, 3)   # the first picture again
    by_cat = {r["cat_id"]: r for r in rows if r["image_id"] == "00000"}
    present = {synthetic.CATEGORIES[kind] for kind, *_ in first}
    # one row per colour of the picture, each holding every shape of it, and one absent colour
    assert set(by_cat) - present and len(by_cat) == len(present) + 1
    for kind, box, _, mask in first:
        row = by_cat[synthetic.CATEGORIES[kind]]
        assert box in row["bbox"] and row["text"] == f"the {kind} shapes." and row["ann_id"] == str(row["cat_id"])
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box      # the box bounds its shape exactly
    assert sum(len(r["bbox"]) for r in by_cat.values()) == len(first)
    assert all(r["bbox"] == [] for c, r in by_cat.items() if c not in present)
    assert first[0][0] == colour                                           # the query colour's shapes first


# ---------------------------------------------------------------- rewards of the variants

GT = json.dumps([{"bbox_2d": [0, 0, 10, 10], "point_2d": [5, 5]}, {"bbox_2d": [20, 20, 30, 30], "point_2d": [25, 25]}])
# One object, matched to the first GT box: box IoU 50 / 100 = 0.5, point (5, 2) 3 px from
# (5, 5) -> point score 1, count ratio 1 / 2; x = (0.5, 0.5, 1.0).
ANSWER = '<think>x</think><answer>[{"bbox_2d": [0, 0, 10, 5], "point_2d": [5, 2]}]</answer>'


def test_raw_reward_is_the_mean_of_x_and_keeps_the_queue():
    raw = RankedAccuracy("paper", 2048, raw=True)
    assert raw([ANSWER], gt_objects=[GT]) == [pytest.approx((0.5 + 0.5 + 1.0) / 3)]
    assert raw.queue.buffered == 1
    ranked = RankedAccuracy("paper", 2048)
    assert ranked([ANSWER], gt_objects=[GT]) == [1.0]     # first step: ranks against the zero rows


def test_reward_sets_of_the_tables_rows():
    assert sorted(reward_functions(profile="visionreasoner", look_to_confirm=False, distribution_ranked=False)) == [
        "vr/accuracy", "vr/answer_format", "vr/non_repeat", "vr/think"]
    raw = reward_functions(profile="paper", look_to_confirm=True, distribution_ranked=True, raw_accuracy=True)
    assert "vr/raw_accuracy" in raw and "vr/look" in raw and "vr/ranked_accuracy" not in raw
    with pytest.raises(ValueError, match="needs distribution_ranked"):
        reward_functions(profile="paper", look_to_confirm=True, distribution_ranked=False, raw_accuracy=True)
    assert template_of({"look_to_confirm": True}) == "look_to_confirm"
    assert template_of({"look_to_confirm": False}) == "visionreasoner"


# ---------------------------------------------------------------- scoring with a fake SAM2

class BoxSAM:
    """Predicts each prompt's box as its mask (score 1) and a full image (score 0)."""

    def set_image(self, image):
        self.shape = np.asarray(image).shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, **_):
        good = np.zeros(self.shape, bool)
        x1, y1, x2, y2 = (int(v) for v in box)
        good[y1:y2, x1:x2] = True
        return np.stack([np.ones(self.shape, bool), good]), np.array([0.0, 1.0]), None


def test_score_rows_hand_computed(tmp_path):
    from reproseg.data.masks import mask_to_rle

    Image.new("RGB", (10, 8)).save(tmp_path / "a.png")
    gt = np.zeros((8, 10), bool)
    gt[0:4, 0:4] = True                      # 16 px
    seg = {"id": "s", "task": "segmentation", "image_path": "a.png", "width": 10, "height": 8,
           "rle_counts": mask_to_rle(gt)["counts"], "box": [0.0, 0.0, 4.0, 4.0], "count": None}
    seg2 = {**seg, "id": "s2", "box": None}
    cnt = {**seg, "id": "c", "task": "counting", "rle_counts": None, "box": None, "count": 2}
    preds = [
        # pred box [0,0,4,2] -> 8 px inside the GT: I 8, U 16; its box IoU with the GT box 0.5: no hit (> 0.5)
        {"id": "s", "parsed": True, "objects": json.dumps([{"bbox_2d": [0, 0, 4, 2], "point_2d": [1, 1]}])},
        {"id": "s2", "parsed": False, "objects": None},                   # I 0, U 16
        {"id": "c", "parsed": True, "objects": json.dumps([{"bbox_2d": [0, 0, 1, 1], "point_2d": [0, 0]}] * 2)},
    ]
    scores, samples = evaluate.score_rows([seg, seg2, cnt], preds, str(tmp_path), BoxSAM())
    assert [(s["intersection"], s["union"]) for s in samples[:2]] == [(8, 16), (0, 16)]
    assert scores["giou"] == pytest.approx((0.5 + 0.0) / 2) and scores["ciou"] == pytest.approx(8 / 32)
    assert scores["rec_accuracy"] == 0.0 and samples[0]["rec_hit"] is False
    assert scores["count_accuracy"] == 1.0 and samples[2]["count"] == 2
    assert scores["parsed"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no prediction"):
        evaluate.score_rows([seg], [], str(tmp_path), BoxSAM())


def _detection_fixture(tmp_path):
    """The synthetic detection split through its importer, and predictions: the GT boxes of
    each row shifted by 0, 1, 2, ... px, the last GT box of every other row left out, and
    one false positive on each row without GT."""
    from reproseg.drseg.visionreasoner import benchmarks

    src = tmp_path / "det.parquet"
    synthetic.write_source(str(src), "detection", 6, 0, "det", (96, 72), 3, 56)
    out = tmp_path / "imported"
    spec = {"name": "det", "task": "detection", "path": str(src), "split": "test", "on_invalid": "fail"}
    benchmarks.import_stage(spec, str(out / "t.parquet"), str(out / "images"), str(out / "r.json"),
                            str(out / "r.md"), str(out / "log.json"))
    rows = pq.read_table(out / "t.parquet").to_pylist()
    preds = []
    for k, r in enumerate(rows):
        boxes = [[x1 + k % 4, y1, x2 + k % 4, y2] for x1, y1, x2, y2 in r["boxes"]]
        boxes = boxes[:-1] if k % 2 and len(boxes) > 1 else boxes or [[0, 0, 30, 20]]
        objs = [{"bbox_2d": b, "point_2d": [b[0], b[1]]} for b in boxes]
        preds.append({"id": r["id"], "parsed": k != 3, "objects": json.dumps(objs) if k != 3 else None})
    return rows, preds


def test_detection_ap_is_cocoeval_on_the_owners_gt(tmp_path):
    """score_rows' COCO AP against COCOeval run here on a GT written by hand from the rows
    (COCO instances layout: integer image ids, category ids, area w x h, iscrowd 0)."""
    import contextlib

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows, preds = _detection_fixture(tmp_path)
    scores, samples = evaluate.score_rows(rows, preds, str(tmp_path), None)
    gt = {"images": [{"id": int(i), "width": 96, "height": 72} for i in sorted({r["image_id"] for r in rows})],
          "categories": [{"id": c} for c in sorted(synthetic.CATEGORIES.values())], "annotations": []}
    dets = []
    for r, p in zip(rows, preds):
        for x1, y1, x2, y2 in r["boxes"]:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": int(r["image_id"]),
                                      "category_id": r["category_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for o in json.loads(p["objects"]) if p["parsed"] else []:
            x1, y1, x2, y2 = o["bbox_2d"]
            score = (x2 - x1) * (y2 - y1) / (96 * 72) if r["boxes"] else 0.0
            dets.append({"image_id": int(r["image_id"]), "category_id": r["category_id"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.1 < ev.stats[0] < 0.95                       # neither trivial end
    assert scores["coco_ap"] == pytest.approx(ev.stats[0]) and scores["coco_ap50"] == pytest.approx(ev.stats[1])
    assert scores["coco_ap75"] == pytest.approx(ev.stats[2]) and scores["coco_ar100"] == pytest.approx(ev.stats[8])
    assert scores["detections"] == len(dets) and scores["parsed"] == pytest.approx(1 - 1 / len(rows))
    assert [(s["count"], s["gt_count"]) for s in samples[3:4]] == [(0, len(rows[3]["boxes"]))]


def test_coco_image_ids_keep_cocos_own_numbers():
    from reproseg.drseg.visionreasoner.metrics import coco_image_ids

    assert coco_image_ids(["139", "285", "139"]) == {"139": 139, "285": 285}
    assert coco_image_ids(["a", "b", "a"]) == {"a": 1, "b": 2}
    assert coco_image_ids(["1", "01"]) == {"1": 1, "01": 2}     # two names of one number: numbered instead


# ---------------------------------------------------------------- tables

REWARDS = {"profile": "paper", "look_to_confirm": True, "distribution_ranked": True, "queue_size": 2048,
           "raw_accuracy": False}


def run(name, metrics, trained=True, **rewards):
    return {"name": name, "trained": trained, "rewards": {**REWARDS, **rewards}, "metrics": metrics}


SEG = {"RCO testA": {"task": "segmentation", "giou": 0.5}, "RCO+ testA": {"task": "segmentation", "giou": 0.25},
       "RCOg test": {"task": "segmentation", "giou": 0.75}, "toy": {"task": "segmentation", "giou": 0.1},
       "Pixmo test": {"task": "counting", "count_accuracy": 0.4}}


def by_method(rows):
    return {r["method"]: r for r in rows}


def test_table2_our_cells_averages_and_extra_columns():
    rows = by_method(tables.build_table("table2", [run("untrained", SEG, trained=False), run("main", SEG)]))
    ours = rows["ours: main"]
    assert ours["RCO testA"] == 50.0 and ours["RCOg test"] == 75.0 and ours["toy"] == pytest.approx(10.0)
    assert ours["ID avg"] == pytest.approx(50.0)           # (50 + 25 + 75) / 3
    assert ours["OOD avg"] is None and ours["avg"] is None  # ReasonSeg / COCONut not evaluated
    assert "Pixmo test" not in ours                        # a counting set belongs to Table 3
    assert rows["Dr. Seg (paper)"]["toy"] is None and rows["Dr. Seg (paper)"]["ID avg"] == 77.1
    assert "ours: untrained" in rows
    t3 = by_method(tables.build_table("table3", [run("main", SEG)]))
    assert t3["ours: main"]["Pixmo test"] == pytest.approx(40.0) and t3["Dr. Seg (paper)"]["Pixmo test"] == 72.4


def test_table3_coco_column_is_our_ap_beside_the_papers():
    metrics = {"COCO val": {"task": "detection", "coco_ap": 0.25}, "toy det": {"task": "detection", "coco_ap": -1.0}}
    rows = by_method(tables.build_table("table3", [run("untrained", metrics, trained=False), run("main", metrics)]))
    assert rows["ours: main"]["COCO val"] == 25.0 and rows["Dr. Seg (paper)"]["COCO val"] == 40.1
    assert rows["ours: main"]["toy det"] is None             # COCOeval's -1: no GT box at all
    assert rows["VisionReasoner (paper)"]["COCO val"] == 37.7 and rows["ours: untrained"]["COCO val"] == 25.0
    assert "COCO val" not in tables.build_table("table2", [run("main", metrics)])[0]


def test_table7_detection_metrics_beside_the_papers():
    coco = {"task": "detection", "coco_ap": 0.25, "coco_ap50": 0.5, "det_precision": 0.75, "det_recall": 0.5,
            "det_f1": 0.6}
    metrics = {"COCO val": coco, "toy det": {**coco, "coco_ap": -1.0}, "toy": {"task": "segmentation", "giou": 0.1}}
    rows = by_method(tables.build_table("table7", [run("untrained", metrics, trained=False), run("main", metrics)]))
    ours = rows["ours: main"]
    assert [ours[f"COCO val {k}"] for k in ("mAP", "AP@0.5", "P@0.5", "R@0.5", "F1")] == [25.0, 50.0, 75.0, 50.0, 60.0]
    assert ours["toy det mAP"] is None and ours["toy det F1"] == 60.0   # COCOeval's -1 is no number
    assert not any(k.startswith("toy ") and "det" not in k for k in ours)  # a segmentation set is not here
    assert rows["Dr. Seg (paper)"]["COCO val P@0.5"] == 69.6 and rows["Qwen2-VL (paper)"]["COCO val F1"] == 52.5
    assert rows["Dr. Seg (paper)"]["source"] == "paper: Dr. Seg, Table 7" and "ours: untrained" in rows


@pytest.mark.parametrize("rewards, where", [
    ({}, {"table4": (True, True), "table5": False, "table6": 2048}),
    ({"profile": "visionreasoner", "look_to_confirm": False, "distribution_ranked": False},
     {"table4": (False, False)}),
    ({"distribution_ranked": False}, {"table4": (True, False)}),
    ({"look_to_confirm": False}, {"table4": (False, True)}),
    ({"raw_accuracy": True}, {"table5": True}),
    ({"queue_size": 128}, {"table6": 128}),
    ({"queue_size": 128, "look_to_confirm": False}, {}),
])
def test_which_ablation_rows_a_variant_fills(rewards, where):
    assert tables.tables_of({**REWARDS, **rewards}, True) == {"table2": None, "table3": None, "table7": None, **where}
    assert tables.tables_of(REWARDS, False) == {"table2": None, "table3": None, "table7": None}


def test_ablation_row_stands_beside_its_paper_row():
    rows = by_method(tables.build_table("table6", [run("q128", SEG, queue_size=128), run("main", SEG)]))
    assert rows["ours: q128"]["source"] == "ours: q128, beside queue 128 (1 step) (paper)"
    assert rows["queue 8192 (64 steps) (paper)"]["ReasonSeg val"] == 65.2
    assert list(rows)[:4] == [p.method for p in tables.TABLE6.values()]


def test_paper_numbers_are_on_their_cited_lines():
    paper = ROOT.parent / tables.PAPER_FILE   # beside the checkout, where the project keeps the papers
    if not paper.is_file():
        pytest.skip(f"{paper} is not here")
    text = paper.read_text().splitlines()
    groups = [tables.TABLE2, tables.TABLE3, tables.TABLE4.values(), tables.TABLE5.values(), tables.TABLE6.values(),
              tables.TABLE7]
    for row in (r for g in groups for r in g):
        printed = text[row.line - 1].replace("*", "")
        numbers = [float(v) for v in printed.split() if v.replace(".", "", 1).isdigit() and "." in v]
        assert [v for v in row.values.values()] == numbers[-len(row.values):], row.method


# ---------------------------------------------------------------- FineRS with Dr. Seg against Dr. Seg

OFF = {"look_to_confirm": False, "distribution_ranked": False, "profile": "paper", "queue_size": 2048,
       "raw_accuracy": False}
VR_REWARDS = {**REWARDS, "profile": "visionreasoner", "look_to_confirm": False, "distribution_ranked": False}


def finers_metrics(giou, ciou, n):
    return {"samples": n, "segmentation": {"all": {"giou": giou, "ciou": ciou, "n": n}, "s": {"giou": 0.0}}}


def test_comparison_rows_from_hand_made_metrics(tmp_path):
    from reproseg.drseg import comparison

    files = {"fm": finers_metrics(0.5, 0.4, 48), "fd": finers_metrics(0.55, 0.45, 48),
             "dm": {"task": "segmentation", "giou": 0.25, "ciou": 0.2, "n": 4},
             "dv": {"task": "segmentation", "giou": 0.125, "ciou": 0.1, "n": 4}}
    for name, m in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(m))
    path = lambda name: str(tmp_path / f"{name}.json")  # noqa: E731
    runs = [{"branch": "FineRS", "name": "main", "rewards": {"lpr": OFF, "gse": OFF},
             "metrics": {"FineRS-4k test": path("fm")}},
            {"branch": "FineRS", "name": "lpr-drseg", "metrics": {"FineRS-4k test": path("fd")},
             "rewards": {"lpr": {**OFF, "look_to_confirm": True, "distribution_ranked": True}, "gse": OFF}},
            {"branch": "Dr. Seg", "name": "main", "rewards": REWARDS, "metrics": {"RCO testA": path("dm")}},
            {"branch": "Dr. Seg", "name": "drseg-visionreasoner", "rewards": VR_REWARDS,
             "metrics": {"RCO testA": path("dv")}}]
    out = tmp_path / "t"
    comparison.comparison_stage(runs, str(out / "c.parquet"), str(out / "c.md"))
    rows = {r["row"]: r for r in pq.read_table(out / "c.parquet").to_pylist()}
    assert list(rows) == ["FineRS: main, FineRS-4k test", "FineRS: lpr-drseg, FineRS-4k test",
                          "Dr. Seg: main, RCO testA", "Dr. Seg: drseg-visionreasoner, RCO testA"]
    fd = rows["FineRS: lpr-drseg, FineRS-4k test"]
    assert (fd["method"], fd["rewards"]) == ("FineRS with Dr. Seg's rewards", "LPR: LC + DR (queue 2048); GSE: -")
    assert fd["gIoU"] == pytest.approx(55.0) and fd["cIoU"] == pytest.approx(45.0) and fd["samples"] == 48
    assert fd["source"] == f"ours: {path('fd')}"
    assert rows["FineRS: main, FineRS-4k test"]["method"] == "FineRS baseline"
    dm, dv = rows["Dr. Seg: main, RCO testA"], rows["Dr. Seg: drseg-visionreasoner, RCO testA"]
    assert dm["method"] == "Dr. Seg alone (VisionReasoner task)" and dm["gIoU"] == 25.0 and dm["cIoU"] == 20.0
    assert dv["method"] == "VisionReasoner baseline (VisionReasoner task)" and dv["gIoU"] == 12.5
    assert dv["rewards"] == "profile visionreasoner; -"
    md = (out / "c.md").read_text()
    assert "No paper reports this comparison" in md and "paper (" not in md
    assert "The benchmarks differ: FineRS is scored on FineRS-4k test and Dr. Seg on RCO testA" in md
    assert "| FineRS | FineRS with Dr. Seg's rewards | lpr-drseg | LPR: LC + DR (queue 2048); GSE: - | " \
           "FineRS-4k test | 48 | 55.0 | 45.0 |" in md
    assert "No '" not in md                                # every kind of run is there


def test_comparison_names_the_missing_runs():
    from reproseg.drseg import comparison

    runs = [{"branch": "FineRS", "name": "main", "rewards": {"lpr": OFF, "gse": OFF}, "paths": {"val": "v.json"},
             "metrics": {"val": finers_metrics(0.5, 0.5, 2)}},
            {"branch": "Dr. Seg", "name": "main", "rewards": REWARDS, "paths": {"val": "d.json"},
             "metrics": {"val": {"giou": float("nan"), "ciou": 0.5, "n": 0}}}]
    rows = comparison.build_rows(runs)
    assert rows[1]["gIoU"] is None                          # NaN (no sample) is no number
    text = "\n".join(comparison.notes(rows))
    assert "No 'FineRS with Dr. Seg's rewards' row: add an experiment setting finers.lpr.drseg" in text
    assert "No 'VisionReasoner baseline (VisionReasoner task)' row: add drseg-visionreasoner" in text
    assert "The benchmarks differ" not in text             # one name on both sides


# ---------------------------------------------------------------- config cross checks

@pytest.mark.parametrize("change, message", [
    ({"selection": {"data": "synthetic_test"}}, "drseg.selection.data.*evaluated benchmark"),
    ({"selection": {"data": "synthetic_count"}}, "drseg.selection.data.*counting set, not segmentation"),
    ({"train_data": "synthetic_val"}, "drseg.train_data.*segmentation set, not train"),
    ({"train_data": "nope"}, "drseg.train_data.*no source named 'nope'"),
    ({"rewards": {"raw_accuracy": True, "distribution_ranked": False}}, "drseg.rewards.raw_accuracy"),
    ({"eval": {"benchmarks": [{"label": "a", "data": "synthetic_test"}, {"label": "a", "data": "synthetic_rec"}]}},
     "duplicate labels"),
    ({"policy_size": 8}, "drseg.policy_size"),
    ({"selection": {"data": "synthetic_det"}}, "drseg.selection.data.*detection set, not segmentation"),
    ({"sources": {"synthetic_det": {"task": "panoptic"}}}, "task"),
    ({"grpo": {"max_steps": 3, "steps_per_generation": 2}}, "drseg.grpo.max_steps"),
    ({"warmup": {"held_out_every": 1}}, "held_out_every"),
    ({"warmup": {"epochs": 2}}, "epochs"),
])
def test_bad_drseg_setting_is_named(change, message):
    cfg = cfglib.deep_merge(copy.deepcopy(DEFAULT), {"drseg": change})
    with pytest.raises(cfglib.ConfigError, match=message):
        cfglib.validate(cfg, SCHEMA)


def test_finers_sam2_needs_the_finers_warmup():
    cfg = cfglib.deep_merge(copy.deepcopy(DEFAULT), {"finers": {"warmup": {"enabled": False}}})
    with pytest.raises(cfglib.ConfigError, match="drseg.finers_sam2.*finers.warmup.enabled is false"):
        cfglib.validate(cfg, SCHEMA)
    cfglib.validate(cfglib.deep_merge(cfg, {"drseg": {"finers_sam2": False}}), SCHEMA)
