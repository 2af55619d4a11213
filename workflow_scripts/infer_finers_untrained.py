"""Rule infer_finers_untrained: the same two-stage inference with the untrained policy (the
warm-up, or the base model) in both roles; it was never trained with Look-to-Confirm."""
import json

from reproseg.finers.inference import infer_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["finers"]
shard, shards = (int(x) for x in smk.wildcards.shard.split("-of-"))
run_job(smk, lambda: infer_stage(
    smk.input.split, smk.params.images_root, smk.params.policy, smk.params.policy, smk.params.sam2,
    smk.params.sam2_config, smk.output.shard, cfg, shard, shards, look={"gse": False, "lpr": False}))
