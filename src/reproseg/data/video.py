"""Video decoding and frame extraction with PyAV.

A frame's `sha256` is the hash of its decoded picture in the stream's native pixel
format, planes packed without padding: the same bytes `ffmpeg -f framehash -hash
sha256` hashes, so any decoder can check it independently.

Damaged frames (`extract`): a frame the decoder flags corrupt or logs errors for, one
whose packet gives no picture, and the frames predicted from it up to the next
keyframe. `data.frames.on_corrupt` decides: fail (the job fails naming the video and
the first damaged frame) or drop_and_report (they are left out of the frames and the
manifest and listed in the extraction report, `frames/<video>.report.json`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import av.logging
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..io_atomic import atomic_dir, write_json, write_parquet

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


CORRUPT_POLICIES = ("fail", "drop_and_report")
# Classes of a damaged frame in the extraction report.
CORRUPT = "corrupt_frame"             # decoded with errors (the decoder flagged it, or logged errors for its packet)
UNDECODED = "undecoded_frame"         # its packet gave no picture at all
PREDICTED = "predicted_from_corrupt"  # decoded after a damaged frame, before the next keyframe
_MAX_MESSAGES = 50                    # decoder messages kept in the report


@dataclass
class FrameReport:
    """The damaged frames of one video (frame indices in presentation order)."""
    video: str
    policy: str
    frames: int = 0
    written: int = 0
    damaged: list[dict] = field(default_factory=list)
    # Decoder errors that no frame could be charged with (the video is still damaged).
    unattributed: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"video": self.video, "policy": self.policy, "frames": self.frames, "written": self.written,
                "damaged": len(self.damaged), "dropped": [d["frame_index"] for d in self.damaged if d["selected"]],
                "frames_damaged": self.damaged, "unattributed_errors": self.unattributed,
                "decoder_messages": self.messages}


class CorruptVideoError(VideoError):
    """Frames decoded with errors under on_corrupt='fail'; the message names the video
    and the first damaged frame, `report` lists them all."""

    def __init__(self, message: str, report: FrameReport):
        super().__init__(message)
        self.report = report


def _packets(video: Path) -> tuple[list[tuple[int | None, bool, bool]], int | None]:
    """((pts, keyframe, flagged corrupt by the demuxer) per packet in decode order, the
    frame count the container declares); demuxing reads no picture data."""
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise VideoError(f"{video}: no video stream")
            stream = container.streams.video[0]
            packets = [(p.pts, p.is_keyframe, p.is_corrupt) for p in container.demux(stream)
                       if p.size and not p.is_discard]
            return packets, stream.frames or None
    except av.error.FFmpegError as exc:
        raise VideoError(f"{video}: cannot open or demux: {exc}") from exc


def _errors_per_packet(video: Path) -> tuple[dict, set, list[str]]:
    """A second, single-threaded decode of a video that showed damage: ({pts: the
    decoder's error messages while decoding that packet}, pts of the frames it flags
    corrupt, messages no packet could be charged with). Without frame threads each
    packet is decoded inside its own call, so every message belongs to that packet."""
    errors: dict = {}
    flagged, loose = set(), []
    with av.open(str(video)) as container, _libav_errors() as logs:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        for packet in container.demux(stream):
            before = len(logs)
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError as exc:
                frames = []
                logs.append((av.logging.ERROR, "decode", str(exc)))
            new = [m for lvl, _, m in logs[before:] if lvl <= av.logging.ERROR]
            if new:
                if packet.size and packet.pts is not None:
                    errors.setdefault(packet.pts, []).extend(m.strip() for m in new)
                else:
                    loose += [m.strip() for m in new]
            flagged |= {f.pts for f in frames if f.is_corrupt}
    return errors, flagged, loose


@contextlib.contextmanager
def _libav_errors():
    """libav's log messages of every thread while the block runs (PyAV forwards none by
    default); the global log level is restored afterwards."""
    level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # each repeat is an error of its own frame
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip)


def extract(video: str | Path, out_dir: str | Path, *, stride: int = 1, indices=None,
            on_corrupt: str = "fail", progress: bool = True) -> tuple[list[FrameRecord], FrameReport]:
    """Decodes `video`, writes the selected frames as PNG into `out_dir`; returns their
    records and the report of damaged frames.

    A frame's index is its position in presentation order among the container's packets
    (its pts rank), so a frame that does not decode shifts no other. A frame is damaged
    when the decoder flags it corrupt, logs errors while decoding its packet (counted
    per frame), or its packet gives no picture; the frames decoded after a damaged one
    up to the next keyframe (and that keyframe's leading pictures) are predicted from
    it and may carry its damage, so they count as damaged too. Under on_corrupt='fail'
    any damage raises CorruptVideoError naming the video and the first damaged frame;
    under 'drop_and_report' the damaged frames are left out (no PNG, no record) and
    listed in the report. Decoder errors that a second, single-threaded decode cannot
    charge to any frame fail the job under 'fail' and are listed as
    `unattributed_errors` under 'drop_and_report'.

    Raises VideoError (naming the file) if the file cannot be opened, has fewer packets
    than the container declares (truncated), or a requested index is past the end.
    """
    if on_corrupt not in CORRUPT_POLICIES:
        raise ValueError(f"on_corrupt must be one of {CORRUPT_POLICIES}, got {on_corrupt!r}")
    video = Path(video)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = frozenset(int(i) for i in indices) if indices is not None else None
    name = video.stem
    report = FrameReport(video=str(video), policy=on_corrupt)
    packets, declared = _packets(video)
    if declared is not None and len(packets) != declared:
        raise VideoError(f"{video}: {len(packets)} frames in the file but the container declares {declared} "
                         "(truncated or corrupt file)")
    pts = [p for p, _, _ in packets]
    # pts rank = presentation order; without usable timestamps, the order frames come out in.
    rank = ({p: i for i, p in enumerate(sorted(pts))}
            if pts and None not in pts and len(set(pts)) == len(pts) else None)
    records: dict[int, FrameRecord] = {}
    decoded: set[int] = set()
    flagged: set[int] = set()
    failures: list[str] = []
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{video}: cannot open: {exc}") from exc
    with container, _libav_errors() as logs:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        bar = tqdm(total=declared, desc=f"frames {name}", unit="f", disable=not progress, leave=False)
        # PNG encoding runs in worker threads (PyAV releases the GIL while encoding),
        # overlapping with decoding, as the ffmpeg CLI does.
        workers = max(1, min(4, os.cpu_count() or 2))
        pool = ThreadPoolExecutor(max_workers=workers)
        pending: list = []
        try:
            for packet in container.demux(stream):
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError as exc:  # this packet gives no picture; decoding goes on
                    failures.append(str(exc))
                    continue
                for frame in frames:
                    if rank is None:
                        index = n
                    elif frame.pts in rank:
                        index = rank[frame.pts]
                    else:
                        raise VideoError(f"{video}: decoded a frame at pts {frame.pts} that no packet carries")
                    n += 1
                    bar.update(1)
                    decoded.add(index)
                    if frame.is_corrupt:
                        flagged.add(index)
                    if selected(index, stride, wanted):
                        target = out_dir / f"{index:06d}.png"
                        if len(pending) >= 2 * workers:  # bound memory: 4K RGB is 25 MB a frame
                            pending.pop(0).result()
                        pending.append(pool.submit(_write_png, frame.reformat(format="rgb24"), target))
                        records[index] = FrameRecord(
                            video=name, frame_index=index, timestamp=float(frame.time or 0.0),
                            width=frame.width, height=frame.height, sha256=frame_sha256(frame),
                            file=target.name)
            for fut in pending:
                fut.result()
        except av.error.FFmpegError as exc:
            raise VideoError(f"{video}: decode failed after frame {n}: {exc}") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        messages = [m.strip() for lvl, _, m in logs if lvl <= av.logging.ERROR]
    if n == 0:
        raise VideoError(f"{video}: no frame could be decoded" + (f": {failures[0]}" if failures else ""))
    total = len(packets) if rank is not None else n
    if rank is None and declared is not None and n != declared:
        raise VideoError(f"{video}: decoded {n} frames but the container declares {declared} "
                         "(truncated or corrupt file)")
    if wanted is not None and (missing := sorted(i for i in wanted if i >= total)):
        raise VideoError(f"{video}: requested frame indices {missing} are past its {total} frames")
    report.frames = total
    report.messages = (messages + failures)[:_MAX_MESSAGES]
    undecoded = set(range(total)) - decoded
    demuxer_flagged = {rank[p] for p, _, bad in packets if bad} if rank is not None else set()
    if flagged or undecoded or messages or failures or demuxer_flagged:
        _find_damage(video, report, packets, rank, flagged | demuxer_flagged, undecoded, wanted, stride)
    if report.damaged or report.unattributed:
        first = min((d for d in report.damaged if d["class"] != PREDICTED), key=lambda d: d["frame_index"],
                    default=None)
        what = (f"frame {first['frame_index']} is damaged ({first['class']}: {first['message']}); "
                f"{len(report.damaged)} damaged frame(s) in all" if first is not None
                else f"the decoder reported errors no frame could be charged with: {report.unattributed[:3]}")
        if on_corrupt == "fail":
            raise CorruptVideoError(f"{video}: {what}", report)
        for d in report.damaged:
            if d["selected"] and d["frame_index"] in records:
                del records[d["frame_index"]]
                (out_dir / f"{d['frame_index']:06d}.png").unlink(missing_ok=True)
        log.warning("%s: %s; left out of the manifest (on_corrupt: drop_and_report)", video, what)
    report.written = len(records)
    log.info("%s: decoded %d frames, wrote %d", video, n, len(records))
    return [records[i] for i in sorted(records)], report


def _find_damage(video, report, packets, rank, flagged, undecoded, wanted, stride) -> None:
    """Fills report.damaged: each damaged frame with its class and error count."""
    errors, flagged_again, loose = _errors_per_packet(video)
    if rank is None:  # no timestamps to charge errors to frames: the video as a whole is damaged
        report.unattributed = [m for ms in errors.values() for m in ms] + loose \
            or [f"frames {sorted(flagged | undecoded)} flagged corrupt"]
        return
    count = {rank[p]: len(ms) for p, ms in errors.items() if p in rank}
    first_message = {rank[p]: ms[0] for p, ms in errors.items() if p in rank}
    bad = set(flagged) | set(undecoded) | set(count) | {rank[p] for p in flagged_again if p in rank}
    if not bad:
        report.unattributed = loose or ["the decoder logged errors while decoding with threads that a "
                                        "single-threaded decode does not repeat"]
        return
    report.unattributed = loose
    entries = {}
    for i in sorted(bad):
        if i in undecoded:
            cls, message = UNDECODED, first_message.get(i, "its packet gave no picture")
        else:
            cls = CORRUPT
            message = first_message.get(i, "the decoder flagged the frame corrupt (error concealment)")
        entries[i] = {"frame_index": i, "class": cls, "errors": max(1, count.get(i, 0)), "message": message}
    # Frames decoded after a damaged one until the next keyframe may be predicted from it.
    tainted = tainted_before = False
    source = key_pts = None
    for p, key, _ in packets:
        i = rank[p]
        if key:
            tainted_before, tainted, key_pts = tainted, False, p
        if i in bad:
            tainted, source = True, i
        elif tainted or (tainted_before and p < key_pts):
            entries[i] = {"frame_index": i, "class": PREDICTED, "errors": 0,
                          "message": f"decoded after damaged frame {source}, before the next keyframe"}
    report.damaged = [{**entries[i], "selected": selected(i, stride, wanted)} for i in sorted(entries)]


def extract_frames(video: str | Path, out_dir: str | Path, stride: int = 1,
                   indices=None, progress: bool = True, on_corrupt: str = "fail") -> list[FrameRecord]:
    """The frame records of `extract` (see there); under 'drop_and_report' its damaged
    frames are logged as a warning, the report itself is not returned."""
    return extract(video, out_dir, stride=stride, indices=indices, on_corrupt=on_corrupt, progress=progress)[0]


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


def extract_stage(video: str, frames_dir: str, manifest: str, stride: int, indices=None,
                  on_corrupt: str = "fail", report: str | None = None, report_log: str | None = None) -> None:
    """Rule extract_frames: frames into `frames_dir` (atomically), a Parquet manifest and
    the report of damaged frames (`report`, JSON). The report also goes to `report_log`
    (the job's log, which Snakemake keeps when the job fails), so a video that fails
    under on_corrupt='fail' still leaves the list of its damaged frames; nothing else
    is written then."""
    try:
        with atomic_dir(frames_dir) as tmp:
            records, frame_report = extract(video, tmp, stride=stride, indices=indices, on_corrupt=on_corrupt)
    except CorruptVideoError as exc:
        if report_log is not None:
            write_json(report_log, exc.report.as_dict())
        raise
    if report_log is not None:
        write_json(report_log, frame_report.as_dict())
    write_parquet(manifest, pa.Table.from_pylist([asdict(r) for r in records], schema=_manifest_schema()))
    if report is not None:
        write_json(report, frame_report.as_dict())


def merge_manifests_stage(manifests: list[str], out: str) -> None:
    """Rule merge_frame_manifests: one manifest for all videos, sorted."""
    tables = [pq.read_table(m, schema=_manifest_schema()) for m in manifests]
    write_parquet(out, pa.concat_tables(tables).sort_by([("video", "ascending"), ("frame_index", "ascending")]))
