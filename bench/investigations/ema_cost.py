"""What the weight average (`train.ema_decay`) costs a training step: the same model trained on the same
batches with no average, with lstmclf's `engine.WeightAverage`, and with the average it replaced
(torch's AveragedModel, its warming decay read from the update count with .item(): on a GPU a host
sync every step). The three alternate within each repetition, so a shared machine's drift hits all
of them; medians of --reps. The batches are drawn before the clock starts (the config's augmentation
included), so a step is forward, backward, optimizer, schedule and the average's update.

    python bench/investigations/ema_cost.py --data ../shared/data/mnist --reps 5 --steps 60
    python bench/investigations/ema_cost.py --gpu ...   # on a CUDA device, bf16 as a GPU worker trains
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lstmclf.config import Config, load_config
from lstmclf.driver import load_data
from lstmclf.engine import (
    WeightAverage,
    build_loss,
    build_optimizer,
    build_scheduler,
    place_model,
    synchronize,
    train_epoch,
)
from lstmclf.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train_throughput's training batches, shared
from train_throughput import train_batches


class AveragedModelEMA:
    """lstmclf's weight average before engine.WeightAverage, kept as the baseline: the same warming decay
    on torch's AveragedModel, which hands the update function its count as a device tensor."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        @torch.no_grad()
        def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
            if not averaged[0].is_floating_point():
                torch._foreach_copy_(averaged, current)
                return
            k = n.item()
            torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + k) / (10.0 + k)))

        self.module = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)

    def update(self, model: nn.Module) -> None:
        self.module.update_parameters(model)


VARIANTS: dict[str, Callable[[nn.Module, float], object] | None] = {
    "none": None,
    "WeightAverage": WeightAverage,
    "AveragedModel": AveragedModelEMA,
}


def step_ms(cfg: Config, splits, dev: torch.device, make, steps: int) -> float:
    """Milliseconds per training step over `steps` steps, after as many untimed ones."""
    torch.manual_seed(cfg.train.seed)
    model = place_model(build_model(cfg.model, splits.num_classes, splits.image_shape), dev)
    batches = list(itertools.islice(train_batches(cfg, splits, dev), 2 * steps))
    if len(batches) < 2 * steps:
        raise SystemExit(f"error: the training split has {len(batches)} batches, --steps {steps} needs {2 * steps}")
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, 2 * steps)
    loss_fn = build_loss(cfg.loss)
    ema = None if make is None else make(model, cfg.train.ema_decay or 0.999)
    kw = {"device": dev, "grad_clip": cfg.optim.grad_clip, "ema": ema}
    train_epoch(model, batches[:steps], opt, sched, loss_fn, **kw)  # warm-up: allocator, kernels' caches
    synchronize(dev)
    t0 = time.perf_counter()
    train_epoch(model, batches[steps:], opt, sched, loss_fn, **kw)
    synchronize(dev)
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=60, help="timed steps per run (after as many untimed)")
    p.add_argument("--cpus", type=int, default=2, help="torch threads on the CPU")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--set", action="append", default=[], help="config override, e.g. model.backbone=vgg")
    p.add_argument("--out", help="also write the result as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.cpus)
    dev = torch.device("cuda" if a.gpu else "cpu")
    cfg = load_config(None, [f"data.path={a.data}", *a.set])
    splits = load_data(cfg)
    ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(a.reps):
        for name, make in VARIANTS.items():
            ms[name].append(step_ms(cfg, splits, dev, make, a.steps))
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in ms.items()), file=sys.stderr)
    med = {name: statistics.median(v) for name, v in ms.items()}
    result = {
        "device": torch.cuda.get_device_name() if a.gpu else f"cpu, {a.cpus} threads",
        "sets": a.set,
        "steps": a.steps,
        "ms_per_step": ms,
        "median_ms_per_step": med,
        "over_none": {name: med[name] / med["none"] for name in VARIANTS if name != "none"},
    }
    print(json.dumps(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
