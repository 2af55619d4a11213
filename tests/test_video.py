"""Frame extraction against an independent decode by the ffmpeg CLI."""
import subprocess

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ffmpeg_clip
from reproseg.data.video import VideoError, extract_frames, extract_stage


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
