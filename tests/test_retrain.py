"""Scheduled retraining end to end: jobs/retrain.py as a schedule runs it, on the session's Ray cluster,
with the data, the runs and the registry on a real S3 server (the killed run's checkpoints on a local
disk, to watch them). One model's life, in order: a first champion, a weaker challenger rejected, a
better one tried dry and then promoted, a run killed and resumed, a forced promotion rolled back.
The gate itself, on hand-made predictions: tests/test_promotion.py."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from support.helpers import ROOT, ray_started, run_job

from lstmclf.data import prepare_dataset
from lstmclf.registry import Registry

pytestmark = pytest.mark.slow
MODEL = "mnist"
# The deployment's config: a slice of the sample, a tiny model, one worker; the first recipe trains two epochs
# (about 50% on the frozen test set). Training is seeded: on CPU every run of a recipe gives the same model.
CONFIG = {
    "data": {"limit_train": 1000},
    "model": {"width": 4, "hidden": 16, "lstm_layers": 1},
    "train": {"epochs": 2, "batch_size": 32, "checkpoints_to_keep": 5},
    "scaling": {"num_workers": 1},
    "retrain": {"model_name": MODEL, "margin": 0.01, "alpha": 0.01, "max_recall_drop": 0.1},
}


@pytest.fixture(scope="module")
def world(s3, ray_cluster, tmp_path_factory):
    """The current data and a frozen test set (both the bundled sample, published with manifests), a
    registry and run storage in the bucket, and the config file the schedule runs with."""
    tmp = tmp_path_factory.mktemp("retrain")
    data, frozen = s3.uri("data"), s3.uri("frozen-test")
    prepare_dataset("sample", data, endpoint=s3.endpoint)
    prepare_dataset("sample", frozen, endpoint=s3.endpoint)
    config = CONFIG | {
        "data": {**CONFIG["data"], "path": data},
        "storage": {"path": s3.uri("runs"), "registry": s3.uri("registry"), "s3_endpoint": s3.endpoint},
        "retrain": {**CONFIG["retrain"], "test_data": frozen},
    }
    (tmp / "retrain.yaml").write_text(yaml.safe_dump(config))
    return {
        "tmp": tmp,
        "config": str(tmp / "retrain.yaml"),
        "registry": Registry(config["storage"]["registry"], s3.endpoint),
        "frozen_manifest": hashlib.sha256(s3.get(f"{frozen}/manifest.json")).hexdigest(),
        "ray": ray_cluster,
    }


def retrain(world, slot, *args, **popen):
    """jobs/retrain.py with the deployment's config, for `slot`; run to the end, or started (`popen`)."""
    argv = ["--config", world["config"], "--slot", slot, *args]
    if not popen:
        return run_job("retrain.py", *argv, ray_address=world["ray"])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_ADDRESS": world["ray"]}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "retrain.py"), *argv], env=env, cwd=ROOT, text=True, **popen
    )


def recorded(run, checkpoint):
    """Whether Ray Train has recorded `checkpoint` of `run` (what it resumes from), not only written it."""
    snapshot = run / "checkpoint_manager_snapshot.json"
    try:
        return any(
            c["checkpoint_dir_name"] == checkpoint for c in json.loads(snapshot.read_text())["checkpoint_results"]
        )
    except (OSError, ValueError, KeyError):
        return False  # not there yet, or caught mid-write


def decision(world, version):
    return world["registry"].decision(MODEL, version)


def test_first_run_promotes_while_a_second_run_of_the_slot_exits_and_a_rerun_does_nothing(world):
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [retrain(world, "day-1", **pipes) for _ in range(2)]  # the same schedule, twice at once
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    (held,) = [out for out, _ in outs if "is held by" in out]
    (ran,) = [out for out, _ in outs if out != held]
    assert held.count("\n") == 1 and held.startswith("slot day-1 of mnist is held by ") and not ray_started(held)
    assert "promoted: mnist version 1 is the champion (was none): no champion yet" in ran, ran

    r = world["registry"]
    assert r.versions(MODEL) == [1] and r.champion(MODEL)[0] == 1
    record = decision(world, 1)
    assert record["outcome"] == "promoted" and record["champion"] is None and record["slot"] == "day-1"
    assert record["test"]["images"] == 1000 and record["test"]["digest"] == {"manifest.json": world["frozen_manifest"]}
    assert list(record["data"]["digest"]) == ["manifest.json"] and record["code"]["lstmclf"]
    assert record["challenger"]["recipe_from"] == "the config (no champion)"

    again = retrain(world, "day-1")
    assert again.returncode == 0 and again.stdout.startswith("slot day-1 of mnist is already done (promoted, ")
    assert not ray_started(again.stdout) and r.versions(MODEL) == [1]


def test_a_weaker_recipe_is_registered_but_rejected_and_the_champion_stays(world):
    r = world["registry"]
    before = r.champion(MODEL)
    res = retrain(world, "day-2", "--set", "optim.lr=0.00001")  # the champion's recipe, learning nothing
    assert res.returncode == 0, res.stderr[-3000:]
    assert "registered the challenger as mnist version 2" in res.stdout and "\nrejected: " in res.stdout, res.stdout
    assert r.versions(MODEL) == [1, 2] and r.champion(MODEL) == before  # the pointer was not even rewritten
    record = decision(world, 2)
    assert record["outcome"] == "rejected" and record["champion"]["version"] == 1
    assert record["challenger"]["recipe_from"] == "champion version 1"
    assert record["mcnemar"]["b"] < record["mcnemar"]["c"] and record["mcnemar"]["p_value"] > 0.5
    assert any("below the margin" in reason for reason in record["reasons"])
    assert record["challenger"]["acc"] < record["champion"]["acc"]
    assert r.show(MODEL, 2)["config"]["optim"]["lr"] == 0.00001


def test_a_better_recipe_searched_dry_then_promoted_on_a_significant_difference(world):
    """Three times the data (new labels arrived) and twice the epochs: about 87% against 49%, with b in
    the hundreds and c near ten, and no class's recall more than a few points down. The dry run searches
    two learning rates around the recipe (retrain.search); the real run promotes the best trial."""
    r = world["registry"]
    before = r.champion(MODEL)
    better = ["--set", "data.limit_train=3000", "--set", "train.epochs=4"]
    search = ["--set", "retrain.search=true", "--set", "tune.scheduler=fifo", "--set", "tune.num_samples=1"]
    search += ["--set", "tune.space={optim.lr: {grid: [0.003, 0.005]}}"]
    dry = retrain(world, "day-3", *better, *search, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.count("finished 4 epochs") == 2, dry.stdout  # two trials, each trained to the end
    assert "would promote (dry run): better by" in dry.stdout, dry.stdout
    assert r.versions(MODEL) == [1, 2] and r.champion(MODEL) == before  # a dry run writes no version

    res = retrain(world, "day-3", *better)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "which let go of it; resuming after its checkpoint" in res.stdout
    assert "epoch " not in res.stdout  # the dry run's training is reused, not repeated
    assert "promoted: mnist version 3 is the champion (was version 1): better by +" in res.stdout, res.stdout
    assert "/retrain-mnist-day-3/trials/" in r.show(MODEL, 3)["source"]["checkpoint"]  # the best trial's
    record = decision(world, 3)
    assert record["mcnemar"]["p_value"] < 0.01 and record["mcnemar"]["b"] > 3 * record["mcnemar"]["c"]
    assert record["challenger"]["acc"] - record["champion"]["acc"] > 0.2 and record["worst_class"]["recall_drop"] < 0.1
    pointer = r.champion_record(MODEL)[0]
    assert pointer["version"] == 3 and pointer["previous"] == [1]


def test_a_killed_run_leaves_the_registry_alone_and_its_rerun_resumes(world, s3):
    """SIGKILL of the job mid-training, once Ray Train has recorded the first epoch's checkpoint; the rerun
    of the slot takes over at once (the holder's process is gone), resumes the Ray Train run from that
    checkpoint, and is forced through the gate."""
    r, storage = world["registry"], world["tmp"] / "runs"
    weak = ["--storage", str(storage), "--set", "optim.lr=0.00001", "--set", "train.epochs=6"]
    weak += ["--set", "train.checkpoints_to_keep=10"]  # every epoch's checkpoint stays, to be looked at
    keys = s3.keys(r.uri)
    champion = r.champion(MODEL)
    proc = retrain(world, "day-4", *weak, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = storage / "retrain-mnist-day-4"
    deadline = time.time() + 300
    while not recorded(run, "epoch_0001") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # the job only: its Ray workers belong to the session's cluster
    proc.wait()
    assert recorded(run, "epoch_0001") and not (run / "epoch_0006").exists()
    assert [k for k in s3.keys(r.uri) if k not in keys] == ["mnist/slots/day-4.json"]  # the claim, nothing else
    assert r.champion(MODEL) == champion and r.versions(MODEL) == [1, 2, 3]
    stamp = (run / "epoch_0001" / "checkpoint.pt").stat().st_mtime_ns

    res = retrain(world, "day-4", *weak, "--force", "testing the override")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "which is gone; resuming after its claim" in res.stdout and "epoch 1/6" not in res.stdout
    assert "epoch 6/6" in res.stdout and (run / "epoch_0001" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert "promoted: mnist version 4 is the champion (was version 3): forced (testing the override)" in res.stdout
    record = decision(world, 4)
    assert record["forced"] == "testing the override" and record["outcome"] == "promoted"
    assert record["reasons"] and "below the margin" in " ".join(record["reasons"])  # what the gate said
    assert record["challenger"]["run"] == str(run)
    slot = json.loads(s3.get(f"{r.uri}/mnist/slots/day-4.json"))
    assert slot["state"] == "done" and slot["takeovers"] == 1


def test_rollback_puts_the_champion_before_back(world):
    reg = ["--config", world["config"]]
    res = run_job("registry.py", *reg, "rollback", MODEL)
    assert res.returncode == 0 and res.stdout == "mnist: champion is now version 3 (rolled back from version 4)\n"
    assert world["registry"].champion_record(MODEL)[0]["previous"] == [1]


def test_bad_input_is_one_line_before_any_work(tmp_path):
    for args, message in [
        (["--slot", "nightly/1"], "error: slot 'nightly/1' must be letters, digits"),
        (["--name", "x"], "error: --name: a retraining run is named after its model and slot"),
        (["--force", " "], "error: --force needs a reason"),
        (["--set", "retrain.alpha=1.5"], "error: config value retrain.alpha: 1.5 is outside (0, 1)"),
        (["--dry-run", "--force", "x"], "retrain.py: error: argument --force: not allowed with argument --dry-run"),
    ]:
        res = run_job("retrain.py", "--registry", str(tmp_path / "r"), *args, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and message in lines[-1], (args, res.stderr)
        assert len(lines) == 1 or lines[0].startswith("usage: "), res.stderr  # argparse shows its usage first
        assert not (tmp_path / "r").exists()


def test_the_code_version_is_the_checkouts_commit_and_none_outside_one(tmp_path):
    from lstmclf.retraining import code_version

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert code_version()["git"].removesuffix("+dirty") == head.stdout.strip()
    # The package copied out of the repository, as in the image: no commit, and no failure.
    shutil.copytree(ROOT / "lstmclf", tmp_path / "lstmclf", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import json, lstmclf.retraining as r; print(json.dumps(r.code_version()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["git"] is None
