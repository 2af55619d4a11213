"""Rule seganswer_stage2_sft: interleaved SFT with the segmented image at its original positions."""
import json

from reproseg.curves import plot_curves
from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage2_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]


def job():
    stage2_stage(list(smk.input.tables), list(smk.params.roots), smk.params.stage1, smk.output.checkpoint,
                 smk.output.train_log, cfg, processes=smk.params.processes)
    # Inside the job, so that the provenance record (written last) marks the curves complete too.
    plot_curves(smk.output.train_log, smk.output.curves, "SegAnswer stage 2: interleaved SFT", kind="sft")


run_job(smk, job)
