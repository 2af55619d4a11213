"""Rule infer_finers: GSE -> crop -> LPR -> SAM2 on one shard of a split."""
import json

from reproseg.finers.inference import infer_stage
from reproseg.finers.samples import look_enabled
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
shard, shards = (int(x) for x in smk.wildcards.shard.split("-of-"))
run_job(smk, lambda: infer_stage(
    smk.input.split, smk.params.images_root, smk.params.gse, smk.params.lpr, smk.params.sam2,
    smk.params.sam2_config, smk.output.shard, cfg, shard, shards,
    look={"gse": look_enabled(cfg, "gse"), "lpr": look_enabled(cfg, "lpr")}))
