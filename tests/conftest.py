import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (dashboard on: Train needs its state API).

    4 logical CPUs on 2 cores: enough for 2-worker DDP runs and for Tune to hold more than one trial.
    Yields the GCS address, so jobs started as subprocesses join the same cluster.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_job(script: str, *args: str, ray_address: str | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a jobs/ script the way a user does; joins the test cluster when given its address."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd or ROOT)
