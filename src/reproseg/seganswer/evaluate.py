"""SegAnswer evaluation: referring segmentation (gIoU / cIoU) and question answering accuracy.

Referring segmentation (paper Table 3) uses the stage-1 prompt; the model decodes
greedily and the mask comes from the first `<|seg|>` it writes; an answer without
`<|seg|>` is a missing prediction (I = 0, U = |GT|). Masks are compared at each
picture's native resolution: the rows are read unresized and the predicted logits are
upsampled to the picture's own size. gIoU / cIoU follow the project's
LISA-style rules (reproseg.metrics.segmentation: an empty target with an empty
prediction scores 1).

`evaluate_referring_given` measures the mask alone: the stage-1 response is given and
the mask is read at its `<|seg|>`.

Question answering (paper Tables 1-2) runs the multi-turn rollout greedily (up to
`max_turns` assistant turns, segmenting when the model asks) and scores the final
<answer>: multiple choice by the option letter (metrics.qa's "paper" rule, or the
option's text), open answers as in stage 3's R_acc. A question never answered within
the turn limit counts as wrong.

HR-Bench is scored as its official scorer does (DreamMr/HR-Bench's
vlmeval/dataset/image_mcq.py HRBenchDataset.evaluate with utils/hrbench.py
hrbench_score, the same as VLMEvalKit's report_acc_hrbench and lmms-eval's
hrbench_aggregate_results): `hrbench_accuracy`, used by `qa_accuracy` whenever every
record carries a `cycle_category`.

Choices where the paper is silent: greedy decoding, at most 3 assistant turns, at most
64 new tokens for the segmentation answer.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from reproseg.answers.qa import answer_correct
from reproseg.metrics.segmentation import per_sample, summarise
from reproseg.seganswer.model import SegAnswerModel
from reproseg.seganswer.prompts import REASONING_PROMPT, reasoning_messages
from reproseg.seganswer.rollout import RolloutSettings, prepare_prompt, rollout_batch
from reproseg.seganswer.stage1 import PROMPT_TEMPLATE, predict_masks


def giou_ciou(pred_masks: Sequence[np.ndarray | None], gt_masks: Sequence[np.ndarray]) -> dict:
    """{"giou", "ciou", "n", "n_missing", "n_invalid"} over dense masks (None = missing prediction)."""
    def rle(m):
        r = mask_utils.encode(np.asfortranarray(np.asarray(m, dtype=np.uint8)))
        return {"size": list(r["size"]), "counts": r["counts"]}

    records = []
    for i, (p, g) in enumerate(zip(pred_masks, gt_masks, strict=True)):
        records.append({"id": str(i), "gt_rle": rle(g), "pred_rle": None if p is None else rle(p),
                        "size_bucket": "s"})  # one bucket: only "all" is reported
    score = summarise(per_sample(records))["all"]
    return {"giou": score.giou, "ciou": score.ciou, "n": score.n, "n_missing": score.n_missing,
            "n_invalid": score.n_invalid}


@torch.no_grad()
def predict_referring_masks(model: SegAnswerModel, rows: Sequence[Mapping], max_new_tokens: int = 64,
                            prompt_template: str = PROMPT_TEMPLATE, batch_size: int = 8, progress: bool = True,
                            desc: str = "eval") -> list[np.ndarray | None]:
    """Greedy answer to "Segment the {phrase} in the image."; the mask of its first `<|seg|>` (None if none)."""
    model.eval()
    s = RolloutSettings(max_turns=1, max_turn_tokens=max_new_tokens, max_completion_tokens=max_new_tokens,
                        temperature=0.0)
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"{desc} referring", unit="batch", disable=not progress):
        chunk = rows[start:start + batch_size]
        prompts = [prepare_prompt(model, r["image"], [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": prompt_template.format(phrase=r["phrase"])}]}])
            for r in chunk]
        for r, ro in zip(chunk, rollout_batch(model, prompts, s)):
            out.append(_first_seg_mask(model, r["image"], ro))
    return out


def _first_seg_mask(model: SegAnswerModel, image, ro) -> np.ndarray | None:
    """Mask at the first `<|seg|>` of a one-turn rollout (one forward over the finished sequence)."""
    seg_pos = [i for i in range(ro.prompt_len, len(ro.ids)) if ro.ids[i] == model.seg_token_id]
    if not seg_pos:
        return None
    ids = torch.tensor(ro.ids, device=model.device)[None]
    pos = ro.positions.to(model.device)[:, None]
    _, hidden, _ = model.lm_forward(ids, None, pos, torch.cat(ro.pixel_values).to(model.device),
                                    torch.cat(ro.grids).to(model.device), ro.keeps)
    feats = model.sam_image_features([image])
    _, low, _, _ = model.decode_masks(hidden[0, seg_pos[:1]], feats, torch.zeros(1, dtype=torch.long))
    w, h = image.size
    return (model.upsample_masks(low, (h, w))[0, 0] > model.config.mask_threshold).cpu().numpy()


def evaluate_referring(model: SegAnswerModel, rows: Sequence[Mapping], **kw) -> dict:
    """gIoU / cIoU of rows {"image", "mask", "phrase"}: the model writes its answer (greedy)."""
    preds = predict_referring_masks(model, rows, **kw)
    return giou_ciou(preds, [r["mask"] for r in rows])


def evaluate_referring_given(model: SegAnswerModel, rows: Sequence[Mapping], batch_size: int = 8) -> dict:
    """gIoU / cIoU with the stage-1 response ("It is <|seg|>.") given instead of generated: the
    mask the model decodes for the phrase, whether or not it would have written `<|seg|>`
    (a model that no longer answers the stage-1 prompt that way is still measured)."""
    preds = predict_masks(model, rows, batch_size=batch_size)
    return giou_ciou(preds, [r["mask"] for r in rows])


@torch.no_grad()
def answer_questions(model: SegAnswerModel, rows: Sequence[Mapping], max_turns: int = 3,
                     max_turn_tokens: int = 256, batch_size: int = 8, progress: bool = True,
                     desc: str = "eval", template: str = REASONING_PROMPT) -> list[dict]:
    """Greedy multi-turn answers: one record per row with pred_response, answered, seg_calls, turns.
    template: the first user turn, as the model was trained with it (seganswer.reasoning_prompt)."""
    model.eval()
    s = RolloutSettings(max_turns=max_turns, max_turn_tokens=max_turn_tokens,
                        max_completion_tokens=max_turns * (max_turn_tokens + 2048), temperature=0.0)
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"{desc} questions", unit="batch", disable=not progress):
        chunk = rows[start:start + batch_size]
        prompts = [prepare_prompt(model, r["image"], reasoning_messages(r["question"], r.get("options"), template))
                   for r in chunk]
        for r, ro in zip(chunk, rollout_batch(model, prompts, s)):
            out.append({"question": r["question"], "answer": r["answer"], "options": r.get("options"),
                        "category": r.get("category"), "cycle_category": r.get("cycle_category"),
                        "pred_response": ro.answer, "answered": ro.answered, "seg_calls": ro.seg_calls,
                        "turns": ro.turns})
    return out


def _correct(r: Mapping) -> bool:
    return bool(answer_correct(r.get("pred_response"), r["answer"], r.get("options")))


def qa_accuracy(records: Iterable[Mapping]) -> dict:
    """{"accuracy", "n", "correct", "unanswered"}; multiple choice when a record has options.

    When every record carries a `cycle_category` (an HR-Bench benchmark), `accuracy` is
    the official HR-Bench score and the record adds its parts (`hrbench_accuracy`);
    otherwise it is correct / n. A mix (a val set pooling HR-Bench with other sources)
    is scored correct / n: the cycle average is defined over one benchmark.
    """
    records = list(records)
    n, correct = len(records), sum(_correct(r) for r in records)
    unanswered = sum(r.get("pred_response") is None for r in records)
    out = {"accuracy": correct / n if n else float("nan"), "n": n, "correct": correct, "unanswered": unanswered}
    if records and all(r.get("cycle_category") is not None for r in records):
        out.update(hrbench_accuracy(records))
    return out


def hrbench_accuracy(records: Sequence[Mapping]) -> dict:
    """HR-Bench's official score of records carrying `category` and `cycle_category`.

    The official scorer groups the rows by cycle_category; within each cycle it takes the
    accuracy over all the cycle's rows and the accuracy per category ("single" = FSP,
    "cross" = FCP); each of these is then averaged over the cycles. So the overall score
    is the mean over cycles of each cycle's accuracy over all its rows (not the mean of
    the FSP and FCP scores; the two coincide when every cycle holds as many rows of
    each category), and a category's score is the mean over cycles of its accuracy
    within the cycle. Where a category is missing from some cycle (only in a
    `limit`ed evaluation) its mean is over the cycles that hold it, as lmms-eval does;
    the DreamMr / VLMEvalKit scorers would divide by every cycle, scoring it 0 there.

    A row is right by this project's answer check (the option letter), where DreamMr's
    scorer asks an LLM judge whether the prediction answers "<letter>. <text>" (lmms-eval
    has an LLM extract the letter; VLMEvalKit also offers plain option matching).

    Returns {"accuracy": the overall score, "pooled_accuracy": correct / n over all rows,
    "categories": {category: score}, "cycles": {cycle: that cycle's accuracy},
    "scoring": "hrbench"}; rows without a category count only in the overall score.
    """
    if not records:
        raise ValueError("hrbench_accuracy needs at least one record")
    by_cycle: dict[str, list[tuple[str | None, bool]]] = {}
    for r in records:
        category = None if r.get("category") is None else str(r["category"])
        by_cycle.setdefault(str(r["cycle_category"]), []).append((category, _correct(r)))
    cycles, per_category = {}, {}
    for cycle, rows in sorted(by_cycle.items()):
        cycles[cycle] = sum(hit for _, hit in rows) / len(rows)
        groups: dict[str, list[bool]] = {}
        for category, hit in rows:
            if category is not None:
                groups.setdefault(category, []).append(hit)
        for category, hits in groups.items():
            per_category.setdefault(category, []).append(sum(hits) / len(hits))
    pooled = sum(hit for rows in by_cycle.values() for _, hit in rows) / len(records)
    return {"accuracy": sum(cycles.values()) / len(cycles), "pooled_accuracy": pooled,
            "categories": {c: sum(v) / len(v) for c, v in sorted(per_category.items())},
            "cycles": cycles, "scoring": "hrbench"}


def multiple_choice_accuracy(records: Iterable[Mapping]) -> float:
    """Accuracy of records {"answer": letter (or "B. text"), "pred_response", "options"}."""
    return qa_accuracy(records)["accuracy"]
