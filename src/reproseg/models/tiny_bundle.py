"""A tiny, randomly initialised Qwen2.5-VL policy and SAM 2.1 model, built offline.

The workflow's test and smoke runs need models with the real architectures (so every
code path is the one the paper-size run takes) but small enough for a 2-core CPU, and
nothing may be downloaded. So the tokenizer is trained here, the processor and model
configs are written here, and the weights are random (seeded).

Layout written under `out_dir`:
    qwen/   config.json, generation_config.json, model.safetensors, tokenizer files,
            processor_config.json (+ chat template) -- loads with from_pretrained
    sam2/   model.pt ({"model": state_dict}, SAM2's checkpoint format) and
            sam2_config.json (config name + hydra overrides needed to rebuild it)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from sam2.build_sam import build_sam2
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from reproseg.io_atomic import atomic_dir, sha256_file
from reproseg.models.sam_loading import SAM2_CONFIG_FILE

# Qwen2.5-VL's special tokens (same strings as the released tokenizer) plus the
# SegAnswer segmentation token. The order fixes their ids in the tiny vocab.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
SEG_TOKEN = "<|seg|>"

SAM2_CHECKPOINT_FILE = "model.pt"

DEFAULT_SPEC: dict = {
    # tokenizer
    "vocab_size": 1024,  # BPE target before the special tokens are appended
    # language model
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "mrope_section": None,  # derived from head_dim when None
    # vision tower
    "vision_depth": 2,
    "vision_hidden_size": 32,
    "vision_num_heads": 2,
    "vision_intermediate_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    # image processor bounds (pixels); 56*56 is the smallest Qwen accepts
    "min_pixels": 56 * 56,
    "max_pixels": 224 * 224,
    # SAM 2.1
    "sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2_image_size": 256,
    "sam2_overrides": [],  # extra hydra overrides, e.g. to shrink the trunk further
}

# Covers the words, tags and JSON the project's prompts and answers use, so even an
# empty caller corpus gives a tokenizer that does not fall back to single bytes.
_BUILTIN_CORPUS = [
    "You are a helpful assistant.",
    "Please find the object in the image and answer the question.",
    "Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags.",
    "Output the look-to-confirm step in <look> </look> tags.",
    '<think>The red car is on the left side of the road.</think><answer>{"bbox": [12, 34, 56, 78], '
    '"points_1": [20, 40], "points_2": [30, 50], "response": "The object is found."}</answer>',
    '[{"bbox_2d": [10, 20, 110, 220], "point_2d": [60, 120]}]',
    '{"region": [0, 0, 256, 256], "response": "A"}',
    "Which option is correct? A. red B. blue C. green D. yellow",
    "What color is the small sign? The answer is white.",
    "Segment the person holding an umbrella. It is <|seg|>.",
    "The target is detected near the top right corner of the frame.",
    "0 1 2 3 4 5 6 7 8 9 10 100 128 256 512 1024 1080 1920 2160 3840",
    "shape position color others referring option reasoning",
]

# Renders system/user/assistant turns; an image or video part becomes the vision
# placeholder that the processor expands to one pad token per merged patch.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


def resolve_spec(spec: dict | None) -> dict:
    """Defaults filled in; unknown keys are an error (a typo would otherwise be ignored)."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise ValueError(f"unknown tiny-model spec keys: {unknown}; known: {sorted(DEFAULT_SPEC)}")
    out = {**DEFAULT_SPEC, **spec}
    head_dim = out["hidden_size"] // out["num_attention_heads"]
    if head_dim * out["num_attention_heads"] != out["hidden_size"] or head_dim % 2:
        raise ValueError("hidden_size must split into num_attention_heads heads of even size")
    if out["mrope_section"] is None:
        out["mrope_section"] = default_mrope_section(head_dim)
    if sum(out["mrope_section"]) != head_dim // 2:
        raise ValueError(f"mrope_section {out['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    return out


def default_mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) as Qwen does (1:1.5:1.5)."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]


def _train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE with Qwen2's pre-tokenizer, wrapped as a Qwen2Tokenizer."""
    bpe = Tokenizer(BPE())
    # Same normaliser and pre-tokenizer as Qwen2Tokenizer builds, so the merges learnt
    # here are the ones it applies.
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    texts = list(_BUILTIN_CORPUS) + [t for t in corpus if t]
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    # Qwen2Tokenizer wants merges as pairs, not "a b" strings.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",  # the instruct models end a turn with <|im_end|>
        pad_token="<|endoftext|>",
    )
    extra = [t for t in QWEN_SPECIAL_TOKENS if t != "<|endoftext|>"] + [SEG_TOKEN]
    tok.add_special_tokens({"extra_special_tokens": extra})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _build_processor(tokenizer, spec: dict):
    common = dict(
        min_pixels=spec["min_pixels"],
        max_pixels=spec["max_pixels"],
        patch_size=spec["patch_size"],
        temporal_patch_size=spec["temporal_patch_size"],
        merge_size=spec["spatial_merge_size"],
    )
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**common),
        chat_template=CHAT_TEMPLATE,
    )


def _build_policy(tokenizer, spec: dict, seed: int):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    eos_ids = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec["rope_theta"],
            "mrope_section": list(spec["mrope_section"]),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    depth = spec["vision_depth"]
    vision_config = dict(
        depth=depth,
        hidden_size=spec["vision_hidden_size"],
        intermediate_size=spec["vision_intermediate_size"],
        num_heads=spec["vision_num_heads"],
        patch_size=spec["patch_size"],
        spatial_merge_size=spec["spatial_merge_size"],
        temporal_patch_size=spec["temporal_patch_size"],
        window_size=spec["window_size"],
        out_hidden_size=spec["hidden_size"],
        # the last block attends globally, as in the released models
        fullatt_block_indexes=[depth - 1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=eos_ids,
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=1.0,
    )
    return model


def sam2_overrides(spec: dict) -> list[str]:
    return [f"++model.image_size={int(spec['sam2_image_size'])}", *spec["sam2_overrides"]]


def _build_sam2(out: Path, spec: dict, seed: int) -> None:
    overrides = sam2_overrides(spec)
    torch.manual_seed(seed)
    model = build_sam2(spec["sam2_config"], ckpt_path=None, device="cpu", hydra_overrides_extra=overrides)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, out / SAM2_CHECKPOINT_FILE)
    meta = {
        "config_name": spec["sam2_config"],
        "overrides": overrides,
        "image_size": int(spec["sam2_image_size"]),
        "checkpoint": SAM2_CHECKPOINT_FILE,
    }
    (out / SAM2_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _write_policy(qwen: Path, spec: dict, corpus: list[str], seed: int) -> None:
    tokenizer = _train_tokenizer(list(corpus), spec["vocab_size"])
    processor = _build_processor(tokenizer, spec)
    model = _build_policy(tokenizer, spec, seed)
    model.save_pretrained(qwen, safe_serialization=True)
    processor.save_pretrained(qwen)


def build_tiny_policy(qwen_dir: str | os.PathLike, spec: dict | None, corpus: list[str], seed: int) -> None:
    """Only the Qwen2.5-VL part of the bundle (model + processor), for tests and benchmarks of the policy."""
    with atomic_dir(qwen_dir) as tmp:
        _write_policy(tmp, resolve_spec(spec), corpus, seed)


def build_tiny_sam2(sam2_dir: str | os.PathLike, spec: dict | None, seed: int) -> None:
    """Only the SAM 2.1 part of the bundle, for tests of the mask training."""
    with atomic_dir(sam2_dir) as tmp:
        _build_sam2(tmp, resolve_spec(spec), seed)


def build_tiny_bundle(out_dir: str | os.PathLike, spec: dict | None, corpus: list[str], seed: int) -> dict:
    """Writes the tiny Qwen2.5-VL (+processor) and SAM 2.1 bundle; returns {relative file: sha256}.

    The directory appears complete or not at all (it is built beside `out_dir` and renamed).
    """
    spec = resolve_spec(spec)
    with atomic_dir(out_dir) as tmp:
        _write_policy(tmp / "qwen", spec, corpus, seed)
        _build_sam2(tmp / "sam2", spec, seed)
        (tmp / "spec.json").write_text(
            json.dumps({"spec": spec, "seed": seed, "torch": torch.__version__}, indent=2, sort_keys=True) + "\n"
        )
        hashes = {
            p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
    return hashes
