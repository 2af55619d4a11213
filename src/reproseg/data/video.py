"""Video decoding and frame extraction with PyAV.

A frame's `sha256` is the hash of its decoded picture in the stream's native pixel
format, planes packed without padding: the same bytes `ffmpeg -f framehash -hash
sha256` hashes, so any decoder can check it independently.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A video that cannot be decoded completely; the message names the file."""


def write_video(path: str | Path, frames, fps: int, crf: int = 18, codec: str = "libx264") -> None:
    """Encodes RGB uint8 frames (H, W, 3). One encoder thread keeps the bytes reproducible."""
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for arr in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def frame_sha256(frame: av.VideoFrame) -> str:
    """sha256 of the decoded frame's planes, each row cut to its visible bytes."""
    h = hashlib.sha256()
    fmt = frame.format
    for i, plane in enumerate(frame.planes):
        bytes_per_sample = (max(c.bits for c in fmt.components if c.plane == i) + 7) // 8
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
    from tqdm import tqdm

    video = Path(video)
    out_dir = Path(out_dir)
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
        encoder = av.CodecContext.create("png", "w")
        encoder.pix_fmt = "rgb24"
        encoder.thread_count = 1  # frame threads would hand back an earlier frame's packet
        n = 0
        bar = tqdm(total=declared, desc=f"frames {name}", unit="f", disable=not progress, leave=False)
        try:
            for frame in container.decode(stream):
                if selected(n, stride, wanted):
                    target = out_dir / f"{n:06d}.png"
                    _write_png(encoder, frame, target)
                    records.append(FrameRecord(
                        video=name, frame_index=n, timestamp=float(frame.time or 0.0),
                        width=frame.width, height=frame.height, sha256=frame_sha256(frame),
                        file=target.name))
                n += 1
                bar.update(1)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{video}: decode failed after frame {n}: {exc}") from exc
        finally:
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


def _write_png(encoder: av.CodecContext, frame: av.VideoFrame, target: Path) -> None:
    rgb = frame.reformat(format="rgb24")
    if encoder.width != rgb.width or encoder.height != rgb.height:
        encoder.width, encoder.height = rgb.width, rgb.height
    packets = encoder.encode(rgb)
    with open(target, "wb") as f:
        for packet in packets:
            f.write(bytes(packet))


def _manifest_schema():
    import pyarrow as pa

    return pa.schema([
        ("video", pa.string()), ("frame_index", pa.int64()), ("timestamp", pa.float64()),
        ("width", pa.int64()), ("height", pa.int64()), ("sha256", pa.string()), ("file", pa.string()),
    ])


def extract_stage(video: str, frames_dir: str, manifest: str, stride: int, indices=None) -> None:
    """Rule extract_frames: frames into `frames_dir` (atomically) + a Parquet manifest."""
    from dataclasses import asdict

    import pyarrow as pa

    from ..io_atomic import atomic_dir, write_parquet

    with atomic_dir(frames_dir) as tmp:
        records = extract_frames(video, tmp, stride=stride, indices=indices)
    write_parquet(manifest, pa.Table.from_pylist([asdict(r) for r in records], schema=_manifest_schema()))


def merge_manifests_stage(manifests: list[str], out: str) -> None:
    """Rule merge_frame_manifests: one manifest for all videos, sorted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..io_atomic import write_parquet

    tables = [pq.read_table(m, schema=_manifest_schema()) for m in manifests]
    write_parquet(out, pa.concat_tables(tables).sort_by([("video", "ascending"), ("frame_index", "ascending")]))
