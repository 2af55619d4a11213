# Dr. Seg's own setting: VisionReasoner's multi-object task. Each source imported (with a
# validation report) -> GRPO on the project's engine, one training per reward variant
# (experiments drseg-*) -> the val-chosen candidate -> answers per benchmark -> SAM 2.1
# masks and scores (COCO AP for a detection set) -> Dr. Seg's Tables 2-7 with the paper's
# numbers beside ours, and a table of FineRS with Dr. Seg's rewards beside Dr. Seg alone.
# Paths carry variant keys of the drseg_* stages (rules/drseg_common.smk).


include: "drseg_common.smk"


wildcard_constraints:
    drseg_warmup="[a-z0-9-]+",
    drseg_train="[a-z0-9-]+",
    drseg_select="[a-z0-9-]+",
    drseg_infer="[a-z0-9-]+",
    drseg_untrained="[a-z0-9-]+",
    drseg_source=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    drseg_bench=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",


rule drseg_all:
    input:
        expand(R("tables/drseg_{table}.md"), table=DRSEG_TABLES),
        expand(R("tables/drseg_{table}.report.html"), table=DRSEG_TABLES),
        R("tables/drseg_finers_comparison.md"),
        R("tables/drseg_finers_comparison.report.html"),
        expand(f"{DRSEG_DATA}/{{drseg_source}}/report.md", drseg_source=DRSEG_USED),


rule drseg_synthesize:
    output:
        data=f"{DRSEG}/synthetic/{{drseg_source}}.parquet",
        prov=prov(f"{DRSEG}/synthetic/{{drseg_source}}.parquet"),
    log:
        f"{DRSEG}/logs/drseg_synthesize/{{drseg_source}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_synthesize/{{drseg_source}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("drseg_synthesize", "drseg.synthetic", "drseg.policy_size"),
        spec=lambda wildcards: cfglib.canonical(DRSEG_SOURCES[wildcards.drseg_source]),
    script:
        script_path("drseg_synthesize")


rule drseg_import_source:
    input:
        unpack(get_drseg_source_file),
    output:
        table=f"{DRSEG_DATA}/{{drseg_source}}/table.parquet",
        images=directory(f"{DRSEG_DATA}/{{drseg_source}}/images"),
        report=f"{DRSEG_DATA}/{{drseg_source}}/report.json",
        report_md=f"{DRSEG_DATA}/{{drseg_source}}/report.md",
        prov=prov(f"{DRSEG_DATA}/{{drseg_source}}/table.parquet"),
    log:
        main=f"{DRSEG}/logs/drseg_import_source/{{drseg_source}}.log",
        report=f"{DRSEG}/logs/drseg_import_source/{{drseg_source}}.validation_report.json",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_import_source/{{drseg_source}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("drseg_import_source"),
        spec=lambda wildcards: cfglib.canonical(DRSEG_SOURCES[wildcards.drseg_source]),
    script:
        script_path("drseg_import_source")


rule drseg_warmup:
    input:
        table=drseg_import(DRSEG_CFG["train_data"]),
        table_record=prov(drseg_import(DRSEG_CFG["train_data"])),
        base=BASE_MANIFEST,
    output:
        checkpoint=directory(f"{DRSEG}/warmup/{{drseg_warmup}}/checkpoint"),
        train_log=f"{DRSEG}/warmup/{{drseg_warmup}}/train_log.parquet",
        curves=report(
            f"{DRSEG}/warmup/{{drseg_warmup}}/curves.png",
            category="training curves",
            labels={"stage": "Dr. Seg format warm-up", "variant": "{drseg_warmup}"},
            caption="../report/sft_curves.rst",
        ),
        prov=prov(f"{DRSEG}/warmup/{{drseg_warmup}}/train_log.parquet"),
    log:
        f"{DRSEG}/logs/drseg_warmup/{{drseg_warmup}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_warmup/{{drseg_warmup}}.tsv"
    priority: NEXT_PATH
    conda:
        CONDA_ENV
    threads: train_threads()
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params("drseg_warmup", "drseg_warmup", "drseg.warmup", "drseg.policy_size"),
        images_root=folder_from_record("table_record", "images"),
        policy=BASE_QWEN,
        processes=train_processes(),
    script:
        script_path("drseg_warmup")


rule drseg_train:
    input:
        table=drseg_import(DRSEG_CFG["train_data"]),
        table_record=prov(drseg_import(DRSEG_CFG["train_data"])),
        start=drseg_start_record("drseg_train"),
        base=BASE_MANIFEST,
    output:
        checkpoint=directory(f"{DRSEG}/train/{{drseg_train}}/checkpoint"),
        candidates=directory(f"{DRSEG}/train/{{drseg_train}}/candidates"),
        train_log=f"{DRSEG}/train/{{drseg_train}}/train_log.parquet",
        curves=report(
            f"{DRSEG}/train/{{drseg_train}}/curves.png",
            category="training curves",
            labels={"stage": "Dr. Seg (VisionReasoner task)", "variant": "{drseg_train}"},
            caption="../report/curves.rst",
        ),
        prov=prov(f"{DRSEG}/train/{{drseg_train}}/train_log.parquet"),
    log:
        f"{DRSEG}/logs/drseg_train/{{drseg_train}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_train/{{drseg_train}}.tsv"
    priority: NEXT_PATH
    conda:
        CONDA_ENV
    threads: train_threads()
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params("drseg_train", "drseg_train", "drseg.rewards", "drseg.grpo", "drseg.policy_size"),
        images_root=folder_from_record("table_record", "images"),
        policy=folder_from_record("start", "checkpoint", base=BASE_QWEN),
        processes=train_processes(),
    script:
        script_path("drseg_train")


rule drseg_select:
    input:
        val=drseg_import(DRSEG_CFG["selection"]["data"]),
        val_record=prov(drseg_import(DRSEG_CFG["selection"]["data"])),
        train_record=get_drseg_train_record,
        sam2_record=drseg_sam2_record("drseg_select"),
        base=BASE_MANIFEST,
    output:
        checkpoint=directory(f"{DRSEG}/select/{{drseg_select}}/checkpoint"),
        selection=f"{DRSEG}/select/{{drseg_select}}/selection.json",
        prov=prov(f"{DRSEG}/select/{{drseg_select}}/selection.json"),
    log:
        f"{DRSEG}/logs/drseg_select/{{drseg_select}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_select/{{drseg_select}}.tsv"
    priority: NEXT_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "drseg_select",
            "drseg_select",
            "drseg.selection",
            "drseg.rewards.look_to_confirm",
            "drseg.policy_size",
            "drseg.eval.device",
            "drseg.eval.giou_empty",
        ),
        images_root=folder_from_record("val_record", "images"),
        candidates=folder_from_record("train_record", "candidates"),
        sam2=folder_from_record("sam2_record", "sam2", base=BASE_SAM2),
        sam2_config=SAM2_CONFIG,
    script:
        script_path("drseg_select")


rule drseg_infer:
    input:
        benchmark=drseg_import("{drseg_bench}"),
        benchmark_record=prov(drseg_import("{drseg_bench}")),
        selection_record=get_drseg_selection_record,
    output:
        predictions=f"{DRSEG}/predictions/{{drseg_infer}}/{{drseg_bench}}.parquet",
        prov=prov(f"{DRSEG}/predictions/{{drseg_infer}}/{{drseg_bench}}.parquet"),
    log:
        f"{DRSEG}/logs/drseg_infer/{{drseg_infer}}/{{drseg_bench}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_infer/{{drseg_infer}}/{{drseg_bench}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params("drseg_infer", "drseg_infer", "drseg.eval", "drseg.rewards.look_to_confirm", "drseg.policy_size"),
        images_root=folder_from_record("benchmark_record", "images"),
        policy=folder_from_record("selection_record", "checkpoint"),
    script:
        script_path("drseg_infer")


rule drseg_infer_untrained:
    input:
        benchmark=drseg_import("{drseg_bench}"),
        benchmark_record=prov(drseg_import("{drseg_bench}")),
        start=drseg_start_record("drseg_untrained"),
        base=BASE_MANIFEST,
    output:
        predictions=f"{DRSEG}/untrained/predictions/{{drseg_untrained}}/{{drseg_bench}}.parquet",
        prov=prov(f"{DRSEG}/untrained/predictions/{{drseg_untrained}}/{{drseg_bench}}.parquet"),
    log:
        f"{DRSEG}/logs/drseg_infer_untrained/{{drseg_untrained}}/{{drseg_bench}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_infer_untrained/{{drseg_untrained}}/{{drseg_bench}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "drseg_untrained",
            "drseg_infer_untrained",
            "drseg.eval",
            "drseg.rewards.look_to_confirm",
            "drseg.policy_size",
        ),
        images_root=folder_from_record("benchmark_record", "images"),
        policy=folder_from_record("start", "checkpoint", base=BASE_QWEN),
    script:
        script_path("drseg_infer_untrained")


rule drseg_evaluate:
    input:
        benchmark=drseg_import("{drseg_bench}"),
        benchmark_record=prov(drseg_import("{drseg_bench}")),
        predictions=f"{DRSEG}/predictions/{{drseg_infer}}/{{drseg_bench}}.parquet",
        sam2_record=drseg_sam2_record("drseg_infer"),
        base=BASE_MANIFEST,
    output:
        metrics=f"{DRSEG}/metrics/{{drseg_infer}}/{{drseg_bench}}.json",
        samples=f"{DRSEG}/metrics/{{drseg_infer}}/{{drseg_bench}}.samples.parquet",
        prov=prov(f"{DRSEG}/metrics/{{drseg_infer}}/{{drseg_bench}}.json"),
    log:
        f"{DRSEG}/logs/drseg_evaluate/{{drseg_infer}}/{{drseg_bench}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_evaluate/{{drseg_infer}}/{{drseg_bench}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params("drseg_infer", "drseg_evaluate", "drseg.eval"),
        images_root=folder_from_record("benchmark_record", "images"),
        sam2=folder_from_record("sam2_record", "sam2", base=BASE_SAM2),
        sam2_config=SAM2_CONFIG,
    script:
        script_path("drseg_evaluate")


rule drseg_evaluate_untrained:
    input:
        benchmark=drseg_import("{drseg_bench}"),
        benchmark_record=prov(drseg_import("{drseg_bench}")),
        predictions=f"{DRSEG}/untrained/predictions/{{drseg_untrained}}/{{drseg_bench}}.parquet",
        sam2_record=drseg_sam2_record("drseg_untrained"),
        base=BASE_MANIFEST,
    output:
        metrics=f"{DRSEG}/untrained/metrics/{{drseg_untrained}}/{{drseg_bench}}.json",
        samples=f"{DRSEG}/untrained/metrics/{{drseg_untrained}}/{{drseg_bench}}.samples.parquet",
        prov=prov(f"{DRSEG}/untrained/metrics/{{drseg_untrained}}/{{drseg_bench}}.json"),
    log:
        f"{DRSEG}/logs/drseg_evaluate_untrained/{{drseg_untrained}}/{{drseg_bench}}.log",
    benchmark:
        f"{DRSEG}/benchmarks/drseg_evaluate_untrained/{{drseg_untrained}}/{{drseg_bench}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params("drseg_untrained", "drseg_evaluate_untrained", "drseg.eval"),
        images_root=folder_from_record("benchmark_record", "images"),
        sam2=folder_from_record("sam2_record", "sam2", base=BASE_SAM2),
        sam2_config=SAM2_CONFIG,
    script:
        script_path("drseg_evaluate_untrained")


rule drseg_table:
    input:
        metrics=[path for run in drseg_table_runs() for path in run["metrics"].values()],
    output:
        table2=R("tables/drseg_table2.parquet"),
        table2_md=R("tables/drseg_table2.md"),
        table3=R("tables/drseg_table3.parquet"),
        table3_md=R("tables/drseg_table3.md"),
        table4=R("tables/drseg_table4.parquet"),
        table4_md=R("tables/drseg_table4.md"),
        table5=R("tables/drseg_table5.parquet"),
        table5_md=R("tables/drseg_table5.md"),
        table6=R("tables/drseg_table6.parquet"),
        table6_md=R("tables/drseg_table6.md"),
        table7=R("tables/drseg_table7.parquet"),
        table7_md=R("tables/drseg_table7.md"),
        prov=prov(R("tables/drseg_table2.parquet")),
    log:
        R("logs/drseg_table.log"),
    benchmark:
        R("benchmarks/drseg_table.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("drseg_table"),
        runs=lambda wildcards: cfglib.canonical(drseg_table_runs()),
    script:
        script_path("drseg_table")


# FineRS with Dr. Seg's rewards beside Dr. Seg alone (no paper reports it: no paper column).
# Only in drseg_all; its FineRS runs are the ones experiments.run declares (drseg_finers_runs).
rule drseg_finers_comparison:
    input:
        metrics=[path for run in drseg_finers_runs() for path in run["metrics"].values()],
    output:
        table=R("tables/drseg_finers_comparison.parquet"),
        table_md=R("tables/drseg_finers_comparison.md"),
        prov=prov(R("tables/drseg_finers_comparison.parquet")),
    log:
        R("logs/drseg_finers_comparison.log"),
    benchmark:
        R("benchmarks/drseg_finers_comparison.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("drseg_finers_comparison"),
        runs=lambda wildcards: cfglib.canonical(drseg_finers_runs()),
    script:
        script_path("drseg_finers_comparison")
