"""Bad input through the entry scripts: one line on stderr, exit status 2, nothing written."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from support.helpers import ray_started, run_job
from support.inputs import write_checkpoint

from lstmclf.data import encode_idx


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.lstm_layer=3"], "error: unknown config key 'model.lstm_layer' (did you mean"),
        (["--set", "model.dropout=1.5"], "error: config value model.dropout: 1.5 is outside [0, 1)"),
        (["--workers", "0"], "error: config value scaling.num_workers: 0 < 1"),
        (["--config", "/nonexistent.yaml"], "error: cannot read config file /nonexistent.yaml"),
        (["--data", "/nonexistent"], "error: dataset /nonexistent: /nonexistent does not exist"),
        (["--set", "model.pretrained=/nonexistent.pt"], "error: pretrained weights /nonexistent.pt not found"),
        (["--workers", "3", "--set", "data.limit_train=20"], "error: 2 val images cannot be shared by 3 workers"),
    ],
)
def test_train_job_rejects_bad_input_before_ray_starts(tmp_path, args, message):
    res = run_job("train.py", "--storage", str(tmp_path / "runs"), *args, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == res.stderr.strip().splitlines()[-1]  # exactly one line
    assert res.stderr.startswith(message), res.stderr
    assert not ray_started(res.stdout + res.stderr)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("job", ["tune.py", "compare.py"])
def test_jobs_that_rank_by_validation_refuse_no_validation_split_before_ray_starts(tmp_path, job):
    res = run_job(job, "--storage", str(tmp_path / "runs"), "--set", "data.val_fraction=0", timeout=120)
    assert res.returncode == 2 and not ray_started(res.stdout + res.stderr)
    assert res.stderr == (
        "error: config value data.val_fraction: 0 leaves no validation split, and this job ranks its runs by "
        "validation accuracy (0 is for jobs/train.py, to train a chosen recipe on every training image)\n"
    )
    assert not (tmp_path / "runs").exists()


def test_evaluate_refuses_a_tampered_or_missing_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "good")
    res = run_job("evaluate.py", str(tmp_path / "good"), "--out", str(tmp_path / "eval"), timeout=120)
    assert res.returncode == 0, res.stderr  # the untampered one evaluates (random weights: ~10%)

    write_checkpoint(tmp_path / "bad")
    raw = bytearray((tmp_path / "bad" / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the tensor data: still unpickles
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(bytes(raw))
    res = run_job("evaluate.py", str(tmp_path / "bad"), "--out", str(tmp_path / "eval-bad"), timeout=120)
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr == f"error: checkpoint {tmp_path}/bad/checkpoint.pt does not match the sha256 in its "
        "manifest.json (tampered or corrupt)\n"
    )
    assert not (tmp_path / "eval-bad").exists()

    write_checkpoint(tmp_path / "evil")
    # os.system runs code if unpickled (not print: once Ray is imported here, print is Ray's safe_print)
    torch.save({"format": 1, "model": {}, "evil": os.system}, tmp_path / "evil" / "checkpoint.pt")
    manifest = json.loads((tmp_path / "evil" / "manifest.json").read_text())
    manifest["files"]["checkpoint.pt"] = hashlib.sha256((tmp_path / "evil" / "checkpoint.pt").read_bytes()).hexdigest()
    (tmp_path / "evil" / "manifest.json").write_text(json.dumps(manifest))  # even with a matching hash
    res = run_job("evaluate.py", str(tmp_path / "evil" / "checkpoint.pt"), timeout=120)
    assert res.returncode == 2 and "\n" not in res.stderr[:-1]
    refused = f"error: checkpoint {tmp_path}/evil/checkpoint.pt is refused: it holds Python objects other than tensors "
    assert res.stderr.startswith(refused + "and plain values (") and f"{os.system.__module__}.system" in res.stderr
    assert res.stderr.endswith("), which unpickling could run as code\n")  # torch's reason, then why it matters

    res = run_job("evaluate.py", str(tmp_path / "nowhere"), timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: checkpoint") and "does not exist" in res.stderr


def test_evaluate_reads_only_the_test_files_with_the_checkpoints_classes(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    d = tmp_path / "data"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(b"never read")  # and no training labels at all
    (d / "t10k-images-idx3-ubyte").write_bytes(encode_idx(np.zeros((30, 28, 28), np.uint8)))
    labels = np.arange(30, dtype=np.uint8) % 10
    (d / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    res = run_job("evaluate.py", str(tmp_path / "ckpt"), "--data", str(d), "--out", str(tmp_path / "eval"), timeout=120)
    assert res.returncode == 0 and res.stdout.splitlines()[0].endswith("(30 test images)"), res.stderr
    labels[[3, 7]] = 12  # beyond the checkpoint's 10 classes
    (d / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    res = run_job("evaluate.py", str(tmp_path / "ckpt"), "--data", str(d), "--out", str(tmp_path / "bad"), timeout=120)
    assert res.returncode == 2 and res.stderr == (
        f"error: dataset {d} test labels: label 12 at index 3 is out of range [0, 10) (2 such labels)\n"
    )
    assert not (tmp_path / "bad").exists()
