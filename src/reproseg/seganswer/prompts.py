"""SegAnswer's interleaved conversation: the question prompt, the segmentation turn and the answer.

The reasoning prompt is the template of paper Sec. 3.2 (stage 2, reused by stage 3 and
evaluation): it is part of the method's input specification, so it is kept as the
paper gives it. The answer goes inside <answer></answer>.

Choices where the paper is silent:
- the observation turn (the segmented image) is a user message that holds the image
  only, no text (the paper shows "<segmented region of interest>" alone);
- the stage-2 responses are the paper's examples: "To find the answer, it should first
  observe <|seg|>." and "<answer>{answer}</answer>" (no spaces inside the tags);
- every stage-2 sample takes the segmentation turn (VisualCoT marks a question region
  for every sample; the paper uses no box, only the answer).
"""
from __future__ import annotations

import re

REASONING_PROMPT = (
    "Question: {question}\n"
    "Based on the original image and the question, reason whether there exists a region in the image "
    "that could help you answer the question better. If such a region exists, do segmentation to get the "
    "question-relevant area with the tag <|seg|>.\n"
    "Then, you will receive the segmented area. Use both the segmented area and the original image to "
    "answer the question inside the <answer> and </answer> tags.\n"
    "Format Example: <|seg|> OR <answer> final answer </answer>."
)
SEG_RESPONSE = "To find the answer, it should first observe <|seg|>."
ANSWER_RESPONSE = "<answer>{answer}</answer>"

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def question_text(question: str, options: list[str] | None = None) -> str:
    """The question, with lettered options on their own lines for multiple choice."""
    if options:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        question = question + "\n" + "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(options))
    return question


def reasoning_messages(question: str, options: list[str] | None = None, template: str = REASONING_PROMPT) -> list[dict]:
    """The first user turn: the image, then the prompt."""
    return [{"role": "user", "content": [
        {"type": "image"},
        {"type": "text", "text": template.format(question=question_text(question, options))},
    ]}]


def observation_message() -> dict:
    return {"role": "user", "content": [{"type": "image"}]}


def extract_answer(text: str) -> str | None:
    """Content of the last <answer>...</answer> block, stripped; None if there is none."""
    found = _ANSWER.findall(text or "")
    return found[-1].strip() if found else None
