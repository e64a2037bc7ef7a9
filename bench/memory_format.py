"""Training-step throughput of a model in NCHW against channels_last on the CPU, side by side: why
`lstmclf.engine.place_model` puts every model in channels_last, not only on a GPU.

The same model, data, optimizer and loss as a worker's step (`lstmclf.engine.train_epoch`), --steps
steps of real training batches per run, the two layouts alternating over --reps rounds (A B, B A, ...);
images/s from the median step time after --warmup steps.

    python bench/memory_format.py --data ../shared/data/mnist --reps 3 [--out bench/out/memory_format.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lstmclf.config import load_config
from lstmclf.driver import load_data
from lstmclf.engine import build_loss, build_optimizer, build_scheduler
from lstmclf.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # train_throughput's training batches, shared
from train_throughput import train_batches  # noqa: E402

RECIPES = {"default": None, "fast": ROOT / "recipes" / "fast.yaml"}


def step_rate(cfg, splits, channels_last: bool, steps: int, warmup: int) -> float:
    """Images/s of `steps` training steps (median step after `warmup`)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, splits.num_classes, splits.image_shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = train_batches(cfg, splits, torch.device("cpu"))
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, len(loader))
    loss_fn = build_loss(cfg.loss)
    model.train()
    times = []
    for i, (x, y) in enumerate(loader):
        if i == steps + warmup:
            break
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    return cfg.train.batch_size / statistics.median(times[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/out/memory_format.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    result: dict = {"threads": a.threads, "torch": torch.__version__, "recipes": {}}
    for name, recipe in RECIPES.items():
        cfg = load_config(recipe, [f"data.path={a.data}"])  # "sample": the bundled sample
        splits = load_data(cfg)
        rates: dict[str, list[float]] = {"nchw": [], "channels_last": []}
        for rep in range(a.reps):
            order = ("nchw", "channels_last") if rep % 2 == 0 else ("channels_last", "nchw")
            for layout in order:
                rates[layout].append(step_rate(cfg, splits, layout == "channels_last", a.steps, a.warmup))
                print(f"{name} rep {rep + 1} {layout}: {rates[layout][-1]:,.0f} img/s", file=sys.stderr, flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        result["recipes"][name] = {
            "batch_size": cfg.train.batch_size,
            "img_s": rates,
            "median_img_s": med,
            "channels_last_over_nchw": round(med["channels_last"] / med["nchw"], 3),
        }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
