"""Epoch throughput of Ray Train (1 worker) against a plain PyTorch loop, side by side, plus the
time the default recipe needs to reach 99.0% test accuracy on full MNIST.

Both sides run the same `lstmclf.engine.train_epoch` on the same model, data, batch size and thread
count, so the ratio is Ray's overhead (its own processes included) and nothing else. Plain epochs run
before Ray starts and again after it is shut down, so drift on a shared machine hits both sides.

    python bench/train_throughput.py --data ../shared/data/mnist --epochs 6 --out bench/out/throughput.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from lstmclf.config import Config
from lstmclf.data import BatchLoader, to_tensors
from lstmclf.engine import build_loss, build_optimizer, build_scheduler, train_epoch
from lstmclf.models import build_model
from lstmclf.train import fit, load_data


def plain_epochs(cfg: Config, splits, epochs: int) -> list[float]:
    """Images/s of each epoch of a plain single-process loop (no Ray), train step only."""
    torch.manual_seed(cfg.train.seed)
    dev = torch.device("cpu")
    model = build_model(cfg.model, splits.num_classes, splits.image_shape)
    loader = BatchLoader(*to_tensors(splits.train, dev), cfg.train.batch_size, mean=splits.mean, std=splits.std,
                         shuffle=True, shift=cfg.data.shift, seed=cfg.train.seed)
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, epochs * len(loader))
    loss_fn = build_loss(cfg.loss)
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        _, seen = train_epoch(model, loader, opt, sched, loss_fn, device=dev, grad_clip=cfg.optim.grad_clip)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the Ray run (default recipe: 6)")
    p.add_argument("--plain-epochs", type=int, default=3, help="epochs per plain block (two blocks)")
    p.add_argument("--cpus", type=int, default=2, help="threads for both sides (the Ray worker's CPUs)")
    p.add_argument("--out", default="bench/out/throughput.json")
    a = p.parse_args()

    torch.set_num_threads(a.cpus)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config().override({"data.path": str(Path(a.data).resolve()), "train.epochs": a.epochs,
                                 "scaling.cpus_per_worker": a.cpus, "train.checkpoints_to_keep": a.epochs,
                                 "storage.path": tmp, "storage.name": "bench"})
        splits = load_data(cfg)
        plain = plain_epochs(cfg, splits, a.plain_epochs)  # block 1 (warms the page cache too)
        t0 = time.perf_counter()
        out = fit(cfg, splits=splits)
        ray_wall = time.perf_counter() - t0
        ray.shutdown()  # block 2 must not pay for Ray's background processes
        plain += plain_epochs(cfg, splits, a.plain_epochs)
        plain_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # Per-epoch records of the Ray run, and the test accuracy of every epoch's checkpoint.
        from lstmclf.evaluate import evaluate_checkpoint

        run = Path(tmp) / "bench"
        epochs = []
        for d in sorted(run.glob("epoch_*")):
            m = json.loads((d / "metrics.json").read_text())
            m["test_acc"] = evaluate_checkpoint(str(d), splits.test)["acc"]
            epochs.append(m)
    ray_rates = [m["train_img_s"] for m in epochs]
    elapsed = 0.0
    reach = None
    for m in epochs:
        elapsed += m["epoch_s"]
        if reach is None and m["test_acc"] >= 0.99:
            reach = {"epoch": m["epoch"], "train_s": elapsed}
    result = {
        "machine": {"cpus": a.cpus, "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "plain_img_s": plain, "ray_img_s": ray_rates,
        "plain_median": statistics.median(plain), "ray_median": statistics.median(ray_rates),
        "ratio_ray_over_plain": statistics.median(ray_rates) / statistics.median(plain),
        "test_acc_per_epoch": [m["test_acc"] for m in epochs], "reach_99": reach,
        "ray_fit_wall_s": ray_wall, "final_test_acc": out.test_metrics["acc"],
        "peak_rss_mb": {"plain_process": plain_rss, "ray_worker": max(m["max_rss_mb"] for m in epochs)},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
