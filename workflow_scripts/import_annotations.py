"""Rule import_annotations: FineRS-4k JSON -> validated Parquet table + report."""
import json

from reproseg.data.annotations import import_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
data = json.loads(smk.params.cfg)["data"]
ann = data["annotations"]
run_job(smk, lambda: import_stage(
    smk.input.annotations, smk.output.table, smk.output.report, smk.output.report_md, smk.log.report,
    manifest=smk.input.manifest or None, images_dir=data["images_dir"],
    on_invalid=ann["on_invalid"], point_jitter=ann["point_jitter"], seed=ann["seed"]))
