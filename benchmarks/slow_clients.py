"""Slow clients against ``priorauth-cds serve``: idle and header-trickling connections beside normal traffic.

    .venv/bin/python benchmarks/slow_clients.py                   # 100 idle + 50 trickling, 40 s, a fresh server
    .venv/bin/python benchmarks/slow_clients.py --url http://127.0.0.1:8080 --seconds 10

From one host (loopback), for ``seconds``: ``idle`` TCP connections that send nothing, and ``trickle``
connections that send a request head one byte every ``trickle_interval`` seconds and never finish it; a
connection the server closes is reopened at once, so the counts hold for the whole run. Meanwhile one
client posts the hook request every ``1 / rate`` seconds on a fresh connection (the worst case: it goes
through accept like the slow ones) and records each answer's status and latency. The server should answer
every normal request (p99 <= 1 s) and cut each trickler after its header timeout. Also used by
``tests/test_slow_clients.py`` with smaller numbers. Loopback only; everything stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOOK_PATH = "/cds-services/everolimus-order-sign"
SAMPLE = ROOT / "sample_bundles" / "I.A-brand-without-exemestane.json"
#: Slow and attacking connections come from here, normal calls from 127.0.0.1: the server caps connections per
#: client address (CDS_MAX_CONNECTIONS_PER_CLIENT), and the normal client is another client.
SLOW_ADDRESS = "127.0.0.2"


@dataclass
class SlowResult:
    """What the normal client saw, and what happened to the slow connections."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    #: Seconds from a trickler's connect to the server closing it (each cut trickler once).
    trickle_cut_after_s: list[float] = field(default_factory=list)
    idle_closed: int = 0
    slow_open_min: int = 0
    seconds: float = 0.0

    def percentile(self, pct: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get("200", 0)
        return {
            "seconds": round(self.seconds, 1),
            "normal_requests": len(self.latencies_ms) + sum(self.errors.values()),
            "ok": ok,
            "non_200": {k: v for k, v in self.statuses.items() if k != "200"},
            "errors": self.errors,
            "p50_ms": _round(self.percentile(50)),
            "p99_ms": _round(self.percentile(99)),
            "max_ms": _round(max(self.latencies_ms) if self.latencies_ms else None),
            "trickle_cuts": len(self.trickle_cut_after_s),
            "trickle_cut_max_s": _round(max(self.trickle_cut_after_s) if self.trickle_cut_after_s else None),
            "idle_closed_by_server": self.idle_closed,
            "slow_connections_open_min": self.slow_open_min,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Slow:
    """The idle and trickling connections, driven by one thread with a selector."""

    def __init__(self, host: str, port: int, idle: int, trickle: int, interval: float, result: SlowResult) -> None:
        self.host, self.port, self.interval, self.result = host, port, interval, result
        self.wanted = {"idle": idle, "trickle": trickle}
        self.selector = selectors.DefaultSelector()
        self.conns: dict[socket.socket, dict[str, Any]] = {}
        self.head = f"POST {HOOK_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode() + b"a" * 100_000

    def _open(self, kind: str) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5, source_address=(SLOW_ADDRESS, 0))
        except OSError:
            return
        sock.setblocking(False)
        self.conns[sock] = {"kind": kind, "opened": time.monotonic(), "sent": 0}
        self.selector.register(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket, by_server: bool) -> None:
        state = self.conns.pop(sock)
        self.selector.unregister(sock)
        sock.close()
        if by_server:
            if state["kind"] == "trickle":
                self.result.trickle_cut_after_s.append(time.monotonic() - state["opened"])
            else:
                self.result.idle_closed += 1

    def run(self, stop: threading.Event) -> None:
        for kind, count in self.wanted.items():
            for _ in range(count):
                self._open(kind)
        self.result.slow_open_min = len(self.conns)
        next_byte = time.monotonic()
        while not stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed (possibly after a 408): reopen to keep the count
                    self._close(sock, by_server=True)  # type: ignore[arg-type]
            if time.monotonic() >= next_byte:
                next_byte += self.interval
                for sock, state in list(self.conns.items()):
                    if state["kind"] == "trickle" and state["sent"] < len(self.head):
                        try:
                            sock.send(self.head[state["sent"]: state["sent"] + 1])
                            state["sent"] += 1
                        except OSError:
                            self._close(sock, by_server=True)
            for kind, count in self.wanted.items():
                have = sum(1 for s in self.conns.values() if s["kind"] == kind)
                for _ in range(count - have):
                    self._open(kind)
            self.result.slow_open_min = min(self.result.slow_open_min, len(self.conns))
        for sock in list(self.conns):
            self._close(sock, by_server=False)
        self.selector.close()


def _normal(host: str, port: int, body: bytes, rate: float, stop: threading.Event, result: SlowResult) -> None:
    """One request every 1/rate s on a fresh connection; latency from the scheduled time."""
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        due = start + i / rate
        i += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("POST", HOOK_PATH, body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
            continue
        result.latencies_ms.append((time.monotonic() - due) * 1000)
        result.statuses[str(answer.status)] = result.statuses.get(str(answer.status), 0) + 1


def run_slow_clients(
    url: str,
    *,
    idle: int = 100,
    trickle: int = 50,
    seconds: float = 40.0,
    rate: float = 10.0,
    trickle_interval: float = 0.5,
    body: bytes | None = None,
) -> SlowResult:
    """Open the slow connections, then send normal requests for ``seconds``; bounded, loopback only."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("slow-client runs are loopback only")
    body = body if body is not None else SAMPLE.read_bytes()
    result = SlowResult()
    stop = threading.Event()
    slow = _Slow(host, port, idle, trickle, trickle_interval, result)
    slow_thread = threading.Thread(target=slow.run, args=(stop,), name="slow-clients", daemon=True)
    slow_thread.start()
    time.sleep(0.5)  # the slow connections are in before the first normal request
    started = time.monotonic()
    normal = threading.Thread(target=_normal, args=(host, port, body, rate, stop, result), daemon=True)
    normal.start()
    stop.wait(seconds)
    stop.set()
    normal.join(timeout=15)
    slow_thread.join(timeout=15)
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start priorauth-cds serve on a free port)")
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--trickle", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=10.0, help="normal requests per second")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(HERE))
        from http_bench import start_server

        server = start_server()
        url = server.url
    try:
        result = run_slow_clients(url, idle=args.idle, trickle=args.trickle, seconds=args.seconds, rate=args.rate)
    finally:
        if server is not None:
            server.stop()
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    ok = not summary["non_200"] and not summary["errors"] and (summary["p99_ms"] or 1e9) <= 1000
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- bench.py section: worker models


def compare_workers(duration: float, slow_seconds: float, idle: int = 100, trickle: int = 50) -> dict[str, Any]:
    """For the buffered gthread worker (the default) and the old sync worker: closed-loop throughput,
    open-loop latency at 50 req/s, and the slow-client run; one fresh server each, same body."""
    sys.path.insert(0, str(HERE))
    import tempfile

    import inprocess
    from http_bench import HOOK_PATH as PATH
    from http_bench import run_load, start_server

    body_file = Path(tempfile.mkdtemp(prefix="priorauth-bench-slow-")) / "sample.json"
    body_file.write_bytes(SAMPLE.read_bytes())
    out: dict[str, Any] = {"duration_s": duration, "slow_seconds": slow_seconds, "idle": idle, "trickle": trickle}
    for model in ("sync", "buffered"):
        server = start_server({"CDS_WORKER_CLASS": model})
        try:
            url = server.url + PATH
            run_load(url, body_file, mode="closed", concurrency=2, requests=200, time_limit=30)  # warm-up
            closed = run_load(url, body_file, mode="closed", concurrency=8, requests=100_000, time_limit=duration)
            opened = run_load(url, body_file, mode="open", rate=50, requests=int(50 * duration),
                              time_limit=duration + 5)
            row: dict[str, Any] = {}
            for name, res in (("closed8", closed), ("open50", opened)):
                lat = res["latencies_ms"]
                row[name] = {
                    "ok": res["statuses"].get("200", 0),
                    "sent": res["sent"],
                    "rate": res["statuses"].get("200", 0) / res["elapsed_s"],
                    "p50": inprocess.percentile(lat, 50) if lat else None,
                    "p99": inprocess.percentile(lat, 99) if lat else None,
                    "errors": res["errors"],
                }
            row["slow"] = run_slow_clients(server.url, idle=idle, trickle=trickle, seconds=slow_seconds).summary()
            out[model] = row
        finally:
            server.stop()
    return out


def compare_section(data: dict[str, Any]) -> list[str]:
    """Markdown lines for bench.py's results."""
    import report

    rows = []
    for model in ("sync", "buffered"):
        row = data[model]
        slow = row["slow"]
        rows.append([
            "sync (before)" if model == "sync" else "buffered gthread (now)",
            f"{row['closed8']['rate']:.0f} req/s, p99 {report.fmt(row['closed8']['p99'])}",
            f"p50 {report.fmt(row['open50']['p50'])}, p99 {report.fmt(row['open50']['p99'])}",
            f"{slow['ok']} / {slow['normal_requests']}",
            report.fmt(slow["p99_ms"]),
            str(slow["trickle_cuts"]),
        ])
    return [
        f"The typical sample request (`{SAMPLE.name}`, prefetch included), 2 workers; a fresh server per model. "
        f"Closed loop with 8 connections and open loop at 50 req/s for {data['duration_s']:.0f} s each; then "
        f"{data['idle']} idle plus {data['trickle']} header-trickling connections for {data['slow_seconds']:.0f} s "
        "while one client posts 10 requests a second on fresh connections (`benchmarks/slow_clients.py`). A "
        "normal request that gets no answer within 10 s counts as failed.",
        "",
        *report.table(["worker model", "throughput (closed, 8 conn.)", "latency (open, 50 req/s)",
                       "normal requests answered with slow clients", "their p99", "tricklers cut"], rows),
    ]
