"""Frame extraction against an independent decode by the ffmpeg CLI."""
import json
import subprocess

import av
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ffmpeg_clip
from reproseg.data.video import CorruptVideoError, VideoError, extract, extract_frames, extract_stage


def ffmpeg_hashes(ffmpeg, path):
    """Per-frame sha256 of the decoded pictures, from ffmpeg's framehash muxer."""
    out = subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(path), "-fps_mode", "passthrough",
                          "-f", "framehash", "-hash", "sha256", "-"], check=True, capture_output=True, text=True)
    return [line.split(",")[-1].strip() for line in out.stdout.splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module", params=["libx264", "libx265"])
def clip_4k(request, ffmpeg, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / f"{request.param}.mp4"
    return ffmpeg_clip(ffmpeg, path, request.param, frames=12)


def test_4k_stride_matches_independent_decode(clip_4k, ffmpeg, tmp_path):
    records = extract_frames(clip_4k, tmp_path, stride=5, progress=False)
    reference = ffmpeg_hashes(ffmpeg, clip_4k)
    assert len(reference) == 12
    assert [r.frame_index for r in records] == [0, 5, 10]
    assert [r.sha256 for r in records] == [reference[i] for i in (0, 5, 10)]
    assert {(r.width, r.height) for r in records} == {(3840, 2160)}
    assert [round(r.timestamp, 6) for r in records] == [0.0, round(5 / 30, 6), round(10 / 30, 6)]
    with Image.open(tmp_path / "000005.png") as im:
        assert im.size == (3840, 2160) and im.mode == "RGB"


def test_listed_indices(clip_4k, ffmpeg, tmp_path):
    records = extract_frames(clip_4k, tmp_path, indices=[11, 3], progress=False)
    reference = ffmpeg_hashes(ffmpeg, clip_4k)
    assert [(r.frame_index, r.sha256) for r in records] == [(3, reference[3]), (11, reference[11])]
    with pytest.raises(VideoError, match="past its 12 frames"):
        extract_frames(clip_4k, tmp_path / "b", indices=[12], progress=False)


def test_truncated_video_names_the_file(ffmpeg, tmp_path):
    # moov at the front, so a cut file still opens; the missing frames must be noticed.
    src = tmp_path / "full.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-frames:v", "60", "-c:v", "libx264", "-movflags", "+faststart", str(src)], check=True)
    cut = tmp_path / "cut.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        extract_frames(cut, tmp_path / "out", progress=False)


def test_truncated_moov_at_end_and_garbage(ffmpeg, tmp_path):
    src = ffmpeg_clip(ffmpeg, tmp_path / "end.mp4", "libx264", frames=10, size="320x240")
    cut = tmp_path / "nomoov.mp4"
    cut.write_bytes(src.read_bytes()[:-2000])
    with pytest.raises(VideoError, match="nomoov.mp4"):
        extract_frames(cut, tmp_path / "o1", progress=False)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(VideoError, match="junk.mp4: cannot open"):
        extract_frames(junk, tmp_path / "o2", progress=False)


def test_stage_leaves_no_partial_output(ffmpeg, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 1000)
    frames, manifest = tmp_path / "frames", tmp_path / "m.parquet"
    with pytest.raises(VideoError):
        extract_stage(str(junk), str(frames), str(manifest), stride=1)
    assert not frames.exists() and not manifest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["junk.mp4"]


def test_stage_manifest(ffmpeg, tmp_path):
    src = ffmpeg_clip(ffmpeg, tmp_path / "v.mp4", "libx264", frames=7, size="320x240")
    extract_stage(str(src), str(tmp_path / "f"), str(tmp_path / "m.parquet"), stride=3)
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert [(r["video"], r["frame_index"], r["file"]) for r in rows] == [
        ("v", 0, "000000.png"), ("v", 3, "000003.png"), ("v", 6, "000006.png")]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["000000.png", "000003.png", "000006.png"]


# ------------------------------------------------------------------ damaged frames

def _packets(path):
    """(presentation index, byte offset, size, keyframe) of each video packet, from the
    container alone (demuxing decodes nothing)."""
    with av.open(str(path)) as c:
        raw = [(p.pts, p.pos, p.size, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    order = sorted(p[0] for p in raw)
    return [(order.index(pts), pos, size, key) for pts, pos, size, key in raw]


def _ffmpeg_errors(ffmpeg, path):
    """What the ffmpeg CLI's decoder says about the file (empty when it decodes cleanly)."""
    return subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True).stderr.strip()


@pytest.fixture(scope="module")
def gop_clip(ffmpeg, tmp_path_factory):
    """30 frames, a keyframe every 10 (0, 10, 20), B-frames: damage inside one GOP stays in it."""
    path = tmp_path_factory.mktemp("gop") / "clean.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-frames:v", "30", "-g", "10", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    assert _ffmpeg_errors(ffmpeg, path) == ""
    return path


def damage(ffmpeg, src, dst, frame, spans=((0.3, 0.7), (0.2, 0.5), (0.5, 0.9), (0.1, 0.9))):
    """`src` with a run of bytes zeroed inside the H.264 payload of `frame`'s packet: the
    container (sample sizes, offsets, moov) stays intact. Zeros can happen to decode
    cleanly, so spans are tried until the ffmpeg CLI's decoder reports errors."""
    index, pos, size, key = next(p for p in _packets(src) if p[0] == frame)
    assert not key
    for lo, hi in spans:
        data = bytearray(src.read_bytes())
        a, b = pos + max(5, int(size * lo)), pos + int(size * hi)  # past the 4-byte NAL length and header
        data[a:b] = bytes(b - a)
        dst.write_bytes(bytes(data))
        if _ffmpeg_errors(ffmpeg, dst):
            return dst
    pytest.fail(f"no zeroed span of frame {frame}'s packet made ffmpeg report an error")


def test_damaged_frame_fails_naming_the_video_and_frame(ffmpeg, gop_clip, tmp_path):
    bad = damage(ffmpeg, gop_clip, tmp_path / "bad.mp4", 7)
    assert "error" in _ffmpeg_errors(ffmpeg, bad).lower()        # the ffmpeg CLI agrees the file is damaged
    # ... and that frame 7 is: its picture differs from the clean decode; frames 10+ do not.
    clean_hashes, bad_hashes = ffmpeg_hashes(ffmpeg, gop_clip), ffmpeg_hashes(ffmpeg, bad)
    assert clean_hashes[7] != bad_hashes[7] and clean_hashes[10:] == bad_hashes[10:]
    frames, manifest, report, report_log = (tmp_path / "frames", tmp_path / "m.parquet", tmp_path / "r.json",
                                            tmp_path / "log.json")
    with pytest.raises(CorruptVideoError, match=r"bad\.mp4: frame 7 is damaged \(corrupt_frame"):
        extract_stage(str(bad), str(frames), str(manifest), stride=1, on_corrupt="fail", report=str(report),
                      report_log=str(report_log))
    assert not frames.exists() and not manifest.exists() and not report.exists()   # nothing looks complete
    logged = json.loads(report_log.read_text())                                      # the job's log keeps the list
    assert logged["policy"] == "fail" and 7 in [d["frame_index"] for d in logged["frames_damaged"]]
    # The default policy is fail.
    with pytest.raises(VideoError, match="frame 7 is damaged"):
        extract_frames(bad, tmp_path / "again", progress=False)


def test_damaged_frames_dropped_and_reported(ffmpeg, gop_clip, tmp_path):
    bad = damage(ffmpeg, gop_clip, tmp_path / "bad.mp4", 7)
    extract_stage(str(bad), str(tmp_path / "f"), str(tmp_path / "m.parquet"), stride=1,
                  on_corrupt="drop_and_report", report=str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    damaged = {d["frame_index"]: d for d in report["frames_damaged"]}
    assert damaged[7]["class"] == "corrupt_frame" and damaged[7]["errors"] >= 1 and damaged[7]["message"]
    # The frames decoded after it up to the next keyframe (10) may be predicted from it.
    assert set(damaged) <= set(range(1, 10)) and {d["class"] for i, d in damaged.items() if i != 7} <= {
        "predicted_from_corrupt"}
    assert report["dropped"] == sorted(damaged) and report["frames"] == 30
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    kept = [r["frame_index"] for r in rows]
    assert kept == [i for i in range(30) if i not in damaged] and report["written"] == len(kept)
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [f"{i:06d}.png" for i in kept]
    # What is kept is what the clean video decodes to, frame for frame.
    clean = ffmpeg_hashes(ffmpeg, gop_clip)
    assert [r["sha256"] for r in rows] == [clean[i] for i in kept]


def test_frame_without_a_picture_shifts_no_other_index(ffmpeg, gop_clip, tmp_path):
    # A zeroed NAL length: the decoder cannot split the packet and gives no picture for frame 13.
    index, pos, size, key = next(p for p in _packets(gop_clip) if p[0] == 13)
    data = bytearray(gop_clip.read_bytes())
    data[pos:pos + 4] = bytes(4)
    bad = tmp_path / "nopic.mp4"
    bad.write_bytes(bytes(data))
    assert _ffmpeg_errors(ffmpeg, bad)
    records, report = extract(bad, tmp_path / "f", stride=1, on_corrupt="drop_and_report", progress=False)
    damaged = {d["frame_index"]: d["class"] for d in report.damaged}
    assert damaged[13] == "undecoded_frame" and set(damaged) <= set(range(11, 20))
    clean = ffmpeg_hashes(ffmpeg, gop_clip)
    assert [(r.frame_index, r.sha256) for r in records] == [(i, clean[i]) for i in range(30) if i not in damaged]
    with pytest.raises(CorruptVideoError, match="nopic.mp4: frame 13 is damaged"):
        extract(bad, tmp_path / "g", on_corrupt="fail", progress=False)


def test_clean_video_reports_no_damage(gop_clip, tmp_path):
    records, report = extract(gop_clip, tmp_path, stride=10, on_corrupt="fail", progress=False)
    assert [r.frame_index for r in records] == [0, 10, 20]
    assert report.as_dict() | {"video": None} == {
        "video": None, "policy": "fail", "frames": 30, "written": 3, "damaged": 0, "dropped": [],
        "frames_damaged": [], "unattributed_errors": [], "decoder_messages": []}
    with pytest.raises(ValueError, match="on_corrupt"):
        extract(gop_clip, tmp_path / "x", on_corrupt="ignore", progress=False)
