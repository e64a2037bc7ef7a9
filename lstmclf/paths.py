"""Where a job reads and writes: a relative local path means relative to the directory the user ran
the command in, and is made absolute on the driver before Ray starts.

Tune runs each trial in a working directory of its own and Ray Train's workers run in Ray's session
directory, where a relative path would point somewhere else (checkpoints written under Ray's
temporary directory, lost with it). Under `ray job submit` the driver itself runs in a temporary
copy of the working directory, so a relative place to write to is refused there; inputs (data, a
config, weights) may be relative to that copy, since the driver reads them before anything else does.

Light on purpose (no torch, no Ray): every job calls it while checking its flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lstmclf import storage
from lstmclf.config import Config
from lstmclf.errors import ConfigError, shown

# Ray's job supervisor gives a submitted job's entrypoint this variable (dashboard/modules/job/job_supervisor.py).
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
OUTPUTS = ("storage.path", "storage.registry")  # places a job writes to
INPUTS = ("data.path", "model.pretrained", "retrain.test_data")  # places only the driver reads
DATASETS = ("data.path", "retrain.test_data")  # where "sample" names the bundled sample, not a directory


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
            f"{what} {shown(value)} is a relative path: under `ray job submit` it would be written into the job's "
            "temporary copy of the working directory and lost; give an absolute path that every node sees, "
            "or s3://…"
        )
    return str(Path(path).resolve())


def output_dir(value: str, what: str) -> str:
    """A local directory to write into, made absolute (see `absolute_path`); refused with one line if
    something other than a directory is there."""
    path = absolute_path(value, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {shown(value)} is a file, not a directory")
    return path


def absolute_paths(cfg: Config, writes: tuple[str, ...] = ("storage.path",)) -> Config:
    """`cfg` with every local path made absolute (see `absolute_path`), in its search space too; the
    bundled sample, unset weights and URIs stay as they are. `writes` names the outputs this job
    writes to: under `ray job submit` a relative one is refused, and the others are left as they are
    (the default `storage.registry` of a job that never opens the registry must not stop it)."""
    values = cfg.to_dict()
    changes: dict[str, Any] = {}
    for key in (*OUTPUTS, *INPUTS):
        if key in OUTPUTS and key not in writes and submitted_job():
            continue
        section, field = key.split(".")
        absolute = _absolute_value(key, values[section][field])
        if absolute != values[section][field]:
            changes[key] = absolute
    space = values["tune"]["space"]
    if isinstance(space, dict) and any(key in space for key in INPUTS):
        changes["tune.space"] = {k: _absolute_spec(k, spec) if k in INPUTS else spec for k, spec in space.items()}
    return cfg.override(changes) if changes else cfg


def _absolute_value(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or (key in DATASETS and value == "sample"):
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
