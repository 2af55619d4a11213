"""Rule seganswer_table: the checkpoints up to one stage side by side, in the paper's Table 3 / Table 1 layouts."""
from reproseg.provenance import run_job
from reproseg.seganswer.paper_tables import tables_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
metrics = {name[len("metrics_"):]: path for name, path in smk.input.items() if name.startswith("metrics_")}
run_job(smk, lambda: tables_stage(metrics, smk.wildcards.stage, smk.output.table_md, smk.output.table))
