"""Peak training images/s of the default CNN-LSTM on one GPU: the data resident on the GPU (lstmclf's
batches), bf16 autocast and channels_last (`lstmclf.engine`), large batches; eager, `torch.compile`, and
`torch.compile` with CUDA graphs (mode reduce-overhead).

    python bench/gpu_peak.py                                                   # on a GPU (bench/gpu.sh runs it)
    python bench/gpu_peak.py --device cpu --batches 32 --steps 2 --modes eager   # a check of the code path

Per mode and batch size: a fresh model, --warmup steps (compilation and CUDA graph capture happen here,
timed apart), then --steps timed steps, each the whole training step of `lstmclf.engine.train_epoch`
(draw a batch, forward, loss, backward, clip, AdamW, OneCycle). JSON on stdout (and --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

import torch

from lstmclf.config import Config
from lstmclf.data import BatchLoader, to_tensors
from lstmclf.driver import load_data
from lstmclf.engine import build_loss, build_optimizer, build_scheduler, place_model, synchronize, train_epoch
from lstmclf.models import build_model


def full_batches(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless full batches, epoch after epoch (a short last batch would make compiled code recompile)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for x, y in loader:
            if len(y) == loader.batch_size:
                yield x, y
        epoch += 1


def measure(cfg: Config, splits, dev: torch.device, batch: int, mode: str, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = place_model(build_model(cfg.model, splits.num_classes, splits.image_shape), dev)
    step_model = model
    if mode != "eager":
        step_model = torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs" else None)
    loader = BatchLoader(
        *to_tensors(splits.train, dev), batch, mean=splits.mean, std=splits.std, shuffle=True, shift=cfg.data.shift
    )
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.optim, opt, warmup + steps)
    loss_fn, batches = build_loss(cfg.loss), full_batches(loader)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def run(n: int) -> float:
        synchronize(dev)
        t0 = time.perf_counter()
        train_epoch(step_model, (next(batches) for _ in range(n)), opt, sched, loss_fn, device=dev, grad_clip=1.0)
        synchronize(dev)
        return time.perf_counter() - t0

    warm_s = run(warmup)
    t = run(steps)
    out = {"mode": mode, "batch": batch, "img_s": round(steps * batch / t), "warmup_s": round(warm_s, 1)}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/mnist", help="dataset directory, or sample")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="512,2048,8192", help="batch sizes, comma-separated")
    p.add_argument("--modes", default="eager,compile,cudagraphs")
    p.add_argument("--warmup", type=int, default=15, help="steps before timing (compilation, graph capture)")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--out")
    a = p.parse_args()
    dev = torch.device(a.device)
    cfg = Config().override({"data.path": a.data})  # the default CNN-LSTM and optimizer
    splits = load_data(cfg)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    rows = []
    for mode in a.modes.split(","):
        for batch in map(int, a.batches.split(",")):
            try:
                rows.append(measure(cfg, splits, dev, batch, mode, a.warmup, a.steps))
            except Exception as e:  # one mode failing (a compiler missing, out of memory) must not hide the rest
                rows.append({"mode": mode, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ok = [r for r in rows if "img_s" in r]
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "torch": torch.__version__,
        "rows": rows,
        "peak": max(ok, key=lambda r: r["img_s"]) if ok else None,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
