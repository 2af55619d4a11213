"""Tiny offline model bundle: reload, tokenizer, chat template, forward pass, SAM2, file checks."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reproseg.models.loading import check_local_model_dir, load_policy
from reproseg.models.sam_loading import MissingModelFileError, load_sam2_predictor
from reproseg.models.tiny_bundle import SEG_TOKEN, build_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    hashes = build_tiny_bundle(out, {"hidden_size": 64, "sam2_image_size": 128}, ["find the red car"], seed=0)
    return out, hashes


def test_bundle_files_and_hashes(bundle):
    out, hashes = bundle
    for rel in ("qwen/config.json", "qwen/model.safetensors", "qwen/tokenizer.json",
                "qwen/processor_config.json", "sam2/model.pt", "sam2/sam2_config.json"):
        assert rel in hashes and len(hashes[rel]) == 64
        assert (out / rel).is_file()
    # The directory is renamed into place whole: no partial siblings left behind.
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_policy_reloads_offline_and_runs(bundle):
    out, _ = bundle
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "qwen", local_files_only=True)
    processor = AutoProcessor.from_pretrained(out / "qwen", local_files_only=True)
    tok = processor.tokenizer

    seg = tok(SEG_TOKEN, add_special_tokens=False).input_ids
    assert len(seg) == 1 and seg[0] == tok.convert_tokens_to_ids(SEG_TOKEN)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Where is it?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    # 56x56 -> 4x4 patches of 14 px -> 2x2 merged tokens
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tok))
    assert logits.shape[-1] == model.config.get_text_config().vocab_size
    assert torch.isfinite(logits).all()

    model2, processor2 = load_policy(out / "qwen", dtype="float32", device="cpu")
    assert processor2.tokenizer.padding_side == "left"
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_sam2_predictor_small_image(bundle):
    out, _ = bundle
    predictor = load_sam2_predictor(out / "sam2", device="cpu")
    h, w = 60, 80
    image = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[30.0, 20.0], [40.0, 30.0]]),
        point_labels=np.array([1, 1]),
        box=np.array([10.0, 5.0, 60.0, 50.0]),
        multimask_output=False,
    )
    assert masks.shape == (1, h, w)
    assert scores.shape == (1,)


def test_check_local_model_dir(bundle, tmp_path):
    out, hashes = bundle
    good = check_local_model_dir(out / "qwen", "qwen2_5_vl")
    assert good["model.safetensors"] == hashes["qwen/model.safetensors"]
    assert check_local_model_dir(out / "sam2" / "model.pt", "sam2") == {"model.pt": hashes["sam2/model.pt"]}

    # A sharded checkpoint whose index names a shard that is not there.
    user = tmp_path / "qwen-sharded"
    shutil.copytree(out / "qwen", user)
    (user / "model.safetensors").rename(user / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (user / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingModelFileError, match="model-00002-of-00002.safetensors"):
        check_local_model_dir(user, "qwen2_5_vl")
    (user / "processor_config.json").unlink()
    with pytest.raises(MissingModelFileError, match="preprocessor_config.json"):
        check_local_model_dir(user, "qwen2_5_vl")
    with pytest.raises(MissingModelFileError, match="nope.pt"):
        check_local_model_dir(tmp_path / "nope.pt", "sam2")
