"""Code fingerprints: imported project modules are covered, comments and docstrings not."""
import textwrap

import pytest

from reproseg import fingerprint as fp


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """A throwaway package 'reproseg' under tmp_path/src, with a script importing it."""
    src = tmp_path / "src"
    files = {
        "reproseg/__init__.py": '"""Top."""\n',
        "reproseg/rl/__init__.py": "",
        "reproseg/rl/rewards.py": "from .geometry import iou\n\ndef reward(a, b):\n    return iou(a, b) > 0.5\n",
        "reproseg/rl/geometry.py": "def iou(a, b):\n    return 1.0\n",
        "reproseg/data/__init__.py": "",
        "reproseg/data/video.py": "def decode():\n    return 0\n",
    }
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    script = tmp_path / "train.py"
    script.write_text("import json\nfrom reproseg.rl.rewards import reward\n\ndef main():\n    from reproseg.rl import geometry\n")
    monkeypatch.setattr(fp, "SRC", src)
    fp._cached.cache_clear()
    return src, script


def fresh(script):
    fp._cached.cache_clear()
    return fp.fingerprint(script)


def test_closure_follows_relative_and_lazy_imports(pkg):
    src, script = pkg
    assert list(fp.closure(script)) == ["reproseg", "reproseg.rl", "reproseg.rl.geometry", "reproseg.rl.rewards"]


def test_comment_and_docstring_edits_do_not_change_it(pkg):
    src, script = pkg
    before = fresh(script)["fingerprint"]
    geo = src / "reproseg/rl/geometry.py"
    geo.write_text('"""IoU helpers."""\n# a comment\ndef iou(a, b):\n    """Doc."""\n    return 1.0  # why\n')
    assert fresh(script)["fingerprint"] == before


def test_code_edit_of_an_imported_module_changes_it(pkg):
    src, script = pkg
    before = fresh(script)
    (src / "reproseg/rl/geometry.py").write_text("def iou(a, b):\n    return 0.5\n")
    after = fresh(script)
    assert after["fingerprint"] != before["fingerprint"]
    assert after["modules"]["reproseg.rl.rewards"] == before["modules"]["reproseg.rl.rewards"]


def test_unrelated_module_edit_does_not_change_it(pkg):
    src, script = pkg
    before = fresh(script)["fingerprint"]
    (src / "reproseg/data/video.py").write_text("def decode():\n    return 1\n")
    assert fresh(script)["fingerprint"] == before


def test_real_scripts_have_fingerprints():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fp._cached.cache_clear()
    info = fp.fingerprint(root / "workflow_scripts" / "extract_frames.py")
    assert "reproseg.data.video" in info["modules"] and "reproseg.provenance" in info["modules"]
    assert "reproseg.data.splits" not in info["modules"]
