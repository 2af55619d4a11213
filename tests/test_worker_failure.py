"""A training launch whose worker dies: the job fails within a bounded time (the other rank,
blocked in a collective that will never complete, is ended by torchrun) with an error naming
the failed rank and its error. The workers import this module by name (tests/ on their
PYTHONPATH)."""
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from reproseg.launch import WorkerFailed, run_resumable, run_workers

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def _collectives_then(fail):
    """Both ranks meet once; then rank 1 fails and rank 0 waits in the next all-reduce for it.
    Rank 0 handles SIGTERM as the training stages do (it only asks for a stop), so only
    torchrun's escalation can end it."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    dist.init_process_group("gloo")
    t = torch.zeros(1)
    dist.all_reduce(t)
    if dist.get_rank() == 1:
        fail()
    dist.all_reduce(t)


def raises_on_rank1():
    def fail():
        raise FileNotFoundError("row video_003-000012-1: video_003/000012.png is missing")
    _collectives_then(fail)


def killed_on_rank1():
    _collectives_then(lambda: os.kill(os.getpid(), signal.SIGKILL))


@pytest.fixture
def worker_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def test_a_rank_that_raises_is_named_with_its_error_and_the_other_does_not_hang(tmp_path, worker_path):
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed) as failed:
        run_resumable(tmp_path / "job.pkl", 2, "test_worker_failure:raises_on_rank1", tmp_path / "resume")
    assert time.monotonic() - t0 < 180
    lines = str(failed.value).splitlines()
    # the cause first; then rank 0's all-reduce, which lost its peer (gloo raises, or torchrun ends it)
    assert lines[1].startswith("rank 1: FileNotFoundError: row video_003-000012-1: video_003/000012.png is missing")
    assert len(lines) == 3 and lines[2].startswith("rank 0: ")   # its error, or ended by torchrun


def test_a_rank_killed_outright_fails_the_job_without_a_hang(tmp_path, worker_path):
    (tmp_path / "job.pkl.rank1.failed").write_text("rank 1: an earlier attempt's error\n")  # cleared at launch
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed) as failed:
        run_workers(tmp_path / "job.pkl", 2, "test_worker_failure:killed_on_rank1")
    assert time.monotonic() - t0 < 180
    lines = str(failed.value).splitlines()
    assert ("rank 1: ended without a Python error (killed by a signal: out of memory, or ended by torchrun after "
            "another rank failed)") in lines
    assert "an earlier attempt" not in str(failed.value)
    assert len(lines) == 3 and any(line.startswith("rank 0: ") for line in lines)
