"""Training and evaluation samples from the normalised tables, loaded when read.

A stage lists selections ("source" or "source/split"); `select` reads the matching rows
of each source's table and returns a `SampleRows` sequence whose items carry the image
(and, for referring rows, the mask) resized to the stage's `image_size`. Images are
loaded per item, so a paper-size training set never sits in memory decoded; an image
that fails to load raises an error naming its record.
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

    def __init__(self, records: list[dict], roots: list[str], kind: str, size):
        self.records, self.roots, self.kind, self.size = records, roots, kind, tuple(int(v) for v in size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rec, root = self.records[i], self.roots[i]
        image = _load(root, rec).resize(self.size, Image.BICUBIC)
        out = {"id": rec["id"], "source": rec["source"], "split": rec["split"], "image": image}
        if self.kind == "referring":
            out.update(phrase=rec["phrase"], mask=_mask(rec, self.size))
        else:
            # .get: tables imported before the column existed have no cycle_category
            out.update(question=rec["question"], answer=rec["answer"], options=rec["options"],
                       task=rec["task"], category=rec["category"], cycle_category=rec.get("cycle_category"))
        return out

    def empty_masks(self) -> int:
        """Referring records whose mask vanishes at this size (decoded without loading images)."""
        return sum(not _mask(r, self.size).any() for r in self.records) if self.kind == "referring" else 0


def _load(root: str, rec: dict) -> Image.Image:
    try:
        return load_image(root, rec["image_path"])
    except OSError as exc:
        raise SampleError(f"record {rec['id']}: {exc}") from exc


def _mask(rec: dict, size) -> np.ndarray:
    """The record's mask at `size` (nearest neighbour, as the image is resized)."""
    m = rle_decode({"size": [rec["height"], rec["width"]], "counts": rec["rle_counts"]})
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def select(tables: Sequence[str], roots: Sequence[str], selections: Sequence[str], kind: str, size,
           limit: int | None = None) -> SampleRows:
    """The rows of `selections`; tables[i] / roots[i] belong to selections[i].

    A selection that matches no row is an error naming it (a typo in a split name
    must not train on nothing). `limit` keeps the first rows of each selection.
    """
    if not (len(tables) == len(roots) == len(selections)):
        raise ValueError("tables, roots and selections differ in length")
    records, rec_roots = [], []
    for table, root, text in zip(tables, roots, selections):
        sel = Selection.parse(text)
        rows = [r for r in pq.read_table(table).to_pylist() if sel.split is None or r["split"] == sel.split]
        if not rows:
            raise ValueError(f"data selection {text!r} matches no {kind} rows in {table}")
        rows = rows[:limit] if limit else rows
        records += rows
        rec_roots += [root] * len(rows)
    out = SampleRows(records, rec_roots, kind, size)
    log.info("%s %s: %d rows", kind, list(selections), len(out))
    return out
