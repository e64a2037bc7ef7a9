"""Does a trial process abort when ASHA stops it, and does that lose anything?

Runs the README's main job (`jobs/tune.py`, each run with a local Ray of its own) several times and
scans each run's Ray log directory for native aborts (glibc heap checks such as
`malloc_consolidate(): unaligned fastbin chunk detected`, `Fatal Python error: Aborted`), naming
the actor each aborting process was and the trial it served. Then it checks that nothing was lost:
every trial in results.parquet without an error, every listed checkpoint whole (its manifest
verified and its weights loaded), every reported epoch in the metrics table.

    python bench/investigations/trial_abort.py --runs 3                 # the README command, 3 times
    python bench/investigations/trial_abort.py --runs 5 -- --smoke --num-samples 6

Prints one line per run and a JSON summary (also written with --out).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABORT = re.compile(r"malloc_consolidate|malloc\(\)|free\(\)|Fatal Python error|SIGABRT|Aborted \(core dumped\)")


def scan_logs(logs: Path) -> list[dict]:
    """Every log file with an abort in it: the file, the actor it belonged to, the first lines."""
    found = []
    for f in sorted(logs.glob("*")):
        if not f.is_file() or f.suffix not in (".err", ".out", ".log"):
            continue
        text = f.read_text(errors="replace")
        hits = [line for line in text.splitlines() if ABORT.search(line)]
        if hits:
            actors = sorted(set(re.findall(r":actor_name:(\w+)", text)))
            tasks = sorted(set(re.findall(r":task_name:(\S+)", text)))
            trials = sorted(set(re.findall(r"trial_[0-9a-f]{5}_\d{5}", text)))
            found.append({"file": f.name, "actors": actors, "tasks": tasks[:3], "trials": trials, "lines": hits[:3]})
    return found


def check_experiment(exp: Path) -> dict:
    """What the experiment kept: trials and their statuses, whether every best checkpoint loads,
    and whether the metrics table holds every epoch that a trial ran."""
    import pyarrow.parquet as pq

    from lstmclf.checkpoint import load_checkpoint
    from lstmclf.records import read_metrics

    rows = pq.read_table(exp / "results.parquet").to_pylist()
    broken = []
    for r in rows:
        try:
            load_checkpoint(r["checkpoint"])
        except Exception as e:
            broken.append(f"{r['trial_id']}: {e}")
    table = read_metrics(str(exp / "metrics")).to_pylist()
    recorded = {}
    for m in table:
        recorded[m["trial_id"]] = max(recorded.get(m["trial_id"], 0), m["epoch"])
    missing = [r["trial_id"] for r in rows if recorded.get(r["trial_id"], 0) < r["epochs_run"]]
    return {
        "trials": len(rows),
        "statuses": sorted(r["status"] for r in rows),
        "checkpoints_broken": broken,
        "epochs_missing_from_metrics": missing,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", help="write the JSON summary here")
    p.add_argument("job_args", nargs="*", help="extra arguments for jobs/tune.py (after --)")
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            t0 = time.time()
            cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--storage", f"{tmp}/runs", *a.job_args]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            logs = re.search(r"Ray's own messages: (\S+)", res.stdout)
            exp = re.search(r"^experiment (\S+): ", res.stdout, re.M)
            run = {
                "run": i + 1,
                "returncode": res.returncode,
                "wall_s": round(time.time() - t0),
                "aborts": scan_logs(Path(logs[1])) if logs else "no log directory printed",
                "experiment": check_experiment(Path(exp[1])) if exp else res.stderr[-2000:],
            }
            results.append(run)
            n = len(run["aborts"]) if isinstance(run["aborts"], list) else run["aborts"]
            print(f"run {i + 1}: rc {res.returncode}, {run['wall_s']} s, {n} processes aborted, {run['experiment']}")
    summary = json.dumps(results, indent=2)
    print(summary)
    if a.out:
        Path(a.out).write_text(summary)


if __name__ == "__main__":
    main()
