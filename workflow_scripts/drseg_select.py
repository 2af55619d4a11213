"""Rule drseg_select: every candidate scored on the val set (gIoU / cIoU through SAM 2.1); the chosen one goes on."""
import json

from reproseg.drseg.visionreasoner.selection import select_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
run_job(smk, lambda: select_stage(smk.input.val, smk.params.images_root, smk.params.candidates, smk.output.checkpoint,
                                  smk.output.selection, smk.params.sam2, smk.params.sam2_config, cfg["selection"],
                                  cfg["rewards"], cfg["policy_size"], cfg["eval"]))
