"""Rule drseg_train: GRPO on VisionReasoner's multi-object task with one Dr. Seg reward variant."""
import json

from reproseg.drseg.visionreasoner.train import train_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
run_job(smk, lambda: train_stage(smk.input.table, smk.params.images_root, smk.params.policy, smk.output.checkpoint,
                                 smk.output.train_log, smk.output.curves, cfg["rewards"], cfg["grpo"],
                                 cfg["policy_size"], smk.params.processes))
