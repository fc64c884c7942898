"""Unauthenticated stall attacks on ``priorauth-cds serve`` (issue 15 items 1, 2, 11), each beside normal calls.

    .venv/bin/python benchmarks/attacks.py                        # every attack against a fresh server, 10 s each
    .venv/bin/python benchmarks/attacks.py --url http://127.0.0.1:8080 --seconds 5 --only stalled-5mb

Each attack keeps ``connections`` sockets open from 127.0.0.2 (a connection the server closes is reopened, each
slot at most once a second), sending an opening and then a trickle of bytes; meanwhile a normal client posts the
typical order-sign request from 127.0.0.1 five times a second on fresh connections and records each answer's
status and latency. A server that holds answers every normal call (p99 well under a second). Loopback only;
everything stops by itself. ``tests/test_attacks.py`` runs the same attacks with the same numbers, shorter.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE))
from slow_clients import HOOK_PATH, SAMPLE, SLOW_ADDRESS, SlowResult, _normal

FIVE_MB = 5 * 1024 * 1024


@dataclass(frozen=True)
class Attack:
    """``connections`` sockets that send ``opening`` once, then ``trickle`` every ``interval`` seconds."""

    name: str
    connections: int
    opening: bytes
    trickle: bytes = b""
    interval: float = 1.0
    #: Leave the socket open when the server closes it (a client that never closes its side).
    hold: bool = False


def _head(extra: str) -> bytes:
    return (f"POST {HOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


#: Issue 15: 13 sockets announcing 5 MB they never send (the buffer), over-limit lengths and chunked bodies (the
#: pool threads, drained after any answer), lengths the loop and gunicorn parsed differently (the gate), idlers;
#: and clients that never close after a 400 (gunicorn's graceful close lingered on them in the event loop).
ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("stalled-5mb", 13, _head(f"Content-Length: {FIVE_MB}\r\n")),
        Attack("oversized", 16, _head("Content-Length: 60000000\r\n") + b"{"),
        Attack("chunked-trickle", 16, _head("Transfer-Encoding: chunked\r\n"), b"1\r\n \r\n"),
        Attack("leading-zeros", 4, _head("Content-Length: 0000000000000100\r\n"), b" "),
        Attack("14-digit-length", 4, _head("Content-Length: 10000000000000\r\n"), b" "),
        Attack("idle-2500", 2500, b""),
        Attack("bad-request-linger", 8, b"GARBAGE\r\n\r\n", hold=True),
    )
}


@dataclass
class _Slot:
    sock: socket.socket | None = None
    opened: float = 0.0
    closed_at: float = 0.0


@dataclass
class AttackResult:
    """The normal client's view, and how often the server closed an attacking socket."""

    normal: SlowResult = field(default_factory=SlowResult)
    closed_by_server: int = 0
    open_min: int = 0
    first_answers: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            **self.normal.summary(),
            "attack_closed_by_server": self.closed_by_server,
            "attack_open_min": self.open_min,
            "attack_answers": self.first_answers,
        }


class _Attacker:
    """Every attacking socket, driven by one thread with a selector."""

    def __init__(self, host: str, port: int, attack: Attack, result: AttackResult) -> None:
        self.host, self.port, self.attack, self.result = host, port, attack, result
        self.selector = selectors.DefaultSelector()
        self.slots = [_Slot() for _ in range(attack.connections)]
        self.held: list[socket.socket] = []

    def _open(self, slot: _Slot) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2, source_address=(SLOW_ADDRESS, 0))
            sock.setblocking(False)
            if self.attack.opening:
                sock.send(self.attack.opening)
        except OSError:
            slot.closed_at = time.monotonic()
            return
        slot.sock, slot.opened = sock, time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, slot)

    def _close(self, slot: _Slot, by_server: bool = False) -> None:
        if slot.sock is not None:
            self.selector.unregister(slot.sock)
            if by_server and self.attack.hold:
                self.held.append(slot.sock)  # never closed from this side until the run ends
            else:
                slot.sock.close()
        slot.sock, slot.closed_at = None, time.monotonic()

    def run(self, stop: threading.Event) -> None:
        for slot in self.slots:
            self._open(slot)
        self.result.open_min = sum(1 for s in self.slots if s.sock)
        next_trickle = time.monotonic() + self.attack.interval
        while not stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                slot = key.data
                try:
                    data = slot.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data[:12].startswith(b"HTTP/1."):
                    status = data[9:12].decode(errors="replace")
                    self.result.first_answers[status] = self.result.first_answers.get(status, 0) + 1
                if not data:
                    self.result.closed_by_server += 1
                    self._close(slot, by_server=True)
            now = time.monotonic()
            if self.attack.trickle and now >= next_trickle:
                next_trickle = now + self.attack.interval
                for slot in self.slots:
                    if slot.sock is not None:
                        try:
                            slot.sock.send(self.attack.trickle)
                        except OSError:
                            self.result.closed_by_server += 1
                            self._close(slot)
            for slot in self.slots:
                if slot.sock is None and now - slot.closed_at >= 1.0:
                    self._open(slot)
            self.result.open_min = min(self.result.open_min, sum(1 for s in self.slots if s.sock))
        for slot in self.slots:
            self._close(slot)
        for sock in self.held:
            sock.close()
        self.selector.close()


def run_attack(url: str, attack: Attack, *, seconds: float = 10.0, rate: float = 5.0) -> AttackResult:
    """Open the attack's sockets, then send normal calls for ``seconds``; bounded, loopback only."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError("attack runs are loopback only")
    result = AttackResult()
    stop = threading.Event()
    attacker = threading.Thread(target=_Attacker(host, port, attack, result).run, args=(stop,), daemon=True)
    attacker.start()
    time.sleep(1.0)  # the attack is in place before the first normal call
    started = time.monotonic()
    normal = threading.Thread(
        target=_normal, args=(host, port, SAMPLE.read_bytes(), rate, stop, result.normal), daemon=True
    )
    normal.start()
    stop.wait(seconds)
    stop.set()
    normal.join(timeout=15)
    attacker.join(timeout=15)
    result.normal.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start priorauth-cds serve on a free port)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", action="append", choices=sorted(ATTACKS), help="run only these attacks")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the started server")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from http_bench import start_server

        server = start_server(dict(item.split("=", 1) for item in args.env))
        url = server.url
    out: dict[str, Any] = {}
    try:
        for name in args.only or list(ATTACKS):
            out[name] = run_attack(url, ATTACKS[name], seconds=args.seconds).summary()
            print(name, json.dumps(out[name]), flush=True)
    finally:
        if server is not None:
            server.stop()
    held = all(not s["errors"] and not s["non_200"] and (s["p99_ms"] or 1e9) <= 1000 for s in out.values())
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
