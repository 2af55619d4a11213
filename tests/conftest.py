import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Before transformers is imported: huggingface_hub reads HF_HUB_OFFLINE once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import TrainerCallback  # noqa: E402 (after the offline switch above)

ROOT = Path(__file__).resolve().parents[1]


def section(name: str, overrides: dict | None = None) -> dict:
    """A top-level section of config/config.yaml (every key the library reads, as a job gets
    it) with a test's `overrides` deep-merged in."""
    from reproseg.config import deep_merge, load_yaml, resolve

    return deep_merge(resolve(load_yaml(ROOT / "config" / "config.yaml"))[name], overrides or {})


class StopAt(TrainerCallback):
    """Asks a Trainer-based run to stop (the launcher's stop file) at the end of `step`."""

    def __init__(self, stop_file, step: int):
        self.stop_file, self.step = stop_file, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.stop_file.touch()


def pytest_configure(config):
    config.addinivalue_line("markers", "workflow: runs Snakemake on the workflow")


@pytest.fixture(scope="session")
def ffmpeg():
    """The ffmpeg CLI, an independent decoder. `make test` installs it (Debian package)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("the ffmpeg CLI is missing: run `make test`, which installs it")
    return exe


def ffmpeg_clip(ffmpeg, path, codec, frames=12, size="3840x2160"):
    extra = ["-x265-params", "log-level=error"] if codec == "libx265" else []
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                    "-frames:v", str(frames), "-c:v", codec, "-pix_fmt", "yuv420p", *extra, str(path)],
                   check=True)
    return path


@pytest.fixture(scope="session")
def seganswer_checkpoint(tmp_path_factory):
    """A fresh SegAnswer checkpoint (tiny random Qwen2.5-VL + SAM 2.1, untrained projector)."""
    from reproseg.models.tiny_bundle import build_tiny_bundle
    from reproseg.seganswer.model import SegAnswerModel

    root = tmp_path_factory.mktemp("seganswer_checkpoint")
    spec = {"hidden_size": 64, "sam2_image_size": 64, "vocab_size": 400, "max_pixels": 112 * 112}
    build_tiny_bundle(root / "tiny", spec, ["what color is the circle"], seed=0)
    SegAnswerModel.from_base(root / "tiny" / "qwen", root / "tiny" / "sam2", seed=0).save_pretrained(root / "model")
    return root / "model"
