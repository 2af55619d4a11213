"""Rule drseg_warmup: supervised format warm-up of Dr. Seg's starting policy (embedded default)."""
import json

from reproseg.drseg.visionreasoner.warmup import warmup_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
run_job(smk, lambda: warmup_stage(smk.input.table, smk.params.images_root, smk.params.policy, smk.output.checkpoint,
                                  smk.output.train_log, smk.output.curves, cfg["warmup"], cfg["policy_size"],
                                  processes=smk.params.processes))
