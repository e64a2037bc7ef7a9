"""jobs/compare.py --smoke on the session's Ray cluster: every preset model trained with 2 seeds on a slice
of the bundled sample, the table, the verdict (its p-values the exact binomial of the discordant pairs of
the runs' own predictions), the plots and report.md; then --resume trains and scores nothing again."""

import json

import numpy as np
import pytest
from support.commands import job_module
from support.helpers import run_job
from test_comparison import two_sided

from lstmclf.config import PRESET_VARIANTS, Config
from lstmclf.driver import load_data

pytestmark = pytest.mark.slow

CNN_LSTMS = {"cnn_lstm", "vgg_lstm", "resnet_lstm"}
PLAIN_CNNS = {"vgg", "resnet"}


def test_compare_smoke_reports_every_model_and_resumes_without_training(ray_cluster, tmp_path):
    args = ["--smoke", "--storage", str(tmp_path), "--name", "cmp"]
    res = run_job("compare.py", *args, ray_address=ray_cluster)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "cmp"
    summary = json.loads((exp / "comparison.json").read_text())

    rows = {r["model"]: r for r in summary["models"]}
    assert set(rows) == set(PRESET_VARIANTS)
    for name, r in rows.items():
        assert r["runs"] == 2 and 0.0 <= r["test_acc"] <= 1.0 and r["test_acc_std"] >= 0.0, name
        assert all(0.0 <= r[k] <= 1.0 for k in ("precision", "recall", "f1", "val_acc")), name
        assert r["params"] > 10_000 and r["train_s"] > 0 and r["img_s"] > 0, name
        assert f"| {name} | {r['kind']} | 2 | " in res.stdout  # the table, printed
    assert rows["resnet"]["params"] > 10 * rows["cnn_lstm"]["params"]  # ResNet-18 is ~11M, the CNN-LSTM ~0.1M
    assert {r["seed"] for r in summary["runs"]} == {0, 1} and len(summary["runs"]) == 12

    # The contenders are the best of each kind by mean validation accuracy, paired seed by seed.
    v = summary["verdict"]
    # Ties (likely on the smoke's few validation images) go to the first in compare.variants' order.
    for side, kind in (("cnn_lstm", CNN_LSTMS), ("plain_cnn", PLAIN_CNNS)):
        best = max(rows[m]["val_acc"] for m in kind)
        assert v[side] == next(m for m in PRESET_VARIANTS if m in kind and rows[m]["val_acc"] == best)
    labels = np.asarray(load_data(Config().override(job_module("compare").SMOKE)).test.labels)
    run_of = {(r["variant"], r["seed"]): r["trial_id"] for r in summary["runs"]}
    for t in v["per_seed"]:
        a, b = (np.asarray(predictions(exp, run_of[m, t["seed"]])) for m in (v["cnn_lstm"], v["plain_cnn"]))
        assert (t["b"], t["c"]) == (
            int(np.sum((a == labels) & (b != labels))),
            int(np.sum((a != labels) & (b == labels))),
        )
        assert 0.0 <= t["p_value"] <= 1.0 and t["p_value"] == pytest.approx(two_sided(t["b"], t["c"]), abs=1e-12)
    assert [t["seed"] for t in v["per_seed"]] == [0, 1]
    assert v["combined"] in ("better", "worse", "no significant difference at α = 0.05")
    assert f"{v['cnn_lstm']} (best CNN-LSTM) vs {v['plain_cnn']} (best plain CNN)" in res.stdout
    assert f": {v['combined']}\n" in res.stdout

    for png in ("val_acc.png", "test_vs_time.png", "confusion.png"):
        data = (exp / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, png
    report = (exp / "report.md").read_text()
    assert all(f"![{png}]({png})" in report for png in ("val_acc.png", "test_vs_time.png", "confusion.png"))
    assert f"**{v['combined']}**" in report and all(f"| {m} | " in report for m in PRESET_VARIANTS)
    assert "12 runs (12 trained), 12 scored on the test set now, 0 scored before" in res.stdout

    stamps = {p: p.stat().st_mtime_ns for p in (exp / "trials").rglob("checkpoint.pt")}
    kept = {p: p.stat().st_mtime_ns for p in (exp / "test").iterdir()}
    assert len(stamps) >= 12 and len(kept) == 12
    again = run_job("compare.py", *args, "--resume", ray_address=ray_cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming experiment" in again.stdout and " epoch " not in again.stdout  # nothing trained
    assert "12 runs (12 trained), 0 scored on the test set now, 12 scored before" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (exp / "trials").rglob("checkpoint.pt")} == stamps
    assert {p: p.stat().st_mtime_ns for p in (exp / "test").iterdir()} == kept
    assert json.loads((exp / "comparison.json").read_text())["verdict"] == v


def predictions(exp, trial_id: str) -> list[int]:
    return json.loads((exp / "test" / f"{trial_id}.json").read_text())["predictions"]
