"""Storage URIs, retries, one-line storage errors, data on S3 with its manifest, the metrics table.

The S3 tests run against a real SeaweedFS on 127.0.0.1 (the session's `s3` fixture)."""

import gzip
import json
import pickle

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from support.helpers import ray_started, run_job
from support.s3 import ACCESS_KEY, NO_CREDENTIALS, SECRET_KEY, SeaweedFS, free_ports

from lstmclf import records, storage
from lstmclf.config import Config
from lstmclf.data import encode_idx, load_splits, prepare_dataset, read_arrays
from lstmclf.errors import ConfigError, DataError, StorageError


def options(fs):
    return pafs.S3FileSystem.__reduce__(fs)[1][0]  # pyarrow's own view of its options


def test_resolve_local_and_s3(tmp_path, monkeypatch):
    fs, path = storage.resolve(str(tmp_path / "x" / ".." / "runs"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs")
    fs, path = storage.resolve("s3://bucket/some/prefix/", "http://127.0.0.1:9000")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert options(fs)["endpoint_override"] == "127.0.0.1:9000" and options(fs)["scheme"] == "http"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://minio.example:9443")
    assert options(storage.resolve("s3://bucket")[0])["endpoint_override"] == "minio.example:9443"
    assert options(storage.resolve("s3://bucket", "http://other:1")[0])["endpoint_override"] == "other:1"
    again = pickle.loads(pickle.dumps(fs))  # as Ray ships it to workers: retries and endpoint kept
    assert type(again) is storage.RetryingS3FileSystem and again == fs  # pyarrow's own pickling gives S3FileSystem
    assert again._args[0] == storage.S3_ATTEMPTS and options(again)["endpoint_override"] == "127.0.0.1:9000"
    assert options(again)["scheme"] == "http" and again._args == fs._args
    few = pickle.loads(pickle.dumps(storage.RetryingS3FileSystem(5, endpoint_override="h:1", region="us-east-1")))
    assert type(few) is storage.RetryingS3FileSystem and few._args[0] == 5  # the count travels, not the default
    with pytest.raises(StorageError, match=r"s3://\*\*\*@bucket/p: credentials do not belong in a URI"):
        storage.resolve(f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/p")


def test_credentials_never_enter_a_config():
    for key in ("storage.path", "storage.registry", "data.path", "storage.s3_endpoint"):
        with pytest.raises(ConfigError, match=f"config value {key}: must not hold credentials"):
            Config().override({key: "s3://AKIA:secret@bucket/x" if "endpoint" not in key else "http://a:b@minio:9000"})
    assert Config().override({"storage.s3_endpoint": "http://127.0.0.1:9000"}).storage.s3_endpoint


def test_transient_errors_are_retried_and_others_are_not():
    """The retry loop: transient errors again after ~1, 2 s (jittered), others at once."""
    refused = real_pyarrow_error(f"127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise refused
        return "done"

    waits: list[float] = []
    assert storage.retry(flaky, "reading x", sleep=waits.append) == "done" and len(calls) == 3
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # jittered doubling
    for e in (FileNotFoundError("x"), StorageError("x")):
        calls.clear()

        def fail(e=e):
            calls.append(1)
            raise e

        with pytest.raises(type(e)):
            storage.retry(fail, "x", sleep=waits.append)
        assert len(calls) == 1  # not retried


def real_pyarrow_error(endpoint: str, **keys: str) -> OSError:
    """The OSError pyarrow's S3 filesystem really raises for one request to `endpoint`."""
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        connect_timeout=1,
        request_timeout=2,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        **keys,
    )
    try:
        fs.get_file_info("lstmclf-test/x")
    except OSError as e:
        return e
    raise AssertionError(f"a request to {endpoint} did not fail")


@pytest.mark.slow
def test_transient_or_not_is_told_from_real_errors(s3):
    """botocore's errors by their codes and types, pyarrow's (which carry no codes) by what the SDK
    really says; each raised by a real request, not written by hand."""
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ClientError

    closed = f"127.0.0.1:{free_ports(1)[0]}"
    assert storage.is_transient(real_pyarrow_error(closed))  # connection refused
    denied = real_pyarrow_error(s3.endpoint.removeprefix("http://"), access_key="nobody", secret_key="wrong-secret")
    assert not storage.is_transient(denied)

    def boto_error(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Exception:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=BotoConfig(retries={"max_attempts": 0}, connect_timeout=1, read_timeout=2),
        )
        try:
            client.head_object(Bucket="lstmclf-test", Key="missing")
        except Exception as e:
            return e
        raise AssertionError("the request did not fail")

    assert storage.is_transient(boto_error(f"http://{closed}"))  # EndpointConnectionError
    assert not storage.is_transient(boto_error(s3.endpoint))  # 404
    assert not storage.is_transient(boto_error(s3.endpoint, "nobody", "wrong-secret"))  # 403
    # Throttling and 5xx cannot be had from a healthy server: botocore's ClientError carries them as codes.
    for code, status in (("SlowDown", 503), ("InternalError", 500), ("RequestTimeout", 400)):
        assert storage.is_transient(
            ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
        )
    assert not storage.is_transient(
        ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    )


@pytest.mark.slow
def test_filesystem_pickles_without_credentials(s3):
    """Ray ships the filesystem to its workers by pickle: the endpoint travels, the secrets do not."""
    fs, path = storage.resolve(s3.uri("pickle"), s3.endpoint)
    blob = pickle.dumps(fs)
    assert SECRET_KEY.encode() not in blob and ACCESS_KEY.encode() not in blob
    storage.write_file(pickle.loads(blob), f"{path}/x.txt", b"hello")  # credentials from the environment
    assert storage.read_bytes(fs, f"{path}/x.txt") == b"hello"


@pytest.mark.slow
def test_unusable_storage_gives_one_clear_line(s3, monkeypatch, tmp_path):
    with pytest.raises(StorageError, match=r"^bucket no-such-bucket does not exist at http://127"):
        storage.check("s3://no-such-bucket/runs", s3.endpoint)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(StorageError, match=rf"^cannot reach the S3 endpoint {dead} for s3://{s3.bucket}/runs"):
        storage.check(f"s3://{s3.bucket}/runs", dead)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match=r"^the AWS credentials were refused at .* \(SignatureDoesNotMatch\)"):
        storage.check(f"s3://{s3.bucket}/runs", s3.endpoint)
    for var in NO_CREDENTIALS:
        monkeypatch.delenv(var)
    with pytest.raises(StorageError, match=r"^no AWS credentials to reach s3://.*: set AWS_ACCESS_KEY_ID"):
        storage.check(f"s3://{s3.bucket}/runs", s3.endpoint)
    monkeypatch.undo()
    storage.check(f"s3://{s3.bucket}/runs", s3.endpoint)  # and the real thing passes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--storage", "s3://no-such-bucket/runs"], {}, "error: bucket no-such-bucket does not exist at "),
        (
            ["--storage", "s3://lstmclf-test/runs", "--s3-endpoint", "http://127.0.0.1:1"],
            {},
            "error: cannot reach the S3 endpoint http://127.0.0.1:1 for s3://lstmclf-test/runs",
        ),
        (["--storage", "s3://lstmclf-test/runs"], NO_CREDENTIALS, "error: no AWS credentials to reach "),
        (["--data", "s3://no-such-bucket/mnist"], {}, "error: bucket no-such-bucket does not exist at "),
    ],
)
def test_train_job_refuses_unusable_storage_before_ray_starts(s3, tmp_path, args, env, message):
    base = ["--storage", str(tmp_path / "runs")] if "--storage" not in args else []
    res = run_job("train.py", *base, *args, env={"AWS_ENDPOINT_URL_S3": s3.endpoint, **env}, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(message), res.stderr
    assert SECRET_KEY not in res.stdout + res.stderr and ACCESS_KEY not in res.stdout + res.stderr
    assert not ray_started(res.stdout + res.stderr) and not (tmp_path / "runs").exists()


def raw_dataset(d, n_train=200, n_test=50):
    """A small uncompressed copy of the bundled sample: a flipped pixel byte still parses as IDX."""
    a = read_arrays("sample")
    d.mkdir()
    for role, name, n in (
        ("train_images", "train-images-idx3-ubyte", n_train),
        ("train_labels", "train-labels-idx1-ubyte", n_train),
        ("test_images", "t10k-images-idx3-ubyte", n_test),
        ("test_labels", "t10k-labels-idx1-ubyte", n_test),
    ):
        (d / name).write_bytes(encode_idx(a[role][:n], compress=False))
    return d


@pytest.mark.slow
def test_data_published_to_s3_is_verified_by_its_manifest(s3, tmp_path):
    src = raw_dataset(tmp_path / "src")
    uri = s3.uri("mnist")
    res = run_job("prepare_data.py", str(src), uri, "--s3-endpoint", s3.endpoint, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"published {uri}: 200 train / 50 test images of [28, 28], 10 classes")
    assert s3.keys(uri) == [
        "manifest.json",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    manifest = json.loads(s3.get(f"{uri}/manifest.json"))
    assert manifest["counts"] == {"train": 200, "test": 50}
    assert manifest["files"]["train-images-idx3-ubyte"]["shape"] == [200, 28, 28]

    local, remote = load_splits(str(src)), load_splits(uri, endpoint=s3.endpoint)
    assert np.array_equal(local.train.images, remote.train.images) and np.array_equal(
        local.test.labels, remote.test.labels
    )
    again, uploaded = prepare_dataset(str(src), uri, endpoint=s3.endpoint)  # idempotent
    assert not uploaded and again == manifest
    with pytest.raises(DataError, match="already holds another dataset"):
        prepare_dataset(str(raw_dataset(tmp_path / "other", n_train=100)), uri, endpoint=s3.endpoint)

    raw = bytearray(s3.get(f"{uri}/train-images-idx3-ubyte"))
    raw[16 + 28 * 14 + 14] ^= 0x40  # one pixel of the first image: still a valid IDX file
    s3.put(f"{uri}/train-images-idx3-ubyte", bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte does not match the sha256 in its manifest.json"):
        load_splits(uri, endpoint=s3.endpoint)
    res = run_job(
        "train.py", "--data", uri, "--s3-endpoint", s3.endpoint, "--storage", str(tmp_path / "runs"), timeout=120
    )
    assert res.returncode == 2 and res.stderr == (
        f"error: dataset {uri}: train-images-idx3-ubyte does not match "
        "the sha256 in its manifest.json (corrupt or replaced)\n"
    )

    gz = tmp_path / "gz"  # the same set gzipped, forced over it: the raw objects go, one file per role stays
    gz.mkdir()
    for p in src.iterdir():
        (gz / f"{p.name}.gz").write_bytes(gzip.compress(p.read_bytes()))
    assert prepare_dataset(str(gz), uri, endpoint=s3.endpoint, force=True)[1]
    # pyarrow's delete_file also PUTs an empty "{prefix}/" directory marker (apache/arrow#36275): no file
    assert [k for k in s3.keys(uri) if k] == [
        "manifest.json",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert np.array_equal(load_splits(uri, endpoint=s3.endpoint).train.images, local.train.images)


def test_metrics_records_read_as_one_table(tmp_path):
    table_uri = str(tmp_path / "exp" / "metrics")
    cfg = Config().override({"model.hidden": 48})
    for trial in ("t_00001", "t_00000"):
        for epoch in (2, 1):
            records.write_record(
                table_uri,
                trial,
                epoch,
                cfg.to_dict(),
                {"epoch": epoch, "val_acc": epoch / 4, "lr": 1 if trial.endswith("1") else 0.5},
            )
    records.write_record(table_uri, "t_00000", 2, cfg.to_dict(), {"epoch": 2, "val_acc": 0.9, "lr": 0.5})  # again
    t = records.read_metrics(table_uri)
    assert t["trial_id"].to_pylist() == ["t_00000", "t_00000", "t_00001", "t_00001"]
    assert t["epoch"].to_pylist() == [1, 2, 1, 2] and t["val_acc"].to_pylist() == [0.25, 0.9, 0.25, 0.5]
    assert t["model.hidden"].to_pylist() == [48] * 4 and t["lr"].to_pylist() == [0.5, 0.5, 1.0, 1.0]
    assert json.loads(t["tune.space"][0].as_py()) == cfg.to_dict()["tune"]["space"]
    plain = ds.dataset(table_uri, format="parquet", partitioning="hive").to_table()  # no lstmclf, no Ray
    assert plain.num_rows == 4 and set(plain["trial_id"].to_pylist()) == {"t_00000", "t_00001"}
    assert not [p for p in (tmp_path / "exp").rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_a_write_rides_through_an_s3_outage(tmp_path):
    """The S3 server is killed; a write started meanwhile finishes once it is back (the SDK's retries)."""
    import threading
    import time

    server = SeaweedFS(tmp_path / "weed")
    server.start()
    try:
        server.create_bucket("outage")
        fs = pickle.loads(pickle.dumps(storage.resolve("s3://outage", server.endpoint)[0]))  # as a worker's
        storage.write_file(fs, "outage/before.txt", b"before")
        server.stop()
        down = time.monotonic()
        timer = threading.Timer(3.0, server.start)  # back after 3 s (and ~10 s of its own start-up)
        timer.start()
        storage.write_file(fs, "outage/during.txt", b"during")  # blocks until the server is back
        waited = time.monotonic() - down
        timer.join()
        assert waited > 3.0  # it could not have been written while the server was down
        assert storage.read_bytes(fs, "outage/during.txt") == b"during"
        assert storage.read_bytes(fs, "outage/before.txt") == b"before"
    finally:
        server.stop()
