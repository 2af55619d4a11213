"""`audit` and `verify` over the provenance records a run left beside its outputs."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .io_atomic import sha256_path
from .provenance import RECORD_SUFFIX
from .selection import describe as describe_selection


@dataclass
class RecordIndex:
    """All records under a results folder, indexed by the outputs they describe."""
    root: Path
    records: dict[str, dict] = field(default_factory=dict)      # record path -> record
    producer: dict[str, str] = field(default_factory=dict)      # output path -> record path

    @classmethod
    def load(cls, results: str | os.PathLike, workdir: str | os.PathLike = ".") -> "RecordIndex":
        idx = cls(Path(workdir))
        for path in sorted(Path(results).rglob(f"*{RECORD_SUFFIX}")):
            rel = os.path.relpath(path, workdir)
            try:
                rec = json.loads(path.read_text())
            except ValueError as exc:
                raise ValueError(f"{rel}: corrupt provenance record: {exc}") from exc
            idx.records[rel] = rec
            for entries in rec.get("outputs", {}).values():
                for e in entries:
                    idx.producer[os.path.normpath(e["path"])] = rel
        return idx

    def record_for(self, artifact: str) -> tuple[str, dict]:
        key = os.path.normpath(os.path.relpath(artifact, self.root) if os.path.isabs(artifact) else artifact)
        if key.endswith(RECORD_SUFFIX) and key in self.records:
            return key, self.records[key]
        for candidate in (key, *(str(p) for p in Path(key).parents)):
            if candidate in self.producer:
                rel = self.producer[candidate]
                return rel, self.records[rel]
        raise KeyError(f"no provenance record lists {artifact} as an output")


def chain(idx: RecordIndex, artifact: str) -> list[dict]:
    """The record that made `artifact`, then those that made its inputs, back to raw inputs."""
    out, seen, todo = [], set(), [artifact]
    while todo:
        art = todo.pop(0)
        try:
            rel, rec = idx.record_for(art)
        except KeyError:
            continue  # a raw input: no job made it
        if rel in seen:
            continue
        seen.add(rel)
        out.append({"record": rel, **rec})
        todo += [e["path"] for entries in rec.get("inputs", {}).values() for e in entries]
    return out


def format_chain(records: list[dict]) -> str:
    lines = []
    for rec in records:
        code = rec.get("code", {})
        git = code.get("git", {})
        env = rec.get("environment", {})
        pk = env.get("packages", {})
        lines.append(f"== {rec['rule']} {rec.get('wildcards') or ''}  ({rec['record']})")
        for kind in ("outputs", "inputs"):
            for name, entries in rec.get(kind, {}).items():
                for e in entries:
                    lines.append(f"   {kind[:-1]:6s} {name:12s} {e['path']}  sha256:{(e['sha256'] or 'missing')[:16]}")
        params = {k: v for k, v in rec.get("params", {}).items() if k != "code"}
        lines.append(f"   params  {json.dumps(params, sort_keys=True)[:400]}")
        lines.append(f"   code    fingerprint {code.get('fingerprint')} script {code.get('script_path')} "
                     f"git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}")
        lines.append(f"   env     python {env.get('python')} torch {pk.get('torch')} transformers "
                     f"{pk.get('transformers')} snakemake {pk.get('snakemake')} host {env.get('host')}")
        slurm = rec.get("slurm") or {}
        selection = (rec.get("outcome") or {}).get("selection")
        if selection:
            lines += [f"   {line}" for line in describe_selection(selection)]
        lines.append(f"   job     slurm {slurm.get('SLURM_JOB_ID', '-')} started {rec.get('started')} "
                     f"ended {rec.get('ended')} seed {rec.get('seed')}")
    return "\n".join(lines)


@dataclass
class Finding:
    record: str
    path: str
    problem: str   # changed | missing | stale-input


def verify(idx: RecordIndex) -> list[Finding]:
    """Re-hashes every recorded output and input. An output whose bytes differ from its
    record was changed by hand; a missing one is named; an input whose bytes differ from
    what the job read means the output is stale."""
    findings = []
    hashes: dict[str, str | None] = {}

    def current(p: str) -> str | None:
        if p not in hashes:
            full = idx.root / p
            hashes[p] = sha256_path(full) if full.exists() else None
        return hashes[p]

    # (record section, name when the file is gone, name when its bytes differ)
    checks = (("outputs", "missing", "changed"), ("inputs", "missing-input", "stale-input"))
    for rel, rec in idx.records.items():
        for section, gone, differs in checks:
            for entries in rec.get(section, {}).values():
                for e in entries:
                    now = current(e["path"])
                    if now is None:
                        findings.append(Finding(rel, e["path"], gone))
                    elif now != e["sha256"]:
                        findings.append(Finding(rel, e["path"], differs))
    return findings
