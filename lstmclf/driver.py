"""The driver side of every job: its paths, Ray's start-up and what reaches the console.

Paths. A relative local path means relative to the directory the user ran the command in, and is
made absolute here, on the driver, before Ray starts: Tune runs each trial in a working directory
of its own and Ray Train's workers run in Ray's session directory, where a relative path would
point somewhere else (checkpoints written under Ray's temporary directory, lost with it). Under
`ray job submit` the driver itself runs in a temporary copy of the working directory, so a
relative place to write to is refused there; inputs (data, a config, weights) may be relative to
that copy, since the driver reads them before anything else does.

Console. Ray forwards every worker's and actor's output to the driver by default: internal
warnings, C++ log lines, Tune's tables. By default a job prints its own progress instead and Ray's
output stays in Ray's log files (the session's `logs/` directory, named at start-up); `--verbose`
brings Ray's output back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lstmclf import storage
from lstmclf.config import Config
from lstmclf.errors import ConfigError

# Ray's job supervisor gives a submitted job's entrypoint this variable (dashboard/modules/job/job_supervisor.py).
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
OUTPUTS = ("storage.path", "storage.registry")  # places a job writes to
INPUTS = ("data.path", "model.pretrained")  # places only the driver reads from before Ray starts


def submitted_job() -> bool:
    """Whether this process is the entrypoint of a job submitted with `ray job submit`."""
    return JOB_ENV in os.environ


def absolute_path(value: str, what: str, *, output: bool = True) -> str:
    """A local path made absolute against the current directory (URIs unchanged); under `ray job
    submit` a relative place to write to (`output`) is refused with one line naming `what`."""
    if storage.is_remote(value):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    if output and submitted_job() and not os.path.isabs(path):
        raise ConfigError(
            f"{what} {value!r} is a relative path: under `ray job submit` it would be written into the job's "
            "temporary copy of the working directory and lost; give an absolute path that every node sees, "
            "or s3://…"
        )
    return str(Path(path).resolve())


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with every local path made absolute (see `absolute_path`), in its search space too; the
    bundled sample, unset weights and URIs stay as they are."""
    values = cfg.to_dict()
    changes: dict[str, Any] = {}
    for key in (*OUTPUTS, *INPUTS):
        section, field = key.split(".")
        absolute = _absolute_value(key, values[section][field])
        if absolute != values[section][field]:
            changes[key] = absolute
    space = values["tune"]["space"]
    if isinstance(space, dict) and any(key in space for key in INPUTS):
        changes["tune.space"] = {k: _absolute_spec(k, spec) if k in INPUTS else spec for k, spec in space.items()}
    return cfg.override(changes) if changes else cfg


def _absolute_value(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or (key == "data.path" and value == "sample"):
        return value
    return absolute_path(value, key, output=key in OUTPUTS)


def _absolute_spec(key: str, spec: Any) -> Any:
    """A search-space entry (a constant, or {choice: [...]} / {grid: [...]}) with its paths made absolute."""
    if isinstance(spec, dict):
        return {
            kind: [_absolute_value(key, v) for v in args] if isinstance(args, list) else args
            for kind, args in spec.items()
        }
    return _absolute_value(key, spec)


def init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray (its dashboard on: Ray Train frees the
    placement groups of stopped trials through the state API it serves). Unless `verbose`, Ray's
    forwarded worker output and its INFO lines stay in its log files; one line says where Ray is."""
    import ray

    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, **quiet)
        where = f"joined the Ray cluster at {address}"
    else:
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, **quiet)
        where = "started a local Ray"
    if not verbose:
        # Messages the raylet publishes to drivers (worker-start warnings and the like) are printed
        # whatever log_to_driver says; they are in the raylet's log file too. Ray's debugger turns
        # them off the same way (ray/util/rpdb.py); a Ray without this switch just prints them.
        if hasattr(ray._private.worker, "_worker_logs_enabled"):
            ray._private.worker._worker_logs_enabled = False
        res = ray.cluster_resources()
        gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
        logs = Path(ctx.address_info.get("session_dir") or "/tmp/ray/session_latest") / "logs"
        dashboard = f"; dashboard http://{ctx.dashboard_url}" if ctx.dashboard_url else ""
        print(f"{where} ({res.get('CPU', 0):g} CPUs{gpus}{dashboard}); Ray's own messages: {logs}", flush=True)


class Relay:
    """Lines that Ray actors send to the driver's console: Ray Train's callbacks run on its controller
    actor, whose own output stays in Ray's log files unless `--verbose`. Use as a context manager
    around `fit()`; actors get `sink`, and call `sink.put(line)`."""

    def __init__(self) -> None:
        self.sink: Any = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def __enter__(self) -> Relay:
        from ray.util.queue import Queue

        self.sink = Queue(actor_options={"num_cpus": 0})  # 0: it must never wait for the workers' CPUs
        self._thread = threading.Thread(target=self._pump, name="lstmclf-relay", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._done.is_set():
            try:
                print(self.sink.get(timeout=0.5), flush=True)
            except Empty:
                continue
            except Exception:  # the queue's actor is gone (Ray shut down): nothing more will come
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        try:
            while not self.sink.empty():
                print(self.sink.get_nowait(), flush=True)
            self.sink.shutdown()
        except Exception:  # Ray is already down: the lines left are in Ray's log files
            pass


def send(sink: Any, line: str, *, err: bool = False) -> None:
    """Send one line to the driver's console through a `Relay` sink (from an actor), or print it
    here when there is no sink or it is gone."""
    if sink is not None:
        try:
            sink.put(line)
            return
        except Exception:
            pass
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (Ray and Tune read some at start-up)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
