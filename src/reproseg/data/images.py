"""Reading an image of a dataset as RGB, naming the file when it cannot be read; a
reference to an image view that is decoded only when used; and the import-time check
every importer runs on its images (`check_images`): a path that leaves its root is
never opened, and every other image is decoded once, in threads.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

# Problem classes of an image, as the validation reports name them.
UNSAFE_PATH = "unsafe_path"          # absolute, "..", or resolving (symlinks) outside the image root
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
EMPTY_IMAGE = "empty_image"          # decodes to no pixel
IMAGE_TOO_LARGE = "image_too_large"  # more pixels than the configured limit (decompression bombs)
# The limit for direct library callers; a job gets data.annotations.max_image_pixels or
# its source's max_image_pixels. 100 megapixels: a 4K frame has 8.3, an 8K frame 33.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


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


def row_image(value, row_id) -> Image.Image:
    """as_image for a training row: a file missing or unreadable when the row is served is
    named together with the row it belongs to."""
    try:
        return as_image(value)
    except OSError as exc:
        raise OSError(f"row {row_id}: {exc}") from exc


def as_image(value) -> Image.Image:
    """A decoded image from a PIL image, an ImageRef, or a path."""
    if isinstance(value, ImageRef):
        return value.open()
    if isinstance(value, (str, Path)):
        with Image.open(value) as im:
            return im.convert("RGB")
    return value


def _short(rel) -> str:
    text = repr(rel)
    return text if len(text) <= 120 else text[:100] + f"... ({len(rel)} characters)"


def relative_path_problem(rel) -> str | None:
    """Why `rel` is not a relative path that stays below its root, or None: not text,
    empty, absolute, holding ".." or a NUL. Looks at the text only."""
    if not isinstance(rel, str):
        return f"path {_short(rel)} is a {type(rel).__name__}, not text"
    if not rel.strip():
        return "path is empty"
    if "\x00" in rel:
        return f"path {_short(rel)} holds a NUL character"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts:
        return f"path {_short(rel)} is not a relative path inside the image root (absolute or '..')"
    return None


def path_problem(root: str | os.PathLike, rel) -> str | None:
    """relative_path_problem, or `rel` resolving (through a symlink) outside `root`, or
    None when it is the path of something inside `root`. Nothing is opened."""
    why = relative_path_problem(rel)
    if why is not None:
        return why
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return f"path {_short(rel)} does not resolve: {exc}"
    if not target.is_relative_to(base):
        return f"path {_short(rel)} resolves to {target}, outside the image root {base}"
    return None


def is_file(path: str | os.PathLike) -> bool:
    """Path.is_file() that answers False, not an error, for a name the OS refuses (too long)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ImageCheck:
    """One image checked at import: its size, or the problem class and message."""
    width: int = 0
    height: int = 0
    cls: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.cls is None


def check_image(root: str | os.PathLike, rel, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageCheck:
    """Opens `root/rel` only if the path stays inside `root`, reads its size from the header,
    and, unless it has more than `max_pixels` pixels, decodes it completely."""
    why = path_problem(root, rel)
    if why is not None:
        return ImageCheck(cls=UNSAFE_PATH, message=why)
    path = Path(root) / rel
    if not is_file(path):
        return ImageCheck(cls=MISSING_IMAGE, message=f"image {_short(rel)} not found under {root}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                return ImageCheck(w, h, IMAGE_TOO_LARGE, f"image {_short(rel)} is {w}x{h} = {w * h} pixels, more "
                                  f"than the limit of {max_pixels}; not decoded")
            if w <= 0 or h <= 0:
                return ImageCheck(w, h, EMPTY_IMAGE, f"image {_short(rel)} is {w}x{h}: no pixel")
            im.load()
    except Image.DecompressionBombError as exc:
        return ImageCheck(cls=IMAGE_TOO_LARGE, message=f"image {_short(rel)}: {exc}")
    except Exception as exc:  # PIL raises many types on damaged bytes; every one means "does not decode"
        return ImageCheck(cls=UNREADABLE_IMAGE, message=f"image {_short(rel)} does not decode: "
                          f"{type(exc).__name__}: {exc}")
    return ImageCheck(w, h)


def check_images(root: str | os.PathLike, rels, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 workers: int | None = None) -> dict:
    """{rel: ImageCheck} for each distinct path of `rels`, decoded in threads (PIL
    releases the GIL while decoding)."""
    distinct = sorted({r for r in rels if isinstance(r, str)}, key=str)
    if not distinct:
        return {}
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(distinct, pool.map(lambda r: check_image(root, r, max_pixels), distinct)))
