"""Prompt rendering for LPR and GSE. The templates live in config (finers.prompts), so
a user can paste the authors' exact wording; placeholders are {question}, {options}
and {region_size}."""
from __future__ import annotations

TASK_TYPES = ("referring", "option", "reasoning")


def options_text(letters, options) -> str:
    if not options:
        return ""
    return "\nOptions: " + " ".join(f"{letter}. {text}" for letter, text in zip(letters, options))


def render(templates: dict, stage: str, task_type: str, *, question: str, letters=(), options=(),
           region_size: int = 0, look: bool = False) -> str:
    """One user prompt. `look` adds the Look-to-Confirm instruction (Dr. Seg)."""
    stage_templates = templates[stage]
    if task_type not in stage_templates:
        raise KeyError(f"no {stage} prompt template for task type {task_type!r}")
    text = stage_templates[task_type].format(
        question=question.strip(), options=options_text(letters, options), region_size=region_size)
    if look:
        text += " " + templates["look"].strip()
    return text


def messages(prompt: str) -> list[dict]:
    """A single user turn; the trainer inserts the image before the text."""
    return [{"role": "user", "content": prompt}]


def target_answer(row: dict) -> str:
    """The text the response is judged against: the option letter for MVQA."""
    if row["task_type"] == "option":
        return row["answer_option"] or row["answer"]
    return row["answer"]
