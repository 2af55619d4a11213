# HTML renderings of the Markdown tables, so that `snakemake --report` can show them.


rule markdown_html:
    input:
        md=f"{RESULTS}/{{folder}}/{{name}}.md",
    output:
        html=report(
            f"{RESULTS}/{{folder}}/{{name}}.report.html",
            category="{folder}",
            labels={"table": "{name}"},
            caption="../report/table.rst",
        ),
        prov=f"{RESULTS}/{{folder}}/{{name}}.report.html.prov.json",
    wildcard_constraints:
        folder="tables|splits|annotations",
        name=r"[\w.-]+",
    params:
        **stage_params("markdown_html"),
    log:
        f"{RESULTS}/logs/markdown_html/{{folder}}/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/markdown_html/{{folder}}/{{name}}.tsv"
    resources:
        **family_resources("cpu_data"),
    conda:
        CONDA_ENV
    script:
        script_path("markdown_html")
