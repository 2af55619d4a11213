"""What FineRS's reward terms share: the profiles, the ground truth, and the format, think and
response checks. The terms themselves are in reproseg.finers.lpr_rewards (paper Eq. 6,
max 6) and reproseg.finers.gse_rewards (Eq. 7, max 7).

Every term has the shape `term(parsed: Parsed, gt: FinersTarget, profile: RewardProfile)
-> float`, is binary except `size` (0, 0.5 or 1), and scores 0.0 for anything malformed
instead of raising, as the authors' reward code does.

Two profiles (`RewardProfile.paper()`, the default, and `RewardProfile.reference_code()`)
hold every point where the paper's text (sec. 4.4, appendix A.2) and the authors' code
(JiazuoYu/Fines, verl/utils/reward_score/seg_restrict_qa.py and
seg_restrict8_regions_and_qa.py) disagree; see the field comments and docs/fidelity.md.
`reference_code` gives what that code gives for any completion, malformed ones included:
values are read as its Python reads them (`loose_values`), the question type comes from
the GT answer text as its text reward decides it (`response_branch`), and a fenced answer
scores as unfenced, since its regex finds the JSON object inside the fence.

Question types use the FineRS-4k `Q-type` names: "referring" (IS), "option" (MVQA) and
"reasoning" (OVQA).
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from reproseg.answers import geometry as geo
from reproseg.answers.parsing import Box, Parsed, Point, answer_value, loose_box, parse, to_box, to_point
from reproseg.answers.qa import open_correct, option_correct, option_letter


_QTYPES = {"referring": "is", "is": "is", "option": "mvqa", "mvqa": "mvqa",
           "reasoning": "ovqa", "ovqa": "ovqa"}
# The code's GT response of a referring sample, and its option letters (lower-cased).
CODE_IS_RESPONSE = "the object is found."
CODE_OPTION_LETTERS = ("a", "b", "c", "d")
_IS_PHRASE = re.compile(r"\bis\s+(?:found|detected)\b", re.IGNORECASE)


@dataclass(frozen=True)
class RewardProfile:
    name: str
    # Where the answer JSON is read: "answer_block" (inside <answer>) or "first_object"
    # (the code's first `{[^}]+}` anywhere in the completion, even inside <think>).
    answer_source: str
    # format: exactly the template's keys with well-formed values (paper: "exact
    # keywords"), or the keys present, list lengths right and a non-blank response (code).
    exact_keys: bool
    iou_plus_one: bool          # code: inclusive-pixel areas ...
    iou_strict: bool            # ... and the strict overlap test
    point_metric: str           # "l1" (paper A.2) or "euclidean" (code); best of both pairings
    point_truncate: bool        # code: int() on predicted points first
    point_inside_box: bool      # code: both points must lie in the predicted box
    region_iou_min: float       # paper 0.5, code 0.9
    region_l1_max: float        # paper 10, code 20
    gse_box_key: str            # paper template {region, response}; code reads "bbox"
    size_plus_one: bool         # code: width = x2 - x1 + 1
    is_rule: str                # "phrase": word-bounded "is found/detected"; "substring"
    mvqa_rule: str              # "exact" option letter, or "letter" anywhere as a word
    ovqa_rule: str              # "whole" response vs answer, or any "word" vs answer
    ovqa_max_words_lpr: int | None  # code (LPR only): > 3 predicted words scores 0
    # A whole-answer ```json fence inside <answer>: removed (paper: the fence is markup,
    # the JSON is the answer) or kept, so json.loads fails. Only read with
    # answer_source "answer_block": the code's first-object regex finds the JSON inside
    # a fence anyway, so a fenced answer scores there exactly as an unfenced one.
    strip_fence: bool
    # Values: strict (paper: finite JSON numbers, a point of exactly 2) or loose (code:
    # Python numbers of any kind in boxes, int() of the first two items of a point, so
    # "12" and [12, 5, 7] read; NaN fails each comparison separately).
    loose_values: bool
    # Which response rule applies: "qtype" (the sample's question type; paper) or
    # "answer_text" (code: the GT response "The object is found." -> IS rule, a-d -> MVQA
    # rule, anything else -> OVQA rule; referring samples carry that GT sentence).
    response_branch: str
    box_iou_min: float = 0.5
    box_l1_max: float = 10.0
    point_max: float = 100.0
    size_target: float = 256.0  # 256 px in 1920x1080 = 512 px in the 4K original
    size_tol: float = 15.0
    # Both profiles use ratio >= 0.8, as reproseg.answers.qa does; the paper says "exceeds".
    ovqa_min_ratio: float = 0.8

    @classmethod
    def paper(cls) -> "RewardProfile":
        return cls(name="paper", answer_source="answer_block", exact_keys=True,
                   iou_plus_one=False, iou_strict=False, point_metric="l1",
                   point_truncate=False, point_inside_box=False, region_iou_min=0.5,
                   region_l1_max=10.0, gse_box_key="region", size_plus_one=False,
                   is_rule="phrase", mvqa_rule="exact", ovqa_rule="whole",
                   ovqa_max_words_lpr=None, strip_fence=True, loose_values=False,
                   response_branch="qtype")

    @classmethod
    def reference_code(cls) -> "RewardProfile":
        return cls(name="reference_code", answer_source="first_object", exact_keys=False,
                   iou_plus_one=True, iou_strict=True, point_metric="euclidean",
                   point_truncate=True, point_inside_box=True, region_iou_min=0.9,
                   region_l1_max=20.0, gse_box_key="bbox", size_plus_one=True,
                   is_rule="substring", mvqa_rule="letter", ovqa_rule="word",
                   ovqa_max_words_lpr=3, strip_fence=False, loose_values=True,
                   response_branch="answer_text")

    @classmethod
    def by_name(cls, name: str) -> "RewardProfile":
        if name == "paper":
            return cls.paper()
        if name == "reference_code":
            return cls.reference_code()
        raise ValueError(f"unknown FineRS reward profile {name!r}; expected 'paper' or 'reference_code'")


@dataclass(frozen=True)
class FinersTarget:
    """Ground truth of one sample. LPR reads bbox and points (crop coordinates); GSE reads
    region (`best_region`) and bbox (the object box, for the cover term), both in
    1920x1080 coordinates."""
    qtype: str = "referring"
    answer: str = ""
    bbox: Box | None = None
    points: tuple[Point, Point] | None = None
    region: Box | None = None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "FinersTarget":
        pts = m.get("points")
        points = None
        if isinstance(pts, (list, tuple)) and len(pts) == 2:
            p1, p2 = to_point(pts[0]), to_point(pts[1])
            points = (p1, p2) if p1 is not None and p2 is not None else None
        return cls(qtype=str(m.get("qtype", "referring")), answer=str(m.get("answer", "") or ""),
                   bbox=to_box(m.get("bbox")), points=points, region=to_box(m.get("region")))


def safe_term(fn: Callable[..., float]) -> Callable[..., float]:
    """A term scores 0.0 rather than raise (the authors' terms swallow their errors too)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> float:
        try:
            return float(fn(*args, **kwargs))
        except Exception:
            return 0.0
    return wrapper


def answer_object(parsed: Parsed, profile: RewardProfile) -> dict | None:
    if profile.answer_source == "first_object":
        d = parsed.first_object
    else:
        d = answer_value(parsed, profile.strip_fence)
    return d if isinstance(d, dict) else None


def read_box(value: Any, profile: RewardProfile) -> tuple | None:
    """A box under the profile's value rule (strict floats, or the code's Python numbers)."""
    return loose_box(value) if profile.loose_values else to_box(value)


def pred_box(parsed: Parsed, profile: RewardProfile, key: str) -> tuple | None:
    d = answer_object(parsed, profile)
    return read_box(d.get(key), profile) if d is not None else None


def box_iou(pred: tuple, gt: tuple, profile: RewardProfile) -> float:
    """IoU of two boxes as the profile computes it (the code's Python arithmetic under loose_values)."""
    fn = geo.py_box_iou if profile.loose_values else geo.box_iou
    return fn(pred, gt, plus_one=profile.iou_plus_one, strict=profile.iou_strict)


def box_l1(pred: tuple, gt: tuple, profile: RewardProfile) -> float:
    """Mean L1 distance of two boxes' corners, as the profile computes it."""
    return (geo.py_box_l1 if profile.loose_values else geo.box_l1)(pred, gt)


def format_score(parsed: Parsed, profile: RewardProfile, box_key: str, point_keys: tuple[str, ...]) -> float:
    d = answer_object(parsed, profile)
    if d is None:
        return 0.0
    keys = (box_key, *point_keys, "response")
    response = d.get("response")
    if profile.exact_keys:
        ok = (set(d) == set(keys) and to_box(d[box_key]) is not None
              and all(to_point(d[k]) is not None for k in point_keys) and isinstance(response, str))
    else:
        ok = (all(k in d for k in keys) and isinstance(d[box_key], list) and len(d[box_key]) == 4
              and all(isinstance(d[k], list) and len(d[k]) == 2 for k in point_keys)
              and isinstance(response, str) and response.strip() != "")
    return float(ok)


# ---------------------------------------------------------------- shared terms

@safe_term
def think_reward(parsed: Parsed, gt: FinersTarget | None = None, profile: RewardProfile | None = None) -> float:
    return float(parsed.think_ok)


def _code_task(gt: FinersTarget) -> tuple[str | None, str]:
    """(rule, GT response) as the code's text reward picks them: a referring sample's GT
    response is "The object is found." (its data converter writes that sentence), any
    other sample's is its answer, stripped and lower-cased; an empty one scores nothing."""
    if _QTYPES.get(str(gt.qtype).lower()) == "is":
        return "is", CODE_IS_RESPONSE
    answer = gt.answer.strip().lower()
    if not answer:
        return None, answer
    if answer == CODE_IS_RESPONSE:
        return "is", answer
    return ("mvqa" if answer in CODE_OPTION_LETTERS else "ovqa"), answer


def _response_correct(response: str, gt: FinersTarget, profile: RewardProfile, max_words: int | None) -> bool:
    if profile.response_branch == "answer_text":
        task, answer = _code_task(gt)   # a GT letter outside a-d ("e") takes the OVQA rule
    else:
        task, answer = _QTYPES.get(str(gt.qtype).lower()), gt.answer
    if task == "is":
        if profile.is_rule == "substring":
            low = response.lower()
            return "is found" in low or "is detected" in low
        return _IS_PHRASE.search(response) is not None
    if task == "mvqa":
        # The metric's rules (reproseg.answers.qa): "exact" is its paper rule, "letter" the code's.
        letter = option_letter(answer)
        if letter is None:
            return False
        if profile.mvqa_rule == "letter":
            return option_correct(letter, response, "reference_code")
        return option_correct(answer, response, "paper")
    if task == "ovqa":
        answer = answer.strip().lower()
        if not answer:
            return False
        if profile.ovqa_rule == "word":
            words = response.split()  # the code does not lower-case the prediction
            if max_words is not None and len(words) > max_words:
                return False
            return any(difflib.SequenceMatcher(None, w, answer).ratio() >= profile.ovqa_min_ratio
                       for w in words)
        return open_correct(answer, response, "paper", min_ratio=profile.ovqa_min_ratio)
    return False


def response_score(parsed: Parsed, gt: FinersTarget, profile: RewardProfile, max_words: int | None) -> float:
    d = answer_object(parsed, profile)
    response = d.get("response") if d is not None else None
    if not isinstance(response, str):
        return 0.0
    return float(_response_correct(response, gt, profile, max_words))


def total_reward(parsed: Parsed | str, gt: FinersTarget, terms: dict, profile: RewardProfile | None = None,
                 disabled: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Every term of `terms` (a stage's TERMS: reproseg.finers.lpr_rewards or gse_rewards)
    plus "total" (their sum). A disabled term (ablations such as "w/o QA reward" =
    {"response"}) reports 0.0 and adds nothing. Unknown term names raise ValueError: those
    are configuration errors, not model output."""
    unknown = set(disabled) - set(terms)
    if unknown:
        raise ValueError(f"unknown reward terms {sorted(unknown)}; terms are {list(terms)}")
    profile = profile or RewardProfile.paper()
    if not isinstance(parsed, Parsed):
        parsed = parse(parsed)
    out = {name: 0.0 if name in disabled else fn(parsed, gt, profile) for name, fn in terms.items()}
    out["total"] = float(sum(out.values()))
    return out
