"""Real Ray Train runs: 2 CPU workers, DDP over gloo, a slice of the bundled MNIST sample."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train
import torch
from conftest import run_job

from lstmclf import records, training, worker
from lstmclf.checkpoint import load_checkpoint, model_from_checkpoint
from lstmclf.config import Config
from lstmclf.data import BatchLoader, to_tensors
from lstmclf.driver import load_data
from lstmclf.engine import evaluate
from lstmclf.errors import ConfigError
from lstmclf.paths import absolute_paths

pytestmark = pytest.mark.slow
# Workers cannot import this test module: ship its functions (the fault-injecting loop) by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = {  # small enough for seconds per epoch on 2 cores, big enough to learn
    "data.limit_train": 2000,
    "data.limit_test": 300,
    "train.epochs": 2,
    "train.batch_size": 32,
    "model.width": 8,
    "model.hidden": 32,
    "model.lstm_layers": 1,
    "optim.lr": 0.005,
    "scaling.num_workers": 2,
    "train.checkpoints_to_keep": 5,
}


def epoch_metrics(run_dir):
    return [json.loads((d / "metrics.json").read_text()) for d in sorted(run_dir.glob("epoch_*"))]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    cfg = Config().override(TINY | {"storage.path": str(tmp_path_factory.mktemp("runs")), "storage.name": "ddp"})
    return cfg, training.fit(cfg, progress=False)


def test_ddp_run_learns(trained):
    cfg, out = trained
    history = epoch_metrics(cfg_run_dir(cfg))
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["val_acc"] > 0.6 and out.test_metrics["acc"] > 0.6  # chance is 0.1
    for key in ("val_precision", "val_recall", "val_f1", "val_loss", "lr", "train_img_s"):
        assert np.isfinite(history[1][key])
    assert out.epochs_run == 2
    summary = json.loads((cfg_run_dir(cfg) / "summary.json").read_text())
    assert summary["best_checkpoint"] == out.best_checkpoint and summary["test"]["acc"] == out.test_metrics["acc"]
    table = records.read_metrics(str(cfg_run_dir(cfg) / "metrics"))  # the run's Parquet metrics table
    assert table["epoch"].to_pylist() == [1, 2] and table["val_acc"].to_pylist() == [m["val_acc"] for m in history]


def cfg_run_dir(cfg):
    return Path(cfg.storage.path) / cfg.storage.name


def test_checkpoint_rebuilds_the_model_that_was_validated(trained):
    """The rebuilt model reproduces, on the driver, the validation metrics the DDP workers reported."""
    cfg, out = trained
    state = load_checkpoint(out.best_checkpoint)
    assert not any(k.startswith("module.") for k in state["model"])  # unwrapped, not DDP's
    assert Config.from_dict(state["config"]) == absolute_paths(cfg)  # the run's config, with its paths made absolute
    assert state["metrics"] == out.best_metrics
    model, _ = model_from_checkpoint(state)
    splits = load_data(cfg)
    info = state["data"]
    loader = BatchLoader(*to_tensors(splits.val, torch.device("cpu")), 256, mean=info["mean"], std=info["std"])
    again = evaluate(model, loader, info["num_classes"], device=torch.device("cpu"))
    assert again["acc"] == pytest.approx(out.best_metrics["val_acc"], abs=1e-9)
    assert again["loss"] == pytest.approx(out.best_metrics["val_loss"], rel=1e-5)
    x = next(iter(loader))[0][:16]
    model2, _ = model_from_checkpoint(load_checkpoint(out.best_checkpoint))
    assert torch.equal(model(x), model2(x))  # identical predictions from two independent loads


def crash_after_first_report(*args, **kwargs):
    """Fault injection through the loop's report hook: epoch 1 is reported, then the worker dies."""
    ray.train.report(*args, **kwargs)
    raise RuntimeError("injected failure after epoch 1")


def test_second_fit_resumes_from_the_checkpoint(ray_cluster, tmp_path, monkeypatch):
    cfg = Config().override(
        TINY
        | {"storage.path": str(tmp_path), "storage.name": "resume", "train.max_failures": 0, "scaling.num_workers": 1}
    )
    splits = load_data(cfg)
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure after epoch 1"):
        worker.make_trainer(cfg, splits, report=crash_after_first_report).fit()
    first = tmp_path / "resume" / "epoch_0001" / "checkpoint.pt"
    assert first.exists() and not (tmp_path / "resume" / "epoch_0002").exists()
    stamp = first.stat().st_mtime_ns

    out = training.fit(cfg, splits=splits, progress=False)  # same storage and name
    assert out.epochs_run == 2 and (tmp_path / "resume" / "epoch_0002" / "checkpoint.pt").exists()
    assert first.stat().st_mtime_ns == stamp  # epoch 1 was not trained (and written) again
    assert load_checkpoint(tmp_path / "resume" / "epoch_0002")["epoch"] == 1

    with pytest.raises(ConfigError, match=r"run resume exists with another config \(model.hidden: 32 -> 64\)"):
        training.fit(cfg.override({"model.hidden": 64}), splits=splits, progress=False)


def test_train_job_end_to_end(ray_cluster, tmp_path):
    """jobs/train.py on the running cluster: epoch lines, summary, and an evaluable best checkpoint."""
    args = ["--storage", str(tmp_path), "--name", "job", *[f"--set={k}={v}" for k, v in TINY.items()]]
    res = run_job("train.py", *args, ray_address=ray_cluster)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "best checkpoint:" in res.stdout and "test (300 images): acc" in res.stdout
    ckpt = res.stdout.split("best checkpoint:")[1].strip().splitlines()[0]
    ev = run_job("evaluate.py", ckpt, "--out", str(tmp_path / "eval"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["confusion"]) == 10 and sum(map(sum, report["confusion"])) == report["images"] == 1000
    assert (tmp_path / "eval" / "report.md").read_text().startswith("# Evaluation")
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
