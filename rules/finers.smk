# FineRS: LPR (GRPO) -> retrospective regions -> GSE (GRPO) -> two-stage inference with
# SAM2 -> metrics and the paper's tables. Paths carry variant keys (rules/common.smk).

# That chain (with the policy warm-up) is the default DAG's longest path: its jobs take
# priority CRITICAL_PATH (rules/common.smk).


wildcard_constraints:
    warmup="[a-z0-9-]+",
    untrained="[a-z0-9-]+",
    lpr="[a-z0-9-]+",
    lpr_select="[a-z0-9-]+",
    gse_select="[a-z0-9-]+",
    regions="[a-z0-9-]+",
    gse="[a-z0-9-]+",
    infer="[a-z0-9-]+",
    split="train|val|test",
    shard=r"\d+-of-\d+",


rule finers_all:
    input:
        [finers_tables(exp) for exp in EXPERIMENTS],
        R("tables/finers_experiments.md"),


rule warmup_policy:
    input:
        train=R("splits/train.parquet"),
        val=R("splits/val.parquet"),
        images=IMAGES_INPUT,
        base=BASE_MANIFEST,
    output:
        checkpoint=directory(f"{FINERS}/warmup/{{warmup}}/checkpoint"),
        train_log=f"{FINERS}/warmup/{{warmup}}/train_log.parquet",
        curves=report(
            f"{FINERS}/warmup/{{warmup}}/curves.png",
            category="training curves",
            labels={"stage": "FineRS format warm-up", "variant": "{warmup}"},
            caption="../report/sft_curves.rst",
        ),
        prov=prov(f"{FINERS}/warmup/{{warmup}}/train_log.parquet"),
    log:
        f"{FINERS}/logs/warmup_policy/{{warmup}}.log",
    benchmark:
        f"{FINERS}/benchmarks/warmup_policy/{{warmup}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads()
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params("warmup", "warmup_policy", *WARMUP_KEYS),
        images_root=images_root,
        policy=BASE_QWEN,
        processes=train_processes(),
    script:
        script_path("warmup_policy")


rule warmup_sam2:
    input:
        train=R("splits/train.parquet"),
        val=R("splits/val.parquet"),
        images=IMAGES_INPUT,
        base=BASE_MANIFEST,
    output:
        sam2=directory(f"{FINERS}/warmup/{{warmup}}/sam2"),
        train_log=f"{FINERS}/warmup/{{warmup}}/sam2_log.parquet",
        curves=report(
            f"{FINERS}/warmup/{{warmup}}/sam2_curves.png",
            category="training curves",
            labels={"stage": "SAM 2.1 warm-up", "variant": "{warmup}"},
            caption="../report/sft_curves.rst",
        ),
        prov=prov(f"{FINERS}/warmup/{{warmup}}/sam2_log.parquet"),
    log:
        f"{FINERS}/logs/warmup_sam2/{{warmup}}.log",
    benchmark:
        f"{FINERS}/benchmarks/warmup_sam2/{{warmup}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params("warmup", "warmup_sam2", *WARMUP_KEYS),
        images_root=images_root,
        sam2=BASE_SAM2,
    script:
        script_path("warmup_sam2")


rule train_lpr:
    input:
        train=R("splits/train.parquet"),
        images=IMAGES_INPUT,
        start=warmup_record("lpr", "train_log.parquet"),
    output:
        checkpoint=directory(f"{FINERS}/lpr/{{lpr}}/checkpoint"),
        candidates=directory(f"{FINERS}/lpr/{{lpr}}/candidates"),
        train_log=f"{FINERS}/lpr/{{lpr}}/train_log.parquet",
        curves=report(
            f"{FINERS}/lpr/{{lpr}}/curves.png",
            category="training curves",
            labels={"stage": "FineRS LPR", "variant": "{lpr}"},
            caption="../report/curves.rst",
        ),
        prov=prov(f"{FINERS}/lpr/{{lpr}}/train_log.parquet"),
    log:
        f"{FINERS}/logs/train_lpr/{{lpr}}.log",
    benchmark:
        f"{FINERS}/benchmarks/train_lpr/{{lpr}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads()
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params(
            "lpr",
            "train_lpr",
            "finers.lpr",
            "finers.lpr_crop",
            "finers.reward_profile",
            "finers.prompts.lpr",
            "finers.prompts.look",
            options=drseg_option("lpr"),
        ),
        images_root=images_root,
        policy=folder_from_record("start", "checkpoint", base=BASE_QWEN),
        processes=train_processes(),
    script:
        script_path("train_lpr")


rule select_lpr:
    input:
        val=R("splits/val.parquet"),
        images=IMAGES_INPUT,
        train_record=get_train_record("lpr", "lpr_select"),
    output:
        checkpoint=directory(f"{FINERS}/lpr_select/{{lpr_select}}/checkpoint"),
        selection=f"{FINERS}/lpr_select/{{lpr_select}}/selection.json",
        prov=prov(f"{FINERS}/lpr_select/{{lpr_select}}/selection.json"),
    log:
        f"{FINERS}/logs/select_lpr/{{lpr_select}}.log",
    benchmark:
        f"{FINERS}/benchmarks/select_lpr/{{lpr_select}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "lpr_select",
            "select_lpr",
            "finers.selection.lpr",
            *SELECTION_KEYS,
            "finers.lpr",
            "finers.lpr_crop",
            "finers.gse_size",
            "finers.region_size",
            "finers.reward_profile",
            "finers.prompts.lpr",
            "finers.prompts.look",
        ),
        stage="lpr",
        images_root=images_root,
        candidates=folder_from_record("train_record", "candidates"),
    script:
        script_path("select_lpr")


rule retrospective_regions:
    input:
        train=R("splits/train.parquet"),
        images=IMAGES_INPUT,
        lpr_record=get_search_policy_record,
    output:
        shard=f"{FINERS}/regions/{{regions}}/shard-{{shard}}.parquet",
        prov=prov(f"{FINERS}/regions/{{regions}}/shard-{{shard}}.parquet"),
    log:
        f"{FINERS}/logs/retrospective_regions/{{regions}}-{{shard}}.log",
    benchmark:
        f"{FINERS}/benchmarks/retrospective_regions/{{regions}}-{{shard}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "regions",
            "retrospective_regions",
            "finers.regions",
            "finers.gse_size",
            "finers.lpr_crop",
            "finers.prompts.lpr",
            "finers.prompts.look",
            "finers.lpr.gt_points",
            "finers.lpr.drseg",
        ),
        images_root=images_root,
        lpr=folder_from_record("lpr_record", "checkpoint"),
    script:
        script_path("retrospective_regions")


rule merge_region_shards:
    input:
        shards=get_region_shards,
    output:
        regions=f"{FINERS}/regions/{{regions}}/regions.parquet",
        prov=prov(f"{FINERS}/regions/{{regions}}/regions.parquet"),
    log:
        f"{FINERS}/logs/merge_region_shards/{{regions}}.log",
    benchmark:
        f"{FINERS}/benchmarks/merge_region_shards/{{regions}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("merge_region_shards"),
    script:
        script_path("merge_region_shards")


rule train_gse:
    input:
        train=R("splits/train.parquet"),
        images=IMAGES_INPUT,
        start=warmup_record("gse", "train_log.parquet"),
        regions=get_regions,
    output:
        checkpoint=directory(f"{FINERS}/gse/{{gse}}/checkpoint"),
        candidates=directory(f"{FINERS}/gse/{{gse}}/candidates"),
        train_log=f"{FINERS}/gse/{{gse}}/train_log.parquet",
        curves=report(
            f"{FINERS}/gse/{{gse}}/curves.png",
            category="training curves",
            labels={"stage": "FineRS GSE", "variant": "{gse}"},
            caption="../report/curves.rst",
        ),
        prov=prov(f"{FINERS}/gse/{{gse}}/train_log.parquet"),
    log:
        f"{FINERS}/logs/train_gse/{{gse}}.log",
    benchmark:
        f"{FINERS}/benchmarks/train_gse/{{gse}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    threads: train_threads()
    resources:
        **family_resources("gpu_train"),
    params:
        **exp_params(
            "gse",
            "train_gse",
            "finers.gse",
            "finers.gse_size",
            "finers.region_size",
            "finers.reward_profile",
            "finers.prompts.gse",
            "finers.prompts.look",
            options=drseg_option("gse"),
        ),
        images_root=images_root,
        policy=folder_from_record("start", "checkpoint", base=BASE_QWEN),
        processes=train_processes(),
    script:
        script_path("train_gse")


rule select_gse:
    input:
        val=R("splits/val.parquet"),
        images=IMAGES_INPUT,
        train_record=get_train_record("gse", "gse_select"),
    output:
        checkpoint=directory(f"{FINERS}/gse_select/{{gse_select}}/checkpoint"),
        selection=f"{FINERS}/gse_select/{{gse_select}}/selection.json",
        prov=prov(f"{FINERS}/gse_select/{{gse_select}}/selection.json"),
    log:
        f"{FINERS}/logs/select_gse/{{gse_select}}.log",
    benchmark:
        f"{FINERS}/benchmarks/select_gse/{{gse_select}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "gse_select",
            "select_gse",
            "finers.selection.gse",
            *SELECTION_KEYS,
            "finers.gse",
            "finers.lpr_crop",
            "finers.gse_size",
            "finers.region_size",
            "finers.reward_profile",
            "finers.prompts.gse",
            "finers.prompts.look",
        ),
        stage="gse",
        images_root=images_root,
        candidates=folder_from_record("train_record", "candidates"),
    script:
        script_path("select_gse")


rule infer_finers:
    input:
        split=R("splits/{split}.parquet"),
        images=IMAGES_INPUT,
        base=BASE_MANIFEST,
        gse_record=get_selection_record("gse", "infer"),
        lpr_record=get_selection_record("lpr", "infer"),
        sam2=warmup_record("infer", "sam2_log.parquet"),
    output:
        shard=f"{FINERS}/predictions/{{infer}}/{{split}}/shard-{{shard}}.parquet",
        prov=prov(f"{FINERS}/predictions/{{infer}}/{{split}}/shard-{{shard}}.parquet"),
    log:
        f"{FINERS}/logs/infer_finers/{{infer}}/{{split}}-{{shard}}.log",
    benchmark:
        f"{FINERS}/benchmarks/infer_finers/{{infer}}/{{split}}-{{shard}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "infer",
            "infer_finers",
            "finers.inference",
            "finers.reward_profile",
            "finers.gse_size",
            "finers.lpr_crop",
            "finers.region_size",
            "finers.prompts",
            "finers.lpr.gt_points",
            "finers.lpr.drseg",
            "finers.gse.drseg",
        ),
        images_root=images_root,
        gse=folder_from_record("gse_record", "checkpoint"),
        lpr=folder_from_record("lpr_record", "checkpoint"),
        sam2=folder_from_record("sam2", "sam2", base=BASE_SAM2),
        sam2_config=SAM2_CONFIG,
    script:
        script_path("infer_finers")


rule infer_finers_untrained:
    input:
        split=R("splits/{split}.parquet"),
        images=IMAGES_INPUT,
        base=BASE_MANIFEST,
        start=warmup_record("untrained", "train_log.parquet"),
        sam2=warmup_record("untrained", "sam2_log.parquet"),
    output:
        shard=f"{FINERS}/untrained/predictions/{{untrained}}/{{split}}/shard-{{shard}}.parquet",
        prov=prov(f"{FINERS}/untrained/predictions/{{untrained}}/{{split}}/shard-{{shard}}.parquet"),
    log:
        f"{FINERS}/logs/infer_finers_untrained/{{untrained}}/{{split}}-{{shard}}.log",
    benchmark:
        f"{FINERS}/benchmarks/infer_finers_untrained/{{untrained}}/{{split}}-{{shard}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("gpu_infer"),
    params:
        **exp_params(
            "untrained",
            "infer_finers_untrained",
            "finers.inference",
            "finers.reward_profile",
            "finers.gse_size",
            "finers.lpr_crop",
            "finers.region_size",
            "finers.prompts",
            "finers.lpr.gt_points",
        ),
        images_root=images_root,
        policy=folder_from_record("start", "checkpoint", base=BASE_QWEN),
        sam2=folder_from_record("sam2", "sam2", base=BASE_SAM2),
        sam2_config=SAM2_CONFIG,
    script:
        script_path("infer_finers_untrained")


rule evaluate_finers_untrained:
    input:
        shards=get_prediction_shards("untrained"),
    output:
        predictions=f"{FINERS}/untrained/predictions/{{untrained}}/{{split}}.parquet",
        metrics=f"{FINERS}/untrained/metrics/{{untrained}}/{{split}}.json",
        prov=prov(f"{FINERS}/untrained/metrics/{{untrained}}/{{split}}.json"),
    log:
        f"{FINERS}/logs/evaluate_finers_untrained/{{untrained}}/{{split}}.log",
    benchmark:
        f"{FINERS}/benchmarks/evaluate_finers_untrained/{{untrained}}/{{split}}.tsv"
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **exp_params("untrained", "evaluate_finers_untrained", "finers.reward_profile"),
    script:
        script_path("evaluate_finers_untrained")


rule evaluate_finers:
    input:
        shards=get_prediction_shards("infer"),
        untrained=get_untrained_metrics,
    output:
        predictions=f"{FINERS}/predictions/{{infer}}/{{split}}.parquet",
        metrics=f"{FINERS}/metrics/{{infer}}/{{split}}.json",
        table=R("tables/finers_{infer}_{split}.parquet"),
        table_md=R("tables/finers_{infer}_{split}.md"),
        prov=prov(f"{FINERS}/metrics/{{infer}}/{{split}}.json"),
    log:
        f"{FINERS}/logs/evaluate_finers/{{infer}}/{{split}}.log",
    benchmark:
        f"{FINERS}/benchmarks/evaluate_finers/{{infer}}/{{split}}.tsv"
    priority: CRITICAL_PATH
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **exp_params("infer", "evaluate_finers", "finers.reward_profile"),
    script:
        script_path("evaluate_finers")


rule finers_experiment_table:
    input:
        metrics=[
            f"{FINERS}/metrics/{VARIANT['infer'][exp]}/{split}.json"
            for exp in EXPERIMENTS
            for split in EXPERIMENTS[exp]["finers"]["inference"]["splits"]
        ],
    output:
        table=R("tables/finers_experiments.parquet"),
        table_md=R("tables/finers_experiments.md"),
        prov=prov(R("tables/finers_experiments.parquet")),
    log:
        R("logs/finers_experiment_table.log"),
    benchmark:
        R("benchmarks/finers_experiment_table.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("finers_experiment_table", "experiments"),
        experiments=lambda wildcards: {
            exp: {
                split: f"{FINERS}/metrics/{VARIANT['infer'][exp]}/{split}.json"
                for split in EXPERIMENTS[exp]["finers"]["inference"]["splits"]
            }
            for exp in EXPERIMENTS
        },
    script:
        script_path("finers_experiment_table")
