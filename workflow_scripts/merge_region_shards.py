"""Rule merge_region_shards: the retrospective region shards merged into one table."""
from reproseg.finers.region_table import merge_region_shards
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: merge_region_shards(list(smk.input.shards), smk.output.regions))
