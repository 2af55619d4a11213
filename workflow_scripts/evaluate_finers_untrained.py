"""Rule evaluate_finers_untrained: merge the untrained policy's shards and score them (metrics
only: the trained evaluation's table shows them beside its own)."""
import json

from reproseg.finers.evaluate import evaluate_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
profile = json.loads(smk.params.cfg)["finers"]["reward_profile"]
run_job(smk, lambda: evaluate_stage(
    list(smk.input.shards), smk.output.predictions, smk.output.metrics, None, None, smk.wildcards.split,
    qa_profile=profile, untrained_metrics=None))
