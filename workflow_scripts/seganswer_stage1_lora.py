"""Rule seganswer_stage1_lora: stage 1 phase b (LoRA + projector + mask decoder)."""
import json

from reproseg.curves import plot_curves
from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage1_lora_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]


def job():
    stage1_lora_stage(list(smk.input.tables), list(smk.params.roots), smk.params.phase_a, smk.output.checkpoint,
                      smk.output.train_log, cfg, processes=smk.params.processes)
    # Inside the job, so that the provenance record (written last) marks the curves complete too.
    plot_curves(smk.output.train_log, smk.output.curves, "SegAnswer stage 1b: LoRA + projector + mask decoder",
                kind="sft")


run_job(smk, job)
