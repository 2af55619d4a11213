"""Rule evaluate_seganswer: referring segmentation and VQA tables for one stage's model."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import evaluate_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: evaluate_stage(smk.input.split, smk.params.images_root, smk.params.model, smk.output.metrics,
                                    smk.output.table_md, smk.output.table, cfg, smk.wildcards.stage))
