"""Rule seganswer_stage1_select: every phase-b candidate scored on val; the chosen one is merged into stage 1."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.selection import select_stage1

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = json.loads(smk.params.cfg)["seganswer"]
run_job(smk, lambda: select_stage1(list(smk.input.tables), list(smk.params.roots), smk.params.candidates,
                                   smk.output.checkpoint, smk.output.selection, cfg))
