"""Rule train_gse: GRPO on whole frames, rewarded against the retrospective regions."""
import json

from reproseg.finers.gse_rewards import TERMS
from reproseg.finers.train import train_gse_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: train_gse_stage(
    smk.input.train, smk.input.regions, smk.params.images_root, smk.params.policy, smk.output.checkpoint, smk.output.train_log, smk.output.curves, cfg, TERMS,
    processes=smk.params.processes))
