"""The buffered worker's event loop does its housekeeping once per second, not once per loop turn (issue 18 item 3).

gunicorn's gthread loop sends the arbiter a heartbeat (``os.utime``), asks ``getppid`` and sweeps connection
deadlines on every turn -- several turns per request under load. These tests drive the worker's overrides with a
fake clock, as the loop calls them (``notify``, then ``is_parent_alive``, ``murder_keepalived``, ``murder_pending``).
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.workers import gthread

from cds_service import server
from cds_service.server import HOUSEKEEPING_SECONDS, BufferedThreadWorker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(server.time, "monotonic", fake)
    return fake


def bare_worker(counts: dict[str, int]) -> Any:
    """A worker with the state the loop's housekeeping reads, its gunicorn side replaced by counters."""
    worker: Any = BufferedThreadWorker.__new__(BufferedThreadWorker)
    worker._next_beat = worker._next_parent_check = worker._next_sweep = 0.0
    worker._sweeping = False
    worker.tmp = SimpleNamespace(notify=lambda: counts.__setitem__("beats", counts["beats"] + 1))
    worker.ppid = 1
    worker.log = SimpleNamespace(info=lambda *args: None)
    worker.keepalived_conns = deque()
    worker.pending_conns = deque()
    worker.reading = {}
    worker.lingering = {}
    return worker


def loop_turn(worker: Any) -> bool:
    worker.notify()
    alive = bool(worker.is_parent_alive())
    worker.murder_keepalived()
    worker.murder_pending()
    return alive


def test_many_turns_within_a_second_send_one_heartbeat(clock: Clock) -> None:
    counts = {"beats": 0}
    worker = bare_worker(counts)
    for _ in range(500):  # a busy second: hundreds of loop turns
        loop_turn(worker)
        clock.now += HOUSEKEEPING_SECONDS / 1000
    assert counts["beats"] == 1
    clock.now += HOUSEKEEPING_SECONDS
    loop_turn(worker)
    assert counts["beats"] == 2


def test_an_idle_loop_still_beats_on_every_wake_up(clock: Clock) -> None:
    counts = {"beats": 0}
    worker = bare_worker(counts)
    for _ in range(5):  # select() times out after a second when nothing happens
        loop_turn(worker)
        clock.now += HOUSEKEEPING_SECONDS
    assert counts["beats"] == 5


def test_parent_checked_once_per_second_and_an_orphan_is_still_found(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    parent = [1]

    def getppid() -> int:
        asked.append(1)
        return parent[0]

    monkeypatch.setattr(gthread.os, "getppid", getppid)
    worker = bare_worker({"beats": 0})
    assert all(loop_turn(worker) for _ in range(100))
    assert len(asked) == 1
    parent[0] = 4242  # the arbiter died: the worker was re-parented
    assert loop_turn(worker)  # within the second: not asked yet
    clock.now += HOUSEKEEPING_SECONDS
    assert not loop_turn(worker)


def test_deadlines_are_swept_once_per_second_and_met_at_most_a_second_late(clock: Clock) -> None:
    worker = bare_worker({"beats": 0})
    dropped: list[Any] = []
    worker._drop = lambda conn, answer: (dropped.append((conn, answer)), worker.reading.pop(conn))
    loop_turn(worker)  # the first sweep
    worker.reading["slow-client"] = SimpleNamespace(deadline=clock.now + 0.2)
    clock.now += 0.5
    loop_turn(worker)
    assert dropped == []  # past its deadline, but the next sweep is not due
    clock.now += HOUSEKEEPING_SECONDS
    loop_turn(worker)
    assert dropped == [("slow-client", server.TIMEOUT)]


def test_stopping_sweeps_kept_alive_connections_at_once(clock: Clock) -> None:
    worker = bare_worker({"beats": 0})
    loop_turn(worker)
    closed: list[str] = []
    worker.poller = SimpleNamespace(unregister=lambda sock: None)
    worker.nr_conns = 1
    conn = SimpleNamespace(timeout=clock.now + 60, sock="s", close=lambda: closed.append("closed"))
    worker.keepalived_conns.append(conn)
    worker.murder_keepalived(force=True)  # not due, but forced
    assert closed == ["closed"] and worker.nr_conns == 0
