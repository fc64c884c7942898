"""Durability: what the server acknowledged before a crash is there after restart, on SQLite and PostgreSQL.

``tests/test_server.py`` kills only the gunicorn master of an idle server after one feedback item; its
workers then notice the orphaning and exit on their own. Here 16 threads post feedback and order-sign
calls (which record coverage assertions) at once, and mid-burst the master AND every worker get SIGKILL
together: no graceful shutdown anywhere, requests in flight. After a restart on the same database every
feedback item answered with 200 and every coverage assertion id returned in a 200 answer must be stored,
the server must report healthy storage, and re-posting the acknowledged feedback must store nothing new.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.feedback import MAX_FEEDBACK_ITEMS
from cds_service.store import Store
from tests.conftest import LiveServer
from tests.issued import issue_cards
from tests.scenarios import SAMPLE_DIR

pytestmark = pytest.mark.server

THREADS = 16
#: Acknowledged writes (feedback items + assertions) to wait for before the kill.
KILL_AFTER = 80
BURST_LIMIT_SECONDS = 30.0
FEEDBACK = "/cds-services/everolimus-order-sign/feedback"
SIGN = "/cds-services/everolimus-order-sign"
POSTGRES_URL = os.environ.get("PRIORAUTH_TEST_POSTGRES_URL")


@dataclass
class Acknowledged:
    """What the server answered 200 for, collected by the burst threads."""

    cards: list[str] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)
    #: Requests that were sent before the kill and never answered: proof the kill came mid-burst.
    cut_off: int = 0
    #: Answers other than 200 (storage errors under concurrency would show here).
    rejected: list[int] = field(default_factory=list)
    killed_at: float = float("inf")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.cards) + len(self.assertions)


#: Card uuids registered as issued before the burst (feedback is accepted only for issued cards).
ISSUED: list[str] = []


def feedback_item() -> dict[str, Any]:
    return {
        "card": ISSUED.pop(),
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "patient-preference",
                "system": "http://example.org/override",
                "display": "Patient preference",
            }
        },
        "outcomeTimestamp": "2026-11-27T12:00:00Z",
    }


def post_feedback(session: requests.Session, url: str, acks: Acknowledged, n: int) -> None:
    items = [feedback_item() for _ in range(1 + n % 3)]
    response = session.post(f"{url}{FEEDBACK}", json={"feedback": items}, timeout=5)
    if response.status_code != 200 or response.json()["received"] != len(items):
        with acks.lock:
            acks.rejected.append(response.status_code)
        return
    with acks.lock:
        acks.cards += [item["card"] for item in items]
        acks.feedback += items


#: A request from the repository, so this runs on a plain clone (and no skip is raised inside a worker thread).
SIGN_REQUEST = json.loads((SAMPLE_DIR / "I.A-met-generic-with-exemestane.json").read_text())


def post_sign(session: requests.Session, url: str, acks: Acknowledged, n: int) -> None:
    request = {**SIGN_REQUEST, "hookInstance": str(uuid.uuid4())}
    response = session.post(f"{url}{SIGN}", json=request, timeout=5)
    if response.status_code != 200:
        with acks.lock:
            acks.rejected.append(response.status_code)
        return
    ids = [
        sub["valueString"]
        for action in response.json()["systemActions"]
        for ext in action["resource"]["extension"]
        for sub in ext.get("extension", [])
        if sub["url"] == "coverage-assertion-id"
    ]
    with acks.lock:
        acks.assertions += ids


def burst_worker(
    url: str,
    acks: Acknowledged,
    stop: threading.Event,
    post: Callable[[requests.Session, str, Acknowledged, int], None],
) -> None:
    """Post until told to stop; a refused or cut-off request is expected once the server is killed."""
    with requests.Session() as session:
        n = 0
        while not stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                post(session, url, acks, n)
            except (requests.RequestException, ValueError):
                with acks.lock:
                    acks.cut_off += sent < acks.killed_at
                time.sleep(0.01)


def server_pids(master: int) -> list[int]:
    """The gunicorn master and its workers (children found through /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(entry.name))
    return [master, *children]


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def kill_everything(server: LiveServer, acks: Acknowledged | None = None) -> int:
    """SIGKILL the master and every worker at once; returns how many processes were killed.

    ``acks.killed_at`` is the instant the signals go, after the processes are found (a walk of /proc that takes
    longer than a call): a request counts as cut off only if it was sent before the kill itself, not merely before
    the walk began -- those finish during the walk, and the check that some request was in flight failed by chance.
    """
    assert server.process is not None
    pids = server_pids(server.process.pid)
    assert len(pids) >= 3, "expected a master and at least two workers"
    if acks is not None:
        with acks.lock:
            acks.killed_at = time.monotonic()
    for pid in reversed(pids):
        os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not all(is_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(is_gone(pid) for pid in pids)
    server.process = None
    return len(pids)


def run_burst_and_kill(server: LiveServer) -> Acknowledged:
    acks = Acknowledged()
    stop = threading.Event()
    posts = [post_feedback if i % 2 else post_sign for i in range(THREADS)]
    threads = [threading.Thread(target=burst_worker, args=(server.url, acks, stop, p), daemon=True) for p in posts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + BURST_LIMIT_SECONDS
    try:
        while acks.count() < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acks.count() >= KILL_AFTER, f"only {acks.count()} writes acknowledged in {BURST_LIMIT_SECONDS}s"
        kill_everything(server, acks)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    return acks


def database_url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'durable.sqlite3'}" if kind == "sqlite" else str(POSTGRES_URL)


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not POSTGRES_URL, reason="PRIORAUTH_TEST_POSTGRES_URL not set"),
            ],
        ),
    ],
)
def test_acknowledged_writes_survive_sigkill_of_master_and_workers(tmp_path: Path, kind: str) -> None:
    url = database_url(kind, tmp_path)
    ISSUED[:] = [str(uuid.uuid4()) for _ in range(6_000)]
    issue_cards(url, *ISSUED)
    server = LiveServer(url, {"CDS_RATE_LIMIT_PER_MINUTE": "0"})
    server.start(tmp_path / "server.log")
    try:
        acks = run_burst_and_kill(server)
        assert acks.cards and acks.assertions
        assert acks.cut_off > 0, "no request was in flight when the server was killed"
        assert acks.rejected == [], "the server refused writes under concurrency"
        server.start(tmp_path / "server.log")
        health = requests.get(f"{server.url}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["storage"] == "ok"
        for start in range(0, len(acks.feedback), MAX_FEEDBACK_ITEMS):  # one request takes at most this many
            batch = acks.feedback[start : start + MAX_FEEDBACK_ITEMS]
            again = requests.post(f"{server.url}{FEEDBACK}", json={"feedback": batch}, timeout=30)
            assert again.status_code == 200, again.text
            assert again.json() == {"received": len(batch), "stored": 0}, "acknowledged feedback was lost"
    finally:
        server.stop()

    store = Store(url)
    try:
        stored_cards = {row["card"] for row in store.list_feedback("everolimus-order-sign")}
        assert set(acks.cards) <= stored_cards
        missing = [a for a in acks.assertions if store.get_assertion(a) is None]
        assert missing == [], f"{len(missing)} of {len(acks.assertions)} acknowledged assertions lost"
    finally:
        store.dispose()
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "durable.sqlite3") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
