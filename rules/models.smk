# Base models: the tiny bundle built offline (embedded default), or the user's local
# Qwen2.5-VL-7B and SAM 2.1 weights, checked and checksummed.


rule models_all:
    input:
        BASE_MANIFEST,


if MODELS["source"] == "tiny":

    rule build_tiny_models:
        input:
            train=R("splits/train.parquet"),
        output:
            bundle=directory(R("models/base")),
            manifest=BASE_MANIFEST,
            prov=prov(BASE_MANIFEST),
        log:
            R("logs/build_tiny_models.log"),
        benchmark:
            R("benchmarks/build_tiny_models.tsv")
        conda:
            CONDA_ENV
        resources:
            **family_resources("cpu_data"),
        params:
            **stage_params("build_tiny_models", "models.tiny"),
        script:
            script_path("build_tiny_models")

else:

    rule check_local_models:
        output:
            manifest=BASE_MANIFEST,
            prov=prov(BASE_MANIFEST),
        log:
            R("logs/check_local_models.log"),
        benchmark:
            R("benchmarks/check_local_models.tsv")
        conda:
            CONDA_ENV
        resources:
            **family_resources("cpu_data"),
        params:
            **stage_params("check_local_models", "models.local"),
        script:
            script_path("check_local_models")
