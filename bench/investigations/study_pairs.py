"""McNemar's exact test, seed by seed, between every pair of models of a finished `jobs/compare.py`
experiment (the report tests only the best CNN-LSTM against the best plain CNN). Reads the kept test
predictions (`test/<trial>.json`) of a local experiment directory; trains and scores nothing.

    python bench/investigations/study_pairs.py runs/study --data ../shared/data/mnist [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from lstmclf.comparison import combine, seed_test
from lstmclf.data import read_arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--alpha", type=float, default=0.05)
    a = p.parse_args()
    summary = json.loads((a.experiment / "comparison.json").read_text())
    labels = np.asarray(read_arrays(a.data)["test_labels"])
    predicted: dict[str, dict[int, np.ndarray]] = {}
    for run in summary["runs"]:
        kept = json.loads((a.experiment / "test" / f"{run['trial_id']}.json").read_text())
        predicted.setdefault(run["variant"], {})[run["seed"]] = np.asarray(kept["predictions"])
    print("| A | B | seed: acc A / acc B, b : c, p | verdict (every seed must agree) |")
    print("| --- | --- | --- | --- |")
    for x, y in itertools.combinations(sorted(predicted), 2):
        seeds = sorted(set(predicted[x]) & set(predicted[y]))
        tests = [seed_test(s, labels, predicted[x][s], predicted[y][s], a.alpha) for s in seeds]
        cells = "; ".join(f"{t.seed}: {t.acc_a:.2%} / {t.acc_b:.2%}, {t.b} : {t.c}, p {t.p_value:.2g}" for t in tests)
        print(f"| {x} | {y} | {cells} | {combine(x, y, tests, a.alpha, len(labels)).combined} |")


if __name__ == "__main__":
    main()
