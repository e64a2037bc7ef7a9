"""Real Ray Tune experiments on the local cluster: every trial a 2-worker (or 1-worker) DDP run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ray.util.state import list_placement_groups
from support.helpers import ROOT, TINY, run_job

from lstmclf import tuning
from lstmclf.config import Config
from lstmclf.records import read_metrics

pytestmark = pytest.mark.slow


def test_asha_stops_trials_and_later_trials_still_run(ray_cluster, tmp_path):
    """6 trials x 2 DDP workers on 4 CPUs: 2 at a time; ASHA stops some, the rest still start and finish,
    and no placement group is left behind (Ray Train frees stopped trials' groups via the state API)."""
    cfg = Config().override(
        TINY
        | {
            "storage.path": str(tmp_path),
            "storage.name": "asha",
            "train.epochs": 2,
            "tune.num_samples": 6,
            "data.limit_train": 1200,
            "tune.space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.lstm_layers": {"randint": [1, 3]}},
        }
    )
    assert tuning.max_concurrent_trials(cfg) == 2  # 4 CPUs / (2 workers x 1 CPU): fewer than the 6 trials
    out = tuning.run_experiment(cfg)
    rows = out.table.to_pylist()
    statuses = [r["status"] for r in rows]
    assert len(rows) == 6 and "error" not in statuses
    assert statuses.count("stopped early") >= 1 and statuses.count("completed") >= 1
    assert all(r["epochs_run"] == 2 for r in rows if r["status"] == "completed")
    assert all(r["epochs_run"] == 1 for r in rows if r["status"] == "stopped early")
    assert [r["best_val_acc"] for r in rows] == sorted((r["best_val_acc"] for r in rows), reverse=True)
    assert live_placement_groups(within_s=30) == []

    exp = tmp_path / "asha"
    assert pq.read_table(exp / "results.parquet").num_rows == 6
    assert (exp / "results.csv").read_text().startswith('"trial_id","status","best_val_acc"')
    assert (exp / "results.md").read_text().startswith("| rank | trial_id | status | best_val_acc")
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["best_trial"] == rows[0]["trial_id"] and summary["test"]["acc"] > 0.5
    recipe = yaml.safe_load((exp / "best_recipe.yaml").read_text())
    assert recipe["optim"]["lr"] == pytest.approx(rows[0]["optim.lr"])
    assert recipe["model"]["lstm_layers"] == rows[0]["model.lstm_layers"] and recipe["storage"]["name"] == ""

    res = run_job(
        "train.py",
        "--config",
        str(exp / "best_recipe.yaml"),
        "--storage",
        str(tmp_path),
        "--name",
        "retrain",
        ray_address=ray_cluster,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert Config.from_dict(
        yaml.safe_load((tmp_path / "retrain" / "epoch_0002" / "config.yaml").read_text())
    ) == Config.from_dict(recipe).override({"storage.path": str(tmp_path), "storage.name": "retrain"})


def live_placement_groups(within_s: float) -> list[str]:
    """Placement groups not yet removed, after giving Ray Train's cleaner `within_s` to free the
    groups of trials stopped moments ago (it polls for their dead controllers)."""
    deadline = time.time() + within_s
    while True:
        live = [
            f"{pg.placement_group_id} {pg.state} {pg.bundles}"
            for pg in list_placement_groups(detail=True)
            if pg.state != "REMOVED"
        ]
        if not live or time.time() > deadline:
            return live
        time.sleep(1)


def terminated_trials(exp: Path) -> int:
    states = sorted(exp.glob("experiment_state-*.json"))
    return states[-1].read_text().count("TERMINATED") if states else 0


def test_interrupted_experiment_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path):
    """Killed and resumed from a directory other than the repo root, with a relative storage path:
    the checkpoints are where the user asked, and --resume finds them."""
    args = [
        "--storage",
        "exps",
        "--name",
        "resumable",
        "--workers",
        "1",
        "--num-samples",
        "2",
        *[
            f"--set={k}={v}"
            for k, v in (TINY | {"scaling.num_workers": 1, "tune.max_concurrent": 1, "tune.scheduler": "fifo"}).items()
        ],
    ]
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"} | {"RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "tune.py"), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    exp = tmp_path / "exps" / "resumable"
    deadline = time.time() + 300
    while terminated_trials(exp) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-experiment
    proc.wait()
    assert terminated_trials(exp) == 1 and not (exp / "results.csv").exists()
    finished = [d for d in (exp / "trials").iterdir() if (d / "epoch_0002").exists()]
    assert len(finished) == 1
    stamps = {p: p.stat().st_mtime_ns for p in finished[0].rglob("checkpoint.pt")}

    res = run_job("tune.py", "--resume", *args, ray_address=ray_cluster, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming experiment" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in finished[0].rglob("checkpoint.pt")} == stamps  # not rerun
    table = pq.read_table(exp / "results.parquet").to_pylist()
    assert len(table) == 2 and all(r["status"] == "completed" and r["epochs_run"] == 2 for r in table)

    res = run_job("tune.py", "--resume", *args, "--set", "model.hidden=64", ray_address=ray_cluster, cwd=tmp_path)
    assert res.returncode == 2 and "exists with another config (model.hidden: 32 -> 64)" in res.stderr


def test_optuna_search(ray_cluster, tmp_path):
    cfg = Config().override(
        TINY
        | {
            "storage.path": str(tmp_path),
            "storage.name": "tpe",
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


def test_sync_halving_pauses_trials_at_the_rung_and_resumes_the_best(ray_cluster, tmp_path):
    """SHA: 4 trials, 2 at a time, rung at epoch 1 of 2: every trial waits there, paused (so the
    other trials start), and the best 2 go on from their epoch-1 checkpoints; the others stop."""
    cfg = Config().override(
        TINY
        | {
            "storage.path": str(tmp_path),
            "storage.name": "sha",
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

    metrics = read_metrics(str(tmp_path / "sha" / "metrics")).to_pylist()
    at_rung = {m["trial_id"]: m["val_acc"] for m in metrics if m["epoch"] == 1}
    went_on = {t for t, r in rows.items() if r["epochs_run"] == 2}
    assert went_on == set(sorted(at_rung, key=lambda t: -at_rung[t])[:2])
    assert live_placement_groups(within_s=30) == []

    # Tune's results per trial: (epoch, training_iteration). A survivor that waited at the rung was
    # paused and started again (its iterations count from 1 again), and its Train run resumed from the
    # epoch-1 checkpoint (epoch 1 is not trained twice).
    reported = {
        t: [(r["epoch"], r["training_iteration"]) for r in map(json.loads, (d / "result.json").open())]
        for d in (tmp_path / "sha").glob("trial_*")
        for t in rows
        if t in d.name
    }
    assert all(reported[t] in ([(1, 1), (2, 1)], [(1, 1), (2, 2)]) for t in went_on)
    assert any(reported[t] == [(1, 1), (2, 1)] for t in went_on)
