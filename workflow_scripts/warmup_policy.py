"""Rule warmup_policy: supervised format warm-up of the starting policy (embedded default)."""
import json

from reproseg.finers.warmup import warmup_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: warmup_stage(
    smk.input.train, smk.input.val, smk.params.images_root, smk.params.policy, smk.output.checkpoint,
    smk.output.train_log, smk.output.curves, cfg, processes=smk.params.processes))
