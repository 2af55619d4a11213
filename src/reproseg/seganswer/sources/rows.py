"""Training and evaluation samples from the normalised tables, loaded when read.

A stage lists selections ("source" or "source/split"); `select` reads the matching rows
of each source's table and returns a `SampleRows` sequence whose items carry the image
(and, for referring rows, the mask) at the image's native resolution: nothing is
resized here. The Qwen2.5-VL processor then picks the grid within its pixel bounds
keeping the aspect ratio, SAM 2.1 resizes to its own square input, and the mask stays
at the image's pixels, where the evaluation scores it (reproseg.seganswer.model).
There is no downscale before processing: a decoded picture is at most the import's
`max_image_pixels` (an 8K HR-Bench picture is 100 MB as RGB), and what the model sees
is bounded by `seganswer.max_pixels` whatever the native size. Images are loaded per
item, so a paper-size training set never sits in memory decoded; an image that fails to
load, or whose size differs from its record's, raises an error naming its record.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ...data.images import load_image
from ...data.masks import rle_decode

log = logging.getLogger(__name__)


class SampleError(RuntimeError):
    """A record that cannot become a sample (its image does not load); names the record."""


@dataclass(frozen=True)
class Selection:
    source: str
    split: str | None  # None: every split of the source

    @classmethod
    def parse(cls, text: str) -> "Selection":
        source, _, split = text.partition("/")
        if not source:
            raise ValueError(f"bad data selection {text!r}: expected 'source' or 'source/split'")
        return cls(source, split or None)


class SampleRows(Sequence):
    """Sample dicts built on access from table records; `kind` is "referring" or "questions"."""

    def __init__(self, records: list[dict], roots: list[str], kind: str):
        self.records, self.roots, self.kind = records, roots, kind

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rec, root = self.records[i], self.roots[i]
        image = _load(root, rec)
        out = {"id": rec["id"], "source": rec["source"], "split": rec["split"], "image": image}
        if self.kind == "referring":
            # the mask's RLE is at the record's size: a different picture would misalign it
            if image.size != (rec["width"], rec["height"]):
                raise SampleError(f"record {rec['id']}: image {rec['image_path']} is {image.size[0]}x"
                                  f"{image.size[1]}, its mask {rec['width']}x{rec['height']}")
            out.update(phrase=rec["phrase"], mask=_mask(rec))
        else:
            # .get: tables imported before the column existed have no cycle_category
            out.update(question=rec["question"], answer=rec["answer"], options=rec["options"],
                       task=rec["task"], category=rec["category"], cycle_category=rec.get("cycle_category"))
        return out

    def empty_masks(self) -> int:
        """Referring records whose mask has no pixel (decoded without loading images)."""
        return sum(not _mask(r).any() for r in self.records) if self.kind == "referring" else 0


def _load(root: str, rec: dict) -> Image.Image:
    try:
        return load_image(root, rec["image_path"])
    except OSError as exc:
        raise SampleError(f"record {rec['id']}: {exc}") from exc


def _mask(rec: dict) -> np.ndarray:
    """The record's mask, bool (height, width): the image's own pixels."""
    return rle_decode({"size": [rec["height"], rec["width"]], "counts": rec["rle_counts"]})


def select(tables: Sequence[str], roots: Sequence[str], selections: Sequence[str], kind: str, *,
           limit: int | None = None) -> SampleRows:
    """The rows of `selections` at their native resolution; tables[i] / roots[i] belong to selections[i].

    A selection that matches no row is an error naming it (a typo in a split name
    must not train on nothing). `limit` keeps the first rows of each selection.
    """
    if not (len(tables) == len(roots) == len(selections)):
        raise ValueError("tables, roots and selections differ in length")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    records, rec_roots = [], []
    for table, root, text in zip(tables, roots, selections):
        sel = Selection.parse(text)
        rows = [r for r in pq.read_table(table).to_pylist() if sel.split is None or r["split"] == sel.split]
        if not rows:
            raise ValueError(f"data selection {text!r} matches no {kind} rows in {table}")
        rows = rows[:limit] if limit else rows
        records += rows
        rec_roots += [root] * len(rows)
    out = SampleRows(records, rec_roots, kind)
    log.info("%s %s: %d rows", kind, list(selections), len(out))
    return out
