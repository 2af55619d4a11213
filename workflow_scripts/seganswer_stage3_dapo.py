"""Rule seganswer_stage3_dapo: multi-turn DAPO on the project's GRPO engine."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.stage3 import stage3_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: stage3_stage(list(smk.input.tables), list(smk.params.roots), smk.params.stage2,
                                  smk.output.checkpoint, smk.output.train_log,
                                  smk.output.curves, cfg, processes=smk.params.processes))
