# Config access, validation, path helpers and per-stage params.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from reproseg import config as cfglib
from reproseg import fingerprint as fp

_resolved = cfglib.resolve(config, [cfglib.typed_command_line(dict(workflow.config_settings.config))])
cfglib.validate(_resolved, cfglib.load_yaml(Path(workflow.basedir) / "config" / "schema.yaml"))
config.clear()
config.update(_resolved)

RESULTS = config["results"]
# The pinned environment as a conda file, for --software-deployment-method conda; by
# default jobs run in the venv that scripts/bootstrap.sh builds from the same pins.
CONDA_ENV = "../envs/conda.yaml"
DATA = config["data"]
MODELS = config["models"]
SEG = config["seganswer"]


def R(path):
    """A path under the results folder."""
    return f"{RESULTS}/{path}"


def prov(path):
    """The provenance record written beside an output."""
    return f"{path}.prov.json"


# ---- Paths every rules file uses (here, so that no file depends on another's include order) ----

SPLITS = ["train", "val", "test"]
FRAMES_MANIFEST = R("frames/manifest.parquet")
# The frames manifest stands for the extracted frames (they are its job's output too).
IMAGES_INPUT = FRAMES_MANIFEST if DATA["source"] != "images" else []
# FineRS-format SegAnswer sources read this run's frames (or the released images).
FINERS_IMAGES = os.path.dirname(FRAMES_MANIFEST) if IMAGES_INPUT else DATA["images_dir"]
BASE_MANIFEST = R("models/base.manifest.json")
if MODELS["source"] == "tiny":
    BASE_QWEN = R("models/base/qwen")
    BASE_SAM2 = R("models/base/sam2")
else:
    BASE_QWEN = MODELS["local"]["qwen"]
    BASE_SAM2 = MODELS["local"]["sam2_checkpoint"]
SAM2_CONFIG = None if MODELS["source"] == "tiny" else MODELS["local"]["sam2_config"]
FINERS = R("finers")
SEGANSWER = R("seganswer")
SEG_DATA = R("seganswer/data")
# The SegAnswer checkpoints in pipeline order; the record each one's producer wrote (base:
# the base models' manifest), and what an evaluation job loads (a checkpoint folder, or
# the base models, the projector drawn in the job).
SEG_CHECKPOINTS = ["base", "stage1", "stage2", "stage3"]
SEG_RECORDS = {
    "base": BASE_MANIFEST,
    "stage1": prov(f"{SEGANSWER}/stage1/checkpoint"),
    # stages 2 and 3: the candidate each stage's selection chose on val (stage 1's chosen
    # LoRA candidate is merged by rule seganswer_stage1_merge)
    "stage2": prov(f"{SEGANSWER}/stage2_select/selection.json"),
    "stage3": prov(f"{SEGANSWER}/stage3_select/selection.json"),
}
SEG_MODELS = {
    "base": cfglib.canonical({"qwen": BASE_QWEN, "sam2": BASE_SAM2, "sam2_config": SAM2_CONFIG}),
    "stage1": cfglib.canonical({"dir": f"{SEGANSWER}/stage1/checkpoint"}),
    "stage2": cfglib.canonical({"dir": f"{SEGANSWER}/stage2_select/checkpoint"}),
    "stage3": cfglib.canonical({"dir": f"{SEGANSWER}/stage3_select/checkpoint"}),
}


def folder_from_record(input_name, name, base=None):
    """A param: the folder `name` that a job made, beside that job's provenance record.

    One convention for every job that makes a folder: it writes into a directory of its
    own (`<stage>/[<variant>/]`), its record is `<one of its outputs>.prov.json` in that
    directory, and the folders it made (`checkpoint`, `candidates`, `sam2`) sit beside
    the record. Consumers list the record (a small file, compared by content) instead
    of the folder (which Snakemake compares by mtime), so copying the results elsewhere
    re-runs nothing, while a rerun of the producer rewrites the record and so re-runs
    its consumers. `base`: the folder to use when the input is the base models' manifest
    instead (a stage that may start from the base models, as with the warm-up off).
    """

    def param(wildcards, input):
        path = input[input_name]
        if not path:  # an optional input that this variant does not use
            return None
        if base is not None and path == BASE_MANIFEST:
            return base
        return os.path.join(os.path.dirname(path), name)

    return param


def script_path(name):
    return f"../workflow_scripts/{name}.py"


def stage_params(script_name, *keys):
    """Params for a rule: the canonical config subset it reads, and the fingerprint of
    the code it runs (script + imported library modules), so that a change to either,
    and only to them, re-runs it."""
    path = Path(workflow.basedir) / "workflow_scripts" / f"{script_name}.py"
    cfg = cfglib.canonical(cfglib.subset(config, keys))
    code = cfglib.canonical({"script": f"workflow_scripts/{script_name}.py", "fingerprint": fp.short(path)})
    # Functions, not strings: Snakemake would read the braces of a template value
    # ("Segment the {phrase} ...") as wildcards.
    return {"cfg": lambda wildcards: cfg, "code": lambda wildcards: code}


def family_resources(family):
    """Slurm resources of a rule family; memory and runtime grow with each attempt."""
    r = dict(config["resources"][family])
    mem, runtime = r.pop("mem_mb"), r.pop("runtime")
    r.pop("processes", None)  # not a Slurm resource: train_processes() passes it as a param
    return {
        "mem_mb": lambda wildcards, attempt: mem * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
        **{k: v for k, v in r.items() if k != "cpus_per_task"},
        "cpus_per_task": r.get("cpus_per_task", 1),
    }


def train_processes(own=None):
    """A training rule's processes param: the stage's own `processes` when set, else the
    training family's (null: the job takes one per visible GPU, one on CPU). A param, so
    that a change re-runs the training (the global batch is per process)."""
    return own if own is not None else config["resources"]["gpu_train"]["processes"]


def train_threads(own=None):
    """A training rule's threads: its processes, so that a local run (`--cores`) does not
    start two multi-process trainings on the same cores (on Slurm, cpus_per_task rules)."""
    return train_processes(own) or 1


# Scheduling priorities when the cores are short (a local run): the default DAG's two
# long chains, FineRS's (policy warm-up -> LPR -> regions -> GSE -> inference) and
# SegAnswer's training stages, run side by side from the start; Dr. Seg's warm-up ->
# GRPO -> selection comes next, and the short inference, scoring and table jobs fill the
# gaps. With only FineRS's chain first, SegAnswer's stages 2-3 ran last, alone on one core.
CRITICAL_PATH = 10
NEXT_PATH = 5


# ---- experiments and variant keys -------------------------------------------------
# An experiment is the main config with a few keys overridden. Each stage's output path
# carries a variant key derived from exactly the config keys the stage and its upstream
# stages read, so experiments that agree on them share the artifact (one job).

_SCHEMA = cfglib.load_yaml(Path(workflow.basedir) / "config" / "schema.yaml")
EXPERIMENTS = {"main": config}
for _name in config["experiments"]["run"]:
    if _name not in config["experiments"]["defs"]:
        raise cfglib.ConfigError(f"config key 'experiments.run': no experiment named {_name!r} in experiments.defs")
    EXPERIMENTS[_name] = cfglib.deep_merge(config, config["experiments"]["defs"][_name])
    try:
        cfglib.validate(EXPERIMENTS[_name], _SCHEMA)
    except cfglib.ConfigError as exc:
        raise cfglib.ConfigError(f"experiment {_name!r}: {exc}") from None

_UPSTREAM = ["data", "models"]
# What the format warm-up reads (rules/finers.smk); every policy starts from it.
WARMUP_KEYS = [
    "finers.warmup",
    "finers.reward_profile",  # the GSE key the warm-up teaches
    "finers.lpr_crop",
    "finers.gse_size",
    "finers.region_size",
    "finers.prompts.lpr",
    "finers.prompts.gse",
    "finers.prompts.look",
    "finers.lpr.gt_points",
]
STAGE_KEYS = {
    "warmup": _UPSTREAM + WARMUP_KEYS,
    "lpr": _UPSTREAM + WARMUP_KEYS + ["finers.lpr"],
}
# The untrained reference: the starting policy through the same inference.
STAGE_KEYS["untrained"] = STAGE_KEYS["warmup"] + ["finers.inference"]
# The checkpoint selections read the val split on top of their stage; what follows a
# selection starts from the policy it chose.
SELECTION_KEYS = ["finers.selection.batch_size", "finers.selection.max_new_tokens"]
STAGE_KEYS["lpr_select"] = STAGE_KEYS["lpr"] + ["finers.selection.lpr", *SELECTION_KEYS]
STAGE_KEYS["regions"] = STAGE_KEYS["lpr_select"] + ["finers.regions", "finers.gse_size"]
STAGE_KEYS["gse"] = STAGE_KEYS["regions"] + ["finers.gse", "finers.region_size", "finers.prompts.gse"]
STAGE_KEYS["gse_select"] = STAGE_KEYS["gse"] + ["finers.selection.gse"]
STAGE_KEYS["infer"] = STAGE_KEYS["gse_select"] + ["finers.inference"]


def _variant_keys():
    """{stage: {experiment: key}} and {stage: {key: experiment config}}."""
    by_exp, by_key = {}, {}
    for stage, keys in STAGE_KEYS.items():
        seen = {}
        by_exp[stage], by_key[stage] = {}, {}
        for name, cfg in EXPERIMENTS.items():
            text = cfglib.canonical(cfglib.subset(cfg, keys))
            key = seen.setdefault(text, name)
            by_exp[stage][name] = key
            by_key[stage].setdefault(key, cfg)
    return by_exp, by_key


VARIANT, VARIANT_CFG = _variant_keys()


def exp_params(stage, script_name, *keys, options=None):
    """stage_params of the experiment a wildcard key stands for (params as a function).

    options: fn(experiment config) -> the project modules the script loads by name when
    that config turns them on; their fingerprints join the code param then, and only then.
    """

    def cfg_of(wildcards):
        return VARIANT_CFG[stage][getattr(wildcards, stage)]

    path = Path(workflow.basedir) / "workflow_scripts" / f"{script_name}.py"
    code = {"script": f"workflow_scripts/{script_name}.py", "fingerprint": fp.short(path)}

    def code_of(wildcards):
        loaded = options(cfg_of(wildcards)) if options else []
        return cfglib.canonical({**code, **({"options": {m: fp.module_short(m) for m in loaded}} if loaded else {})})

    return {
        "cfg": lambda wildcards: cfglib.canonical(cfglib.subset(cfg_of(wildcards), keys)),
        "code": code_of,
    }


def drseg_option(stage):
    """`options` of a FineRS GRPO stage: Dr. Seg's rewards, loaded when finers.<stage>.drseg asks."""

    def options(cfg):
        drseg = cfg["finers"][stage]["drseg"]
        return ["reproseg.finers.drseg_option"] if drseg["look_to_confirm"] or drseg["distribution_ranked"] else []

    return options


# ---- FineRS helpers ---------------------------------------------------------------


def images_root(wildcards, input):
    """Folder that image_path values are relative to: the extracted frames (beside the
    frames manifest) or the released images folder."""
    return os.path.dirname(input.images) if input.images else DATA["images_dir"]


def finers_shards(exp):
    n = EXPERIMENTS[exp]["finers"]["inference"]["shards"]
    return [f"{i}-of-{n}" for i in range(n)]


def region_shards(key):
    n = VARIANT_CFG["regions"][key]["finers"]["regions"]["shards"]
    return [f"{i}-of-{n}" for i in range(n)]


def warmup_record(stage, log_name):
    """Input function: the warm-up's record `log_name` (default) or, with the warm-up off,
    the base manifest; the model folder sits beside the record (folder_from_record with base)."""

    def fn(wildcards):
        key = getattr(wildcards, stage)
        if VARIANT_CFG[stage][key]["finers"]["warmup"]["enabled"]:
            return prov(f"{FINERS}/warmup/{VARIANT['warmup'][key]}/{log_name}")
        return BASE_MANIFEST

    return fn


# ---- FineRS input functions (named get_*, as the Snakemake catalog's workflows do) ----


def get_train_record(stage, wildcard):
    """The GRPO training record of `stage` that a job keyed by `wildcard` follows."""

    def fn(wildcards):
        key = VARIANT[stage][getattr(wildcards, wildcard)]
        return prov(f"{FINERS}/{stage}/{key}/train_log.parquet")

    return fn


def get_selection_record(stage, wildcard):
    """The checkpoint selection of `stage` (lpr or gse) that a job keyed by `wildcard` uses."""

    def fn(wildcards):
        key = VARIANT[f"{stage}_select"][getattr(wildcards, wildcard)]
        return prov(f"{FINERS}/{stage}_select/{key}/selection.json")

    return fn


def get_search_policy_record(wildcards):
    """The LPR the retrospective search runs; none when the search is off (Table 4's ablation)."""
    if not VARIANT_CFG["regions"][wildcards.regions]["finers"]["regions"]["retrospective"]:
        return []
    return get_selection_record("lpr", "regions")(wildcards)


def get_region_shards(wildcards):
    return expand(
        f"{FINERS}/regions/{wildcards.regions}/shard-{{shard}}.parquet", shard=region_shards(wildcards.regions)
    )


def get_regions(wildcards):
    return f"{FINERS}/regions/{VARIANT['regions'][wildcards.gse]}/regions.parquet"


def get_prediction_shards(wildcard):
    """The inference shards an evaluation merges: the trained ("infer") or untrained predictions."""
    folder = "predictions" if wildcard == "infer" else "untrained/predictions"

    def fn(wildcards):
        key = getattr(wildcards, wildcard)
        return expand(f"{FINERS}/{folder}/{key}/{wildcards.split}/shard-{{shard}}.parquet", shard=finers_shards(key))

    return fn


def get_untrained_metrics(wildcards):
    return untrained_metrics(wildcards.infer, wildcards.split)


def untrained_metrics(exp, split):
    """The untrained reference's metrics for an experiment's table ([] when switched off)."""
    cfg = EXPERIMENTS[exp]["finers"]
    if not cfg["inference"]["untrained"]:
        return []
    return [R(f"finers/untrained/metrics/{VARIANT['untrained'][exp]}/{split}.json")]


def finers_tables(exp):
    key = VARIANT["infer"][exp]
    return [R(f"tables/finers_{key}_{split}.md") for split in EXPERIMENTS[exp]["finers"]["inference"]["splits"]]


# ---- SegAnswer helpers ------------------------------------------------------------

from reproseg.seganswer import sources as seg_sources

SEG_SOURCES = SEG["sources"]


def seg_source_of(selection):
    name = selection.split("/")[0]
    if name not in SEG_SOURCES:
        raise cfglib.ConfigError(
            f"seganswer data selection {selection!r}: no source named {name!r} "
            f"in seganswer.sources ({sorted(SEG_SOURCES)})"
        )
    return name


def seg_tables(selections, kind):
    """The normalised tables (one per selection) a stage reads."""
    return [f"{SEG_DATA}/{seg_source_of(s)}/{kind}.parquet" for s in selections]


def seg_roots(selections):
    """The image folders of those tables, in the same order."""
    names = [seg_source_of(s) for s in selections]
    return [seg_sources.image_root(SEG_SOURCES[n], f"{SEG_DATA}/{n}/images", FINERS_IMAGES) for n in names]


def seg_source_files(wildcards):
    """What an import reads: the FineRS splits, or the source's own annotation files."""
    spec = SEG_SOURCES[wildcards.source]
    if spec["format"] == "finers":
        return {f"split_{s}": R(f"splits/{s}.parquet") for s in SPLITS}
    return {k: spec[k] for k in ("refs", "instances", "file") if spec.get(k)}


def get_seganswer_model_record(wildcards):
    """The record of the job that made the checkpoint an evaluation loads (SEG_RECORDS is
    rules/seganswer.smk's; input functions run after every include)."""
    return SEG_RECORDS[wildcards.checkpoint]


def get_seganswer_table_metrics(wildcards):
    """The metrics of every checkpoint up to the table's stage, named metrics_<checkpoint>."""
    upto = SEG_CHECKPOINTS[: SEG_CHECKPOINTS.index(wildcards.stage) + 1]
    return {f"metrics_{c}": f"{R('seganswer')}/metrics/{c}.json" for c in upto}


def report_tables():
    """The HTML renderings of every Markdown table the run writes (for --report)."""
    names = [
        "splits/stats",
        "annotations/validation_report",
        "tables/finers_experiments",
        "tables/seganswer_stage1",
        "tables/seganswer_stage3",
    ]
    names += [md[len(RESULTS) + 1 : -3] for exp in EXPERIMENTS for md in finers_tables(exp)]
    return [R(f"{n}.report.html") for n in sorted(set(names))]
