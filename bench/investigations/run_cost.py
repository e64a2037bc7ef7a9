"""What one Tune trial costs on this machine when its training is next to nothing: the test suite's
floor (most of its slow tests run a few tiny trials each, the leak test 32).

Runs `jobs/tune.py` on a local Ray with --trials tiny trials (1 worker, 2 epochs of 300 images, a
width-4 CNN-LSTM), and reports the wall time, the machine's CPU-seconds over the run (/proc/stat:
everything on the machine, so run it on an idle one), and the Ray worker processes the run started,
by the actor each became (from the session's core-worker logs). --repo runs another checkout's jobs
with this venv, for a before/after in one sitting (alternated over --reps).

    python bench/investigations/run_cost.py --trials 6 --reps 2 [--repo /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


def actors_started(session_logs: Path) -> dict[str, int]:
    """Worker processes of the session by the actor each ran ('task/idle' for the rest): Ray marks a
    worker's stdout file with `:actor_name:<class>` when an actor takes it."""
    counts: collections.Counter[str] = collections.Counter()
    for out in session_logs.glob("worker-*.out"):
        m = re.search(r":actor_name:(\S+)", out.read_text(errors="replace")[:4096])
        counts[m.group(1) if m else "task/idle"] += 1
    return dict(counts)


def one_run(repo: Path, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(repo / "jobs" / "tune.py"), "--storage", "exp", "--name", "cost"]
        cmd += ["--num-samples", str(trials), "--workers", "1", "--epochs", "2"]
        cmd += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        env = job_env(env={"PYTHONPATH": str(repo)})  # a Ray of its own
        busy0, total0 = cpu_ticks()
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        busy1, total1 = cpu_ticks()
        if res.returncode != 0:
            raise SystemExit(f"tune.py failed ({res.returncode}): {res.stderr[-2000:]}")
        logs = re.search(r"Ray's own messages: (\S+)", res.stdout)
        started = actors_started(Path(logs.group(1))) if logs else {}
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "repo": str(repo),
        "wall_s": round(wall, 1),
        "cpu_s": round((busy1 - busy0) / hz, 1),
        "busy": round((busy1 - busy0) / (total1 - total0), 2),
        "processes": started,
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
        }
        for repo, rs in runs.items()
    }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
