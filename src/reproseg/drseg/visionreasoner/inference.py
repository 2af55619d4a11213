"""Answers of a policy on an evaluation set (rules drseg_infer, drseg_infer_untrained, and
the selection's val scoring): the image resized to the policy frame, the evaluation
prompt (the query lower-cased, '."?!' stripped), one completion per row, its objects
mapped back to the original pixels. Greedy by default (VisionReasoner's evaluation);
`temperature` > 0 samples, as Dr. Seg's evaluation script does at 1.0, from a fixed seed.
"""
from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from reproseg.data.images import load_image
from reproseg.io_atomic import write_parquet
from reproseg.models.generation import Policy

from .rows import device_of, limited
from .task import EVAL_STRIP, TEMPLATES, answer_objects, messages, policy_image, render_prompt, to_original

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("completion", pa.string()),
    ("parsed", pa.bool_()),          # False: a parse failure (I = 0, U = |GT|; count 0; no box)
    ("objects", pa.string()),        # JSON [{bbox_2d, point_2d}] in original pixels; null on failure
    ("n_objects", pa.int64()),
])


def template_of(rewards: dict) -> str:
    """The prompt a variant trains and is evaluated with: Look-to-Confirm's when it asks for
    <look> blocks, VisionReasoner's otherwise."""
    return "look_to_confirm" if rewards["look_to_confirm"] else "visionreasoner"


def predict_rows(policy: Policy, rows: list[dict], images_root: str, template: str, size: int,
                 batch_size: int, max_new_tokens: int, temperature: float, seed: int) -> list[dict]:
    """One prediction (PREDICTION_SCHEMA) per benchmark row (BENCH_SCHEMA)."""
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="answers", unit="batch", mininterval=10):
        chunk = rows[start:start + batch_size]
        images = [policy_image(load_image(images_root, r["image_path"]), size) for r in chunk]
        prompts = [messages(render_prompt(r["text"], TEMPLATES[template], EVAL_STRIP)) for r in chunk]
        texts = policy.generate(images, prompts, max_new_tokens, temperature, seed + start)
        for r, text in zip(chunk, texts, strict=True):
            objs = answer_objects(text)
            objs = None if objs is None else to_original(objs, r["width"], r["height"], size)
            out.append({"id": r["id"], "completion": text, "parsed": objs is not None,
                        "objects": None if objs is None else objs.as_json(),
                        "n_objects": None if objs is None else len(objs)})
    return out


def infer_stage(benchmark: str, images_root: str, policy: str, predictions: str, cfg: dict, rewards: dict,
                policy_size: int) -> None:
    """Rule drseg_infer(_untrained): cfg is drseg.eval; rewards the variant's drseg.rewards."""
    rows = limited(pq.read_table(benchmark).to_pylist(), cfg["limit"])
    t0 = time.perf_counter()
    preds = predict_rows(Policy(policy, device_of(cfg["device"])), rows, images_root, template_of(rewards),
                         policy_size, cfg["batch_size"], cfg["max_new_tokens"], cfg["temperature"], cfg["seed"])
    write_parquet(predictions, pa.Table.from_pylist(preds, schema=PREDICTION_SCHEMA))
    log.info("%s: %d answers, %d parsed, %.1f s", benchmark, len(preds), sum(p["parsed"] for p in preds),
             time.perf_counter() - t0)
