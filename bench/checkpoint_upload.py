"""Checkpoint upload overhead per epoch: S3 (a SeaweedFS on this machine) versus a local directory.

    .venv/bin/python bench/checkpoint_upload.py              # about 2-3 minutes on 2 cores
    .venv/bin/python bench/checkpoint_upload.py --reps 30 --epochs 8 --skip-ray

Part 1 times `upload_checkpoint` (what rank 0 does once per epoch: files, then the manifest, each
whole) for real checkpoints (weights + AdamW state) of two models, local and S3 interleaved.
Part 2 times `ray.train.report` with a checkpoint, epoch by epoch, inside real Ray Train runs of
the same config whose storage is local or S3. Both print Markdown for docs/benchmarks.md.
Starts its own SeaweedFS (tests/support/s3.py, the test suite's launcher) on free loopback ports and
stops it at the end.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's SeaweedFS launcher, tests/support/s3.py

from tests.support.s3 import AWS_ENV, SeaweedFS  # noqa: E402

MODELS = {  # name -> overrides
    "CNN-LSTM (defaults)": {},
    "ResNet-18 + LSTM": {"model.backbone": "resnet"},
}


def make_checkpoint(d: Path, overrides: dict) -> int:
    import torch

    from lstmclf.checkpoint import save_checkpoint
    from lstmclf.config import Config
    from lstmclf.engine import build_optimizer
    from lstmclf.models import build_model

    cfg = Config().override(overrides)
    model = build_model(cfg.model, 10, (1, 28, 28))
    opt = build_optimizer(cfg.optim, model.parameters())
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    opt.step()  # AdamW's moments exist, as in a real checkpoint
    save_checkpoint(
        d,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 0,
            "config": cfg.to_dict(),
            "metrics": {},
            "data": {"num_classes": 10, "image_shape": [1, 28, 28], "mean": 0.13, "std": 0.31},
        },
    )
    return sum(p.stat().st_size for p in d.iterdir())


def part1(server: SeaweedFS, reps: int, tmp: Path) -> list[str]:
    from lstmclf import storage
    from lstmclf.checkpoint import upload_checkpoint

    local_fs, local_root = storage.resolve(str(tmp / "local"))
    s3_fs, s3_root = storage.resolve("s3://bench/part1", server.endpoint)
    rows = [
        "| checkpoint | size | local median | S3 median | S3 / local | S3 overhead | S3 throughput |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, overrides in MODELS.items():
        src = tmp / name.split()[0]
        size = make_checkpoint(src, overrides)
        times: dict[str, list[float]] = {"local": [], "s3": []}
        for i in range(reps + 1):  # interleaved, so drift hits both; the first pair warms up
            for kind, fs, root in (("local", local_fs, local_root), ("s3", s3_fs, s3_root)):
                t0 = time.perf_counter()
                upload_checkpoint(src, fs, f"{root}/{src.name}/epoch_{i:04d}")
                if i:
                    times[kind].append(time.perf_counter() - t0)
        loc, s3 = statistics.median(times["local"]), statistics.median(times["s3"])
        rows.append(
            f"| {name} | {size / 1e6:.1f} MB | {loc * 1e3:.0f} ms | {s3 * 1e3:.0f} ms | {s3 / loc:.1f}x | "
            f"+{(s3 - loc) * 1e3:.0f} ms | {size / s3 / 1e6:.0f} MB/s |"
        )
        print(f"  {name}: local {times['local']}\n  s3 {times['s3']}", file=sys.stderr, flush=True)
    return rows


def timed_report(log_path, metrics, **kwargs):
    """The training loop's report hook: `ray.train.report`, its duration appended to a local file."""
    import ray.train

    t0 = time.perf_counter()
    ray.train.report(metrics, **kwargs)
    with open(log_path, "a") as f:
        f.write(
            json.dumps({"epoch": metrics["epoch"], "report_s": time.perf_counter() - t0, "epoch_s": metrics["epoch_s"]})
            + "\n"
        )


def part2(server: SeaweedFS, epochs: int, tmp: Path) -> list[str]:
    import ray

    from lstmclf import worker
    from lstmclf.config import Config
    from lstmclf.driver import init_ray, load_data

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    init_ray(num_cpus=2)
    base = {
        "data.limit_train": 2000,
        "data.limit_test": 300,
        "train.epochs": epochs,
        "scaling.num_workers": 1,
        "train.checkpoints_to_keep": 2,
        "storage.s3_endpoint": server.endpoint,
    }
    stats = {}
    for kind, path in (("local", str(tmp / "runs")), ("s3", "s3://bench/part2")):
        cfg = Config().override(base | {"storage.path": path, "storage.name": f"bench-{kind}"})
        log = tmp / f"reports-{kind}.jsonl"
        trainer = worker.make_trainer(cfg, load_data(cfg), report=functools.partial(timed_report, str(log)))
        trainer.fit()
        rec = [json.loads(line) for line in log.read_text().splitlines()][1:]  # epoch 1 warms up
        stats[kind] = (statistics.median(r["report_s"] for r in rec), statistics.median(r["epoch_s"] for r in rec))
        print(f"  {kind}: {rec}", file=sys.stderr, flush=True)
    ray.shutdown()
    (lr, le), (sr, se) = stats["local"], stats["s3"]
    return [
        "| storage | report() with checkpoint, median | epoch time, median | report share of epoch |",
        "| --- | ---: | ---: | ---: |",
        f"| local directory | {lr * 1e3:.0f} ms | {le:.2f} s | {lr / (le + lr):.1%} |",
        f"| S3 (SeaweedFS, loopback) | {sr * 1e3:.0f} ms | {se:.2f} s | {sr / (se + sr):.1%} |",
        "",
        f"S3 / local for `report()`: {sr / lr:.1f}x, i.e. +{(sr - lr) * 1e3:.0f} ms per epoch.",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15, help="uploads per model and storage (after one warm-up)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each Ray Train run (the first is not counted)")
    p.add_argument("--skip-ray", action="store_true", help="only part 1")
    a = p.parse_args()
    os.environ.update(AWS_ENV)  # the bench server's key pair, before Ray starts
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = SeaweedFS(tmp / "weed")
        server.start()
        try:
            server.create_bucket("bench")
            out = [f"Part 1, `upload_checkpoint` ({a.reps} uploads each, medians):", "", *part1(server, a.reps, tmp)]
            if not a.skip_ray:
                out += [
                    "",
                    f"Part 2, Ray Train, default CNN-LSTM, 1 worker, {a.epochs} epochs of 1,800 images "
                    f"(medians over epochs 2-{a.epochs}):",
                    "",
                    *part2(server, a.epochs, tmp),
                ]
        finally:
            server.stop()
    print("\n".join(out))


if __name__ == "__main__":
    main()
