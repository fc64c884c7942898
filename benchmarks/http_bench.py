"""The HTTP part of the benchmark: ``priorauth-cds serve`` on a free loopback port, driven by ``loadgen.py``.

The server runs exactly as in production (gunicorn via the CLI, default worker settings, JSON logs
on), with ``CDS_BENCHMARK_FLOOR=1`` so that ``/benchmark/floor`` -- parse the same body, answer a
fixed card -- can be measured on the same server beside the real hook, and a temporary SQLite file
on disk for the audit writes (committed with the store's own settings, as in production).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOOK_PATH = "/cds-services/everolimus-order-sign"
FLOOR_PATH = "/benchmark/floor"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``priorauth-cds serve``; ``stop()`` ends it and removes its temporary directory."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> Server:
    """Start the service under gunicorn with the benchmark floor on; wait for /healthz and every worker."""
    from cds_service.config import Config

    workers = Config.from_env().workers
    workdir = Path(tempfile.mkdtemp(prefix="priorauth-bench-"))
    port = free_port()
    env = dict(
        os.environ,
        CDS_BENCHMARK_FLOOR="1",
        # One client address sends everything here: the per-caller rate limit would answer 429s, not the service.
        CDS_RATE_LIMIT_PER_MINUTE="0",
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        CDS_HOST="127.0.0.1",
        CDS_PORT=str(port),
        **(extra_env or {}),
    )
    command = [sys.executable, "-m", "cds_service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(f"http://127.0.0.1:{port}", process, workdir, extra_env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_tail = (workdir / "server.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_tail}")
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=1) as answer:
                if answer.status == 200 and len(server.worker_pids()) >= workers:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("server did not become healthy")


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """One request (to check answers before loading the server)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read()


def run_load(url: str, body_file: Path, **spec: Any) -> dict[str, Any]:
    """Run ``loadgen.py`` in its own process and return its JSON result."""
    spec_json = json.dumps({"url": url, "body_file": str(body_file), **spec})
    done = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), "--spec", spec_json],
        capture_output=True,
        check=True,
        timeout=float(spec.get("time_limit", 120.0)) + 60,
    )
    return dict(json.loads(done.stdout))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (all their threads), from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
