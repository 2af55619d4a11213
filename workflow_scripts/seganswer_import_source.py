"""Rule seganswer_import_source: one SegAnswer data source -> normalised tables + validation report."""
import json

from reproseg.provenance import run_job
from reproseg.seganswer.sources import import_stage

smk = snakemake  # noqa: F821 (injected by Snakemake)
splits = {k[len("split_"):]: v for k, v in smk.input.items() if k.startswith("split_")}
run_job(smk, lambda: import_stage(
    smk.wildcards.source, json.loads(smk.params.spec), smk.output.referring, smk.output.questions,
    smk.output.images, smk.output.report, smk.output.report_md, smk.log.report, finers_splits=splits))
