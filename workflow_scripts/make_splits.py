"""Rule make_splits: leakage-free splits + statistics table and plot."""
import json

from reproseg.data.splits import SPLITS, splits_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
s = json.loads(smk.params.cfg)["data"]["splits"]
run_job(smk, lambda: splits_stage(
    smk.input.annotations, {name: smk.output[name] for name in SPLITS}, smk.output.stats,
    smk.output.stats_md, smk.output.plot, seed=s["seed"], proportions=s["proportions"],
    group_by=s["group_by"], official=smk.input.official or None))
