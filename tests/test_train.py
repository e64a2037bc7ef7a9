"""Real Ray Train runs: 2 CPU workers, DDP over gloo, a slice of the bundled MNIST sample. The job's
resume of a dead run runs once per `store`: a local directory, and a real S3 server's bucket
(SeaweedFS) that the data is read from too. The shared DDP run is on S3 only (`ONE_STORE`;
test_main_job checks what a run leaves in a local directory). And a run rides through its S3 server
going down."""

import functools
import json
import re
import threading
import time

import numpy as np
import pyarrow.dataset as ds
import pytest
import ray.train
import torch
from support.helpers import (
    CHECKPOINT_FILES,
    ONE_STORE,
    TINY,
    crash_after_first_report,
    epoch_dirs,
    report_and_log,
    run_job,
    sets,
    wait_for_report,
)
from support.s3 import ACCESS_KEY, SECRET_KEY, SeaweedFS

from lstmclf import records, training, worker
from lstmclf.checkpoint import checkpoint_files, load_checkpoint, model_from_checkpoint
from lstmclf.config import Config
from lstmclf.data import BatchLoader, to_tensors
from lstmclf.driver import load_data
from lstmclf.engine import evaluate
from lstmclf.errors import ConfigError
from lstmclf.paths import absolute_paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(ray_cluster, store):
    """One DDP run, shared by the tests that read it (`ONE_STORE`): (config, outcome, run URI, epoch metrics)."""
    cfg = Config().override(TINY | store.overrides("ddp"))
    out = training.fit(cfg, progress=False)
    run = f"{cfg.storage.path}/ddp"
    history = [json.loads(store.read(f"{run}/{d}/metrics.json")) for d in epoch_dirs(store.keys(run))]
    return cfg, out, run, history


@ONE_STORE
def test_ddp_run_learns(trained):
    cfg, out, run, history = trained
    assert out.run_path == run
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["val_acc"] > 0.6 and out.test_metrics["acc"] > 0.6  # chance is 0.1
    for key in ("val_precision", "val_recall", "val_f1", "val_loss", "lr", "train_img_s"):
        assert np.isfinite(history[1][key])
    assert out.epochs_run == 2
    # Each of the 2 workers computes on its 1 reserved CPU, not on every core (torch's default).
    assert history[1]["threads"] == cfg.scaling.cpus_per_worker == 1 < torch.get_num_threads()


@ONE_STORE
def test_checkpoints_summary_and_metrics_table_land_in_storage(trained, store):
    cfg, out, run, history = trained
    keys = store.keys(run)
    for epoch in (1, 2):
        assert {f"epoch_{epoch:04d}/{f}" for f in CHECKPOINT_FILES} <= set(keys)
        assert f"metrics/trial_id=ddp/epoch={epoch}.parquet" in keys
    assert "checkpoint_manager_snapshot.json" in keys and "summary.json" in keys
    assert out.best_checkpoint.startswith(f"{run}/epoch_")
    summary = json.loads(store.read(f"{run}/summary.json"))
    assert summary["best_checkpoint"] == out.best_checkpoint and summary["test"]["acc"] == out.test_metrics["acc"]

    table = records.read_metrics(f"{run}/metrics", store.endpoint)  # the run's Parquet metrics table
    assert table["epoch"].to_pylist() == [1, 2] and table["trial_id"].to_pylist() == ["ddp", "ddp"]
    assert table["val_acc"].to_pylist() == [m["val_acc"] for m in history]  # each epoch's metrics.json
    assert table["model.hidden"].to_pylist() == [32, 32] and table["data.path"][0].as_py() == cfg.data.path
    # Plain pyarrow reads it too: no lstmclf, no Ray.
    fs, path = store.plain_fs(f"{run}/metrics")
    plain = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    assert sorted(plain.to_table(columns=["epoch"])["epoch"].to_pylist()) == [1, 2]

    for key in keys:  # credentials appear in no config, checkpoint, metrics file or Ray state
        body = store.read(f"{run}/{key}")
        assert SECRET_KEY.encode() not in body and ACCESS_KEY.encode() not in body, key


@ONE_STORE
def test_checkpoint_rebuilds_the_model_that_was_validated(trained, store):
    """The rebuilt model reproduces, on the driver, the validation metrics the DDP workers reported."""
    cfg, out, _, _ = trained
    state = load_checkpoint(out.best_checkpoint, store.endpoint)
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
    model2, _ = model_from_checkpoint(load_checkpoint(out.best_checkpoint, store.endpoint))
    assert torch.equal(model(x), model2(x))  # identical predictions from two independent loads


def test_train_job_resumes_a_dead_run_and_its_best_checkpoint_evaluates(ray_cluster, store, tmp_path):
    """A run dies after epoch 1 (no restart allowed); jobs/train.py with the same storage and name, on
    the running cluster, trains epoch 2 only, from the stored checkpoint, and prints its test result
    and best checkpoint, which jobs/evaluate.py then evaluates. Another config under the name is refused."""
    cfg = Config().override(TINY | store.overrides("resume") | {"train.max_failures": 0, "scaling.num_workers": 1})
    run = f"{cfg.storage.path}/resume"
    splits = load_data(cfg)
    recorder = worker.EpochRecorder(f"{run}/metrics", "resume", cfg.to_dict(), store.endpoint)
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure after epoch 1"):
        worker.make_trainer(cfg, splits, callbacks=[recorder], report=crash_after_first_report).fit()
    keys = store.keys(run)
    assert {f"epoch_0001/{f}" for f in CHECKPOINT_FILES} <= set(keys) and not any("epoch_0002" in k for k in keys)
    first = store.stamps(run)["epoch_0001/checkpoint.pt"]

    args = [*sets(TINY), "--workers", "1", "--set", "train.max_failures=0"]
    res = run_job(
        "train.py", *store.args, "--storage", cfg.storage.path, "--name", "resume", *args, ray_address=ray_cluster
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 2/2" in res.stdout and "epoch 1/2" not in res.stdout  # epoch 1 came from storage
    assert f"best checkpoint: {run}/epoch_000" in res.stdout and "test (300 images): acc" in res.stdout
    assert store.stamps(run)["epoch_0001/checkpoint.pt"] == first  # epoch 1 was not trained (and written) again
    assert load_checkpoint(f"{run}/epoch_0002", store.endpoint)["epoch"] == 1
    assert json.loads(store.read(f"{run}/summary.json"))["epochs_run"] == 2
    assert records.read_metrics(f"{run}/metrics", store.endpoint)["epoch"].to_pylist() == [1, 2]

    ckpt = res.stdout.split("best checkpoint:")[1].strip().splitlines()[0]
    ev = run_job("evaluate.py", ckpt, "--out", str(tmp_path / "eval"), *store.endpoint_args)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["confusion"]) == 10 and sum(map(sum, report["confusion"])) == report["images"] == 1000
    assert (tmp_path / "eval" / "report.md").read_text().startswith("# Evaluation")
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(ConfigError, match=r"run resume exists with another config \(model.hidden: 32 -> 64\)"):
        training.fit(cfg.override({"model.hidden": 64}), splits=splits, progress=False)


def test_a_run_without_a_validation_split_keeps_its_last_epoch(ray_cluster, tmp_path):
    """data.val_fraction 0, as a user trains a chosen recipe on every training image: jobs/train.py from
    another directory with a relative storage, 2 DDP workers. Nothing is validated, the checkpoints kept
    are the latest ones, the last epoch's is the run's best and the test set scores it."""
    overrides = TINY | {"data.val_fraction": 0, "train.epochs": 3, "train.checkpoints_to_keep": 2}
    res = run_job(
        "train.py", *sets(overrides), "--storage", "out", "--name", "all", ray_address=ray_cluster, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "out" / "all"
    assert re.findall(r"^epoch (\d)/3  train_loss [\d.]+  no validation split  ", res.stdout, re.M) == ["1", "2", "3"]
    assert "run " + str(run) + ": 3 epochs, no validation split: kept the last epoch (3)\n" in res.stdout
    assert f"best checkpoint: {run}/epoch_0003" in res.stdout and "test (300 images): acc" in res.stdout
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_0002", "epoch_0003"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 3 and summary["best_checkpoint"] == f"{run}/epoch_0003"
    assert summary["test"]["acc"] > 0.5 and not any(k.startswith("val_") for k in summary["best_val"])
    table = records.read_metrics(str(run / "metrics"))
    assert table["epoch"].to_pylist() == [1, 2, 3] and not any(c.startswith("val_") for c in table.column_names)


def test_training_rides_through_an_s3_outage(ray_cluster, tmp_path):
    """The S3 server is killed after epoch 1 and started again while epoch 2's checkpoint is being
    uploaded: the run finishes (no worker restart allowed), and every checkpoint is whole."""
    server = SeaweedFS(tmp_path / "weed")
    server.start()
    try:
        server.create_bucket("faults")
        cfg = Config().override(
            TINY
            | {
                "storage.path": "s3://faults/runs",
                "storage.name": "outage",
                "storage.s3_endpoint": server.endpoint,
                "train.epochs": 3,
                "train.max_failures": 0,
                "scaling.num_workers": 1,
            }
        )
        run = "s3://faults/runs/outage"
        marks = tmp_path / "marks"
        marks.mkdir()
        recorder = worker.EpochRecorder(f"{run}/metrics", "outage", cfg.to_dict(), server.endpoint)
        trainer = worker.make_trainer(
            cfg, load_data(cfg), callbacks=[recorder], report=functools.partial(report_and_log, str(marks))
        )
        outcome: dict = {}

        def fit():
            try:
                outcome["result"] = trainer.fit()
            except BaseException as e:
                outcome["error"] = e

        thread = threading.Thread(target=fit)
        thread.start()
        wait_for_report(marks, 1, "end")
        server.stop()
        wait_for_report(marks, 2, "start")
        time.sleep(2)  # epoch 2's upload is failing and being retried now
        restarted = time.time()  # before start(): its readiness poll can lag the server by 0.3 s
        server.start()
        thread.join(timeout=600)
        assert "error" not in outcome, repr(outcome.get("error"))
        assert outcome["result"].metrics["epoch"] == 3
        assert wait_for_report(marks, 2, "end") > restarted  # epoch 2's report waited for the server

        client = server.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="faults", Prefix="runs/outage/")["Contents"])
        dirs = epoch_dirs(keys, "runs/outage")
        assert dirs == ["epoch_0001", "epoch_0002", "epoch_0003"]
        for d in dirs:  # whole: every file there and matching its manifest's sha256
            assert {f"runs/outage/{d}/{f}" for f in CHECKPOINT_FILES} <= set(keys)
            checkpoint_files(f"{run}/{d}", server.endpoint)
        assert records.read_metrics(f"{run}/metrics", server.endpoint)["epoch"].to_pylist() == [1, 2, 3]
    finally:
        server.stop()
