"""Rule markdown_html: a Markdown table as HTML for the Snakemake report."""
from reproseg.provenance import run_job
from reproseg.report_html import markdown_file_to_html

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_job(smk, lambda: markdown_file_to_html(smk.input.md, smk.output.html))
