import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.s3 import AWS_ENV, AWS_UNSET, S3, SeaweedFS

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (dashboard on: Train needs its state API).

    4 logical CPUs on 2 cores: enough for 2-worker DDP runs and for Tune to hold more than one trial.
    Yields the GCS address, so jobs started as subprocesses join the same cluster.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_job(
    script: str,
    *args: str,
    ray_address: str | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """Run a jobs/ script the way a user does; joins the test cluster when given its address.
    `env` adds variables to the job's environment (None removes one)."""
    overrides = env or {}
    env = {k: v for k, v in os.environ.items() if k not in overrides}
    env |= {k: v for k, v in overrides.items() if v is not None}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


def ray_started(output: str) -> bool:
    """Whether a job's output says it started or joined Ray (ours, or Ray's own INFO line with --verbose)."""
    return re.search(r"(?i)started a local Ray|joined the Ray cluster", output) is not None
