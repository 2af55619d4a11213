"""How two-stage inference reads answers, crops and segments, per reward profile.

`paper` (PaperProtocol) is the project's reading of the paper: the JSON of the <answer>
block read strictly, the GSE region turned into a square crop of at least lpr_crop
pixels shifted inside the frame, bicubic resampling (as in training), one SAM 2 mask.

`reference_code` (AuthorsProtocol) is the authors' evaluation as eval.sh runs it
(JiazuoYu/Fines @ 6e0070e, inference_scripts/eval_hd_reasoning_seg_zero_cascade_qa_add_
dist_for_region_prompt_cross_stage.py with --dynamic_box and --qa_stage stage1, so the QA
answer is GSE's):
- the answer is the first `{[^}]+}` of the whole completion with `]"` replaced by `]`,
  read by json.loads, else by ast.literal_eval (single-quoted dicts); the box is the
  first key containing "bbox" (any case) when it has 4 items, the points the first two
  keys containing "points"; every value goes through int() (truncation; "12" reads as
  12) and is scaled and rounded (Python's round: half to even);
- the crop is a square of max(lpr_crop, the box's longer side) centred on the box, each
  coordinate rounded and then clipped to [0, W-1] x [0, H-1], so a crop at the border
  shrinks and is shown stretched to lpr_crop x lpr_crop; an empty crop is the whole frame;
- images are resized bilinearly;
- SAM 2 returns three masks (multimask_output) and the best-scoring one is kept; an
  answer with a box and no points prompts the box alone;
- QA: the GSE response counts only when its box was read (no box: a wrong answer); a
  response that is not text reads as "".
Where the authors' script raises (int() of "12.5", a list answer, a key that is not
text, a box but no points in the LPR answer), which stops its whole evaluation, the
record here is an unparsed answer.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..answers.parsing import first_brace_span, parse, to_box
from .regions import CropFrame, region_to_crop


@dataclass(frozen=True)
class GSEReading:
    """A GSE answer read for inference: the region in GSE-input coordinates, the crop of the
    original frame it becomes ([x0, y0, x1, y1]), whether the crop was clipped, the response."""
    region_gse: list[float] | None
    crop: list[float] | None
    clipped: bool
    response: str | None


@dataclass(frozen=True)
class LPRReading:
    """An LPR answer in original-frame pixels: the box and the positive points."""
    box: list[float]
    points: list[list[float]]


def _segment(predictor, crop_rgb: np.ndarray, box, points, multimask: bool) -> np.ndarray:
    """SAM2 on the crop from a box and positive points; with multimask, the best-scoring of
    its three masks (a single mask is the only one)."""
    predictor.set_image(crop_rgb)
    kwargs = {"box": np.asarray(box, np.float32), "multimask_output": multimask}
    if points:
        kwargs["point_coords"] = np.asarray(points, np.float32)
        kwargs["point_labels"] = np.ones(len(points), np.int32)
    masks, scores, _ = predictor.predict(**kwargs)
    return (masks[int(np.argmax(scores))] if multimask else masks[0]) > 0


class PaperProtocol:
    name = "paper"
    resample = Image.BICUBIC

    def gse(self, text: str, width: int, height: int, cfg: dict) -> GSEReading:
        parsed = parse(text)
        answer = parsed.answer if isinstance(parsed.answer, dict) else None
        region = to_box(answer.get("region", answer.get("bbox"))) if answer is not None else None
        if region is None:
            return GSEReading(None, None, False, parsed.response)
        crop, clipped = region_to_crop(list(region), width, height, cfg["gse_size"], cfg["lpr_crop"])
        return GSEReading(list(region), crop, clipped, parsed.response)

    def lpr(self, text: str, crop: list[float], side: int) -> LPRReading | None:
        p = parse(text)
        if p.bbox is None:
            return None
        frame = CropFrame(tuple(crop), side)
        points = [frame.point_to_original(list(q)) for q in (p.points_1, p.points_2) if q is not None]
        return LPRReading(frame.to_original(list(p.bbox)), points)

    def segment(self, predictor, crop_rgb: np.ndarray, box, points) -> np.ndarray:
        """SAM2 mask of the crop from a box and positive points (crop pixel coordinates)."""
        return _segment(predictor, crop_rgb, box, points, multimask=False)


@dataclass(frozen=True)
class AuthorsAnswer:
    """What the authors' extraction returns: box and points scaled to the target frame
    (None when absent), and the response ("" when absent)."""
    box: list[int] | None
    points: list[list[int]] | None
    response: str


NO_ANSWER = AuthorsAnswer(None, None, "")


def _authors_dict(text: str):
    span = first_brace_span(text)
    if span is None:
        return None
    span = span.replace(']"', "]")
    try:
        return json.loads(span)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(span)
        except (ValueError, SyntaxError):
            return None


def authors_answer(text: str, x_factor: float, y_factor: float) -> AuthorsAnswer:
    """The authors' extract_bbox_points_think; NO_ANSWER where it finds nothing or raises."""
    try:
        data = _authors_dict(text)
        if data is None:
            return NO_ANSWER
        try:
            response = data["response"]
        except Exception:  # their bare except: a missing key reads as ""
            response = ""
        keys = list(data.keys())
        box_key = next((k for k in keys if "bbox" in k.lower()), None)
        box = None
        if box_key and len(data[box_key]) == 4:
            b = data[box_key]
            box = [round(int(b[0]) * x_factor), round(int(b[1]) * y_factor),
                   round(int(b[2]) * x_factor), round(int(b[3]) * y_factor)]
        point_keys = [k for k in keys if "points" in k.lower()][:2]
        points = None
        if len(point_keys) == 2:
            points = [[round(int(data[k][0]) * x_factor), round(int(data[k][1]) * y_factor)] for k in point_keys]
        return AuthorsAnswer(box, points, response if isinstance(response, str) else "")
    except Exception:  # where their script stops with a traceback
        return NO_ANSWER


def dynamic_crop(box, width: int, height: int, min_side: int) -> tuple[list[float], bool]:
    """The authors' dynamic_box, then the crop their slicing takes: ([x0, y0, x1, y1],
    clipped?). An empty crop (their cv2 call fails) becomes the whole frame."""
    x_min, y_min, x_max, y_max = box
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    side = max(min_side, max(x_max - x_min, y_max - y_min))
    raw = [int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(cx + side / 2)), int(round(cy + side / 2))]
    limits = [width - 1, height - 1, width - 1, height - 1]
    out = [max(0, min(v, lim)) for v, lim in zip(raw, limits)]
    if out[2] <= out[0] or out[3] <= out[1]:
        return [0.0, 0.0, float(width), float(height)], True
    return [float(v) for v in out], out != raw


class AuthorsProtocol:
    name = "reference_code"
    resample = Image.BILINEAR

    def gse(self, text: str, width: int, height: int, cfg: dict) -> GSEReading:
        gw, gh = cfg["gse_size"]
        a = authors_answer(text, width / gw, height / gh)
        if a.box is None:
            return GSEReading(None, None, False, None)
        crop, clipped = dynamic_crop(a.box, width, height, cfg["lpr_crop"])
        region = [a.box[0] * gw / width, a.box[1] * gh / height, a.box[2] * gw / width, a.box[3] * gh / height]
        return GSEReading(region, crop, clipped, a.response)

    def lpr(self, text: str, crop: list[float], side: int) -> LPRReading | None:
        x0, y0, x1, y1 = crop
        a = authors_answer(text, (x1 - x0) / side, (y1 - y0) / side)
        if a.box is None:   # no box: an empty mask there too, or a traceback (points without a box)
            return None
        points = [[p[0] + x0, p[1] + y0] for p in a.points] if a.points is not None else []
        return LPRReading([a.box[0] + x0, a.box[1] + y0, a.box[2] + x0, a.box[3] + y0], points)

    def segment(self, predictor, crop_rgb: np.ndarray, box, points) -> np.ndarray:
        return _segment(predictor, crop_rgb, box, points, multimask=True)


PROTOCOLS = {"paper": PaperProtocol(), "reference_code": AuthorsProtocol()}


def protocol(profile: str):
    """The inference protocol of a FineRS reward profile."""
    if profile not in PROTOCOLS:
        raise ValueError(f"unknown FineRS reward profile {profile!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[profile]
