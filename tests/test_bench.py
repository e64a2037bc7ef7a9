"""The fast recipe and the benchmarks: the recipe loads and validates; time_to_accuracy.py's smoke
runs both sides (the PyTorch example and jobs/train.py with the recipe) on a slice of the bundled
sample and writes its JSON; memory_format.py runs both layouts; ema_cost.py times every variant. Keys
and types only: no timed assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.helpers import ROOT

from lstmclf.config import load_config
from lstmclf.models import build_model

BENCH = ROOT / "bench" / "time_to_accuracy.py"


@pytest.mark.parametrize("recipe", ["fast.yaml", "gpu.yaml"])
def test_recipe_loads_and_validates(recipe):
    cfg = load_config(ROOT / "recipes" / recipe)
    assert cfg.model.head == "lstm"  # a CNN-LSTM, as the issue asks
    assert cfg.data.path == "sample" and cfg.storage.path == "runs"  # where it runs comes from the command line
    build_model(cfg.model, 10, (1, 28, 28))


def bench(*args: str, tmp_path) -> dict:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, str(BENCH), *args, "--data", "sample", "--smoke", "--reps", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(out.read_text())


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@pytest.mark.slow
def test_time_to_accuracy_smoke(tmp_path):
    res = bench(tmp_path=tmp_path)
    assert {"machine", "started", "command", "target", "runs", "summary", "speedup"} <= res.keys()
    for side in ("baseline", "lstmclf"):
        (run,) = res["runs"][side]
        assert number(run["wall_s"]) and run["wall_s"] > 0
        assert number(run["peak_rss_mb"]) and run["peak_rss_mb"] >= run["peak_process_rss_mb"] > 0
        (epoch,) = run["epochs"]  # --smoke: one epoch each side
        assert epoch["epoch"] == 1 and 0.0 <= epoch["test_acc"] <= 1.0 and number(epoch["epoch_s"])
        assert run["reach"] is None or run["reach"]["epoch"] == 1
        assert {"epochs_to_target", "epochs_s_to_target", "wall_s", "peak_rss_mb"} <= res["summary"][side].keys()
    assert res["runs"]["lstmclf"][0]["peak_rss_mb"] > res["runs"]["lstmclf"][0]["peak_process_rss_mb"]  # Ray's too
    assert res["speedup"]["targets"] == {"epochs_s": 10, "wall_s": 4}


@pytest.mark.slow
def test_input_path_smoke(tmp_path):
    res = bench("input", tmp_path=tmp_path)
    rates = res["img_s"]
    assert {
        "lstmclf",
        "lstmclf, shift 2",
        "torchvision DataLoader, 0 workers",
        "torchvision DataLoader, 2 workers",
    } <= (rates.keys())
    assert all(number(r["median"]) and r["median"] > 0 for r in rates.values())
    share = res["input_share_of_epoch"]
    assert number(share["share"]) and 0 < share["share"] < 1


@pytest.mark.slow
def test_memory_format_bench_runs_both_layouts(tmp_path):
    out = tmp_path / "mf.json"
    cmd = [sys.executable, str(ROOT / "bench" / "memory_format.py"), "--data", "sample", "--reps", "2"]
    cmd += ["--steps", "3", "--warmup", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    assert set(res["recipes"]) == {"default", "fast"}
    for rec in res["recipes"].values():
        assert all(len(v) == 2 and all(number(x) and x > 0 for x in v) for v in rec["img_s"].values())
        assert rec["img_s"].keys() == {"nchw", "channels_last"} and number(rec["channels_last_over_nchw"])


@pytest.mark.slow
def test_ema_cost_bench_times_every_variant(tmp_path):
    out = tmp_path / "ema.json"
    cmd = [sys.executable, str(ROOT / "bench" / "investigations" / "ema_cost.py"), "--data", "sample", "--reps", "2"]
    cmd += ["--steps", "3", "--set", "train.batch_size=16", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["ms_per_step"].keys() == {"none", "WeightAverage", "AveragedModel"}
    assert all(len(v) == 2 and all(number(x) and x > 0 for x in v) for v in res["ms_per_step"].values())
    assert res["over_none"].keys() == {"WeightAverage", "AveragedModel"}
    assert all(number(x) for x in res["over_none"].values())
