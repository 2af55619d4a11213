# SegAnswer: each data source imported into normalised tables (with a validation
# report), stage 1 pixel grounding (projector, then LoRA, then merge), stage 2
# interleaved SFT, stage 3 multi-turn DAPO, evaluation tables.

SEGANSWER = R("seganswer")
# FineRS-format sources read this run's frames (or the released images).
FINERS_IMAGES = os.path.dirname(FRAMES_MANIFEST) if IMAGES_INPUT else DATA["images_dir"]
for _kind in ("referring", "questions"):
    _labels = [b["label"] for b in SEG["eval"][_kind]]
    if len(set(_labels)) != len(_labels):
        raise cfglib.ConfigError(f"config key 'seganswer.eval.{_kind}': duplicate labels {_labels}")
SEG_EVAL_REF = [b["data"] for b in SEG["eval"]["referring"]]
SEG_EVAL_QA = [b["data"] for b in SEG["eval"]["questions"]]
# Only the sources some stage or benchmark reads are imported (a --configfile cannot
# remove the default's entries from the merged `sources` map).
SEG_USED = sorted({seg_source_of(s) for sel in [*SEG["data"].values(), SEG_EVAL_REF, SEG_EVAL_QA] for s in sel})


rule seganswer_all:
    input:
        expand(R("tables/seganswer_{stage}.md"), stage=["stage1", "stage3"]),
        expand(f"{SEG_DATA}/{{source}}/report.md", source=SEG_USED),


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
    params:
        **stage_params("seganswer_import_source"),
        spec=lambda wildcards: cfglib.canonical(SEG_SOURCES[wildcards.source]),
    log:
        main=f"{SEGANSWER}/logs/import_{{source}}.log",
        report=f"{SEGANSWER}/logs/import_{{source}}.validation_report.json",
    benchmark:
        f"{SEGANSWER}/benchmarks/import_{{source}}.tsv"
    resources:
        **family_resources("cpu_data"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_import_source")


rule seganswer_stage1_projector:
    input:
        tables=seg_tables(SEG["data"]["stage1_projector"], "referring"),
        images=IMAGES_INPUT,
        base=BASE_MANIFEST,
    output:
        model=directory(f"{SEGANSWER}/stage1_projector"),
        train_log=f"{SEGANSWER}/stage1_projector.log.parquet",
        prov=prov(f"{SEGANSWER}/stage1_projector.log.parquet"),
    params:
        **stage_params("seganswer_stage1_projector", "seganswer.image_size", "seganswer.stage1.projector",
                       "seganswer.data.stage1_projector"),
        roots=seg_roots(SEG["data"]["stage1_projector"]),
        qwen=BASE_QWEN,
        sam2=BASE_SAM2,
        sam2_config=SAM2_CONFIG,
    log:
        f"{SEGANSWER}/logs/stage1_projector.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_projector.tsv"
    resources:
        **family_resources("gpu_train"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_stage1_projector")


rule seganswer_stage1_lora:
    input:
        tables=seg_tables(SEG["data"]["stage1_lora"], "referring"),
        images=IMAGES_INPUT,
        phase_a_record=prov(f"{SEGANSWER}/stage1_projector.log.parquet"),
    output:
        model=directory(f"{SEGANSWER}/stage1_lora"),
        train_log=f"{SEGANSWER}/stage1_lora.log.parquet",
        prov=prov(f"{SEGANSWER}/stage1_lora.log.parquet"),
    params:
        **stage_params("seganswer_stage1_lora", "seganswer.image_size", "seganswer.stage1.lora",
                       "seganswer.data.stage1_lora"),
        roots=seg_roots(SEG["data"]["stage1_lora"]),
        phase_a=folder_from_record("phase_a_record", suffix=".log.parquet.prov.json"),
    log:
        f"{SEGANSWER}/logs/stage1_lora.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_lora.tsv"
    resources:
        **family_resources("gpu_train"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_stage1_lora")


rule seganswer_stage1_merge:
    input:
        unmerged_record=prov(f"{SEGANSWER}/stage1_lora.log.parquet"),
    output:
        model=directory(f"{SEGANSWER}/stage1"),
        prov=f"{SEGANSWER}/stage1.prov.json",
    params:
        **stage_params("seganswer_stage1_merge", "seganswer.stage1.lora"),
        unmerged=folder_from_record("unmerged_record", suffix=".log.parquet.prov.json"),
    log:
        f"{SEGANSWER}/logs/stage1_merge.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage1_merge.tsv"
    resources:
        # the whole language model sits in memory: the inference family's memory, not the CPU rules'
        **family_resources("gpu_infer"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_stage1_merge")


rule seganswer_stage2_sft:
    input:
        tables=seg_tables(SEG["data"]["stage2"], "questions"),
        images=IMAGES_INPUT,
        stage1_record=f"{SEGANSWER}/stage1.prov.json",
    output:
        model=directory(f"{SEGANSWER}/stage2"),
        train_log=f"{SEGANSWER}/stage2.log.parquet",
        prov=prov(f"{SEGANSWER}/stage2.log.parquet"),
    params:
        **stage_params("seganswer_stage2_sft", "seganswer.image_size", "seganswer.stage2", "seganswer.data.stage2"),
        roots=seg_roots(SEG["data"]["stage2"]),
        stage1=folder_from_record("stage1_record", suffix=".prov.json"),
    log:
        f"{SEGANSWER}/logs/stage2.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage2.tsv"
    resources:
        **family_resources("gpu_train"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_stage2_sft")


rule seganswer_stage3_dapo:
    input:
        tables=seg_tables(SEG["data"]["stage3"], "questions"),
        images=IMAGES_INPUT,
        stage2_record=prov(f"{SEGANSWER}/stage2.log.parquet"),
    output:
        checkpoint=directory(f"{SEGANSWER}/stage3/checkpoint"),
        train_log=f"{SEGANSWER}/stage3/train_log.parquet",
        curves=report(f"{SEGANSWER}/stage3/curves.png", category="training curves",
                      labels={"stage": "SegAnswer stage 3", "variant": "main"}, caption="../report/curves.rst"),
        prov=prov(f"{SEGANSWER}/stage3/train_log.parquet"),
    params:
        **stage_params("seganswer_stage3_dapo", "seganswer.image_size", "seganswer.stage3", "seganswer.data.stage3"),
        roots=seg_roots(SEG["data"]["stage3"]),
        stage2=folder_from_record("stage2_record", suffix=".log.parquet.prov.json"),
        run_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
    log:
        f"{SEGANSWER}/logs/stage3.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/stage3.tsv"
    resources:
        **family_resources("gpu_train"),
    conda:
        CONDA_ENV
    script:
        script_path("seganswer_stage3_dapo")


rule evaluate_seganswer:
    input:
        referring=seg_tables(SEG_EVAL_REF, "referring"),
        questions=seg_tables(SEG_EVAL_QA, "questions"),
        images=IMAGES_INPUT,
        model_record=lambda wildcards: (
            f"{SEGANSWER}/stage1.prov.json" if wildcards.stage == "stage1"
            else prov(f"{SEGANSWER}/stage3/train_log.parquet")
        ),
    output:
        metrics=f"{SEGANSWER}/metrics/{{stage}}.json",
        table=R("tables/seganswer_{stage}.parquet"),
        table_md=R("tables/seganswer_{stage}.md"),
        prov=prov(f"{SEGANSWER}/metrics/{{stage}}.json"),
    wildcard_constraints:
        stage="stage1|stage3",
    params:
        **stage_params("evaluate_seganswer", "seganswer.image_size", "seganswer.eval"),
        referring_roots=seg_roots(SEG_EVAL_REF),
        question_roots=seg_roots(SEG_EVAL_QA),
        model=lambda wildcards, input: (
            input.model_record[: -len(".prov.json")] if wildcards.stage == "stage1"
            else os.path.join(os.path.dirname(input.model_record), "checkpoint")
        ),
    log:
        f"{SEGANSWER}/logs/evaluate_{{stage}}.log",
    benchmark:
        f"{SEGANSWER}/benchmarks/evaluate_{{stage}}.tsv"
    resources:
        **family_resources("gpu_infer"),
    conda:
        CONDA_ENV
    script:
        script_path("evaluate_seganswer")
