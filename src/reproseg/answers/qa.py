"""MVQA / OVQA answer accuracy by question attribute, as FineRS-4k reports it.

Only option (MVQA) and reasoning (OVQA) samples are scored; referring (IS) samples have
no answer to check and are skipped. A missing response is scored wrong, not dropped, so
the denominator is every scored sample.

Two rule sets, named like the reward profiles:
- "paper" (default, FineRS sec. 4.4 / 5.1): MVQA is right when the response is exactly
  the GT option letter (case, surrounding brackets/quotes and a trailing '.', ':' or ')'
  ignored); OVQA is right when difflib.SequenceMatcher's ratio between the whole
  response and the answer, both lower-cased with whitespace stripped and collapsed, is
  >= 0.8 (the text says "exceeds"; the brief and the code use >=).
- "reference_code" (the authors' evaluation script, JiazuoYu/Fines
  inference_scripts/eval_hd_reasoning_..._cross_stage.py): MVQA is right when the
  lower-cased GT answer, used as written as a regular expression, occurs in the
  lower-cased response between word boundaries, brackets, quotes or punctuation (for a
  letter: anywhere as a standalone word, so "a or b" counts for both; any GT text works,
  no letter is required, and one that is no valid expression scores wrong, where the
  script would stop); OVQA is right when any single word of the lower-cased response
  reaches ratio >= 0.8 against the lower-cased answer, whose whitespace is kept as is.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

PROFILES = ("paper", "reference_code")
TASKS = {"option": "mvqa", "reasoning": "ovqa"}     # FineRS-4k Q-type -> metric
SKIPPED_TASKS = ("referring",)
ATTRIBUTES = ("colors", "shape", "others", "position")
GROUPS = ATTRIBUTES + ("all",)
OPEN_THRESHOLD = 0.8

# A GT option is a letter, maybe followed by its text: "B", "(b)", "B. red", "B: red".
_LEADING_LETTER = re.compile(r"^[\s(\[{'\"]*([a-z])(?:[\s)\]}'\".:]|$)", re.IGNORECASE)
# A paper-profile response must be nothing but the letter and its decoration.
_ONLY_LETTER = re.compile(r"^[\s(\[{'\"]*([a-z])[\s)\]}'\".:]*$", re.IGNORECASE)


def option_letter(answer: str) -> str | None:
    m = _LEADING_LETTER.match(answer or "")
    return m.group(1).lower() if m else None


# Around the GT answer in the evaluation script's MVQA test: a word boundary, or one of
# these characters before / after it.
_CODE_BEFORE = "(?:\\b|[([{'\" ])"
_CODE_AFTER = "(?:\\b|[)\\]}'\" ,.!?])"


def option_correct(answer: str, response: str | None, profile: str = "paper") -> bool:
    if profile == "reference_code":
        if response is None:
            return False
        try:
            return re.search(_CODE_BEFORE + str(answer).lower() + _CODE_AFTER, response.lower()) is not None
        except re.error:
            return False
    letter = option_letter(answer)
    if letter is None:
        raise ValueError(f"MVQA answer {answer!r} does not start with an option letter")
    if response is None:
        return False
    if profile == "paper":
        m = _ONLY_LETTER.match(response)
        return bool(m) and m.group(1).lower() == letter
    raise ValueError(f"unknown QA profile {profile!r}; expected one of {PROFILES}")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def open_correct(answer: str, response: str | None, profile: str = "paper",
                 min_ratio: float = OPEN_THRESHOLD) -> bool:
    if response is None:
        return False
    gt = _norm(answer)
    if profile == "paper":
        return difflib.SequenceMatcher(None, _norm(response), gt).ratio() >= min_ratio
    if profile == "reference_code":
        gt = str(answer).lower()
        return any(difflib.SequenceMatcher(None, word, gt).ratio() >= min_ratio
                   for word in response.lower().split())
    raise ValueError(f"unknown QA profile {profile!r}; expected one of {PROFILES}")


def is_correct(task_type: str, answer: str, response: str | None, profile: str = "paper") -> bool:
    if task_type == "option":
        return option_correct(answer, response, profile)
    if task_type == "reasoning":
        return open_correct(answer, response, profile)
    raise ValueError(f"task type {task_type!r} has no QA answer to score")


# The authors' accuracy divides by n + 1e-10 (an empty attribute scores 0.0); the paper
# profile divides exactly and leaves an empty group NaN (not a measured zero).
QA_SMOOTHING = {"paper": 0.0, "reference_code": 1e-10}


@dataclass(frozen=True)
class QAScore:
    n: int
    correct: int
    smoothing: float = 0.0

    @property
    def accuracy(self) -> float:
        if self.n == 0 and self.smoothing == 0.0:
            return float("nan")
        return self.correct / (self.n + self.smoothing)


def qa_metrics(records: pa.Table | Iterable[Mapping], profile: str = "paper") -> dict[str, dict[str, QAScore]]:
    """{"mvqa"|"ovqa": {attribute|"all": QAScore}} from rows with task_type, attribute,
    answer and pred_response. Unknown task types or attributes raise ValueError."""
    if profile not in PROFILES:
        raise ValueError(f"unknown QA profile {profile!r}; expected one of {PROFILES}")
    if isinstance(records, pa.Table):
        records = records.select(["task_type", "attribute", "answer", "pred_response"]).to_pylist()
    tally = {t: {g: [0, 0] for g in GROUPS} for t in TASKS.values()}   # [n, correct]
    for r in records:
        task = r["task_type"]
        if task in SKIPPED_TASKS:
            continue
        if task not in TASKS:
            raise ValueError(f"unknown task type {task!r}")
        attribute = r["attribute"]
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}")
        hit = is_correct(task, r["answer"], r.get("pred_response"), profile)
        for group in (attribute, "all"):
            tally[TASKS[task]][group][0] += 1
            tally[TASKS[task]][group][1] += hit
    eps = QA_SMOOTHING[profile]
    return {t: {g: QAScore(*nc, eps) for g, nc in groups.items()} for t, groups in tally.items()}


# ---- SegAnswer's answers (stage-3 accuracy reward and VQA accuracy) ----------------

def _loose(text: str) -> str:
    """Lower case, punctuation but . and - dropped, whitespace collapsed (SegAnswer's rule)."""
    return " ".join(re.sub(r"[^\w\s.-]", " ", str(text).lower()).split()).strip(" .")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except (TypeError, ValueError):
        return None


def answer_correct(response: str | None, answer: str, options: Sequence[str] | None = None) -> bool:
    """SegAnswer's rule (its stage-3 R_acc and its VQA accuracy): is `response` (the text
    inside <answer>) the right answer? Multiple choice: the option letter (the "paper"
    rule above) or the option's text; open: the same text or the same number."""
    if response is None:
        return False
    if options:
        letter = option_letter(str(answer))
        if letter is not None and option_correct(str(answer), response, "paper"):
            return True
        if letter is not None and "a" <= letter <= "z" and ord(letter) - 97 < len(options):
            return _loose(response) == _loose(options[ord(letter) - 97])
        return False
    r, a = _loose(response), _loose(answer)
    if r == a:
        return True
    rn, an = _number(r), _number(a)
    return rn is not None and an is not None and math.isclose(rn, an, rel_tol=1e-6, abs_tol=1e-9)
