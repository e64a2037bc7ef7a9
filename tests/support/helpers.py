"""What the Ray tests share: the tiny config, jobs run as a user runs them, the two kinds of storage a
scenario runs over (`Store`), the loop's fault-injecting report hooks, and waits on Ray's state.

Ray's workers cannot import this module (tests/ is not on their path): its functions are shipped
to them by value.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import ray.train

from lstmclf.driver import job_env
from support.s3 import S3

ROOT = Path(__file__).resolve().parents[2]
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
CHECKPOINT_FILES = ("checkpoint.pt", "config.yaml", "manifest.json", "metrics.json")
RESULTS = (  # what a finished experiment leaves in its directory besides trials/ and metrics/
    "results.csv",
    "results.parquet",
    "results.md",
    "best_recipe.yaml",
    "summary.json",
    "lstmclf_experiment.yaml",
)
# A scenario whose point is not where it stores runs on S3 only, the store on which a checkpoint takes
# the longer way (upload, download). Local storage is what test_main_job (relative paths, from another
# directory), test_faults and test_compare use.
ONE_STORE = pytest.mark.parametrize("store", ["s3"], indirect=True)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sets(overrides: dict) -> list[str]:
    """`overrides` as a job's `--set key=value` flags."""
    return [f"--set={k}={v}" for k, v in overrides.items()]


def start_job(
    script: str,
    *args: str,
    ray_address: str | None = None,
    cwd: Path | None = None,
    stdout: int = subprocess.DEVNULL,
    stderr: int = subprocess.DEVNULL,
) -> subprocess.Popen:
    """Start a jobs/ script in the background (a test that kills it or reads it as it goes); its output
    discarded unless `stdout`/`stderr` say otherwise (subprocess.PIPE, STDOUT), as text, line-buffered."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        env=job_env(ray_address),
        cwd=cwd or ROOT,
        stdout=stdout,
        stderr=stderr,
        text=True,
        bufsize=1,
    )


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
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        capture_output=True,
        text=True,
        env=job_env(ray_address, env),
        timeout=timeout,
        cwd=cwd or ROOT,
    )


def ray_started(output: str) -> bool:
    """Whether a job's output says it started or joined Ray (ours, or Ray's own INFO line with --verbose)."""
    return re.search(r"(?i)started a local Ray|joined the Ray cluster", output) is not None


class Store:
    """One kind of storage a scenario runs over, and the test's own view of it (pathlib, or boto3:
    not the library under test). `uri(name)` is a fresh place; keys are relative to a URI."""

    kind: str
    endpoint: str  # "" locally
    data: str  # where the bundled sample is read from

    def uri(self, name: str) -> str:
        raise NotImplementedError

    def keys(self, uri: str) -> list[str]:
        """The files (objects) under `uri`, relative to it, sorted."""
        raise NotImplementedError

    def read(self, uri: str) -> bytes:
        raise NotImplementedError

    def stamps(self, uri: str) -> dict[str, object]:
        """Relative key -> what changes when the file is written again, for every file under `uri`."""
        raise NotImplementedError

    def plain_fs(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A plain pyarrow filesystem and path for `uri` (no lstmclf, no Ray)."""
        raise NotImplementedError

    def local_file(self, uri: str, tmp: Path) -> Path:
        """`uri` as a local file (an object is copied into `tmp`), for a job flag that takes a file."""
        raise NotImplementedError

    def job_place(self, cwd: Path, name: str) -> tuple[str, str]:
        """A fresh place for a job run in `cwd`: (its --storage argument, the URI that means)."""
        raise NotImplementedError

    @property
    def endpoint_args(self) -> list[str]:
        """A job's flag to reach this store."""
        return ["--s3-endpoint", self.endpoint] if self.endpoint else []

    @property
    def args(self) -> list[str]:
        """A job's flags to read the data from, and write to, this store."""
        return ["--data", self.data, *self.endpoint_args] if self.endpoint else []

    def overrides(self, name: str) -> dict[str, str]:
        """Config overrides for a run or experiment `name` at a fresh place, reading the data from this store."""
        return {
            "data.path": self.data,
            "storage.path": self.uri("runs"),
            "storage.name": name,
            "storage.s3_endpoint": self.endpoint,
        }

    def table(self, uri: str):
        """A Parquet file as a pyarrow Table."""
        return pq.read_table(io.BytesIO(self.read(uri)))

    def __repr__(self) -> str:
        return self.kind


class LocalStore(Store):
    kind, endpoint, data = "local", "", "sample"

    def __init__(self, tmp_path_factory) -> None:
        self._tmp = tmp_path_factory

    def uri(self, name: str) -> str:
        return str(self._tmp.mktemp(name))

    def keys(self, uri: str) -> list[str]:
        root = Path(uri)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def read(self, uri: str) -> bytes:
        return Path(uri).read_bytes()

    def stamps(self, uri: str) -> dict[str, object]:
        return {k: (Path(uri) / k).stat().st_mtime_ns for k in self.keys(uri)}

    def plain_fs(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), uri

    def local_file(self, uri: str, tmp: Path) -> Path:
        return Path(uri)

    def job_place(self, cwd: Path, name: str) -> tuple[str, str]:
        return name, str(cwd / name)  # relative: the job must resolve it against the directory it runs in


class S3Store(Store):
    kind = "s3"

    def __init__(self, s3: S3) -> None:
        from lstmclf.data import prepare_dataset

        self.s3, self.endpoint = s3, s3.endpoint
        self.data = s3.uri("mnist")
        prepare_dataset("sample", self.data, endpoint=self.endpoint)  # published with its manifest
        self._files = itertools.count()

    def uri(self, name: str) -> str:
        return self.s3.uri(name)

    def keys(self, uri: str) -> list[str]:
        return self.s3.keys(uri)

    def read(self, uri: str) -> bytes:
        return self.s3.get(uri)

    def stamps(self, uri: str) -> dict[str, object]:
        bucket, prefix = uri.split("://", 1)[1].split("/", 1)
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        return {
            o["Key"].removeprefix(prefix + "/"): (o["ETag"], o["LastModified"])
            for page in pages
            for o in page.get("Contents", [])
        }

    def plain_fs(self, uri: str) -> tuple[pafs.FileSystem, str]:
        fs = pafs.S3FileSystem(endpoint_override=self.endpoint.split("://")[1], scheme="http", region="us-east-1")
        return fs, uri.removeprefix("s3://")

    def local_file(self, uri: str, tmp: Path) -> Path:
        path = tmp / f"{next(self._files)}-{uri.rsplit('/', 1)[-1]}"
        path.write_bytes(self.read(uri))
        return path

    def job_place(self, cwd: Path, name: str) -> tuple[str, str]:
        uri = self.uri(name)
        return uri, uri


def epoch_dirs(keys: list[str], under: str = "") -> list[str]:
    """The epoch_NNNN directories among `keys` (optionally those directly under `under`/), sorted."""
    prefix = f"{under}/" if under else ""
    return sorted({k.removeprefix(prefix).split("/")[0] for k in keys if k.startswith(f"{prefix}epoch_")})


def registered_checkpoints(run: Path) -> dict[str, int]:
    """mtime (ns) of each checkpoint of the run at `run` that Ray Train had registered: its epoch's row
    is in the metrics table (written after registration). A checkpoint already on disk without its row
    may rightly be trained and written again after a fault; a registered one never."""
    rows = {int(p.stem.split("=")[1]) for p in run.glob("metrics/trial_id=*/epoch=*.parquet")}
    return {
        p.parent.name: p.stat().st_mtime_ns
        for p in run.glob("epoch_*/checkpoint.pt")
        if int(p.parent.name.removeprefix("epoch_")) in rows
    }


def crash_after_first_report(*args, **kwargs):
    """Fault injection through the loop's report hook: epoch 1 is reported, then the worker dies."""
    ray.train.report(*args, **kwargs)
    raise RuntimeError("injected failure after epoch 1")


def report_and_log(marks: str, metrics: dict, **kwargs) -> None:
    """The loop's report hook: every report's start and end go to a local file the test watches."""
    log = Path(marks) / "reports.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"epoch": metrics["epoch"], "event": "start", "t": time.time()}) + "\n")
    ray.train.report(metrics, **kwargs)
    with log.open("a") as f:
        f.write(json.dumps({"epoch": metrics["epoch"], "event": "end", "t": time.time()}) + "\n")


def wait_for_report(marks: Path, epoch: int, event: str, timeout: float = 300) -> float:
    """When `report_and_log` logged `event` ("start" or "end") of `epoch`; waits for it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = marks / "reports.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            m = json.loads(line)
            if (m["epoch"], m["event"]) == (epoch, event):
                return m["t"]
        time.sleep(0.2)
    raise TimeoutError(f"epoch {epoch} {event} not seen")


def live_placement_groups(within_s: float) -> list[str]:
    """Placement groups not yet removed, after giving Ray Train's cleaner `within_s` to free the
    groups of trials stopped moments ago (it polls for their dead controllers)."""
    import ray
    from ray.util.state import list_placement_groups

    address = ray.get_runtime_context().gcs_address  # the session's: other Ray instances may run here
    deadline = time.time() + within_s
    while True:
        live = [
            f"{pg.placement_group_id} {pg.state} {pg.bundles}"
            for pg in list_placement_groups(address=address, detail=True)
            if pg.state != "REMOVED"
        ]
        if not live or time.time() > deadline:
            return live
        time.sleep(1)


def terminated_trials(store: Store, exp: str) -> int:
    """Trials finished according to Tune's latest experiment state under `exp` (0 before there is one)."""
    states = sorted(k for k in store.keys(exp) if re.fullmatch(r"experiment_state-[^/]*\.json", k))
    return store.read(f"{exp}/{states[-1]}").decode().count("TERMINATED") if states else 0
