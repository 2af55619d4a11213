"""Loading the policy from local files only, and checking a user's model files (SAM 2.1's
loader is reproseg.models.sam_loading, which jobs that only segment import without
transformers).

Compute nodes often have no network, and the reference code pulled SAM2 from a hub at
run time. Everything here reads local paths and never falls back to a download.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from reproseg.io_atomic import sha256_file
from reproseg.models.sam_loading import SAM2_CONFIG_FILE, MissingModelFileError

QWEN_KIND = "qwen2_5_vl"
SAM2_KIND = "sam2"


def _torch_dtype(dtype):
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}
    return getattr(torch, names.get(str(dtype), str(dtype)))


def load_policy(qwen_dir: str | os.PathLike, dtype="float32", device: str = "cpu", meta: bool = False):
    """(model, processor) of a Qwen2.5-VL directory in Hugging Face format, offline.
    meta: the model's structure on the meta device, no weight read or allocated (a sharded
    run's ranks but the first, which receive their shards from it)."""
    qwen_dir = str(qwen_dir)
    if meta:
        config = AutoConfig.from_pretrained(qwen_dir, local_files_only=True)
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=_torch_dtype(dtype))
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            qwen_dir, dtype=_torch_dtype(dtype), local_files_only=True
        ).to(device)
    # Left padding: generation appends to the right end of every row of a batch.
    processor = AutoProcessor.from_pretrained(qwen_dir, local_files_only=True, padding_side="left")
    return model, processor


def _require(root: Path, rel: str) -> Path:
    p = root / rel
    if not p.is_file():
        raise MissingModelFileError(f"{root}: missing required file {rel}")
    return p


def _check_qwen_dir(root: Path) -> list[Path]:
    if not root.is_dir():
        raise MissingModelFileError(f"Qwen2.5-VL model directory not found: {root}")
    files = [_require(root, "config.json")]
    model_type = json.loads(files[0].read_text()).get("model_type")
    if model_type != QWEN_KIND:
        raise ValueError(f"{root}/config.json has model_type {model_type!r}, expected {QWEN_KIND!r}")
    files.append(_require(root, "tokenizer_config.json"))
    # A fast tokenizer file, or the slow pair; either is enough to build the tokenizer.
    if (root / "tokenizer.json").is_file():
        files.append(root / "tokenizer.json")
    else:
        files += [_require(root, "vocab.json"), _require(root, "merges.txt")]
    processor_files = [n for n in ("preprocessor_config.json", "processor_config.json") if (root / n).is_file()]
    if not processor_files:
        raise MissingModelFileError(
            f"{root}: missing required file preprocessor_config.json (or processor_config.json)"
        )
    files += [root / n for n in processor_files]
    for optional in ("generation_config.json", "chat_template.json", "chat_template.jinja"):
        if (root / optional).is_file():
            files.append(root / optional)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        files.append(index)
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files += [_require(root, s) for s in shards]
    else:
        files.append(_require(root, "model.safetensors"))
    return files


def _check_sam2(path: Path) -> list[Path]:
    if path.is_dir():
        meta = _require(path, SAM2_CONFIG_FILE)
        return [meta, _require(path, json.loads(meta.read_text())["checkpoint"])]
    if not path.is_file():
        raise MissingModelFileError(f"SAM 2.1 checkpoint file not found: {path}")
    return [path]


def check_local_model_dir(path: str | os.PathLike, kind: str) -> dict[str, str]:
    """Checks a user's local model files; returns {file name: sha256}.

    kind "qwen2_5_vl": a Hugging Face Qwen2.5-VL directory (config, tokenizer, processor
    config, and every safetensors shard the index lists). kind "sam2": a SAM 2.1
    checkpoint file, or a bundle directory with sam2_config.json. A missing file raises
    MissingModelFileError naming it. Files are hashed in chunks (shards are GBs).
    """
    root = Path(path)
    if kind == QWEN_KIND:
        files = _check_qwen_dir(root)
        base = root
    elif kind == SAM2_KIND:
        files = _check_sam2(root)
        base = root if root.is_dir() else root.parent
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected {QWEN_KIND!r} or {SAM2_KIND!r}")
    return {f.relative_to(base).as_posix(): sha256_file(f) for f in files}
