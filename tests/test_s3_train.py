"""Ray Train on object storage: test_train.py's scenarios against a real S3 server (SeaweedFS),
with the data read from the bucket, and a run that rides through the server going down."""

import functools
import json
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
import ray
import ray.train
from conftest import run_job
from support.s3 import ACCESS_KEY, SECRET_KEY, SeaweedFS
from test_train import TINY, crash_after_first_report

from lstmclf import records, training, worker
from lstmclf.checkpoint import checkpoint_files, load_checkpoint
from lstmclf.config import Config
from lstmclf.data import prepare_dataset
from lstmclf.driver import load_data
from lstmclf.paths import absolute_paths

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
CHECKPOINT_FILES = ("checkpoint.pt", "config.yaml", "manifest.json", "metrics.json")


@pytest.fixture(scope="module")
def s3_data(s3):
    """The bundled sample, published to the bucket with its manifest."""
    uri = s3.uri("mnist")
    prepare_dataset("sample", uri, endpoint=s3.endpoint)
    return uri


def s3_config(s3, data, name, **extra):
    return Config().override(
        TINY
        | {"data.path": data, "storage.path": s3.uri("runs"), "storage.name": name, "storage.s3_endpoint": s3.endpoint}
        | extra
    )


@pytest.fixture(scope="module")
def trained(ray_cluster, s3, s3_data):
    cfg = s3_config(s3, s3_data, "ddp")
    return cfg, training.fit(cfg, progress=False)


def test_checkpoints_metrics_and_results_land_in_the_bucket(s3, trained):
    cfg, out = trained
    run = f"{cfg.storage.path}/ddp"
    keys = s3.keys(run)
    for epoch in (1, 2):
        assert {f"epoch_{epoch:04d}/{f}" for f in CHECKPOINT_FILES} <= set(keys)
        assert f"metrics/trial_id=ddp/epoch={epoch}.parquet" in keys
    assert "checkpoint_manager_snapshot.json" in keys and "summary.json" in keys
    assert out.best_checkpoint.startswith(f"{run}/epoch_") and out.test_metrics["acc"] > 0.6  # chance: 0.1
    summary = json.loads(s3.get(f"{run}/summary.json"))
    assert summary["best_checkpoint"] == out.best_checkpoint and summary["test"]["acc"] == out.test_metrics["acc"]
    state = load_checkpoint(out.best_checkpoint, s3.endpoint)
    assert Config.from_dict(state["config"]) == absolute_paths(cfg) and state["metrics"] == out.best_metrics

    table = records.read_metrics(f"{run}/metrics", s3.endpoint)
    assert table["epoch"].to_pylist() == [1, 2] and table["trial_id"].to_pylist() == ["ddp", "ddp"]
    assert table["model.hidden"].to_pylist() == [32, 32] and table["data.path"][0].as_py() == cfg.data.path
    for row in table.to_pylist():
        assert row["val_acc"] == json.loads(s3.get(f"{run}/epoch_{row['epoch']:04d}/metrics.json"))["val_acc"]
    # Plain pyarrow reads it too: no lstmclf, no Ray.
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint.split("://")[1], scheme="http", region="us-east-1")
    plain = ds.dataset(f"{run.removeprefix('s3://')}/metrics", filesystem=fs, format="parquet", partitioning="hive")
    assert sorted(plain.to_table(columns=["epoch"])["epoch"].to_pylist()) == [1, 2]

    for key in keys:  # credentials appear in no config, checkpoint, metrics file or Ray state
        body = s3.get(f"{run}/{key}")
        assert SECRET_KEY.encode() not in body and ACCESS_KEY.encode() not in body, key


def test_a_run_resumes_from_the_bucket(ray_cluster, s3, s3_data):
    """A run dies after epoch 1; jobs/train.py with the same storage and name resumes from the bucket."""
    cfg = s3_config(s3, s3_data, "resume", **{"train.max_failures": 0, "scaling.num_workers": 1})
    run = f"{cfg.storage.path}/resume"
    recorder = worker.EpochRecorder(f"{run}/metrics", "resume", cfg.to_dict(), s3.endpoint)
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure after epoch 1"):
        worker.make_trainer(cfg, load_data(cfg), callbacks=[recorder], report=crash_after_first_report).fit()
    keys = s3.keys(run)
    assert {f"epoch_0001/{f}" for f in CHECKPOINT_FILES} <= set(keys) and not any("epoch_0002" in k for k in keys)
    bucket, prefix = run.removeprefix("s3://").split("/", 1)
    first = s3.client().head_object(Bucket=bucket, Key=f"{prefix}/epoch_0001/checkpoint.pt")

    args = [f"--set={k}={v}" for k, v in TINY.items()] + ["--workers", "1", "--set", "train.max_failures=0"]
    res = run_job(
        "train.py",
        "--data",
        s3_data,
        "--storage",
        cfg.storage.path,
        "--name",
        "resume",
        "--s3-endpoint",
        s3.endpoint,
        *args,
        ray_address=ray_cluster,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 2/2" in res.stdout and "epoch 1/2" not in res.stdout  # epoch 1 came from the bucket
    assert f"best checkpoint: {run}/epoch_000" in res.stdout
    again = s3.client().head_object(Bucket=bucket, Key=f"{prefix}/epoch_0001/checkpoint.pt")
    assert again["ETag"] == first["ETag"] and again["LastModified"] == first["LastModified"]  # not rewritten
    assert load_checkpoint(f"{run}/epoch_0002", s3.endpoint)["epoch"] == 1
    assert records.read_metrics(f"{run}/metrics", s3.endpoint)["epoch"].to_pylist() == [1, 2]


def report_and_log(marks, metrics, **kwargs):
    """The loop's report hook: every report's start and end go to a local file the test watches."""
    log = Path(marks) / "reports.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"epoch": metrics["epoch"], "event": "start", "t": time.time()}) + "\n")
    ray.train.report(metrics, **kwargs)
    with log.open("a") as f:
        f.write(json.dumps({"epoch": metrics["epoch"], "event": "end", "t": time.time()}) + "\n")


def wait_for(marks, epoch, event, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = marks / "reports.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            m = json.loads(line)
            if (m["epoch"], m["event"]) == (epoch, event):
                return m["t"]
        time.sleep(0.2)
    raise TimeoutError(f"epoch {epoch} {event} not seen")


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
        wait_for(marks, 1, "end")
        server.stop()
        wait_for(marks, 2, "start")
        time.sleep(2)  # epoch 2's upload is failing and being retried now
        restarted = time.time()  # before start(): its readiness poll can lag the server by 0.3 s
        server.start()
        thread.join(timeout=600)
        assert "error" not in outcome, repr(outcome.get("error"))
        assert outcome["result"].metrics["epoch"] == 3
        assert wait_for(marks, 2, "end") > restarted  # epoch 2's report waited for the server

        client = server.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="faults", Prefix="runs/outage/")["Contents"])
        dirs = sorted({k.split("/")[2] for k in keys if k.split("/")[2].startswith("epoch_")})
        assert dirs == ["epoch_0001", "epoch_0002", "epoch_0003"]
        for d in dirs:  # whole: every file there and matching its manifest's sha256
            assert {f"runs/outage/{d}/{f}" for f in CHECKPOINT_FILES} <= set(keys)
            checkpoint_files(f"{run}/{d}", server.endpoint)
        assert records.read_metrics(f"{run}/metrics", server.endpoint)["epoch"].to_pylist() == [1, 2, 3]
    finally:
        server.stop()
