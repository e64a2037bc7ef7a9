"""Shared plumbing of the entry scripts in jobs/: config flags, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from lstmclf import space
from lstmclf.config import Config, load_config
from lstmclf.errors import LstmclfError
from lstmclf.paths import absolute_paths

# The --smoke preset of the jobs that train: a seconds-long run on a slice of the bundled sample that
# checks the whole path end to end.
SMOKE = {
    "data.limit_train": 1000,
    "data.limit_test": 200,
    "train.epochs": 2,
    "train.batch_size": 32,
    "model.width": 8,
    "model.hidden": 32,
}


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Flags every job shares; each is a shorthand for one `--set section.key=value`."""
    p.add_argument("--config", help="YAML or JSON config file (a saved best recipe works too)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set model.lstm_layers=3 (repeatable)",
    )
    p.add_argument("--data", help="dataset directory or URI (data.path); default: the bundled MNIST sample")
    p.add_argument("--storage", help="where runs go: local directory or s3://bucket/prefix (storage.path)")
    p.add_argument("--name", help="run / experiment name under the storage path (storage.name)")
    p.add_argument(
        "--s3-endpoint",
        help="S3-compatible endpoint URL for s3:// URIs, e.g. http://minio:9000 "
        "(storage.s3_endpoint; default: AWS_ENDPOINT_URL_S3, else AWS)",
    )
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--workers", type=int, help="DDP workers per run (scaling.num_workers)")
    p.add_argument("--cpus-per-worker", type=int, help="scaling.cpus_per_worker")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="let Ray's and Tune's own output through to the console (default: it stays in Ray's log files)",
    )
    p.add_argument(
        "--gpus-per-worker", type=float, help="train on GPUs with this many per worker (sets scaling.use_gpu)"
    )


def add_experiment_args(p: argparse.ArgumentParser, smoke: str) -> None:
    """--resume and --smoke, the flags of the jobs that run a Ray Tune experiment; `smoke`: what --smoke runs."""
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume the experiment --name (default: the newest experiment under --storage)",
    )
    p.add_argument("--smoke", action="store_true", help=smoke)


def config_from_args(
    a: argparse.Namespace,
    prefix: str = "run",
    preset: dict | None = None,
    pick_name: bool = True,
    writes: tuple[str, ...] = ("storage.path",),
) -> Config:
    """Defaults <- --config file <- `preset` <- --set overrides <- shorthand flags; a run name is
    picked from the time if none is set and `pick_name`; local paths made absolute against the
    current directory (`lstmclf.paths.absolute_paths`; `writes`: the outputs this job writes to)."""
    flags = {
        "data.path": a.data,
        "storage.path": a.storage,
        "storage.name": a.name,
        "storage.s3_endpoint": a.s3_endpoint,
        "train.epochs": a.epochs,
        "scaling.num_workers": a.workers,
        "scaling.cpus_per_worker": a.cpus_per_worker,
    }
    if a.gpus_per_worker:
        flags |= {"scaling.use_gpu": True, "scaling.gpus_per_worker": a.gpus_per_worker}
    preset_sets = [f"{k}={v}" for k, v in (preset or {}).items()]
    cfg = load_config(a.config, [*preset_sets, *a.set]).override({k: v for k, v in flags.items() if v is not None})
    if not cfg.storage.name and pick_name:
        cfg = cfg.override({"storage.name": f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"})
    space.parse(cfg.tune.space, cfg)  # every job checks the whole config, its search space included
    return absolute_paths(cfg, writes)


def run_main(main: Callable[[], object], *, one_line: bool = False) -> None:
    """Run a job's main(); a user error becomes one line on stderr and exit status 2. With `one_line`
    (a scheduled job, read from its logs) any other failure is one line too, exit status 1, unless
    `--verbose` asks for the traceback."""
    try:
        main()
    except LstmclfError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if not one_line or "--verbose" in sys.argv:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {type(e).__name__}: {first[:500]} (--verbose shows the traceback)", file=sys.stderr)
        sys.exit(1)
