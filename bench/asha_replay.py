"""Replay Ray's ASHA scheduler on the learning curves of a full-budget (FIFO) experiment.

Training is seeded and deterministic: a trial that ASHA stops after k epochs has exactly the first k
epochs of the same config's full-budget curve (checked here against a measured ASHA run when one is
given). So ASHA's decisions for other grace periods, reduction factors and concurrency can be
replayed without training: Ray's own `ASHAScheduler` (built by `lstmclf.tune.scheduler`) gets each
trial's recorded `val_acc` per epoch, in the order a simulated clock with `--slots` concurrent trials
and the recorded `epoch_s` durations delivers them. Trials start in trial-id order, as
`BasicVariantGenerator` issues them. A replay is computed, not measured: the measured run is the
ground truth, and the replay of its own settings should match it.

    python bench/asha_replay.py /tmp/asha-bench/bench-fifo --measured /tmp/asha-bench/bench-asha
"""

from __future__ import annotations

import argparse
import heapq
import json
from dataclasses import dataclass

import pyarrow.dataset as ds
from ray.tune.schedulers import TrialScheduler

from lstmclf.config import Config
from lstmclf.tune import scheduler


@dataclass(frozen=True)
class _Trial:
    trial_id: str  # all the scheduler reads of a trial


def curves(metrics_uri: str) -> dict[str, list[tuple[float, float]]]:
    """trial id -> [(val_acc, epoch_s) for epochs 1..n], from an experiment's Parquet metrics table."""
    rows = ds.dataset(metrics_uri, partitioning="hive").to_table(
        columns=["trial_id", "epoch", "val_acc", "epoch_s"]).to_pylist()
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for r in rows:
        out.setdefault(r["trial_id"], {})[r["epoch"]] = (r["val_acc"], r["epoch_s"])
    return {t: [e[k] for k in sorted(e)] for t, e in sorted(out.items())}


def replay(full: dict[str, list[tuple[float, float]]], epochs: int, grace: int, rf: int, slots: int) -> dict:
    """Epochs ASHA runs, and the trial it ranks first (best validation accuracy seen), on these curves."""
    cfg = Config().override({"train.epochs": epochs, "tune.grace_period": grace, "tune.reduction_factor": rf})
    sched = scheduler(cfg)
    sched.set_search_properties("val_acc", "max")
    pending = list(full)  # trial-id order
    clock: list[tuple[float, str, int]] = []  # (time the epoch ends, trial, epoch)
    ran: dict[str, int] = {}

    def start(now: float) -> None:
        t = pending.pop(0)
        sched.on_trial_add(None, _Trial(t))
        heapq.heappush(clock, (now + full[t][0][1], t, 1))

    for _ in range(min(slots, len(pending))):
        start(0.0)
    while clock:
        now, t, epoch = heapq.heappop(clock)
        ran[t] = epoch
        action = sched.on_trial_result(None, _Trial(t), {"epoch": epoch, "val_acc": full[t][epoch - 1][0]})
        if action == TrialScheduler.CONTINUE and epoch < epochs:
            heapq.heappush(clock, (now + full[t][epoch][1], t, epoch + 1))
            continue
        sched.on_trial_complete(None, _Trial(t), {"epoch": epoch, "val_acc": full[t][epoch - 1][0]})
        if pending:
            start(now)
    best = max(ran, key=lambda t: max(a for a, _ in full[t][:ran[t]]))
    return {"epochs_spent": sum(ran.values()), "epochs_run": ran, "best_trial": best,
            "best_val_acc": max(a for a, _ in full[best][:ran[best]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("full", help="a full-budget (tune.scheduler=fifo) experiment directory")
    p.add_argument("--measured", help="an ASHA experiment of the same configs, to check the replay against")
    p.add_argument("--grid", default="1:2,1:3,1:4,2:2,2:3", help="grace:reduction_factor pairs")
    p.add_argument("--slots", default="1,2,4", help="concurrent trials to replay")
    a = p.parse_args()

    full = curves(f"{a.full}/metrics")
    epochs = max(len(c) for c in full.values())
    best_full = max(full, key=lambda t: max(v for v, _ in full[t]))
    out: dict = {"trials": len(full), "epochs": epochs, "full_budget_epochs": len(full) * epochs,
                 "full_best_trial": best_full, "full_best_val_acc": max(v for v, _ in full[best_full])}
    if a.measured:
        # Same config index, same seed: the measured ASHA curves must be prefixes of the full ones.
        asha = curves(f"{a.measured}/metrics")
        index = {t.rsplit("_", 1)[-1]: t for t in full}
        mismatch = [(t, e) for t, c in asha.items() for e, (v, _) in enumerate(c)
                    if v != full[index[t.rsplit("_", 1)[-1]]][e][0]]
        out["measured"] = {"epochs_spent": sum(len(c) for c in asha.values()), "curve_mismatches": len(mismatch)}
    out["replays"] = []
    for pair in a.grid.split(","):
        grace, rf = (int(x) for x in pair.split(":"))
        for slots in (int(s) for s in a.slots.split(",")):
            r = replay(full, epochs, grace, rf, slots)
            out["replays"].append({"grace": grace, "rf": rf, "slots": slots, "epochs_spent": r["epochs_spent"],
                                   "fraction": round(r["epochs_spent"] / out["full_budget_epochs"], 3),
                                   "best_trial": r["best_trial"], "best_val_acc": r["best_val_acc"]})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
