"""Rule synthesize_dataset: synthetic drone videos + FineRS-4k JSON."""
import json

from reproseg.data.synthetic import synthesize_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["data"]
run_job(smk, lambda: synthesize_stage(smk.params.videos_dir, smk.output.annotations,
                                      cfg["synthetic"], cfg["frames"]))
