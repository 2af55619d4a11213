"""Rule seganswer_stage1_merge: the LoRA merged into the language model."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.workflow_stages import stage1_merge_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: stage1_merge_stage(smk.params.unmerged, smk.output.checkpoint, cfg))
