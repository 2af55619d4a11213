"""Rule seganswer_stage2_select: every stage-2 candidate scored on val; the chosen one is stage 2."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.selection import select_stage2

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: select_stage2(list(smk.input.tables), list(smk.params.roots), smk.params.candidates,
                                   smk.output.checkpoint, smk.output.selection, cfg))
