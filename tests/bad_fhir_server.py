"""Test helper: a small FHIR server on 127.0.0.1 that answers from a chart, or misbehaves on purpose.

The real FHIR server in ``tests/fhir_server.py`` is well behaved; fault tests need one that is slow, lies,
truncates, loops or floods. ``BadFhirServer`` runs a ``ThreadingHTTPServer`` in a daemon thread and hands
every GET to ``server.behaviour`` (a function of one ``Exchange``), which tests swap per test::

    with BadFhirServer(scenario["resources"]) as fhir:
        fhir.behaviour = lambda ex: ex.send_status(500) if ex.resource_type == "Condition" else ex.behave()
        ... fhir.base_url ...           # http://127.0.0.1:<port>/fhir

``Exchange.behave()`` is the well-behaved answer (reads, and searches by ``patient``, ``_id``, ``status``,
``category``, ``_include=PractitionerRole:practitioner``; 401 without ``token`` when one is set). Sleeps
wait on ``server.stopping`` so that ``stop()`` ends every misbehaving handler at once. Every request path
is recorded in ``server.requests``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = ["PATIENT_ELEMENT", "BadFhirServer", "Behaviour", "Chart", "Exchange", "bundle", "operation_outcome"]

FHIR_JSON = "application/fhir+json"
BASE_PATH = "/fhir"
#: The element naming the patient a resource is about (what ``?patient=`` searches).
PATIENT_ELEMENT: dict[str, str] = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "Coverage": "beneficiary",
    "AllergyIntolerance": "patient",
}


def operation_outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def bundle(resources: Iterable[dict[str, Any]], included: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """A searchset Bundle; ``included`` entries carry ``search.mode = include``."""
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    matches = len(entries)
    entries += [{"resource": r, "search": {"mode": "include"}} for r in included]
    return {"resourceType": "Bundle", "type": "searchset", "total": matches, "entry": entries}


@dataclass(frozen=True)
class Chart:
    """Resources served by type and id; answers reads and the handful of searches our templates use."""

    resources: tuple[dict[str, Any], ...]

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        return next((r for r in self.resources if r["resourceType"] == resource_type and r.get("id") == resource_id),
                    None)

    def search(self, resource_type: str, params: dict[str, list[str]]) -> dict[str, Any]:
        matches = [r for r in self.resources if r["resourceType"] == resource_type and _matches(r, params)]
        included: list[dict[str, Any]] = []
        if "PractitionerRole:practitioner" in params.get("_include", []):
            for role in matches:
                ref = str((role.get("practitioner") or {}).get("reference", ""))
                found = self.read("Practitioner", ref.split("/")[-1]) if ref.startswith("Practitioner/") else None
                if found is not None:
                    included.append(found)
        return bundle(matches, included)


def _matches(resource: dict[str, Any], params: dict[str, list[str]]) -> bool:
    """The search parameters our prefetch templates send; anything else is ignored, as servers may do."""
    for name, values in params.items():
        value = values[0]
        if name == "patient":
            element = PATIENT_ELEMENT.get(resource["resourceType"])
            if element is None or (resource.get(element) or {}).get("reference") != f"Patient/{value}":
                return False
        elif name == "_id" and resource.get("id") != value:
            return False
        elif name == "status" and resource.get("status") != value:
            return False
        elif name == "category" and value not in _category_codes(resource):
            return False
    return True


def _category_codes(resource: dict[str, Any]) -> set[str]:
    categories = resource.get("category") or []
    return {c.get("code") for cat in categories for c in (cat.get("coding") or [])}


class Exchange:
    """One GET: what was asked, and ways to answer it (well, badly, slowly, or not at all)."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: BadFhirServer) -> None:
        self.handler = handler
        self.server = server
        parts = urlsplit(handler.path)
        self.path = parts.path[len(BASE_PATH):].lstrip("/") if parts.path.startswith(BASE_PATH) else parts.path
        self.params = parse_qs(parts.query)
        segments = self.path.split("/")
        self.resource_type = segments[0]
        self.resource_id = segments[1] if len(segments) == 2 else None
        self.authorization = handler.headers.get("Authorization")

    @property
    def is_read(self) -> bool:
        return self.resource_id is not None

    def normal(self) -> tuple[int, dict[str, Any]]:
        """(status, document) a well-behaved server would answer (401 without the server's bearer token)."""
        if self.server.token is not None and self.authorization != f"Bearer {self.server.token}":
            return 401, operation_outcome("login", "bearer token required")
        if self.resource_id is not None:
            found = self.server.chart.read(self.resource_type, self.resource_id)
            return (200, found) if found else (404, operation_outcome("not-found", "no such resource"))
        return 200, self.server.chart.search(self.resource_type, self.params)

    def behave(self) -> None:
        """Answer as a well-behaved server would."""
        status, document = self.normal()
        self.send_json(status, document)

    def send_json(self, status: int, document: Any) -> None:
        self.send(status, orjson.dumps(document))

    def send_status(self, status: int) -> None:
        """An error status with an OperationOutcome body, as FHIR servers send them."""
        self.send_json(status, operation_outcome("exception", f"HTTP {status}"))

    def send(self, status: int, body: bytes, content_type: str = FHIR_JSON, length: int | None = None,
             headers: dict[str, str] | None = None) -> None:
        """Status, headers and body; ``length`` overrides Content-Length (-1 leaves it out: close-delimited)."""
        self.start(status, content_type, len(body) if length is None else length, headers)
        self.write(body)

    def start(self, status: int, content_type: str = FHIR_JSON, length: int = -1,
              headers: dict[str, str] | None = None) -> None:
        """Status line and headers only; the body follows with ``write``."""
        self.handler.send_response(status)
        self.handler.send_header("Content-Type", content_type)
        if length >= 0:
            self.handler.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.end_headers()

    def write(self, data: bytes) -> bool:
        """Write and flush; False once the client has gone (a cut-off reader is expected, not an error)."""
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
            return True
        except OSError:
            return False

    def sleep(self, seconds: float) -> bool:
        """Wait unless the server is stopping; True when the full time passed."""
        return not self.server.stopping.wait(seconds)

    def trickle(self, data: bytes, interval: float, step: int = 1) -> None:
        """Send ``data`` ``step`` bytes at a time, ``interval`` apart, until done, cut off or stopped."""
        for start in range(0, len(data), step):
            if not self.write(data[start:start + step]) or not self.sleep(interval):
                return

    def stream(self, chunks: Iterator[bytes]) -> int:
        """Write chunks until exhausted or the client hangs up; the bytes written."""
        written = 0
        for chunk in chunks:
            if self.server.stopping.is_set() or not self.write(chunk):
                break
            written += len(chunk)
        return written


Behaviour = Callable[[Exchange], None]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (one request per connection, close-delimited bodies allowed); all logic is in the behaviour."""

    server: _HttpServer

    def do_GET(self) -> None:
        owner = self.server.owner
        exchange = Exchange(self, owner)
        owner.record(exchange.path + (f"?{urlsplit(self.path).query}" if urlsplit(self.path).query else ""))
        owner.behaviour(exchange)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output stays readable."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    #: The default backlog (5) drops SYNs when the service opens its ~9 parallel fetches at once; the
    #: client's retry then comes a second later, which would look like a slow server when it is not.
    request_queue_size = 128
    owner: BadFhirServer


@dataclass
class BadFhirServer:
    """The server; ``behaviour`` defaults to well behaved and may be replaced at any time."""

    resources: Iterable[dict[str, Any]]
    #: Bearer token the well-behaved answers require (None: any caller).
    token: str | None = None
    behaviour: Behaviour = field(default=Exchange.behave)
    chart: Chart = field(init=False)
    requests: list[str] = field(init=False, default_factory=list)
    stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _http: _HttpServer | None = field(init=False, default=None)
    _thread: threading.Thread | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.chart = Chart(tuple(self.resources))

    @property
    def base_url(self) -> str:
        if self._http is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._http.server_address[1]}{BASE_PATH}"

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def reset(self, behaviour: Behaviour = Exchange.behave) -> None:
        """A fresh test: new behaviour, no recorded requests."""
        with self._lock:
            self.requests.clear()
        self.behaviour = behaviour

    def start(self) -> Self:
        self._http = _HttpServer(("127.0.0.1", 0), _Handler)
        self._http.owner = self
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="bad-fhir", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release sleeping handlers, stop accepting, close the socket (safe to call twice)."""
        self.stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
