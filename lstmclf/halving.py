"""Synchronous successive halving (SHA) for Ray Tune.

Every trial trains to the first rung (`grace_period` epochs) and waits there, paused, until every
trial has reached it; then the best 1/`reduction_factor` go on to the next rung (grace_period x
reduction_factor epochs) and the rest stop, and so on; the last survivors train to `max_t`. With
n trials that costs about n x grace_period x (number of rungs) + the survivors' epochs, whatever the
order and the number of trials running at a time.

Ray's ASHA promotes asynchronously instead: the first trials to reach a rung pass it with few or no
rivals, so with few trials running at a time it trains many more epochs (docs/benchmarks.md). SHA
pays with waiting: a paused trial gives its workers back, and when promoted its Train run starts
again and resumes from the rung's checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lstmclf.records import read_metrics

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


def rungs(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The epochs at which trials are compared: grace_period x reduction_factor**k below max_t."""
    out, r = [], grace_period
    while r < max_t:
        out.append(r)
        r *= reduction_factor
    return out


class Halving:
    """SHA's bookkeeping, without Ray: which trial reached which rung with what score, and who goes on.

    Scores are "higher is better". A rung is decided once every trial that entered it (all trials for
    the first; the previous rung's survivors after that) has a score there or has ended; then the top
    max(1, scored // reduction_factor) go on, ties in the order the trials were added."""

    def __init__(self, num_trials: int, max_t: int, grace_period: int, reduction_factor: int) -> None:
        self.num_trials, self.reduction_factor = num_trials, reduction_factor
        self.rungs = rungs(max_t, grace_period, reduction_factor)
        self.order: list[str] = []  # trial ids as added
        self.scores: list[dict[str, float]] = [{} for _ in self.rungs]  # rung -> trial -> score there
        self.kept: list[list[str] | None] = [None] * len(self.rungs)  # rung -> survivors, once decided
        self.ended: set[str] = set()  # trials that stopped training (finished, stopped or failed)

    def add(self, trial_id: str) -> None:
        if trial_id not in self.order:
            self.order.append(trial_id)
            self._decide()

    def record(self, trial_id: str, t: int, score: float) -> None:
        """A result after `t` epochs: its score counts at every rung it reaches first (a trial restarted
        past a rung, or one that reports a rung twice, keeps its first score)."""
        score = score if score == score else -math.inf  # NaN ranks last
        for k, rung in enumerate(self.rungs):
            if t >= rung:
                self.scores[k].setdefault(trial_id, score)
        self._decide()

    def end(self, trial_id: str) -> None:
        self.ended.add(trial_id)
        self._decide()

    def verdict(self, trial_id: str, t: int) -> str:
        """What a trial that has trained `t` epochs does now: CONTINUE, PAUSE (its rung is undecided)
        or STOP (it did not make a rung's cut)."""
        for k, rung in enumerate(self.rungs):
            if t < rung:
                break
            if self.kept[k] is None:
                return PAUSE
            if trial_id not in self.kept[k]:
                return STOP
        return CONTINUE

    def _decide(self) -> None:
        for k in range(len(self.rungs)):
            if self.kept[k] is not None:
                continue
            entrants = self.order if k == 0 else self.kept[k - 1]
            if entrants is None or (k == 0 and len(self.order) < self.num_trials):
                return
            if any(t not in self.scores[k] and t not in self.ended for t in entrants):
                return
            scored = [t for t in entrants if t in self.scores[k]]
            ranked = sorted(scored, key=lambda t: -self.scores[k][t])  # stable: ties keep the added order
            self.kept[k] = ranked[: max(1, len(scored) // self.reduction_factor)]


def epochs_run(curves: dict[str, list[float]], max_t: int, grace_period: int, reduction_factor: int) -> dict[str, int]:
    """Epochs each trial trains under SHA, given each trial's score after every epoch (1..max_t).

    Synchronous halving does not depend on the order results arrive in, so this is what a Tune run of
    the same trials does (trials failing aside)."""
    halving = Halving(len(curves), max_t, grace_period, reduction_factor)
    ran = dict.fromkeys(curves, 0)
    for t in curves:
        halving.add(t)
    moved = True
    while moved:
        moved = False
        for t, scores in curves.items():
            if ran[t] < max_t and halving.verdict(t, ran[t]) == CONTINUE:
                ran[t] += 1
                halving.record(t, ran[t], scores[ran[t] - 1])
                moved = True
    return ran


class SyncHalvingScheduler(FIFOScheduler):
    """Ray Tune scheduler for `Halving` on `time_attr` (metric and mode come from TuneConfig).

    Trials that wait at a rung are paused (their actors, and so their Train runs, stop); those that
    make the cut are started again and their Train runs resume from the last checkpoint. Tune starts
    every trial the search algorithm issues, and the search algorithm (`search`: a
    BasicVariantGenerator or ConcurrencyLimiter) counts paused trials as running: so that
    `max_concurrent` trials keep running while others wait, its cap is raised by the number paused.
    After `Tuner.restore`, the epochs the trials ran before come from the experiment's metrics table
    (`metrics_uri`: Tune's own record of results can miss the last ones), so the rungs are decided
    as if nothing had happened; a restored trial that was waiting at a rung is started again by Tune
    and trains one more epoch before it is paused (or stopped) again. (Adding it paused instead
    would leave a trial that is then cut with no result in Tune at all.)
    """

    _supports_buffered_results = False  # a trial must pause at its rung's result, not a few epochs later

    def __init__(
        self,
        num_trials: int,
        max_t: int,
        grace_period: int,
        reduction_factor: int,
        *,
        time_attr: str = "epoch",
        search: Any = None,
        max_concurrent: int = 0,
        metrics_uri: str = "",
        endpoint: str = "",
    ) -> None:
        super().__init__()
        self._search, self._max_concurrent = search, max_concurrent
        self._halving = Halving(num_trials, max_t, grace_period, reduction_factor)
        self._time_attr, self._metrics_uri, self._endpoint = time_attr, metrics_uri, endpoint
        self._metric: str | None = None
        self._sign = 1.0
        self._trials: dict[str, Trial] = {}
        self._t: dict[str, int] = {}  # trial -> epochs trained, as last reported
        self._rows: dict[str, list[dict]] | None = None  # metrics table by trial, after a restore

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if self._metric and metric:
            return False
        self._metric = metric or self._metric
        self._sign = -1.0 if mode == "min" else 1.0
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if not self._metric:
            raise ValueError("SyncHalvingScheduler needs a metric and mode (from TuneConfig)")
        self._trials[trial.trial_id] = trial
        self._halving.add(trial.trial_id)
        # A restored trial: replay the epochs it ran before (from the table, which has every epoch's row
        # even where Tune's own state, saved now and then, missed the last results). New trials have none.
        for row in self._history().get(trial.trial_id, []) if self._metrics_uri else []:
            self._observe(trial.trial_id, row)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            self._halving.end(trial.trial_id)
        self._settle(tune_controller, but=trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return CONTINUE
        self._observe(trial.trial_id, result)
        self._settle(tune_controller, but=trial)
        return self._halving.verdict(trial.trial_id, self._t[trial.trial_id])

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A pending trial, else (while fewer than `max_concurrent` run) a paused one that made its cut."""
        self._settle(tune_controller)
        self._gate()
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        if self._max_concurrent and sum(t.status == Trial.RUNNING for t in trials) >= self._max_concurrent:
            return None
        for trial in trials:
            if trial.status == Trial.PAUSED and self._verdict(trial) == CONTINUE:
                return trial
        return None

    def debug_string(self) -> str:
        h = self._halving
        cuts = ", ".join(
            f"{r}: {len(h.scores[k])} in" + (f", {len(h.kept[k])} on" if h.kept[k] is not None else "")
            for k, r in enumerate(h.rungs)
        )
        return f"Synchronous successive halving, rungs at {self._time_attr} {cuts}."

    def _observe(self, trial_id: str, result: dict) -> None:
        t = int(result[self._time_attr])
        self._t[trial_id] = max(t, self._t.get(trial_id, 0))
        self._halving.record(trial_id, t, self._sign * float(result[self._metric]))

    def _gate(self) -> None:
        """Let the search algorithm issue a trial for each paused one (see the class docstring)."""
        if self._search is not None and self._max_concurrent:
            paused = sum(t.status == Trial.PAUSED for t in self._trials.values())
            self._search.max_concurrent = self._max_concurrent + paused

    def _history(self) -> dict[str, list[dict]]:
        """The metrics table's rows by trial (read once, when the first trial is added)."""
        if self._rows is None:
            table = read_metrics(self._metrics_uri, self._endpoint)
            self._rows = {}
            if self._metric in table.column_names:
                for row in table.select(["trial_id", self._time_attr, self._metric]).to_pylist():
                    self._rows.setdefault(row["trial_id"], []).append(row)
        return self._rows

    def _verdict(self, trial: Trial) -> str:
        return self._halving.verdict(trial.trial_id, self._t.get(trial.trial_id, 0))

    def _ended(self, tune_controller: Any, trial: Trial) -> None:
        self._halving.end(trial.trial_id)
        self._settle(tune_controller, but=trial)

    def _settle(self, tune_controller: Any, but: Trial | None = None) -> None:
        """Stop the trials waiting at a rung they did not make (the reporting trial `but` is told by
        the return value instead)."""
        if tune_controller is None:
            return
        for trial in list(self._trials.values()):
            if (
                trial is not but
                and trial.trial_id not in self._halving.ended
                and (trial.status == Trial.PAUSED or trial.is_saving)
                and self._verdict(trial) == STOP
            ):
                self._halving.end(trial.trial_id)  # first: stop_trial calls on_trial_remove, which settles again
                tune_controller.stop_trial(trial)
