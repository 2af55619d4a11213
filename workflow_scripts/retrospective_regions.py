"""Rule retrospective_regions: LPR picks the GT region GSE is rewarded for (one shard of the training split)."""
import json

from reproseg.finers.retrospective import regions_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
shard, shards = (int(x) for x in smk.wildcards.shard.split("-of-"))
run_job(smk, lambda: regions_stage(smk.input.train, smk.params.images_root, smk.params.lpr,
                                   smk.output.shard, cfg, shard=shard, shards=shards))
