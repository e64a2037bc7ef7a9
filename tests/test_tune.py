"""Real Ray Tune experiments on the local cluster, every trial a 2-worker (or 1-worker) DDP run. The
killed-driver resume runs once per `store`: a local directory given as a relative path, and a real S3
server's bucket (SeaweedFS) that the data is read from too. The rest run on S3 only (`ONE_STORE`): a
local run would test Ray Tune's scheduler again, not our storage, for minutes of suite; the jobs' own
tests (test_main_job, test_compare) check what an experiment leaves in a local directory."""

import json
import re
import signal
import time

import pytest
import yaml
from support.helpers import (
    CHECKPOINT_FILES,
    ONE_STORE,
    RESULTS,
    TINY,
    live_placement_groups,
    run_job,
    sets,
    start_job,
    terminated_trials,
)

from lstmclf import tuning
from lstmclf.config import Config
from lstmclf.records import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asha(ray_cluster, store):
    """One ASHA experiment, shared by the tests that read it (`ONE_STORE`): (config, outcome).

    4 trials x 2 DDP workers on 4 CPUs: 2 at a time, so trials 3 and 4 start only when ASHA has stopped
    (or finished) one of the first two. The rung is epoch 1 and ASHA stops a trial that reaches it below
    the median of those recorded there before it. The sampled learning rates (tune.seed 270) are about
    5e-3 for trials 1 and 2 and 1e-4 for trials 3 and 4, which barely learn in one epoch (val_acc ~0.15
    against ~0.6): whichever order the trials reach the rung in, 3 and 4 find trial 1 or 2 recorded
    above them and are stopped; the first trial there has no rival and completes.
    """
    cfg = Config().override(
        TINY
        | store.overrides("asha")
        | {
            "train.epochs": 2,
            "tune.num_samples": 4,
            "tune.seed": 270,
            "tune.space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.lstm_layers": {"randint": [1, 3]}},
        }
    )
    assert tuning.max_concurrent_trials(cfg) == 2  # 4 CPUs / (2 workers x 1 CPU): fewer than the 4 trials
    return cfg, tuning.run_experiment(cfg)


@ONE_STORE
def test_asha_stops_trials_and_later_trials_still_run(asha):
    """ASHA stops some trials, the rest still start and finish, and no placement group is left
    behind (Ray Train frees stopped trials' groups via the state API)."""
    _, out = asha
    rows = out.table.to_pylist()
    statuses = [r["status"] for r in rows]
    assert len(rows) == 4 and "error" not in statuses
    assert statuses.count("stopped early") >= 1 and statuses.count("completed") >= 1
    slow_learners = [r["status"] for r in rows if r["optim.lr"] < 2e-4]  # trials 3 and 4 (see `asha`)
    assert slow_learners == ["stopped early", "stopped early"]
    assert all(r["epochs_run"] == 2 for r in rows if r["status"] == "completed")
    assert all(r["epochs_run"] == 1 for r in rows if r["status"] == "stopped early")
    assert [r["best_val_acc"] for r in rows] == sorted((r["best_val_acc"] for r in rows), reverse=True)
    assert live_placement_groups(within_s=30) == []


@ONE_STORE
def test_experiment_results_land_in_storage(asha, store):
    cfg, out = asha
    exp = out.experiment
    assert exp == f"{cfg.storage.path}/asha" and not out.resumed
    rows = out.table.to_pylist()
    assert all(r["checkpoint"].startswith(f"{exp}/trials/") for r in rows)
    keys = set(store.keys(exp))
    assert set(RESULTS) <= keys
    for r in rows:  # every trial's best checkpoint is complete in storage
        ckpt = r["checkpoint"].removeprefix(exp + "/")
        assert {f"{ckpt}/{f}" for f in CHECKPOINT_FILES} <= keys

    table = read_metrics(f"{exp}/metrics", store.endpoint)
    assert sorted(set(table["trial_id"].to_pylist())) == sorted(r["trial_id"] for r in rows)
    assert table.num_rows >= sum(r["epochs_run"] for r in rows)
    assert store.table(f"{exp}/results.parquet").num_rows == 4
    assert store.read(f"{exp}/results.csv").decode().startswith('"trial_id","status","best_val_acc"')
    assert store.read(f"{exp}/results.md").decode().startswith("| rank | trial_id | status | best_val_acc")
    summary = json.loads(store.read(f"{exp}/summary.json"))
    assert summary["best_trial"] == rows[0]["trial_id"] and summary["test"]["acc"] > 0.5
    assert summary["best_checkpoint"] == rows[0]["checkpoint"]
    recipe = yaml.safe_load(store.read(f"{exp}/best_recipe.yaml"))
    assert recipe["optim"]["lr"] == pytest.approx(rows[0]["optim.lr"])
    assert recipe["model"]["lstm_layers"] == rows[0]["model.lstm_layers"] and recipe["storage"]["name"] == ""


@ONE_STORE
def test_best_recipe_trains_as_it_is(ray_cluster, asha, store, tmp_path):
    """jobs/train.py --config best_recipe.yaml (a local copy, as a user downloads it) trains that config."""
    _, out = asha
    recipe = store.local_file(out.best_recipe, tmp_path)
    where = store.uri("retrain")
    res = run_job("train.py", "--config", str(recipe), "--storage", where, "--name", "retrain", ray_address=ray_cluster)
    assert res.returncode == 0, res.stderr[-3000:]
    assert Config.from_dict(yaml.safe_load(store.read(f"{where}/retrain/epoch_0002/config.yaml"))) == Config.from_dict(
        yaml.safe_load(recipe.read_text())
    ).override({"storage.path": where, "storage.name": "retrain"})


@ONE_STORE
def test_a_finished_experiment_is_restored_from_storage(asha, store):
    """The same name again: Tune restores the experiment from storage, keeps its finished trials
    and trains nothing again."""
    cfg, out = asha
    stamps = store.stamps(f"{out.experiment}/trials")
    again = tuning.run_experiment(cfg)
    assert again.resumed and sorted(again.table["trial_id"].to_pylist()) == sorted(out.table["trial_id"].to_pylist())
    assert store.stamps(f"{out.experiment}/trials") == stamps  # nothing trained again


def test_interrupted_experiment_resumes_without_rerunning_finished_trials(ray_cluster, store, tmp_path):
    """The driver is killed mid-experiment and the job run again with --resume, both from a directory
    other than the repo root; locally with a relative storage path: the checkpoints are where the user
    asked, and --resume finds them."""
    storage_arg, exps = store.job_place(tmp_path, "exps")
    overrides = TINY | {"scaling.num_workers": 1, "tune.max_concurrent": 1, "tune.scheduler": "fifo"}
    args = [*store.args, "--storage", storage_arg, "--name", "resumable", "--workers", "1", "--num-samples", "2"]
    args += sets(overrides)
    proc = start_job("tune.py", *args, ray_address=ray_cluster, cwd=tmp_path)
    exp = f"{exps}/resumable"
    deadline = time.time() + 300
    while terminated_trials(store, exp) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-experiment
    proc.wait()
    keys = store.keys(exp)
    assert terminated_trials(store, exp) == 1 and "results.csv" not in keys
    finished = sorted({k.split("/")[1] for k in keys if k.startswith("trials/") and "/epoch_0002/" in k})
    assert len(finished) == 1

    def checkpoint_stamps():
        return {k: v for k, v in store.stamps(f"{exp}/trials/{finished[0]}").items() if k.endswith("checkpoint.pt")}

    stamps = checkpoint_stamps()
    assert stamps

    res = run_job("tune.py", "--resume", *args, ray_address=ray_cluster, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming experiment" in res.stdout
    assert checkpoint_stamps() == stamps  # not rerun
    table = store.table(f"{exp}/results.parquet").to_pylist()
    assert len(table) == 2 and all(r["status"] == "completed" and r["epochs_run"] == 2 for r in table)

    res = run_job("tune.py", "--resume", *args, "--set", "model.hidden=64", ray_address=ray_cluster, cwd=tmp_path)
    assert res.returncode == 2 and "exists with another config (model.hidden: 32 -> 64)" in res.stderr


@ONE_STORE
def test_optuna_search(ray_cluster, store):
    cfg = Config().override(
        TINY
        | store.overrides("tpe")
        | {
            "train.epochs": 1,
            "scaling.num_workers": 1,
            "tune.num_samples": 2,
            "tune.search": "optuna",
            "tune.space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}},
            "data.limit_train": 600,
        }
    )
    out = tuning.run_experiment(cfg)
    lrs = out.table.column("optim.lr").to_pylist()
    assert len(set(lrs)) == 2 and all(1e-3 <= lr <= 1e-2 for lr in lrs)


@ONE_STORE
def test_sync_halving_pauses_trials_at_the_rung_and_resumes_the_best(ray_cluster, store):
    """SHA: 4 trials, 2 at a time, rung at epoch 1 of 2: every trial waits there, paused (so the
    other trials start), and the best 2 go on from their epoch-1 checkpoints; the others stop."""
    cfg = Config().override(
        TINY
        | store.overrides("sha")
        | {
            "scaling.num_workers": 1,
            "data.limit_train": 600,
            "tune.num_samples": 4,
            "tune.max_concurrent": 2,
            "tune.scheduler": "sha",
            "tune.reduction_factor": 2,
            "tune.space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
        }
    )
    out = tuning.run_experiment(cfg)
    rows = {r["trial_id"]: r for r in out.table.to_pylist()}
    assert sorted(r["epochs_run"] for r in rows.values()) == [1, 1, 2, 2]  # 6 of the 8 full-budget epochs
    assert {r["status"] for r in rows.values() if r["epochs_run"] == 1} == {"stopped early"}

    metrics = read_metrics(f"{out.experiment}/metrics", store.endpoint).to_pylist()
    at_rung = {m["trial_id"]: m["val_acc"] for m in metrics if m["epoch"] == 1}
    went_on = {t for t, r in rows.items() if r["epochs_run"] == 2}
    assert went_on == set(sorted(at_rung, key=lambda t: -at_rung[t])[:2])
    assert live_placement_groups(within_s=30) == []

    # Tune's results per trial: (epoch, training_iteration). A survivor that waited at the rung was
    # paused and started again (its iterations count from 1 again), and its Train run resumed from the
    # epoch-1 checkpoint (epoch 1 is not trained twice).
    results = tune_results(store, out.experiment)
    assert len(results) == 4
    reported = {
        t: [(r["epoch"], r["training_iteration"]) for r in rs] for d, rs in results.items() for t in rows if t in d
    }
    assert all(reported[t] in ([(1, 1), (2, 1)], [(1, 1), (2, 2)]) for t in went_on)
    assert any(reported[t] == [(1, 1), (2, 1)] for t in went_on)


def tune_results(store, exp: str) -> dict[str, list[dict]]:
    """Tune's own results (result.json) of each trial's directory in an experiment, by directory name
    (`{trainable}_{trial_id}_...`)."""
    found = [k for k in store.keys(exp) if re.fullmatch(r"[^/]+/result\.json", k)]
    return {k.split("/")[0]: [json.loads(line) for line in store.read(f"{exp}/{k}").splitlines()] for k in found}
