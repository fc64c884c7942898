"""The worker's gate (``cds_service/gate.py``): one request runs Python at a time, in arrival order, and a request
waiting on the FHIR fallback lets the others run. No timings are asserted, only orders of events."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from cds_service.gate import Gate, held, holding, stepped_aside
from tests.bad_fhir_server import BadFhirServer, Exchange
from tests.conftest import LiveServer
from tests.scenarios import request_for, scenario

SIGN = "/cds-services/everolimus-order-sign"
SCENARIO = "A-met-generic-with-exemestane"
#: Generous bound for waits on the other threads: only a hang reaches it.
PATIENCE = 30.0


def wait_until(condition: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_gate_is_handed_over_in_arrival_order() -> None:
    gate = Gate()
    order: list[int] = []
    gate.acquire()
    threads = []
    for n in range(5):
        thread = threading.Thread(target=lambda n=n: (gate.acquire(), order.append(n), gate.release()))
        thread.start()
        wait_until(lambda n=n: gate.waiting == n + 1)  # the next one queues only once this one waits
        threads.append(thread)
    gate.release()
    for thread in threads:
        thread.join(PATIENCE)
    assert order == [0, 1, 2, 3, 4]
    gate.acquire()  # free again
    gate.release()


def test_stepping_aside_lets_another_thread_run_then_takes_the_gate_back() -> None:
    gate = Gate()
    ran = threading.Event()
    other = threading.Thread(target=lambda: (gate.acquire(), ran.set(), gate.release()))
    with holding(gate):
        other.start()
        wait_until(lambda: gate.waiting == 1)
        assert not ran.is_set()
        with stepped_aside():
            assert not held()
            assert ran.wait(PATIENCE)  # the waiting thread got the gate while this one waited on "the network"
        assert held()
        other.join(PATIENCE)
    assert not held()


def test_stepping_aside_without_a_gate_does_nothing() -> None:
    with stepped_aside():
        assert not held()
    assert not held()


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[LiveServer]:
    """One gunicorn worker, so two calls share its gate; a FHIR budget longer than any wait below."""
    server = LiveServer(
        f"sqlite:///{tmp_path / 'gate.sqlite3'}",
        {"CDS_WORKERS": "1", "CDS_RATE_LIMIT_PER_MINUTE": "0", "CDS_FHIR_BUDGET_SECONDS": "60"},
    )
    server.start(tmp_path / "server.log")
    yield server
    server.stop()


@pytest.mark.server
def test_a_call_waiting_on_the_fhir_fallback_does_not_hold_up_the_worker(one_worker: LiveServer) -> None:
    release = threading.Event()
    sc = scenario(SCENARIO)

    def stall_then_answer(exchange: Exchange) -> None:
        release.wait(PATIENCE)
        exchange.behave()

    with BadFhirServer(sc["resources"]) as fhir:
        fhir.behaviour = stall_then_answer
        slow: dict[str, Any] = {}
        waiting = threading.Thread(
            target=lambda: slow.update(
                answer=requests.post(
                    f"{one_worker.url}{SIGN}", json=request_for(sc, prefetch=False, fhir_server=fhir.base_url),
                    timeout=PATIENCE + 60,
                )
            )
        )
        waiting.start()
        try:
            wait_until(lambda: fhir.requests)  # the fallback call is now waiting on the FHIR server
            quick = requests.post(f"{one_worker.url}{SIGN}", json=request_for(sc), timeout=PATIENCE + 60)
            assert quick.status_code == 200
            assert waiting.is_alive() and not release.is_set()  # answered while the other still waited
        finally:
            release.set()
            waiting.join(PATIENCE + 60)
        assert slow["answer"].status_code == 200


@pytest.mark.server
def test_answers_close_their_connection_while_other_requests_wait(one_worker: LiveServer) -> None:
    """Clients reuse the connection they used last; a worker with a queue sends its callers elsewhere."""
    from benchmarks.workload import hook_request

    # A 2 MB chart, evaluated for tens of ms while the others arrive (skips without ../shared).
    body = orjson.dumps(hook_request(2000, scenario(SCENARIO)))
    answers: list[tuple[int, str | None]] = []
    start = threading.Barrier(4)
    host, port = one_worker.url.removeprefix("http://").split(":")

    def send() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=PATIENCE + 60)
        try:
            start.wait(PATIENCE)
            connection.request("POST", SIGN, body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            answers.append((answer.status, answer.getheader("Connection")))
        finally:
            connection.close()

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(PATIENCE + 60)
    assert [status for status, _ in answers] == [200] * 4
    connection_headers = [header for _, header in answers]
    assert "close" in connection_headers  # answered while others waited for the gate
    assert "keep-alive" in connection_headers  # the last one, with nobody left waiting
    # The worker accepts again once its queue is worked off.
    assert requests.post(f"{one_worker.url}{SIGN}", json=request_for(scenario(SCENARIO)), timeout=60).status_code == 200


@pytest.mark.server
def test_a_queued_worker_does_not_cut_off_pipelined_requests(one_worker: LiveServer) -> None:
    from benchmarks.workload import hook_request

    big = orjson.dumps(hook_request(2000, scenario(SCENARIO)))  # skips without ../shared
    host, port = one_worker.url.removeprefix("http://").split(":")
    head = f"POST {SIGN} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    busy = (head + f"Content-Length: {len(big)}\r\n\r\n").encode() + big
    two = (f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n" * 2).encode()
    with (
        socket.create_connection((host, int(port)), timeout=PATIENCE) as first,
        socket.create_connection((host, int(port)), timeout=PATIENCE) as pipelining,
        socket.create_connection((host, int(port)), timeout=PATIENCE) as third,
    ):
        first.sendall(busy)  # keeps the gate for tens of ms
        time.sleep(0.005)
        pipelining.sendall(two)  # the second waits in the same connection, behind the first
        time.sleep(0.005)
        third.sendall(two[: len(two) // 2])  # queued too: the pipelined call is answered while it waits
        answer = b""
        deadline = time.monotonic() + PATIENCE
        while answer.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
            chunk = pipelining.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2
