import json
import re
from pathlib import Path

import pytest
import yaml

from lstmclf.config import (
    Config,
    check_resumable,
    dotted_keys,
    load_config,
    parse_overrides,
    read_config_file,
    recipe_values,
)
from lstmclf.errors import ConfigError


def test_defaults_round_trip_through_dict_yaml_and_json(tmp_path):
    cfg = Config().override({"model.lstm_layers": 3, "optim.name": "sgd", "model.bidirectional": False})
    assert Config.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(tmp_path / "c.json") == cfg


def test_file_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"hidden": 64}, "optim": {"lr": 0.01}}))
    cfg = load_config(tmp_path / "c.yaml", ["model.hidden=32", "optim.lr=1e-3", "model.bidirectional=false"])
    assert (cfg.model.hidden, cfg.optim.lr, cfg.model.bidirectional) == (32, 1e-3, False)
    assert cfg.model.lstm_layers == Config().model.lstm_layers


def test_int_accepted_for_float_and_numeric_strings_parsed():
    cfg = Config.from_dict({"optim": {"lr": 1, "weight_decay": "1e-4"}, "train": {"epochs": 3.0}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 1e-4 and cfg.train.epochs == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lstm_layer=3"], "unknown config key 'model.lstm_layer' (did you mean 'model.lstm_layers'?)"),
        (["modle.hidden=3"], "unknown config key 'modle'"),
        (["model.dropout=1.0"], "model.dropout: 1.0 is outside [0, 1)"),
        (["model.dropout=-0.1"], "model.dropout"),
        (["scaling.num_workers=0"], "scaling.num_workers: 0 < 1"),
        (["optim.name=rmsprop"], "optim.name: 'rmsprop' is not one of adam, nadam, adamw, sgd"),
        (["loss.name=hinge"], "loss.name"),
        (["model.backbone=alexnet"], "model.backbone: 'alexnet' is not one of"),
        (["model.head=gru"], "model.head"),
        (["model.axis=diagonal"], "model.axis"),
        (["model.hidden=abc"], "model.hidden: expected int, got 'abc'"),
        (["model.hidden=2.5"], "model.hidden: expected int"),
        (["model.bidirectional=3"], "model.bidirectional: expected bool"),
        (["train.epochs=true"], "train.epochs: expected int"),
        (["optim.lr=nan"], "optim.lr: expected float"),
        (["optim.lr=0"], "optim.lr"),
        (["model=3"], "config section model must be a mapping"),
        (["model.hidden.x=3"], "model.hidden: expected int, got {'x': 3}"),
        (["model.backbone=none", "model.head=linear"], "backbone 'none' needs head 'lstm'"),
        (["storage.name=a/b"], "storage.name"),
        (["nokeyvalue"], "must look like section.key=value"),
        (["data.elastic=-1"], "data.elastic: -1.0 is outside [0, 100]"),
        (["data.val_fraction=1"], "data.val_fraction: 1.0 is outside [0, 1)"),
        (["data.val_fraction=-0.1"], "data.val_fraction: -0.1 is outside [0, 1)"),
        (["data.elastic_sigma=100"], "data.elastic_sigma: 100.0 is outside [0.5, 16]"),
        (["retrain.alpha=0"], "retrain.alpha: 0.0 is outside (0, 1)"),
        (["retrain.margin=1"], "retrain.margin: 1.0 is outside [0, 1)"),
        (["retrain.max_recall_drop=-0.1"], "retrain.max_recall_drop"),
        (["retrain.model_name=a/b"], "retrain.model_name: 'a/b' must be letters, digits"),
        (["retrain.lease_seconds=5"], "retrain.lease_seconds: 5 is outside [30, 86400]"),
        (["retrain.test_data=s3://key:secret@host/b"], "retrain.test_data: must not hold credentials"),
    ],
)
def test_bad_values_fail_with_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("model: {hidden: 3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path / "missing.yaml")


def test_frozen_and_dotted_keys():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.model.hidden = 3  # type: ignore[misc]
    keys = dotted_keys()
    assert keys["model.lstm_layers"] is int and keys["optim.lr"] is float and keys["model.bidirectional"] is bool
    assert set(keys) == {f"{s}.{k}" for s, sec in cfg.to_dict().items() for k in sec}


def test_parse_overrides_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=0.5", "a.d=adam", "a.e=true", "a.f="]) == {
        "a.b": 3,
        "a.c": 0.5,
        "a.d": "adam",
        "a.e": True,
        "a.f": "",
    }


def test_configs_saved_before_the_retrain_section_load_and_its_changes_resume(tmp_path):
    old = Config().to_dict()
    del old["retrain"]  # a checkpoint's config.yaml or a version's config from before the section
    cfg = Config.from_dict(old)
    assert cfg.retrain == Config().retrain
    # The gate's thresholds never reach a checkpoint: changing them does not stop a run from resuming.
    check_resumable(cfg, cfg.override({"retrain.margin": 0.05, "retrain.model_name": "other"}), "run")
    with pytest.raises(ConfigError, match=r"model\.hidden: 128 -> 8"):
        check_resumable(cfg, cfg.override({"model.hidden": 8}), "run")
    assert recipe_values(cfg, ["model.hidden", "data.limit_train", "train.epochs", "tune.space.x"]) == {
        "model.hidden": 128,
        "train.epochs": 6,
    }


def test_the_readme_config_table_names_every_key():
    """README's table of config sections and keys is how users find a key: every field is there."""
    rows = {}
    for line in (Path(__file__).parents[1] / "README.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    missing = [k for k in dotted_keys() if k.split(".")[1] not in rows.get(k.split(".")[0], set())]
    assert not missing
