"""Rule drseg_synthesize: one source of the synthetic multi-object fixture, in its task's parquet format."""
import json

from reproseg.drseg.visionreasoner.synthetic import write_source
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
spec, syn = json.loads(smk.params.spec), cfg["synthetic"]
run_job(smk, lambda: write_source(smk.output.data, spec["task"], syn["counts"][spec["split"]], syn["seed"],
                                  smk.wildcards.drseg_source, syn["size"], syn["max_objects"], cfg["policy_size"]))
