"""Rule seganswer_stage1_lora: stage 1 phase b (LoRA + projector + mask decoder)."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage1_lora_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: stage1_lora_stage(list(smk.input.tables), list(smk.params.roots), smk.params.phase_a,
                                       smk.output.model, smk.output.train_log, cfg))
