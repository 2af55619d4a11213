"""Multi-turn SegAnswer rollouts (stage 3 and evaluation): generate, segment, look again, answer.

One rollout (paper Sec. 3.3, Eq. 1):
1. the prompt (image + reasoning prompt) is encoded;
2. the policy samples one assistant turn, token by token, until an end-of-turn token
   (or `max_turn_tokens`, or the completion budget);
3. a turn with an <answer>...</answer> block, or without `<|seg|>`, ends the rollout;
4. a turn with `<|seg|>`: the hidden state of each `<|seg|>` goes through the projector
   and the mask decoder; the masks (OR-ed when there are several) cut the original
   image; the observation (the end-of-turn token if the model did not write it, a user
   turn holding only the touched patches at their original positions, and the next
   assistant header) is appended, then back to 2, up to `max_turns` assistant turns.
A rollout that has not answered when the turn limit or the budget is reached is
"unanswered" (stage 3 gives it zero reward and counts it).

The sequence is grown with positions.SequenceBuilder, so sampling and training see the
same ids and (t, h, w) positions; generated tokens carry loss mask 1, observation tokens
(and the prompt) 0. Sampling uses the model's KV cache; each rollout runs on its own
(batch 1), which keeps the position bookkeeping exact.

Choices where the paper is silent: at most 3 assistant turns (two segmentations);
several `<|seg|>` in one turn give one segmented image of the union of their masks;
temperature 1.0 and top-p 1.0 in training, greedy decoding in evaluation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from reproseg.seganswer.model import SegAnswerModel, unwrap_qwen
from reproseg.seganswer.positions import (
    SequenceBuilder,
    add_rendered_text,
    build_conversation,
    mask_patch_keep,
    message_chunks,
    segmented_image,
)
from reproseg.seganswer.prompts import extract_answer, observation_message, reasoning_messages

END_OF_TURN = "<|im_end|>"
# The policy may never write these: they are placeholders the processor and the model
# reserve for images (a sampled <|image_pad|> would be taken for an image token).
BANNED_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def banned_token_ids(tokenizer) -> list[int]:
    out = []
    for t in BANNED_TOKENS:
        i = tokenizer.convert_tokens_to_ids(t)
        if i is not None and i != tokenizer.unk_token_id:
            out.append(int(i))
    return out


def mask_banned(logits: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """Logits with the banned ids at -inf (last dim = vocabulary); used for sampling and for the loss."""
    if not banned:
        return logits
    logits = logits.clone()
    logits[..., banned] = float("-inf")
    return logits


@dataclass
class RolloutSettings:
    max_turns: int = 3
    max_turn_tokens: int = 256
    max_completion_tokens: int = 1024  # generated + observation tokens after the prompt
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "RolloutSettings":
        return cls(**(d or {}))


@dataclass
class Rollout:
    """One finished trajectory.

    ids / positions / loss_mask cover prompt + completion; `prompt_len` splits them.
    pixel_values / grids / keeps: one entry per image in token order (the original first).
    """

    ids: list[int]
    positions: torch.Tensor  # (3, L)
    loss_mask: list[int]
    prompt_len: int
    pixel_values: list[torch.Tensor]
    grids: list[torch.Tensor]
    keeps: list[np.ndarray | None]
    turns: list[str]
    seg_calls: int
    answered: bool
    masks: list[np.ndarray] = field(default_factory=list)  # one (H, W) bool per segmentation turn
    sample_logps: list[float] = field(default_factory=list)  # log p (T=1, banned ids masked) of each generated token

    @property
    def completion_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]

    @property
    def completion_loss_mask(self) -> list[int]:
        """1 on tokens the policy generated, 0 on observation tokens."""
        return self.loss_mask[self.prompt_len:]

    @property
    def answer(self) -> str | None:
        return extract_answer(self.turns[-1]) if self.answered else None

    @property
    def text(self) -> str:
        """The assistant turns joined with an observation marker (what reward functions read)."""
        return "\n[segmented image]\n".join(self.turns)


@dataclass
class _Templates:
    after_end: str  # what the template writes after the end-of-turn token of an assistant message
    observation: str  # rendered observation user turn (with one image placeholder)
    header: str  # next assistant header


def _templates(processor) -> _Templates:
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, observation_message()]
    chunks = message_chunks(processor, probe, add_generation_prompt=True)
    assistant = chunks[1][1]
    cut = assistant.find(END_OF_TURN)
    after = assistant[cut + len(END_OF_TURN):] if cut >= 0 else ""
    return _Templates(after_end=after, observation=chunks[2][1], header=chunks[3][1])


class _Stepper:
    """Feeds the builder's not-yet-seen tokens to the model, keeping the KV cache."""

    def __init__(self, model: SegAnswerModel, lm, builder: SequenceBuilder):
        self.model, self.lm, self.b = model, lm, builder
        self.cache = None
        self.fed = 0
        self.pending_images: list[tuple[torch.Tensor, torch.Tensor, np.ndarray | None]] = []

    def feed(self):
        ids = torch.tensor(self.b.ids[self.fed:], dtype=torch.long, device=self.model.device)[None]
        pos = self.b.position_ids[:, self.fed:].to(self.model.device)[:, None]
        pv = grid = keeps = None
        if self.pending_images:
            pv = torch.cat([p for p, _, _ in self.pending_images]).to(self.model.device)
            grid = torch.cat([g for _, g, _ in self.pending_images]).to(self.model.device)
            keeps = [k for _, _, k in self.pending_images]
        logits, hidden, self.cache = self.model.lm_forward(ids, None, pos, pv, grid, keeps,
                                                           past_key_values=self.cache, use_cache=True,
                                                           logits_to_keep=1, lm=self.lm)
        start = self.fed
        self.fed = len(self.b.ids)
        self.pending_images = []
        return logits[0, -1], hidden[0], start


def _sample(logits: torch.Tensor, s: RolloutSettings, gen: torch.Generator | None) -> int:
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s.top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


@dataclass
class PreparedPrompt:
    image: object
    builder: SequenceBuilder
    pixel_values: torch.Tensor
    grid: torch.Tensor
    sam_feats: dict


@torch.no_grad()
def prepare_prompt(model: SegAnswerModel, image, messages: list[dict]) -> PreparedPrompt:
    """Builder (prompt + generation header), vision inputs and SAM features of one prompt."""
    image = image.convert("RGB")
    vision = model.processor.image_processor(images=[image], return_tensors="pt")
    grid = vision["image_grid_thw"]
    builder = build_conversation(model.processor, messages, [("whole", grid[0])], add_generation_prompt=True)
    return PreparedPrompt(image, builder, vision["pixel_values"], grid, model.sam_image_features([image]))


@torch.no_grad()
def rollout_one(model: SegAnswerModel, prompt: PreparedPrompt, s: RolloutSettings, lm=None,
                generator: torch.Generator | None = None, sampler=None) -> Rollout:
    """One multi-turn trajectory from a prepared prompt (the prompt's builder is not changed).

    sampler: optional `fn(logits, generated_so_far) -> token id` replacing temperature
    sampling (scripted tests, constrained decoding).
    """
    lm = model.lm if lm is None else lm
    proc = model.processor
    tok = proc.tokenizer
    tpl = _templates(proc)
    b = copy.deepcopy(prompt.builder)
    prompt_len = len(b)
    end_id = tok.convert_tokens_to_ids(END_OF_TURN)
    eos_ids = {end_id, tok.eos_token_id}
    eos_ids |= set(np.atleast_1d(getattr(unwrap_qwen(lm).generation_config, "eos_token_id", []) or []).tolist())
    merge = int(proc.image_processor.merge_size)
    stepper = _Stepper(model, lm, b)
    stepper.pending_images.append((prompt.pixel_values, prompt.grid, None))
    pvs, grids, keeps = [prompt.pixel_values], [prompt.grid], [None]
    turns, masks, seg_calls, answered = [], [], 0, False
    sample_logps: list[float] = []
    banned = banned_token_ids(tok)
    logits, _, _ = stepper.feed()
    for turn in range(s.max_turns):
        turn_ids: list[int] = []
        seg_hidden: list[torch.Tensor] = []  # last-layer state of each <|seg|> of this turn
        while True:
            logits = mask_banned(logits, banned)
            t = _sample(logits, s, generator) if sampler is None else int(sampler(logits, b.ids[prompt_len:]))
            sample_logps.append(float(torch.log_softmax(logits.float(), -1)[t]))
            b.add_text([t], trainable=True)
            turn_ids.append(t)
            if (t in eos_ids or len(turn_ids) >= s.max_turn_tokens
                    or len(b) - prompt_len >= s.max_completion_tokens):
                break
            logits, hidden, _ = stepper.feed()  # feeds exactly t
            if t == model.seg_token_id:
                seg_hidden.append(hidden[-1])
        text = tok.decode(turn_ids, skip_special_tokens=False)
        turns.append(text)
        n_seg = sum(1 for t in turn_ids if t == model.seg_token_id)
        if extract_answer(text) is not None or n_seg == 0:
            answered = extract_answer(text) is not None
            break
        seg_calls += n_seg
        if turn == s.max_turns - 1 or len(b) - prompt_len >= s.max_completion_tokens:
            break  # the segmentation is not carried out: no turn is left to use it
        # Feed the turn's last token (its state is needed if it is the <|seg|>).
        _, hidden, _ = stepper.feed()
        if turn_ids[-1] == model.seg_token_id:
            seg_hidden.append(hidden[-1])
        _, low, _, _ = model.decode_masks(torch.stack(seg_hidden), prompt.sam_feats,
                                          torch.zeros(len(seg_hidden), dtype=torch.long, device=model.device))
        w, h = prompt.image.size
        up = model.upsample_masks(low, (h, w))[:, 0] > model.config.mask_threshold
        mask = up.any(0).cpu().numpy()
        masks.append(mask)
        keep = mask_patch_keep(mask, prompt.grid[0], merge)
        seg_img = segmented_image(prompt.image, mask)
        seg_pv = proc.image_processor(images=[seg_img], return_tensors="pt")["pixel_values"]
        # Observation: close the turn if the model did not, the segmented image, the next header.
        closing = tpl.after_end if turn_ids[-1] == end_id else END_OF_TURN + tpl.after_end
        if closing:
            b.add_text(tok(closing, add_special_tokens=False)["input_ids"], trainable=False)
        add_rendered_text(b, tok, tpl.observation, False, iter([("segmented", 0, keep)]))
        b.add_text(tok(tpl.header, add_special_tokens=False)["input_ids"], trainable=False)
        stepper.pending_images.append((seg_pv, prompt.grid, keep))
        pvs.append(seg_pv)
        grids.append(prompt.grid)
        keeps.append(keep)
        logits, _, _ = stepper.feed()
    return Rollout(ids=list(b.ids), positions=b.position_ids, loss_mask=list(b.loss), prompt_len=prompt_len,
                   pixel_values=pvs, grids=grids, keeps=keeps, turns=turns, seg_calls=seg_calls,
                   answered=answered, masks=masks, sample_logps=sample_logps)


def rollout_row(model: SegAnswerModel, row: dict, n: int, s: RolloutSettings, lm=None,
                seed: int | None = None, sampler=None) -> list[Rollout]:
    """`n` rollouts of one data row {"image", "question", "options"?} or {"image", "prompt"}."""
    messages = row.get("prompt") or reasoning_messages(row["question"], row.get("options"))
    prompt = prepare_prompt(model, row["image"], messages)
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return [rollout_one(model, prompt, s, lm=lm, generator=gen, sampler=sampler) for _ in range(n)]
