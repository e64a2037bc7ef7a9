"""Epoch throughput of Ray Train (1 worker) against a plain PyTorch loop, side by side, plus the
time the default recipe needs to reach 99.0% test accuracy on full MNIST.

Both sides run the same `lstmclf.engine.train_epoch` on the same model, data, batch size and thread
count, so the ratio is Ray's overhead (its own processes included) and nothing else. Runs alternate
(plain, Ray, plain, Ray, ...), each Ray run in a fresh Ray session that is shut down before the next
plain run, so drift on a shared machine hits both sides. The first epoch of every run is reported
apart: it also pays for start-up (Ray's processes starting beside it, allocator and cache warm-up).

    python bench/train_throughput.py --data ../shared/data/mnist --out bench/out/throughput.json
    python bench/train_throughput.py --gpu   # both sides on one GPU, as lstmclf.worker runs a GPU worker

With --gpu the plain side places the model as a GPU worker does (`engine.place_model`: channels_last, bf16
autocast in the train step) and the Ray side runs one worker with `scaling.use_gpu` (NCCL); each epoch's
clock stops after the GPU has finished its queued work.
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
from lstmclf.driver import load_data
from lstmclf.engine import build_loss, build_optimizer, build_scheduler, place_model, synchronize, train_epoch
from lstmclf.evaluation import evaluate_checkpoint
from lstmclf.models import build_model
from lstmclf.training import fit


def train_batches(cfg: Config, splits, dev: torch.device) -> BatchLoader:
    """The training batches a single worker draws: shuffled, with the config's augmentation."""
    return BatchLoader(
        *to_tensors(splits.train, dev),
        cfg.train.batch_size,
        mean=splits.mean,
        std=splits.std,
        shuffle=True,
        **cfg.data.augmentation(),
        seed=cfg.train.seed,
    )


def plain_epochs(cfg: Config, splits, epochs: int, dev: torch.device) -> list[float]:
    """Images/s of each epoch of a plain single-process loop (no Ray), train step only."""
    torch.manual_seed(cfg.train.seed)
    model = place_model(build_model(cfg.model, splits.num_classes, splits.image_shape), dev)
    loader = train_batches(cfg, splits, dev)
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, epochs * len(loader))
    loss_fn = build_loss(cfg.loss)
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        synchronize(dev)
        t0 = time.perf_counter()
        _, seen = train_epoch(model, loader, opt, sched, loss_fn, device=dev, grad_clip=cfg.optim.grad_clip)
        synchronize(dev)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def ray_run(cfg: Config, splits, name: str) -> tuple[list[dict], float]:
    """One Ray Train run in a fresh Ray session: its per-epoch metrics and wall time (start-up included)."""
    t0 = time.perf_counter()
    fit(cfg.override({"storage.name": name}), splits=splits, progress=False)
    wall = time.perf_counter() - t0
    ray.shutdown()  # the next plain run must not pay for Ray's background processes
    run = Path(cfg.storage.path) / name
    return [json.loads((d / "metrics.json").read_text()) for d in sorted(run.glob("epoch_*"))], wall


def progress(what: str, values: list[float]) -> None:
    print(f"{what}: {', '.join(f'{v:,.4g}' for v in values)}", file=sys.stderr, flush=True)


def summary(runs: list[list[float]]) -> dict:
    later = [r for run in runs for r in run[1:]]
    return {
        "per_run": runs,
        "median_after_first_epoch": statistics.median(later),
        "median_first_epoch": statistics.median(run[0] for run in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=5, help="plain/Ray pairs for the throughput comparison")
    p.add_argument("--epochs", type=int, default=3, help="epochs per throughput run")
    p.add_argument("--accuracy-epochs", type=int, default=6, help="epochs of the default-recipe run (its default)")
    p.add_argument("--cpus", type=int, default=2, help="threads for both sides (the Ray worker's CPUs)")
    p.add_argument("--gpu", action="store_true", help="train on the GPU: plain side on cuda, Ray side with use_gpu")
    p.add_argument("--out", help="default: bench/out/throughput.json, with --gpu bench/out/throughput-gpu.json")
    a = p.parse_args()
    out = Path(a.out or ("bench/out/throughput-gpu.json" if a.gpu else "bench/out/throughput.json"))
    if a.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: torch sees no CUDA device")
    dev = torch.device("cuda" if a.gpu else "cpu")

    torch.set_num_threads(a.cpus)
    with tempfile.TemporaryDirectory() as tmp:
        base = Config().override(
            {
                "data.path": str(Path(a.data).resolve()),
                "scaling.cpus_per_worker": a.cpus,
                "storage.path": tmp,
                "train.checkpoints_to_keep": max(a.epochs, a.accuracy_epochs),
            }
        )
        if a.gpu:
            base = base.override({"scaling.use_gpu": True, "scaling.gpus_per_worker": 1})
        splits = load_data(base)
        cfg = base.override({"train.epochs": a.epochs})
        plain, ray_rates, plain_gpu_mb = [], [], 0.0
        for rep in range(a.reps):
            if a.gpu:
                torch.cuda.reset_peak_memory_stats(dev)
            plain.append(plain_epochs(cfg, splits, a.epochs, dev))
            if a.gpu:  # read now: the driver's test-set evaluations after each fit() share the counter
                plain_gpu_mb = max(plain_gpu_mb, torch.cuda.max_memory_allocated(dev) / 2**20)
            progress(f"rep {rep + 1}/{a.reps} plain img/s", plain[-1])
            ray_rates.append([m["train_img_s"] for m in ray_run(cfg, splits, f"throughput-{rep}")[0]])
            progress(f"rep {rep + 1}/{a.reps} Ray   img/s", ray_rates[-1])
        plain_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # The default recipe to its end; the test accuracy of every epoch's checkpoint.
        epochs, wall = ray_run(base.override({"train.epochs": a.accuracy_epochs}), splits, "accuracy")
        for m, d in zip(epochs, sorted((Path(tmp) / "accuracy").glob("epoch_*")), strict=True):
            m["test_acc"] = evaluate_checkpoint(str(d), splits.test, device=dev)["acc"]
        progress("accuracy run test_acc", [m["test_acc"] for m in epochs])
    elapsed, reach = 0.0, None
    for m in epochs:
        elapsed += m["epoch_s"]
        if reach is None and m["test_acc"] >= 0.99:
            reach = {"epoch": m["epoch"], "epochs_s": round(elapsed, 1)}
    p_sum, r_sum = summary(plain), summary(ray_rates)
    result = {
        "machine": {
            "cpus": a.cpus,
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "ray": ray.__version__,
            **({"gpu": torch.cuda.get_device_name(dev), "cuda": torch.version.cuda} if a.gpu else {}),
        },
        "plain_img_s": p_sum,
        "ray_img_s": r_sum,
        "ratio_after_first_epoch": r_sum["median_after_first_epoch"] / p_sum["median_after_first_epoch"],
        "ratio_first_epoch": r_sum["median_first_epoch"] / p_sum["median_first_epoch"],
        # Each pair's own ratio (epochs after the first), robust to drift between pairs on a shared machine.
        "pair_ratios_after_first_epoch": [
            round(statistics.median(r[1:]) / statistics.median(q[1:]), 3) for q, r in zip(plain, ray_rates, strict=True)
        ],
        "accuracy_run": {
            "test_acc_per_epoch": [m["test_acc"] for m in epochs],
            "reach_99": reach,
            "fit_wall_s": round(wall, 1),
            "img_s": [m["train_img_s"] for m in epochs],
        },
        "peak_rss_mb": {"plain_process": plain_rss, "ray_worker": max(m["max_rss_mb"] for m in epochs)},
    }
    if a.gpu:
        result["peak_gpu_mb"] = {"plain_process": plain_gpu_mb}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
