# SegAnswer: each data source imported into normalised tables (with a validation
# report), stage 1 pixel grounding (projector, then LoRA, the val-chosen LoRA candidate
# merged), stage 2 interleaved SFT, stage 3 multi-turn DAPO (each with its val-chosen
# candidate); every checkpoint (the base model and each stage's) evaluated, then side by
# side in the paper's table layouts.

for _kind in ("referring", "questions"):
    _labels = [b["label"] for b in SEG["eval"][_kind]]
    if len(set(_labels)) != len(_labels):
        raise cfglib.ConfigError(f"config key 'seganswer.eval.{_kind}': duplicate labels {_labels}")
SEG_EVAL_REF = [b["data"] for b in SEG["eval"]["referring"]]
SEG_EVAL_QA = [b["data"] for b in SEG["eval"]["questions"]]
# Only the sources some stage or benchmark reads are imported (a --configfile cannot
# remove the default's entries from the merged `sources` map).
SEG_USED = sorted(
    {
        seg_source_of(s)
        for sel in [
            *SEG["data"].values(),
            SEG["selection"]["data"],
            SEG["selection"]["referring_data"],
            SEG_EVAL_REF,
            SEG_EVAL_QA,
        ]
        for s in sel
    }
)
# Where the candidates are scored: the evaluation's device and precision.
SEG_EVAL_RUNTIME = ["seganswer.eval.dtype", "seganswer.eval.device"]
# What a question-answering selection (stages 2 and 3) reads besides its own rule.
SEG_QA_SELECTION = [f"seganswer.selection.{k}" for k in ("data", "max_new_tokens", "max_turns", "limit")]
# The section-wide keys every SegAnswer training and evaluation rule reads besides its own.
SEG_SHARED_KEYS = ("seganswer.min_pixels", "seganswer.max_pixels", "seganswer.sam_feature_cache_mb")
# ... and the rules that ask questions (stages 2 and 3, their selection, the evaluation).
SEG_QA_KEYS = (*SEG_SHARED_KEYS, "seganswer.reasoning_prompt")
# Only a FineRS-format source reads this run's frames; the other formats' images come
# with their import.
SEG_READS_FRAMES = {name: spec["format"] == "finers" for name, spec in SEG_SOURCES.items()}
seg_images = lambda selections: (IMAGES_INPUT if any(SEG_READS_FRAMES[seg_source_of(s)] for s in selections) else [])


rule seganswer_all:
    input:
        expand(R("tables/seganswer_{stage}.md"), stage=["stage1", "stage3"]),
        expand(f"{SEG_DATA}/{{source}}/report.md", source=SEG_USED),
        # The sources' validation reports in `snakemake --report` (rule markdown_html); listed
        # here, not in report_tables(), because SEG_USED is defined in this file.
        expand(f"{SEG_DATA}/{{source}}/report.report.html", source=SEG_USED),


rule seganswer_import_source:
    input:
        unpack(seg_source_files),
    output:
        referring=f"{SEG_DATA}/{{source}}/referring.parquet",
        questions=f"{SEG_DATA}/{{source}}/questions.parquet",
        images=directory(f"{SEG_DATA}/{{source}}/images"),
        report=f"{SEG_DATA}/{{source}}/report.json",
        report_md=f"{SEG_DATA}/{{source}}/report.md",
        prov=prov(f"{SEG_DATA}/{{source}}/referring.parquet"),
    log:
        main=f"{SEGANSWER}/logs/import_{{source}}.log",
        report=f"{SEGANSWER}/logs/import_{{source}}.validation_report.json",
    benchmark:
        f"{SEGANSWER}/benchmarks/import_{{source}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("seganswer_import_source"),
        spec=lambda wildcards: cfglib.canonical(SEG_SOURCES[wildcards.source]),
    script:
        script_path("seganswer_import_source")


rule seganswer_stage1_projector:
    input:
        tables=seg_tables(SEG["data"]["stage1_projector"], "referring"),
        images=seg_images(SEG["data"]["stage1_projector"]),
        base=BASE_MANIFEST,
    output:
        checkpoint=directory(f"{SEGANSWER}/stage1_projector/checkpoint"),
        train_log=f"{SEGANSWER}/stage1_projector/train_log.parquet",
        curves=report(
            f"{SEGANSWER}/stage1_projector/curves.png",
            category="training curves",
            labels={"stage": "SegAnswer stage 1a projector", "variant": "main"},
            caption="../report/seganswer_sft_curves.rst",
        ),
        prov=prov(f"{SEGANSWER}/stage1_projector/train_log.parquet"),
    log:
        f"{SEGANSWER}/logs/stage1_projector.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_projector.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads(SEG["stage1"]["projector"]["processes"])
    resources:
        **family_resources("gpu_train"),
    params:
        **stage_params(
            "seganswer_stage1_projector",
            *SEG_SHARED_KEYS,
            "seganswer.stage1.projector",
            "seganswer.data.stage1_projector",
        ),
        roots=seg_roots(SEG["data"]["stage1_projector"]),
        qwen=BASE_QWEN,
        sam2=BASE_SAM2,
        sam2_config=SAM2_CONFIG,
        processes=train_processes(SEG["stage1"]["projector"]["processes"]),
    script:
        script_path("seganswer_stage1_projector")


rule seganswer_stage1_lora:
    input:
        tables=seg_tables(SEG["data"]["stage1_lora"], "referring"),
        images=seg_images(SEG["data"]["stage1_lora"]),
        phase_a_record=prov(f"{SEGANSWER}/stage1_projector/train_log.parquet"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage1_lora/checkpoint"),
        candidates=directory(f"{SEGANSWER}/stage1_lora/candidates"),
        train_log=f"{SEGANSWER}/stage1_lora/train_log.parquet",
        curves=report(
            f"{SEGANSWER}/stage1_lora/curves.png",
            category="training curves",
            labels={"stage": "SegAnswer stage 1b LoRA", "variant": "main"},
            caption="../report/seganswer_sft_curves.rst",
        ),
        prov=prov(f"{SEGANSWER}/stage1_lora/train_log.parquet"),
    log:
        f"{SEGANSWER}/logs/stage1_lora.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_lora.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads(SEG["stage1"]["lora"]["processes"])
    resources:
        **family_resources("gpu_train"),
    params:
        **stage_params("seganswer_stage1_lora", *SEG_SHARED_KEYS, "seganswer.stage1.lora", "seganswer.data.stage1_lora"),
        roots=seg_roots(SEG["data"]["stage1_lora"]),
        phase_a=folder_from_record("phase_a_record", "checkpoint"),
        processes=train_processes(SEG["stage1"]["lora"]["processes"]),
    script:
        script_path("seganswer_stage1_lora")


rule seganswer_stage1_select:
    input:
        tables=seg_tables(SEG["selection"]["referring_data"], "referring"),
        images=seg_images(SEG["selection"]["referring_data"]),
        train_record=prov(f"{SEGANSWER}/stage1_lora/train_log.parquet"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage1_select/checkpoint"),
        selection=f"{SEGANSWER}/stage1_select/selection.json",
        prov=prov(f"{SEGANSWER}/stage1_select/selection.json"),
    log:
        f"{SEGANSWER}/logs/stage1_select.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_select.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **stage_params(
            "seganswer_stage1_select",
            *SEG_SHARED_KEYS,
            "seganswer.selection.stage1",
            "seganswer.selection.referring_data",
            "seganswer.selection.limit",
            *SEG_EVAL_RUNTIME,
        ),
        roots=seg_roots(SEG["selection"]["referring_data"]),
        candidates=folder_from_record("train_record", "candidates"),
    script:
        script_path("seganswer_stage1_select")


rule seganswer_stage1_merge:
    input:
        # the LoRA candidate the stage-1 selection chose on val
        unmerged_record=prov(f"{SEGANSWER}/stage1_select/selection.json"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage1/checkpoint"),
        prov=prov(f"{SEGANSWER}/stage1/checkpoint"),
    log:
        f"{SEGANSWER}/logs/stage1_merge.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_merge.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        # the whole language model sits in memory: the inference family's memory, not the CPU rules'
        **family_resources("gpu_infer"),
    params:
        **stage_params("seganswer_stage1_merge", "seganswer.stage1.lora"),
        unmerged=folder_from_record("unmerged_record", "checkpoint"),
    script:
        script_path("seganswer_stage1_merge")


rule seganswer_stage2_sft:
    input:
        tables=seg_tables(SEG["data"]["stage2"], "questions"),
        images=seg_images(SEG["data"]["stage2"]),
        stage1_record=prov(f"{SEGANSWER}/stage1/checkpoint"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage2/checkpoint"),
        candidates=directory(f"{SEGANSWER}/stage2/candidates"),
        train_log=f"{SEGANSWER}/stage2/train_log.parquet",
        curves=report(
            f"{SEGANSWER}/stage2/curves.png",
            category="training curves",
            labels={"stage": "SegAnswer stage 2 SFT", "variant": "main"},
            caption="../report/seganswer_sft_curves.rst",
        ),
        prov=prov(f"{SEGANSWER}/stage2/train_log.parquet"),
    log:
        f"{SEGANSWER}/logs/stage2.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage2.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads(SEG["stage2"]["processes"])
    resources:
        **family_resources("gpu_train"),
    params:
        **stage_params("seganswer_stage2_sft", *SEG_QA_KEYS, "seganswer.stage2", "seganswer.data.stage2"),
        roots=seg_roots(SEG["data"]["stage2"]),
        stage1=folder_from_record("stage1_record", "checkpoint"),
        processes=train_processes(SEG["stage2"]["processes"]),
    script:
        script_path("seganswer_stage2_sft")


rule seganswer_stage2_select:
    input:
        tables=seg_tables(SEG["selection"]["data"], "questions"),
        images=seg_images(SEG["selection"]["data"]),
        train_record=prov(f"{SEGANSWER}/stage2/train_log.parquet"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage2_select/checkpoint"),
        selection=f"{SEGANSWER}/stage2_select/selection.json",
        prov=prov(f"{SEGANSWER}/stage2_select/selection.json"),
    log:
        f"{SEGANSWER}/logs/stage2_select.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage2_select.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **stage_params(
            "seganswer_stage2_select", *SEG_QA_KEYS, "seganswer.selection.stage2", *SEG_QA_SELECTION, *SEG_EVAL_RUNTIME
        ),
        roots=seg_roots(SEG["selection"]["data"]),
        candidates=folder_from_record("train_record", "candidates"),
    script:
        script_path("seganswer_stage2_select")


rule seganswer_stage3_dapo:
    input:
        tables=seg_tables(SEG["data"]["stage3"], "questions"),
        images=seg_images(SEG["data"]["stage3"]),
        # the stage-2 candidate the stage-2 selection chose on val
        stage2_record=prov(f"{SEGANSWER}/stage2_select/selection.json"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage3/checkpoint"),
        candidates=directory(f"{SEGANSWER}/stage3/candidates"),
        train_log=f"{SEGANSWER}/stage3/train_log.parquet",
        curves=report(
            f"{SEGANSWER}/stage3/curves.png",
            category="training curves",
            labels={"stage": "SegAnswer stage 3", "variant": "main"},
            caption="../report/curves.rst",
        ),
        prov=prov(f"{SEGANSWER}/stage3/train_log.parquet"),
    log:
        f"{SEGANSWER}/logs/stage3.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage3.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads(SEG["stage3"]["settings"]["processes"])
    resources:
        **family_resources("gpu_train"),
    params:
        **stage_params("seganswer_stage3_dapo", *SEG_QA_KEYS, "seganswer.stage3", "seganswer.data.stage3"),
        roots=seg_roots(SEG["data"]["stage3"]),
        stage2=folder_from_record("stage2_record", "checkpoint"),
        processes=train_processes(SEG["stage3"]["settings"]["processes"]),
    script:
        script_path("seganswer_stage3_dapo")


rule seganswer_stage3_select:
    input:
        tables=seg_tables(SEG["selection"]["data"], "questions"),
        images=seg_images(SEG["selection"]["data"]),
        train_record=prov(f"{SEGANSWER}/stage3/train_log.parquet"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage3_select/checkpoint"),
        selection=f"{SEGANSWER}/stage3_select/selection.json",
        prov=prov(f"{SEGANSWER}/stage3_select/selection.json"),
    log:
        f"{SEGANSWER}/logs/stage3_select.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage3_select.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **stage_params(
            "seganswer_stage3_select", *SEG_QA_KEYS, "seganswer.selection.stage3", *SEG_QA_SELECTION, *SEG_EVAL_RUNTIME
        ),
        roots=seg_roots(SEG["selection"]["data"]),
        candidates=folder_from_record("train_record", "candidates"),
    script:
        script_path("seganswer_stage3_select")


rule evaluate_seganswer:
    input:
        referring=seg_tables(SEG_EVAL_REF, "referring"),
        questions=seg_tables(SEG_EVAL_QA, "questions"),
        images=seg_images(SEG_EVAL_REF + SEG_EVAL_QA),
        model_record=get_seganswer_model_record,
    output:
        metrics=f"{SEGANSWER}/metrics/{{checkpoint}}.json",
        prov=prov(f"{SEGANSWER}/metrics/{{checkpoint}}.json"),
    log:
        f"{SEGANSWER}/logs/evaluate_{{checkpoint}}.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/evaluate_{{checkpoint}}.tsv"
    wildcard_constraints:
        checkpoint="base|stage1|stage2|stage3",
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        # the base checkpoint's projector is drawn with phase a's seed
        **stage_params("evaluate_seganswer", *SEG_QA_KEYS, "seganswer.eval", "seganswer.stage1.projector"),
        referring_roots=seg_roots(SEG_EVAL_REF),
        question_roots=seg_roots(SEG_EVAL_QA),
        model=lambda wildcards: SEG_MODELS[wildcards.checkpoint],
    script:
        script_path("evaluate_seganswer")


rule seganswer_table:
    input:
        # the metrics of every checkpoint up to the table's stage, named metrics_<checkpoint>
        unpack(get_seganswer_table_metrics),
    output:
        table=R("tables/seganswer_{stage}.parquet"),
        table_md=R("tables/seganswer_{stage}.md"),
        prov=prov(R("tables/seganswer_{stage}.parquet")),
    log:
        f"{SEGANSWER}/logs/table_{{stage}}.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/table_{{stage}}.tsv"
    wildcard_constraints:
        stage="stage1|stage2|stage3",
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("seganswer_table"),
    script:
        script_path("seganswer_table")
