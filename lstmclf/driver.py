"""The driver side of every job, shared by training, tuning and the jobs built on them: the checks
that run before Ray starts (storage, data, model, resumes), Ray's start-up, and what reaches the
console.

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
from lstmclf.checkpoint import MANIFEST
from lstmclf.config import Config, check_resumable, load_yaml
from lstmclf.data import Splits, load_splits
from lstmclf.errors import CheckpointError, ConfigError, DataError
from lstmclf.models import build_model
from lstmclf.worker_setup import RUNTIME_ENV

EXPERIMENT_CONFIG = "lstmclf_experiment.yaml"  # an experiment's base config, to refuse a mismatched resume


def load_data(cfg: Config) -> Splits:
    """Read, validate and split the configured dataset (raises DataError with one clear line)."""
    d = cfg.data
    return load_splits(
        d.path,
        num_classes=d.num_classes,
        val_fraction=d.val_fraction,
        limit_train=d.limit_train,
        limit_test=d.limit_test,
        seed=d.seed,
        endpoint=cfg.storage.s3_endpoint,
    )


def check_run(cfg: Config) -> None:
    """Refuse to resume an existing run under a different recipe (its checkpoints would not fit,
    and its schedule was planned for other epochs); raises ConfigError naming the differences."""
    fs, run_dir = storage.resolve(storage.join(cfg.storage.path, cfg.storage.name), cfg.storage.s3_endpoint)
    entries = storage.list_dir(fs, run_dir)
    epochs = sorted(e.base_name for e in entries if e.type == storage.DIRECTORY and e.base_name.startswith("epoch_"))
    # The latest complete checkpoint: one without its manifest was cut off mid-upload and does not count.
    done = [e for e in epochs if storage.file_info(fs, f"{run_dir}/{e}/{MANIFEST}").type == storage.FILE]
    if not done:
        return
    where = f"checkpoint {storage.to_uri(cfg.storage.path, f'{run_dir}/{done[-1]}')}/config.yaml"
    check_resumable(saved_config(storage.read_bytes(fs, f"{run_dir}/{done[-1]}/config.yaml"), where), cfg, "run")


def saved_config(raw: bytes, where: str) -> Config:
    """A config saved beside a checkpoint or an experiment, read back; CheckpointError (one line) if it
    is not one."""
    try:
        return Config.from_dict(load_yaml(raw, where, CheckpointError))
    except ConfigError as e:
        raise CheckpointError(f"{where} is not a valid config ({e})") from None


def preflight(cfg: Config, splits: Splits | None = None, *, validation: bool = True) -> Splits:
    """What can fail before Ray starts, cheapest first: a validation split where the job ranks by it
    (`validation`: tuning and comparing; a single run may train without one), the storage (one
    request), the data (read, validated, split), the model (built once: bad pretrained weights fail
    here, not on every worker), and whether every worker gets samples. Returns the data."""
    if validation:
        require_validation(cfg)
    storage.check(cfg.storage.path, cfg.storage.s3_endpoint)  # no credentials, bad endpoint, missing bucket
    splits = splits if splits is not None else load_data(cfg)
    build_model(cfg.model, splits.num_classes, splits.image_shape)
    workers = cfg.scaling.num_workers
    for part in ("train", "val") if cfg.data.val_fraction > 0 else ("train",):
        if len(getattr(splits, part)) < workers:
            raise DataError(f"{len(getattr(splits, part))} {part} images cannot be shared by {workers} workers")
    return splits


def require_validation(cfg: Config) -> None:
    """Refuse data.val_fraction 0 in a job that ranks trials or runs by validation accuracy (ASHA, SHA,
    the results table, the comparison's choice of checkpoints)."""
    if cfg.data.val_fraction == 0:
        raise ConfigError(
            "config value data.val_fraction: 0 leaves no validation split, and this job ranks its runs by "
            "validation accuracy (0 is for jobs/train.py, to train a chosen recipe on every training image)"
        )


def read_experiment_config(exp_uri: str, endpoint: str = "") -> Config | None:
    """The base config an experiment was started with, or None if there is no experiment there."""
    fs, path = storage.resolve(storage.join(exp_uri, EXPERIMENT_CONFIG), endpoint)
    if not storage.exists(fs, path):
        return None
    return saved_config(storage.read_bytes(fs, path), storage.to_uri(exp_uri, path))


def check_experiment(cfg: Config, exp_uri: str, resume: bool) -> bool:
    """True if the experiment exists (and so resumes); refuses a resume under another config."""
    old = read_experiment_config(exp_uri, cfg.storage.s3_endpoint)
    if old is None:
        if resume:
            raise ConfigError(f"no experiment to resume at {exp_uri}")
        return False
    check_resumable(old, cfg, "experiment")
    return True


def latest_experiment(storage_uri: str, endpoint: str = "") -> str:
    """Name of the most recently started experiment under a storage path (for `--resume`)."""
    storage.check(storage_uri, endpoint)
    fs, root = storage.resolve(storage_uri, endpoint)
    started = []
    for entry in storage.list_dir(fs, root):
        if entry.type == storage.DIRECTORY:
            info = storage.file_info(fs, f"{root}/{entry.base_name}/{EXPERIMENT_CONFIG}")
            if info.type == storage.FILE:
                started.append((info.mtime, entry.base_name))
    if not started:
        raise ConfigError(f"no experiment to resume under {storage_uri}")
    return max(started)[1]


def job_env(ray_address: str | None = None, env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment for a job command it starts: `env` added (None removes a variable),
    RAY_ADDRESS only if given, so the job starts a Ray of its own unless told which to join."""
    overrides = env or {}
    out = {k: v for k, v in os.environ.items() if k not in overrides and k != "RAY_ADDRESS"}
    out |= {k: v for k, v in overrides.items() if v is not None}
    if ray_address:
        out["RAY_ADDRESS"] = ray_address
    return out


def init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray of this job's own (never one that `ray
    start` left on the machine), its dashboard on: Ray Train frees the placement groups of stopped
    trials through the state API it serves. Every worker runs `worker_setup.pin_cluster_address`. Unless
    `verbose`, Ray's forwarded worker output and its INFO lines stay in its log files; one line says
    where Ray is."""
    import ray

    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, runtime_env=RUNTIME_ENV, **quiet)
        where = f"joined the Ray cluster at {address}"
    else:
        # Ray Train's PreemptionWatcher logs the drain notices a cloud autoscaler sends before it takes a
        # node; a machine of one's own gets none, and the watcher is one more process (about 1 s of CPU)
        # per worker-group start. Set RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 to keep it.
        env = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")}
        os.environ.update(env)  # fit() on this driver passes it to the Train controller it starts
        ctx = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            runtime_env=RUNTIME_ENV | {"env_vars": env},  # and Tune's trial actors, which start theirs
            **quiet,
        )
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
