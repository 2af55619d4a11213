# Dr. Seg's own setting: config, variant keys, paths and input functions of rules/drseg.smk
# (kept apart from the rules, as rules/common.smk is for the other branches).

DRSEG = R("drseg")
DRSEG_DATA = f"{DRSEG}/data"  # each source's imported table, images and validation report
DRSEG_CFG = config["drseg"]
DRSEG_SOURCES = DRSEG_CFG["sources"]
DRSEG_BENCHES = [b["data"] for b in DRSEG_CFG["eval"]["benchmarks"]]
# Only the sources a stage reads are imported (a --configfile cannot remove the
# default's entries from the merged `sources` map).
DRSEG_USED = sorted({DRSEG_CFG["train_data"], DRSEG_CFG["selection"]["data"], *DRSEG_BENCHES})
DRSEG_TABLES = ["table2", "table3", "table4", "table5", "table6", "table7"]

# The drseg_* stages' variant keys (the mechanism of rules/common.smk, for this branch's
# stages): experiments that change only FineRS or SegAnswer keys share every Dr. Seg job.
_DRSEG_START = ["models", "drseg.policy_size", "drseg.train_data"]
# The format warm-up (embedded default) is shared by every reward variant.
STAGE_KEYS["drseg_warmup"] = _DRSEG_START + ["drseg.warmup"]
# The SAM 2.1 of the masks: FineRS's warmed-up one (drseg.finers_sam2) follows FineRS's
# data and warm-up keys.
_DRSEG_SAM2 = ["drseg.finers_sam2"] + (_UPSTREAM + WARMUP_KEYS if DRSEG_CFG["finers_sam2"] else [])
STAGE_KEYS["drseg_train"] = STAGE_KEYS["drseg_warmup"] + ["drseg.rewards", "drseg.grpo"]
STAGE_KEYS["drseg_select"] = STAGE_KEYS["drseg_train"] + [
    "drseg.selection",
    "drseg.eval.device",
    "drseg.eval.giou_empty",
    *_DRSEG_SAM2,
]
STAGE_KEYS["drseg_infer"] = STAGE_KEYS["drseg_select"] + ["drseg.eval"]
# The starting policy, asked with the prompt of the variant's reward setting.
STAGE_KEYS["drseg_untrained"] = STAGE_KEYS["drseg_warmup"] + [
    "drseg.rewards.look_to_confirm",
    "drseg.eval",
    *_DRSEG_SAM2,
]
_by_exp, _by_key = _variant_keys()
for _stage in ("drseg_warmup", "drseg_train", "drseg_select", "drseg_infer", "drseg_untrained"):
    VARIANT[_stage], VARIANT_CFG[_stage] = _by_exp[_stage], _by_key[_stage]

# One table row per distinct Dr. Seg variant (experiments that share it share the row).
DRSEG_RUNS = sorted({VARIANT["drseg_infer"][exp] for exp in EXPERIMENTS}, key=lambda k: (k != "main", k))


def drseg_metrics(key, kind="trained"):
    """{label: metrics JSON} of every evaluated benchmark of one variant."""
    folder = "metrics" if kind == "trained" else "untrained/metrics"
    return {b["label"]: f"{DRSEG}/{folder}/{key}/{b['data']}.json" for b in DRSEG_CFG["eval"]["benchmarks"]}


def drseg_table_runs():
    """The table job's runs: the untrained policy (when evaluated), then every variant."""
    runs = []
    if DRSEG_CFG["eval"]["untrained"]:
        key = VARIANT["drseg_untrained"]["main"]
        runs.append(
            {
                "name": "untrained",
                "trained": False,
                "rewards": config["drseg"]["rewards"],
                "metrics": drseg_metrics(key, "untrained"),
            }
        )
    for key in DRSEG_RUNS:
        cfg = VARIANT_CFG["drseg_infer"][key]["drseg"]
        runs.append({"name": key, "trained": True, "rewards": cfg["rewards"], "metrics": drseg_metrics(key)})
    return runs


# The FineRS splits of the comparison table (drseg_finers_comparison), by their data's name.
FINERS_DATA_NAME = "synthetic FineRS-4k" if config["data"]["source"] == "synthetic" else "FineRS-4k"


def drseg_finers_runs():
    """The comparison's runs: the FineRS variants that are the main run or use Dr. Seg's
    rewards (only experiments that experiments.run declares: finers_all builds them anyway,
    so the table adds no FineRS job to the DAG), then the main Dr. Seg variant and every one
    without Look-to-Confirm and the ranked reward (VisionReasoner's), on the segmentation
    benchmarks."""
    runs, seen = [], set()
    for exp, cfg in EXPERIMENTS.items():
        key, stages = VARIANT["infer"][exp], {s: cfg["finers"][s]["drseg"] for s in ("lpr", "gse")}
        on = any(o["look_to_confirm"] or o["distribution_ranked"] for o in stages.values())
        if key in seen or not (exp == "main" or on):
            continue
        seen.add(key)
        splits = cfg["finers"]["inference"]["splits"]
        metrics = {f"{FINERS_DATA_NAME} {s}": f"{FINERS}/metrics/{key}/{s}.json" for s in splits}
        runs.append({"branch": "FineRS", "name": key, "rewards": stages, "metrics": metrics})
    seg = [b for b in DRSEG_CFG["eval"]["benchmarks"] if DRSEG_SOURCES[b["data"]]["task"] == "segmentation"]
    for key in DRSEG_RUNS:
        rewards = VARIANT_CFG["drseg_infer"][key]["drseg"]["rewards"]
        if key == "main" or not (rewards["look_to_confirm"] or rewards["distribution_ranked"]):
            metrics = {b["label"]: f"{DRSEG}/metrics/{key}/{b['data']}.json" for b in seg}
            runs.append({"branch": "Dr. Seg", "name": key, "rewards": rewards, "metrics": metrics})
    return runs


def get_drseg_source_file(wildcards):
    """What an import reads: the source's own file or folder, or the synthetic fixture."""
    path = DRSEG_SOURCES[wildcards.drseg_source]["path"]
    return {"data": path if path else f"{DRSEG}/synthetic/{wildcards.drseg_source}.parquet"}


def drseg_start_record(stage):
    """Input function: the Dr. Seg warm-up's record or, with the warm-up off, the base
    manifest (the policy folder sits beside the record: folder_from_record with base)."""

    def fn(wildcards):
        key = getattr(wildcards, stage)
        if VARIANT_CFG[stage][key]["drseg"]["warmup"]["enabled"]:
            return prov(f"{DRSEG}/warmup/{VARIANT['drseg_warmup'][key]}/train_log.parquet")
        return BASE_MANIFEST

    return fn


def drseg_sam2_record(stage):
    """Input function: the record of the SAM 2.1 the masks come from: FineRS's warm-up
    (drseg.finers_sam2) or the base manifest (folder_from_record with base)."""

    def fn(wildcards):
        key = getattr(wildcards, stage)
        if not VARIANT_CFG[stage][key]["drseg"]["finers_sam2"]:
            return BASE_MANIFEST
        # Any experiment of this Dr. Seg variant: its keys include FineRS's warm-up's.
        exp = next(e for e, k in VARIANT[stage].items() if k == key)
        return prov(f"{FINERS}/warmup/{VARIANT['warmup'][exp]}/sam2_log.parquet")

    return fn


def get_drseg_train_record(wildcards):
    return prov(f"{DRSEG}/train/{VARIANT['drseg_train'][wildcards.drseg_select]}/train_log.parquet")


def get_drseg_selection_record(wildcards):
    return prov(f"{DRSEG}/select/{VARIANT['drseg_select'][wildcards.drseg_infer]}/selection.json")


def drseg_import(source):
    """The imported table of a source and its record (its images folder sits beside it)."""
    return f"{DRSEG_DATA}/{source}/table.parquet"
