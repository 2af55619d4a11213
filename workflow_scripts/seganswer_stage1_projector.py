"""Rule seganswer_stage1_projector: stage 1 phase a (only the projector trains)."""
import json

from reproseg.curves import plot_curves
from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage1_projector_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]


def job():
    stage1_projector_stage(list(smk.input.tables), list(smk.params.roots), smk.params.qwen, smk.params.sam2,
                           smk.params.sam2_config, smk.output.checkpoint, smk.output.train_log, cfg,
                           processes=smk.params.processes)
    # Inside the job, so that the provenance record (written last) marks the curves complete too.
    plot_curves(smk.output.train_log, smk.output.curves, "SegAnswer stage 1a: projector", kind="sft")


run_job(smk, job)
