"""Rule drseg_warmup: teach a tiny random policy VisionReasoner's answer format before GRPO.

Dr. Seg starts GRPO from Qwen2.5-VL-7B-Instruct, which already writes the requested
object list; a random tiny policy never does, so every reward would be constant and no
group would carry a gradient. This short supervised warm-up on the training table's own
targets, under both prompts (VisionReasoner's, and Look-to-Confirm's with a <look> block
in the thinking trace), stands in for that instruction tuning, as rule warmup_policy
does for FineRS. One warm-up serves every reward variant (drseg-* experiments). Only the
embedded default runs it (drseg.warmup.enabled); the paper configuration starts from the
released model. The warm-up policy is also the tables' "untrained" reference.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reproseg.curves import plot_curves
from reproseg.data.images import as_image
from reproseg.models.sft import launch_sft, train_sft
from reproseg.runs import run_dir_of

from .data import training_rows
from .task import TEMPLATES, Objects, clean_query, read_objects

log = logging.getLogger(__name__)


def target_text(query: str, objects: Objects, look: bool) -> str:
    """`<think>..</think><answer>[{"bbox_2d", "point_2d"}, ...]</answer>` for one record:
    the thinking trace is the query (in a <look> block for Look-to-Confirm), the answer
    integer coordinates in compact JSON, as the prompt's example writes them; short,
    since the tiny tokenizer spends about one token per character."""
    think = clean_query(query)
    if look:
        think = f"<look>{think}</look>"
    items = [{"bbox_2d": [round(v) for v in b], "point_2d": [round(v) for v in p]}
             for b, p in zip(objects.boxes, objects.points, strict=True)]
    return f"<think>{think}</think><answer>{json.dumps(items, separators=(',', ':'))}</answer>"


def warmup_examples(table: pa.Table, images_root: str | Path, size: int) -> list[dict]:
    """Two examples per record, one per prompt (TEMPLATES): the rows that
    reproseg.drseg.visionreasoner.data's training_rows serves GRPO (the prompt, the image
    as GRPO decodes it, the targets in the size x size frame), each with its target text."""
    served = [training_rows(table, str(images_root), name, size) for name in TEMPLATES]
    out = []
    for rec, *rows in zip(table.to_pylist(), *served, strict=True):
        image = as_image(rows[0]["image"])
        for name, row in zip(TEMPLATES, rows, strict=True):
            objects = read_objects(json.loads(row["gt_objects"]))
            out.append({"image": image, "prompt": row["prompt"],
                        "target": target_text(rec["query"], objects, look=name == "look_to_confirm")})
    return out


def held_out_split(rows: list[dict], every: int) -> tuple[list[dict], list[dict]]:
    """(trained, held out): every `every`-th record is held out for the target loss before
    and after (the val and test sources are segmentation tables, without object lists)."""
    return ([r for i, r in enumerate(rows) if i % every != every - 1],
            [r for i, r in enumerate(rows) if i % every == every - 1])


def train_policy(table: str, images_root: str, policy: str, run_dir: str, train_log: str, warmup: dict,
                 policy_size: int) -> None:
    """The warm-up's training, in this process or in each worker of a launch (each worker
    builds the examples from the table: no decoded images in the job file)."""
    settings = {k: v for k, v in warmup.items() if k not in ("enabled", "held_out_every")}
    whole = pq.read_table(table)
    rows, held = held_out_split(whole.to_pylist(), int(warmup["held_out_every"]))
    train = warmup_examples(pa.Table.from_pylist(rows, schema=whole.schema), images_root, policy_size)
    val = warmup_examples(pa.Table.from_pylist(held, schema=whole.schema), images_root, policy_size)
    log.info("Dr. Seg warm-up: %d training examples, %d held out", len(train), len(val))
    train_sft(policy, train, settings, run_dir, train_log, held_out=val)


def warmup_stage(table: str, images_root: str, policy: str, checkpoint: str, train_log: str, curves: str,
                 warmup: dict, policy_size: int, processes: int | None = None) -> None:
    """warmup: drseg.warmup (reproseg.models.sft.SFTSettings, `enabled` and
    `held_out_every`); table: the training source's imported table."""
    run_dir = run_dir_of(checkpoint)
    summary = launch_sft("reproseg.drseg.visionreasoner.warmup:train_policy", processes, table=table,
                         images_root=images_root, policy=policy, run_dir=str(run_dir), train_log=train_log,
                         warmup=warmup, policy_size=policy_size)
    log.info("Dr. Seg warm-up on %d process(es): held-out target loss %.3f before, %.3f after", summary["world_size"],
             summary["held_out_loss_before"], summary["held_out_loss_after"])
    plot_curves(train_log, curves, title="Dr. Seg format warm-up (SFT)", kind="sft")
