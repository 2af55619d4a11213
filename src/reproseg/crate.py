"""Export a run's provenance records as a Workflow Run RO-Crate (ro-crate-py).

The crate is metadata only: `ro-crate-metadata.json` is written into the run's working
directory, which becomes the crate root, and every artifact is referenced by its path
relative to it (checkpoints are not copied). Each job becomes a CreateAction of the
workflow with its inputs (object), outputs (result), times, and the code fingerprint,
git commit, params, environment and Slurm job recorded for it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from rocrate.model.contextentity import ContextEntity
from rocrate.rocrate import ROCrate

from .audit import RecordIndex

WFRUN_PROFILES = ("https://w3id.org/ro/wfrun/process/0.5", "https://w3id.org/ro/wfrun/workflow/0.5")


def export_crate(results: str | os.PathLike, workdir: str | os.PathLike = ".", snakefile: str = "Snakefile") -> Path:
    idx = RecordIndex.load(results, workdir)
    crate = ROCrate()
    for profile in WFRUN_PROFILES:
        crate.root_dataset.append_to("conformsTo", crate.add(ContextEntity(crate, profile, properties={
            "@type": "CreativeWork", "name": profile.rsplit("/", 2)[-2]})))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # entities without a source: referenced, not copied
        workflow = crate.add_workflow(source=None, dest_path=snakefile, main=True, lang="snakemake")
        files: dict[str, object] = {}

        def file_entity(entry: dict):
            path = entry["path"]
            if path not in files:
                files[path] = crate.add_file(source=None, dest_path=path, properties={"sha256": entry["sha256"]})
            return files[path]

        for rel, rec in sorted(idx.records.items(), key=lambda kv: kv[1].get("started") or ""):
            inputs = [file_entity(e) for entries in rec.get("inputs", {}).values() for e in entries]
            outputs = [file_entity(e) for entries in rec.get("outputs", {}).values() for e in entries]
            code, env = rec.get("code", {}), rec.get("environment", {})
            wildcards = ",".join(f"{k}={v}" for k, v in (rec.get("wildcards") or {}).items())
            crate.add_action(workflow, identifier=f"#{rel}", object=inputs, result=outputs, properties={
                "name": f"{rec['rule']}({wildcards})" if wildcards else rec["rule"],
                "startTime": rec.get("started"), "endTime": rec.get("ended"),
                "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
                "description": json.dumps({
                    "record": rel, "code_fingerprint": code.get("fingerprint"),
                    "git_commit": (code.get("git") or {}).get("commit"), "params": rec.get("params"),
                    "seed": rec.get("seed"), "host": env.get("host"), "python": env.get("python"),
                    "packages": env.get("packages"), "slurm": rec.get("slurm"),
                }, sort_keys=True),
            })
    target = Path(workdir) / "ro-crate-metadata.json"
    with tempfile.TemporaryDirectory() as tmp:
        crate.metadata.write(tmp)
        staged = Path(tmp) / "ro-crate-metadata.json"
        partial = target.with_suffix(".json.partial")
        shutil.copyfile(staged, partial)
        os.replace(partial, target)
    return target
