"""Parse one model completion into the fields that the reward terms read.

A completion is expected to look like

    <think> ... <look>visual evidence</look> ... </think>
    <answer>{"bbox": [x1, y1, x2, y2], "points_1": [x, y], "points_2": [x, y], "response": "..."}</answer>

(FineRS LPR; GSE answers `{"bbox"|"region": [...], "response": "..."}`; Seg-Zero,
VisionReasoner and Dr. Seg answer a list `[{"bbox_2d": [...], "point_2d": [...]}, ...]`).

`parse(text)` never raises: RL rollouts produce arbitrary text, and one bad sample must
score 0, not stop a training run. Every typed field is None (or empty) unless the value
is well formed, so reward code only checks for None.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_OBJECTS = 120  # Seg-Zero / VisionReasoner / Dr. Seg cut answer lists to 120 items

Box = tuple[float, float, float, float]
Point = tuple[float, float]

# Whole string: think block, optional whitespace, answer block (Seg-Zero's format check).
_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LOOK = re.compile(r"<look>(.*?)</look>", re.DOTALL)
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)


def finite_number(value: Any) -> float | None:
    """The value as a finite float, or None. Booleans are not numbers here (JSON true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)  # OverflowError for ints beyond float range
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _numbers(value: Any, n: int) -> tuple[float, ...] | None:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return None
    out = tuple(finite_number(v) for v in value)
    return None if any(v is None for v in out) else out


def to_box(value: Any) -> Box | None:
    """[x1, y1, x2, y2] of 4 finite numbers, else None. Corner order is not enforced:
    the geometry functions score inverted boxes as empty."""
    return _numbers(value, 4)  # type: ignore[return-value]


def to_point(value: Any) -> Point | None:
    return _numbers(value, 2)  # type: ignore[return-value]


def loads_json(text: str) -> Any:
    """json.loads that returns None instead of raising (deep nesting, huge ints, junk)."""
    try:
        return json.loads(text)
    except Exception:  # ValueError (bad JSON, >4300-digit ints), RecursionError (deep nesting)
        return None


def strip_fence(text: str) -> str:
    """Content of a ```json ... ``` fence around the whole answer, else the stripped text."""
    s = text.strip()
    if s.startswith("```"):
        m = _FENCE.match(s)
        if m and s[m.end():].strip() == "":
            return m.group(1).strip()
    return s


def first_flat_object(text: str) -> dict | None:
    """The authors' FineRS JSON extraction: the first `{[^}]+}` anywhere in the
    completion, decoded; None if that first match is not a JSON object.

    A linear scan instead of the regex, which is quadratic on text with many '{' and no '}'.
    """
    start = text.find("{")
    while start != -1:
        close = text.find("}", start + 1)
        if close == -1:
            return None
        if close > start + 1:  # '[^}]+' needs at least one character
            obj = loads_json(text[start:close + 1])
            return obj if isinstance(obj, dict) else None
        start = text.find("{", start + 1)  # "{}" does not match; the next '{' may
    return None


@dataclass(frozen=True)
class ParsedObject:
    """One item of a multi-object answer list; a field is None when malformed."""
    bbox: Box | None
    point: Point | None


@dataclass(frozen=True)
class Parsed:
    text: str = ""
    think_ok: bool = False           # whole string is <think>..</think> ws <answer>..</answer>
    think: str | None = None         # content of the first think block
    looks: tuple[str, ...] = ()      # contents of <look> blocks inside the think block
    answer_looks: tuple[str, ...] = ()  # <look> blocks inside the answer block
    answer_text: str | None = None   # content of the first answer block, fence removed
    answer: dict | list | None = None
    bbox: Box | None = None
    points_1: Point | None = None
    points_2: Point | None = None
    response: str | None = None
    objects: tuple[ParsedObject, ...] = ()   # from a list answer, at most MAX_OBJECTS
    first_object: dict | None = None         # first_flat_object(text)

    @property
    def look(self) -> str | None:
        return self.looks[0] if self.looks else None


def parse(text: Any) -> Parsed:
    """Parse a completion. Non-string input parses as empty (bytes are decoded)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return Parsed()
    try:
        return _parse(text)
    except Exception:  # belt and braces: a parser bug must not stop training
        return Parsed(text=text)


def _parse(text: str) -> Parsed:
    think_ok = _THINK_ANSWER.fullmatch(text) is not None
    m = _THINK.search(text)
    think = m.group(1) if m else None
    looks = tuple(_LOOK.findall(think)) if think is not None else ()

    m = _ANSWER.search(text)
    answer_text = strip_fence(m.group(1)) if m else None
    answer_looks = tuple(_LOOK.findall(m.group(1))) if m else ()
    answer = loads_json(answer_text) if answer_text is not None else None
    if not isinstance(answer, (dict, list)):
        answer = None

    bbox = points_1 = points_2 = response = None
    objects: tuple[ParsedObject, ...] = ()
    if isinstance(answer, dict):
        bbox = to_box(answer.get("bbox"))
        points_1 = to_point(answer.get("points_1"))
        points_2 = to_point(answer.get("points_2"))
        r = answer.get("response")
        response = r if isinstance(r, str) else None
    elif isinstance(answer, list):
        objects = tuple(
            ParsedObject(to_box(item.get("bbox_2d")), to_point(item.get("point_2d")))
            if isinstance(item, dict) else ParsedObject(None, None)
            for item in answer[:MAX_OBJECTS])

    return Parsed(text=text, think_ok=think_ok, think=think, looks=looks,
                  answer_looks=answer_looks, answer_text=answer_text, answer=answer,
                  bbox=bbox, points_1=points_1, points_2=points_2, response=response,
                  objects=objects, first_object=first_flat_object(text))
