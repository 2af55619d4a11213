"""Rule evaluate_seganswer: referring segmentation and VQA tables for one stage's model."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import evaluate_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: evaluate_stage(
    {"tables": list(smk.input.referring), "roots": list(smk.params.referring_roots)},
    {"tables": list(smk.input.questions), "roots": list(smk.params.question_roots)},
    smk.params.model, smk.output.metrics, smk.output.table_md, smk.output.table, cfg, smk.wildcards.stage))
