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
(and the prompt) 0. All rollouts of a batch are decoded in lockstep with one KV cache:
each step every unfinished rollout feeds its own chunk (a sampled token, or an
observation), left-padded to a common length with the padding masked out.

Choices where the paper is silent: at most 3 assistant turns (two segmentations);
several `<|seg|>` in one turn give one segmented image of the union of their masks;
temperature 1.0 and top-p 1.0 in training, greedy decoding in evaluation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from reproseg.config import dataclass_from_dict
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
        return dataclass_from_dict(cls, d, "SegAnswer rollout")


@dataclass
class Rollout:
    """One finished trajectory.

    ids / positions / policy_mask cover prompt + completion; `prompt_len` splits them.
    pixel_values / grids / keeps: one entry per image in token order (the original first).
    """

    ids: list[int]
    positions: torch.Tensor  # (3, L)
    policy_mask: list[int]  # 1 on the tokens the policy wrote (SequenceBuilder.policy_mask)
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
    def completion_policy_mask(self) -> list[int]:
        """1 on tokens the policy generated, 0 on observation tokens."""
        return self.policy_mask[self.prompt_len:]

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


class _Batch:
    """Feeds every row's not-yet-seen tokens in one forward (lockstep), keeping one KV cache.

    Each step a row feeds a chunk of any length (its sampled token, or an observation);
    chunks are left-padded to a common length and the padding slots are masked out of
    attention, so the cache may hold masked holes. Positions are explicit, so a hole
    changes nothing for the real tokens.
    """

    def __init__(self, model: SegAnswerModel, lm, builders: list[SequenceBuilder], pad_id: int):
        self.model, self.lm, self.builders, self.pad_id = model, lm, builders, pad_id
        B = len(builders)
        self.cache = None
        self.fed = [0] * B
        self.attn = torch.zeros((B, 0), dtype=torch.long)
        self.pending_images: list[list] = [[] for _ in range(B)]

    def feed(self, active: list[bool]):
        """Returns (next-token logits (B, V), hidden (B, K, D), [(row start in its sequence, left pad)])."""
        dev = self.model.device
        B = len(self.builders)
        chunks = [b.ids[f:] if a else [] for b, f, a in zip(self.builders, self.fed, active)]
        K = max(1, max(len(c) for c in chunks))
        ids = torch.full((B, K), self.pad_id, dtype=torch.long)
        pos = torch.zeros((3, B, K), dtype=torch.long)
        m = torch.zeros((B, K), dtype=torch.long)
        pv, grid, keeps, where = [], [], [], []
        for i, c in enumerate(chunks):
            n = len(c)
            if n:
                ids[i, K - n:] = torch.tensor(c)
                pos[:, i, K - n:] = self.builders[i].position_ids[:, self.fed[i]:]
                m[i, K - n:] = 1
                for p, g, k in self.pending_images[i]:
                    pv.append(p)
                    grid.append(g)
                    keeps.append(k)
                self.pending_images[i] = []
            where.append((self.fed[i], K - n))
            self.fed[i] += n
        self.attn = torch.cat([self.attn, m], dim=1)
        logits, hidden, self.cache = self.model.lm_forward(
            ids.to(dev), self.attn.to(dev), pos.to(dev),
            torch.cat(pv).to(dev) if pv else None, torch.cat(grid).to(dev) if grid else None,
            keeps if pv else None, past_key_values=self.cache, use_cache=True, logits_to_keep=1, lm=self.lm)
        return logits[:, -1], hidden, where


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


@dataclass
class _Row:
    prompt: PreparedPrompt
    builder: SequenceBuilder
    prompt_len: int
    generator: torch.Generator | None
    sampler: object
    mode: str = "sample"  # "sample" | "await_mask" (the turn's last token is the <|seg|>) | "done"
    turn_ids: list = field(default_factory=list)
    seg_hidden: list = field(default_factory=list)
    turns: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    pixel_values: list = field(default_factory=list)
    grids: list = field(default_factory=list)
    keeps: list = field(default_factory=list)
    sample_logps: list = field(default_factory=list)
    seg_calls: int = 0
    answered: bool = False


@torch.no_grad()
def rollout_batch(model: SegAnswerModel, prompts, s: RolloutSettings, lm=None, generators=None,
                  samplers=None) -> list[Rollout]:
    """One multi-turn trajectory per prepared prompt, all decoded together (one forward per token step).

    generators / samplers: one per prompt (or None). A sampler `fn(logits, generated_so_far)
    -> token id` replaces temperature sampling (scripted tests, constrained decoding).
    """
    lm = model.lm if lm is None else lm
    proc = model.processor
    tok = proc.tokenizer
    tpl = _templates(proc)
    end_id = tok.convert_tokens_to_ids(END_OF_TURN)
    eos_ids = {end_id, tok.eos_token_id}
    eos_ids |= set(np.atleast_1d(getattr(unwrap_qwen(lm).generation_config, "eos_token_id", []) or []).tolist())
    banned = banned_token_ids(tok)
    merge = int(proc.image_processor.merge_size)
    seg_id = model.seg_token_id
    B = len(prompts)
    generators = list(generators) if generators is not None else [None] * B
    samplers = list(samplers) if samplers is not None else [None] * B
    rows = []
    for p, g, f in zip(prompts, generators, samplers):
        b = copy.deepcopy(p.builder)
        rows.append(_Row(p, b, len(b), g, f, pixel_values=[p.pixel_values], grids=[p.grid], keeps=[None]))
    batch = _Batch(model, lm, [r.builder for r in rows], tok.pad_token_id)
    for i, r in enumerate(rows):
        batch.pending_images[i].append((r.prompt.pixel_values, r.prompt.grid, None))

    def observe(i: int, r: _Row) -> None:
        """Mask from the turn's <|seg|> states -> segmented image -> observation appended to the row."""
        _, low, _, _ = model.decode_masks(torch.stack(r.seg_hidden), r.prompt.sam_feats,
                                          torch.zeros(len(r.seg_hidden), dtype=torch.long, device=model.device))
        w, h = r.prompt.image.size
        mask = (model.upsample_masks(low, (h, w))[:, 0] > model.config.mask_threshold).any(0).cpu().numpy()
        r.masks.append(mask)
        keep = mask_patch_keep(mask, r.prompt.grid[0], merge)
        seg_img = segmented_image(r.prompt.image, mask)
        seg_pv = proc.image_processor(images=[seg_img], return_tensors="pt")["pixel_values"]
        b = r.builder
        closing = tpl.after_end if r.turn_ids[-1] == end_id else END_OF_TURN + tpl.after_end
        if closing:
            b.add_text(tok(closing, add_special_tokens=False)["input_ids"], by_policy=False)
        add_rendered_text(b, tok, tpl.observation, False, iter([("segmented", 0, keep)]))
        b.add_text(tok(tpl.header, add_special_tokens=False)["input_ids"], by_policy=False)
        batch.pending_images[i].append((seg_pv, r.prompt.grid, keep))
        r.pixel_values.append(seg_pv)
        r.grids.append(r.prompt.grid)
        r.keeps.append(keep)
        r.turn_ids, r.seg_hidden = [], []
        r.mode = "sample"

    def end_turn(i: int, r: _Row) -> None:
        text = tok.decode(r.turn_ids, skip_special_tokens=False)
        r.turns.append(text)
        n_seg = sum(1 for t in r.turn_ids if t == seg_id)
        if extract_answer(text) is not None or n_seg == 0:
            r.answered = extract_answer(text) is not None
            r.mode = "done"
            return
        r.seg_calls += n_seg
        if len(r.turns) >= s.max_turns or len(r.builder) - r.prompt_len >= s.max_completion_tokens:
            r.mode = "done"  # no turn left to use the segmentation
        elif r.turn_ids[-1] == seg_id:
            r.mode = "await_mask"  # its state comes with the next feed
        else:
            observe(i, r)

    active = [True] * B
    logits, hidden, where = batch.feed(active)
    while True:
        # states of the <|seg|> tokens the policy generated and that were just fed
        for i, r in enumerate(rows):
            start, pad = where[i]
            for j in range(start, batch.fed[i]):
                if r.builder.ids[j] == seg_id and r.builder.policy_mask[j]:
                    r.seg_hidden.append(hidden[i, pad + j - start])
        for i, r in enumerate(rows):
            if r.mode == "await_mask":
                observe(i, r)
            elif r.mode == "sample":
                lg = mask_banned(logits[i], banned)
                gen = r.builder.ids[r.prompt_len:]
                t = _sample(lg, s, r.generator) if r.sampler is None else int(r.sampler(lg, gen))
                r.sample_logps.append(float(torch.log_softmax(lg.float(), -1)[t]))
                r.builder.add_text([t], by_policy=True)
                r.turn_ids.append(t)
                if (t in eos_ids or len(r.turn_ids) >= s.max_turn_tokens
                        or len(r.builder) - r.prompt_len >= s.max_completion_tokens):
                    end_turn(i, r)
        active = [r.mode != "done" for r in rows]
        if not any(active):
            break
        logits, hidden, where = batch.feed(active)
    return [Rollout(ids=list(r.builder.ids), positions=r.builder.position_ids, policy_mask=list(r.builder.policy_mask),
                    prompt_len=r.prompt_len, pixel_values=r.pixel_values, grids=r.grids, keeps=r.keeps,
                    turns=r.turns, seg_calls=r.seg_calls, answered=r.answered, masks=r.masks,
                    sample_logps=r.sample_logps) for r in rows]


@torch.no_grad()
def rollout_one(model: SegAnswerModel, prompt: PreparedPrompt, s: RolloutSettings, lm=None,
                generator: torch.Generator | None = None, sampler=None) -> Rollout:
    """One multi-turn trajectory from a prepared prompt (the prompt's builder is not changed)."""
    return rollout_batch(model, [prompt], s, lm=lm, generators=[generator], samplers=[sampler])[0]


def rollout_row(model: SegAnswerModel, row: dict, n: int, s: RolloutSettings, lm=None,
                seed: int | None = None, sampler=None) -> list[Rollout]:
    """`n` rollouts of one data row {"image", "question", "options"?} or {"image", "prompt"}."""
    messages = row.get("prompt") or reasoning_messages(row["question"], row.get("options"))
    prompt = prepare_prompt(model, row["image"], messages)
    gens = [torch.Generator().manual_seed(int(seed) * 1000003 + k) if seed is not None else None for k in range(n)]
    return rollout_batch(model, [prompt] * n, s, lm=lm, generators=gens, samplers=[sampler] * n)
