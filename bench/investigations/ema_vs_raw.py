"""What a run's weight average (`train.ema_decay`) bought: test accuracy of a checkpoint's averaged
weights (what it validates, checkpoints and serves) and of its raw training weights (`train_model`,
kept for resuming), on the same test images. Scored after the run chose its checkpoint on
validation; nothing is chosen on these numbers.

    python bench/investigations/ema_vs_raw.py runs/ema30/epoch_0023 --data ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json

from lstmclf.checkpoint import load_checkpoint
from lstmclf.data.dataset import load_test
from lstmclf.evaluation import evaluate_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint directory of a run with train.ema_decay > 0")
    p.add_argument("--data", default="", help="dataset whose test files to score (default: the run's own)")
    a = p.parse_args()
    state = load_checkpoint(a.checkpoint)
    if "train_model" not in state:
        raise SystemExit(f"error: {a.checkpoint} holds no weight average (its run had train.ema_decay 0)")
    test = load_test(a.data or state["config"]["data"]["path"], num_classes=state["data"]["num_classes"])
    for name, weights in (("average", state["model"]), ("raw", state["train_model"])):
        r = evaluate_state({**state, "model": weights}, test)
        errors = round((1 - r["acc"]) * len(test))
        print(json.dumps({"weights": name, "epoch": r["epoch"], "test_acc": round(r["acc"], 6), "errors": errors}))


if __name__ == "__main__":
    main()
