"""Video decoding and frame extraction with PyAV.

A frame's `sha256` is the hash of its decoded picture in the stream's native pixel
format, planes packed without padding: the same bytes `ffmpeg -f framehash -hash
sha256` hashes, so any decoder can check it independently.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..io_atomic import atomic_dir, write_parquet

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A video that cannot be decoded completely; the message names the file."""


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 as PyAV's (H*3/2, W) layout, computed in numpy.

    swscale's own conversion is not bit-reproducible across calls (its SIMD path depends
    on buffer alignment), which made identical frames encode to different bytes.
    """
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def sub(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.rint(y), np.rint(sub(u)).reshape(h // 4, w), np.rint(sub(v)).reshape(h // 4, w)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8)


def write_video(path: str | Path, frames, fps: int, qp: int = 18, codec: str = "libx264") -> None:
    """Encodes RGB uint8 frames (H, W, 3), H and W even and H a multiple of 4. One
    encoder thread and our own colour conversion keep the bytes reproducible."""
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # A constant quantiser, not CRF: CRF rate control is floating point and its bytes
        # changed once torch had run in the same process (FPU state); QP bytes do not.
        stream.codec_context.options = {"qp": str(qp), "preset": "veryfast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for arr in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(arr), format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def frame_sha256(frame: av.VideoFrame) -> str:
    """sha256 of the decoded frame's planes, each row cut to its visible bytes."""
    h = hashlib.sha256()
    fmt = frame.format
    for i, plane in enumerate(frame.planes):
        bytes_per_sample = (max(c.bits for c in fmt.components if c.plane == i) + 7) // 8
        if plane.line_size == plane.width * bytes_per_sample:  # no row padding: hash in place
            h.update(memoryview(plane)[: plane.line_size * plane.height])
            continue
        rows = np.frombuffer(memoryview(plane), np.uint8)[: plane.line_size * plane.height]
        rows = rows.reshape(plane.height, plane.line_size)[:, : plane.width * bytes_per_sample]
        h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class FrameRecord:
    video: str
    frame_index: int
    timestamp: float
    width: int
    height: int
    sha256: str
    file: str


def selected(index: int, stride: int, indices: frozenset[int] | None) -> bool:
    return index in indices if indices is not None else index % stride == 0


def extract_frames(video: str | Path, out_dir: str | Path, stride: int = 1,
                   indices=None, progress: bool = True) -> list[FrameRecord]:
    """Decodes `video` and writes the selected frames as PNG into `out_dir`.

    Raises VideoError (naming the file) if the file cannot be opened, a packet fails to
    decode, fewer frames decode than the container declares, or a requested index is
    past the end: a damaged video never becomes a short, silent frame list.
    """
    video = Path(video)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = frozenset(int(i) for i in indices) if indices is not None else None
    name = video.stem
    records: list[FrameRecord] = []
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{video}: cannot open: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoError(f"{video}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames or None
        n = 0
        bar = tqdm(total=declared, desc=f"frames {name}", unit="f", disable=not progress, leave=False)
        # PNG encoding runs in worker threads (PyAV releases the GIL while encoding),
        # overlapping with decoding, as the ffmpeg CLI does.
        workers = max(1, min(4, os.cpu_count() or 2))
        pool = ThreadPoolExecutor(max_workers=workers)
        pending: list = []
        try:
            for frame in container.decode(stream):
                if selected(n, stride, wanted):
                    target = out_dir / f"{n:06d}.png"
                    if len(pending) >= 2 * workers:  # bound memory: 4K RGB is 25 MB a frame
                        pending.pop(0).result()
                    pending.append(pool.submit(_write_png, frame.reformat(format="rgb24"), target))
                    records.append(FrameRecord(
                        video=name, frame_index=n, timestamp=float(frame.time or 0.0),
                        width=frame.width, height=frame.height, sha256=frame_sha256(frame),
                        file=target.name))
                n += 1
                bar.update(1)
            for fut in pending:
                fut.result()
        except av.error.FFmpegError as exc:
            raise VideoError(f"{video}: decode failed after frame {n}: {exc}") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    if n == 0:
        raise VideoError(f"{video}: no frame could be decoded")
    if declared is not None and n != declared:
        raise VideoError(f"{video}: decoded {n} frames but the container declares {declared} "
                         "(truncated or corrupt file)")
    if wanted is not None and (missing := sorted(i for i in wanted if i >= n)):
        raise VideoError(f"{video}: requested frame indices {missing} are past its {n} frames")
    log.info("%s: decoded %d frames, wrote %d", video, n, len(records))
    return records


def _write_png(rgb: av.VideoFrame, target: Path) -> None:
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = rgb.width, rgb.height, "rgb24"
    encoder.thread_count = 1
    with open(target, "wb") as f:
        for packet in (*encoder.encode(rgb), *encoder.encode(None)):
            f.write(bytes(packet))


def _manifest_schema():
    return pa.schema([
        ("video", pa.string()), ("frame_index", pa.int64()), ("timestamp", pa.float64()),
        ("width", pa.int64()), ("height", pa.int64()), ("sha256", pa.string()), ("file", pa.string()),
    ])


def extract_stage(video: str, frames_dir: str, manifest: str, stride: int, indices=None) -> None:
    """Rule extract_frames: frames into `frames_dir` (atomically) + a Parquet manifest."""
    with atomic_dir(frames_dir) as tmp:
        records = extract_frames(video, tmp, stride=stride, indices=indices)
    write_parquet(manifest, pa.Table.from_pylist([asdict(r) for r in records], schema=_manifest_schema()))


def merge_manifests_stage(manifests: list[str], out: str) -> None:
    """Rule merge_frame_manifests: one manifest for all videos, sorted."""
    tables = [pq.read_table(m, schema=_manifest_schema()) for m in manifests]
    write_parquet(out, pa.concat_tables(tables).sort_by([("video", "ascending"), ("frame_index", "ascending")]))
