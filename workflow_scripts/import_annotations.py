"""Rule import_annotations: FineRS-4k JSON (one file, or the release's train and test) -> table + report."""
import json

from reproseg.data.annotations import import_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
data = json.loads(smk.params.cfg)["data"]
ann = data["annotations"]
files = [smk.input.annotations] if isinstance(smk.input.annotations, str) else list(smk.input.annotations)
# The release's {"train": path, "test": path}, in the order the rule lists them; else the one file.
source = dict(zip(smk.params.release_splits, files)) if smk.params.release_splits else files[0]
run_job(smk, lambda: import_stage(
    source, smk.output.table, smk.output.report, smk.output.report_md, smk.log.report,
    manifest=smk.input.manifest or None, images_dir=data["images_dir"],
    on_invalid=ann["on_invalid"], point_jitter=ann["point_jitter"], seed=ann["seed"],
    max_image_pixels=ann["max_image_pixels"]))
