"""Rule select_gse: every GSE GRPO candidate scored on val; the chosen one goes on."""
import json

from reproseg.finers.gse_rewards import TERMS
from reproseg.finers.selection import select_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: select_stage("gse", smk.input.val, smk.params.images_root, smk.params.candidates,
                                  smk.output.checkpoint, smk.output.selection, cfg, TERMS))
