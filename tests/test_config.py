"""Config schema validation, resolution and canonical subsets."""
import copy
from pathlib import Path

import pytest

from reproseg import config as cfglib

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = cfglib.load_yaml(ROOT / "config" / "schema.yaml")


@pytest.fixture
def default():
    return cfglib.resolve(cfglib.load_yaml(ROOT / "config" / "config.yaml"))


def test_default_is_valid(default):
    cfglib.validate(default, SCHEMA)


def test_paper_config_is_valid_and_resolves_env(monkeypatch, default):
    monkeypatch.setenv("REPROSEG_MODELS", "/models")
    monkeypatch.setenv("REPROSEG_DATA", "/data")
    cfg = cfglib.resolve(default, [cfglib.load_yaml(ROOT / "config" / "paper.yaml")])
    cfglib.validate(cfg, SCHEMA)
    assert cfg["models"]["local"]["qwen"] == "/models/Qwen2.5-VL-7B-Instruct"
    assert cfg["data"]["images_dir"] == "/data/finers4k/images"
    assert cfg["finers"]["gse_size"] == [1920, 1080] and cfg["finers"]["lpr_crop"] == 512
    for stage in ("lpr", "gse"):
        g = cfg["finers"][stage]["grpo"]
        assert (g["num_generations"], g["learning_rate"], g["weight_decay"], g["beta"]) == (8, 1e-6, 0.01, 5e-3)
    assert cfg["finers"]["region_size"] == 256
    assert cfg["data"]["splits"]["proportions"] == {"train": 8956, "val": 749, "test": 2427}
    # FineRS's main run is Table A3's seed 42; seeds 48 and 80 are its other rows
    assert cfg["finers"]["lpr"]["grpo"]["seed"] == cfg["finers"]["gse"]["grpo"]["seed"] == 42
    assert {"seed-48", "seed-80"} <= set(cfg["experiments"]["run"])


@pytest.mark.parametrize("path, value, expected", [
    (("data", "splits", "seed"), -1, "config key 'data.splits.seed'"),
    (("data", "source"), "youtube", "config key 'data.source'"),
    (("data", "frames", "stride"), "4", "config key 'data.frames.stride'"),
    (("data", "annotations", "on_invalid"), "ignore", "config key 'data.annotations.on_invalid'"),
    (("data", "synthetic", "width"), 641, "config key 'data.synthetic.width'"),
    # the rules expect every GRPO stage's candidates folder
    (("finers", "lpr", "grpo", "candidate_every"), None, "config key 'finers.lpr.grpo.candidate_every'"),
    (("resources", "gpu_train", "processes"), 0, "config key 'resources.gpu_train.processes'"),
    # only the training family runs several processes per job
    (("resources", "gpu_infer", "processes"), 2, "config key 'resources.gpu_infer': Unevaluated properties"),
])
def test_schema_errors_name_the_key(default, path, value, expected):
    cfg = copy.deepcopy(default)
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(cfglib.ConfigError, match=expected.replace(".", r"\.")):
        cfglib.validate(cfg, SCHEMA)


def test_unknown_key_is_an_error(default):
    cfg = copy.deepcopy(default)
    cfg["data"]["frame"] = {"stride": 2}   # typo of "frames"
    with pytest.raises(cfglib.ConfigError, match="'frame' was unexpected"):
        cfglib.validate(cfg, SCHEMA)


def test_cross_key_rules(default):
    cfg = copy.deepcopy(default)
    cfg["data"]["source"] = "images"
    with pytest.raises(cfglib.ConfigError, match="data.images_dir.*required when data.source is 'images'"):
        cfglib.validate(cfg, SCHEMA)
    cfg = copy.deepcopy(default)
    cfg["models"]["source"] = "local"
    with pytest.raises(cfglib.ConfigError, match="models.local.qwen"):
        cfglib.validate(cfg, SCHEMA)


def test_subset_and_canonical_are_order_independent(default):
    a = cfglib.canonical(cfglib.subset(default, ["data.splits", "data.frames"]))
    b = cfglib.canonical(cfglib.subset(default, ["data.frames", "data.splits"]))
    assert a == b
    assert '"stride":4' in a and '"proportions"' in a and "synthetic" not in a


def test_deep_merge_follows_omegaconf():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    over = {"a": {"c": [9]}, "e": {"f": 1}}
    assert cfglib.deep_merge(base, over) == cfglib.resolve(base, [over]) == {"a": {"b": 1, "c": [9]}, "d": 3, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}   # not modified


def test_command_line_nested_leaves_read_as_a_configfile_reads_them():
    # what snakemake.cli.parse_config makes of: results=out resources='{gpu_train: {processes: 2}}' ...
    given = {"results": "out", "resources": {"gpu_train": {"processes": "2", "gpu_model": "a100"}},
             "finers": {"lpr": {"grpo": {"learning_rate": "1.0e-6", "epochs": "null", "seed": "42"}},
                        "prompts": {"lpr": "Find {phrase}: ${oc.env:X}"}}}
    assert cfglib.typed_command_line(given) == {
        "results": "out", "resources": {"gpu_train": {"processes": 2, "gpu_model": "a100"}},
        "finers": {"lpr": {"grpo": {"learning_rate": 1e-6, "epochs": None, "seed": 42}},
                   "prompts": {"lpr": "Find {phrase}: ${oc.env:X}"}}}


@pytest.mark.parametrize("section, settings, key", [
    # 2 micro-batches per rollout batch, one micro-batch per update: 2 updates per batch.
    (("finers", "lpr", "grpo"), {"steps_per_generation": 2, "save_steps": 5}, "finers.lpr.grpo.save_steps"),
    (("finers", "gse", "grpo"), {"steps_per_generation": 2, "max_steps": 61}, "finers.gse.grpo.max_steps"),
    # 16 micro-batches, 2 per update, 2 passes: 16 updates per batch (stage 3 of the paper).
    (("seganswer", "stage3", "grpo"), {"steps_per_generation": 16, "gradient_accumulation_steps": 2,
                                       "num_iterations": 2, "max_steps": 40}, "seganswer.stage3.grpo.max_steps"),
])
def test_rollout_batch_rules_at_parse_time(default, section, settings, key):
    cfg = copy.deepcopy(default)
    node = cfg
    for p in section:
        node = node[p]
    node.update(settings)
    with pytest.raises(cfglib.ConfigError, match=key.replace(".", r"\.") + ".*rollout batch"):
        cfglib.validate(cfg, SCHEMA)
    node.update({k: 32 for k in ("max_steps", "save_steps")})   # multiples of 2 and of 16
    cfglib.validate(cfg, SCHEMA)


def test_selection_settings(default):
    cfg = copy.deepcopy(default)
    cfg["finers"]["selection"]["gse"] = {"choose": "best", "metric": None, "mode": "max"}
    with pytest.raises(cfglib.ConfigError, match=r"finers\.selection\.gse\.metric.*required"):
        cfglib.validate(cfg, SCHEMA)
    cfg["finers"]["selection"]["gse"] = {"choose": "best", "metric": "box_iou", "mode": "max"}   # an LPR term
    with pytest.raises(cfglib.ConfigError, match=r"finers\.selection\.gse\.metric"):
        cfglib.validate(cfg, SCHEMA)
    cfg["finers"]["selection"]["gse"] = {"choose": "last", "metric": None, "mode": "max"}
    cfglib.validate(cfg, SCHEMA)


def test_seganswer_selection_reads_val_only(default):
    cfg = copy.deepcopy(default)
    cfg["seganswer"]["selection"]["data"] = ["shapes/test"]
    with pytest.raises(cfglib.ConfigError, match=r"seganswer\.selection\.data.*val data only"):
        cfglib.validate(cfg, SCHEMA)
    cfg["seganswer"]["selection"]["data"] = [cfg["seganswer"]["eval"]["questions"][0]["data"]]
    with pytest.raises(cfglib.ConfigError, match="evaluated benchmark"):
        cfglib.validate(cfg, SCHEMA)
    cfg["seganswer"]["selection"]["data"] = []
    with pytest.raises(cfglib.ConfigError, match="a val selection is required"):
        cfglib.validate(cfg, SCHEMA)
    cfg["seganswer"]["selection"]["stage3"] = {"choose": "last", "metric": None, "mode": "max"}
    with pytest.raises(cfglib.ConfigError, match="a val selection is required .* for stage2"):
        cfglib.validate(cfg, SCHEMA)  # stage 2 still names a metric
    cfg["seganswer"]["selection"]["stage2"] = {"choose": "last", "metric": None, "mode": "max"}
    cfglib.validate(cfg, SCHEMA)
    # stage 1 reads referring rows: the same rule for its own selection
    cfg["seganswer"]["selection"]["referring_data"] = ["shapes/test"]
    with pytest.raises(cfglib.ConfigError, match=r"seganswer\.selection\.referring_data.*val data only"):
        cfglib.validate(cfg, SCHEMA)
    cfg["seganswer"]["selection"]["referring_data"] = []
    with pytest.raises(cfglib.ConfigError, match="referring_data.*required .* for stage1"):
        cfglib.validate(cfg, SCHEMA)
    cfg["seganswer"]["selection"]["stage1"] = {"choose": "last", "metric": None, "mode": "max"}
    cfglib.validate(cfg, SCHEMA)
