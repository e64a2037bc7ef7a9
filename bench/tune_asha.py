"""Early stopping against the full budget: the same sampled configs under ASHA, synchronous successive
halving (SHA) and FIFO (every trial trains every epoch).

Random search samples every trial's config up front from a seed, so the experiments train exactly
the same configs; the comparison is epochs spent and the best test accuracy each one finds. Training
is seeded and deterministic, so a full-budget (FIFO) experiment of the same configs run earlier can
stand in for a new one (`--reuse-fifo`, whose results.parquet and summary.json are read).

    python bench/tune_asha.py --data ../shared/data/mnist --num-samples 16 --out bench/out/tune_asha.json
    python bench/tune_asha.py --schedulers sha --reuse-fifo /tmp/asha-bench/bench-fifo --storage /tmp/asha-bench \
        --out bench/out/tune_sha.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from lstmclf.config import Config
from lstmclf.driver import load_data
from lstmclf.tuning import run_experiment


def summarize(rows: list[dict], test_acc: float, wall_s: float | None) -> dict:
    """An experiment's ranked results table, in brief."""
    return {
        "epochs_spent": sum(r["epochs_run"] for r in rows),
        "wall_s": wall_s,
        "best_trial": rows[0]["trial_id"],
        "best_val_acc": rows[0]["best_val_acc"],
        "best_test_acc": test_acc,
        "trials": [{k: r[k] for k in ("trial_id", "status", "best_val_acc", "epochs_run")} for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6, help="full budget per trial (ASHA's max_t)")
    p.add_argument("--reduction-factor", type=int, default=4)
    p.add_argument("--storage", help="keep the experiments here (default: a temporary directory)")
    p.add_argument("--schedulers", default="asha,sha,fifo", help="comma-separated, of asha, sha, fifo")
    p.add_argument("--reuse-fifo", help="a full-budget experiment of the same configs, instead of running fifo")
    p.add_argument("--out", default="bench/out/tune_asha.json")
    a = p.parse_args()
    schedulers = a.schedulers.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        base = Config().override(
            {
                "data.path": str(Path(a.data).resolve()),
                "train.epochs": a.epochs,
                "storage.path": a.storage or tmp,
                "tune.num_samples": a.num_samples,
                "tune.grace_period": 1,
                "tune.reduction_factor": a.reduction_factor,
            }
        )
        splits = load_data(base)
        result = {"num_samples": a.num_samples, "epochs": a.epochs, "reduction_factor": a.reduction_factor}
        for scheduler in schedulers:
            t0 = time.perf_counter()
            out = run_experiment(
                base.override({"tune.scheduler": scheduler, "storage.name": f"bench-{scheduler}"}), splits=splits
            )
            result[scheduler] = summarize(out.table.to_pylist(), out.test_metrics["acc"], time.perf_counter() - t0)
    if a.reuse_fifo:
        exp = Path(a.reuse_fifo)
        summary = json.loads((exp / "summary.json").read_text())
        result["fifo"] = summarize(pq.read_table(exp / "results.parquet").to_pylist(), summary["test"]["acc"], None)
        result["fifo"]["reused"] = str(exp)
    full = a.num_samples * a.epochs
    for scheduler in ("asha", "sha"):
        if scheduler in result:
            result[f"{scheduler}_epochs_fraction"] = result[scheduler]["epochs_spent"] / full
            if "fifo" in result:
                result[f"{scheduler}_test_acc_gap_points"] = 100 * (
                    result["fifo"]["best_test_acc"] - result[scheduler]["best_test_acc"]
                )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("asha", "sha", "fifo")}, indent=2))


if __name__ == "__main__":
    main()
