"""Loading SAM 2.1 from local files only: a bundle directory (sam2_config.json) or a
checkpoint file. Without transformers, so that the jobs that only segment (the Dr. Seg
evaluations) start in half the time of those that also load a policy.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

# The bundle directory's description of its SAM 2.1: checkpoint, config name, overrides.
SAM2_CONFIG_FILE = "sam2_config.json"


class MissingModelFileError(FileNotFoundError):
    """A model directory lacks a file the loader needs; the message names it."""


def _image_size_from(overrides: list[str]) -> int | None:
    for o in overrides:
        m = re.fullmatch(r"\+{0,2}model\.image_size=(\d+)", o.strip())
        if m:
            return int(m.group(1))
    return None


def load_sam2_predictor(
    sam2_dir_or_ckpt: str | os.PathLike,
    config_name: str | None = None,
    overrides: list[str] | None = None,
    device: str = "cpu",
):
    """A SAM2ImagePredictor from a bundle directory (sam2_config.json) or a checkpoint file.

    For a bare checkpoint (the released sam2.1_hiera_large.pt, say) `config_name` is
    required, e.g. "configs/sam2.1/sam2.1_hiera_l.yaml".
    """
    path = Path(sam2_dir_or_ckpt)
    if path.is_dir():
        meta_path = path / SAM2_CONFIG_FILE
        if not meta_path.is_file():
            raise MissingModelFileError(f"SAM2 directory {path} has no {SAM2_CONFIG_FILE}")
        meta = json.loads(meta_path.read_text())
        ckpt = path / meta["checkpoint"]
        config_name = config_name or meta["config_name"]
        overrides = list(meta["overrides"]) if overrides is None else list(overrides)
    else:
        ckpt = path
        if config_name is None:
            raise ValueError("a bare SAM2 checkpoint needs config_name (e.g. configs/sam2.1/sam2.1_hiera_l.yaml)")
        overrides = list(overrides or [])
    if not ckpt.is_file():
        raise MissingModelFileError(f"SAM2 checkpoint not found: {ckpt}")
    model = build_sam2(config_name, ckpt_path=str(ckpt), device=device, hydra_overrides_extra=overrides)
    predictor = SAM2ImagePredictor(model)
    # The predictor hard-codes the backbone feature sizes of a 1024-px model; a model
    # built at another image size needs them at strides 4, 8 and 16 of its own size.
    size = int(getattr(model, "image_size", None) or _image_size_from(overrides) or 1024)
    predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
    return predictor
