"""SegAnswer's interleaved conversation: the question prompt, the segmentation turn and the answer.

The reasoning prompt carries what the paper's Sec. 3.2 template asks of the model (stage
2, reused by stage 3 and evaluation), in this project's own words: decide whether a
region would help, segment it with <|seg|> if so, then answer inside <answer></answer>
using the segmented area and the original image. Users who want the paper's exact
wording pass it as `template`.

Choices where the paper is silent:
- the observation turn (the segmented image) is a user message that holds the image
  only, no text (the paper shows "<segmented region of interest>" alone);
- the stage-2 responses follow the shape of the paper's examples (a short sentence
  ending in <|seg|>, then "<answer>{answer}</answer>", no spaces inside the tags);
- every stage-2 sample takes the segmentation turn (VisualCoT marks a question region
  for every sample; the paper uses no box, only the answer).
"""
from __future__ import annotations

import re

REASONING_PROMPT = (
    "Question: {question}\n"
    "Look at the image and decide whether one part of it would make the question easier to answer. "
    "If so, mark that part by writing <|seg|>; the segmented part will then be shown to you.\n"
    "Answer from the segmented part and the whole image, inside <answer> </answer>.\n"
    "Reply with either <|seg|> or <answer> your answer </answer>."
)
SEG_RESPONSE = "I should look at the relevant region first: <|seg|>."
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
