"""Fixtures only; what tests share besides them is in `support.helpers` (and `support.s3`)."""

import os

import pytest
from support.helpers import LocalStore, S3Store
from support.s3 import AWS_ENV, AWS_UNSET, S3, SeaweedFS


@pytest.fixture(scope="session", autouse=True)
def aws_test_env():
    """The session's AWS environment: the test S3 servers' key pair, nothing from ~/.aws, no
    instance-role lookups. Autouse, so it is in place before Ray starts and its workers inherit it."""
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, *AWS_UNSET)}
    for k in AWS_UNSET:
        os.environ.pop(k, None)
    os.environ.update(AWS_ENV)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One SeaweedFS S3 server for the session with a bucket; tests take fresh prefixes with
    `s3.uri(name)`. Yields `support.s3.S3` (endpoint, bucket, client(), env(), keys(uri))."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket("lstmclf-test")
        yield S3(server, "lstmclf-test")
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["local", "s3"])
def store(request, tmp_path_factory):
    """Where a scenario keeps its runs, once per kind of storage (as Ray's own persistence tests
    parametrise theirs): a local directory, or a prefix in the session's S3 bucket with the data
    read from the bucket too. Module-scoped, so a module's shared runs are made once per kind. A test
    that needs only one pins it: `@pytest.mark.parametrize("store", ["s3"], indirect=True)`."""
    if request.param == "s3":
        return S3Store(request.getfixturevalue("s3"))
    return LocalStore(tmp_path_factory)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (dashboard on: Train needs its state API).

    4 logical CPUs on 2 cores: enough for 2-worker DDP runs and for Tune to hold more than one trial.
    Yields the GCS address, so jobs started as subprocesses join the same cluster.
    """
    import ray

    from lstmclf.driver import RUNTIME_ENV

    # address="local": a Ray that someone started on this machine with `ray start` is not ours to join.
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        log_to_driver=False,
        configure_logging=False,
        runtime_env=RUNTIME_ENV,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
