"""Rule drseg_import_source: a training set or benchmark -> normalised table, images and validation report."""
import json

from reproseg.drseg.visionreasoner import benchmarks, data
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
spec = json.loads(smk.params.spec)
spec = {**spec, "name": smk.wildcards.drseg_source, "path": smk.input.data}
importer = data.import_stage if spec["task"] == "train" else benchmarks.import_stage
run_job(smk, lambda: importer(spec, smk.output.table, smk.output.images, smk.output.report, smk.output.report_md,
                              smk.log.report))
