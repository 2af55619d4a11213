"""Issue 13: SegAnswer pictures at their native resolution.

Hand-computed expectations for: the Qwen2.5-VL processor's grid of a non-square picture
within `seganswer.min_pixels` / `max_pixels` (transformers' smart_resize rules: each side
rounded to a multiple of 28, rescaled by sqrt(area / max_pixels) when above the bound);
an 8K picture under the paper config's bound; masks aligned with the patches, SAM's loss
target and the evaluation's native pixels; M-RoPE positions of whole and segmented
images at non-square, odd merged grids.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import section
from reproseg.config import load_yaml
from reproseg.data.masks import mask_to_rle
from reproseg.seganswer import stage1, stage2
from reproseg.seganswer.model import PixelBounds, SegAnswerModel
from reproseg.seganswer.positions import SequenceBuilder, mask_patch_keep
from reproseg.seganswer.sources.rows import select
from reproseg.seganswer.sources.tables import referring_table
from reproseg.seganswer.workflow_stages import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
W, H = 300, 100          # a 3:1 picture
# smart_resize at [3136, 78400]: round(100 / 28) = 4 -> 112, round(300 / 28) = 11 -> 308;
# 112 * 308 = 34496 lies in the bounds -> patches 8 x 22 of 14 px, merged 4 x 11 (odd).
BOUNDS = PixelBounds(3136, 78400)
GRID = [1, 8, 22]
PIXEL = (60, 250)        # (row, column) of the one mask pixel
# merged row bands of 100 / 4 = 25 px: row 60 -> band 2; column bands of 300 / 11 = 27.27 px:
# band 9 is [floor(245.45), ceil(272.73)) = [245, 273) and holds 250, band 8 ends at 246.
PATCH = 2 * 11 + 9


@pytest.fixture
def picture_rows(tmp_path):
    """One referring record: a 300 x 100 picture (left half red, right half blue), a one-pixel mask."""
    arr = np.zeros((H, W, 3), np.uint8)
    arr[:, : W // 2] = (255, 0, 0)
    arr[:, W // 2:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "p.png")
    mask = np.zeros((H, W), bool)
    mask[PIXEL] = True
    rec = {"id": "t/0", "source": "t", "split": "val", "image_path": "p.png", "width": W, "height": H,
           "rle_counts": mask_to_rle(mask)["counts"], "phrase": "the dot", "category": None}
    pq.write_table(referring_table([rec]), tmp_path / "referring.parquet")
    return select([str(tmp_path / "referring.parquet")], [str(tmp_path)], ["t/val"], "referring")


# -- the processor's grid -------------------------------------------------------------------
def test_a_non_square_picture_keeps_its_aspect_ratio_through_stage_1(seganswer_checkpoint, picture_rows):
    row = picture_rows[0]
    assert row["image"].size == (W, H) and row["mask"].shape == (H, W)  # nothing resized on read
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=BOUNDS)
    ex = stage1.build_stage1_example(model.processor, row)
    assert ex["image_grid_thw"].tolist() == [GRID]
    assert ex["pixel_values"].shape[0] == 8 * 22
    assert ex["input_ids"].tolist().count(model.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 4 * 11
    # The checkpoint's own bounds (its bundle's max_pixels 112 * 112 = 12544) give another grid:
    # 34496 > 12544 -> beta = sqrt(30000 / 12544) = 1.5465; floor(100 / 1.5465 / 28) = 2 -> 56,
    # floor(300 / 1.5465 / 28) = 6 -> 168: patches 4 x 12.
    own = SegAnswerModel.from_pretrained(seganswer_checkpoint)
    assert stage1.build_stage1_example(own.processor, row)["image_grid_thw"].tolist() == [[1, 4, 12]]


def test_the_bounds_are_saved_with_a_checkpoint(seganswer_checkpoint, picture_rows, tmp_path):
    """Stage 3 loads stage 2's checkpoint as it is: its processor must carry the config's bounds."""
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=BOUNDS)
    model.save_pretrained(tmp_path / "saved")
    again = SegAnswerModel.from_pretrained(tmp_path / "saved")
    size = again.processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 78400)
    assert stage1.build_stage1_example(again.processor, picture_rows[0])["image_grid_thw"].tolist() == [GRID]


def test_evaluation_and_selection_load_with_the_config_bounds(seganswer_checkpoint):
    cfg = section("seganswer", {"min_pixels": 3136, "max_pixels": 78400, "eval": {"device": "cpu"}})
    size = load_checkpoint({"dir": str(seganswer_checkpoint)}, cfg).processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 78400)


def test_the_default_sees_its_pictures_with_as_many_tokens_as_before(seganswer_checkpoint):
    """The default's 224 x 126 pictures: 126 / 28 = 4.5 rounds (half to even) to 4 -> 112,
    224 / 28 = 8 -> 224; 112 * 224 = 25088 within [3136, 50176]: patches 8 x 16, 32 tokens,
    the grid the squashed 224 x 126 picture had."""
    cfg = section("seganswer")
    assert (cfg["min_pixels"], cfg["max_pixels"]) == (3136, 50176)
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=PixelBounds.of(cfg))
    out = model.processor.image_processor(images=[Image.new("RGB", (224, 126))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 16]]


def test_an_8k_picture_is_bounded_by_the_paper_max_pixels(seganswer_checkpoint):
    """HR-Bench 8K, 7680 x 4320, at the paper config's [3136, 12845056 = 3584^2]: rounded to
    28 px it is 4312 x 7672 = 33 M > 12.8 M, so each side is divided by
    beta = sqrt(7680 * 4320 / 3584^2): 4320 / beta = 3584 * sqrt(4320 / 7680) = 3584 * 0.75 = 2688
    = 96 * 28; 7680 / beta = 3584 * 4 / 3 = 4778.7 -> floor(170.67) * 28 = 4760. Patches
    192 x 340, 96 x 170 = 16320 visual tokens <= 16384."""
    paper = load_yaml(ROOT / "config" / "paper.yaml")["seganswer"]
    assert (paper["min_pixels"], paper["max_pixels"]) == (3136, 12845056)
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=PixelBounds.of(paper))
    out = model.processor.image_processor(images=[Image.new("RGB", (7680, 4320))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 192, 340]]
    assert 2688 * 4760 <= paper["max_pixels"]


@pytest.mark.parametrize("lo, hi, match", [(0, 10, "min_pixels"), (100, 99, "exceeds"), (3136, 1.5e6, "max_pixels"),
                                           (True, 10, "min_pixels")])
def test_bad_bounds_are_named(lo, hi, match):
    with pytest.raises(ValueError, match=match):
        PixelBounds(lo, hi)


# -- masks ------------------------------------------------------------------------------------
def test_a_mask_pixel_maps_to_its_patch_its_sam_target_and_native_pixels(seganswer_checkpoint, picture_rows):
    row = picture_rows[0]
    assert np.flatnonzero(mask_patch_keep(row["mask"], GRID, 2)).tolist() == [PATCH]
    # SAM 2.1's square input (the checkpoint's 64 px): target (i, j) is native pixel
    # (floor((i + .5) * 100 / 64), floor((j + .5) * 300 / 64)); (60, 250) is hit only by
    # i = 38 (38.5 * 1.5625 = 60.16) and j = 53 (53.5 * 4.6875 = 250.78).
    target = stage1.mask_targets([row["mask"]], 64)[0, 0]
    assert target.sum() == 1 and target[38, 53] == 1
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=BOUNDS)
    assert model.sam_image_features([row["image"]])["orig_hw"] == [(H, W)]
    # the evaluation's masks are at the picture's native pixels
    pred = stage1.predict_masks(model, picture_rows)
    assert pred[0].shape == (H, W)
    # stage 2: the segmented image keeps exactly that patch, at the whole image's position of it
    ex = stage2.build_stage2_example(model.processor, {**row, "question": "q", "answer": "a", "options": None},
                                     row["mask"], stage2.Stage2Settings(learning_rate=1e-3, epochs=1))
    assert ex["image_grid_thw"].tolist() == [GRID, GRID]
    assert np.flatnonzero(ex["image_keeps"][1]).tolist() == [PATCH]
    pad = model.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    pads = (ex["input_ids"] == pad).nonzero()[:, 0]
    assert len(pads) == 4 * 11 + 1
    whole, seg = ex["position_ids"][:, pads[:-1]], ex["position_ids"][:, pads[-1]]
    assert torch.equal(seg, whole[:, PATCH])
    t0 = int(whole[0, 0])
    assert seg.tolist() == [t0, t0 + 2, t0 + 9]  # (t, t + row, t + column) of merged patch (2, 9)


def test_patch_bands_of_an_uneven_division_overlap_by_the_shared_pixel():
    """A 31 x 71 mask on a 3 x 5 merged grid: row bands [0, 11), [10, 21), [20, 31) (31 / 3 =
    10.33), column bands [0, 15), [14, 29), [28, 43), [42, 57), [56, 71) (71 / 5 = 14.2). Row 10
    lies in bands 0 and 1, so its pixel at column 0 touches patches (0, 0) and (1, 0); the
    pixel (30, 70) only (2, 4); (15, 42) touches (1, 2) and (1, 3)."""
    mask = np.zeros((31, 71), bool)
    mask[10, 0] = mask[30, 70] = mask[15, 42] = True
    assert np.flatnonzero(mask_patch_keep(mask, (1, 6, 10), 2)).tolist() == [0, 5, 7, 8, 14]


# -- positions ----------------------------------------------------------------------------------
def test_positions_on_a_3x5_merged_grid():
    b = SequenceBuilder(image_token_id=99, vision_start_id=97, vision_end_id=98, merge_size=2)
    b.add_text([1, 2])            # 0, 1
    b.add_image((1, 6, 10))       # <vs> at 2; patches (3, 3 + r, 3 + c), r < 3, c < 5; counter += max(3, 5)
    b.add_text([4])               # <ve> at 8, then 9
    keep = np.zeros(15, bool)
    keep[[4, 7, 10, 14]] = True   # merged patches (0, 4), (1, 2), (2, 0), (2, 4)
    b.add_segmented_image(0, keep)  # <vs> at 10, the patches at their original ids, <ve> at 11
    b.add_text([6])               # 12
    whole = [[3, 3 + r, 3 + c] for r in range(3) for c in range(5)]
    seg = [[3, 3, 7], [3, 4, 5], [3, 5, 3], [3, 5, 7]]
    assert b.position_ids.T.tolist() == ([[0, 0, 0], [1, 1, 1], [2, 2, 2]] + whole + [[8, 8, 8], [9, 9, 9],
                                         [10, 10, 10]] + seg + [[11, 11, 11], [12, 12, 12]])
    assert b.image_grids.tolist() == [[1, 6, 10], [1, 6, 10]]


def test_positions_on_a_tall_5x3_merged_grid():
    """Rows now outnumber columns: the counter still moves by max(5, 3) = 5."""
    b = SequenceBuilder(image_token_id=99, vision_start_id=97, vision_end_id=98, merge_size=2)
    b.add_image((1, 10, 6), with_markers=False)  # patches (0, r, c), r < 5, c < 3
    b.add_text([4])                               # 5
    keep = np.zeros(15, bool)
    keep[[2, 13]] = True                          # (0, 2), (4, 1)
    b.add_segmented_image(0, keep, with_markers=False)
    b.add_text([6])                               # 6: the segmented image takes no new position
    assert b.position_ids.T.tolist() == ([[0, r, c] for r in range(5) for c in range(3)]
                                         + [[5, 5, 5], [0, 0, 2], [0, 4, 1], [6, 6, 6]])


def test_builder_positions_equal_qwens_own_at_a_non_square_grid(seganswer_checkpoint, picture_rows):
    """Qwen2.5-VL's get_rope_index on the 4 x 11 merged grid gives the builder's positions."""
    model = SegAnswerModel.from_pretrained(seganswer_checkpoint, pixels=BOUNDS)
    row = picture_rows[0]
    ex = stage1.build_stage1_example(model.processor, row)
    messages = stage1.stage1_messages(row["phrase"])
    text = model.processor.apply_chat_template(messages, tokenize=False)
    ref = model.processor(text=[text], images=[row["image"]], return_tensors="pt")
    assert ref["image_grid_thw"].tolist() == [GRID] and ref["input_ids"][0].tolist() == ex["input_ids"].tolist()
    pos, _ = model.lm.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                           image_grid_thw=ref["image_grid_thw"])
    assert torch.equal(pos[:, 0], ex["position_ids"])
