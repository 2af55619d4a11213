"""Rule seganswer_stage3_select: every stage-3 candidate scored on val; the chosen one is stage 3."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.selection import select_stage3

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: select_stage3(list(smk.input.tables), list(smk.params.roots), smk.params.candidates,
                                   smk.output.checkpoint, smk.output.selection, cfg))
