"""Replay Ray's ASHA scheduler on the learning curves of a full-budget (FIFO) experiment.

Training is seeded and deterministic: a trial that ASHA stops after k epochs has exactly the first k
epochs of the same config's full-budget curve (checked here against a measured ASHA run when one is
given). So ASHA's decisions for other grace periods, reduction factors and concurrency can be
replayed without training: Ray's own `ASHAScheduler` (built by `lstmclf.tuning.make_scheduler`) gets each
trial's recorded `val_acc` per epoch, in the order a simulated clock with `--slots` concurrent trials
and the recorded `epoch_s` durations delivers them. Trials start in trial-id order, as
`BasicVariantGenerator` issues them. A replay is computed, not measured: the measured run is the
ground truth, and the replay of its own settings should match it.

Beside each ASHA replay, a synchronous successive halving on the same rungs (every trial waits at a
rung for all the others; the top 1/reduction_factor go on), for comparison. With `--test`, the
best checkpoint of the three best full-budget trials and of every pick is evaluated on the test set,
where that checkpoint was kept.

    python bench/asha_replay.py /tmp/asha-bench/bench-fifo --measured /tmp/asha-bench/bench-asha --test
"""

from __future__ import annotations

import argparse
import heapq
import json
from dataclasses import dataclass
from pathlib import Path

from ray.tune.schedulers import TrialScheduler

from lstmclf.config import Config, load_config
from lstmclf.driver import EXPERIMENT_CONFIG, load_data
from lstmclf.evaluation import evaluate_checkpoint
from lstmclf.halving import epochs_run
from lstmclf.records import read_metrics
from lstmclf.tuning import make_scheduler

Curves = dict[str, list[tuple[float, float]]]  # trial id -> [(val_acc, epoch_s) for epochs 1..n]


@dataclass(frozen=True)
class _Trial:
    trial_id: str  # all the scheduler reads of a trial


def curves(experiment: str) -> Curves:
    """An experiment's learning curves, from its Parquet metrics table."""
    out: Curves = {}
    for r in read_metrics(f"{experiment}/metrics").select(["trial_id", "val_acc", "epoch_s"]).to_pylist():
        out.setdefault(r["trial_id"], []).append((r["val_acc"], r["epoch_s"]))  # sorted by trial, epoch
    return out


def best(full: Curves, t: str, epochs: int) -> tuple[float, int]:
    """(best validation accuracy, its first epoch, as checkpoints and results rank) of trial `t` within
    its first `epochs` epochs."""
    acc, neg_epoch = max((acc, -e) for e, (acc, _) in enumerate(full[t][:epochs], start=1))
    return acc, -neg_epoch


def pick(full: Curves, ran: dict[str, int]) -> dict:
    """What a search reports, given the epochs each trial ran: epochs spent and its first-ranked trial."""
    top = max(ran, key=lambda t: best(full, t, ran[t]))
    acc, epoch = best(full, top, ran[top])
    return {"epochs_spent": sum(ran.values()), "best_trial": top, "best_val_acc": acc, "best_epoch": epoch}


def replay(full: Curves, epochs: int, grace: int, rf: int, slots: int) -> dict:
    """Ray's ASHA on these curves: epochs run per trial, and `pick`."""
    cfg = Config().override({"train.epochs": epochs, "tune.grace_period": grace, "tune.reduction_factor": rf})
    sched = make_scheduler(cfg)
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
    return {**pick(full, ran), "epochs_run": ran}


def successive_halving(full: Curves, epochs: int, grace: int, rf: int) -> dict:
    """Synchronous successive halving (`tune.scheduler: sha`, the same `lstmclf.halving` code) on
    these curves: at each rung the top 1/rf of the trials still running go on."""
    return pick(full, epochs_run({t: [acc for acc, _ in c] for t, c in full.items()}, epochs, grace, rf))


def test_accuracy(experiment: str, picks: set[tuple[str, int]]) -> dict[str, float | None]:
    """`trial@epoch` -> test accuracy of that kept checkpoint (None where it was not kept)."""
    test = load_data(load_config(f"{experiment}/{EXPERIMENT_CONFIG}")).test
    out = {}
    for t, e in sorted(picks):
        ckpt = Path(experiment) / "trials" / t / f"epoch_{e:04d}"
        out[f"{t}@{e}"] = evaluate_checkpoint(str(ckpt), test)["acc"] if ckpt.is_dir() else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("full", help="a full-budget (tune.scheduler=fifo) experiment directory")
    p.add_argument("--measured", help="an ASHA experiment of the same configs, to check the replay against")
    p.add_argument("--grid", default="1:2,1:3,1:4,2:2,2:3,2:4", help="grace:reduction_factor pairs")
    p.add_argument("--slots", default="1,2,4,16", help="concurrent trials to replay")
    p.add_argument("--test", action="store_true", help="evaluate the picked checkpoints on the test set")
    a = p.parse_args()

    full = curves(a.full)
    epochs = max(len(c) for c in full.values())
    budget = len(full) * epochs
    out: dict = {
        "trials": len(full),
        "epochs": epochs,
        "full_budget_epochs": budget,
        "full_budget": pick(full, dict.fromkeys(full, epochs)),
    }
    if a.measured:
        # Same config index, same seed: the measured ASHA curves must be prefixes of the full ones.
        asha = curves(a.measured)
        index = {t.rsplit("_", 1)[-1]: t for t in full}
        mismatch = [
            (t, e)
            for t, c in asha.items()
            for e, (v, _) in enumerate(c)
            if v != full[index[t.rsplit("_", 1)[-1]]][e][0]
        ]
        out["measured"] = {"epochs_spent": sum(len(c) for c in asha.values()), "curve_mismatches": len(mismatch)}
    out["replays"] = []
    for pair in a.grid.split(","):
        grace, rf = (int(x) for x in pair.split(":"))
        runs = [("sync", successive_halving(full, epochs, grace, rf))]
        runs += [(slots, replay(full, epochs, grace, rf, slots)) for slots in map(int, a.slots.split(","))]
        for slots, r in runs:
            out["replays"].append(
                {
                    "grace": grace,
                    "rf": rf,
                    "slots": slots,
                    "fraction": round(r["epochs_spent"] / budget, 3),
                    **{k: v for k, v in r.items() if k != "epochs_run"},
                }
            )
    if a.test:
        top3 = sorted(full, key=lambda t: best(full, t, epochs), reverse=True)[:3]
        picks = {(t, best(full, t, epochs)[1]) for t in top3}
        picks |= {(r["best_trial"], r["best_epoch"]) for r in out["replays"]}
        out["test_acc"] = test_accuracy(a.full, picks)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
