"""Reading an image of a dataset as RGB, naming the file when it cannot be read; and a
reference to an image view that is decoded only when used."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image


def load_image(root: str | Path, rel: str) -> Image.Image:
    path = Path(root) / rel
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise OSError(f"{path}: cannot load image: {exc}") from exc


@dataclass(frozen=True)
class ImageRef:
    """A view of an image file (optionally a crop of it, optionally resized), decoded by
    `open()` when a training row is served. Training rows hold these instead of decoded
    pictures: FineRS-4k's 8,956 training frames would take ~56 GB decoded at 1920x1080,
    and every process of a multi-GPU job loads the rows from the job file."""
    root: str
    path: str
    crop: tuple[int, int, int, int] | None = None   # (x0, y0, x1, y1) in the file's pixels
    size: tuple[int, int] | None = None             # (width, height) after the crop; None: as is

    def open(self) -> Image.Image:
        image = load_image(self.root, self.path)
        if self.crop is not None:
            image = image.crop(self.crop)
        if self.size is not None:
            image = image.resize(self.size, Image.BICUBIC)
        return image


def as_image(value) -> Image.Image:
    """A decoded image from a PIL image, an ImageRef, or a path."""
    if isinstance(value, ImageRef):
        return value.open()
    if isinstance(value, (str, Path)):
        with Image.open(value) as im:
            return im.convert("RGB")
    return value
