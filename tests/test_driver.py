"""Paths a job takes: relative means relative to where the user ran it, made absolute on the driver."""

import os
from pathlib import Path

import pytest

from lstmclf.config import Config
from lstmclf.errors import ConfigError
from lstmclf.paths import JOB_ENV, absolute_path, absolute_paths


def test_relative_paths_become_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(JOB_ENV, raising=False)
    cfg = absolute_paths(
        Config().override(
            {
                "data.path": "../data",
                "model.pretrained": "w.pt",
                "storage.registry": "~/reg",
                "tune.space": {"model.pretrained": {"choice": ["", "a.pt"]}, "optim.lr": {"uniform": [0.001, 0.01]}},
            }
        )
    )
    assert cfg.storage.path == str(tmp_path / "runs")  # the default, ./runs
    assert cfg.data.path == str(tmp_path.parent / "data")
    assert cfg.model.pretrained == str(tmp_path / "w.pt")
    assert cfg.storage.registry == str(Path.home() / "reg")
    assert cfg.tune.space == {
        "model.pretrained": {"choice": ["", str(tmp_path / "a.pt")]},
        "optim.lr": {"uniform": [0.001, 0.01]},
    }
    assert absolute_paths(cfg) == cfg  # idempotent
    kept = Config().override({"storage.path": "s3://b/x", "data.path": "sample"})
    assert absolute_paths(kept).storage.path == "s3://b/x" and absolute_paths(kept).data.path == "sample"


def test_under_ray_job_submit_a_relative_place_to_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(JOB_ENV, "{}")  # what Ray's job supervisor sets for a submitted entrypoint
    with pytest.raises(ConfigError, match=r"storage.path 'runs' is a relative path: under `ray job submit` it would"):
        absolute_paths(Config())
    with pytest.raises(ConfigError, match="--out 'eval' is a relative path"):
        absolute_path("eval", "--out")
    cfg = absolute_paths(
        Config().override({"storage.path": "/shared/runs", "storage.registry": "s3://m/r", "data.path": "data/mnist"})
    )
    assert cfg.data.path == str(tmp_path / "data" / "mnist")  # inputs: relative to the job's working directory
    assert os.path.isabs(cfg.storage.path)
    assert absolute_paths(Config().override({"storage.path": "/shared/runs"})).storage.registry == "registry"
    with pytest.raises(ConfigError, match=r"storage\.registry 'registry' is a relative path"):  # a job that writes it
        absolute_paths(Config().override({"storage.path": "/shared/runs"}), writes=("storage.path", "storage.registry"))
