"""What one Tune trial costs on this machine when its training is next to nothing: the test suite's
floor (most of its slow tests run a few tiny trials each, the leak test 32).

Runs `jobs/tune.py` on a local Ray with --trials tiny trials (1 worker, 2 epochs of 300 images, a
width-4 CNN-LSTM), and reports the wall time, the machine's CPU-seconds over the run (/proc/stat:
everything on the machine, so run it on an idle one), and the CPU-seconds of every process the run
started, by what it ran (Ray's process title, e.g. `ray::RayTrainWorker`; sampled from /proc every
0.25 s, the last reading before each exits, so a process's final quarter second may be missed).
--repo runs another checkout's jobs with this venv, for a before/after in one sitting (alternated
over --reps).

    python bench/investigations/run_cost.py --trials 6 --reps 2 [--repo /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lstmclf.driver import job_env

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data.limit_train": 300,
    "data.limit_test": 100,
    "model.width": 4,
    "model.hidden": 16,
    "model.lstm_layers": 1,
    "tune.space": "{optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}",
}


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_name(pid: str) -> str:
    """What a process runs: the title it set (`ray::TrainController.run` -> `ray::TrainController`,
    `ray-dashboard-NodeHead-0`), else its program and script (`python tune.py`, `raylet`)."""
    argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    if not argv:
        return ""
    if argv[0].startswith("ray::") or (len(argv) == 1 and " " in argv[0]):  # a title, set in place of argv
        return argv[0].split()[0].split(".")[0]
    return " ".join([Path(a).name for a in argv[:3] if not a.startswith("-")][:2])


class ProcessSampler(threading.Thread):
    """CPU-seconds (utime + stime) of every process started after it, by `process_name`."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[str, int], tuple[str, float]] = {}  # (pid, start) -> (name, cpu_s)
        self.before = set(self.scan())  # what ran already is not the run's
        self.done = threading.Event()

    @staticmethod
    def scan() -> dict[tuple[str, int], int]:
        """(pid, start time) -> CPU ticks (utime + stime) of every process now."""
        out = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[(pid, int(f[19]))] = int(f[11]) + int(f[12])
            except (OSError, IndexError, ValueError):
                continue
        return out

    def run(self) -> None:
        while not self.done.wait(0.25):
            for key, ticks in self.scan().items():
                if key in self.before:
                    continue
                try:  # read every time: a Ray worker sets its title once it knows what it runs
                    name = process_name(key[0]) or self.seen.get(key, ("?",))[0]
                except OSError:  # gone meanwhile: keep the last reading
                    continue
                self.seen[key] = (name, ticks / self.hz)

    def by_name(self) -> dict[str, dict[str, float]]:
        """Stop sampling; name -> {processes, cpu_s}, the busiest first."""
        self.done.set()
        self.join()
        out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"processes": 0, "cpu_s": 0.0})
        for name, cpu in self.seen.values():
            out[name]["processes"] += 1
            out[name]["cpu_s"] = round(out[name]["cpu_s"] + cpu, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


def one_run(repo: Path, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(repo / "jobs" / "tune.py"), "--storage", "exp", "--name", "cost"]
        cmd += ["--num-samples", str(trials), "--workers", "1", "--epochs", "2"]
        cmd += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        env = job_env(env={"PYTHONPATH": str(repo)})  # a Ray of its own
        busy0, total0 = cpu_ticks()
        sampler = ProcessSampler()
        sampler.start()
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        busy1, total1 = cpu_ticks()
        processes = sampler.by_name()
        if res.returncode != 0:
            raise SystemExit(f"tune.py failed ({res.returncode}): {res.stderr[-2000:]}")
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "repo": str(repo),
        "wall_s": round(wall, 1),
        "cpu_s": round((busy1 - busy0) / hz, 1),
        "busy": round((busy1 - busy0) / (total1 - total0), 2),
        "processes": processes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--repo", type=Path, help="another checkout, run alternately with this one")
    a = p.parse_args()
    repos = [ROOT] + ([a.repo.resolve()] if a.repo else [])
    runs: dict[str, list[dict]] = {str(r): [] for r in repos}
    for rep in range(a.reps):
        for repo in repos if rep % 2 == 0 else repos[::-1]:
            run = one_run(repo, a.trials)
            print(json.dumps(run), flush=True)
            runs[str(repo)].append(run)
    summary = {
        repo: {
            "trials": a.trials,
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "cpu_s_per_trial_median": round(statistics.median(r["cpu_s"] for r in rs) / a.trials, 1),
            # per process kind, CPU-s per trial (median over the reps; a kind absent from a rep counts 0)
            "by_process": {
                name: round(statistics.median(r["processes"].get(name, {}).get("cpu_s", 0.0) for r in rs) / a.trials, 2)
                for name in dict.fromkeys(n for r in rs for n in r["processes"])
            },
        }
        for repo, rs in runs.items()
    }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
