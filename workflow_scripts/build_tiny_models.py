"""Rule build_tiny_models: tokenizer, processor, tiny Qwen2.5-VL and SAM 2.1, offline."""
import json

from reproseg.models.base_stage import build_tiny_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
tiny = json.loads(smk.params.cfg)["models"]["tiny"]
run_job(smk, lambda: build_tiny_stage(smk.input.train, smk.output.bundle, smk.output.manifest,
                                      tiny["spec"], tiny["seed"]))
