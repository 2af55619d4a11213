# HTML renderings of the Markdown tables, so that `snakemake --report` can show them.

# Whether a markdown_html job renders a SegAnswer source's validation report.
seg_report = lambda wildcards: wildcards.folder.startswith("seganswer/data/")


rule markdown_html:
    input:
        md=f"{RESULTS}/{{folder}}/{{name}}.md",
    output:
        html=report(
            f"{RESULTS}/{{folder}}/{{name}}.report.html",
            # A SegAnswer source's report sits in that source's folder: one category for all
            # sources, labelled by source (a callable category and labels are Snakemake's own).
            category=lambda wildcards: "SegAnswer data" if seg_report(wildcards) else wildcards.folder,
            labels=lambda wildcards: (
                {"source": os.path.basename(wildcards.folder), "table": wildcards.name}
                if seg_report(wildcards)
                else {"table": wildcards.name}
            ),
            caption="../report/table.rst",
        ),
        prov=prov(f"{RESULTS}/{{folder}}/{{name}}.report.html"),
    log:
        f"{RESULTS}/logs/markdown_html/{{folder}}/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/markdown_html/{{folder}}/{{name}}.tsv"
    wildcard_constraints:
        folder="tables|splits|annotations|seganswer/data/[^/]+",
        name=r"[\w.-]+",
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("markdown_html"),
    script:
        script_path("markdown_html")
