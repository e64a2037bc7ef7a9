"""Set-up that runs in every Ray worker process of the jobs lstmclf starts or joins (their runtime_env's
`worker_process_setup_hook`). Ray imports this module in each of them, the Train controller's and Ray's
own small actors (placement-group cleaner, synchronization, queues) included, so it imports nothing
heavy: importing torch there would cost every such process about 2.5 s of CPU (docs/benchmarks.md)."""

from __future__ import annotations

import os

RUNTIME_ENV = {"worker_process_setup_hook": "lstmclf.worker_setup.pin_cluster_address"}


def pin_cluster_address() -> None:
    """Point Ray's state API in this worker process at the worker's own cluster.

    Given no address, the state API finds "the" cluster by scanning the machine for GCS processes;
    with two Ray instances on one machine (two jobs, a test cluster beside a job's) it raises. Ray
    Train's PlacementGroupCleaner asks it whether a stopped trial's controller is dead, dies of that
    error, and the trial's placement group is never freed: every later trial waits for its CPUs
    forever (docs/reliability.md)."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
