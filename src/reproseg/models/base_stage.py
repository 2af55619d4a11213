"""Rules build_tiny_models and check_local_models: the base model bundle of every stage."""
from __future__ import annotations

import logging

import pyarrow.parquet as pq

from ..io_atomic import write_json
from .loading import check_local_model_dir
from .tiny_bundle import build_tiny_bundle

log = logging.getLogger(__name__)


def tokenizer_corpus(table) -> list[str]:
    """Questions, answers and options of the training split: the tiny tokenizer's corpus."""
    texts = table.column("question").to_pylist() + table.column("answer").to_pylist()
    texts += [" ".join(o) for o in table.column("options").to_pylist() if o]
    return texts


def build_tiny_stage(train_split: str, out_dir: str, manifest: str, spec: dict, seed: int) -> None:
    hashes = build_tiny_bundle(out_dir, spec, tokenizer_corpus(pq.read_table(train_split)), seed)
    write_json(manifest, {"source": "tiny", "path": out_dir, "files": hashes})
    log.info("built the tiny bundle in %s (%d files)", out_dir, len(hashes))


def check_local_stage(qwen: str, sam2_checkpoint: str, manifest: str) -> None:
    """Fails with the missing file's name before any GPU job starts; records checksums."""
    files = {"qwen": check_local_model_dir(qwen, "qwen2_5_vl"), "sam2": check_local_model_dir(sam2_checkpoint, "sam2")}
    write_json(manifest, {"source": "local", "qwen": qwen, "sam2_checkpoint": sam2_checkpoint, "files": files})
    log.info("checked %d local model files", sum(len(v) for v in files.values()))
