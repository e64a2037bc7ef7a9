"""The promotion gate on hand-made prediction pairs: McNemar's exact p-value against the binomial
computed by hand, ties and identical models rejected, the margin and the per-class recall guard."""

from math import comb

import numpy as np
import pytest

from lstmclf.promotion import Gate, decide, mcnemar_exact, recall_per_class

GATE = Gate(margin=0.01, alpha=0.05, max_recall_drop=0.05)


def pairs(both: int, only_new: int, only_old: int, neither: int, classes: int = 2) -> tuple[np.ndarray, ...]:
    """(labels, challenger, champion) with that many images of each kind; labels cycle through the
    classes and a wrong prediction is the next class."""
    n = both + only_new + only_old + neither
    labels = np.arange(n) % classes
    wrong = (labels + 1) % classes
    new_right = np.r_[np.ones(both + only_new), np.zeros(only_old + neither)].astype(bool)
    old_right = np.r_[np.ones(both), np.zeros(only_new), np.ones(only_old), np.zeros(neither)].astype(bool)
    return labels, np.where(new_right, labels, wrong), np.where(old_right, labels, wrong)


def binomial_tail(b: int, n: int) -> float:
    """P(X >= b) for X ~ Binomial(n, 1/2), summed exactly."""
    return sum(comb(n, k) for k in range(b, n + 1)) / 2**n


@pytest.mark.parametrize(("b", "c"), [(10, 2), (7, 3), (30, 18), (1, 0), (0, 4), (50, 50)])
def test_p_value_is_the_exact_one_sided_binomial_of_the_discordant_pairs(b, c):
    labels, new, old = pairs(both=500, only_new=b, only_old=c, neither=40)
    d = decide(labels, new, old, 2, GATE)
    assert (d.b, d.c, d.images) == (b, c, 540 + b + c)
    assert d.p_value == pytest.approx(binomial_tail(b, b + c), rel=1e-9, abs=1e-15)
    assert d.challenger_acc - d.champion_acc == pytest.approx((b - c) / d.images)


def test_a_clearly_better_challenger_is_promoted():
    labels, new, old = pairs(both=800, only_new=60, only_old=10, neither=130)
    d = decide(labels, new, old, 2, GATE)
    assert d.promote and d.p_value < 1e-9 and d.reasons[0].startswith("better by +5.00%")


def test_ties_and_an_identical_challenger_are_rejected():
    labels, new, old = pairs(both=600, only_new=25, only_old=25, neither=50)
    tie = decide(labels, new, old, 2, Gate(margin=0.0, alpha=0.05, max_recall_drop=1.0))  # margin 0: only p decides
    assert (
        not tie.promote
        and tie.p_value > 0.5
        and tie.reasons == ["not significant: McNemar p = 0.556 > alpha 0.05 (b = 25, c = 25)"]
    )
    same = decide(labels, old, old, 2, Gate(margin=0.0, alpha=0.05, max_recall_drop=1.0))
    assert not same.promote and (same.b, same.c, same.p_value) == (0, 0, 1.0)
    assert same.reasons == ["the challenger gets exactly the same images right as the champion"]
    # Different wrong answers on the same images are no evidence either.
    other_wrong = np.where(old == labels, old, (labels + 2) % 3)
    assert not decide(labels, other_wrong, old, 3, GATE).promote


def test_significant_but_below_the_margin_is_rejected():
    labels, new, old = pairs(both=9000, only_new=60, only_old=20, neither=920)  # +0.4 points, p ~ 6e-6
    d = decide(labels, new, old, 2, GATE)
    assert d.p_value < 1e-4 and not d.promote
    assert d.reasons == ["accuracy gain +0.40% is below the margin 1.00%"]
    assert decide(labels, new, old, 2, Gate(margin=0.004, alpha=0.05, max_recall_drop=1.0)).promote


def test_a_recall_drop_in_one_class_blocks_an_otherwise_clear_promotion():
    # 3 classes, 100 images each: the challenger fixes 40 images of classes 0 and 1, breaks 8 of class 2.
    labels = np.repeat([0, 1, 2], 100)
    old = labels.copy()
    old[:20] = old[100:120] = 2  # the champion misses 20 of class 0 and 20 of class 1
    new = labels.copy()
    new[200:208] = 0  # the challenger misses 8 of class 2 that the champion got
    d = decide(labels, new, old, 3, GATE)
    assert (d.b, d.c) == (40, 8) and d.p_value < 1e-5
    assert not d.promote and d.worst_class == 2 and d.worst_drop == pytest.approx(0.08)
    assert d.reasons == ["recall of class 2 drops by 8.00% (100.00% -> 92.00%), more than 5.00%"]
    assert d.champion_recall == [0.8, 0.8, 1.0] and d.challenger_recall == [1.0, 1.0, 0.92]
    assert decide(labels, new, old, 3, Gate(margin=0.01, alpha=0.05, max_recall_drop=0.1)).promote


def test_no_champion_promotes_and_bad_input_is_refused():
    labels, new, _ = pairs(both=10, only_new=0, only_old=0, neither=10)
    d = decide(labels, new, None, 2, GATE)
    assert d.promote and d.reasons == ["no champion yet"] and d.champion_acc is None and d.p_value is None
    assert d.to_dict()["challenger_acc"] == 0.5
    with pytest.raises(ValueError, match="19 challenger predictions for 20 labels"):
        decide(labels, new[:-1], None, 2, GATE)
    with pytest.raises(ValueError, match="champion: expected a 1-D array of class indices"):
        decide(labels, new, new.astype(float), 2, GATE)


def test_recall_of_an_absent_class_is_left_out_not_nan_in_json():
    labels = np.array([0, 0, 1, 1])
    assert np.isnan(recall_per_class(labels, labels, 3)[2])
    d = decide(labels, labels, labels, 3, GATE)
    assert d.challenger_recall == [1.0, 1.0, None]
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 0) == 0.125
