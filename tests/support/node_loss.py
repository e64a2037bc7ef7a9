"""A 2-worker DDP run on a Ray cluster of three nodes on this machine (`ray.cluster_utils.Cluster`: a
head without CPUs, two worker nodes of one CPU each) that loses a worker node mid-run and gets a
fresh one. Run as a script by tests/test_faults.py (a pytest process already holds the session's
Ray); prints one JSON line: what the run reported and wrote, and when the node went.

    python tests/support/node_loss.py STORAGE_DIR 'CONFIG_OVERRIDES_AS_JSON'
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.helpers

from lstmclf.config import Config
from lstmclf.records import read_metrics
from lstmclf.training import fit
from support.helpers import registered_checkpoints


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main(storage: str, overrides: dict) -> dict:
    cfg = Config().override(overrides | {"storage.path": storage, "storage.name": "node-loss"})
    run = Path(storage) / "node-loss"
    # Beside the test session's Ray every port of the head is taken from the OS, not Ray's defaults.
    gcs, dashboard, agent, metrics, runtime_env, client, dash_metrics = free_ports(7)
    os.environ["DASHBOARD_METRIC_PORT"] = str(dash_metrics)  # the dashboard's own, set only this way
    head = {
        "num_cpus": 0,
        "include_dashboard": True,
        "gcs_server_port": gcs,
        "dashboard_port": dashboard,
        "dashboard_agent_listen_port": agent,
        "metrics_export_port": metrics,
        "runtime_env_agent_port": runtime_env,
        "ray_client_server_port": client,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        # The uninterrupted run to compare with, on the same cluster: ranks on other nodes than in a
        # single-node cluster may sum DDP's gradients in another order.
        reference = fit(cfg.override({"storage.name": "reference"}), progress=False)
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(out=fit(cfg, progress=False)), daemon=True)
        thread.start()
        while not (run / "metrics" / "trial_id=node-loss" / "epoch=1.parquet").exists():  # epoch 1 registered
            if not thread.is_alive():
                raise RuntimeError("the run ended before its first checkpoint")
            time.sleep(0.05)
        before = registered_checkpoints(run)
        alive = list_actors(
            address=cluster.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        )
        hosts = {a.node_id for a in alive}
        victim = next(n for n in workers if n.node_id in hosts)
        cluster.remove_node(victim, allow_graceful=False)  # its raylet and every process on it, SIGKILLed
        lost_at = time.time()
        cluster.add_node(num_cpus=1)  # the autoscaler's replacement
        thread.join(timeout=600)
        out = outcome["out"]
        table = read_metrics(str(run / "metrics")).to_pylist()
        return {
            "checkpoints_before_loss": before,
            "checkpoints_after": {p.parent.name: p.stat().st_mtime_ns for p in run.glob("epoch_*/checkpoint.pt")},
            "lost_at": lost_at,
            "reported": [(r["epoch"], r["reported_at"].timestamp()) for r in table],
            "epochs_run": out.epochs_run,
            "final": json.loads((run / f"epoch_{out.epochs_run:04d}" / "metrics.json").read_text()),
            "test_acc": out.test_metrics["acc"],
            "reference": json.loads(
                (Path(storage) / "reference" / f"epoch_{reference.epochs_run:04d}" / "metrics.json").read_text()
            ),
            "reference_test_acc": reference.test_metrics["acc"],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
