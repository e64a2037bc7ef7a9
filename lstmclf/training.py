"""Train one config: the driver's side of a Ray Train run, from checks to the test evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import ray
import ray.train

from lstmclf import storage
from lstmclf.config import Config
from lstmclf.data import Splits
from lstmclf.driver import Relay, check_run, init_ray, preflight
from lstmclf.evaluation import evaluate_checkpoint, headline
from lstmclf.paths import absolute_paths
from lstmclf.worker import METRIC, EpochPrinter, EpochRecorder, make_trainer


@dataclass(frozen=True)
class TrainOutcome:
    run_path: str  # storage URI of the run
    best_checkpoint: str  # storage URI of the best checkpoint (by val_acc; the last with no validation split)
    best_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    epochs_run: int


def best_checkpoint(result: ray.train.Result) -> tuple[ray.train.Checkpoint, dict[str, Any]]:
    """The reported checkpoint with the highest validation accuracy (ties: the later one); with no
    validation split (no val_acc reported), the last."""
    if not result.best_checkpoints:
        raise RuntimeError(f"run {result.path} reported no checkpoint")
    return max(result.best_checkpoints, key=lambda cm: (cm[1].get(METRIC, 0.0), cm[1]["epoch"]))


def fit(cfg: Config, *, splits: Splits | None = None, progress: bool = True, verbose: bool = False) -> TrainOutcome:
    """Train one config with Ray Train (starting from its latest checkpoint if the run exists),
    then evaluate the best checkpoint on the test set and write `summary.json` beside the run.
    Data, model and resume checks run before Ray is started (or joined). `progress` prints a line
    per epoch; `verbose` lets Ray's own output through (see `lstmclf.driver`)."""
    cfg = absolute_paths(cfg)  # Ray's processes run elsewhere: a relative path would point there
    endpoint = cfg.storage.s3_endpoint
    splits = preflight(cfg, splits, validation=False)
    check_run(cfg)
    init_ray(verbose=verbose)  # only now: bad input has failed above without cluster time
    run_path = storage.join(cfg.storage.path, cfg.storage.name)
    with Relay() as relay:
        callbacks: list[ray.train.UserCallback] = [
            EpochRecorder(storage.join(run_path, "metrics"), cfg.storage.name, cfg.to_dict(), endpoint, relay.sink)
        ]
        if progress:
            callbacks.append(EpochPrinter(cfg.train.epochs, relay.sink))
        result = make_trainer(cfg, ray.put(splits), callbacks=callbacks).fit()
    ckpt, best = best_checkpoint(result)
    uri = storage.to_uri(cfg.storage.path, ckpt.path)
    test = evaluate_checkpoint(uri, splits.test, endpoint=endpoint)
    summary = {
        "run": run_path,
        "best_checkpoint": uri,
        "best_epoch": best["epoch"],
        "best_val": best,
        "test": headline(test),
        "epochs_run": result.metrics["epoch"],
        "config": cfg.to_dict(),
    }
    storage.write_bytes(storage.join(run_path, "summary.json"), json.dumps(summary, indent=2).encode(), endpoint)
    return TrainOutcome(run_path, uri, best, test, result.metrics["epoch"])
