"""Rule seganswer_stage1_projector: stage 1 phase a (only the projector trains)."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage1_projector_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: stage1_projector_stage(list(smk.input.tables), list(smk.params.roots), smk.params.qwen,
                                            smk.params.sam2, smk.params.sam2_config, smk.output.model,
                                            smk.output.train_log, cfg))
