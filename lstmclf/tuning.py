"""Ray Tune over the config's dotted keys; every trial is a Ray Train DDP run (the Train V2 pattern).

Each trial runs a small driver function (0 CPUs: it only supervises) that builds a TorchTrainer
with `TuneReportCallback`, so ASHA sees every epoch's validation accuracy. Trials' checkpoints go
to `{experiment}/trials/{trial_id}/epoch_NNNN`; at the end the experiment holds a ranked results
table (CSV, Parquet, Markdown), the best trial's config as a ready-to-train YAML recipe, and the
best checkpoint's test metrics in summary.json.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from lstmclf import space, storage
from lstmclf.config import Config
from lstmclf.data import Splits
from lstmclf.driver import EXPERIMENT_CONFIG, Relay, check_experiment, environment, init_ray, preflight
from lstmclf.errors import ConfigError
from lstmclf.evaluation import evaluate_checkpoint, headline
from lstmclf.halving import SyncHalvingScheduler
from lstmclf.paths import absolute_paths
from lstmclf.worker import METRIC, EpochRecorder, make_trainer

RECIPE = "best_recipe.yaml"
TUNE_ERRORS = "TUNE_PRINT_ALL_TRIAL_ERRORS"  # read when an experiment starts; "1": Tune logs each failure whole
# A trial's driver only supervises its Train run, so it takes no CPU from the workers (a CPU
# request would stop a 2-worker trial fitting a 2-CPU machine). Ray's docs advise keeping these
# drivers on a node that is not preempted: the head node, through its built-in resource.
TRIAL_DRIVER_RESOURCES = {"node:__internal_head__": 0.001}


@dataclass(frozen=True)
class Plan:
    """An experiment checked before Ray starts: its search space and the trials it will run."""

    dists: dict[str, space.Dist]  # searched key (dotted, or a section's name) -> distribution
    trials: list[dict[str, Any]]  # every random-search trial's overrides (dotted), sampled and validated
    num_trials: int

    @property
    def keys(self) -> list[str]:
        """The dotted keys trials differ in: Tune's config keys, the results table's columns."""
        return space.columns(self.dists)


@dataclass(frozen=True)
class TuneOutcome:
    experiment: str  # storage URI of the experiment
    table: pa.Table  # one row per trial, best first
    best_recipe: str  # URI of the best trial's config (YAML)
    best_checkpoint: str
    test_metrics: dict[str, Any]
    resumed: bool


def run_experiment(
    cfg: Config, *, resume: bool = False, splits: Splits | None = None, verbose: bool = False, test_best: bool = True
) -> TuneOutcome:
    """Run (or resume) the experiment `cfg.storage.name` under `cfg.storage.path`.

    The search space, every sampled trial config, the data and the base model are checked
    before Ray is started, so bad input costs no cluster time. The console gets a line per
    trial-epoch and one block per failed trial; `verbose` adds Ray's and Tune's own output.
    `test_best`: score the best trial's checkpoint on the test split (a caller that scores every
    trial itself, as the comparison does, leaves it out and gets empty test metrics)."""
    cfg = absolute_paths(cfg)  # every trial runs in a working directory of its own
    plan = plan_experiment(cfg)
    splits = preflight(cfg, splits)
    exp_uri = storage.join(cfg.storage.path, cfg.storage.name)
    resumed = check_experiment(cfg, exp_uri, resume)
    init_ray(verbose=verbose)
    grid = fit_trials(cfg, plan, splits, exp_uri, resumed=resumed, verbose=verbose)
    table = results_table(grid, cfg, plan.keys)
    if not table.num_rows or table["best_val_acc"][0].as_py() != table["best_val_acc"][0].as_py():
        raise RuntimeError(f"experiment {exp_uri}: no trial reported a result")
    endpoint = cfg.storage.s3_endpoint
    write_results(table, exp_uri, endpoint)
    best = table.slice(0, 1).to_pylist()[0]
    recipe_uri = write_recipe(cfg, best, plan.keys, exp_uri)
    test = evaluate_checkpoint(best["checkpoint"], splits.test, endpoint=endpoint) if test_best else {}
    summary = {
        "experiment": exp_uri,
        "trials": table.num_rows,
        "stopped_early": sum(s == "stopped early" for s in table["status"].to_pylist()),
        "best_trial": best["trial_id"],
        "best_val_acc": best["best_val_acc"],
        "best_recipe": recipe_uri,
        "best_checkpoint": best["checkpoint"],
        **({"test": headline(test)} if test else {}),
    }
    storage.write_bytes(storage.join(exp_uri, "summary.json"), json.dumps(summary, indent=2).encode(), endpoint)
    return TuneOutcome(exp_uri, table, recipe_uri, best["checkpoint"], test, resumed)


def plan_experiment(cfg: Config) -> Plan:
    """The search space checked against the config's fields, and (random search) every trial's config
    sampled, seeded by tune.seed, and validated; Optuna's draws are checked when their trials start."""
    dists = space.parse(cfg.tune.space, cfg)
    _check_search(cfg, dists)
    trials = space.sample(cfg, dists, cfg.tune.num_samples, cfg.tune.seed)
    return Plan(dists, trials, len(trials) if cfg.tune.search == "random" else cfg.tune.num_samples)


def fit_trials(
    cfg: Config, plan: Plan, splits: Splits, exp_uri: str, *, resumed: bool, verbose: bool
) -> tune.ResultGrid:
    """Run the trials with Ray Tune (restoring the experiment when it exists) and wait for them all."""
    # Unless verbose, ProgressPrinter replaces Tune's console: its tables (the new output engine prints
    # some at every verbosity, the old one none at 0) and its whole traceback of every failed trial.
    quiet = {} if verbose else {"RAY_AIR_NEW_OUTPUT": "0", TUNE_ERRORS: os.environ.get(TUNE_ERRORS, "0")}
    with Relay() as relay, environment(quiet):
        shared = {"base": cfg.to_dict(), "data": ray.put(splits), "experiment": exp_uri, "sink": relay.sink}
        trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), TRIAL_DRIVER_RESOURCES)
        fs, exp_path = storage.resolve(exp_uri, cfg.storage.s3_endpoint)
        if resumed and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
            print(f"resuming experiment {exp_uri}: finished trials are kept, unfinished ones continue", flush=True)
            tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=fs)
        else:
            config_uri = storage.join(exp_uri, EXPERIMENT_CONFIG)
            storage.write_bytes(config_uri, cfg.to_yaml().encode(), cfg.storage.s3_endpoint)
            tuner = make_tuner(cfg, plan, trainable, exp_uri, verbose=verbose)
        return tuner.fit()


def make_tuner(cfg: Config, plan: Plan, trainable: Any, exp_uri: str, *, verbose: bool) -> tune.Tuner:
    """A new experiment's Tuner: the search algorithm (which also caps the trials running at once),
    the scheduler, and where Tune keeps its state (the experiment's own directory)."""
    concurrent = max_concurrent_trials(cfg)
    search = _searcher(cfg, plan.trials, concurrent)
    fs, root = storage.resolve(cfg.storage.path, cfg.storage.s3_endpoint)
    return tune.Tuner(
        trainable,
        param_space=_param_space(plan),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=make_scheduler(cfg, plan.num_trials, exp_uri, search, concurrent),
            search_alg=search,
            num_samples=plan.num_trials,
        ),
        run_config=tune.RunConfig(
            name=cfg.storage.name,
            storage_path=root,
            storage_filesystem=fs,
            verbose=1 if verbose else 0,
            callbacks=[ProgressPrinter(cfg.train.epochs, cfg.tune.scheduler, plan.keys, cfg.storage.path)],
        ),
    )


def run_trial(overrides: dict[str, Any], shared: dict[str, Any]) -> None:
    """One Tune trial (on the head node): a TorchTrainer run of the base config with this trial's overrides."""
    trial_id = tune.get_context().get_trial_id()
    cfg = Config.from_dict(shared["base"]).override(
        {**overrides, "storage.path": storage.join(shared["experiment"], "trials"), "storage.name": trial_id}
    )
    table = EpochRecorder(
        storage.join(shared["experiment"], "metrics"), trial_id, cfg.to_dict(), cfg.storage.s3_endpoint, shared["sink"]
    )
    # The row first: once TuneReportCallback hands Tune the result, a scheduler may stop the trial
    # (ASHA at a rung) and its actors die before any later callback runs.
    make_trainer(cfg, shared["data"], callbacks=[table, TuneReportCallback()]).fit()


def write_results(table: pa.Table, exp_uri: str, endpoint: str) -> None:
    """The ranked table as results.csv, results.parquet and results.md beside the experiment."""
    csv, parquet = io.BytesIO(), io.BytesIO()
    pacsv.write_csv(table, csv)
    pq.write_table(table, parquet)
    storage.write_bytes(storage.join(exp_uri, "results.csv"), csv.getvalue(), endpoint)
    storage.write_bytes(storage.join(exp_uri, "results.parquet"), parquet.getvalue(), endpoint)
    storage.write_bytes(storage.join(exp_uri, "results.md"), markdown_table(table).encode(), endpoint)


def write_recipe(cfg: Config, best: dict[str, Any], keys: list[str], exp_uri: str) -> str:
    """The best trial's whole config as a YAML recipe for `jobs/train.py --config`; returns its URI."""
    recipe = cfg.override({k: best[k] for k in keys} | {"storage.name": ""})
    uri = storage.join(exp_uri, RECIPE)
    storage.write_bytes(uri, recipe.to_yaml().encode(), cfg.storage.s3_endpoint)
    return uri


def max_concurrent_trials(cfg: Config) -> int:
    """How many trials' worker groups fit in the cluster at once (unless tune.max_concurrent says).

    Trials beyond this would start their Train runs and wait on each other's placement groups."""
    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    res, sc = ray.cluster_resources(), cfg.scaling
    fits = int(res.get("CPU", 0) // (sc.num_workers * sc.cpus_per_worker))
    if sc.use_gpu:
        fits = min(fits, int(res.get("GPU", 0) // (sc.num_workers * sc.gpus_per_worker)))
    return max(1, fits)


def _param_space(plan: Plan) -> dict[str, Any]:
    """Tune's search space over the dotted keys. Random search runs the trials sampled up front, so
    there the domains only give Tune the keys' shapes; Optuna samples them (no section keys there)."""
    out = {k: _domain(d) for k, d in plan.dists.items() if "." in k}
    for key in plan.keys:  # the keys of a section's mappings: each trial sets all of them
        if key not in out:
            out[key] = tune.choice(list({repr(t[key]): t[key] for t in plan.trials}.values()))
    return out


def _domain(d: space.Dist) -> Any:
    if d.kind == "const":
        return d.args[0]
    if d.kind in ("choice", "grid"):  # grid is expanded up front; the domain only gives Tune the key's shape
        return tune.choice(list(d.args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[d.kind](*d.args)


class ProgressPrinter(tune.Callback):
    """The experiment on the driver's console, instead of Tune's tables: a line when a trial starts
    (its searched values) and after each of its epochs, a line saying why it ended (finished, or
    stopped early by the scheduler), and for a failed trial its error's last line and where the
    whole traceback is."""

    def __init__(self, epochs: int, scheduler: str, keys: list[str], storage_uri: str) -> None:
        self.epochs, self.scheduler, self.keys, self.storage_uri = epochs, scheduler, keys, storage_uri
        self.best: dict[str, tuple[float, int]] = {}  # trial -> (best val_acc, its epoch) seen by this driver

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = (trial.last_result or {}).get("epoch")
        if done:  # resumed after a restore, or promoted past a rung by synchronous halving
            print(f"trial {trial.trial_id} continues after epoch {done}", flush=True)
            return
        values = "  ".join(f"{k}={_short(trial.config.get(k))}" for k in self.keys)
        print(f"trial {trial.trial_id} started: {values}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if METRIC not in result:
            return
        epoch = int(result["epoch"])
        if result[METRIC] > self.best.get(trial.trial_id, (-1.0, 0))[0]:
            self.best[trial.trial_id] = (result[METRIC], epoch)
        print(
            f"trial {trial.trial_id}  epoch {epoch}/{self.epochs}  {METRIC} {result[METRIC]:.2%}  "
            f"val_f1 {result['val_f1']:.4f}  train_loss {result['train_loss']:.4f}  {result['epoch_s']:.1f}s",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        acc, at = self.best.get(trial.trial_id, (last.get(METRIC, float("nan")), epoch))
        if epoch < self.epochs:
            print(
                f"trial {trial.trial_id} stopped early by {self.scheduler} after epoch {epoch}: its {METRIC} "
                f"trailed the others at that point (best {acc:.2%})",
                flush=True,
            )
        else:
            print(f"trial {trial.trial_id} finished {epoch} epochs: best {METRIC} {acc:.2%} (epoch {at})", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        try:  # Tune has just written it in the trial's local staging directory
            text = Path(trial.error_file).read_text().strip() if trial.error_file else ""
        except OSError:
            text = ""
        # The last line of Ray's error text is the root cause's `Type: message`.
        cause = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "unknown error")
        where = storage.to_uri(self.storage_uri, f"{trial.path}/error.txt") if trial.path else "the trial's error.txt"
        print(
            f"trial {trial.trial_id} failed after epoch {epoch}:\n  {cause[:500]}\n  whole traceback: {where}",
            file=sys.stderr,
            flush=True,
        )


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _check_search(cfg: Config, dists: dict[str, space.Dist]) -> None:
    if cfg.tune.search != "optuna":
        return
    if any(d.kind == "grid" for d in dists.values()):
        raise ConfigError("tune.space: grid entries need tune.search random (Optuna samples, it does not enumerate)")
    sections = [k for k in dists if "." not in k]
    if sections:
        raise ConfigError(
            f"tune.space {sections[0]}: a section's mappings need tune.search random (Optuna draws keys one by one)"
        )
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("tune.search optuna needs optuna: pip install -e '.[tune]'") from None


def _searcher(cfg: Config, trials: list[dict[str, Any]], max_concurrent: int) -> Any:
    """The search algorithm, which also caps the trials running at once (Tune starts every trial it issues)."""
    if cfg.tune.search == "random":
        # Every trial's config was sampled (seeded) and validated before the experiment: run exactly those.
        return tune.search.BasicVariantGenerator(points_to_evaluate=trials, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return tune.search.ConcurrencyLimiter(
        OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed)), max_concurrent=max_concurrent
    )


def make_scheduler(
    cfg: Config, num_trials: int = 0, experiment: str = "", search: Any = None, max_concurrent: int = 0
) -> Any:
    """The trial scheduler on `epoch` (metric and mode come from TuneConfig): ASHA, FIFO, or
    synchronous successive halving over `num_trials`, which reads `experiment`'s metrics table on a
    resume and keeps `max_concurrent` trials running through `search` while others wait paused."""
    if cfg.tune.scheduler == "fifo":
        return tune.schedulers.FIFOScheduler()
    if cfg.tune.scheduler == "sha":
        return SyncHalvingScheduler(
            num_trials or cfg.tune.num_samples,
            cfg.train.epochs,
            cfg.tune.grace_period,
            cfg.tune.reduction_factor,
            time_attr="epoch",
            search=search,
            max_concurrent=max_concurrent,
            metrics_uri=storage.join(experiment, "metrics") if experiment else "",
            endpoint=cfg.storage.s3_endpoint,
        )
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.train.epochs,
        grace_period=cfg.tune.grace_period,
        reduction_factor=cfg.tune.reduction_factor,
    )


def results_table(grid: tune.ResultGrid, cfg: Config, keys: list[str]) -> pa.Table:
    """One row per trial, ranked by best validation accuracy: its searched values, best epoch,
    epochs run, wall time, status and the checkpoint of its best epoch."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or METRIC not in df:
            rows.append(
                {
                    "trial_id": str((r.metrics or {}).get("trial_id", "")),
                    "status": "error",
                    "best_val_acc": float("nan"),
                    "best_epoch": 0,
                    "epochs_run": 0,
                    "time_s": 0.0,
                    "checkpoint": "",
                    **{k: (r.config or {}).get(k) for k in keys},  # None: the trial died before it started
                }
            )
            continue
        # Ties go to the later epoch, as in Ray's checkpoint manager: it keeps the later of equal checkpoints.
        best = df.sort_values([METRIC, "epoch"], kind="stable", na_position="first").iloc[-1]
        epochs = int(df["epoch"].max())
        status = "error" if r.error else ("completed" if epochs >= cfg.train.epochs else "stopped early")
        rows.append(
            {
                "trial_id": str(df["trial_id"].iloc[-1]),
                "status": status,
                "best_val_acc": float(best[METRIC]),
                "best_val_f1": float(best["val_f1"]),
                "best_epoch": int(best["epoch"]),
                "epochs_run": epochs,
                "time_s": float(df["time_total_s"].max()),
                "checkpoint": storage.to_uri(cfg.storage.path, str(best.get(CHECKPOINT_PATH_KEY, ""))),
                **{k: (r.config or {}).get(k) for k in keys},  # None: the trial died before it started
            }
        )
    rows.sort(key=lambda row: -row["best_val_acc"] if row["best_val_acc"] == row["best_val_acc"] else 1.0)
    return pa.Table.from_pylist(rows)


def markdown_table(table: pa.Table) -> str:
    cols = table.column_names
    fmt = {"best_val_acc": "{:.2%}", "best_val_f1": "{:.4f}", "time_s": "{:.0f}"}

    def cell(col: str, v: Any) -> str:
        if v is None:
            return ""
        if col in fmt and isinstance(v, float) and v == v:
            return fmt[col].format(v)
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    shown = [c for c in cols if c != "checkpoint"]
    lines = ["| rank | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for i, row in enumerate(table.to_pylist(), 1):
        lines.append(f"| {i} | " + " | ".join(cell(c, row[c]) for c in shown) + " |")
    return "\n".join(lines) + "\n"
