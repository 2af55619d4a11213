"""What inference, evaluation and selection share, without the policy's imports (the
evaluation jobs load SAM 2.1 only): the device by name, the row limit, a prediction
row's objects."""
from __future__ import annotations

import json

import torch

from .task import read_objects


def device_of(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def limited(rows: list[dict], limit: int | None) -> list[dict]:
    return rows if limit is None else rows[:limit]


def objects_of(prediction: dict):
    """The Objects of a prediction row, or None for a parse failure."""
    return None if not prediction["parsed"] else read_objects(json.loads(prediction["objects"]))
