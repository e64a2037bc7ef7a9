"""What each step of the fast recipe buys: variants of a recipe trained in one process (no Ray) with the
worker's own pieces (`engine.place_model`, `train_epoch`, `evaluate`), the test set scored after every
epoch. Prints, per variant, the test accuracy after each epoch and the seconds of epochs so far
(training plus the validation pass, as a worker's `epoch_s`). Runs alone on an idle machine; the
seconds carry the machine's noise, the accuracies are deterministic on CPU.

    python bench/investigations/recipe_steps.py --data ../shared/data/mnist \\
        --variant e2=train.epochs=2 --variant ls=train.epochs=2,loss.name=label_smoothing
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lstmclf.config import load_config
from lstmclf.data import BatchLoader, to_tensors
from lstmclf.driver import load_data
from lstmclf.engine import build_loss, build_optimizer, build_scheduler, evaluate, place_model, train_epoch
from lstmclf.models import build_model

ROOT = Path(__file__).resolve().parents[2]


def run_variant(recipe: Path, data: str, sets: list[str]) -> list[tuple[float, float]]:
    """(test accuracy, seconds of epochs so far) after each epoch of the recipe with `sets` on top."""
    dev = torch.device("cpu")
    cfg = load_config(recipe, [f"data.path={data}", *sets])
    splits = load_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = place_model(build_model(cfg.model, splits.num_classes, splits.image_shape), dev)

    def batches(split, size: int, train: bool) -> BatchLoader:
        return BatchLoader(
            *to_tensors(split, dev),
            size,
            mean=splits.mean,
            std=splits.std,
            shuffle=train,
            **(cfg.data.augmentation() if train else {}),
            seed=cfg.train.seed,
        )

    train = batches(splits.train, cfg.train.batch_size, True)
    val = batches(splits.val, cfg.train.eval_batch_size, False)
    test = batches(splits.test, cfg.train.eval_batch_size, False)
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, cfg.train.epochs * len(train))
    loss_fn = build_loss(cfg.loss)
    out, elapsed = [], 0.0
    for epoch in range(cfg.train.epochs):
        train.set_epoch(epoch)
        t0 = time.perf_counter()
        train_epoch(model, train, opt, sched, loss_fn, device=dev, grad_clip=cfg.optim.grad_clip)
        evaluate(model, val, splits.num_classes, device=dev)
        elapsed += time.perf_counter() - t0
        out.append((evaluate(model, test, splits.num_classes, device=dev)["acc"], elapsed))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fast.yaml")
    p.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for spec in a.variant or ["recipe="]:
        name, _, sets = spec.partition("=")
        row = run_variant(a.recipe, a.data, [s for s in sets.split(",") if s])
        print(name, " ".join(f"{acc:.2%}@{s:.1f}s" for acc, s in row), flush=True)


if __name__ == "__main__":
    main()
