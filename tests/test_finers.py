"""FineRS stages on stand-in models with known outputs: geometry, retrospective
selection, two-stage inference (mask pasted back), rewards as TRL functions, evaluation."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import section
from reproseg.config import deep_merge
from reproseg.data.masks import polygon_to_rle
from reproseg.finers import prompts as P
from reproseg.finers.evaluate import evaluate_stage
from reproseg.finers.inference import infer_rows
from reproseg.finers.regions import CropFrame, crop_covering, region_to_crop, to_gse
from reproseg.finers.retrospective import choose, select_regions
from reproseg.finers import gse_rewards, lpr_rewards
from reproseg.finers.rewards import profile_for, reward_functions

W, H = 200, 100
BOX = [120.0, 40.0, 130.0, 50.0]          # a 10 x 10 object
CFG = section("finers", {
    "gse_size": [100, 50], "lpr_crop": 40, "region_size": 20, "reward_profile": "paper",
    "lpr": {"gt_points": "centre_jitter", "random_region": True},
    "regions": {"retrospective": True, "n_random": 3, "seed": 0},
    "inference": {"batch_size": 4, "max_new_tokens": 8},
    "prompts": {
        "lpr": {t: "{question}{options} LPR" for t in P.TASK_TYPES},
        "gse": {t: "{question}{options} GSE {region_size}" for t in P.TASK_TYPES},
        "look": "Look.",
    },
})
DRSEG_ON = {"look_to_confirm": True, "distribution_ranked": True}
NO_LOOK = {"gse": False, "lpr": False}


@pytest.fixture
def row(tmp_path):
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "f.png")
    rle = polygon_to_rle([(120, 40), (130, 40), (130, 50), (120, 50)], W, H)
    return {"id": "r1", "image_path": "f.png", "width": W, "height": H, "box": BOX,
            "points_centre_jitter": [[125.0, 45.0], [126.0, 46.0]], "points_inscribed": [[125.5, 45.5]] * 2,
            "task_type": "option", "question": "What colour?", "options": ["red", "blue"],
            "option_letters": ["A", "B"], "answer": "B", "answer_option": "B", "attribute": "colors",
            "size_bucket": "s", "rle_counts": rle["counts"]}


def test_crop_geometry_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = crop_covering(BOX, W, H, 40, rng)
        assert x1 - x0 == pytest.approx(40) and y1 - y0 == pytest.approx(40)
        assert x0 <= 120 and x1 >= 130 and y0 <= 40 and y1 >= 50 and x0 >= 0 and x1 <= W and y1 <= H
    # Centred: the box centre (125, 45) is the crop centre.
    assert crop_covering(BOX, W, H, 40, None) == [105.0, 25.0, 145.0, 65.0]
    frame = CropFrame((105.0, 25.0, 145.0, 65.0), 80)        # shown at 2x
    assert frame.to_input(BOX) == [30.0, 30.0, 50.0, 50.0]
    assert frame.to_original([30.0, 30.0, 50.0, 50.0]) == BOX
    # GSE region [60, 20, 70, 30] at 100x50 is [120, 40, 140, 60] original; min side 40 ->
    # a 40 px square centred on (130, 50): [110, 30, 150, 70].
    assert region_to_crop([60, 20, 70, 30], W, H, [100, 50], 40) == ([110.0, 30.0, 150.0, 70.0], False)
    # A region hanging off the frame is clipped (and counted), then the crop kept inside.
    crop, clipped = region_to_crop([90, 40, 110, 60], W, H, [100, 50], 40)
    assert clipped and crop == [160.0, 60.0, 200.0, 100.0]


def test_choose_best_iou_first_on_ties_centred_when_nothing_overlaps():
    assert choose([0.2, 0.7, 0.7, 0.1], ["random"] * 3 + ["centred"]) == 1
    assert choose([None, 0.0, None, None], ["random"] * 3 + ["centred"]) == 3


def lpr_answer(box, points=((1, 1), (2, 2)), response="B"):
    return ("<think>x</think><answer>" + json.dumps({"bbox": list(box), "points_1": list(points[0]),
                                                     "points_2": list(points[1]), "response": response})
            + "</answer>")


def test_retrospective_selection_with_a_stand_in_lpr(row, tmp_path):
    calls = []

    from reproseg.finers.retrospective import candidates

    crops = [c for _, c in candidates(row, 40, 3, 0)]

    def lpr(images, prompts):
        # In each candidate's input coordinates: candidate 2 gets the GT box exactly
        # (IoU 1), candidate 0 the GT box shifted 5 px right (IoU 50/150), candidate 1 an
        # unparseable answer, the centred one a box 8 px right (IoU 20/180).
        calls.append(len(images))
        shift = {0: 5, 2: 0, 3: 8}
        return [lpr_answer(CropFrame(tuple(c), 40).to_input([BOX[0] + shift[k], BOX[1], BOX[2] + shift[k], BOX[3]]))
                if k in shift else "garbage" for k, c in enumerate(crops)]

    table = select_regions([row], str(tmp_path), CFG, lpr).to_pylist()
    assert calls == [4] and [r["kind"] for r in table] == ["random"] * 3 + ["centred"]
    assert [r["iou"] for r in table] == [pytest.approx(1 / 3), None, pytest.approx(1.0), pytest.approx(1 / 9)]
    assert [r["candidate"] for r in table if r["chosen"]] == [2]
    assert table[2]["lpr_box"] == pytest.approx(BOX)
    assert table[2]["region_gse"] == to_gse(crops[2], W, H, [100, 50])
    off = dict(CFG, regions={**CFG["regions"], "retrospective": False})
    t2 = select_regions([row], str(tmp_path), off, None).to_pylist()
    assert [(r["kind"], r["chosen"]) for r in t2] == [("centred", True)]


class BoxPredictor:
    """Stands in for SAM2: the mask is the prompt box, so the pasted mask is checkable."""

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, box, point_coords=None, point_labels=None, multimask_output=False):
        m = np.zeros(self.shape, bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m[y0:y1, x0:x1] = True
        assert point_labels is not None and list(point_labels) == [1, 1]
        return m[None], np.ones(1), None


def test_two_stage_inference_pastes_the_mask_back(row, tmp_path):
    from reproseg.metrics.segmentation import segmentation_metrics

    gse = lambda images, prompts, n: ['<think>t</think><answer>{"region": [55, 15, 75, 35], "response": "B"}</answer>'] * len(images)  # noqa: E731
    # Region [55,15,75,35] at 100x50 -> [110,30,150,70] original (40 px, no growth). LPR
    # answers in crop input coordinates: the GT box [120,40,130,50] is [10,10,20,20].
    lpr = lambda images, prompts, n: [lpr_answer([10, 10, 20, 20], ((15, 15), (16, 16)))] * len(images)  # noqa: E731
    recs = infer_rows([row], str(tmp_path), CFG, gse, lpr, BoxPredictor(), NO_LOOK)
    rec = recs[0]
    assert rec["status"] == "ok" and rec["crop"] == [110.0, 30.0, 150.0, 70.0]
    assert rec["pred_box"] == BOX and rec["pred_points"] == [[125.0, 45.0], [126.0, 46.0]]
    assert rec["pred_response"] == "B"
    seg = segmentation_metrics([{"id": "r1", "size_bucket": "s",
                                 "gt_rle": {"size": [H, W], "counts": rec["gt_rle"]},
                                 "pred_rle": {"size": [H, W], "counts": rec["pred_rle"]}}])
    assert seg["all"].giou == pytest.approx(1.0)


def test_unparseable_outputs_are_counted_not_raised(row, tmp_path):
    garbage = lambda images, prompts, n: ["{{{"] * len(images)  # noqa: E731
    assert infer_rows([row], str(tmp_path), CFG, garbage, garbage, BoxPredictor(), NO_LOOK)[0]["status"] == "gse_unparsed"
    gse = lambda images, prompts, n: ['<think>t</think><answer>{"region": [55, 15, 75, 35], "response": "B"}</answer>'] * len(images)  # noqa: E731
    rec = infer_rows([row], str(tmp_path), CFG, gse, garbage, BoxPredictor(), NO_LOOK)[0]
    assert rec["status"] == "lpr_unparsed" and rec["pred_rle"] is None


def test_reward_functions_per_term(row):
    fns = reward_functions("lpr", lpr_rewards.TERMS, profile_for("paper", 20))
    assert list(fns) == [f"lpr/{t}" for t in ("box_iou", "box_l1", "point", "format", "think", "response")]
    cols = {"qtype": ["option"], "answer": ["B"], "bbox": [[10, 10, 20, 20]], "points": [[[15, 15], [16, 16]]]}
    perfect = lpr_answer([10, 10, 20, 20], ((15, 15), (16, 16)), "B")
    assert {k: f([perfect], **cols)[0] for k, f in fns.items()} == {k: 1.0 for k in fns}
    off = lpr_answer([10, 10, 20, 31], ((15, 15), (16, 16)), "A")   # IoU 100/210 < 0.5, L1 11/4 = 2.75
    got = {k.split("/")[1]: f([off], **cols)[0] for k, f in fns.items()}
    assert got == {"box_iou": 0.0, "box_l1": 1.0, "point": 1.0, "format": 1.0, "think": 1.0, "response": 0.0}
    gse = reward_functions("gse", gse_rewards.TERMS, profile_for("paper", 20), disabled=["size"])
    assert "gse/size" not in gse and "gse/cover" in gse
    # The size target follows the config: 20 +- 15 x 20/256.
    assert profile_for("paper", 20).size_target == 20 and profile_for("paper", 20).size_tol == pytest.approx(15 * 20 / 256)


def test_evaluate_stage(tmp_path):
    rle = polygon_to_rle([(0, 0), (10, 0), (10, 10), (0, 10)], 20, 20)["counts"]
    half = polygon_to_rle([(0, 0), (5, 0), (5, 10), (0, 10)], 20, 20)["counts"]
    base = {"task_type": "reasoning", "attribute": "colors", "size_bucket": "s", "answer": "red",
            "gt_rle": rle, "height": 20, "width": 20, "gse_completion": "", "region_gse": None,
            "crop": None, "region_clipped": False, "lpr_completion": None, "pred_box": None,
            "pred_points": None, "status": "ok", "gse_seconds": 0.5, "lpr_sam_seconds": 1.5}
    from reproseg.finers.inference import SCHEMA
    rows = [dict(base, id="a", pred_rle=half, pred_response="red"),          # I/U = 50/100
            dict(base, id="b", pred_rle=None, pred_response="blue", status="gse_unparsed", lpr_sam_seconds=None)]
    for i, r in enumerate(rows):
        pq.write_table(pa.Table.from_pylist([r], schema=SCHEMA), tmp_path / f"s{i}.parquet")
    evaluate_stage([str(tmp_path / "s0.parquet"), str(tmp_path / "s1.parquet")], str(tmp_path / "p.parquet"),
                   str(tmp_path / "m.json"), str(tmp_path / "t.parquet"), str(tmp_path / "t.md"), "test")
    m = json.loads((tmp_path / "m.json").read_text())
    # gIoU = (0.5 + 0) / 2; cIoU = (50 + 0) / (100 + 100).
    assert m["segmentation"]["all"]["giou"] == pytest.approx(0.25)
    assert m["segmentation"]["all"]["ciou"] == pytest.approx(0.25)
    assert m["qa"]["ovqa"]["all"] == {"n": 2, "correct": 1, "smoothing": 0.0}
    assert m["status"] == {"ok": 1, "gse_unparsed": 1}
    assert m["seconds_per_image"] == {"GSE": 0.5, "LPR+SAM2": 1.5}
    assert "| Ours (reproduced) |" in (tmp_path / "t.md").read_text()


def test_drseg_options_on_lpr():
    from reproseg.finers.rewards import stage_reward_functions, stage_reward_weights

    cfg = deep_merge(CFG, {"lpr": {"drseg": {**DRSEG_ON, "queue_size": 2048}}})
    fns = stage_reward_functions("lpr", cfg, lpr_rewards.TERMS)
    # The ranked accuracy replaces the hard box/point thresholds, which stay as weight-0
    # monitors (a user's weight wins); LC adds two terms.
    assert sorted(fns) == ["lpr/box_iou", "lpr/box_l1", "lpr/format", "lpr/look", "lpr/non_repeat", "lpr/point",
                           "lpr/ranked_accuracy", "lpr/response", "lpr/think"]
    assert stage_reward_weights("lpr", cfg, fns) == {"lpr/box_iou": 0.0, "lpr/box_l1": 0.0, "lpr/point": 0.0}
    mine = deep_merge(cfg, {"lpr": {"grpo": {"reward_weights": {"lpr/point": 0.5}}}})
    assert stage_reward_weights("lpr", mine, fns) == {"lpr/box_iou": 0.0, "lpr/box_l1": 0.0, "lpr/point": 0.5}
    off = stage_reward_functions("lpr", CFG, lpr_rewards.TERMS)
    assert stage_reward_weights("lpr", CFG, off) is None                 # no Dr. Seg: every term counts
    lc_only = deep_merge(CFG, {"lpr": {"drseg": {"look_to_confirm": True}}})
    assert stage_reward_weights("lpr", lc_only, stage_reward_functions("lpr", lc_only, lpr_rewards.TERMS)) is None
    gone = deep_merge(cfg, {"lpr": {"disabled_rewards": ["box_l1"]}})  # an ablation removes a term outright
    gone_fns = stage_reward_functions("lpr", gone, lpr_rewards.TERMS)
    assert "lpr/box_l1" not in gone_fns and "lpr/box_l1" not in stage_reward_weights("lpr", gone, gone_fns)
    cols = {"qtype": ["option"] * 2, "answer": ["B"] * 2, "bbox": [[10, 10, 20, 20]] * 2,
            "points": [[[15, 15], [16, 16]]] * 2, "gt_objects": [[{"bbox_2d": [10, 10, 20, 20], "point_2d": [15, 15]}]] * 2}
    perfect = ("<think>The sign. <look>a blue square</look></think><answer>"
               '{"bbox": [10, 10, 20, 20], "points_1": [15, 15], "points_2": [16, 16], "response": "B"}</answer>')
    ranked = fns["lpr/ranked_accuracy"]
    # First step: 128 zero rows; x = (1, 1, 1) and x = (0, 0, 0) both rank 1.0 per component.
    assert ranked([perfect, "junk"], **cols) == [1.0, 1.0]
    ranked.on_step_end()
    # Queue: 128 zeros + (1,1,1) + (0,0,0) = 130 rows. Garbage ranks 129/130 on every
    # component (x2 = 0 too: no object for one GT object); perfect ranks 130/130.
    assert ranked(["junk", perfect], **cols) == [pytest.approx(129 / 130), 1.0]
    assert fns["lpr/look"]([perfect, "<think>no look</think><answer>{}</answer>"]) == [1.0, 0.0]
    state = ranked.state_dict()
    again = stage_reward_functions("lpr", cfg, lpr_rewards.TERMS)["lpr/ranked_accuracy"]
    again.load_state_dict(state)
    assert again(["junk"], **{k: v[:1] for k, v in cols.items()}) == [pytest.approx(129 / 130)]


def test_look_prompt_only_when_enabled(row, tmp_path):
    from reproseg.finers.samples import lpr_training_rows

    on = deep_merge(CFG, {"lpr": {"drseg": {"look_to_confirm": True}}})
    text_on = lpr_training_rows([row], str(tmp_path), on, seed=0, look=True)[0]["prompt"][0]["content"]
    text_off = lpr_training_rows([row], str(tmp_path), CFG, seed=0)[0]["prompt"][0]["content"]
    assert text_on == text_off + " Look." and "Options: A. red B. blue" in text_off


def test_reward_functions_pickle_for_the_multi_gpu_launcher():
    import pickle

    from reproseg.finers.rewards import stage_reward_functions

    cfg = deep_merge(CFG, {"lpr": {"drseg": {**DRSEG_ON, "queue_size": 64}}})
    fns = stage_reward_functions("lpr", cfg, lpr_rewards.TERMS)
    back = pickle.loads(pickle.dumps(fns))
    perfect = lpr_answer([10, 10, 20, 20], ((15, 15), (16, 16)), "B")
    cols = {"qtype": ["option"], "answer": ["B"], "bbox": [[10, 10, 20, 20]], "points": [[[15, 15], [16, 16]]],
            "gt_objects": [[{"bbox_2d": [10, 10, 20, 20], "point_2d": [15, 15]}]]}
    assert {k: f([perfect], **cols) for k, f in back.items()} == {k: f([perfect], **cols) for k, f in fns.items()}


def test_training_job_with_two_gpus_launches_one_process_per_gpu(monkeypatch, tmp_path):
    """A job given 2 GPUs by Slurm runs torchrun with 2 processes inside it (not 2 jobs)."""
    import subprocess

    from reproseg.grpo import launch as engine_launch

    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd
            seen["job"] = __import__("pickle").loads((tmp_path / "job.pkl").read_bytes())

        def wait(self, timeout=None):
            return 0

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    engine_launch.run_distributed(tmp_path / "job.pkl", policy_dir="p", dataset_rows=[{"prompt": []}],
                                  reward_fns={}, settings={"deepspeed": "zero3"}, out_dir=str(tmp_path),
                                  log_path=str(tmp_path / "log.parquet"))
    assert "--nproc-per-node=2" in seen["cmd"] and "torch.distributed.run" in seen["cmd"]
    assert seen["job"]["_target"] == "reproseg.grpo.engine:train_grpo"   # what each worker runs
    assert not (tmp_path / "job.pkl").exists()   # removed once the workers are done


def test_region_shards_merge(row, tmp_path):
    from reproseg.finers.retrospective import merge_region_shards

    off = dict(CFG, regions={**CFG["regions"], "retrospective": False})
    rows = [dict(row, id=f"r{i}") for i in range(3)]
    for k in range(2):
        pq.write_table(select_regions(rows[k::2], str(tmp_path), off, None), tmp_path / f"s{k}.parquet")
    merge_region_shards([str(tmp_path / "s0.parquet"), str(tmp_path / "s1.parquet")], str(tmp_path / "all.parquet"))
    assert pq.read_table(tmp_path / "all.parquet").column("id").to_pylist() == ["r0", "r1", "r2"]
    # A sample in two shards has two chosen regions: refused, naming it.
    with pytest.raises(ValueError, match="r0"):
        merge_region_shards([str(tmp_path / "s0.parquet")] * 2, str(tmp_path / "bad.parquet"))


def test_training_rows_hold_image_refs_that_decode_to_the_eager_views(tmp_path):
    """A training row keeps a reference to its frame, not the decoded picture: the rows of a
    4K set stay small in memory and in the multi-GPU job file, and decode to the same pixels."""
    import pickle

    from reproseg.data.images import ImageRef, load_image
    from reproseg.finers.samples import crop_image, gse_image, gse_training_rows, lpr_training_rows
    from reproseg.grpo.engine import _dataset

    w, h = 1920, 1080
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    big = {"id": "b1", "image_path": "big.png", "width": w, "height": h, "box": [900.0, 500.0, 940.0, 530.0],
           "points_centre_jitter": [[920.0, 515.0], [921.0, 516.0]], "points_inscribed": [[920.0, 515.0]] * 2,
           "task_type": "referring", "question": "Segment the car.", "options": None, "option_letters": None,
           "answer": "The car is found.", "answer_option": None}
    cfg = deep_merge(CFG, {"gse_size": [960, 540], "lpr_crop": 512})
    lpr = lpr_training_rows([big], str(tmp_path), cfg, seed=0)
    gse = gse_training_rows([big], {"b1": [0.0, 0.0, 128.0, 128.0]}, str(tmp_path), cfg)
    frame = load_image(tmp_path, "big.png")
    for rows, eager in ((lpr, crop_image(frame, CropFrame(tuple(lpr[0]["crop"]), 512))), (gse, gse_image(frame, cfg))):
        ref = rows[0]["image"]
        assert isinstance(ref, ImageRef)
        assert np.array_equal(np.asarray(ref.open()), np.asarray(eager))
        # what the engine serves is the decoded view
        assert np.array_equal(np.asarray(_dataset(rows)[0]["image"]), np.asarray(eager))
        # a few hundred bytes per row, against 6 MB for the decoded frame
        assert len(pickle.dumps(rows)) < 4000 < w * h * 3


def test_experiment_table_puts_the_papers_rows_beside_ours(tmp_path):
    from reproseg.finers.experiments import experiment_table_stage

    metrics = {"samples": 4, "segmentation": {"all": {"giou": 0.25, "ciou": 0.5}},
               "qa": {"mvqa": {"all": {"correct": 1, "n": 2, "smoothing": 0.0}}, "ovqa": {"all": {"correct": 0, "n": 2, "smoothing": 0.0}}}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    m = str(tmp_path / "m.json")
    experiment_table_stage({"main": {"test": m, "val": m}, "seed-80": {"test": m}, "mine": {"test": m},
                            "no-qa-reward": {"val": m}},
                           str(tmp_path / "t.parquet"), str(tmp_path / "t.md"))
    rows = {(r["experiment"], r["split"]): r for r in pq.read_table(tmp_path / "t.parquet").to_pylist()}
    # FineRS Table 4 (full model, test and val) and Table A3 (seed 80, test), as printed
    assert [rows["main", "test"][f"paper {c}"] for c in ("gIoU", "cIoU", "MVQA", "OVQA")] == [55.1, 46.5, 83.3, 56.7]
    assert rows["main", "val"]["paper gIoU"] == 49.9 and rows["seed-80", "test"]["paper cIoU"] == 47.6
    assert rows["mine", "test"]["paper gIoU"] is None and rows["no-qa-reward", "val"]["paper MVQA"] is None
    assert rows["main", "test"]["gIoU"] == 25.0
    md = (tmp_path / "t.md").read_text()
    assert "| main | test | 4 | 25.0 / 55.1 | 50.0 / 46.5 | 50.0 / 83.3 | 0.0 / 56.7 |" in md
    assert "| mine | test | 4 | 25.0 / - |" in md
