"""Where Ray's overhead goes on a small machine: per-process CPU during a Ray Train run, and
short A/B runs of Ray settings against the plain loop, and the same loop run in different places.

    python bench/ray_overhead.py cpu --data ../shared/data/mnist              # /proc sampling, ~2 min
    python bench/ray_overhead.py ab --data ../shared/data/mnist --reps 2      # env variants, ~5 min per rep
    python bench/ray_overhead.py where --data ../shared/data/mnist --reps 3   # ~6 min per rep

`cpu` starts `jobs/train.py` (1 worker, 2 CPUs), waits until training is under way and samples every
process's CPU time from /proc for 20 s. `ab` runs, per rep, the plain loop and then jobs/train.py
under each environment variant (2 epochs of 30,000 images each) and prints the epoch rates.
`where` runs the same training loop (bench/train_throughput.py's `plain_epochs`, 3 epochs of 18,000
images, 2 threads), each variant in a fresh process, per rep: alone; in a process that has started a
local Ray (dashboard on) and leaves it idle; in a Ray actor with 2 CPUs, on the actor's main thread
and on a thread of its own (as Ray Train runs a worker's loop); and Ray Train itself (1 worker, 2 CPUs).
It prints each variant's epoch rates, the median after the first epoch and its ratio to the plain loop,
and the loop process's CPU time per image (that process's Ray threads included; not for Ray Train).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default": {},
    "metrics off": {"RAY_enable_metrics_collection": "0"},
    "niceness 0": {"RAY_worker_niceness": "0"},
    "omp passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # waiting OpenMP threads sleep instead of spinning
}
PLACES = ("plain", "beside idle Ray", "Ray actor", "Ray actor, own thread", "Ray Train")


def cpu_times() -> dict[str, tuple[int, str, int]]:
    """pid -> (user+system clock ticks, command line, nice)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:70]
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2 :].split()
        out[pid] = (int(f[11]) + int(f[12]), cmd, int(f[16]))
    return out


def train_cmd(data: str, storage: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "train.py"), "--data", data, "--cpus-per-worker", "2",
            "--storage", storage, *extra]


def sample_cpu(data: str, wait: float, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(train_cmd(data, tmp, "--epochs", "2"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(wait)
        a, t0 = cpu_times(), time.time()
        time.sleep(seconds)
        b, dt = cpu_times(), time.time() - t0
        proc.send_signal(signal.SIGINT)  # the job's clean exit: its local Ray shuts down with it
        proc.wait(timeout=120)
    hz = os.sysconf("SC_CLK_TCK")
    rows = sorted(((b[p][0] - a[p][0]) / hz / dt * 100, b[p][1], b[p][2]) for p in b if p in a)
    print("| CPU % of one core | nice | process |\n| ---: | ---: | --- |")
    for pct, cmd, nice in reversed([r for r in rows if r[0] >= 0.3]):
        print(f"| {pct:.1f} | {nice} | `{cmd.strip()}` |")
    print(f"\ntotal {sum(r[0] for r in rows):.0f}% of {os.cpu_count() * 100}%")


def ab(data: str, reps: int, variants: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    plain_code = (
        "import json, torch; from lstmclf.config import Config; from lstmclf.train import load_data; "
        "from train_throughput import plain_epochs; torch.set_num_threads(2); "
        f"cfg = Config().override({{'data.path': {data!r}, 'data.limit_train': 30000, 'train.epochs': 2}}); "
        "print(json.dumps(plain_epochs(cfg, load_data(cfg), 2, torch.device('cpu'))))")
    results: dict[str, list] = {"plain": [], **{k: [] for k in variants}}
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", plain_code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})
        results["plain"].append([round(x) for x in json.loads(out.stdout.strip().splitlines()[-1])])
        for label in variants:
            env = VARIANTS[label]
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(train_cmd(data, tmp, "--epochs", "2", "--set", "data.limit_train=30000", "--name",
                                         "ab"), env={**os.environ, **env}, capture_output=True, check=True)
                rates = [round(json.loads(Path(f).read_text())["train_img_s"])
                         for f in sorted(glob.glob(f"{tmp}/ab/epoch_*/metrics.json"))]
            results[label].append(rates)
        print(json.dumps(results), flush=True)


def timed_loop(cfg, splits, threaded: bool) -> tuple[list[float], float]:
    """plain_epochs on this thread or on a new one; its rates and this process's CPU seconds."""
    sys.path.insert(0, str(ROOT / "bench"))  # also inside a Ray actor, whose sys.path lacks bench/
    import torch
    from train_throughput import plain_epochs

    torch.set_num_threads(2)
    out: dict = {}

    def run() -> None:
        c = os.times()
        out["rates"] = plain_epochs(cfg, splits, cfg.train.epochs, torch.device("cpu"))
        t = os.times()
        out["cpu"] = t.user + t.system - c.user - c.system

    if threaded:
        th = threading.Thread(target=run)
        th.start()
        th.join()
    else:
        run()
    return out["rates"], out["cpu"]


def place(name: str, data: str) -> dict:
    """One variant of `where`, in this process (a fresh one per variant)."""
    import ray

    from lstmclf.config import Config
    from lstmclf.train import fit, load_data

    cfg = Config().override({"data.path": data, "data.limit_train": 20000, "train.epochs": 3,
                             "scaling.cpus_per_worker": 2, "train.checkpoints_to_keep": 3})
    splits = load_data(cfg)
    cpu = None
    if name == "Ray Train":
        with tempfile.TemporaryDirectory() as tmp:
            fit(cfg.override({"storage.path": tmp, "storage.name": "where"}), splits=splits, verbose=False)
            rates = [json.loads(Path(f).read_text())["train_img_s"]
                     for f in sorted(glob.glob(f"{tmp}/where/epoch_*/metrics.json"))]
    elif name == "plain":
        rates, cpu = timed_loop(cfg, splits, threaded=False)
    else:
        ray.init(num_cpus=2, log_to_driver=False)
        if name == "beside idle Ray":
            time.sleep(5)  # let Ray's processes finish starting
            rates, cpu = timed_loop(cfg, splits, threaded=False)
        else:
            actor = ray.remote(num_cpus=2)(LoopActor).remote()
            rates, cpu = ray.get(actor.run.remote(cfg, splits, name.endswith("own thread")))
        ray.shutdown()
    images = cfg.train.epochs * len(splits.train.labels)
    return {"rates": [round(r) for r in rates], "cpu_ms_per_img": cpu and round(1000 * cpu / images, 3)}


class LoopActor:
    def run(self, cfg, splits, threaded: bool) -> tuple[list[float], float]:
        return timed_loop(cfg, splits, threaded)


def where(data: str, reps: int) -> None:
    runs: dict[str, list[dict]] = {k: [] for k in PLACES}
    for _ in range(reps):
        for name in PLACES:
            out = subprocess.run([sys.executable, __file__, "_place", name, "--data", data], capture_output=True,
                                 text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    med = {k: statistics.median(r for run in v for r in run["rates"][1:]) for k, v in runs.items()}
    print(json.dumps({k: {"runs": v, "median_after_first_epoch": med[k],
                          "ratio_to_plain": round(med[k] / med["plain"], 3)} for k, v in runs.items()}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["cpu", "ab", "where", "_place"])
    p.add_argument("place", nargs="?", choices=PLACES, help="with _place: the variant this process runs")
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"ab: comma-separated, of {', '.join(VARIANTS)}")
    a = p.parse_args()
    data = str(Path(a.data).resolve())
    if a.what == "cpu":
        sample_cpu(data, wait=45, seconds=20)
    elif a.what == "ab":
        unknown = set(a.variants.split(",")) - set(VARIANTS)
        if unknown:
            p.error(f"--variants: unknown {', '.join(sorted(unknown))}")
        ab(data, a.reps, a.variants.split(","))
    elif a.what == "where":
        where(data, a.reps)
    else:
        print(json.dumps(place(a.place, data)))


if __name__ == "__main__":
    main()
