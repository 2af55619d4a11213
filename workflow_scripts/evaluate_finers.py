"""Rule evaluate_finers: merge shards, FineRS metrics, paper-layout table."""
import json

from reproseg.finers.evaluate import evaluate_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
profile = json.loads(smk.params.cfg)["finers"]["reward_profile"]
# The untrained reference's job writes metrics only; the trained job's table shows both.
untrained = list(getattr(smk.input, "untrained", []))
run_job(smk, lambda: evaluate_stage(
    list(smk.input.shards), smk.output.predictions, smk.output.metrics, getattr(smk.output, "table", None),
    getattr(smk.output, "table_md", None), smk.wildcards.split, qa_profile=profile,
    untrained_metrics=untrained[0] if untrained else None))
