"""SegAnswer on the tiny offline bundle: positions vs Qwen's own, mask path, save/load, LoRA merge,
stage 1/2 steps, and a scripted multi-turn rollout."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from conftest import section
from reproseg.models.tiny_bundle import build_tiny_bundle
from reproseg.seganswer import stage1, stage2, synthetic
from reproseg.seganswer.evaluate import giou_ciou, qa_accuracy
from reproseg.seganswer.model import SegAnswerModel, merge_lora
from reproseg.seganswer.positions import build_conversation
from reproseg.seganswer.rollout import RolloutSettings, banned_token_ids, mask_banned, rollout_row

SPEC = {"hidden_size": 64, "sam2_image_size": 64, "vocab_size": 400, "max_pixels": 112 * 112}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("seganswer") / "tiny"
    build_tiny_bundle(out, SPEC, ["segment the red square", "what color is the circle"], seed=0)
    return out


@pytest.fixture(scope="module")
def model(bundle):
    m = SegAnswerModel.from_base(bundle / "qwen", bundle / "sam2", seed=0)
    m.eval()
    return m


def _inputs(model, row):
    image = row["image"]
    vision = model.processor.image_processor(images=[image], return_tensors="pt")
    b = build_conversation(model.processor, stage1.stage1_messages(row["phrase"]),
                           [("whole", vision["image_grid_thw"][0])])
    return b, vision


def test_builder_positions_equal_qwens_own(model):
    row = synthetic.seg_rows(1, seed=3)[0]
    b, vision = _inputs(model, row)
    text = model.processor.apply_chat_template(stage1.stage1_messages(row["phrase"]), tokenize=False)
    ref = model.processor(text=[text], images=[row["image"]], return_tensors="pt")
    assert ref["input_ids"][0].tolist() == b.ids
    pos, _ = model.lm.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                           image_grid_thw=ref["image_grid_thw"])
    assert torch.equal(pos[:, 0], b.position_ids)


def test_seg_token_drives_the_mask_decoder_and_the_gradient_reaches_the_projector(model):
    row = synthetic.seg_rows(1, seed=1)[0]
    b, vision = _inputs(model, row)
    feats = model.sam_image_features([row["image"]])
    model.projector.zero_grad(set_to_none=True)
    out = model(b.input_ids[None], None, b.position_ids[:, None], vision["pixel_values"], vision["image_grid_thw"],
                sam_feats=feats)
    seg_pos = b.ids.index(model.seg_token_id)
    assert out.seg_index.tolist() == [[0, seg_pos]]
    low = 64 // 4  # SAM's low-res masks are a quarter of its input size
    assert out.mask_logits.shape == (1, 1, low, low)
    assert out.prompts.shape == (1, 1, 256) and out.iou_pred.shape == (1, 1) and out.object_logits.shape == (1, 1)
    h, w = np.asarray(row["mask"]).shape
    assert model.upsample_masks(out.mask_logits, (h, w)).shape == (1, 1, h, w)
    (out.mask_logits.sum() + out.iou_pred.sum()).backward()
    grad = model.projector.fc1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.projector.zero_grad(set_to_none=True)


def test_stage1_phases_save_reload_and_lora_merge(model, bundle, tmp_path):
    rows = synthetic.seg_rows(2, seed=0)
    a_dir = stage1.train_stage1_projector(bundle / "qwen", bundle / "sam2", rows, tmp_path / "a",
                                          stage1.Stage1Settings.phase_a(batch_size=2, max_steps=1),
                                          log_path=tmp_path / "a.parquet")
    b_dir = stage1.train_stage1_lora(a_dir, rows, tmp_path / "b",
                                     stage1.Stage1Settings.phase_b(batch_size=2, max_steps=1, learning_rate=5e-2),
                                     log_path=tmp_path / "b.parquet")
    assert (b_dir / "lora" / "adapter_config.json").is_file()
    m_dir = merge_lora(b_dir, tmp_path / "merged")
    assert not (m_dir / "lora").exists()

    fresh_proj = model.projector.fc1.weight
    phase_a = SegAnswerModel.from_pretrained(a_dir)
    assert not torch.equal(phase_a.projector.fc1.weight, fresh_proj)  # the projector trained
    lm0 = dict(model.lm.named_parameters())
    assert all(torch.equal(p, lm0[n]) for n, p in phase_a.lm.named_parameters())  # the LM did not

    unmerged = SegAnswerModel.from_pretrained(b_dir).eval()
    merged = SegAnswerModel.from_pretrained(m_dir).eval()
    row = synthetic.seg_rows(1, seed=5)[0]
    b, vision = _inputs(merged, row)
    feats = merged.sam_image_features([row["image"]])
    args = (b.input_ids[None], None, b.position_ids[:, None], vision["pixel_values"], vision["image_grid_thw"])
    with torch.no_grad():
        o_u = unmerged(*args, sam_feats=feats)
        o_m = merged(*args, sam_feats=feats)
        o_a = phase_a.eval()(*args, sam_feats=feats)
    assert not torch.allclose(o_u.logits, o_a.logits, atol=1e-4)  # LoRA changed the model
    torch.testing.assert_close(o_m.logits, o_u.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(o_m.mask_logits, o_u.mask_logits, atol=1e-5, rtol=0)

    # save -> load round trip of the merged model gives the same outputs
    merged.save_pretrained(tmp_path / "again")
    again = SegAnswerModel.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        o_r = again(*args, sam_feats=feats)
    torch.testing.assert_close(o_r.logits, o_m.logits, atol=0, rtol=0)
    torch.testing.assert_close(o_r.mask_logits, o_m.mask_logits, atol=0, rtol=0)


def test_stage2_example_trains_only_assistant_tokens(model):
    row = synthetic.qa_rows(1, seed=2)[0]
    s = stage2.Stage2Settings()
    ex = stage2.build_stage2_example(model.processor, row, row["mask"], s)
    tok = model.processor.tokenizer
    trained = tok.decode(ex["input_ids"][ex["labels"] != -100])
    assert trained == s.seg_response + "<|im_end|>" + s.answer_response.format(answer=row["answer"]) + "<|im_end|>"
    keep = ex["image_keeps"][1]
    n_img = int((ex["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_img == keep.size + keep.sum() and 0 < keep.sum() < keep.size
    loss = stage2.stage2_step_loss(model, [row], s)
    assert torch.isfinite(loss)


def test_scripted_rollout_inserts_the_segmented_patches_and_masks_observations(model):
    tok = model.processor.tokenizer
    turn1 = tok("look <|seg|>.<|im_end|>", add_special_tokens=False)["input_ids"]
    turn2 = tok("<answer>B</answer><|im_end|>", add_special_tokens=False)["input_ids"]
    script = iter(turn1 + turn2)
    row = synthetic.qa_rows(1, seed=4)[0]  # 56x84 image -> 4x6 patches -> 2x3 merged
    mask = np.zeros((56, 84), bool)
    mask[5, 5] = mask[40, 70] = True  # merged patches (0, 0) and (1, 2)

    def fixed_masks(seg_hidden, feats, idx):  # a mask decoder that returns `mask`
        low = torch.nn.functional.interpolate(torch.from_numpy(mask).float()[None, None], size=(56, 84))
        return None, (low * 20 - 10).expand(seg_hidden.shape[0], -1, -1, -1), None, None

    original = model.upsample_masks
    model.decode_masks = fixed_masks
    model.upsample_masks = lambda low, hw: low
    try:
        r = rollout_row(model, row, 1, RolloutSettings(max_turns=3, max_turn_tokens=20),
                        sampler=lambda logits, done: next(script))[0]
    finally:
        del model.decode_masks
        model.upsample_masks = original
    assert r.answered and r.answer == "B" and r.seg_calls == 1 and len(r.turns) == 2
    assert np.flatnonzero(r.keeps[1]).tolist() == [0, 5]
    comp = r.completion_ids
    lm = r.completion_policy_mask
    n1, n2 = len(turn1), len(turn2)
    assert comp[:n1] == turn1 and comp[-n2:] == turn2
    assert lm[:n1] == [1] * n1 and lm[-n2:] == [1] * n2 and set(lm[n1:-n2]) == {0}
    obs = tok.decode(comp[n1:-n2])
    assert obs.count("<|image_pad|>") == 2 and "<|im_start|>user" in obs and obs.endswith("<|im_start|>assistant\n")
    # the inserted patches sit at the original image's positions of patches (0, 0) and (1, 2)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    img_pos = [i for i, t in enumerate(r.ids) if t == pad]
    orig, seg = img_pos[:6], img_pos[6:]
    assert r.positions[:, seg].T.tolist() == r.positions[:, [orig[0], orig[5]]].T.tolist()
    # the log-probs seen while sampling equal those of one forward over the finished sequence
    with torch.no_grad():
        logits, _, _ = model.lm_forward(torch.tensor(r.ids)[None], None, r.positions[:, None],
                                        torch.cat(r.pixel_values), torch.cat(r.grids), r.keeps)
    lp = torch.log_softmax(mask_banned(logits[0].float(), banned_token_ids(tok)), -1)
    gen = [i for i in range(r.prompt_len, len(r.ids)) if r.policy_mask[i]]
    full = [float(lp[i - 1, r.ids[i]]) for i in gen]
    assert np.allclose(full, r.sample_logps, atol=1e-4)


def test_metrics_helpers():
    gt = [np.array([[1, 1], [0, 0]], bool), np.zeros((2, 2), bool)]
    pred = [np.array([[1, 0], [1, 0]], bool), np.zeros((2, 2), bool)]
    m = giou_ciou(pred, gt)
    # sample 1: I = 1, U = 3; sample 2: both empty -> IoU 1 (LISA rule), I = U = 0
    assert m["giou"] == pytest.approx((1 / 3 + 1) / 2) and m["ciou"] == pytest.approx(1 / 3)
    m2 = giou_ciou([None, gt[1]], gt)
    assert m2["n_missing"] == 1 and m2["giou"] == pytest.approx(0.5)
    recs = [{"answer": "B", "options": ["r", "b"], "pred_response": "B"},
            {"answer": "A", "options": ["r", "b"], "pred_response": None},
            {"answer": "blue", "pred_response": "Blue."}]
    assert qa_accuracy(recs) == {"accuracy": pytest.approx(2 / 3), "n": 3, "correct": 2, "unanswered": 1}


def test_ensure_seg_token_adds_a_missing_token(bundle):
    from reproseg.models.loading import load_policy
    from reproseg.seganswer.model import ensure_seg_token

    lm, processor = load_policy(bundle / "qwen")
    tok = processor.tokenizer
    assert ensure_seg_token(lm, processor) == tok.convert_tokens_to_ids("<|seg|>")  # present: unchanged
    n = len(tok)
    tid = ensure_seg_token(lm, processor, "<|newseg|>")
    assert tid == n and tok("a <|newseg|>", add_special_tokens=False)["input_ids"][-1] == tid
    emb = lm.get_input_embeddings().weight
    assert emb.shape[0] == n + 1
    torch.testing.assert_close(emb[tid], emb[:n].mean(0))


def test_batched_rollouts_equal_single_rollouts(model):
    """Lockstep decoding of several rollouts (different prompts, lengths, segmentation turns) gives
    exactly what each gets alone."""
    from reproseg.seganswer.rollout import prepare_prompt, rollout_batch, rollout_one
    from reproseg.seganswer.prompts import reasoning_messages

    tok = model.processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def script(force_seg):
        def pick(logits, done):
            if force_seg and not done:
                return model.seg_token_id
            if force_seg and len(done) == 1:
                return end
            return int(logits.argmax())
        return pick

    rows = synthetic.qa_rows(2, seed=7)
    prompts = [prepare_prompt(model, rows[0]["image"], reasoning_messages(rows[0]["question"], rows[0]["options"])),
               prepare_prompt(model, rows[1]["image"], reasoning_messages("What is it?"))]
    order = [0, 1, 0]
    force = [True, True, False]
    s = RolloutSettings(max_turns=3, max_turn_tokens=7, max_completion_tokens=80)
    together = rollout_batch(model, [prompts[k] for k in order], s, samplers=[script(f) for f in force])
    for k, f, r in zip(order, force, together):
        alone = rollout_one(model, prompts[k], s, sampler=script(f))
        assert r.ids == alone.ids and r.policy_mask == alone.policy_mask
        assert torch.equal(r.positions, alone.positions)
        assert np.allclose(r.sample_logps, alone.sample_logps, atol=1e-4)
        assert r.seg_calls == alone.seg_calls == (1 if f else 0)


def test_evaluation_runs_end_to_end(model):
    from reproseg.seganswer.evaluate import answer_questions, evaluate_referring

    seg = evaluate_referring(model, synthetic.seg_rows(2, seed=8), max_new_tokens=4)
    assert seg["n"] == 2 and 0.0 <= seg["giou"] <= 1.0
    recs = answer_questions(model, synthetic.qa_rows(2, seed=9), max_turns=2, max_turn_tokens=4)
    assert len(recs) == 2 and qa_accuracy(recs)["n"] == 2


def test_refcoco_fixture_trains_stage1_through_the_import_and_selection(bundle, tmp_path):
    """The paper config's path: a RefCOCO-format source -> normalised table -> a phase-a step."""
    import json as _json

    from test_seganswer_source_refer import _good_refs, _write_fixture

    from reproseg.seganswer.sources import import_stage
    from reproseg.seganswer.sources.rows import select

    (tmp_path / "refcoco").mkdir()
    spec = _write_fixture(tmp_path / "refcoco", _good_refs())
    spec = {"format": "refer", **{k: v for k, v in spec.items() if k != "name"}}
    out = tmp_path / "data"
    import_stage("refcoco", spec, out / "referring.parquet", out / "questions.parquet", out / "images",
                 out / "report.json", out / "report.md", out / "log.json")
    report = _json.loads((out / "report.json").read_text())
    assert (report["total"], report["invalid"]) == (4, 0)
    rows = select([str(out / "referring.parquet")], [spec["images"]], ["refcoco/train"], "referring")
    # ref 0 has two sentences; the second falls back to its raw text
    assert [r["phrase"] for r in rows] == ["man on left", "the person"]
    # The 4 x 3 box (x 2..5, y 2..4) of the 10 x 8 image, at the image's own pixels.
    m = rows[0]["mask"]
    assert m.shape == (8, 10) and m.sum() == 4 * 3 and m[2:5, 2:6].all() and rows[0]["image"].size == (10, 8)
    # SAM's 64 x 64 loss target, nearest (pixel centres): rows i with 2 <= (i + .5) * 8/64 < 5
    # -> 16..39, columns j with 2 <= (j + .5) * 10/64 < 6 -> 13..37.
    t = stage1.mask_targets([m], 64)[0, 0]
    assert t.sum() == 24 * 25 and t[16:40, 13:38].all()
    log = stage1.train_phase(SegAnswerModel.from_base(bundle / "qwen", bundle / "sam2", seed=0), rows, "a",
                             stage1.Stage1Settings.phase_a(batch_size=2, max_steps=1))
    assert len(log) == 1 and np.isfinite(log[0]["loss"]) and log[0]["focal"] > 0


def test_sam_feature_cache_matches_a_fresh_forward_and_is_bounded_by_megabytes(model):
    from reproseg.seganswer.model import SamFeatureCache

    images = [r["image"] for r in synthetic.seg_rows(3, seed=4)]
    model.enable_feature_cache(0)
    assert model.feature_cache is None
    plain = model.sam_image_features(images)
    maps = [plain["image_embed"], *plain["high_res_feats"]]
    per_picture = sum(m[0].numel() * m.element_size() for m in maps)
    # room for exactly two pictures
    model.enable_feature_cache(2.5 * per_picture / 2**20)
    try:
        cache = model.feature_cache
        first = model.sam_image_features(images[:2])
        assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)
        again = model.sam_image_features(images)  # two hits, one new picture: the oldest goes
        assert (cache.misses, cache.hits, len(cache)) == (3, 2, 2) and cache.nbytes == 2 * per_picture
        assert SamFeatureCache.key(np.asarray(images[0].convert("RGB"))) not in cache._items
        # the same features as a forward without the cache (up to the rounding a different
        # batch composition brings)
        for out in (first, again):
            n = out["image_embed"].shape[0]
            assert torch.allclose(out["image_embed"], plain["image_embed"][:n], atol=1e-5)
            assert all(torch.allclose(a, b[:n], atol=1e-5) for a, b in zip(out["high_res_feats"],
                                                                           plain["high_res_feats"]))
        # a hit hands back the stored tensors themselves
        assert torch.equal(model.sam_image_features(images[1:2])["image_embed"], again["image_embed"][1:2])
        assert again["orig_hw"] == plain["orig_hw"]
    finally:
        model.enable_feature_cache(0)


def test_evaluation_job_scores_the_base_checkpoint_and_the_table_job_lays_checkpoints_side_by_side(bundle, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from reproseg.seganswer.sources import import_source
    from reproseg.seganswer.paper_tables import tables_stage
    from reproseg.seganswer.workflow_stages import evaluate_stage, load_checkpoint

    spec = {"format": "shapes", "counts": {"test": 2}, "size": [84, 56], "seed": 0, "tasks": ["MVQA"]}
    referring, questions, _ = import_source("shapes", spec, images_out=tmp_path / "images")
    pq.write_table(referring, tmp_path / "referring.parquet")
    pq.write_table(questions, tmp_path / "questions.parquet")
    cfg = section("seganswer", {"stage1": {"projector": {"seed": 0}},
                                "eval": {"max_new_tokens": 3, "max_turns": 2, "device": "cpu"}})
    cfg["eval"].update(referring=[{"label": "shapes test", "data": "shapes/test"}],
                       questions=[{"label": "shapes test", "data": "shapes/test"}])
    base = {"qwen": str(bundle / "qwen"), "sam2": str(bundle / "sam2")}
    # the base checkpoint is exactly the model stage 1 phase a starts from
    a = load_checkpoint(base, cfg)
    b = SegAnswerModel.from_base(bundle / "qwen", bundle / "sam2", seed=0)
    assert torch.equal(a.projector.fc1.weight, b.projector.fc1.weight)
    tables = {"tables": [str(tmp_path / "referring.parquet")], "roots": [str(tmp_path / "images")]}
    qtables = {"tables": [str(tmp_path / "questions.parquet")], "roots": [str(tmp_path / "images")]}
    evaluate_stage(tables, qtables, base, str(tmp_path / "base.json"), cfg, "base")
    m = json.loads((tmp_path / "base.json").read_text())
    assert m["checkpoint"] == "base" and m["model"] == base
    ref = m["referring"]["shapes test"]
    assert ref["n"] == ref["given"]["n"] == 2 and ref["given"]["n_missing"] == 0
    assert m["questions"]["shapes test"]["n"] == 2 and m["questions"]["shapes test"]["open"]["n"] == 0
    # a stage-1 table from two hand-made metrics files
    s1 = json.loads(json.dumps(m))
    s1["checkpoint"] = "stage1"
    s1["referring"]["shapes test"].update(giou=0.5, ciou=0.25, n_missing=0)
    (tmp_path / "stage1.json").write_text(json.dumps(s1))
    tables_stage({"base": str(tmp_path / "base.json"), "stage1": str(tmp_path / "stage1.json")}, "stage1",
                 str(tmp_path / "t.md"), str(tmp_path / "t.parquet"))
    t = pq.read_table(tmp_path / "t.parquet")
    by = {r["row"]: r for r in t.to_pylist()}
    assert by["shapes test gIoU"]["stage1"] == 50.0 and by["shapes test cIoU"]["ours"] == 25.0
    assert "shapes test gIoU, response given" in by and t.schema.field("base").type == pa.float64()
    md = (tmp_path / "t.md").read_text()
    assert "| ours: stage 1 | 50.0 | 25.0 |" in md and "- shapes test: base (untrained) " in md
    with pytest.raises(ValueError, match="needs the metrics of"):
        tables_stage({"base": str(tmp_path / "base.json")}, "stage1", str(tmp_path / "u.md"), str(tmp_path / "u.pq"))
