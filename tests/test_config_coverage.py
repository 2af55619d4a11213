"""The schema covers every key of every stage: its sections agree with the library's
settings dataclasses field for field and type for type, config/config.yaml sets every
key (the one place defaults live for the workflow), and a typo or an out-of-range value
anywhere in a stage's settings stops the parse, naming the key."""
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from reproseg import config as cfglib
from reproseg.grpo.engine import GRPOSettings
from reproseg.models.sam2_warmup import SAM2Settings
from reproseg.models.sft import SFTSettings
from reproseg.seganswer.losses import Stage1LossWeights
from reproseg.seganswer.rollout import RolloutSettings
from reproseg.seganswer.stage1 import Stage1Settings
from reproseg.seganswer.stage2 import Stage2Settings
from reproseg.seganswer.stage3 import Stage3Settings
from reproseg.selection import SelectionSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = cfglib.load_yaml(ROOT / "config" / "schema.yaml")
DEFAULT = cfglib.resolve(cfglib.load_yaml(ROOT / "config" / "config.yaml"))

# (schema node, dataclass, fields the section does not hold -> why, keys only the section has)
SECTIONS = [
    ("$defs.grpo", GRPOSettings, {}, set()),
    ("$defs.seganswer_stage1", Stage1Settings, {"sam_feature_cache_mb": "seganswer.sam_feature_cache_mb"}, set()),
    ("$defs.seganswer_stage1.properties.loss", Stage1LossWeights, {}, set()),
    ("$defs.seganswer_stage2", Stage2Settings, {"sam_feature_cache_mb": "seganswer.sam_feature_cache_mb",
                                                 "reasoning_prompt": "seganswer.reasoning_prompt"}, set()),
    ("$defs.seganswer_stage3", Stage3Settings, {"sam_feature_cache_mb": "seganswer.sam_feature_cache_mb",
                                                 "reasoning_prompt": "seganswer.reasoning_prompt"}, set()),
    ("$defs.seganswer_stage3.properties.rollout", RolloutSettings, {}, set()),
    ("$defs.selection", SelectionSettings, {}, set()),
    ("properties.finers.properties.warmup", SFTSettings, {}, {"enabled", "sam2"}),
    ("properties.finers.properties.warmup.properties.sam2", SAM2Settings, {"seed": "finers.warmup.seed"},
     {"box_jitter"}),
]

# Objects whose keys may be left out, and why.
OPTIONAL_KEYS = {
    "$defs.seganswer_source": "each format reads its own keys (reproseg.seganswer.sources)",
    "$defs.resource": "Slurm options a cluster may not need (partition, account, GPUs)",
    "properties.models.properties.tiny.properties.spec": "a model architecture: reproseg.models.tiny_bundle.DEFAULT_SPEC",
    "properties.models.properties.local": "needed only with models.source local (a cross-key check)",
}

# Python annotation -> the JSON types a schema node may allow for it.
JSON_TYPES = {"int": {"integer"}, "float": {"number", "integer"}, "bool": {"boolean"}, "str": {"string"},
              "dict": {"object"}, "list": {"array"}, "None": {"null"}}


def node_at(dotted: str) -> dict:
    node = SCHEMA
    for part in dotted.split("."):
        node = node[part]
    return node


def resolved(node: dict) -> dict:
    while "$ref" in node:
        node = node_at(node["$ref"].removeprefix("#/").replace("/", "."))
    return node


def json_types(node: dict) -> set[str]:
    node = resolved(node)
    if "anyOf" in node:
        return set().union(*(json_types(n) for n in node["anyOf"]))
    if "enum" in node:
        return {{str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}[type(v)]
                for v in node["enum"]}
    t = node["type"]
    return set(t) if isinstance(t, list) else {t}


def allowed(annotation: str) -> set[str]:
    out = set()
    for part in annotation.split("|"):
        base = part.strip().split("[")[0]
        out |= JSON_TYPES.get(base, {"object"})   # a nested settings dataclass is an object
    return out


@pytest.mark.parametrize("where, cls, held_elsewhere, extra", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_schema_section_agrees_with_its_dataclass(where, cls, held_elsewhere, extra):
    node = resolved(node_at(where))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(held_elsewhere) <= set(fields)
    assert set(node["properties"]) == set(fields) - set(held_elsewhere) | extra
    assert set(node["required"]) == set(node["properties"]), "config.yaml must set every key"
    for name in set(fields) - set(held_elsewhere):
        want, have = allowed(str(fields[name].type)), json_types(node["properties"][name])
        # The schema may be narrower (grpo.candidate_every refuses null: the rules expect candidates).
        assert have <= want, f"{where}.{name}: schema allows {have}, {cls.__name__}.{name} is {fields[name].type}"


def test_every_object_lists_all_its_keys_as_required():
    """So config/config.yaml holds every default the workflow runs with (a merged
    --configfile or experiment keeps them); the library's own defaults never reach a job."""
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            closed = node.get("additionalProperties") is False and isinstance(node.get("properties"), dict)
            if closed and path not in OPTIONAL_KEYS:
                missing = set(node["properties"]) - set(node.get("required", []))
                if missing:
                    loose.append(f"{path}: {sorted(missing)}")
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(SCHEMA, "")
    assert not loose


@pytest.mark.parametrize("overrides", [[], ["paper.yaml"]], ids=["default", "paper"])
def test_every_stage_section_builds_its_settings(overrides, monkeypatch):
    monkeypatch.setenv("REPROSEG_MODELS", "/models")
    monkeypatch.setenv("REPROSEG_DATA", "/data")
    cfg = cfglib.resolve(DEFAULT, [cfglib.load_yaml(ROOT / "config" / o) for o in overrides])
    cfglib.validate(cfg, SCHEMA)
    seg, cache = cfg["seganswer"], {"sam_feature_cache_mb": cfg["seganswer"]["sam_feature_cache_mb"]}
    for key in cfglib.GRPO_SECTIONS:
        GRPOSettings.from_dict(cfglib.get(cfg, key))
    a = Stage1Settings.from_dict({**seg["stage1"]["projector"], **cache}, "a")
    b = Stage1Settings.from_dict({**seg["stage1"]["lora"], **cache}, "b")
    qa = {**cache, "reasoning_prompt": seg["reasoning_prompt"]}
    s2 = Stage2Settings.from_dict({**seg["stage2"], **qa})
    s3 = Stage3Settings.from_dict({**seg["stage3"]["settings"], **qa})
    assert isinstance(a.loss, Stage1LossWeights) and isinstance(s3.rollout, RolloutSettings)
    # Every value the config gives is the one the settings hold: no library default slipped in.
    assert dataclasses.asdict(b) == {**seg["stage1"]["lora"], **cache}
    assert dataclasses.asdict(s2) == {**seg["stage2"], **qa}
    if overrides:
        # The paper trains every part of stage 1b at one rate; the tiny default's separate LoRA
        # rate must not leak into it through the merge.
        assert b.learning_rate == 2e-5 and b.lora_learning_rate is None


BAD_VALUES = [
    ("seganswer.stage2.learning_rat", 1e-3, "Additional properties.*learning_rat"),
    ("seganswer.stage2.learning_rate", -1e-3, "seganswer.stage2.learning_rate"),
    ("seganswer.stage2.batch_size", 0, "seganswer.stage2.batch_size"),
    ("seganswer.stage1.projector.epochs", 0, "seganswer.stage1.projector.epochs"),
    ("seganswer.stage1.lora.lora_dropout", 1.0, "seganswer.stage1.lora.lora_dropout"),
    ("seganswer.stage1.lora.loss.focal_alpha", 1.5, "seganswer.stage1.lora.loss.focal_alpha"),
    ("seganswer.stage1.lora.response", "It is.", "seganswer.stage1.lora.response"),
    ("seganswer.stage3.settings.rollout.max_turns", 0, "seganswer.stage3.settings.rollout.max_turns"),
    ("seganswer.stage3.settings.max_refill_rounds", -1, "seganswer.stage3.settings.max_refill_rounds"),
    ("seganswer.stage3.settings.reward_weights", {"acc": 1.0}, "Additional properties.*reward_weights"),
    ("seganswer.stage3.grpo.reward_weights", {"acc": -0.8}, "seganswer.stage3.grpo.reward_weights.acc"),
    ("seganswer.eval.dtype", "float8", "seganswer.eval.dtype"),
    ("seganswer.eval.device", "gpu", "seganswer.eval.device"),
    ("finers.lpr.grpo.learning_rate", 2.0, "finers.lpr.grpo.learning_rate"),
    ("finers.warmup.sam2.box_jitter", 2, "finers.warmup.sam2.box_jitter"),
    ("finers.warmup.sam2.focal_wieght", 20, "Additional properties.*focal_wieght"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_stage_setting_is_named(key, value, message):
    cfg = copy.deepcopy(DEFAULT)
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(cfglib.ConfigError, match=message):
        cfglib.validate(cfg, SCHEMA)


def test_missing_stage_key_is_named():
    cfg = copy.deepcopy(DEFAULT)
    del cfg["seganswer"]["stage2"]["max_grad_norm"]
    with pytest.raises(cfglib.ConfigError, match=r"'seganswer\.stage2': 'max_grad_norm' is a required property"):
        cfglib.validate(cfg, SCHEMA)


def test_typo_in_a_seganswer_setting_stops_the_dry_run(tmp_path):
    """The README's promise, end to end: `snakemake -n` with the typo fails before any job."""
    (tmp_path / "typo.yaml").write_text("seganswer:\n  stage2:\n    learning_rat: 1.0e-3\n")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                          "-n", "--configfile", str(tmp_path / "typo.yaml")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "config key 'seganswer.stage2'" in out.stdout + out.stderr and "learning_rat" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()
