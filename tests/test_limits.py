"""Limits whatever the framing (issue 8): over-limit bodies, chunked or not, get a 413 the client can read,
and one byte budget per hook call bounds a worker's memory however large the FHIR server's pages are."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from cds_service.config import Config
from cds_service.prefetch import gather
from tests.bad_fhir_server import BadFhirServer, Exchange
from tests.conftest import LiveServer

HOOK = "/cds-services/everolimus-order-sign"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_bundles" / "I.A-brand-without-exemestane.json"
LIMIT = 64 * 1024
MB = 1024 * 1024


# ----------------------------------------------------------------------------- request bodies


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("limits")
    server = LiveServer(f"sqlite:///{folder / 'limits.sqlite3'}", extra_env={"CDS_MAX_BODY_BYTES": str(LIMIT)})
    server.start(folder / "server.log")
    yield server
    server.stop()


def _padded(total: int) -> bytes:
    """The sample hook request followed by whitespace: every prefix longer than the JSON parses to it."""
    body = SAMPLE.read_bytes()
    assert len(body) < LIMIT
    return body + b" " * (total - len(body))


def _raw_chunked(port: int, body: bytes, chunk: int = 8192) -> bytes:
    """POST ``body`` with Transfer-Encoding: chunked on a raw socket; the raw answer (head and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for start in range(0, len(body), chunk):
                part = body[start:start + chunk]
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed early: read what it said
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer and b'"resourceType"' in answer and answer.rstrip().endswith(b"}"):
                break
    return answer


@pytest.mark.server
@pytest.mark.parametrize("extra", [1, 200 * 1024], ids=["one-byte-over", "far-over"])
def test_chunked_body_over_limit_is_413_not_truncated(small_limit_server: LiveServer, extra: int) -> None:
    answer = _raw_chunked(small_limit_server.port, _padded(LIMIT + extra))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"OperationOutcome" in answer


@pytest.mark.server
def test_chunked_body_at_limit_is_evaluated(small_limit_server: LiveServer) -> None:
    answer = _raw_chunked(small_limit_server.port, _padded(LIMIT))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


@pytest.mark.server
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_still_sending_reads_the_413(small_limit_server: LiveServer, chunked: bool) -> None:
    """requests sends the whole body before reading: without the drain it would see a connection reset."""
    body = _padded(LIMIT + 512 * 1024)
    data: Any = iter([body[i:i + 16384] for i in range(0, len(body), 16384)]) if chunked else body
    response = requests.post(small_limit_server.url + HOOK, data=data, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


# ----------------------------------------------------------------------------- FHIR byte budget per call


def _streamed_bundle(size: int) -> Any:
    """A behaviour answering every search with a ``size``-byte Bundle, close-delimited (no Content-Length)."""

    def behaviour(ex: Exchange) -> None:
        if ex.is_read:
            ex.behave()
            return
        entry = orjson.dumps({"resource": {"resourceType": "Observation", "id": "x" * 8, "status": "final",
                                           "code": {"text": "filler " * 20}}})
        head, tail = b'{"resourceType":"Bundle","type":"searchset","entry":[', b"]}"
        count = (size - len(head) - len(tail)) // (len(entry) + 1)
        ex.start(200)

        def chunks() -> Iterator[bytes]:
            yield head
            for start in range(0, count, 256):
                yield (b"," if start else b"") + b",".join([entry] * min(256, count - start))
            yield tail

        ex.stream(chunks())

    return behaviour


def test_call_budget_is_shared_by_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four keys fetched in parallel, each answered with 3 MB: the call's 4 MB budget stops them, whatever
    the per-response cap; every key that did not finish is unobtainable (``call-budget``)."""
    templates = {f"k{i}": "Observation?patient={{context.patientId}}" for i in range(4)}
    with BadFhirServer([{"resourceType": "Patient", "id": "p"}]) as fhir:
        fhir.behaviour = _streamed_bundle(3 * MB)
        outcome = gather(templates=templates, context={"patientId": "p"}, prefetch=None,
                         fhir_server=fhir.base_url, access_token=None,
                         config=Config(fhir_budget_seconds=10.0, fhir_max_call_bytes=4 * MB,
                                       fhir_max_response_bytes=20 * MB))
    assert sum(1 for reason in outcome.failed.values() if reason == "call-budget") >= 3, outcome.failed
    assert len(outcome.failed) + sum(1 for o in outcome.origin.values() if o == "fetched") == 4


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _workers(master: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.server
def test_18mb_pages_leave_worker_rss_bounded(tmp_path: Path) -> None:
    """Every search answered with an 18 MB page: the answer is 200 or 412 (never 5xx) and no worker's RSS
    passes 150 MB, sampled every 20 ms while the calls run (two at a time, one per worker or two in one)."""
    pytest.importorskip("tests.scenarios")
    from tests.scenarios import request_for, scenario

    server = LiveServer(f"sqlite:///{tmp_path / 'rss.sqlite3'}", extra_env={"CDS_FHIR_BUDGET_SECONDS": "10"})
    server.start(tmp_path / "server.log")
    peak: dict[int, float] = {}
    statuses: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in _workers(server.process.pid):  # type: ignore[union-attr]
                try:
                    peak[pid] = max(peak.get(pid, 0.0), _rss_mb(pid))
                except OSError:
                    pass
            time.sleep(0.02)

    try:
        chart = scenario("B-pnet-met")
        with BadFhirServer(chart["resources"]) as fhir:
            fhir.behaviour = _streamed_bundle(18 * MB)
            body = request_for(chart, prefetch=False, fhir_server=fhir.base_url)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            baseline = {pid: _rss_mb(pid) for pid in _workers(server.process.pid)}  # type: ignore[union-attr]

            def one() -> None:
                statuses.append(requests.post(server.url + HOOK, json=body, timeout=40).status_code)

            for _ in range(2):
                callers = [threading.Thread(target=one) for _ in range(2)]
                for caller in callers:
                    caller.start()
                for caller in callers:
                    caller.join(timeout=45)
            stop.set()
            sampler.join(timeout=5)
    finally:
        stop.set()
        server.stop()
    assert len(statuses) == 4 and all(s in (200, 412) for s in statuses), statuses
    print("rss MB baseline", baseline, "peak", peak, "statuses", statuses)
    assert peak and max(peak.values()) <= 150, (baseline, peak)
