"""Provenance records: one JSON file per job, written beside its outputs, last.

The record holds everything `audit` and `verify` need: content hashes of inputs and
outputs, params, the code that ran (git commit + fingerprint of the imported library
modules), package versions, host, Slurm job, times and seed.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from .fingerprint import SRC, fingerprint
from .io_atomic import sha256_path, write_json

RECORD_SUFFIX = ".prov.json"
SCHEMA_VERSION = 1
PACKAGES = (
    "snakemake", "snakemake-executor-plugin-slurm", "torch", "torchvision", "transformers",
    "trl", "peft", "accelerate", "deepspeed", "sam2", "pyarrow", "duckdb", "pycocotools",
    "omegaconf", "av", "numpy", "scipy", "pillow", "opencv-python-headless", "reproseg",
)
SLURM_VARS = (
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST",
    "SLURM_JOB_ACCOUNT", "SLURM_RESTART_COUNT", "SLURM_GPUS_ON_NODE", "SLURM_CPUS_PER_TASK",
    "CUDA_VISIBLE_DEVICES",
)


def record_path(output: str | os.PathLike) -> str:
    return f"{output}{RECORD_SUFFIX}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: str | os.PathLike = ".") -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    dirty = git("status", "--porcelain", "--", "src", "workflow_scripts", "rules", "Snakefile", "config")
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _hash_files(named: dict[str, list[str]]) -> dict[str, list[dict]]:
    return {
        name: [{"path": p, "sha256": sha256_path(p) if Path(p).exists() else None} for p in paths]
        for name, paths in named.items()
    }


def _decode(value):
    # Params carry canonical JSON strings; store them as structures.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def build_record(*, rule, wildcards, inputs, outputs, params, code, seed, started, ended, log, resources) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "rule": rule,
        "wildcards": wildcards,
        "inputs": _hash_files(inputs),
        "outputs": _hash_files(outputs),
        "params": {k: _decode(v) for k, v in params.items()},
        "code": {**code, "git": git_state()},
        "seed": seed,
        "environment": {
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "host": socket.gethostname(),
        },
        "slurm": {k: os.environ.get(k) for k in SLURM_VARS if os.environ.get(k) is not None},
        "resources": resources,
        "started": started,
        "ended": ended,
        "log": log,
    }


def _named(namedlist) -> dict[str, list[str]]:
    """Snakemake's Namedlist as {name: [paths]}; unnamed entries under '_'."""
    out: dict[str, list[str]] = {}
    covered = set()
    for name, (start, end) in getattr(namedlist, "_names", {}).items():
        end = start + 1 if end is None else end
        out[name] = [str(p) for p in list(namedlist)[start:end]]
        covered.update(range(start, end))
    rest = [str(p) for i, p in enumerate(namedlist) if i not in covered]
    if rest:
        out["_"] = rest
    return out


def _setup_logging(log_path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_job(smk, func: Callable[[], None]) -> None:
    """Runs one workflow job and writes its provenance record to `output.prov`.

    `smk` is the `snakemake` object of a script; `func` does the work. The record is
    written only after `func` returned, so its presence marks a complete job. A dict that
    `func` returns goes into the record as its `outcome` (a checkpoint selection, say); a
    training job's outcome also holds the world size its step log states (trained_on).
    """
    log = list(smk.log)
    _setup_logging(log[0] if log else None)
    started, t0 = _now(), time.monotonic()
    try:
        outcome = func()
    except BaseException:
        logging.exception("job of rule %s failed", smk.rule)
        raise
    params = dict(smk.params.items())
    code_param = _decode(params.get("code", "{}"))
    script = code_param.get("script") if isinstance(code_param, dict) else None
    # The script path is relative to the repository (the jobs' working directory may differ).
    code = fingerprint(SRC.parent / script) if script else {}
    if script and code["fingerprint"] != code_param.get("fingerprint"):
        logging.warning("code changed between planning and running this job: %s", script)
    code["script_path"] = script
    outputs = _named(smk.output)
    prov = outputs.pop("prov")[0]
    params_cfg = _decode(params.get("cfg", "{}"))
    record = build_record(
        rule=smk.rule, wildcards=dict(smk.wildcards.items()), inputs=_named(smk.input),
        outputs=outputs, params=params, code=code, seed=_find_seed(params_cfg),
        started=started, ended=_now(), log=log,
        resources={k: v for k, v in smk.resources.items() if not k.startswith("_")},
    )
    record["duration_s"] = round(time.monotonic() - t0, 3)
    outcome = {**(outcome if isinstance(outcome, dict) else {}), **trained_on(outputs)}
    if outcome:
        record["outcome"] = outcome
    write_json(prov, record)


def trained_on(outputs: dict[str, list[str]]) -> dict:
    """{"world_size": N}: the processes a training job trained on, as the `world_size` column
    of its step log (the output named `train_log`, as every training rule names it) states
    them; {} for any other job."""
    path = (outputs.get("train_log") or [None])[0]
    if path is None or not Path(path).is_file() or "world_size" not in pq.read_schema(path).names:
        return {}
    sizes = {int(v) for v in pq.read_table(path, columns=["world_size"]).column(0).to_pylist()
             if v is not None and v == v}
    if not sizes:
        return {}
    # One value: a resumed run must have the world size it started with (its manifest).
    logging.info("trained on %d process(es)", max(sizes))
    return {"world_size": max(sizes)}


def _find_seed(cfg) -> dict:
    """Every `seed` key in the stage's config subset, by dotted path."""
    seeds = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "seed" and isinstance(v, int):
                    seeds[".".join(path + [k])] = v
                walk(v, path + [k])

    walk(cfg, [])
    return seeds
