"""Rule check_local_models: the user's Qwen2.5-VL and SAM 2.1 files are complete."""
import json

from reproseg.models.base_stage import check_local_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
local = json.loads(smk.params.cfg)["models"]["local"]
run_job(smk, lambda: check_local_stage(local["qwen"], local["sam2_checkpoint"], smk.output.manifest))
