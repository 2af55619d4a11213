"""Rule retrospective_regions: LPR picks the GT region GSE is rewarded for."""
import json

from reproseg.finers.retrospective import regions_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
run_job(smk, lambda: regions_stage(smk.input.train, smk.params.images_root, smk.params.lpr,
                                   smk.output.regions, cfg))
