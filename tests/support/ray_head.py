"""A real Ray head for tests: `ray start --head --block` from the test's own venv, with Ray's token
authentication on, every port free and a temp dir of its own, stopped by the pids it started.

Beside other Ray instances on the machine every port must be given (with the default dashboard
agent port taken, every `ray job submit` fails with "No available agent"), and `ray stop` is out of
the question: it stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from support.s3 import free_ports

VENV_BIN = Path(sys.executable).parent  # `ray`, and the `python` a job's entrypoint runs, come from here
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
)
# Variables that would point a client or the head at another cluster or another token.
RAY_CLIENT_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_cli() -> str:
    return str(VENV_BIN / "ray")


class RayHead:
    """One head node with `RAY_AUTH_MODE=token` and a fresh random token; use as a context manager."""

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
        self.num_cpus = num_cpus
        self.extra_env = env or {}
        self.token = secrets.token_hex(32)
        *ports, metrics_port = free_ports(len(PORT_FLAGS) + 1)
        self.ports = dict(zip(PORT_FLAGS, ports, strict=True))
        self.head_env = {
            "DASHBOARD_METRIC_PORT": str(metrics_port),  # the dashboard's own, set only through the environment
            # `ray start` gives the dashboard 60 s to come up and the dashboard each of its modules 30 s:
            # on a busy 2-core machine that is not always enough.
            "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "240",
            "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "180",
        }
        # Short: Ray's unix sockets live under it, and their paths may not exceed 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lstmclf-ray-"))
        self.proc: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    def client_env(self, token: str | None = None, auth_mode: bool = True) -> dict[str, str]:
        """The environment of a shell that talks to this head: `RAY_AUTH_MODE=token` (unless not
        `auth_mode`) and `token` (this head's own when None) as `RAY_AUTH_TOKEN`; with `token=""`
        no token at all, HOME pointing at an empty directory so no ~/.ray/auth_token is found."""
        env = {k: v for k, v in os.environ.items() if k not in RAY_CLIENT_VARS}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        if auth_mode:
            env["RAY_AUTH_MODE"] = "token"
        if token is None:
            env["RAY_AUTH_TOKEN"] = self.token
        elif token:
            env["RAY_AUTH_TOKEN"] = token
        else:
            home = self.temp_dir / "empty-home"
            home.mkdir(exist_ok=True)
            env["HOME"] = str(home)
        return env

    def start(self, timeout: float = 300) -> RayHead:
        cmd = [
            ray_cli(),
            "start",
            "--head",
            "--block",  # keeps the processes it starts its children, so they can be found and stopped
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            # 0: workers bind ports the OS picks, not the shared 10002-19999 range other instances use
            "--min-worker-port=0",
            "--max-worker-port=0",
            *(f"{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {**self.client_env(), **self.head_env, **self.extra_env}  # the venv first on PATH, as jobs need
        with open(self.temp_dir / "ray-start.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._jobs_api_ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (self.temp_dir / "ray-start.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the Ray head did not come up:\n{log_tail}")
            time.sleep(1)
        return self

    def _jobs_api_ready(self) -> bool:
        """The job API answers an authenticated request, and the head's dashboard agent (which runs
        the jobs) has registered."""
        req = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?detail=1", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                nodes = json.loads(resp.read())["data"]["result"]["result"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return False
        return any(n.get("state") == "ALIVE" and n.get("is_head_node") for n in nodes)

    def pids(self) -> set[int]:
        """Every live process this head started: the `ray start` process and its descendants, and
        any process naming this head's temp dir (a worker re-parented after its parent died)."""
        if self.proc is None:
            return set()
        children: dict[int, list[int]] = {}
        mine: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
            if str(self.temp_dir).encode() in cmdline:
                mine.add(int(entry.name))
        todo = [self.proc.pid, *mine]
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo.extend(c for c in children.get(pid, []) if c not in mine)
        return mine

    def stop(self, grace: float = 5) -> None:
        """SIGTERM what it started (by pid), SIGKILL what is left after `grace` seconds (raylet and
        GCS take longer to exit on SIGTERM than a test needs to wait); then remove its temp dir."""
        pids = self.pids()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                if self.proc is not None:
                    self.proc.poll()  # reap our own child
                pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
                time.sleep(0.2)
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
