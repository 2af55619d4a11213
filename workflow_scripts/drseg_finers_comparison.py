"""Rule drseg_finers_comparison: FineRS trained with Dr. Seg's rewards beside Dr. Seg alone (gIoU / cIoU)."""
import json

from reproseg.drseg.comparison import comparison_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: comparison_stage(json.loads(smk.params.runs), smk.output.table, smk.output.table_md))
