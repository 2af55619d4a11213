"""Training and inference samples for LPR and GSE, built from a split table."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from ..data.images import ImageRef
from . import prompts as P
from .regions import CropFrame, crop_covering, to_gse


def row_rng(seed: int, key: str) -> np.random.Generator:
    """A generator per (seed, record): the same crop whatever the order or sharding."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")])


def _crop_box(frame: CropFrame) -> tuple[int, int, int, int]:
    return tuple(int(round(v)) for v in frame.crop)


def crop_image(image: Image.Image, frame: CropFrame) -> Image.Image:
    return image.crop(_crop_box(frame)).resize((frame.input_size, frame.input_size), Image.BICUBIC)


def look_enabled(cfg: dict, stage: str) -> bool:
    """Whether the stage was trained with Dr. Seg's Look-to-Confirm prompt."""
    return bool(cfg[stage]["drseg"]["look_to_confirm"])


def gt_points(row: dict, variant: str):
    return row["points_centre_jitter"] if variant == "centre_jitter" else row["points_inscribed"]


def lpr_target(row: dict, frame: CropFrame, points_variant: str) -> dict:
    """GT of one LPR sample in the crop's input coordinates (the reward's columns)."""
    return {
        "qtype": row["task_type"],
        "answer": P.target_answer(row),
        "bbox": frame.to_input(row["box"]),
        "points": [frame.point_to_input(p) for p in gt_points(row, points_variant)],
    }


def lpr_sample(row: dict, image: Image.Image | ImageRef, crop, cfg: dict, look: bool = False) -> dict:
    """An LPR sample of a decoded frame (cropped here) or of an ImageRef to the frame file
    (the crop is decoded when the sample is used)."""
    frame = CropFrame(tuple(crop), cfg["lpr_crop"])
    prompt = P.render(cfg["prompts"], "lpr", row["task_type"], question=row["question"],
                      letters=row["option_letters"], options=row["options"], look=look)
    view = (ImageRef(image.root, image.path, _crop_box(frame), (frame.input_size, frame.input_size))
            if isinstance(image, ImageRef) else crop_image(image, frame))
    return {"prompt": P.messages(prompt), "image": view, "id": row["id"],
            "crop": list(frame.crop), **lpr_target(row, frame, cfg["lpr"]["gt_points"])}


def lpr_training_rows(rows: list[dict], images_root: str, cfg: dict, seed: int, look: bool = False) -> list[dict]:
    """One LPR sample per record: a crop of lpr_crop px that contains the GT box, placed at
    random (or centred when finers.lpr.random_region is false). The crop is an ImageRef,
    decoded when the engine serves the row."""
    out = []
    side = cfg["lpr_crop"]
    for row in rows:
        rng = row_rng(seed, row["id"]) if cfg["lpr"]["random_region"] else None
        crop = crop_covering(row["box"], row["width"], row["height"], side, rng)
        out.append(lpr_sample(row, ImageRef(str(images_root), row["image_path"]), crop, cfg, look))
    return out


def gse_prompt(row: dict, cfg: dict, look: bool = False) -> list[dict]:
    return P.messages(P.render(cfg["prompts"], "gse", row["task_type"], question=row["question"],
                               letters=row["option_letters"], options=row["options"],
                               region_size=cfg["region_size"], look=look))


def gse_image(image: Image.Image, cfg: dict) -> Image.Image:
    return image.resize(tuple(cfg["gse_size"]), Image.BICUBIC)


def gse_view(images_root: str, image_path: str, cfg: dict) -> ImageRef:
    """The whole frame at the GSE size, as an ImageRef (gse_image of the frame when opened)."""
    return ImageRef(str(images_root), image_path, None, tuple(cfg["gse_size"]))


def gse_training_rows(rows: list[dict], regions: dict[str, list[float]], images_root: str, cfg: dict,
                      look: bool = False) -> list[dict]:
    """GSE samples: the whole frame at the GSE size (an ImageRef, decoded when the engine
    serves the row); GT region = the chosen best_region and the object box, both in GSE
    coordinates."""
    out = []
    for row in rows:
        out.append({
            "prompt": gse_prompt(row, cfg, look), "image": gse_view(images_root, row["image_path"], cfg),
            "id": row["id"],
            "qtype": row["task_type"], "answer": P.target_answer(row),
            "region": regions[row["id"]],
            "bbox": to_gse(row["box"], row["width"], row["height"], cfg["gse_size"]),
        })
    return out
