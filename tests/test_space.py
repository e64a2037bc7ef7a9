"""Search spaces: checked and sampled before any trial, with one clear line per mistake."""

import pytest
from support.helpers import ray_started, run_job

from lstmclf import space
from lstmclf.config import PRESET_SPACE, Config, load_config
from lstmclf.errors import ConfigError


def sample(space_dict, num_samples=4, seed=0, base=None):
    cfg = (base or Config()).override({"tune.space": space_dict})
    return space.sample(cfg, space.parse(cfg.tune.space, cfg), num_samples, seed)


def test_preset_covers_depth_dropout_optimizer_loss_and_lr():
    trials = sample(PRESET_SPACE, num_samples=200)
    assert {t["model.lstm_layers"] for t in trials} == {1, 2, 3, 4}
    assert {t["optim.name"] for t in trials} == {"adam", "nadam", "adamw", "sgd"}
    assert {t["loss.name"] for t in trials} == {"cross_entropy", "label_smoothing", "focal"}
    assert all(0.0 <= t["model.dropout"] <= 0.5 and 1e-3 <= t["optim.lr"] <= 1e-2 for t in trials)
    assert len({round(t["optim.lr"], 6) for t in trials}) > 150  # continuous, not a handful of values


def test_sampling_is_seeded_and_grid_multiplies():
    s = {"model.hidden": {"grid": [16, 32]}, "model.dropout": {"uniform": [0.0, 0.3]}, "model.axis": "cols"}
    a, b, c = sample(s, 3, seed=1), sample(s, 3, seed=1), sample(s, 3, seed=2)
    assert a == b != c and len(a) == 6
    assert [t["model.hidden"] for t in a] == [16, 16, 16, 32, 32, 32] and {t["model.axis"] for t in a} == {"cols"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"model.lstm_layer": {"randint": [1, 3]}},
            "tune.space: unknown config key 'model.lstm_layer' (did you mean 'model.lstm_layers'?)",
        ),
        ({"scaling.num_workers": {"choice": [1, 2]}}, "scaling.num_workers: scaling keys cannot be searched"),
        ({"optim.name": {"choice": []}}, "tune.space optim.name: choice needs a non-empty list"),
        (
            {"model.dropout": {"uniform": [0.4, 0.1]}},
            "tune.space model.dropout: lower bound 0.4 is not below upper bound 0.1",
        ),
        ({"model.lstm_layers": {"randint": [3, 3]}}, "lower bound 3 is not below upper bound 3"),
        (
            {"model.dropout": {"uniform": [0.0, 1.5]}},
            "tune.space model.dropout: value 1.5 is invalid (config value model.dropout: 1.5 is outside [0, 1))",
        ),
        ({"optim.name": {"choice": ["adam", "rmsprop"]}}, "tune.space optim.name: value 'rmsprop' is invalid"),
        ({"model.lstm_layers": {"randint": [1, 12]}}, "tune.space model.lstm_layers: value 11 is invalid"),
        ({"optim.lr": {"loguniform": [0, 0.1]}}, "loguniform needs a positive lower bound"),
        ({"model.hidden": {"uniform": [8, 64]}}, "uniform draws floats but model.hidden is int"),
        ({"model.dropout": {"normal": [0, 1]}}, "expected one of choice, grid, uniform, loguniform, randint"),
        ({"storage.path": {"choice": ["a", "b"]}}, "tune.space storage.path: storage keys cannot be searched"),
        ({}, "tune.space must be a non-empty mapping"),
        # each value is fine alone, some combinations are not: caught in the sampled trials
        (
            {"model.backbone": {"choice": ["none", "small"]}, "model.head": {"choice": ["lstm", "linear"]}},
            "tune.space: sampled trial",
        ),
    ],
)
def test_bad_spaces_fail_before_any_trial(bad, message):
    with pytest.raises(ConfigError) as e:
        sample(bad, num_samples=20)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_space_entries_can_be_set_from_the_command_line():
    cfg = load_config(None, ["tune.space.model.hidden={choice: [32, 64]}"])
    assert cfg.tune.space["model.hidden"] == {"choice": [32, 64]} and "optim.name" in cfg.tune.space


def test_tune_job_rejects_a_bad_space_before_ray_starts(tmp_path):
    res = run_job(
        "tune.py", "--storage", str(tmp_path), "--set", "tune.space.model.lstm_layer={randint: [1, 3]}", timeout=120
    )
    assert res.returncode == 2 and not ray_started(res.stdout + res.stderr)
    assert res.stderr == (
        "error: tune.space: unknown config key 'model.lstm_layer' (did you mean 'model.lstm_layers'?)\n"
    )
    assert not any(tmp_path.iterdir())
