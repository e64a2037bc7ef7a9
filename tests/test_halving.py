"""Synchronous successive halving: its bookkeeping (lstmclf.halving.Halving) and the Tune scheduler's
decisions, without a Tune run (tests/test_tune.py has the real one)."""

import math
import random

from ray.tune.experiment import Trial

from lstmclf.halving import CONTINUE, PAUSE, STOP, Halving, SyncHalvingScheduler, epochs_run, rungs
from lstmclf.records import write_record


def test_rungs_stay_below_the_budget():
    assert rungs(6, 1, 4) == [1, 4]
    assert rungs(6, 1, 2) == [1, 2, 4]
    assert rungs(6, 2, 3) == [2]  # 6 is the budget, not a rung
    assert rungs(1, 1, 2) == []


def test_every_trial_waits_at_the_rung_until_all_have_reached_it():
    h = Halving(num_trials=4, max_t=4, grace_period=1, reduction_factor=2)  # rungs 1, 2
    for t in "abcd":
        h.add(t)
        assert h.verdict(t, 0) == CONTINUE
    for t, score in zip("abc", (0.5, 0.9, 0.7), strict=True):
        h.record(t, 1, score)
        assert h.verdict(t, 1) == PAUSE
    h.record("d", 1, 0.8)  # the last arrival decides the rung: b and d go on
    assert [h.verdict(t, 1) for t in "abcd"] == [STOP, CONTINUE, STOP, CONTINUE]
    h.record("d", 2, 0.95)
    assert h.verdict("d", 2) == PAUSE  # b has not reached rung 2 yet
    h.record("b", 2, 0.91)
    assert h.verdict("b", 2) == STOP and h.verdict("d", 2) == CONTINUE and h.verdict("d", 3) == CONTINUE


def test_no_rung_is_decided_before_every_trial_exists():
    h = Halving(num_trials=3, max_t=3, grace_period=1, reduction_factor=3)
    h.add("a")
    h.add("b")
    h.record("a", 1, 0.9)
    h.record("b", 1, 0.8)
    assert h.verdict("a", 1) == PAUSE  # the third trial may still beat both
    h.add("c")
    h.record("c", 1, 0.1)
    assert h.verdict("a", 1) == CONTINUE and h.verdict("b", 1) == STOP and h.verdict("c", 1) == STOP


def test_a_failed_trial_does_not_hold_the_rung_and_takes_no_place():
    h = Halving(num_trials=3, max_t=3, grace_period=1, reduction_factor=2)
    for t in "abc":
        h.add(t)
    h.record("a", 1, 0.2)
    h.record("b", 1, 0.3)
    assert h.verdict("a", 1) == PAUSE
    h.end("c")  # failed before the rung
    assert h.kept[0] == ["b"]  # max(1, 2 scored // 2)


def test_nan_ranks_last_and_ties_keep_the_added_order():
    h = Halving(num_trials=4, max_t=2, grace_period=1, reduction_factor=2)
    for t, score in zip("abcd", (math.nan, 0.5, 0.5, 0.4), strict=True):
        h.add(t)
        h.record(t, 1, score)
    assert h.kept[0] == ["b", "c"]


def test_a_restarted_or_restored_trial_keeps_its_first_score_at_a_rung():
    h = Halving(num_trials=2, max_t=8, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4
    h.add("a")
    h.add("b")
    h.record("a", 1, 0.9)
    h.record("a", 1, 0.1)  # the same epoch reported again after a restart
    h.record("b", 3, 0.5)  # first seen after epoch 3 (restored): counts at rungs 1 and 2
    assert h.scores[0] == {"a": 0.9, "b": 0.5} and h.scores[1] == {"b": 0.5}
    assert h.kept[0] == ["a"] and h.verdict("b", 3) == STOP


def test_epochs_run_is_successive_halving_whatever_the_order():
    rng = random.Random(0)
    curves = {f"t{i:02d}": sorted(rng.random() for _ in range(6)) for i in range(16)}
    ran = epochs_run(curves, max_t=6, grace_period=1, reduction_factor=4)
    assert sorted(ran.values()) == [1] * 12 + [4] * 3 + [6]  # 16 + 4 x 3 + 1 x 2 = 30 epochs
    top4 = sorted(curves, key=lambda t: -curves[t][0])[:4]
    assert {t for t, e in ran.items() if e > 1} == set(top4)
    assert max(ran, key=ran.get) == max(top4, key=lambda t: curves[t][3])
    shuffled = dict(rng.sample(sorted(curves.items()), len(curves)))
    assert epochs_run(shuffled, 6, 1, 4) == ran


def test_scheduler_after_a_restore_replays_the_metrics_table(tmp_path):
    """After `Tuner.restore` the scheduler starts empty: it rebuilds the rungs from the experiment's
    metrics table, so a trial promoted before the interruption goes on and the losers stay stopped."""
    table = str(tmp_path / "metrics")
    for trial_id, epochs in {"a": [0.9, 0.95], "b": [0.5], "c": [0.7]}.items():
        for epoch, acc in enumerate(epochs, start=1):
            write_record(table, trial_id, epoch, {}, {"val_acc": acc})
    sched = SyncHalvingScheduler(3, max_t=3, grace_period=1, reduction_factor=3, metrics_uri=table)
    sched.set_search_properties("val_acc", "max")
    trials = {t: Trial("trainable", stub=True, trial_id=t) for t in "abc"}
    for t, trial in trials.items():
        if t != "a":  # a's results since Tune last saved its state are missing there: the table has them
            trial.run_metadata.last_result = {"epoch": 1, "trial_id": t}
            trial.set_status(Trial.TERMINATED)  # stopped at the rung before the interruption
        sched.on_trial_add(None, trial)
    assert sched._halving.kept[0] == ["a"] and sched._verdict(trials["a"]) == CONTINUE
    assert sched.on_trial_result(None, trials["a"], {"epoch": 3, "val_acc": 0.96}) == CONTINUE


def test_scheduler_pauses_at_the_rung_and_stops_on_the_cut():
    sched = SyncHalvingScheduler(2, max_t=2, grace_period=1, reduction_factor=2)
    sched.set_search_properties("val_loss", "min")  # lower is better
    a, b = Trial("trainable", stub=True, trial_id="a"), Trial("trainable", stub=True, trial_id="b")
    sched.on_trial_add(None, a)
    sched.on_trial_add(None, b)
    assert sched.on_trial_result(None, a, {"epoch": 1, "val_loss": 0.3}) == PAUSE
    assert sched.on_trial_result(None, b, {"epoch": 1, "val_loss": 0.2}) == CONTINUE
    assert sched._verdict(a) == STOP
