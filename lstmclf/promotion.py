"""The promotion gate: is a challenger really better than the champion on the same test images?

Both models are scored on the same images, so their errors are paired: what matters is where they
disagree. Of the images exactly one model gets right, b are the challenger's and c the champion's;
if the two were equally good each such image would be the challenger's with probability 1/2.
McNemar's exact test asks how likely b or more of the b + c would be under that (a one-sided
binomial test), which is far more sensitive than comparing two accuracies as if from independent
samples. A challenger is promoted only when it is better by at least `margin` in accuracy, that
difference is significant at `alpha`, and no class's recall drops by more than `max_recall_drop`
(a better average can hide a class the new model gave up on).

Plain numpy and scipy: no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class Gate:
    margin: float  # minimum accuracy gain, absolute (0.002 = 0.2 points)
    alpha: float  # significance level of the one-sided exact McNemar test
    max_recall_drop: float  # largest fall of any class's recall allowed, absolute


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]  # why (every failed condition when rejected)
    images: int
    challenger_acc: float
    champion_acc: float | None  # None: there was no champion
    b: int = 0  # images only the challenger gets right
    c: int = 0  # images only the champion gets right
    p_value: float | None = None  # P(X >= b), X ~ Binomial(b + c, 1/2); None without a champion
    challenger_recall: list[float | None] = field(default_factory=list)  # per class; None: no test image of it
    champion_recall: list[float | None] = field(default_factory=list)
    worst_class: int | None = None  # the class whose recall fell most
    worst_drop: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recall_per_class(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class in [0, num_classes); NaN for a class with no test image."""
    support = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def discordant(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
    """McNemar's discordant pairs of two models' predictions on the same images: (b, c), the number of
    images only the first gets right and only the second gets right."""
    labels, first, second = _labels(labels, "labels"), _labels(first, "first"), _labels(second, "second")
    if not len(first) == len(second) == len(labels):
        raise ValueError(f"{len(first)} and {len(second)} predictions for {len(labels)} labels")
    a, o = first == labels, second == labels
    return int(np.sum(a & ~o)), int(np.sum(~a & o))


def mcnemar_exact(b: int, c: int, alternative: str = "greater") -> float:
    """Exact McNemar p-value from the discordant pairs: X ~ Binomial(b + c, 1/2) if the two models are
    equally good. "greater" (the gate's one-sided test that the first model is better): P(X >= b);
    "two-sided" (either is better): 2 min(P(X >= b), P(X <= b)), at most 1. 1.0 when there is no
    discordant pair (nothing tells the models apart)."""
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative=alternative).pvalue)


def decide(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    num_classes: int,
    gate: Gate,
) -> Decision:
    """Promote or reject `challenger` (its predicted labels, one per test image) against `champion`'s
    predictions on the same images (None: no champion yet, so promote)."""
    labels, challenger = _labels(labels, "labels"), _labels(challenger, "challenger")
    if len(challenger) != len(labels) or not len(labels):
        raise ValueError(f"{len(challenger)} challenger predictions for {len(labels)} labels")
    right = challenger == labels
    new_recall = recall_per_class(labels, challenger, num_classes)
    present = ~np.isnan(new_recall)
    if champion is None:
        return Decision(
            True,
            ["no champion yet"],
            len(labels),
            float(right.mean()),
            None,
            challenger_recall=_listed(new_recall),
        )
    champion = _labels(champion, "champion")
    if len(champion) != len(labels):
        raise ValueError(f"{len(champion)} champion predictions for {len(labels)} labels")
    old_right = champion == labels
    b, c = discordant(labels, challenger, champion)
    p = mcnemar_exact(b, c)
    gain = (b - c) / len(labels)  # = challenger accuracy - champion accuracy
    old_recall = recall_per_class(labels, champion, num_classes)
    drops = np.where(present, old_recall - new_recall, -np.inf)
    worst = int(np.argmax(drops))

    reasons = []
    if b + c == 0:
        reasons.append("the challenger gets exactly the same images right as the champion")
    else:
        if gain < gate.margin:
            reasons.append(f"accuracy gain {gain:+.2%} is below the margin {gate.margin:.2%}")
        if p > gate.alpha:
            reasons.append(f"not significant: McNemar p = {p:.3g} > alpha {gate.alpha:g} (b = {b}, c = {c})")
    if drops[worst] > gate.max_recall_drop:
        reasons.append(
            f"recall of class {worst} drops by {drops[worst]:.2%} "
            f"({old_recall[worst]:.2%} -> {new_recall[worst]:.2%}), more than {gate.max_recall_drop:.2%}"
        )
    promote = not reasons
    if promote:
        reasons = [f"better by {gain:+.2%} (margin {gate.margin:.2%}), McNemar p = {p:.3g} <= alpha {gate.alpha:g}"]
    return Decision(
        promote,
        reasons,
        len(labels),
        float(right.mean()),
        float(old_right.mean()),
        b,
        c,
        p,
        _listed(new_recall),
        _listed(old_recall),
        worst,
        float(max(drops[worst], 0.0)),
    )


def _labels(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: expected a 1-D array of class indices, got {a.dtype} of shape {a.shape}")
    return a.astype(np.int64)


def _listed(recall: np.ndarray) -> list[float | None]:
    """Per-class recall as JSON has it: None where a class has no test image (NaN is not JSON)."""
    return [None if np.isnan(r) else round(float(r), 6) for r in recall]
