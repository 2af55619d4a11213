"""Rule merge_frame_manifests: per-video manifests -> one manifest."""
from reproseg.data.video import merge_manifests_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: merge_manifests_stage(list(smk.input.manifests), smk.output.manifest))
