"""Where Ray's overhead goes on a small machine: per-process CPU and wake-ups during a Ray Train run
against the plain loop, short A/B runs of Ray settings, the same loop run in different places, and the
plain loop beside processes that do nothing but wake up as often as Ray's processes do.

    python bench/investigations/ray_overhead.py cpu --data ../shared/data/mnist             # /proc sampling, ~3 min
    python bench/investigations/ray_overhead.py ab --data ../shared/data/mnist --reps 2     # env variants, ~5 min a rep
    python bench/investigations/ray_overhead.py where --data ../shared/data/mnist --reps 3  # ~6 min a rep
    python bench/investigations/ray_overhead.py wakers --data ../shared/data/mnist --reps 6 # ~1.5 min a rep

`cpu` starts `jobs/train.py` (1 worker, 2 CPUs), waits until training is under way and samples every
thread's CPU time and context switches from /proc for 20 s; then the same for the plain loop alone and
for a local Ray left idle (`ray.init()`, no Train). Per process it prints CPU, wake-ups a second
(voluntary context switches: a thread went to sleep and was woken) and involuntary switches a second
(a running thread was switched out for another).
`ab` runs, per rep, the plain loop and then jobs/train.py under each environment variant (2 epochs of
30,000 images each) and prints the epoch rates.
`where` runs the same training loop (bench/train_throughput.py's `plain_epochs`, 3 epochs of 18,000
images, 2 threads), each variant in a fresh process, per rep: alone; in a process that has started a
local Ray (dashboard on) and leaves it idle; in a Ray actor with 2 CPUs, on the actor's main thread
and on a thread of its own (as Ray Train runs a worker's loop); and Ray Train itself (1 worker, 2 CPUs).
It prints each variant's epoch rates, the median after the first epoch and its ratio to the plain loop,
and the loop process's CPU time per image (that process's Ray threads included; not for Ray Train).
`wakers` runs, alternating, the plain loop alone and beside N processes that only sleep 10 ms at a time
(as the main thread of every Ray worker process does: Ray's core worker checks for signals every 10 ms)
and prints the epoch rates, their ratio and the training process's involuntary switches a second.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # train_throughput's plain loop: the same loop as the benchmark
VARIANTS = {
    "default": {},
    "metrics off": {"RAY_enable_metrics_collection": "0"},
    "niceness 0": {"RAY_worker_niceness": "0"},
    "omp passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # waiting OpenMP threads sleep instead of spinning
}
PLACES = ("plain", "beside idle Ray", "Ray actor", "Ray actor, own thread", "Ray Train")


def thread_stats(pids: list[str] | None = None) -> dict[tuple[str, str], tuple[int, int, int, str]]:
    """(pid, tid) -> (user+system clock ticks, voluntary and involuntary context switches, command line)
    for every thread of `pids` (default: every process)."""
    out = {}
    for pid in pids or filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()[:70]
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            f = stat[stat.rfind(")") + 2 :].split()
            sw = dict(line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line)
            out[pid, tid] = (
                int(f[11]) + int(f[12]),
                int(sw["voluntary_ctxt_switches"]),
                int(sw["nonvoluntary_ctxt_switches"]),
                cmd,
            )
    return out


def own_involuntary_switches() -> int:
    """How often this process's threads have been switched out against their will so far."""
    return sum(v[2] for v in thread_stats([str(os.getpid())]).values())


def train_cmd(data: str, storage: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        "--data",
        data,
        "--cpus-per-worker",
        "2",
        "--storage",
        storage,
        *extra,
    ]


def sample(cmd: list[str], wait: float, seconds: float) -> tuple[list[tuple], list[tuple]]:
    """Start `cmd`, wait, sample every thread for `seconds`, stop it. Per process, busiest first, and per
    thread of the busiest process: (CPU % of one core, wake-ups/s, involuntary switches/s, command line)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [c.replace("{tmp}", tmp) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(wait)
        a, t0 = thread_stats(), time.time()
        time.sleep(seconds)
        b, dt = thread_stats(), time.time() - t0
        proc.send_signal(signal.SIGINT)  # the job's clean exit: its local Ray shuts down with it
        proc.wait(timeout=120)
    pct = 100 / os.sysconf("SC_CLK_TCK")
    threads = {
        k: ((b[k][0] - a[k][0]) / dt * pct, (b[k][1] - a[k][1]) / dt, (b[k][2] - a[k][2]) / dt, b[k][3])
        for k in b.keys() & a.keys()
    }
    per_pid: dict[str, list] = {}
    for (pid, _), t in threads.items():
        row = per_pid.setdefault(pid, [0.0, 0.0, 0.0, t[3]])
        for i in range(3):
            row[i] += t[i]
    rows = sorted((tuple(r) for r in per_pid.values()), reverse=True)
    busiest = max(per_pid, key=lambda pid: per_pid[pid][0])
    return rows, sorted((t for (pid, _), t in threads.items() if pid == busiest), reverse=True)


def sample_cpu(data: str, wait: float, seconds: float) -> None:
    plain = [sys.executable, __file__, "_place", "plain", "--data", data, "--limit", "0", "--epochs", "3"]
    idle = [sys.executable, "-c", "import ray, time; ray.init(num_cpus=2); time.sleep(3600)"]
    for label, cmd, w in (
        ("Ray Train, 1 worker (jobs/train.py)", train_cmd(data, "{tmp}", "--epochs", "2"), wait),
        ("plain loop", plain, wait / 2),
        ("idle local Ray (ray.init, no Train)", idle, wait / 2),
    ):
        rows, threads = sample(cmd, w, seconds)
        shown = [r for r in rows if r[0] >= 0.3 or r[1] >= 20 or r[2] >= 20]
        print(
            f"\n{label}:\n\n| CPU % of one core | wake-ups/s | involuntary switches/s | process |\n"
            "| ---: | ---: | ---: | --- |"
        )
        for cpu, vol, inv, c in shown:
            print(f"| {cpu:.1f} | {vol:.0f} | {inv:.0f} | `{c}` |")
        total = f"total {sum(r[0] for r in rows):.0f}% of {os.cpu_count() * 100}%"
        if cmd is idle:
            print(f"\n{total}; wake-ups/s {sum(r[1] for r in rows):.0f}", flush=True)
            continue
        top, rest = threads[:2], threads[2:]
        print(
            f"\n{total}; wake-ups/s outside the training process {sum(r[1] for r in rows[1:]):.0f}, inside it "
            f"{rows[0][1]:.0f}; the training process switched out {rows[0][2]:.0f} times a second. Its two "
            f"busiest threads: {top[0][0]:.1f}% and {top[1][0]:.1f}% of a core (switched out {top[0][2]:.0f} and "
            f"{top[1][2]:.0f}/s); its other {len(rest)} threads: {sum(t[0] for t in rest):.1f}% together, "
            f"{sum(t[1] for t in rest):.0f} wake-ups/s",
            flush=True,
        )


def ab(data: str, reps: int, variants: list[str]) -> None:
    results: dict[str, list] = {"plain": [], **{k: [] for k in variants}}
    for _ in range(reps):
        results["plain"].append(run_place("plain", data, limit=30000, epochs=2)["rates"])
        for label in variants:
            env = VARIANTS[label]
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(
                    train_cmd(data, tmp, "--epochs", "2", "--set", "data.limit_train=30000", "--name", "ab"),
                    env={**os.environ, **env},
                    capture_output=True,
                    check=True,
                )
                rates = [
                    round(json.loads(Path(f).read_text())["train_img_s"])
                    for f in sorted(glob.glob(f"{tmp}/ab/epoch_*/metrics.json"))
                ]
            results[label].append(rates)
        print(json.dumps(results), flush=True)


def timed_loop(cfg, splits, threaded: bool) -> tuple[list[float], float, float]:
    """plain_epochs on this thread or on a new one: its rates, this process's CPU seconds and its
    threads' involuntary context switches a second."""
    sys.path.insert(0, str(ROOT / "bench"))  # also inside a Ray actor, whose sys.path lacks bench/
    import torch
    from train_throughput import plain_epochs

    torch.set_num_threads(2)
    out: dict = {}

    def run() -> None:
        c, inv, t0 = os.times(), own_involuntary_switches(), time.perf_counter()
        out["rates"] = plain_epochs(cfg, splits, cfg.train.epochs, torch.device("cpu"))
        t, inv2, dt = os.times(), own_involuntary_switches(), time.perf_counter() - t0
        out["cpu"] = t.user + t.system - c.user - c.system
        out["invol"] = (inv2 - inv) / dt

    if threaded:
        th = threading.Thread(target=run)
        th.start()
        th.join()
    else:
        run()
    return out["rates"], out["cpu"], out["invol"]


def place(name: str, data: str, limit: int = 20000, epochs: int = 3) -> dict:
    """One variant of `where` (`limit` training files before the validation split), in this process:
    a fresh one per variant."""
    import ray

    from lstmclf.config import Config
    from lstmclf.driver import load_data
    from lstmclf.training import fit

    cfg = Config().override(
        {
            "data.path": data,
            "data.limit_train": limit,
            "train.epochs": epochs,
            "scaling.cpus_per_worker": 2,
            "train.checkpoints_to_keep": 3,
        }
    )
    splits = load_data(cfg)
    cpu = invol = None
    if name == "Ray Train":
        with tempfile.TemporaryDirectory() as tmp:
            fit(cfg.override({"storage.path": tmp, "storage.name": "where"}), splits=splits, progress=False)
            rates = [
                json.loads(Path(f).read_text())["train_img_s"]
                for f in sorted(glob.glob(f"{tmp}/where/epoch_*/metrics.json"))
            ]
    elif name == "plain":
        rates, cpu, invol = timed_loop(cfg, splits, threaded=False)
    else:
        ray.init(num_cpus=2, log_to_driver=False)
        if name == "beside idle Ray":
            time.sleep(5)  # let Ray's processes finish starting
            rates, cpu, invol = timed_loop(cfg, splits, threaded=False)
        else:
            actor = ray.remote(num_cpus=2)(LoopActor).remote()
            rates, cpu, invol = ray.get(actor.run.remote(cfg, splits, name.endswith("own thread")))
        ray.shutdown()
    images = cfg.train.epochs * len(splits.train.labels)
    return {
        "rates": [round(r) for r in rates],
        "cpu_ms_per_img": cpu and round(1000 * cpu / images, 3),
        "involuntary_per_s": invol and round(invol),
    }


class LoopActor:
    def run(self, cfg, splits, threaded: bool) -> tuple[list[float], float, float]:
        return timed_loop(cfg, splits, threaded)


def run_place(name: str, data: str, limit: int = 20000, epochs: int = 3) -> dict:
    """`place` in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "_place", name, "--data", data, "--limit", str(limit), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def after_first(run: dict) -> float:
    """Median epoch rate of one run after its first epoch (which also pays for start-up)."""
    return statistics.median(run["rates"][1:])


def medians(runs: dict[str, list[dict]]) -> dict[str, float]:
    """Per variant, the median epoch rate after the first epoch over all its runs."""
    return {k: statistics.median(r for run in v for r in run["rates"][1:]) for k, v in runs.items()}


def where(data: str, reps: int) -> None:
    runs: dict[str, list[dict]] = {k: [] for k in PLACES}
    for _ in range(reps):
        for name in PLACES:
            runs[name].append(run_place(name, data))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    med = medians(runs)
    print(
        json.dumps(
            {
                k: {"runs": v, "median_after_first_epoch": med[k], "ratio_to_plain": round(med[k] / med["plain"], 3)}
                for k, v in runs.items()
            },
            indent=1,
        )
    )


# Sleeps 10 ms at a time, as a Ray worker's signal check does; a random start keeps the wakers' timers
# apart (timers that fall due together are served by one switch).
WAKER = "import random, time\ntime.sleep(random.random() / 100)\nwhile True:\n    time.sleep(0.01)"


def wakers(data: str, reps: int, n: int, limit: int, epochs: int) -> None:
    runs: dict[str, list[dict]] = {"plain": [], f"beside {n} wakers": []}
    for _ in range(reps):
        for label in runs:
            procs = [subprocess.Popen([sys.executable, "-c", WAKER]) for _ in range(n if label != "plain" else 0)]
            try:
                runs[label].append(run_place("plain", data, limit=limit, epochs=epochs))
            finally:
                for w in procs:
                    w.kill()
                    w.wait()
            print(label, runs[label][-1], file=sys.stderr, flush=True)
    med = medians(runs)
    pairs = [after_first(b) / after_first(a) for a, b in zip(*runs.values(), strict=True)]
    print(
        json.dumps(
            {
                "runs": runs,
                "median_after_first_epoch": med,
                "ratio": round(med[f"beside {n} wakers"] / med["plain"], 3),
                "pair_ratios": [round(r, 3) for r in pairs],
                "median_pair_ratio": round(statistics.median(pairs), 3),
                "involuntary_per_s_median": {
                    k: statistics.median(r["involuntary_per_s"] for r in v) for k, v in runs.items()
                },
            },
            indent=1,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["cpu", "ab", "where", "wakers", "_place"])
    p.add_argument("place", nargs="?", choices=PLACES, help="with _place: the variant this process runs")
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument(
        "--wakers",
        type=int,
        default=50,
        help="wakers: how many processes waking 100 times a second "
        "(50 switch the loop's threads out about as often as Ray's processes do in `cpu`'s Ray Train run)",
    )
    p.add_argument("--limit", type=int, default=20000, help="wakers, _place: training files (0 = all)")
    p.add_argument("--epochs", type=int, default=3, help="wakers, _place: epochs per run")
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
    elif a.what == "wakers":
        wakers(data, a.reps, a.wakers, a.limit, a.epochs)
    else:
        print(json.dumps(place(a.place, data, a.limit, a.epochs)))


if __name__ == "__main__":
    main()
