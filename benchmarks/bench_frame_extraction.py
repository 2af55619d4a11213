"""Frame extraction throughput: reproseg (PyAV) vs the ffmpeg CLI on the same 4K clip.

Both decode the whole clip and write every `stride`-th frame as RGB PNG.
Usage: python benchmarks/bench_frame_extraction.py [--frames 60] [--stride 5] [--codec libx264]
"""
import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from reproseg.data.video import extract_frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        raise SystemExit("the ffmpeg CLI is needed for the comparison (apt-get install ffmpeg)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=3840x2160:rate=30", "-frames:v", str(args.frames),
                        "-c:v", args.codec, "-pix_fmt", "yuv420p", str(clip)], check=True)
        n_out = len(range(0, args.frames, args.stride))

        def ours(i):
            extract_frames(clip, tmp / f"ours{i}", stride=args.stride, progress=False)

        def theirs(i):
            out = tmp / f"ffmpeg{i}"
            out.mkdir()
            subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(clip), "-vf",
                            f"select=not(mod(n\\,{args.stride}))", "-fps_mode", "passthrough",
                            "-pix_fmt", "rgb24", str(out / "%06d.png")], check=True)

        best = {}
        for name, fn in (("reproseg", ours), ("ffmpeg", theirs)):
            times = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                fn(i)
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        print(f"clip: 3840x2160 {args.codec}, {args.frames} frames, stride {args.stride} -> {n_out} PNGs")
        for name, t in best.items():
            print(f"{name:9s} {t:7.2f} s  {args.frames / t:6.2f} decoded frames/s  {n_out / t:6.2f} written frames/s")
        print(f"ratio (reproseg throughput / ffmpeg throughput): {best['ffmpeg'] / best['reproseg']:.2f}x")


if __name__ == "__main__":
    main()
