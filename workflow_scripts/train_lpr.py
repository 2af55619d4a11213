"""Rule train_lpr: GRPO on 512-px (lpr_crop) crops around the GT box."""
import json

from reproseg.finers.lpr_rewards import TERMS
from reproseg.finers.train import train_lpr_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: train_lpr_stage(
    smk.input.train, smk.params.images_root, smk.params.policy, smk.output.checkpoint, smk.output.train_log,
    smk.output.curves, cfg, TERMS, processes=smk.params.processes))
