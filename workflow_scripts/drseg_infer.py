"""Rule drseg_infer: the policy's answers on one benchmark, objects in original pixels."""
import json

from reproseg.drseg.visionreasoner.inference import infer_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
run_job(smk, lambda: infer_stage(smk.input.benchmark, smk.params.images_root, smk.params.policy,
                                 smk.output.predictions, cfg["eval"], cfg["rewards"], cfg["policy_size"]))
