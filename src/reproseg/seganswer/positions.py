"""Interleaved SegAnswer sequences: token ids, M-RoPE position ids and sparse segmented images.

SegAnswer (paper Sec. 3.2, Fig. 1b) feeds the segmented region back to the model as a
new user turn that holds only the image patches the mask touches, and keeps each of
those patches at the position index it has in the original image. Qwen2.5-VL's
processor and `get_rope_index` know only whole images, so this module builds the ids
and the (3, L) (t, h, w) position ids by hand.

Rules (Qwen2.5-VL's own rules for text and whole images, checked against
`model.model.get_rope_index` in the tests):
- text tokens take one position, the same on all three axes, counting up from a running
  counter `cur`;
- a whole image of g_h x g_w merged patches (after the 2x2 spatial merge) placed when
  the counter is `s` takes (t, h, w) = (s, s + row, s + col) for its patches in row-major
  order, and the counter moves on by max(g_h, g_w);
- a *segmented* image refers to an earlier whole image: it holds only the merged patches
  the mask touches (row-major order) and each takes exactly the (t, h, w) of the same
  patch of that earlier image.

Where the paper is silent (choices of this reproduction):
- the segmented image does not move the text counter: the text after it continues from
  where the text before it stopped (its patches reuse positions, they take no new ones);
- "the mask touches a patch" means at least one mask pixel lies in the patch's area of
  the original image (each merged patch covers an equal share of the original image,
  the processor only rescales it);
- the segmented image is the original image with every pixel outside the mask set to
  black (0), encoded by the vision tower at the original's grid, so patch features and
  positions match one to one; the tokens of untouched patches are then dropped.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

TEXT, IMAGE = 0, 1  # Qwen's mm_token_type_ids values


def merged_grid(grid_thw: Sequence[int] | torch.Tensor, merge_size: int) -> tuple[int, int, int]:
    """(t, h, w) of an image in merged patches (what the language model sees)."""
    t, h, w = (int(v) for v in grid_thw)
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid {t}x{h}x{w} is not divisible by the merge size {merge_size}")
    return t, h // merge_size, w // merge_size


def image_positions(start: int, grid_thw, merge_size: int) -> torch.Tensor:
    """(3, t*h*w) positions of a whole image placed at counter value `start` (row-major)."""
    t, h, w = merged_grid(grid_thw, merge_size)
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + start


def mask_patch_keep(mask: np.ndarray, grid_thw, merge_size: int) -> np.ndarray:
    """Bool (t*h*w,) in row-major merged-patch order: does the mask touch that patch?

    `mask` is (H, W) at the original image's resolution, any aspect ratio; merged patch
    (r, c) of an h x w grid (any h, w: the processor's grid for that image) covers rows
    [floor(r*H/h), ceil((r+1)*H/h)) and columns [floor(c*W/w), ceil((c+1)*W/w)): the
    processor rescales each axis uniformly, so each patch is an equal share of each axis.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    t, h, w = merged_grid(grid_thw, merge_size)
    H, W = mask.shape
    r0 = np.floor(np.arange(h) * H / h).astype(int)
    r1 = np.ceil((np.arange(h) + 1) * H / h).astype(int)
    c0 = np.floor(np.arange(w) * W / w).astype(int)
    c1 = np.ceil((np.arange(w) + 1) * W / w).astype(int)
    # Row bands first, then column bands: bool arrays of (h, W) and (h, w), no (H, W)
    # integer temporaries (an 8K mask is 33 M pixels).
    rows = np.stack([mask[a:b].any(0) for a, b in zip(r0, r1)])
    keep = np.stack([rows[:, a:b].any(1) for a, b in zip(c0, c1)], axis=1).reshape(-1)
    return np.tile(keep, t)


def segmented_image(image, mask: np.ndarray, fill: int = 0):
    """The image with every pixel outside `mask` set to `fill` (same size, RGB PIL image)."""
    arr = np.array(image.convert("RGB"))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != arr.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {arr.shape[:2]}")
    arr[~mask] = fill
    return Image.fromarray(arr)


@dataclass
class ImageEntry:
    """One image of a sequence, in the order its tokens appear.

    grid_thw: the vision tower's patch grid (before merging); keep: None for a whole
    image, else a bool mask over its merged patches (a segmented image); ref: for a
    segmented image, the index of the whole image whose positions it reuses.
    """

    grid_thw: tuple[int, int, int]
    keep: np.ndarray | None = None
    ref: int | None = None
    positions: torch.Tensor | None = None  # (3, n_patches) of all its merged patches


@dataclass
class SequenceBuilder:
    """Grows one interleaved sequence piece by piece; every piece returns its own ids and positions.

    The same builder serves SFT (whole conversation at once) and RL rollouts (prompt,
    then generated turns and observations as they come), so the positions the policy
    saw while sampling are exactly the ones it is trained with.
    """

    image_token_id: int
    vision_start_id: int
    vision_end_id: int
    merge_size: int = 2
    ids: list[int] = field(default_factory=list)
    pos: list[torch.Tensor] = field(default_factory=list)  # (3, n) chunks
    mm_types: list[int] = field(default_factory=list)
    # 1 on the tokens the policy writes, the only ones any loss sees; 0 on the prompt, image
    # pads and observations (one name for this along SFT, rollouts and stage 3's loss).
    policy_mask: list[int] = field(default_factory=list)
    images: list[ImageEntry] = field(default_factory=list)
    cur: int = 0

    def add_text(self, ids: Sequence[int], by_policy: bool = False) -> tuple[list[int], torch.Tensor]:
        ids = [int(i) for i in ids]
        p = torch.arange(self.cur, self.cur + len(ids)).expand(3, -1).clone()
        self.cur += len(ids)
        self._append(ids, p, [TEXT] * len(ids), by_policy)
        return ids, p

    def add_image(self, grid_thw, with_markers: bool = True) -> tuple[list[int], torch.Tensor]:
        """A whole image: <|vision_start|> pads <|vision_end|> (markers are text tokens, never trained)."""
        grid = tuple(int(v) for v in grid_thw)

        def place():
            p = image_positions(self.cur, grid, self.merge_size)
            _, h, w = merged_grid(grid, self.merge_size)
            return p, ImageEntry(grid, None, None, p), max(h, w)

        return self._add_visual(place, with_markers)

    def add_segmented_image(self, ref: int, keep: np.ndarray,
                            with_markers: bool = True) -> tuple[list[int], torch.Tensor]:
        """Only the kept merged patches of image `ref`, at that image's positions; the counter does not move."""
        base = self.images[ref]
        if base.keep is not None:
            raise ValueError("a segmented image must refer to a whole image")
        keep = np.asarray(keep, dtype=bool).reshape(-1)
        if keep.size != base.positions.shape[1]:
            raise ValueError(f"keep has {keep.size} entries, image {ref} has {base.positions.shape[1]} merged patches")

        def place():
            return base.positions[:, torch.from_numpy(keep)], ImageEntry(base.grid_thw, keep, ref, base.positions), 0

        return self._add_visual(place, with_markers)

    def _add_visual(self, place, with_markers: bool) -> tuple[list[int], torch.Tensor]:
        """Markers around image pads; `place()` (called after the start marker, whose
        position it may depend on) gives the pads' positions, the image entry and how
        far the position counter moves."""
        out_ids, out_pos = [], []
        if with_markers:
            i, p = self.add_text([self.vision_start_id])
            out_ids += i
            out_pos.append(p)
        p, entry, advance = place()
        n = p.shape[1]
        self.images.append(entry)
        self.cur += advance
        self._append([self.image_token_id] * n, p, [IMAGE] * n, False)
        out_ids += [self.image_token_id] * n
        out_pos.append(p)
        if with_markers:
            i, p = self.add_text([self.vision_end_id])
            out_ids += i
            out_pos.append(p)
        return out_ids, torch.cat(out_pos, dim=1)

    def _append(self, ids, p, types, by_policy):
        self.ids += ids
        self.pos.append(p)
        self.mm_types += types
        self.policy_mask += [1 if by_policy else 0] * len(ids)

    # -- results ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.tensor(self.ids, dtype=torch.long)

    @property
    def position_ids(self) -> torch.Tensor:
        """(3, L) int64."""
        if not self.pos:
            return torch.zeros(3, 0, dtype=torch.long)
        return torch.cat(self.pos, dim=1).long()

    @property
    def mm_token_type_ids(self) -> torch.Tensor:
        return torch.tensor(self.mm_types, dtype=torch.long)

    @property
    def image_keeps(self) -> list[np.ndarray | None]:
        return [e.keep for e in self.images]

    @property
    def image_grids(self) -> torch.Tensor:
        return torch.tensor([e.grid_thw for e in self.images], dtype=torch.long).reshape(-1, 3)


def builder_for(processor) -> SequenceBuilder:
    """A SequenceBuilder with the processor's special-token ids and merge size."""
    tok = processor.tokenizer
    return SequenceBuilder(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        merge_size=int(processor.image_processor.merge_size),
    )


# -- chat rendering ----------------------------------------------------------------------
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def render_messages(processor, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def message_chunks(processor, messages: list[dict], add_generation_prompt: bool = False) -> list[tuple[str, str]]:
    """The rendered text split per message: [(role, text)], plus ("generation", header) if asked.

    The chat template appends one message at a time, so each chunk is the difference
    between rendering messages[:k+1] and messages[:k].
    """
    out, prev = [], ""
    for k in range(len(messages)):
        text = render_messages(processor, messages[: k + 1])
        if not text.startswith(prev):
            raise ValueError("the chat template is not prefix-stable; cannot split it per message")
        out.append((messages[k]["role"], text[len(prev):]))
        prev = text
    if add_generation_prompt:
        text = render_messages(processor, messages, add_generation_prompt=True)
        out.append(("generation", text[len(prev):]))
    return out


def assistant_header(processor) -> str:
    """The text the template puts before an assistant message (Qwen: '<|im_start|>assistant\\n')."""
    probe = [{"role": "user", "content": "x"}]
    return render_messages(processor, probe, True)[len(render_messages(processor, probe)):]


def add_rendered_text(builder: SequenceBuilder, tokenizer, text: str, by_policy: bool = False,
                      images: Iterator | None = None) -> None:
    """Adds rendered chat text; each image placeholder takes the next item of `images`.

    `images` yields ("whole", grid_thw) or ("segmented", ref, keep).
    """
    parts = text.split(IMAGE_PLACEHOLDER)
    for j, part in enumerate(parts):
        if part:
            builder.add_text(tokenizer(part, add_special_tokens=False)["input_ids"], by_policy)
        if j < len(parts) - 1:
            if images is None:
                raise ValueError("the text has an image placeholder but no image was given")
            item = next(images)
            if item[0] == "whole":
                builder.add_image(item[1])
            else:
                builder.add_segmented_image(item[1], item[2])


def add_assistant_chunk(builder: SequenceBuilder, tokenizer, chunk: str, header: str, end_token: str) -> None:
    """An assistant message: the header is context, the content up to and including the
    end-of-turn token is trained, anything after it (the template's newline) is not."""
    if not chunk.startswith(header):
        raise ValueError(f"assistant chunk does not start with the header {header!r}")
    body = chunk[len(header):]
    cut = body.find(end_token)
    trained, tail = (body, "") if cut < 0 else (body[: cut + len(end_token)], body[cut + len(end_token):])
    builder.add_text(tokenizer(header, add_special_tokens=False)["input_ids"], False)
    builder.add_text(tokenizer(trained, add_special_tokens=False)["input_ids"], True)
    if tail:
        builder.add_text(tokenizer(tail, add_special_tokens=False)["input_ids"], False)


def build_conversation(processor, messages: list[dict], images: list, add_generation_prompt: bool = False,
                       end_token: str = "<|im_end|>") -> SequenceBuilder:
    """Builds a whole conversation; image parts are consumed from `images` in order.

    `images` items: ("whole", grid_thw) or ("segmented", ref, keep). Assistant contents
    are the policy's (policy mask 1), everything else is context.
    """
    builder = builder_for(processor)
    tok = processor.tokenizer
    header = assistant_header(processor)
    it = iter(images)
    for role, chunk in message_chunks(processor, messages, add_generation_prompt):
        if role == "assistant":
            add_assistant_chunk(builder, tok, chunk, header, end_token)
        else:
            add_rendered_text(builder, tok, chunk, False, it)
    leftover = list(it)
    if leftover:
        raise ValueError(f"{len(leftover)} image(s) given but not placed in the conversation")
    return builder


# -- sparse image features in the model's forward ----------------------------------------
def _qwen_core(model):
    """The Qwen2_5_VLModel inside a (PEFT- or accelerate-wrapped) Qwen2_5_VLForConditionalGeneration."""
    m = model
    for _ in range(6):
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
        elif hasattr(m, "module") and not hasattr(m, "visual") and not hasattr(m, "language_model"):
            m = m.module
        else:
            break
    core = getattr(m, "model", m)
    if not hasattr(core, "get_image_features"):
        raise TypeError(f"{type(model).__name__} does not hold a Qwen2.5-VL model")
    return core


@contextlib.contextmanager
def sparse_image_features(model, keeps: Sequence[np.ndarray | torch.Tensor | None] | None):
    """Within the block, the model's image features are cut to the kept merged patches.

    `keeps` has one entry per image in `image_grid_thw` order: None keeps all of that
    image's tokens, a bool mask keeps only those patches. The vision tower still encodes
    every image whole (window attention needs the full grid); the cut is applied to its
    output, inside the model's own forward, so wrappers (DDP, PEFT) see one forward.
    """
    if keeps is None or all(k is None for k in keeps):
        yield
        return
    core = _qwen_core(model)
    original = core.get_image_features
    masks = [None if k is None else torch.as_tensor(np.asarray(k), dtype=torch.bool).reshape(-1) for k in keeps]

    def cut(*args, **kwargs):
        out = original(*args, **kwargs)
        feats = out.pooler_output
        if len(feats) != len(masks):
            raise ValueError(f"{len(feats)} images encoded but {len(masks)} keep masks given")
        out.pooler_output = tuple(
            f if m is None else f[m.to(f.device)] for f, m in zip(feats, masks)
        )
        return out

    shadowed = core.__dict__.get("get_image_features")  # an outer patch, if any
    core.get_image_features = cut
    try:
        yield
    finally:
        if shadowed is None:
            del core.get_image_features  # the class method shows through again
        else:
            core.get_image_features = shadowed
