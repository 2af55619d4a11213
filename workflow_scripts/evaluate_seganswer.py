"""Rule evaluate_seganswer: referring segmentation and VQA metrics of one checkpoint."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import evaluate_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: evaluate_stage(
    {"tables": list(smk.input.referring), "roots": list(smk.params.referring_roots)},
    {"tables": list(smk.input.questions), "roots": list(smk.params.question_roots)},
    json.loads(smk.params.model), smk.output.metrics, cfg, smk.wildcards.checkpoint))
