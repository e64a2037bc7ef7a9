"""`ray job submit` to a real Ray head with token authentication on: the README's command, refused
without the token and run to the end with it, the experiment complete in storage."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.ray_head import RayHead, ray_cli

from lstmclf.config import Config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
README_ADDRESS = "http://127.0.0.1:8265"
README_STORAGE = "/tmp/experiments"


def readme_submit_command() -> str:
    """The `ray job submit` line of the README's "Run on a Ray cluster" example on one machine."""
    section = (ROOT / "README.md").read_text().split("## Run on a Ray cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.startswith("ray job submit ")]
    return line


@pytest.fixture(scope="module")
def head():
    with RayHead(num_cpus=2) as h:
        yield h


def submit(head: RayHead, storage: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The README's line, aimed at this head and at `storage`, run from the repository root."""
    line = readme_submit_command()
    assert README_ADDRESS in line and README_STORAGE in line, line
    argv = shlex.split(line.replace(README_ADDRESS, head.dashboard_url).replace(README_STORAGE, str(storage)))
    return subprocess.run([ray_cli(), *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def submitted_jobs(head: RayHead) -> list[dict]:
    req = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_job_submit_needs_the_token_and_then_runs_the_experiment_to_the_end(head, tmp_path):
    storage = tmp_path / "experiments"
    refused = {
        "a plain shell": (head.client_env(token="", auth_mode=False), "Missing authentication token"),
        # The token alone is not sent: the submitting shell needs RAY_AUTH_MODE=token too.
        "the token without RAY_AUTH_MODE": (head.client_env(auth_mode=False), "Missing authentication token"),
        "RAY_AUTH_MODE without a token": (head.client_env(token=""), "couldn't find an authentication token"),
        "another token": (head.client_env(token="0" * 64), "Invalid authentication token"),
    }
    for case, (env, message) in refused.items():
        res = submit(head, storage, env)
        assert res.returncode != 0 and message in res.stderr, f"{case}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    assert submitted_jobs(head) == [] and not storage.exists()

    res = submit(head, storage, head.client_env())
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout and "best checkpoint:" in res.stdout
    (job,) = submitted_jobs(head)
    assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("python jobs/tune.py --smoke")

    # The experiment is complete at the absolute path, not in the job's copy of the working directory.
    (experiment,) = storage.iterdir()
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["experiment"] == str(experiment) and summary["trials"] == 2  # jobs/tune.py's SMOKE
    with open(experiment / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    best = Path(summary["best_checkpoint"])
    assert best.is_relative_to(experiment) and {"checkpoint.pt", "manifest.json"} <= {p.name for p in best.iterdir()}
    Config.from_dict(yaml.safe_load((experiment / "best_recipe.yaml").read_text()))


def test_a_submitted_job_refuses_a_relative_storage_path(head, tmp_path):
    """Under `ray job submit` the job runs in a temporary copy of the working directory: a relative
    --storage would be lost with it, so the job stops at once with one line saying what to give."""
    line = readme_submit_command().replace(README_ADDRESS, head.dashboard_url).replace(README_STORAGE, "runs")
    res = subprocess.run(
        [ray_cli(), *shlex.split(line)[1:]],
        cwd=ROOT,
        env=head.client_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode != 0
    errors = {ln for ln in res.stdout.splitlines() if ln.startswith("error: ")}  # Ray shows the job's log twice
    assert errors == {
        "error: storage.path 'runs' is a relative path: under `ray job submit` it would be written into the job's "
        "temporary copy of the working directory and lost; give an absolute path that every node sees, or s3://…"
    }, res.stdout[-3000:]
    assert "Traceback" not in res.stdout and "joined the Ray cluster" not in res.stdout  # before Ray is touched
