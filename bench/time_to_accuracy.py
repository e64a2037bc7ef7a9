"""Time to 99% test accuracy on full MNIST: the standard PyTorch MNIST example against lstmclf's fast
recipe through `jobs/train.py`, side by side; the input path; data-parallel scaling.

    python bench/time_to_accuracy.py --data ../shared/data/mnist            # both sides, --reps rounds
    python bench/time_to_accuracy.py --smoke --data sample                  # a slice, 1 epoch each side (CI)
    python bench/time_to_accuracy.py input --data ../shared/data/mnist      # input paths, images/s; input's share
    python bench/time_to_accuracy.py scaling --data ../shared/data/mnist    # 2 workers x 1 CPU vs 1 worker x 2 CPUs
    python bench/time_to_accuracy.py --gpu --sides lstmclf --config recipes/gpu.yaml --target 0.995   # bench/gpu.sh

compare (the default): each side is one command, timed from its start, the sides alternating over
--reps rounds (A B, B A, ...):
  baseline  the standard PyTorch MNIST example (pytorch/examples mnist/main.py): its network, torchvision's
            MNIST dataset (the same IDX files, decompressed into a temp dir) through a DataLoader, batch 64,
            shuffled, Adadelta lr 1.0, StepLR gamma 0.7 per epoch, the test set after every epoch; it
            stops at the first epoch at the target (at most --baseline-epochs, the example's 14);
  lstmclf   `jobs/train.py --config RECIPE --cpus-per-worker N`: Ray Train, 1 worker with the N cores,
            every epoch's checkpoint kept and evaluated on the test set afterwards (not timed).
Per side: the test accuracy of every epoch, the epochs and seconds of epochs (training + evaluation:
the baseline's test pass, lstmclf's validation pass, its `epoch_s`) to the first epoch at the target,
the whole wall time (baseline: command start to that epoch's end; lstmclf: the whole command, Ray's
start-up, every epoch, checkpoints and the final test evaluation included), and peak RSS: the largest
sum, over samples every 0.5 s, of the RSS of the command's process and all its descendants (lstmclf:
the job's driver, Ray's GCS, raylet, dashboard and its agents, the Train controller, helper actors and
worker; shared pages, such as Ray's object store, count once per process mapping them).

input: images/s of lstmclf's in-memory batches (random shifts off and on) and of torchvision's MNIST
dataset through a DataLoader (num_workers 0 and 2) at the recipe's batch size and with the same
augmentation (RandomCrop(28, padding=2) is the same +-2 pixel zero-filled shift), alternating; then the
input's share of a training epoch: the time to draw an epoch's batches over the time of an epoch of the
recipe's training loop with them (`train_throughput.plain_epochs`). With --gpu: lstmclf's batches on the
GPU and the share of the recipe's GPU step.

scaling: the recipe through Ray Train with 1 worker x 2 CPUs against 2 workers x 1 CPU at the same
global batch (per-worker batch halved), alternating: training images/s and every epoch's test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # train_throughput's plain loop and Ray run, shared
FAST = ROOT / "recipes" / "fast.yaml"
SMOKE_TRAIN = 1000  # training images per side with --smoke


# ---- the baseline: pytorch/examples mnist/main.py, written from its description ----


class ExampleNet(torch.nn.Module):
    """The example's network: (B,1,28,28) -> conv 32 -> conv 64 -> max-pool -> (B, 9216) -> 128 -> 10 log-probs."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        x = f.max_pool2d(f.relu(self.conv2(f.relu(self.conv1(x)))), 2)  # (B, 64, 12, 12)
        x = self.dropout2(f.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))  # (B, 128)
        return f.log_softmax(self.fc2(x), dim=1)


def torchvision_root(data: str, dest: Path) -> Path:
    """The dataset's four IDX files, decompressed where torchvision's MNIST reads them (dest/MNIST/raw)."""
    from lstmclf.data import encode_idx, read_arrays
    from lstmclf.data.sample import NAMES

    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for role, arr in read_arrays(data).items():
        (raw / NAMES[role].removesuffix(".gz")).write_bytes(encode_idx(arr, compress=False))
    return dest


def torchvision_mnist(root: Path, train: bool, shift: int = 0, limit: int = 0) -> torch.utils.data.Dataset:
    """torchvision's MNIST with the example's transform; `shift`: RandomCrop's +-shift zero-filled translation."""
    from torchvision import datasets, transforms

    steps = [transforms.RandomCrop(28, padding=shift)] if shift else []
    tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(root), train=train, download=False, transform=tf)
    return torch.utils.data.Subset(ds, range(min(limit, len(ds)))) if limit else ds


def baseline(a: argparse.Namespace) -> None:
    """The example's training, one JSON line per epoch on stdout; stops at the first epoch at the target."""
    f = torch.nn.functional
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)  # the example's --seed
    train = torch.utils.data.DataLoader(
        torchvision_mnist(Path(a.root), True, limit=a.limit_train), batch_size=64, shuffle=True
    )
    test = torch.utils.data.DataLoader(torchvision_mnist(Path(a.root), False), batch_size=1000)
    model = ExampleNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss = f.nll_loss(model(x), y)
            loss.backward()
            opt.step()
        t1 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(dim=1) == y).sum())
        sched.step()
        acc = correct / len(test.dataset)
        line = {"epoch": epoch, "test_acc": acc, "train_s": t1 - t0, "epoch_s": time.perf_counter() - t0}
        print(json.dumps(line), flush=True)
        if acc >= a.target:
            break


# ---- running a side as a command ----


def tree_rss(root: int) -> tuple[int, int]:
    """(sum of RSS, largest RSS) in bytes over process `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parent[int(name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    sizes = []
    for pid in tree:
        try:
            sizes.append(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except OSError:
            continue
    return sum(sizes), max(sizes, default=0)


def run_command(cmd: list[str], log: Path, on_line: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Run `cmd` to its end: its wall time, peak RSS (tree sum and largest process, sampled every 0.5 s)
    and every stdout line with the seconds since start it arrived at; stdout and stderr also go to `log`."""
    from lstmclf.driver import job_env

    env = job_env(  # no RAY_ADDRESS: each side starts its own Ray
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    )
    peak = [0, 0]
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, text=True, env=env, cwd=ROOT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                total, largest = tree_rss(proc.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in proc.stdout:
            t = time.perf_counter() - t0
            out.write(line)
            lines.append((round(t, 2), line.rstrip("\n")))
            if on_line:
                on_line(t, line)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    if rc != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... exited {rc}; its output: {log}\n{log.read_text()[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak[0] / 2**20),
        "peak_process_rss_mb": round(peak[1] / 2**20),
        "lines": lines,
    }


def reach(epochs: list[dict], target: float) -> dict | None:
    """The first epoch at `target` test accuracy: its number and the seconds of epochs up to its end."""
    total = 0.0
    for m in epochs:
        total += m["epoch_s"]
        if m["test_acc"] >= target:
            return {
                "epoch": m["epoch"],
                "epochs_s": round(total, 2),
                **({"wall_s": m["wall_s"]} if "wall_s" in m else {}),
            }
    return None


def run_baseline(a: argparse.Namespace, root: Path, log: Path) -> dict:
    cmd = [sys.executable, __file__, "baseline", "--root", str(root), "--threads", str(a.cpus)]
    cmd += ["--target", str(a.target), "--epochs", str(1 if a.smoke else a.baseline_epochs)]
    cmd += ["--limit-train", str(SMOKE_TRAIN if a.smoke else 0)]
    epochs: list[dict] = []
    run = run_command(cmd, log, lambda t, line: epochs.append({**json.loads(line), "wall_s": round(t, 2)}))
    return {"command": cmd[1:], **run, "epochs": epochs, "reach": reach(epochs, a.target), "lines": None}


def run_lstmclf(a: argparse.Namespace, storage: Path, name: str, log: Path) -> dict:
    from lstmclf.config import load_config
    from lstmclf.data import load_test
    from lstmclf.evaluation import evaluate_checkpoint

    sets = ["data.limit_train=1000", "train.epochs=1"] if a.smoke else []
    n = load_config(a.config, sets).train.epochs
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", a.config, "--data", a.data]
    cmd += ["--storage", str(storage), "--name", name, "--cpus-per-worker", str(a.cpus)]
    cmd += [f"--set={s}" for s in [*sets, f"train.checkpoints_to_keep={n}"]]
    if a.gpu:
        cmd += ["--gpus-per-worker", "1"]
    run = run_command(cmd, log)
    test = load_test(a.data, num_classes=10)
    dev = torch.device("cuda" if a.gpu else "cpu")
    epochs = []
    for d in sorted((storage / name).glob("epoch_*")):  # every epoch's checkpoint, on the test set
        m = json.loads((d / "metrics.json").read_text())
        acc = evaluate_checkpoint(str(d), test, device=dev)["acc"]
        epochs.append({"epoch": m["epoch"], "test_acc": acc, "val_acc": m["val_acc"], "epoch_s": m["epoch_s"]})
        epochs[-1] |= {"train_img_s": m["train_img_s"], "worker_max_rss_mb": m["max_rss_mb"]}
    return {"command": cmd[1:], **run, "epochs": epochs, "reach": reach(epochs, a.target)}


def median_of(runs: list[dict], *keys: str) -> float | None:
    values = []
    for r in runs:
        v: Any = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


def side_summary(runs: list[dict]) -> dict:
    return {
        "epochs_to_target": median_of(runs, "reach", "epoch"),
        "epochs_s_to_target": median_of(runs, "reach", "epochs_s"),
        "wall_s": median_of(runs, "wall_s"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_process_rss_mb": max(r["peak_process_rss_mb"] for r in runs),
    }


def compare(a: argparse.Namespace) -> dict:
    sides = a.sides.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(a.data, Path(tmp) / "torchvision") if "baseline" in sides else None
        for rep in range(a.reps):
            for side in sides if rep % 2 == 0 else sides[::-1]:  # A B, B A, ...: drift hits both sides
                load = os.getloadavg()[0]
                log = Path(tmp) / f"{side}-{rep}.log"
                if side == "baseline":
                    r = run_baseline(a, root, log)
                else:
                    r = run_lstmclf(a, Path(tmp) / "runs", f"tta-{rep}", log)
                runs[side].append({"rep": rep, "load_before": load, "load_after": os.getloadavg()[0], **r})
                accs = ", ".join(f"{e['test_acc']:.2%}" for e in r["epochs"])
                print(
                    f"rep {rep + 1}/{a.reps} {side}: test acc {accs}; reach {r['reach']}; wall {r['wall_s']} s; "
                    f"peak RSS {r['peak_rss_mb']} MB",
                    file=sys.stderr,
                    flush=True,
                )
    out: dict[str, Any] = {"target": a.target, "runs": runs, "summary": {s: side_summary(runs[s]) for s in sides}}
    if len(sides) == 2:
        b, f = out["summary"]["baseline"], out["summary"]["lstmclf"]
        ratio = lambda k: round(b[k] / f[k], 2) if b[k] and f[k] else None  # noqa: E731
        out["speedup"] = {
            "epochs_s": ratio("epochs_s_to_target"),
            "wall_s": ratio("wall_s"),
            "targets": {"epochs_s": 10, "wall_s": 4},
        }
    return out


def images_per_s(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], dev: torch.device) -> float:
    """Draw every batch (no model): images/s."""
    from lstmclf.engine import synchronize

    n, t0 = 0, time.perf_counter()
    for _, y in batches:
        n += len(y)
    synchronize(dev)
    return n / (time.perf_counter() - t0)


def input_path(a: argparse.Namespace) -> dict:
    from train_throughput import plain_epochs

    from lstmclf.config import load_config
    from lstmclf.data import BatchLoader, to_tensors
    from lstmclf.driver import load_data

    torch.set_num_threads(a.cpus)
    cfg = load_config(a.config, ["data.limit_train=1000"] if a.smoke else []).override({"data.path": a.data})
    splits, dev = load_data(cfg), torch.device("cuda" if a.gpu else "cpu")
    b, shift = cfg.train.batch_size, max(cfg.data.shift, 2)  # shifts on, as the default recipe draws them
    tensors = to_tensors(splits.train, dev)

    def ours(s: int) -> Callable[[], Any]:
        return lambda: BatchLoader(*tensors, b, mean=splits.mean, std=splits.std, shuffle=True, shift=s)

    paths: dict[str, Callable[[], Any]] = {"lstmclf": ours(0), f"lstmclf, shift {shift}": ours(shift)}
    with tempfile.TemporaryDirectory() as tmp:
        if not a.gpu:  # torchvision's path feeds a CPU step; on the GPU only lstmclf's batches are measured
            root = torchvision_root(a.data, Path(tmp))
            limit = SMOKE_TRAIN if a.smoke else 0
            for s in (0, shift):
                for workers in (0, 2):
                    ds = torchvision_mnist(root, True, shift=s, limit=limit)
                    name = f"torchvision DataLoader, {workers} workers" + (f", shift {s}" if s else "")
                    paths[name] = lambda ds=ds, w=workers: torch.utils.data.DataLoader(
                        ds, batch_size=b, shuffle=True, num_workers=w
                    )
        rates: dict[str, list[float]] = {k: [] for k in paths}
        epoch: list[float] = []
        for rep in range(a.reps):
            for name in paths if rep % 2 == 0 else list(paths)[::-1]:
                rates[name].append(images_per_s(iter(paths[name]()), dev))
            epoch.append(plain_epochs(cfg, splits, 1, dev)[0])  # the recipe's training epoch, its batches included
            print(
                f"rep {rep + 1}/{a.reps}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
                + f"; training epoch {epoch[-1]:,.0f} img/s",
                file=sys.stderr,
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in rates.items()}
    train = statistics.median(epoch)
    own = "lstmclf" if cfg.data.shift == 0 else f"lstmclf, shift {shift}"
    return {
        "batch_size": b,
        "images": len(splits.train),
        "img_s": {k: {"median": round(v), "per_rep": [round(r) for r in rates[k]]} for k, v in med.items()},
        "training_epoch_img_s": {"median": round(train), "per_rep": [round(r) for r in epoch]},
        # seconds drawing the recipe's batches per second of a training epoch that draws them
        "input_share_of_epoch": {"path": own, "share": round(train / med[own], 4), "target": 0.01},
    }


def scaling(a: argparse.Namespace) -> dict:
    from train_throughput import ray_run

    from lstmclf.config import load_config
    from lstmclf.driver import load_data
    from lstmclf.evaluation import evaluate_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(a.config, ["data.limit_train=1000", "train.epochs=1"] if a.smoke else [])
        base = base.override({"data.path": a.data, "storage.path": tmp})
        base = base.override({"train.checkpoints_to_keep": base.train.epochs})
        b = base.train.batch_size
        sides = {
            "1 worker x 2 CPUs": base.override({"scaling.num_workers": 1, "scaling.cpus_per_worker": 2}),
            "2 workers x 1 CPU": base.override(
                {"scaling.num_workers": 2, "scaling.cpus_per_worker": 1, "train.batch_size": b // 2}
            ),
        }
        splits = load_data(base)
        runs: dict[str, list[dict]] = {k: [] for k in sides}
        for rep in range(a.reps):
            for i, name in enumerate(sides if rep % 2 == 0 else list(sides)[::-1]):
                metrics, wall = ray_run(sides[name], splits, f"scaling-{rep}-{i}")
                run = Path(tmp) / f"scaling-{rep}-{i}"
                acc = [evaluate_checkpoint(str(d), splits.test)["acc"] for d in sorted(run.glob("epoch_*"))]
                runs[name].append({"img_s": [m["train_img_s"] for m in metrics], "test_acc": acc, "wall_s": wall})
                print(
                    f"rep {rep + 1}/{a.reps} {name}: img/s {[round(m['train_img_s']) for m in metrics]}, "
                    f"test acc {acc}",
                    file=sys.stderr,
                    flush=True,
                )
    later = lambda rs: statistics.median(r for run in rs for r in (run["img_s"][1:] or run["img_s"]))  # noqa: E731
    one, two = (later(runs[k]) for k in sides)
    return {
        "global_batch": b,
        "runs": runs,
        "img_s_after_first_epoch": {"1 worker x 2 CPUs": round(one), "2 workers x 1 CPU": round(two)},
        "ratio": round(two / one, 3),
        "target": 0.9,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="compare", choices=["compare", "input", "scaling", "baseline"])
    p.add_argument("--data", default="../shared/data/mnist", help="dataset directory, or sample")
    p.add_argument("--config", default=str(FAST), help="lstmclf's recipe (default recipes/fast.yaml)")
    p.add_argument("--cpus", type=int, default=2, help="cores: the worker's CPUs, the baseline's threads")
    p.add_argument("--reps", type=int, default=2, help="rounds, the sides alternating")
    p.add_argument("--target", type=float, default=0.99, help="test accuracy to reach")
    p.add_argument("--sides", default="baseline,lstmclf", help="compare: which sides, in the first round's order")
    p.add_argument("--baseline-epochs", type=int, default=14, help="the baseline's most epochs (the example's)")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_TRAIN} training images, 1 epoch each side")
    p.add_argument("--gpu", action="store_true", help="lstmclf on one GPU (the baseline stays on the CPU)")
    p.add_argument("--out", help="JSON file (default bench/out/time_to_accuracy[-WHAT].json)")
    # the baseline subcommand's own flags (run by compare as a command of its own)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=14, help=argparse.SUPPRESS)
    p.add_argument("--limit-train", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.what == "baseline":
        return baseline(a)
    if a.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: torch sees no CUDA device")
    a.config = str(Path(a.config).resolve())
    a.data = a.data if a.data == "sample" else str(Path(a.data).resolve())
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result = {"compare": compare, "input": input_path, "scaling": scaling}[a.what](a)
    result = {
        "machine": machine(a),
        "started": started,
        "command": " ".join(sys.argv),
        **result,
    }
    suffix = "" if a.what == "compare" else f"-{a.what}"
    out = Path(a.out or ROOT / "bench" / "out" / f"time_to_accuracy{suffix}{'-gpu' if a.gpu else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def machine(a: argparse.Namespace) -> dict:
    import ray

    return {
        "cpus": os.cpu_count(),
        "cores_used": a.cpus,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "load_at_start": os.getloadavg(),
        **({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda} if a.gpu else {}),
    }


if __name__ == "__main__":
    main()
