"""Rule warmup_sam2: box-and-point prompted mask training of the tiny SAM 2.1 (embedded default)."""
import json

from reproseg.finers.warmup import warmup_sam2_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: warmup_sam2_stage(
    smk.input.train, smk.input.val, smk.params.images_root, smk.params.sam2, smk.output.sam2,
    smk.output.train_log, smk.output.curves, cfg))
