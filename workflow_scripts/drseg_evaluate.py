"""Rule drseg_evaluate: one benchmark's scores (SAM 2.1 masks per object for segmentation, REC, counting)."""
import json

from reproseg.drseg.visionreasoner.evaluate import evaluate_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["drseg"]
run_job(smk, lambda: evaluate_stage(smk.input.benchmark, smk.params.images_root, smk.input.predictions,
                                    smk.params.sam2, smk.params.sam2_config, smk.output.metrics, smk.output.samples,
                                    cfg["eval"], smk.wildcards.drseg_bench))
