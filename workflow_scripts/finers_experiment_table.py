"""Rule finers_experiment_table: one row per experiment (Table 4 / A3 layout)."""
from reproseg.finers.experiments import experiment_table_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: experiment_table_stage(smk.params.experiments, smk.output.table, smk.output.table_md))
