"""Ray Tune on object storage: an experiment whose trials, metrics table and results all live in a
real S3 bucket (SeaweedFS), and that resumes from the bucket."""

import io
import json

import pyarrow.parquet as pq
import pytest
import yaml
from support.helpers import TINY

from lstmclf import records, tuning
from lstmclf.config import Config

pytestmark = pytest.mark.slow
CHECKPOINT_FILES = ("checkpoint.pt", "config.yaml", "manifest.json", "metrics.json")


def modified(s3, uri: str) -> dict[str, object]:
    """Key -> LastModified of every object under an s3:// prefix."""
    bucket, prefix = uri.split("://", 1)[1].split("/", 1)
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"]: o["LastModified"] for page in pages for o in page.get("Contents", [])}


def test_experiment_lives_in_the_bucket_and_resumes_from_it(ray_cluster, s3):
    cfg = Config().override(
        TINY
        | {
            "storage.path": s3.uri("experiments"),
            "storage.name": "asha-s3",
            "storage.s3_endpoint": s3.endpoint,
            "scaling.num_workers": 1,
            "tune.num_samples": 2,
            "tune.max_concurrent": 2,
            "data.limit_train": 1200,
            "tune.space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}},
        }
    )
    out = tuning.run_experiment(cfg)
    assert out.experiment == f"{cfg.storage.path}/asha-s3" and not out.resumed
    rows = out.table.to_pylist()
    assert len(rows) == 2 and "error" not in {r["status"] for r in rows}
    assert all(r["checkpoint"].startswith(f"{out.experiment}/trials/") for r in rows)

    keys = set(s3.keys(out.experiment))
    assert {
        "results.csv",
        "results.parquet",
        "results.md",
        "best_recipe.yaml",
        "summary.json",
        "lstmclf_experiment.yaml",
    } <= keys
    for r in rows:  # every trial's best checkpoint is complete in the bucket
        ckpt = r["checkpoint"].removeprefix(out.experiment + "/")
        assert {f"{ckpt}/{f}" for f in CHECKPOINT_FILES} <= keys
    table = records.read_metrics(f"{out.experiment}/metrics", endpoint=s3.endpoint)
    assert sorted(set(table["trial_id"].to_pylist())) == sorted(r["trial_id"] for r in rows)
    assert table.num_rows >= sum(r["epochs_run"] for r in rows)
    assert pq.read_table(io.BytesIO(s3.get(f"{out.experiment}/results.parquet"))).num_rows == 2
    assert json.loads(s3.get(f"{out.experiment}/summary.json"))["best_checkpoint"] == rows[0]["checkpoint"]
    recipe = yaml.safe_load(s3.get(f"{out.experiment}/best_recipe.yaml"))
    assert recipe["optim"]["lr"] == pytest.approx(rows[0]["optim.lr"])

    stamps = modified(s3, f"{out.experiment}/trials")
    again = tuning.run_experiment(cfg)  # same name: restored from the bucket, finished trials kept
    assert again.resumed and sorted(again.table["trial_id"].to_pylist()) == sorted(r["trial_id"] for r in rows)
    assert modified(s3, f"{out.experiment}/trials") == stamps  # nothing trained again
