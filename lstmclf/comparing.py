"""A comparison (`jobs/compare.py`): every model of compare.variants trained with compare.seeds seeds on the
same data, budget, batch and schedule, as one Ray Tune experiment, then scored on the test set and reported.

The experiment is `lstmclf.tuning`'s: random search over a grid of `model` mappings times a grid of
seeds, FIFO, one sample, so it spreads over a cluster, writes to any storage and resumes like
`jobs/tune.py`. Each run's best checkpoint (by validation accuracy) is then scored on the test split
by a Ray task of a worker's resources; its scores and per-image predictions are kept in
`{experiment}/test/{trial_id}.json`, so a resumed comparison neither trains nor scores a run twice.
`lstmclf.comparison` turns the runs into the table, the verdict, the plots and report.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from lstmclf import comparison, records, space, storage, tuning
from lstmclf.comparison import Run, Variant, Verdict
from lstmclf.config import Config, ModelConfig
from lstmclf.data import Split, Splits
from lstmclf.driver import preflight
from lstmclf.errors import StorageError
from lstmclf.evaluation import headline, predict
from lstmclf.paths import absolute_paths

SCORES = "test"  # {experiment}/test/{trial_id}.json: a run's test scores and predictions
REPORT, SUMMARY = "report.md", "comparison.json"


@dataclass(frozen=True)
class CompareOutcome:
    experiment: str  # storage URI of the experiment
    rows: list[dict[str, Any]]  # one per variant, best mean validation accuracy first
    verdict: Verdict | None  # None without a CNN-LSTM and a plain CNN
    runs: list[Run]
    scored: int  # runs scored on the test set by this call
    reused: int  # runs whose scores an earlier call had kept
    files: list[str]  # URIs of report.md, comparison.json and the plots
    resumed: bool


def experiment_config(cfg: Config) -> Config:
    """The Tune experiment of a comparison: a grid of the variants times a grid of the seeds, every
    trial trained to the end (FIFO), the grid run once (num_samples 1)."""
    return cfg.override(
        {"tune.space": space.comparison(cfg), "tune.search": "random", "tune.scheduler": "fifo", "tune.num_samples": 1}
    )


def run_comparison(cfg: Config, *, resume: bool = False, verbose: bool = False) -> CompareOutcome:
    """Run (or resume) the comparison `cfg.storage.name`: train, score, report. Variants, space, data
    and every variant's model are checked before Ray starts."""
    cfg = absolute_paths(experiment_config(cfg))
    models = comparison.check_variants(cfg)
    tuning.plan_experiment(cfg)  # the space and every trial's config: one line now rather than after the data
    splits = preflight(cfg)
    variants = [
        Variant(
            name,
            comparison.kind_of(dataclasses.asdict(m)),
            {k: getattr(m, k) for k in cfg.compare.variants[name]},
            count_params(m, splits),
        )
        for name, m in models.items()
    ]
    out = tuning.run_experiment(cfg, resume=resume, splits=splits, verbose=verbose, test_best=False)
    runs = collect_runs(cfg, out.experiment, out.table.to_pylist(), models)
    tests, scored = score_runs(cfg, out.experiment, runs, splits.test)
    runs = [dataclasses.replace(r, test=tests.get(r.trial_id, {}).get("scores", {})) for r in runs]
    rows = comparison.summarize(variants, runs)
    predictions = {t: np.asarray(s["predictions"]) for t, s in tests.items()}
    verdict = comparison.verdict(rows, runs, predictions, np.asarray(splits.test.labels), cfg.compare.alpha)
    files = write_outputs(cfg, out.experiment, splits, variants, rows, runs, verdict)
    return CompareOutcome(out.experiment, rows, verdict, runs, scored, len(tests) - scored, files, out.resumed)


def count_params(model: ModelConfig, splits: Splits) -> int:
    from lstmclf.models import build_model

    return sum(p.numel() for p in build_model(model, splits.num_classes, splits.image_shape).parameters())


def collect_runs(cfg: Config, exp_uri: str, table: list[dict[str, Any]], models: dict[str, ModelConfig]) -> list[Run]:
    """A Run per trial of the results table, named after its variant (matched on the model keys the
    trials differ in), with its validation curve, time and speed from the experiment's metrics table."""
    keys = [k for k in space.columns({"model": space.Dist("grid", tuple(cfg.compare.variants.values()))})]
    named = {tuple(getattr(m, k.split(".")[1]) for k in keys): name for name, m in models.items()}
    epochs: dict[str, list[dict[str, Any]]] = {}
    for row in records.read_metrics(storage.join(exp_uri, "metrics"), cfg.storage.s3_endpoint).to_pylist():
        epochs.setdefault(row["trial_id"], []).append(row)
    runs = []
    for row in table:
        variant = named.get(tuple(row.get(k) for k in keys))
        if variant is None:  # a trial that died before it started has no config: nothing to report
            continue
        mine = sorted(epochs.get(row["trial_id"], []), key=lambda e: e["epoch"])
        runs.append(
            Run(
                trial_id=row["trial_id"],
                variant=variant,
                seed=int(row["train.seed"]),
                status=row["status"],
                best_val_acc=row["best_val_acc"],
                best_epoch=row["best_epoch"],
                val_acc=[e["val_acc"] for e in mine],
                train_s=sum(e["epoch_s"] for e in mine),
                img_s=statistics.median(e["train_img_s"] for e in mine) if mine else float("nan"),
                checkpoint=row["checkpoint"],
            )
        )
    return runs


def labels_digest(test: Split) -> str:
    """Identifies the test labels a run was scored on (a kept score is reused only for the same ones)."""
    return hashlib.sha256(np.ascontiguousarray(test.labels, dtype=np.int64).tobytes()).hexdigest()


def _score(uri: str, test: Split, endpoint: str, cpus: int) -> dict[str, Any]:
    """A Ray task: a checkpoint's test scores, confusion matrix and predicted class of every test image."""
    from lstmclf.checkpoint import load_checkpoint
    from lstmclf.engine import use_cpus

    use_cpus(cpus)

    report, predicted = predict(load_checkpoint(uri, endpoint), test)
    return {"scores": {**headline(report), "confusion": report["confusion"]}, "predictions": predicted.tolist()}


def score_runs(cfg: Config, exp_uri: str, runs: list[Run], test: Split) -> tuple[dict[str, dict[str, Any]], int]:
    """Every run's best checkpoint on the test split: kept scores are read back, the others computed by
    Ray tasks (a worker's CPUs or GPU each, in parallel over the cluster) and kept. Returns
    {trial_id: {"scores", "predictions"}} and how many were computed now."""
    endpoint = cfg.storage.s3_endpoint
    digest = labels_digest(test)
    out: dict[str, dict[str, Any]] = {}
    todo = []
    for r in runs:
        if not r.checkpoint:
            continue
        kept = _read_kept(storage.join(exp_uri, SCORES, f"{r.trial_id}.json"), endpoint)
        if kept and kept.get("checkpoint") == r.checkpoint and kept.get("labels_sha256") == digest:
            out[r.trial_id] = kept
        else:
            todo.append(r)
    if not todo:
        return out, 0
    print(f"scoring {len(todo)} run(s) on the {len(test):,} test images", flush=True)
    sc = cfg.scaling
    task = ray.remote(_score).options(
        num_cpus=sc.cpus_per_worker, num_gpus=sc.gpus_per_worker if sc.use_gpu else 0, max_retries=2
    )
    test_ref = ray.put(test)
    pending = {task.remote(r.checkpoint, test_ref, storage.endpoint_url(endpoint), sc.cpus_per_worker): r for r in todo}
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        r = pending.pop(done)
        result = {"checkpoint": r.checkpoint, "labels_sha256": digest, **ray.get(done)}
        storage.write_bytes(storage.join(exp_uri, SCORES, f"{r.trial_id}.json"), json.dumps(result).encode(), endpoint)
        out[r.trial_id] = result
        print(f"trial {r.trial_id} ({r.variant}, seed {r.seed}): test acc {result['scores']['acc']:.2%}", flush=True)
    return out, len(todo)


def _read_kept(uri: str, endpoint: str) -> dict[str, Any] | None:
    fs, path = storage.resolve(uri, endpoint)
    if not storage.exists(fs, path):
        return None
    try:
        kept = json.loads(storage.read_bytes(fs, path))
    except (ValueError, StorageError):  # unreadable: score the run again and write it whole
        return None
    return kept if isinstance(kept, dict) and isinstance(kept.get("scores"), dict) else None


def setup_text(cfg: Config, exp_uri: str, splits: Splits) -> str:
    """What every model of the comparison shared, in a paragraph."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    limit = f" (data.limit_train {d.limit_train:,})" if d.limit_train else ""
    shift = f"random shifts of up to {d.shift} px" if d.shift else "no augmentation"
    workers = f" × {cfg.scaling.num_workers} workers" if cfg.scaling.num_workers > 1 else ""
    return (
        f"Data `{d.path}`: {len(splits.train):,} training{limit} and {len(splits.val):,} validation images, "
        f"{len(splits.test):,} test images. Every model: {t.epochs} epochs, batch {t.batch_size}{workers}, "
        f"{o.name} at learning rate {o.lr:g} ({o.schedule}), loss {cfg.loss.name}, {shift}; "
        f"{cfg.compare.seeds} seed{'s' * (cfg.compare.seeds > 1)} each (train.seed 0–{cfg.compare.seeds - 1}). "
        f"Experiment `{exp_uri}` (its whole config: `lstmclf_experiment.yaml`; every run: `results.md`)."
    )


def write_outputs(
    cfg: Config,
    exp_uri: str,
    splits: Splits,
    variants: list[Variant],
    rows: list[dict[str, Any]],
    runs: list[Run],
    verdict: Verdict | None,
) -> list[str]:
    """report.md, comparison.json and the plots, beside the experiment's results; returns their URIs."""
    endpoint = cfg.storage.s3_endpoint
    written: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            comparison.plot_val_curves(rows, runs, Path(tmp) / "val_acc.png")
            comparison.plot_test_vs_time(rows, runs, Path(tmp) / "test_vs_time.png")
            best = next((r["model"] for r in rows if any(x.test for x in runs if x.variant == r["model"])), None)
            if best:
                top = max((x for x in runs if x.variant == best and x.test), key=lambda x: x.best_val_acc)
                comparison.plot_confusion(top, Path(tmp) / "confusion.png")
        except ImportError:  # the [plot] extra is missing: the report says so
            pass
        for png in sorted(Path(tmp).glob("*.png")):
            written[png.name] = png.read_bytes()
    plots = [name for name in comparison.PLOTS if name in written]
    report = comparison.report_markdown(
        f"Comparison {cfg.storage.name}", setup_text(cfg, exp_uri, splits), rows, variants, verdict, plots
    )
    if not plots:
        report += "\nNo plots: they need matplotlib (pip install -e '.[plot]').\n"
    summary = {
        "experiment": exp_uri,
        "alpha": cfg.compare.alpha,
        "models": rows,
        "variants": [dataclasses.asdict(v) for v in variants],
        "runs": [dataclasses.asdict(r) | {"test": _short(r.test)} for r in runs],
        "verdict": verdict.to_dict() if verdict else None,
    }
    written[REPORT] = report.encode()
    written[SUMMARY] = json.dumps(_finite(summary), indent=2, allow_nan=False).encode()
    uris = []
    for name, data in written.items():
        uri = storage.join(exp_uri, name)
        storage.write_bytes(uri, data, endpoint)
        uris.append(uri)
    return uris


def _short(test: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in test.items() if k != "confusion"}


def _finite(x: Any) -> Any:
    """NaN (a statistic of no run, a std of one) as null: JSON has no NaN."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x
