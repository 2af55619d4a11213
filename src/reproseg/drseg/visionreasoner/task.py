"""VisionReasoner's task as Dr. Seg uses it: the prompt, the answer, the 840x840 frame.

The policy sees every image resized to 840x840 and answers, in that frame,
`<think>...</think><answer>[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]</answer>`.
Training targets are already in the 840 frame (the released set stores 840x840 images);
at evaluation the answer is mapped back to the original image as the authors' scripts
do it: each coordinate becomes int(v * original / 840 + 0.5).

Reading an answer for evaluation (`answer_objects`) follows the evaluation scripts'
parser where it is well defined (json.loads of the answer block, no fence handling, every
item needs both keys, else the whole answer is a parse failure) with the strict value
reading of reproseg.answers.parsing (4 / 2 finite numbers; the scripts would index a
longer list or a numeric string and crash on others). An empty list is a valid answer
with no object, unlike a failure: VisionReasoner counts it 0 objects and an empty mask.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from PIL import Image

from reproseg.answers.parsing import Parsed, answer_value, parse, to_box, to_point

POLICY_SIZE = 840   # VisionReasoner / Dr. Seg resize every image to 840x840 for the policy

# The example answer both templates show (Seg-Zero verl/utils/rl_dataset.py).
EXAMPLE_ANSWER = ('[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, '
                  '{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]')

# VisionReasoner's user prompt (Seg-Zero verl/utils/rl_dataset.py; the evaluation's
# DETECTION_TEMPLATE is the same text). The sentences are joined without spaces, as there.
VISIONREASONER_TEMPLATE = (
    'Please find "{question}" with bboxs and points.'
    "Compare the difference between object(s) and find the most closely matched object(s)."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>{answer}</answer>")

# Dr. Seg's Look-to-Confirm prompt (paper Fig. 6; Dr-Seg verl/utils/rl_dataset.py). Its
# bracketed placeholders are what reproseg.drseg.rewards.TEMPLATE_PLACEHOLDERS catches.
LOOK_TO_CONFIRM_TEMPLATE = (
    'Please find "{question}" with bboxs and points.'
    "Compare the difference between object(s) and find the most closely matched object(s)."
    "Output the thinking process inside <think>...</think>."
    "Inside this reasoning, you must include one or more <look>...</look> blocks, enclosing the parts "
    "of the reasoning where you pay special attention to certain visual information."
    " Then, output the final answer inside <answer>...</answer>."
    " Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
    " i.e., <think> [your reasoning text] <look> [your visual focus] </look> [more reasoning text] </think>"
    "<answer>{answer}</answer>")

TEMPLATES = {"visionreasoner": VISIONREASONER_TEMPLATE, "look_to_confirm": LOOK_TO_CONFIRM_TEMPLATE}

# The query is lower-cased and these characters are stripped from its ends: training
# strips '.', the evaluation scripts '."?!'.
TRAIN_STRIP = "."
EVAL_STRIP = '."?!'


def clean_query(text: str, strip: str = TRAIN_STRIP) -> str:
    return text.lower().strip(strip)


def render_prompt(query: str, template: str = VISIONREASONER_TEMPLATE, strip: str = TRAIN_STRIP) -> str:
    """The user prompt for one query; the trainer puts the image before it."""
    return template.format(question=clean_query(query, strip), answer=EXAMPLE_ANSWER)


def messages(prompt: str) -> list[dict]:
    """One user turn (the authors add no system prompt of their own)."""
    return [{"role": "user", "content": prompt}]


@dataclass(frozen=True)
class Objects:
    """An answer's objects: boxes [x1, y1, x2, y2] and points [x, y], one of each per object."""
    boxes: tuple[tuple[float, ...], ...]
    points: tuple[tuple[float, ...], ...]

    def __len__(self) -> int:
        return len(self.boxes)

    def as_json(self) -> str:
        return format_answer(self.boxes, self.points)


def format_answer(boxes: Iterable[Sequence[float]], points: Iterable[Sequence[float]]) -> str:
    """The answer block's JSON for these objects (a training target or a reference answer)."""
    return json.dumps([{"bbox_2d": list(b), "point_2d": list(p)} for b, p in zip(boxes, points, strict=True)])


def read_objects(value: Any) -> Objects | None:
    """A list of {"bbox_2d", "point_2d"} items as Objects, or None when it is no such list
    (an item without either key, or a value that is not 4 / 2 finite numbers)."""
    if not isinstance(value, list):
        return None
    boxes, points = [], []
    for item in value:
        if not isinstance(item, dict):
            return None
        box, point = to_box(item.get("bbox_2d")), to_point(item.get("point_2d"))
        if box is None or point is None:
            return None
        boxes.append(box)
        points.append(point)
    return Objects(tuple(boxes), tuple(points))


def answer_objects(completion: Parsed | str, strip_fence: bool = False) -> Objects | None:
    """The completion's objects in the policy frame, or None for a parse failure."""
    p = completion if isinstance(completion, Parsed) else parse(completion)
    return read_objects(answer_value(p, strip_fence))


def scale(value: float, factor: float) -> int:
    """The authors' rounding of a scaled coordinate: int() of v * factor + 0.5 (truncates
    towards zero, so it rounds half up for positive values only)."""
    return int(value * factor + 0.5)


def rescale(objects: Objects, fx: float, fy: float) -> Objects:
    return Objects(tuple((scale(b[0], fx), scale(b[1], fy), scale(b[2], fx), scale(b[3], fy)) for b in objects.boxes),
                   tuple((scale(p[0], fx), scale(p[1], fy)) for p in objects.points))


def to_original(objects: Objects, width: int, height: int, size: int = POLICY_SIZE) -> Objects:
    """Policy-frame objects in the pixels of a width x height original (evaluation)."""
    return rescale(objects, width / size, height / size)


def to_policy(objects: Objects, width: int, height: int, size: int = POLICY_SIZE) -> Objects:
    """Original-image objects in the policy frame (how the training set was built)."""
    return rescale(objects, size / width, size / height)


def policy_image(image: Image.Image, size: int = POLICY_SIZE) -> Image.Image:
    """The image the policy sees: RGB, resized to size x size with bilinear filtering, as
    the evaluation scripts resize it (the training set was resized once with OpenCV's
    INTER_AREA when it was built; its images are already 840x840)."""
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BILINEAR)
