"""Rule drseg_table: Dr. Seg's Tables 2-7, our runs beside the paper's numbers."""
import json

from reproseg.drseg.visionreasoner.tables import TABLES, tables_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: tables_stage(json.loads(smk.params.runs),
                                  {t: (smk.output[t], smk.output[f"{t}_md"]) for t in TABLES}))
