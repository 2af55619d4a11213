"""Parse one model completion into the fields that the reward terms read.

A completion is expected to look like

    <think> ... <look>visual evidence</look> ... </think>
    <answer>{"bbox": [x1, y1, x2, y2], "points_1": [x, y], "points_2": [x, y], "response": "..."}</answer>

(FineRS LPR; GSE answers `{"bbox"|"region": [...], "response": "..."}`; Seg-Zero,
VisionReasoner and Dr. Seg answer a list `[{"bbox_2d": [...], "point_2d": [...]}, ...]`).

`parse(text)` never raises: RL rollouts produce arbitrary text, and one bad sample must
score 0, not stop a training run. Every typed field is None (or empty) unless the value
is well formed, so reward code only checks for None.

Two readings of a value, one per kind of profile:
- strict (`to_box`, `to_point`; the papers' profiles): exactly 4 (2) finite JSON numbers,
  booleans and numeric strings rejected;
- loose (`loose_box`, `loose_point`; the `reference_code` profiles): what the authors'
  Python does with the raw value. A box is any list of 4 Python numbers (booleans, NaN,
  infinities and huge integers included, compared and subtracted as Python does); a point
  is `int(v[0]), int(v[1])` of whatever indexes, so "12" and 12.9 read as 12, a point of
  three numbers uses the first two, and NaN fails.

Code fences: `answer` is the JSON of the first answer block with a whole-block ```json
fence removed (`fenced` says one was); `answer_value(parsed, strip_fence=False)` is the
answer as a parser without fence handling (json.loads of the block) sees it: None when
the block was fenced.
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


def py_number(value: Any) -> bool:
    """A number to Python arithmetic and comparison (int, float, bool; NaN and inf
    included): what a JSON value must be for the authors' box code not to raise."""
    return isinstance(value, (int, float))


def loose_box(value: Any) -> tuple | None:
    """The authors' reading of a box (FineRS code: `len(v) == 4`, then Python arithmetic
    and comparisons on the items): a list of 4 Python numbers, kept as they are (no float
    conversion, so huge integers and NaN behave as in Python). Anything whose use would
    raise there (strings, None, nested lists, a dict or string of length 4) is None."""
    if isinstance(value, list) and len(value) == 4 and all(py_number(v) for v in value):
        return tuple(value)
    return None


def loose_point(value: Any, truncate: bool = True) -> tuple | None:
    """The authors' reading of a point (FineRS code: `[int(p[0]), int(p[1])]`): the first
    two items of anything indexable, through int() (or float() when `truncate` is off).
    "12" and 12.9 give 12, [1, 2, 3] gives (1, 2), NaN, inf, "1.5" and None fail (None)."""
    conv = int if truncate else float
    try:
        return conv(value[0]), conv(value[1])
    except Exception:  # IndexError, KeyError, TypeError, ValueError, OverflowError
        return None


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


def first_brace_span(text: str) -> str | None:
    """What `re.search(r'{[^}]+}', text)` matches (the authors' FineRS JSON extraction),
    or None. A linear scan instead of the regex, which is quadratic on text with many '{'
    and no '}'."""
    start = text.find("{")
    while start != -1:
        close = text.find("}", start + 1)
        if close == -1:
            return None
        if close > start + 1:  # '[^}]+' needs at least one character
            return text[start:close + 1]
        start = text.find("{", start + 1)  # "{}" does not match; the next '{' may
    return None


def first_flat_object(text: str) -> dict | None:
    """The authors' FineRS training-time JSON extraction: the first `{[^}]+}` anywhere in
    the completion, decoded with json.loads; None if that first match is not a JSON object."""
    span = first_brace_span(text)
    obj = loads_json(span) if span is not None else None
    return obj if isinstance(obj, dict) else None


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
    answer_raw: str | None = None    # content of the first answer block, as written
    answer_text: str | None = None   # the same, stripped, a whole-block fence removed
    fenced: bool = False             # answer_text came out of a ``` fence
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
    answer_raw = m.group(1) if m else None
    answer_text = strip_fence(answer_raw) if m else None
    fenced = m is not None and answer_text != answer_raw.strip()
    answer_looks = tuple(_LOOK.findall(answer_raw)) if m else ()
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
                  answer_looks=answer_looks, answer_raw=answer_raw, answer_text=answer_text,
                  fenced=fenced, answer=answer,
                  bbox=bbox, points_1=points_1, points_2=points_2, response=response,
                  objects=objects, first_object=first_flat_object(text))


def answer_value(parsed: Parsed, strip_fence: bool = True) -> dict | list | None:
    """The answer JSON under a profile's fence rule. Without fence stripping the answer is
    what json.loads of the stripped block gives (the authors' multi-object parsers), so a
    fenced block is no answer at all; with it (the papers' profiles) the fence is removed."""
    if parsed.fenced and not strip_fence:
        return None
    return parsed.answer
