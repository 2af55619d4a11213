"""Configuration: OmegaConf resolution, JSON-schema validation, canonical subsets.

Imported while Snakemake parses the Snakefile, so it stays light (no torch, no numpy).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft202012Validator
from omegaconf import OmegaConf


class ConfigError(ValueError):
    """An invalid configuration; the message names every offending key."""


def resolve(config: dict, overrides: Iterable[dict] = ()) -> dict:
    """Merges `overrides` onto `config` with OmegaConf and resolves interpolations
    (such as the `${oc.env:...}` paths of config/paper.yaml)."""
    merged = OmegaConf.merge(OmegaConf.create(config), *(OmegaConf.create(o) for o in overrides))
    return OmegaConf.to_container(merged, resolve=True)


def typed_command_line(config: dict) -> dict:
    """`snakemake --config` values with their nested leaves read as YAML, as a configfile reads
    them: Snakemake parses a nested value (`resources='{gpu_train: {processes: 2}}'`) with
    YAML's BaseLoader, whose leaves are all strings ("2"). Top-level values it types itself."""

    def typed(node):
        if isinstance(node, dict):
            return {k: typed(v) for k, v in node.items()}
        if isinstance(node, list):
            return [typed(v) for v in node]
        if isinstance(node, str):
            try:
                value = yaml.safe_load(node)
            except yaml.YAMLError:
                return node
            return value if isinstance(value, (str, int, float, bool, type(None))) else node
        return node

    return {k: typed(v) if isinstance(v, (dict, list)) else v for k, v in config.items()}


def deep_merge(base: dict, override: dict) -> dict:
    """OmegaConf's merge rule on plain data (mappings merge, everything else replaces),
    for experiment overrides of an already resolved config: OmegaConf itself costs
    ~0.1 s per merge of the whole config, paid at every parse."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    with open(path) as f:
        return yaml.load(f, Loader=loader)


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def validate(config: dict, schema: dict) -> None:
    """Raises ConfigError naming each key that breaks the schema or a cross-key rule."""
    errors = []
    for err in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)):
        errors.append(f"config key '{_key(err.path)}': {err.message}")
    if not errors:
        errors += _cross_checks(config)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def _cross_checks(config: dict) -> list[str]:
    """Rules that depend on another key's value (clearer here than as schema if/then).
    Run only on a config the schema accepts, so every key is present."""
    out = []
    data = config["data"]
    need = {"videos": ["videos_dir", "annotations_json"], "images": ["images_dir", "annotations_json"]}
    for key in need.get(data["source"], []):
        if not data[key]:
            out.append(f"config key 'data.{key}': required when data.source is '{data['source']}'")
    models = config["models"]
    if models["source"] == "local":
        for key in ("qwen", "sam2_checkpoint"):
            if not models["local"].get(key):
                out.append(f"config key 'models.local.{key}': required when models.source is 'local'")
    for key in GRPO_SECTIONS:
        out += _rollout_checks(key, get(config, key))
    seg_sel = config["seganswer"]["selection"]
    choices = {f"finers.selection.{k}": config["finers"]["selection"][k] for k in ("lpr", "gse")}
    choices.update({f"seganswer.selection.{k}": seg_sel[k] for k in ("stage1", "stage2", "stage3")})
    for key, sel in choices.items():
        if sel["choose"] == "best" and not sel["metric"]:
            out.append(f"config key '{key}.metric': required when choose is 'best'")
    # Stage 1 is scored on referring rows, stages 2 and 3 on questions.
    for data_key, stages in (("data", ("stage2", "stage3")), ("referring_data", ("stage1",))):
        if any(seg_sel[st]["metric"] for st in stages) and not seg_sel[data_key]:
            out.append(f"config key 'seganswer.selection.{data_key}': a val selection is required when a metric "
                       f"is named for {' or '.join(stages)}")
    evaluated = {b["data"] for kind in ("referring", "questions") for b in config["seganswer"]["eval"][kind]}
    for data_key in ("data", "referring_data"):
        for sel in seg_sel[data_key]:
            if sel.split("/")[-1] == "test" or sel in evaluated:
                out.append(f"config key 'seganswer.selection.{data_key}': {sel!r} is a test split or an evaluated "
                           "benchmark; a checkpoint is chosen on val data only")
    out += _drseg_checks(config["drseg"])
    if config["drseg"]["finers_sam2"] and not config["finers"]["warmup"]["enabled"]:
        out.append("config key 'drseg.finers_sam2': it evaluates with the SAM 2.1 that FineRS's warm-up "
                   "trains, and finers.warmup.enabled is false")
    # A FineRS reward profile carries its prompt and its parser together: the GSE JSON key
    # its terms read (RewardProfile.gse_box_key: the paper's template {region, response},
    # the authors' code and prompt 'bbox') must be the one every GSE prompt asks for, or
    # every GSE box term scores 0. tests/test_profile_prompts.py checks this table against
    # RewardProfile. Keys are recognised in double or single quotes (the authors' prompt
    # shows {'bbox': [...], 'response': ...}).
    gse_box_keys = {"paper": "region", "reference_code": "bbox"}
    finers = config["finers"]
    key = gse_box_keys[finers["reward_profile"]]
    others = sorted(set(gse_box_keys.values()) - {key})
    for task, template in finers["prompts"]["gse"].items():
        named = {k for k in gse_box_keys.values() if f'"{k}"' in template or f"'{k}'" in template}
        if key not in named or named - {key}:
            out.append(f"config key 'finers.prompts.gse.{task}': finers.reward_profile "
                       f"'{finers['reward_profile']}' reads the GSE box from the JSON key '{key}', so the "
                       f"prompt must ask for \"{key}\" (and not {', '.join(repr(o) for o in others)}); "
                       f"it names {sorted(named) or 'no box key'}. See docs/fidelity.md for the authors' GSE prompt.")
    return out


def _drseg_checks(d: dict) -> list[str]:
    """Dr. Seg's sources: each name refers to one of the right task, and the checkpoint is
    chosen on a segmentation set that no evaluation reads."""
    out, sources = [], d["sources"]

    def need(key: str, name: str, tasks: tuple[str, ...]) -> None:
        if name not in sources:
            out.append(f"config key '{key}': no source named {name!r} in drseg.sources ({sorted(sources)})")
        elif sources[name]["task"] not in tasks:
            out.append(f"config key '{key}': source {name!r} is a {sources[name]['task']} set, not {' or '.join(tasks)}")

    need("drseg.train_data", d["train_data"], ("train",))
    need("drseg.selection.data", d["selection"]["data"], ("segmentation",))
    evaluated = [b["data"] for b in d["eval"]["benchmarks"]]
    for i, name in enumerate(evaluated):
        need(f"drseg.eval.benchmarks[{i}].data", name, ("segmentation", "rec", "detection", "counting"))
    if d["selection"]["data"] in evaluated:
        out.append(f"config key 'drseg.selection.data': {d['selection']['data']!r} is an evaluated benchmark; "
                   "a checkpoint is chosen on val data only")
    labels = [b["label"] for b in d["eval"]["benchmarks"]]
    if len(set(labels)) != len(labels):
        out.append(f"config key 'drseg.eval.benchmarks': duplicate labels {labels}")
    if d["selection"]["choose"] == "best" and not d["selection"]["metric"]:
        out.append("config key 'drseg.selection.metric': required when choose is 'best'")
    if d["rewards"]["raw_accuracy"] and not d["rewards"]["distribution_ranked"]:
        out.append("config key 'drseg.rewards.raw_accuracy': the raw reward is the unranked form of the "
                   "distribution-ranked one; it needs drseg.rewards.distribution_ranked")
    return out


# The GRPO engine settings of each RL stage (reproseg.grpo.engine.GRPOSettings).
GRPO_SECTIONS = ("finers.lpr.grpo", "finers.gse.grpo", "seganswer.stage3.grpo", "drseg.grpo")


def _rollout_checks(key: str, g: dict) -> list[str]:
    """The engine's rollout-batch rules, at parse time instead of inside the training job:
    a rollout batch is a whole number of optimizer steps, and a resume checkpoint and the
    last step fall on the end of one."""
    ga, spg = g["gradient_accumulation_steps"], g["steps_per_generation"] or g["gradient_accumulation_steps"]
    if spg % ga:
        return [f"config key '{key}.steps_per_generation': {spg} is not a multiple of gradient_accumulation_steps "
                f"({ga}), so a rollout batch would not be a whole number of optimizer steps"]
    updates = g["num_iterations"] * spg // ga
    out = []
    if (g["max_steps"] is None) == (g["epochs"] is None):
        out.append(f"config key '{key}.epochs': give exactly one of max_steps and epochs (the other null)")
    for name in ("save_steps", "max_steps"):
        if g[name] is not None and g[name] % updates:
            why = ("every checkpoint resumes exactly" if name == "save_steps"
                   else "no rollout batch is generated and then only partly trained on")
            out.append(f"config key '{key}.{name}': {g[name]} is not a multiple of the {updates} optimizer steps "
                       f"per rollout batch (num_iterations x steps_per_generation / gradient_accumulation_steps), "
                       f"so that {why}")
    return out


def get(config: dict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def subset(config: dict, keys: Iterable[str]) -> dict:
    """The values of the given dotted keys, as a nested dict."""
    out: dict = {}
    for dotted in sorted(keys):
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = get(config, dotted)
    return out


def canonical(obj: Any) -> str:
    """A stable text form (sorted keys): Snakemake compares params by repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataclass_from_dict(cls, d: dict | None, what: str):
    """`cls(**d)` for a settings dataclass: an unknown key is named, and float fields given
    as YAML strings or ints ("1e-3", 0) become floats."""
    d = dict(d or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    floats = {name for name, f in known.items() if f.type in ("float", "float | None")}
    return cls(**{k: float(v) if k in floats and v is not None else v for k, v in d.items()})
