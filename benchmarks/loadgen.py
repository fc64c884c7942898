"""A small HTTP/1.1 load generator (asyncio, standard library only) run in its own process.

Two modes, both POSTing one JSON body to one URL on loopback:

* ``open`` -- fixed-rate, open loop: request ``i`` is due at ``start + i / rate`` whether or not earlier
  ones have answered, and its latency is measured from that due time, so a stalled server shows up
  in the percentiles instead of silently slowing the generator (no coordinated omission).
* ``closed`` -- ``concurrency`` connections each sending back to back, for throughput.

Open loop also reports how late the generator itself started each request (``lag_ms``: its task ran after the
due time, e.g. asyncio's millisecond timer granularity or the machine's other work); that delay is part of the
latencies, so it shows how much of a small latency is the generator's rather than the server's.

Connections are kept alive when the server allows it and reopened when it answers
``Connection: close``. Every run is bounded by a request count and a wall-clock limit and stops by
itself. It runs as a separate process (``python loadgen.py --spec JSON``) so that its CPU use and GIL
never share a process with the benchmark driver; it prints one JSON object with the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_CONNECTIONS = 256
HEADER_END = b"\r\n\r\n"


@dataclass
class Spec:
    """What to send, how, and for how long at most."""

    url: str
    body_file: str
    mode: str = "open"
    rate: float = 100.0
    requests: int = 1000
    concurrency: int = 4
    time_limit: float = 120.0
    timeout: float = 10.0
    #: A uuid in the body replaced by a fresh one on every request (a CDS Hooks ``hookInstance``: an EHR sends a new
    #: one per call, so the service's retry lookup finds nothing and every call stores its own assertion).
    fresh_uuid: str | None = None


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    #: Open loop: how late the generator itself started each request (its task ran after the due time).
    lags_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, body) or raises."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.open = reader, writer, True

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(HEADER_END)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0"):
            self.close()
        return status, body

    def close(self) -> None:
        if self.open:
            self.open = False
            self.writer.close()


class Client:
    """A pool of idle connections to one host."""

    def __init__(self, spec: Spec, body: bytes, tally: Tally) -> None:
        parts = urlsplit(spec.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode() + body
        self.fresh = spec.fresh_uuid.encode() if spec.fresh_uuid else None
        if self.fresh is not None and self.request.count(self.fresh) != 1:
            raise ValueError("fresh_uuid must occur exactly once in the body")
        self.idle: list[Connection] = []
        self.tally, self.timeout = tally, spec.timeout

    async def _connection(self) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if connection.open and not connection.reader.at_eof():
                return connection
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.tally.connections_opened += 1
        return Connection(reader, writer)

    def _next_request(self) -> bytes:
        """The request bytes, with a new uuid of the same length where ``fresh_uuid`` stood."""
        if self.fresh is None:
            return self.request
        return self.request.replace(self.fresh, str(uuid.uuid4()).encode(), 1)

    async def once(self, due: float) -> None:
        """Send one request; latency counts from ``due`` (the scheduled send time)."""
        self.tally.lags_ms.append((time.perf_counter() - due) * 1000)
        connection: Connection | None = None
        try:
            connection = await self._connection()
            status, _ = await asyncio.wait_for(connection.post(self._next_request()), self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.tally.error(type(exc).__name__)
            if connection is not None:
                connection.close()
            return
        except TimeoutError:
            self.tally.error("timeout")
            if connection is not None:
                connection.close()
            return
        self.tally.latencies_ms.append((time.perf_counter() - due) * 1000)
        self.tally.statuses[str(status)] = self.tally.statuses.get(str(status), 0) + 1
        if connection.open and len(self.idle) < MAX_CONNECTIONS:
            self.idle.append(connection)


async def open_loop(spec: Spec, client: Client) -> float:
    """Fire request i at start + i/rate, never waiting for answers; returns the elapsed seconds.

    The schedule is kept by a thread sleeping with the clock's own precision (``time.sleep``), which hands each due
    request to the event loop: ``asyncio.sleep`` would wake on the selector's millisecond timeout, up to a
    millisecond late, and that lateness would count in every latency (a third of the floor route's p50).
    """
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.05
    limit = start + spec.time_limit
    tasks: set[asyncio.Task[None]] = set()
    scheduled = asyncio.Event()

    def fire(due: float) -> None:
        task = loop.create_task(client.once(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def schedule() -> None:
        try:
            for i in range(spec.requests):
                due = start + i / spec.rate
                if due > limit:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                loop.call_soon_threadsafe(fire, due)
        finally:
            loop.call_soon_threadsafe(scheduled.set)

    sys.setswitchinterval(0.0005)  # the scheduler thread gets the GIL back quickly from the event loop
    threading.Thread(target=schedule, name="schedule", daemon=True).start()
    await scheduled.wait()  # set after the last fire(): the loop runs thread-safe callbacks in order
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.0, limit - time.perf_counter()) + spec.timeout)
    return time.perf_counter() - start


async def closed_loop(spec: Spec, client: Client) -> float:
    """``concurrency`` senders back to back until ``requests`` are done or the time limit passes."""
    start = time.perf_counter()
    limit = start + spec.time_limit
    remaining = spec.requests

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < limit:
            remaining -= 1
            await client.once(time.perf_counter())

    await asyncio.gather(*(sender() for _ in range(spec.concurrency)))
    return time.perf_counter() - start


async def run(spec: Spec, body: bytes) -> dict[str, Any]:
    tally = Tally()
    client = Client(spec, body, tally)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = await (open_loop(spec, client) if spec.mode == "open" else closed_loop(spec, client))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for connection in client.idle:
        connection.close()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "mode": spec.mode,
        "elapsed_s": elapsed,
        "sent": len(tally.latencies_ms) + sum(tally.errors.values()),
        "latencies_ms": tally.latencies_ms,
        "lag_ms": _percentiles(tally.lags_ms) if spec.mode == "open" else None,
        "statuses": tally.statuses,
        "errors": tally.errors,
        "connections_opened": tally.connections_opened,
        "client_cpu_s": cpu,
    }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    """p50 / p99 / max of ``values`` (nearest rank, as ``inprocess.percentile``), or None for none."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5))) - 1]

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON object with the Spec fields")
    spec = Spec(**json.loads(parser.parse_args(argv).spec))
    if urlsplit(spec.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("loadgen: only loopback targets are allowed", file=sys.stderr)
        return 2
    with open(spec.body_file, "rb") as handle:
        body = handle.read()
    json.dump(asyncio.run(run(spec, body)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
