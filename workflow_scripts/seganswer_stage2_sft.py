"""Rule seganswer_stage2_sft: interleaved SFT with the segmented image at its original positions."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage2_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: stage2_stage(list(smk.input.tables), list(smk.params.roots), smk.params.stage1,
                                  smk.output.model, smk.output.train_log, cfg))
