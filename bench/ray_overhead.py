"""Where Ray's overhead goes on a small machine: per-process CPU during a Ray Train run, and
short A/B runs of Ray settings against the plain loop.

    python bench/ray_overhead.py cpu --data ../shared/data/mnist           # /proc sampling, ~2 min
    python bench/ray_overhead.py ab --data ../shared/data/mnist --reps 2   # env variants, ~5 min per rep

`cpu` starts `jobs/train.py` (1 worker, 2 CPUs), waits until training is under way and samples every
process's CPU time from /proc for 20 s. `ab` runs, per rep, the plain loop and then jobs/train.py
under each environment variant (2 epochs of 30,000 images each) and prints the epoch rates.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default": {},
    "metrics off": {"RAY_enable_metrics_collection": "0"},
    "niceness 0": {"RAY_worker_niceness": "0"},
}


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


def ab(data: str, reps: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    plain_code = (
        "import json, torch; from lstmclf.config import Config; from lstmclf.train import load_data; "
        "from train_throughput import plain_epochs; torch.set_num_threads(2); "
        f"cfg = Config().override({{'data.path': {data!r}, 'data.limit_train': 30000, 'train.epochs': 2}}); "
        "print(json.dumps(plain_epochs(cfg, load_data(cfg), 2)))")
    results: dict[str, list] = {"plain": [], **{k: [] for k in VARIANTS}}
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", plain_code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})
        results["plain"].append([round(x) for x in json.loads(out.stdout.strip().splitlines()[-1])])
        for label, env in VARIANTS.items():
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(train_cmd(data, tmp, "--epochs", "2", "--set", "data.limit_train=30000", "--name",
                                         "ab"), env={**os.environ, **env}, capture_output=True, check=True)
                rates = [round(json.loads(Path(f).read_text())["train_img_s"])
                         for f in sorted(glob.glob(f"{tmp}/ab/epoch_*/metrics.json"))]
            results[label].append(rates)
        print(json.dumps(results), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["cpu", "ab"])
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    data = str(Path(a.data).resolve())
    if a.what == "cpu":
        sample_cpu(data, wait=45, seconds=20)
    else:
        ab(data, a.reps)


if __name__ == "__main__":
    main()
