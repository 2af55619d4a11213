"""Checkpoint selection, declared up front: `last`, or `best` by a named val metric.

A training stage saves candidates (`step-<N>/` folders, the final step included); a
selection job scores every candidate on the val split only, picks one by the declared
rule, and links it to the folder the downstream stages read. The candidates, their
scores and the choice go to a selection JSON and into the job's provenance record, so
`reproseg audit` shows them. One checkpoint serves every benchmark of a stage: test
numbers never come from a checkpoint picked per benchmark.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io_atomic import atomic_dir, write_json
from .runs import CANDIDATES_DIR

log = logging.getLogger(__name__)

CHOICES = ("last", "best")
MODES = ("max", "min")
_CANDIDATE = re.compile(r"step-(\d+)$")


def candidate_name(step: int) -> str:
    return f"step-{int(step):06d}"


@dataclass(frozen=True)
class SelectionSettings:
    choose: str = "last"
    metric: str | None = None   # a val metric of the stage; needed by `best`
    mode: str = "max"           # max: higher is better

    def __post_init__(self):
        if self.choose not in CHOICES:
            raise ValueError(f"selection choose {self.choose!r} not in {CHOICES}")
        if self.mode not in MODES:
            raise ValueError(f"selection mode {self.mode!r} not in {MODES}")
        if self.choose == "best" and not self.metric:
            raise ValueError("selection choose 'best' needs a metric")

    def check_metric(self, known: list[str] | tuple[str, ...], where: str) -> None:
        if self.metric is not None and self.metric not in known:
            raise ValueError(f"{where}: selection metric {self.metric!r} is not a val metric of this stage; "
                             f"known: {sorted(known)}")


def list_candidates(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every candidate under `root`, by step."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no candidates folder")
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CANDIDATE.match(p.name)))
    if not found:
        raise FileNotFoundError(f"{root}: no step-<N> candidate folders")
    return found


def choose(candidates: list[dict], settings: SelectionSettings) -> int:
    """Index of the chosen candidate. `candidates`: [{"step", "scores": {metric: value}}].

    last: the highest step. best: the best value of the metric; a NaN counts as worst;
    ties go to the later step (nothing shows that the extra training hurt).
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    order = sorted(range(len(candidates)), key=lambda i: candidates[i]["step"])
    if settings.choose == "last":
        return order[-1]
    sign = 1.0 if settings.mode == "max" else -1.0

    def key(i):
        v = candidates[i]["scores"][settings.metric]
        return (-math.inf if v is None or math.isnan(v) else sign * v, candidates[i]["step"])
    return max(order, key=key)


def link_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link of file `src` at `dst` (a plain copy across file systems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A copy of folder `src` at `dst` made of hard links (a plain copy across file systems)."""
    shutil.copytree(src, dst, copy_function=link_file, dirs_exist_ok=True)


def collect_candidates(staged_root: str | os.PathLike, final_dir: str | os.PathLike,
                       candidates_dir: str | os.PathLike, final_step: int) -> Path:
    """The candidates a training run staged in `<staged_root>/candidates` (inside its resume
    state, so a retried job keeps them) and the final model as step-<final_step> (hard
    links: no second copy on disk) in `candidates_dir`, in one rename."""
    staged = Path(staged_root) / CANDIDATES_DIR
    with atomic_dir(candidates_dir) as tmp:
        if staged.is_dir():
            for p in sorted(staged.glob("step-*")):
                shutil.move(str(p), tmp / p.name)
        link_tree(final_dir, tmp / candidate_name(final_step))
    list_candidates(candidates_dir)  # at least the final one, or this raises
    return Path(candidates_dir)


def select(candidates_root: str | os.PathLike, score: Callable[[Path], dict[str, float]] | None,
           settings: SelectionSettings, out_dir: str | os.PathLike, selection_json: str | os.PathLike,
           split: str = "val") -> dict:
    """Scores every candidate (`score(folder) -> {metric: value}` on `split`; None skips
    scoring, which `best` cannot), links the chosen one to `out_dir`, and writes
    `selection_json`. Returns the selection (for the provenance record)."""
    if score is None and settings.choose == "best":
        raise ValueError("selection 'best' needs val scores")
    found = list_candidates(candidates_root)
    rows = []
    for step, path in found:
        scores = {k: float(v) for k, v in (score(path) if score is not None else {}).items()}
        if settings.metric is not None and settings.metric not in scores:
            raise KeyError(f"{path}: the scores have no {settings.metric!r} (have {sorted(scores)})")
        rows.append({"step": step, "path": str(path), "scores": scores})
    chosen = choose(rows, settings)
    selection = {
        "choose": settings.choose, "metric": settings.metric, "mode": settings.mode, "split": split,
        "candidates": rows, "chosen": {"step": rows[chosen]["step"], "path": rows[chosen]["path"],
                                       "value": rows[chosen]["scores"].get(settings.metric)},
    }
    with atomic_dir(out_dir) as tmp:
        link_tree(rows[chosen]["path"], tmp)
    write_json(selection_json, selection)
    return selection


def select_stage(settings: dict, known: tuple[str, ...] | list[str], where: str, candidates_root, out_dir,
                 selection_json, make_score: Callable[[], Callable[[Path], dict[str, float]]]) -> dict:
    """A selection job: the declared settings (checked against the stage's val metrics
    `known`, named by config key `where`), every candidate scored by the function
    `make_score()` builds (only called when a metric is named: it reads the val data),
    the choice linked to `out_dir`. Returns {"selection": ...} for the provenance record."""
    parsed = SelectionSettings(**settings)
    parsed.check_metric(known, where)
    score = make_score() if parsed.metric is not None else None
    selection = select(candidates_root, score, parsed, out_dir, selection_json, split="val")
    log.info("chosen: step %d of %d candidates", selection["chosen"]["step"], len(selection["candidates"]))
    return {"selection": selection}


def describe(selection: dict) -> list[str]:
    """Lines for `reproseg audit`: every candidate's val score and the choice."""
    metric = selection.get("metric")
    head = f"selection {selection['choose']}" + (f" by {metric} ({selection['mode']}) on {selection['split']}"
                                                  if metric else "")
    lines = [head]
    for c in selection["candidates"]:
        mark = "*" if c["step"] == selection["chosen"]["step"] else " "
        value = c["scores"].get(metric) if metric else None
        lines.append(f" {mark} step {c['step']:>7d}  {metric or ''} {'' if value is None else f'{value:.4f}'}")
    return lines
