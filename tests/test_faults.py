"""Faults a long unattended run meets, injected for real: a worker process SIGKILLed, a worker node
lost, a Tune trial whose worker dies; then determinism and leaks. Each run must lose no work (no
epoch before the last checkpoint trained again) and end where an uninterrupted run ends."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray.util.state import list_actors, list_placement_groups
from support.helpers import ROOT, registered_checkpoints, start_job

from lstmclf.config import Config
from lstmclf.records import read_metrics
from lstmclf.training import fit

pytestmark = pytest.mark.slow

# Long enough epochs (about 2 s each on 2 cores) that a fault lands inside one.
FAULT = {
    "data.limit_train": 2400,
    "data.limit_test": 200,
    "train.epochs": 3,
    "train.batch_size": 32,
    "model.width": 8,
    "model.hidden": 32,
    "model.lstm_layers": 1,
    "scaling.num_workers": 2,
    "train.checkpoints_to_keep": 5,
    "train.max_failures": 2,
    "train.ema_decay": 0.9,  # validated and checkpointed: a resumed run must restore the average too
}
TOLERANCE = 1e-6  # a resumed run restores weights, their average, optimizer, schedule and every RNG stream


def final_metrics(run: Path) -> dict:
    last = sorted(run.glob("epoch_*"))[-1]
    return json.loads((last / "metrics.json").read_text())


def assert_same_result(a: dict, b: dict) -> None:
    for key in ("train_loss", "val_loss", "val_acc", "val_f1"):
        assert abs(a[key] - b[key]) <= TOLERANCE, (key, a[key], b[key])


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    """Two uninterrupted runs of the same config and seed."""
    runs = []
    for name in ("ref-a", "ref-b"):
        cfg = Config().override(FAULT | {"storage.path": str(tmp_path_factory.mktemp(name)), "storage.name": name})
        fit(cfg, progress=False)
        runs.append(Path(cfg.storage.path) / name)
    return runs


def test_the_same_seed_gives_the_same_metrics(reference):
    a, b = reference
    for ea, eb in zip(sorted(a.glob("epoch_*")), sorted(b.glob("epoch_*")), strict=True):
        ma, mb = (json.loads((e / "metrics.json").read_text()) for e in (ea, eb))
        assert {k: ma[k] for k in ma if k.startswith(("val_", "train_loss"))} == {
            k: mb[k] for k in mb if k.startswith(("val_", "train_loss"))
        }


def train_workers(address: str) -> list:
    """The live Ray Train worker actors of the cluster at `address` (given: other Ray instances may run)."""
    return list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def wait_for(path: Path, alive: threading.Thread, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert alive.is_alive() and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_worker_process_killed_mid_run(ray_cluster, reference, tmp_path):
    """SIGKILL of one rank's process after the first checkpoint: Ray Train restarts the worker group,
    resumes from that checkpoint and ends where the uninterrupted run ends."""
    cfg = Config().override(FAULT | {"storage.path": str(tmp_path), "storage.name": "killed"})
    run = tmp_path / "killed"
    before = {w.pid for w in train_workers(ray_cluster)}
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(out=fit(cfg, progress=False)))
    thread.start()
    # Epoch 1's row in the metrics table is written once Ray Train has taken the report and registered
    # its checkpoint (the checkpoint's own manifest lands a moment before: killed then, the run restarts
    # from scratch, rightly).
    wait_for(run / "metrics" / "trial_id=killed" / "epoch=1.parquet", thread)
    stamps = registered_checkpoints(run)
    assert "epoch_0001" in stamps
    victim = next(w for w in train_workers(ray_cluster) if w.pid not in before)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=600)
    assert outcome["out"].epochs_run == 3
    after = {p.parent.name: p.stat().st_mtime_ns for p in run.glob("epoch_*/checkpoint.pt")}
    assert {k: after[k] for k in stamps} == stamps  # no checkpointed epoch trained (and written) again
    reported = read_metrics(str(run / "metrics")).to_pylist()
    assert sorted({r["epoch"] for r in reported}) == [1, 2, 3]
    assert any(r["reported_at"].timestamp() > killed_at for r in reported)  # the run went on after the kill
    assert_same_result(final_metrics(run), final_metrics(reference[0]))


def test_a_worker_node_lost_mid_run(tmp_path):
    """A 3-node cluster (ray.cluster_utils.Cluster) loses the node of one DDP rank after the first
    checkpoint and gets a fresh node: the run resumes on it and ends where an uninterrupted run on the
    same cluster ends."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "node_loss.py"), str(tmp_path), json.dumps(FAULT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["epochs_run"] == 3
    assert "epoch_0001" in got["checkpoints_before_loss"]
    assert {k: got["checkpoints_after"][k] for k in got["checkpoints_before_loss"]} == got["checkpoints_before_loss"]
    assert sorted({e for e, _ in got["reported"]}) == [1, 2, 3]
    assert any(t > got["lost_at"] for _, t in got["reported"])
    assert_same_result(got["final"], got["reference"])
    assert got["test_acc"] == got["reference_test_acc"]


def test_a_tune_trial_whose_worker_dies_resumes_and_the_experiment_completes(ray_cluster, tmp_path):
    args = [
        "--storage",
        "exp",
        "--name",
        "faulty",
        "--num-samples",
        "2",
        "--workers",
        "1",
        "--set",
        "tune.scheduler=fifo",
        "--set",
        "tune.max_concurrent=2",
        *[f"--set={k}={v}" for k, v in FAULT.items() if k != "scaling.num_workers"],
    ]
    before = {w.pid for w in train_workers(ray_cluster)}
    proc = start_job(
        "tune.py", *args, ray_address=ray_cluster, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    exp = tmp_path / "exp" / "faulty"
    deadline = time.time() + 300
    while not list(exp.glob("metrics/*/epoch=1.parquet")):  # reported: its checkpoint is registered
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    (row,) = exp.glob("metrics/*/epoch=1.parquet")
    first = exp / "trials" / row.parent.name.removeprefix("trial_id=")
    stamp = (first / "epoch_0001" / "checkpoint.pt").stat().st_mtime_ns
    victim = next(w for w in train_workers(ray_cluster) if w.pid not in before)
    os.kill(victim.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    rows = re.findall(r"^\| \d \| (\S+) \| (\w+) \|", out, re.M)
    assert len(rows) == 2 and {status for _, status in rows} == {"completed"}, out
    assert (first / "epoch_0001" / "checkpoint.pt").stat().st_mtime_ns == stamp
    reported = read_metrics(str(exp / "metrics")).to_pylist()
    assert sorted(r["epoch"] for r in reported if r["trial_id"] == first.name) == [1, 2, 3]


def alive_pids(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}


@pytest.mark.timeout(1800)  # 32 Train V2 runs start about 8 processes each: 10-12 minutes on 2 cores
def test_no_leaks_over_32_trials_with_early_stopping(ray_cluster, tmp_path):
    """32 trials, ASHA stopping most: afterwards no placement group, Train actor or training process
    is left, and the driver's memory does not grow from trial to trial."""
    import psutil

    # What the session's cluster holds already (other tests' in-process runs) is not this experiment's.
    pgs = {pg.placement_group_id for pg in list_placement_groups(address=ray_cluster) if pg.state != "REMOVED"}
    actors = {a.actor_id for a in list_actors(address=ray_cluster, filters=[("state", "=", "ALIVE")])}
    args = [
        "--storage",
        "exp",
        "--name",
        "many",
        "--num-samples",
        "32",
        "--workers",
        "1",
        "--epochs",
        "3",
        "--set",
        "data.limit_train=300",
        "--set",
        "data.limit_test=100",
        "--set",
        "model.width=4",
        "--set",
        "model.hidden=16",
        "--set",
        "model.lstm_layers=1",
        "--set",
        "tune.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}",
    ]
    proc = start_job(
        "tune.py", *args, ray_address=ray_cluster, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    driver, rss, workers = psutil.Process(proc.pid), [], set()
    for line in proc.stdout:  # the job's own console: one line when each trial ends
        if re.match(r"^trial \S+ (finished|stopped early)", line):
            rss.append(driver.memory_info().rss / 2**20)
            workers |= {w.pid for w in train_workers(ray_cluster)}
    assert proc.wait(timeout=60) == 0
    assert len(rss) == 32
    deadline = time.time() + 60
    while time.time() < deadline:
        live_pgs = {
            pg.placement_group_id for pg in list_placement_groups(address=ray_cluster) if pg.state != "REMOVED"
        } - pgs
        train_actors = [
            a
            for a in list_actors(address=ray_cluster, filters=[("state", "=", "ALIVE")])
            if a.class_name in ("RayTrainWorker", "TrainController") and a.actor_id not in actors
        ]
        if not live_pgs and not train_actors and not alive_pids(workers):
            break
        time.sleep(1)
    assert not live_pgs and not train_actors and not alive_pids(workers), (live_pgs, train_actors, workers)
    early, late = sorted(rss[4:12]), sorted(rss[-8:])
    assert late[4] - early[4] < 64, rss  # MB: medians of trials 5-12 and 25-32


STATE_API_PROBE = """
import sys, ray
from lstmclf.driver import RUNTIME_ENV
env = RUNTIME_ENV if sys.argv[1] == "hook" else None
ray.init(num_cpus=1, include_dashboard=True, log_to_driver=False, runtime_env=env)

@ray.remote(num_cpus=0)
def ask():  # what Ray Train's PlacementGroupCleaner does to see whether a controller is dead
    from ray.util.state import get_actor
    try:
        get_actor("0" * 32, timeout=30)
        return "ok"
    except Exception as e:
        return type(e).__name__ + ": " + str(e)

print(ray.get(ask.remote()))
"""


def test_workers_find_their_own_cluster_beside_another_ray(ray_cluster):
    """With two Ray instances on the machine (the session's and this one), Ray's state API inside a
    worker cannot tell which is its own and raises; lstmclf's setup hook pins each worker to its own."""
    out = {}
    for mode in ("plain", "hook"):
        res = subprocess.run(
            [sys.executable, "-c", STATE_API_PROBE, mode],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        out[mode] = res.stdout.strip().splitlines()[-1]
    assert out["plain"].startswith("ConnectionError: Found multiple active Ray instances"), out
    assert out["hook"] == "ok"
