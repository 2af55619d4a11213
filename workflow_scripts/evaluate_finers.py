"""Rule evaluate_finers: merge shards, FineRS metrics, paper-layout table."""
import json

from reproseg.finers.evaluate import evaluate_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
profile = json.loads(smk.params.cfg)["finers"]["reward_profile"]
# The table shows the untrained policy's metrics beside these (when finers.inference.untrained).
untrained = list(smk.input.untrained)
run_job(smk, lambda: evaluate_stage(
    list(smk.input.shards), smk.output.predictions, smk.output.metrics, smk.output.table, smk.output.table_md,
    smk.wildcards.split, qa_profile=profile, untrained_metrics=untrained[0] if untrained else None))
