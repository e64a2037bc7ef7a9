"""ASHA against the full budget: the same sampled configs, once with early stopping, once without.

Random search samples every trial's config up front from a seed, so both experiments train exactly
the same configs; the comparison is epochs spent and the best test accuracy each one finds.

    python bench/tune_asha.py --data ../shared/data/mnist --num-samples 16 --out bench/out/tune_asha.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lstmclf.config import Config
from lstmclf.train import load_data
from lstmclf.tune import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6, help="full budget per trial (ASHA's max_t)")
    p.add_argument("--reduction-factor", type=int, default=4)
    p.add_argument("--storage", help="keep the experiments here (default: a temporary directory)")
    p.add_argument("--out", default="bench/out/tune_asha.json")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Config().override({
            "data.path": str(Path(a.data).resolve()), "train.epochs": a.epochs, "storage.path": a.storage or tmp,
            "tune.num_samples": a.num_samples, "tune.grace_period": 1, "tune.reduction_factor": a.reduction_factor,
        })
        splits = load_data(base)
        result = {"num_samples": a.num_samples, "epochs": a.epochs, "reduction_factor": a.reduction_factor}
        for scheduler in ("asha", "fifo"):
            t0 = time.perf_counter()
            out = run(base.override({"tune.scheduler": scheduler, "storage.name": f"bench-{scheduler}"}),
                      splits=splits)
            rows = out.table.to_pylist()
            result[scheduler] = {
                "epochs_spent": sum(r["epochs_run"] for r in rows), "wall_s": time.perf_counter() - t0,
                "best_trial": rows[0]["trial_id"], "best_val_acc": rows[0]["best_val_acc"],
                "best_test_acc": out.test_metrics["acc"],
                "trials": [{k: r[k] for k in ("trial_id", "status", "best_val_acc", "epochs_run")} for r in rows],
            }
    full = a.num_samples * a.epochs
    result["asha_epochs_fraction"] = result["asha"]["epochs_spent"] / full
    result["test_acc_gap_points"] = 100 * (result["fifo"]["best_test_acc"] - result["asha"]["best_test_acc"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("asha", "fifo")}, indent=2))


if __name__ == "__main__":
    main()
