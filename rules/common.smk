# Config access, validation, path helpers and per-stage params.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from reproseg import config as cfglib
from reproseg import fingerprint as fp

_resolved = cfglib.resolve(config)
cfglib.validate(_resolved, cfglib.load_yaml(Path(workflow.basedir) / "config" / "schema.yaml"))
config.clear()
config.update(_resolved)

RESULTS = config["results"]
# The pinned environment as a conda file, for --software-deployment-method conda; by
# default jobs run in the venv that scripts/bootstrap.sh builds from the same pins.
CONDA_ENV = "../envs/conda.yaml"
DATA = config["data"]


def R(path):
    """A path under the results folder."""
    return f"{RESULTS}/{path}"


def prov(path):
    """The provenance record written beside an output."""
    return f"{path}.prov.json"


def script_path(name):
    return f"../workflow_scripts/{name}.py"


def stage_params(script_name, *keys):
    """Params for a rule: the canonical config subset it reads, and the fingerprint of
    the code it runs (script + imported library modules), so that a change to either,
    and only to them, re-runs it."""
    path = Path(workflow.basedir) / "workflow_scripts" / f"{script_name}.py"
    return {
        "cfg": cfglib.canonical(cfglib.subset(config, keys)),
        "code": cfglib.canonical({"script": f"workflow_scripts/{script_name}.py",
                                  "fingerprint": fp.short(path)}),
    }


def family_resources(family):
    """Slurm resources of a rule family; memory and runtime grow with each attempt."""
    r = dict(config["resources"][family])
    mem, runtime = r.pop("mem_mb"), r.pop("runtime")
    return {
        "mem_mb": lambda wildcards, attempt: mem * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
        **{k: v for k, v in r.items() if k != "cpus_per_task"},
        "cpus_per_task": r.get("cpus_per_task", 1),
    }
