"""SegAnswer's model: Qwen2.5-VL + an MLP projector + SAM 2.1 (frozen image encoder, mask decoder).

Paper Sec. 3.1: the last-layer hidden state at each `<|seg|>` token goes through a
simple MLP projector into the mask decoder's prompt space, and SAM 2.1's mask decoder
decodes the mask "as in SAM 2".

Choices where the paper is silent:
- "last-layer hidden state" = the language model's final output after its last norm
  (what the LM head reads);
- projector = Linear(d, d) -> ReLU -> Linear(d, 256) (the LISA-style two-layer MLP);
  each `<|seg|>` token gives one sparse prompt token, so the decoder gets (B, 1, 256)
  per mask (N = 1);
- dense prompt = SAM's learnt "no mask" embedding (no mask input), image features from
  SAM 2.1's image encoder with `no_mem_embed` added, exactly as SAM2ImagePredictor
  does for a single image; the prompt encoder and image encoder stay frozen;
- single-mask output (`multimask_output=False`); the mask is the logits upsampled to the
  original image size, thresholded at 0;
- SAM runs in float32 whatever the language model's dtype (it is small).

Images reach the model at their native resolution (reproseg.seganswer.sources.rows); each
side resizes them its own way: the Qwen2.5-VL processor keeps the aspect ratio and picks a
grid of 28-px multiples within `PixelBounds` (transformers' `smart_resize`), SAM 2.1 takes
its square `image_size` input (SAM2Transforms), and masks come back at the native size.

On-disk format (a Hugging Face Qwen2.5-VL directory with the SegAnswer parts beside it):
    config.json, model.safetensors(.index.json + shards), tokenizer/processor files
    seganswer_config.json       this model's settings (written last: marks a whole dir)
    seganswer_heads.safetensors projector.* and mask_decoder.* weights
    sam2/                       model.pt ({"model": state_dict}) + sam2_config.json: the SAM 2.1
                                checkpoint the model started from (hard-linked where possible);
                                its mask decoder is replaced by the heads file on load
    lora/                       only in an unmerged LoRA checkpoint (PEFT adapter)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from sam2.utils.transforms import SAM2Transforms
from torch import nn
from transformers.image_utils import SizeDict

from reproseg.io_atomic import atomic_dir, write_json
from reproseg.models.loading import load_policy
from reproseg.models.sam_loading import load_sam2_predictor
from reproseg.models.sam_features import SamFeatureCache
from reproseg.models.tiny_bundle import SAM2_CHECKPOINT_FILE, SAM2_CONFIG_FILE, SEG_TOKEN
from reproseg.seganswer.positions import sparse_image_features

CONFIG_FILE = "seganswer_config.json"
HEADS_FILE = "seganswer_heads.safetensors"
SAM2_SUBDIR = "sam2"
LORA_SUBDIR = "lora"
_OWN_ENTRIES = {CONFIG_FILE, HEADS_FILE, SAM2_SUBDIR, LORA_SUBDIR}
PROMPT_DIM = 256  # SAM 2.1's prompt/transformer width


@dataclass
class SegAnswerConfig:
    hidden_size: int
    prompt_dim: int = PROMPT_DIM
    projector_hidden: int | None = None  # None: = hidden_size
    seg_token: str = SEG_TOKEN
    multimask_output: bool = False
    mask_threshold: float = 0.0
    sam2_config_name: str = ""
    sam2_overrides: list = field(default_factory=list)
    sam2_image_size: int = 1024
    format_version: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "SegAnswerConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {CONFIG_FILE} keys {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json_string(self) -> str:
        """What a Trainer's TensorBoard and W&B callbacks record as the model's config."""
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class PixelBounds:
    """Bounds on the pixel count of the picture the Qwen2.5-VL processor makes from an image
    (`seganswer.min_pixels` / `max_pixels`): it keeps the aspect ratio, rounds each side to
    a multiple of patch x merge size (28) and rescales into [min_pixels, max_pixels]
    (transformers' `smart_resize`). Set on the processor, they are saved with it, so a
    checkpoint's processor carries the bounds it was trained with."""

    min_pixels: int
    max_pixels: int

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"seganswer.{name} must be a positive integer, got {v!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"seganswer.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})")

    @classmethod
    def of(cls, cfg: dict) -> "PixelBounds":
        """The bounds of a `seganswer` config section."""
        return cls(cfg["min_pixels"], cfg["max_pixels"])

    def apply(self, processor) -> None:
        """Makes the processor's image processor resize within these bounds (transformers 5
        keeps them as size.shortest_edge / longest_edge, what its `smart_resize` reads)."""
        processor.image_processor.size = SizeDict(shortest_edge=self.min_pixels, longest_edge=self.max_pixels)


class SegProjector(nn.Module):
    """MLP from the language model's hidden size to SAM's prompt width."""

    def __init__(self, hidden_size: int, prompt_dim: int = PROMPT_DIM, inner: int | None = None):
        super().__init__()
        inner = inner or hidden_size
        self.fc1 = nn.Linear(hidden_size, inner)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(inner, prompt_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(h)))


@dataclass
class SegOutput:
    """What `SegAnswerModel.forward` returns.

    logits (B, L, V) of the language model; hidden (B, L, D) last-layer states;
    seg_index (S, 2) = (batch row, position) of every `<|seg|>` token, in row-major
    order; mask_logits (S, 1, h, w) at SAM's low resolution; iou_pred (S, 1);
    object_logits (S, 1); prompts (S, 1, 256) the projected sparse prompts.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    seg_index: torch.Tensor
    mask_logits: torch.Tensor | None
    iou_pred: torch.Tensor | None
    object_logits: torch.Tensor | None
    prompts: torch.Tensor | None


def unwrap_qwen(lm):
    """The Qwen2_5_VLForConditionalGeneration inside a PEFT / DDP wrapper (LoRA layers stay injected)."""
    m = lm
    for _ in range(6):
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
        elif hasattr(m, "module") and not hasattr(m, "lm_head"):
            m = m.module
        else:
            break
    return m


def is_peft(lm) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "get_base_model")


def ensure_seg_token(lm, processor, token: str = SEG_TOKEN) -> int:
    """Adds `token` to the tokenizer (growing the embeddings if needed) when it is missing; returns its id.

    The new token's input and output rows start at the mean of the rows of the existing
    tokens (a common choice for added tokens). A released Qwen2.5-VL has spare rows past
    its tokenizer's size, so usually nothing is resized.
    """
    tok = processor.tokenizer
    if token in tok.get_vocab():
        return int(tok.convert_tokens_to_ids(token))
    n_before = len(tok)
    tok.add_tokens([token], special_tokens=True)
    tid = int(tok.convert_tokens_to_ids(token))
    core = unwrap_qwen(lm)
    if tid >= core.get_input_embeddings().weight.shape[0]:
        core.resize_token_embeddings(tid + 1, mean_resizing=False)
    with torch.no_grad():
        emb = core.get_input_embeddings().weight
        emb[tid] = emb[:n_before].mean(0)
        out = core.get_output_embeddings().weight
        if out.data_ptr() != emb.data_ptr():
            out[tid] = out[:n_before].mean(0)
    return tid


def resolve_device(name: str = "auto") -> str:
    """"auto": the GPU when there is one (a Slurm GPU job), else the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _load_sam2_model(path: Path, config_name: str | None, overrides: list | None):
    predictor = load_sam2_predictor(path, config_name=config_name, overrides=overrides)
    return predictor.model


class SegAnswerModel(nn.Module):
    """Qwen2.5-VL policy + projector + SAM 2.1 mask decoder, one `forward` for text and masks."""

    def __init__(self, lm, processor, sam, projector: SegProjector, config: SegAnswerConfig,
                 base_qwen_dir: str | None = None, sam2_checkpoint: str | None = None):
        super().__init__()
        # The SAM 2.1 checkpoint file the frozen parts came from: saving links it instead
        # of rewriting it (the trained mask decoder lives in the heads file).
        self.sam2_checkpoint = sam2_checkpoint
        self.lm = lm
        self.processor = processor
        self.sam = sam
        self.projector = projector
        self.config = config
        self.base_qwen_dir = base_qwen_dir  # where an unmerged LoRA model's base weights live
        self.seg_token_id = int(processor.tokenizer.convert_tokens_to_ids(config.seg_token))
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self._sam_transforms = None
        self.feature_cache: SamFeatureCache | None = None

    def train(self, mode: bool = True) -> "SegAnswerModel":
        """Training mode for the language model and the projector; SAM 2.1 stays in eval mode
        (frozen but for its mask decoder, which has no dropout or batch norm that should change),
        whoever calls train(): a Trainer does at every step."""
        super().train(mode)
        self.sam.eval()
        return self

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_base(cls, qwen_dir, sam2_path, sam2_config_name: str | None = None, sam2_overrides=None,
                  seed: int = 0, dtype: str = "float32", device: str = "cpu",
                  pixels: PixelBounds | None = None) -> "SegAnswerModel":
        """A fresh SegAnswer model: pretrained Qwen2.5-VL + SAM 2.1, projector initialised with `seed`.

        sam2_path: a bundle directory (with sam2_config.json) or a bare SAM 2.1 checkpoint
        (then `sam2_config_name`, e.g. configs/sam2.1/sam2.1_hiera_l.yaml, is required).
        pixels: the processor's resize bounds (None: those saved with the Qwen directory).
        """
        lm, processor = load_policy(qwen_dir, dtype=dtype, device=device)
        if pixels is not None:
            pixels.apply(processor)
        ensure_seg_token(lm, processor)
        sam2_path = Path(sam2_path)
        if sam2_path.is_dir():
            meta = json.loads((sam2_path / SAM2_CONFIG_FILE).read_text())
            sam2_config_name = sam2_config_name or meta["config_name"]
            sam2_overrides = list(meta["overrides"]) if sam2_overrides is None else list(sam2_overrides)
        elif sam2_config_name is None:
            raise ValueError("a bare SAM 2.1 checkpoint needs sam2_config_name")
        sam = _load_sam2_model(sam2_path, sam2_config_name, sam2_overrides).to(device).float()
        ckpt = sam2_path / json.loads((sam2_path / SAM2_CONFIG_FILE).read_text())["checkpoint"] \
            if sam2_path.is_dir() else sam2_path
        hidden = int(unwrap_qwen(lm).config.text_config.hidden_size)
        config = SegAnswerConfig(
            hidden_size=hidden,
            sam2_config_name=sam2_config_name,
            sam2_overrides=list(sam2_overrides or []),
            sam2_image_size=int(sam.image_size),
        )
        g = torch.Generator().manual_seed(int(seed))
        projector = SegProjector(hidden, config.prompt_dim, config.projector_hidden)
        with torch.no_grad():
            for p in projector.parameters():  # seeded, independent of the global RNG
                if p.ndim == 2:
                    bound = 1.0 / np.sqrt(p.shape[1])
                    p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
                else:
                    p.zero_()
        return cls(lm, processor, sam, projector.to(device), config, base_qwen_dir=str(qwen_dir),
                   sam2_checkpoint=str(ckpt))

    @classmethod
    def from_pretrained(cls, path, dtype: str = "float32", device: str = "cpu",
                        lora_trainable: bool = False, pixels: PixelBounds | None = None,
                        lm_meta: bool = False) -> "SegAnswerModel":
        """Loads a directory written by `save_pretrained` (offline, local files only).
        pixels: the processor's resize bounds (None: those saved with the checkpoint).
        lm_meta: the language model without its weights, on the meta device (a sharded
        stage's ranks but the first: reproseg.seganswer.sharding fills their shards)."""
        path = Path(path)
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{path} is not a SegAnswer checkpoint (no {CONFIG_FILE})")
        config = SegAnswerConfig.from_dict(json.loads(cfg_path.read_text()))
        if lm_meta and (path / LORA_SUBDIR).is_dir():
            raise ValueError(f"{path}: an unmerged LoRA checkpoint cannot be loaded without its weights (lm_meta)")
        lm, processor = load_policy(path, dtype=dtype, device=device, meta=lm_meta)
        if pixels is not None:
            pixels.apply(processor)
        if (path / LORA_SUBDIR).is_dir():
            lm = PeftModel.from_pretrained(lm, path / LORA_SUBDIR, is_trainable=lora_trainable)
        sam = _load_sam2_model(path / SAM2_SUBDIR, None, None).to(device).float()
        heads = load_file(str(path / HEADS_FILE))
        projector = SegProjector(config.hidden_size, config.prompt_dim, config.projector_hidden)
        projector.load_state_dict({k[len("projector."):]: v for k, v in heads.items() if k.startswith("projector.")},
                                  strict=True)
        sam.sam_mask_decoder.load_state_dict(
            {k[len("mask_decoder."):]: v for k, v in heads.items() if k.startswith("mask_decoder.")}, strict=True
        )
        sam_meta = json.loads((path / SAM2_SUBDIR / SAM2_CONFIG_FILE).read_text())
        return cls(lm, processor, sam, projector.to(device), config, base_qwen_dir=str(path),
                   sam2_checkpoint=str(path / SAM2_SUBDIR / sam_meta["checkpoint"]))

    # -- saving ------------------------------------------------------------------------
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        out.update({f"mask_decoder.{k}": v for k, v in self.sam.sam_mask_decoder.state_dict().items()})
        return {k: v.detach().float().contiguous().cpu() for k, v in out.items()}

    def save_pretrained(self, out_dir, lm_state_dict: dict | None = None) -> None:
        """Writes the whole model into `out_dir` (which should be empty or new).

        An unmerged LoRA model is written as the base weights (copied from
        `base_qwen_dir`) plus lora/; `merge_lora` turns it into a plain checkpoint.
        lm_state_dict: the language model's weights when they are not whole in this
        process (gathered from a sharded model).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).unlink(missing_ok=True)  # written last again
        if is_peft(self.lm):
            if not self.base_qwen_dir:
                raise ValueError("an unmerged LoRA model needs base_qwen_dir to save its base weights")
            _copy_qwen_files(Path(self.base_qwen_dir), out)
            self.lm.save_pretrained(str(out / LORA_SUBDIR))
        else:
            unwrap_qwen(self.lm).save_pretrained(out, safe_serialization=True, state_dict=lm_state_dict)
        self.processor.save_pretrained(out)
        save_file(self.heads_state_dict(), str(out / HEADS_FILE))
        sam_dir = out / SAM2_SUBDIR
        sam_dir.mkdir(exist_ok=True)
        target = sam_dir / SAM2_CHECKPOINT_FILE
        if self.sam2_checkpoint and Path(self.sam2_checkpoint).is_file():
            if Path(self.sam2_checkpoint).resolve() != target.resolve():
                target.unlink(missing_ok=True)
                _link_or_copy(Path(self.sam2_checkpoint), target)
        else:
            torch.save({"model": {k: v.detach().cpu() for k, v in self.sam.state_dict().items()}}, target)
        write_json(sam_dir / SAM2_CONFIG_FILE, {
            "config_name": self.config.sam2_config_name,
            "overrides": list(self.config.sam2_overrides),
            "image_size": int(self.config.sam2_image_size),
            "checkpoint": SAM2_CHECKPOINT_FILE,
        })
        write_json(out / CONFIG_FILE, asdict(self.config))

    # -- SAM side ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def sam_transforms(self):
        if self._sam_transforms is None:
            self._sam_transforms = SAM2Transforms(resolution=int(self.sam.image_size), mask_threshold=0.0,
                                                  max_hole_area=0.0, max_sprinkle_area=0.0)
        return self._sam_transforms

    def enable_feature_cache(self, max_mb: float) -> None:
        """Keep SAM image-encoder features of pictures seen before, up to `max_mb` MB (0: none).

        The image encoder is frozen in every stage, so a cached feature is what a new
        forward would give (up to the float rounding of a different batch composition);
        training revisits the same pictures every epoch. At SAM's 1024 px one picture's
        features take 16 MB, at 256 px 1 MB.
        """
        self.feature_cache = SamFeatureCache(max_mb) if max_mb and max_mb > 0 else None

    @torch.no_grad()
    def sam_image_features(self, images: Sequence) -> dict:
        """SAM 2.1 image-encoder features of PIL images (frozen; computed without gradients)."""
        arrays = [np.asarray(im.convert("RGB")) for im in images]
        cache = self.feature_cache
        keys = [SamFeatureCache.key(a) for a in arrays] if cache is not None else [None] * len(arrays)
        found = [cache.get(k) if cache is not None else None for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            tf = self.sam_transforms()
            x = torch.stack([tf(arrays[i]) for i in todo]).to(self.device)
            backbone = self.sam.forward_image(x)
            _, feats, _, sizes = self.sam._prepare_backbone_features(backbone)
            if self.sam.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + self.sam.no_mem_embed
            maps = [f.permute(1, 2, 0).reshape(len(todo), -1, *s) for f, s in zip(feats, sizes)]
            for j, i in enumerate(todo):
                found[i] = [m[j:j + 1] for m in maps]
                if cache is not None:
                    cache.put(keys[i], found[i])
        maps = [torch.cat([f[level] for f in found]) for level in range(len(found[0]))]
        return {
            "image_embed": maps[-1],
            "high_res_feats": maps[:-1],
            "orig_hw": [(a.shape[0], a.shape[1]) for a in arrays],
        }

    def decode_masks(self, seg_hidden: torch.Tensor, sam_feats: dict, image_index: torch.Tensor):
        """Masks from `<|seg|>` hidden states.

        seg_hidden (S, D); image_index (S,) which image of `sam_feats` each belongs to.
        Returns (prompts (S,1,256), low-res mask logits (S,1,h,w), iou (S,1), object logits (S,1)).
        """
        prompts = self.projector(seg_hidden.to(self.projector.fc1.weight.dtype)).unsqueeze(1)
        idx = image_index.to(sam_feats["image_embed"].device).long()
        image_embed = sam_feats["image_embed"].index_select(0, idx)
        high_res = [f.index_select(0, idx) for f in sam_feats["high_res_feats"]]
        pe = self.sam.sam_prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            prompts.shape[0], -1, *pe.image_embedding_size
        )
        masks, iou, _, obj = self.sam.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=prompts.float(),
            dense_prompt_embeddings=dense,
            multimask_output=self.config.multimask_output,
            repeat_image=False,
            high_res_features=high_res,
        )
        if masks.shape[1] > 1:  # multimask: keep the one with the highest predicted IoU
            best = iou.argmax(dim=1)
            ar = torch.arange(masks.shape[0], device=masks.device)
            masks, iou = masks[ar, best].unsqueeze(1), iou[ar, best].unsqueeze(1)
        return prompts, masks, iou, obj

    def upsample_masks(self, low_res: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits (S,1,h,w) -> logits at (H, W) (bilinear, as SAM 2 post-processes)."""
        return torch.nn.functional.interpolate(low_res.float(), size=tuple(size_hw), mode="bilinear",
                                               align_corners=False)

    # -- language model side -----------------------------------------------------------
    def lm_forward(self, input_ids, attention_mask=None, position_ids=None, pixel_values=None,
                   image_grid_thw=None, image_keeps=None, past_key_values=None, use_cache=False,
                   logits_to_keep: int = 0, lm=None):
        """(logits, last hidden state, cache) with explicit (3,B,L) positions and sparse images."""
        lm = self.lm if lm is None else lm
        core = unwrap_qwen(lm)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=past_key_values, use_cache=use_cache)
        if pixel_values is not None:
            kwargs.update(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
        with sparse_image_features(core, image_keeps):
            out = core.model(**kwargs)
        hidden = out.last_hidden_state
        h = hidden if not logits_to_keep else hidden[:, -logits_to_keep:]
        logits = core.lm_head(h)
        return logits, hidden, out.past_key_values

    def forward(self, input_ids, attention_mask=None, position_ids=None, pixel_values=None,
                image_grid_thw=None, image_keeps=None, sam_feats: dict | None = None,
                seg_image_index: torch.Tensor | None = None) -> SegOutput:
        """Language-model forward, then a mask for every `<|seg|>` token in `input_ids`.

        seg_image_index (S,): which image of `sam_feats` each `<|seg|>` token (row-major
        order) segments; default: the token's batch row.
        """
        logits, hidden, _ = self.lm_forward(input_ids, attention_mask, position_ids, pixel_values,
                                            image_grid_thw, image_keeps)
        is_seg = input_ids == self.seg_token_id
        if attention_mask is not None:
            is_seg = is_seg & attention_mask.bool()
        seg_index = is_seg.nonzero()
        if sam_feats is None or seg_index.numel() == 0:
            return SegOutput(logits, hidden, seg_index, None, None, None, None)
        seg_hidden = hidden[seg_index[:, 0], seg_index[:, 1]]
        img_idx = seg_index[:, 0] if seg_image_index is None else seg_image_index
        prompts, masks, iou, obj = self.decode_masks(seg_hidden, sam_feats, img_idx)
        return SegOutput(logits, hidden, seg_index, masks, iou, obj, prompts)


def _copy_qwen_files(src: Path, dst: Path) -> None:
    """The Hugging Face files of a Qwen directory (hard links where possible), not SegAnswer's own."""
    if src.resolve() == dst.resolve():
        return
    for p in src.iterdir():
        if p.name in _OWN_ENTRIES or not p.is_file() or p.name.startswith("."):
            continue
        target = dst / p.name
        target.unlink(missing_ok=True)
        _link_or_copy(p, target)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no second copy of a large file) where the file system allows it, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_lora(src_dir, out_dir, dtype: str = "float32") -> Path:
    """Merges a stage-1 LoRA checkpoint into plain weights; writes a SegAnswer dir at `out_dir` (atomic)."""
    model = SegAnswerModel.from_pretrained(src_dir, dtype=dtype)
    if not is_peft(model.lm):
        raise ValueError(f"{src_dir} holds no LoRA adapter to merge")
    model.lm = model.lm.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
    return Path(out_dir)
