"""Reading an image of a dataset as RGB, naming the file when it cannot be read."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def load_image(root: str | Path, rel: str) -> Image.Image:
    path = Path(root) / rel
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise OSError(f"{path}: cannot load image: {exc}") from exc
