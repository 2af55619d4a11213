# Data stages: synthetic videos (embedded default), frame extraction, annotation
# import and validation, splits and dataset statistics.

SOURCE = DATA["source"]

if SOURCE == "synthetic":
    VIDEOS = [f"video_{i:03d}" for i in range(DATA["synthetic"]["n_videos"])]
    VIDEO_DIR = R("synthetic/videos")
    ANNOTATIONS_JSON = R("synthetic/annotations.json")
elif SOURCE == "videos":
    VIDEO_DIR = DATA["videos_dir"]
    VIDEOS = sorted(glob_wildcards(f"{VIDEO_DIR}/{{video}}.mp4").video)
    if not VIDEOS:
        raise ValueError(f"config key 'data.videos_dir': no .mp4 video in {VIDEO_DIR}")
    ANNOTATIONS_JSON = DATA["annotations_json"]
else:
    VIDEOS = []
    ANNOTATIONS_JSON = DATA["annotations_json"]

# FineRS-4k as released: {train: path, test: path}, listed in this order, and the test
# file is the test split; or one JSON, split by data.splits.
if isinstance(ANNOTATIONS_JSON, dict):
    RELEASE_SPLITS = ["train", "test"]
    ANNOTATION_FILES = [ANNOTATIONS_JSON[split] for split in RELEASE_SPLITS]
    if DATA["splits"]["official"]:
        raise ValueError(
            "config keys 'data.splits.official' and 'data.annotations_json' ({train, test}) both define "
            "the splits: set one"
        )
else:
    RELEASE_SPLITS = []
    ANNOTATION_FILES = [ANNOTATIONS_JSON]


rule data_all:
    input:
        expand(R("splits/{split}.parquet"), split=SPLITS),
        R("splits/stats.md"),


rule synthesize_dataset:
    output:
        videos=expand(R("synthetic/videos/{video}.mp4"), video=VIDEOS),
        annotations=R("synthetic/annotations.json"),
        prov=prov(R("synthetic/annotations.json")),
    log:
        R("logs/synthesize_dataset.log"),
    benchmark:
        R("benchmarks/synthesize_dataset.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("synthesize_dataset", "data.synthetic", "data.frames"),
        videos_dir=lambda wildcards, output: os.path.dirname(output.videos[0]),
    script:
        script_path("synthesize_dataset")


# Frames are extracted only when the data comes as videos.
if SOURCE != "images":

    rule extract_frames:
        input:
            video=f"{VIDEO_DIR}/{{video}}.mp4",
        output:
            frames=directory(R("frames/{video}")),
            manifest=R("frames/{video}.manifest.parquet"),
            report=R("frames/{video}.report.json"),
            prov=prov(R("frames/{video}.manifest.parquet")),
        log:
            main=R("logs/extract_frames/{video}.log"),
            report=R("logs/extract_frames/{video}.report.json"),
        benchmark:
            R("benchmarks/extract_frames/{video}.tsv")
        conda:
            CONDA_ENV
        resources:
            **family_resources("cpu_data"),
        params:
            **stage_params("extract_frames", "data.frames"),
        script:
            script_path("extract_frames")

    rule merge_frame_manifests:
        input:
            manifests=expand(R("frames/{video}.manifest.parquet"), video=VIDEOS),
        output:
            manifest=FRAMES_MANIFEST,
            prov=prov(FRAMES_MANIFEST),
        log:
            R("logs/merge_frame_manifests.log"),
        benchmark:
            R("benchmarks/merge_frame_manifests.tsv")
        conda:
            CONDA_ENV
        resources:
            **family_resources("cpu_data"),
        params:
            **stage_params("merge_frame_manifests"),
        script:
            script_path("merge_frame_manifests")


rule import_annotations:
    input:
        annotations=ANNOTATION_FILES,
        manifest=FRAMES_MANIFEST if SOURCE != "images" else [],
    output:
        table=R("annotations/annotations.parquet"),
        report=R("annotations/validation_report.json"),
        report_md=R("annotations/validation_report.md"),
        prov=prov(R("annotations/annotations.parquet")),
    log:
        main=R("logs/import_annotations.log"),
        report=R("logs/import_annotations.validation_report.json"),
    benchmark:
        R("benchmarks/import_annotations.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("import_annotations", "data.annotations", "data.source", "data.images_dir"),
        # Which file of input.annotations is which ([] for one file).
        release_splits=RELEASE_SPLITS,
    script:
        script_path("import_annotations")


rule make_splits:
    input:
        annotations=R("annotations/annotations.parquet"),
        official=DATA["splits"]["official"] or [],
    output:
        **{split: R(f"splits/{split}.parquet") for split in SPLITS},
        stats=R("splits/stats.parquet"),
        stats_md=R("splits/stats.md"),
        plot=report(R("splits/mask_sizes.png"), category="splits", caption="../report/mask_sizes.rst"),
        prov=prov(R("splits/stats.parquet")),
    log:
        R("logs/make_splits.log"),
    benchmark:
        R("benchmarks/make_splits.tsv")
    conda:
        CONDA_ENV
    resources:
        **family_resources("cpu_data"),
    params:
        **stage_params("make_splits", "data.splits"),
    script:
        script_path("make_splits")
