"""The main job as a user runs it: from a directory that is not the repo root, with the default or a
relative storage path, reading its console as a person would."""

import json
import re
from pathlib import Path

import pytest
import ray
from support.helpers import CHECKPOINT_FILES, RESULTS, ray_started, run_job

from lstmclf.records import read_metrics

pytestmark = pytest.mark.slow

# What a healthy run must not print: Ray's C++ log lines ("[... E 123 456] core_worker.cc:..."),
# error-level log records, Python or native stacks, Tune's boxed tables, the raylet's forwarded warnings.
NOISE = re.compile(
    r"\] \w+\.cc:\d+|\bERROR\b|Traceback|Fatal Python error|Stack \(most recent|malloc|Aborted"
    r"|[╭│╰]|\(raylet\)|\(pid=|pid=\d+\)"
)


def session_checkpoints() -> list[Path]:
    """Checkpoints under the test cluster's session directory (where Tune's trial working
    directories are): a relative storage path resolved there would leave them here."""
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    return sorted(session.rglob("checkpoint.pt"))


def test_tune_smoke_with_the_default_storage_from_another_directory(ray_cluster, tmp_path):
    """README's first command, short: `jobs/tune.py --smoke` with no --storage writes everything
    under ./runs of the directory it was run in, and prints a console a person can read."""
    before = session_checkpoints()
    work = tmp_path / "work"
    work.mkdir()
    res = run_job("tune.py", "--smoke", ray_address=ray_cluster, cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]

    (exp,) = (work / "runs").iterdir()
    trials = sorted((exp / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        epochs = sorted(trial.glob("epoch_*"))
        assert epochs and all((e / "checkpoint.pt").is_file() and (e / "manifest.json").is_file() for e in epochs)
    assert session_checkpoints() == before  # none went to Ray's temporary directory
    best = re.search(r"^best checkpoint: (.+)$", res.stdout, re.M)
    assert best and Path(best[1]).parent.parent.parent == exp and (Path(best[1]) / "checkpoint.pt").is_file()
    assert f"best recipe:     {exp}/best_recipe.yaml" in res.stdout
    # What an experiment leaves in a local directory (test_tune reads the same from S3).
    assert set(RESULTS) <= {p.name for p in exp.iterdir()}
    assert json.loads((exp / "summary.json").read_text())["best_checkpoint"] == best[1]
    table = read_metrics(str(exp / "metrics"))
    assert sorted(set(table["trial_id"].to_pylist())) == [t.name for t in trials]

    console = res.stdout + res.stderr
    assert ray_started(res.stdout.splitlines()[0])  # says where Ray is and where its own messages went
    assert not NOISE.search(console), NOISE.search(console)
    epochs_run = sum(
        int(m)
        for m in re.findall(r"^\| \d+ \| \S+ \| [\w ]+ \| [\d.]+% \| [\d.]+ \| \d+ \| (\d+) \|", res.stdout, re.M)
    )
    assert epochs_run >= 3  # 2 trials x 2 epochs, or one stopped early by ASHA
    assert len(console.splitlines()) < 10 * epochs_run
    assert table.num_rows >= epochs_run
    assert len(re.findall(r"^trial \S+  epoch \d/2  val_acc", res.stdout, re.M)) == epochs_run


def test_a_failing_trial_is_one_readable_block(ray_cluster, tmp_path):
    """One of two trials cannot load its backbone weights: its error reaches the console once, as a
    short block naming the cause and the traceback's file; the other trial still finishes."""
    res = run_job(
        "tune.py",
        "--smoke",
        "--storage",
        "exp",
        "--set",
        "tune.space={model.pretrained: {grid: ['', missing.pt]}}",
        "--set",
        "tune.num_samples=1",
        "--set",
        "train.max_failures=0",
        "--epochs",
        "1",
        ray_address=ray_cluster,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    console = res.stdout + res.stderr
    block = re.search(r"^trial (\S+) failed after epoch 0:\n  (.+)\n  whole traceback: (\S+)$", res.stderr, re.M)
    assert block, res.stderr
    assert f"pretrained weights {tmp_path}/missing.pt not found" in block[2]  # made absolute, then not found
    assert Path(block[3]).is_file() and "missing.pt" in Path(block[3]).read_text()
    assert "Traceback" not in console and console.count("missing.pt not found") == 1
    assert re.search(r"^\| 1 \| \S+ \| completed \|", res.stdout, re.M)
    assert re.search(rf"^\| 2 \| {block[1]} \| error \|", res.stdout, re.M)


def test_train_with_a_relative_storage_from_another_directory(ray_cluster, tmp_path):
    res = run_job(
        "train.py",
        "--storage",
        "out",
        "--name",
        "rel",
        "--epochs",
        "1",
        "--set",
        "data.limit_train=600",
        "--set",
        "data.limit_test=100",
        "--set",
        "model.width=4",
        "--set",
        "model.hidden=16",
        ray_address=ray_cluster,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "out" / "rel"
    assert set(CHECKPOINT_FILES) <= {p.name for p in (run / "epoch_0001").iterdir()}
    assert f"best checkpoint: {run}/epoch_0001" in res.stdout
    # What a run leaves in a local directory (test_train reads the same from S3).
    assert json.loads((run / "summary.json").read_text())["best_checkpoint"] == f"{run}/epoch_0001"
    assert read_metrics(str(run / "metrics"))["epoch"].to_pylist() == [1]
    assert re.search(r"^epoch 1/1  train_loss [\d.]+  val_loss", res.stdout, re.M)  # relayed from the controller
    assert not NOISE.search(res.stdout + res.stderr), NOISE.search(res.stdout + res.stderr)
