"""FHIR-server faults on the fallback path, through the HTTP layer: on time, and a 412 or an honest degraded 200.

The request carries no prefetch, so everything comes from ``fhirServer``: our own misbehaving server
(``tests/bad_fhir_server.py``) serving the B-pnet-met chart. Whatever it does (sleep, 5xx, 401, HTML,
truncated JSON, ``next`` loops, 50 MB, trickled bytes, another patient's data, the wrong resourceType,
one resource type failing), each call must end within the FHIR budget plus one second and answer either
412 with an OperationOutcome or 200 with an evaluation that is degraded, never wrong: no criterion
not-met that the full chart meets, nothing from another patient, the gap named on the card.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import requests

from cds_service.app import create_app
from cds_service.config import Config
from tests.bad_fhir_server import PATIENT_ELEMENT, BadFhirServer, Behaviour, Exchange, bundle
from tests.conftest import LiveServer
from tests.scenarios import evaluations, request_for, scenario

BUDGET = 1.5
#: What a call may take past the FHIR budget (parsing, evaluation, rendering, HTTP).
SLACK = 1.0
#: How long a "slow" server stalls: far past any budget; stopping the server releases it.
STALL = 30.0
SIGN = "/cds-services/everolimus-order-sign"
SCENARIO = "B-pnet-met"
ORDER = "MedicationRequest/rosa-order-3"
PATIENT = "rosa"
OTHER_PATIENT = "mallory"
TOKEN = secrets.token_urlsafe(16)
FIFTY_MB = 50 * 1024 * 1024

Client = Any  # flask.testing.FlaskClient


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fault_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with a small FHIR budget, so every fault test is quick and the bound is tight."""
    folder = tmp_path_factory.mktemp("faults")
    app = create_app(Config(database_url=f"sqlite:///{folder / 'faults.sqlite3'}", fhir_budget_seconds=BUDGET))
    app.config["TESTING"] = True
    yield app
    app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture
def fault_client(fault_app: Any) -> Client:
    return fault_app.test_client()


@pytest.fixture
def fhir() -> Iterator[BadFhirServer]:
    """A fresh server per test, well behaved until the test says otherwise; stopping it ends every stall."""
    with BadFhirServer(scenario(SCENARIO)["resources"], token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def truth(fault_app: Any) -> dict[str, Any]:
    """The evaluation the full chart gives when the server behaves (and it is the scenario's expected one)."""
    with BadFhirServer(scenario(SCENARIO)["resources"], token=TOKEN) as server:
        status, body, _ = call(fault_app.test_client(), server)
    assert status == 200, body
    ev = evaluations(body)[ORDER]
    expected = scenario(SCENARIO)["expect"]["evaluations"][0]
    assert (ev["pathway"], ev["decision"]) == (expected["pathway"], expected["decision"])
    assert {c["id"]: c["status"] for c in ev["criteria"] if c["id"] in expected["criteria"]} == expected["criteria"]
    return ev


# ----------------------------------------------------------------------------- calls and checks


def hook_request(server: BadFhirServer) -> dict[str, Any]:
    return request_for(scenario(SCENARIO), prefetch=False, fhir_server=server.base_url, token=TOKEN)


def call(client: Client, server: BadFhirServer) -> tuple[int, dict[str, Any], float]:
    """(status, JSON body, seconds) of one order-sign call through the Flask test client."""
    started = time.monotonic()
    response = client.post(SIGN, json=hook_request(server))
    elapsed = time.monotonic() - started
    text = response.get_data(as_text=True)
    assert TOKEN not in text
    return response.status_code, orjson.loads(text), elapsed


def call_live(live: LiveServer, server: BadFhirServer, budget: float) -> tuple[int, dict[str, Any], float]:
    """The same call against gunicorn; the client timeout only keeps a hung service from hanging the test."""
    started = time.monotonic()
    response = requests.post(f"{live.url}{SIGN}", json=hook_request(server), timeout=budget + 10)
    elapsed = time.monotonic() - started
    assert TOKEN not in response.text
    return response.status_code, response.json(), elapsed


def assert_unavailable(body: dict[str, Any]) -> None:
    """A 412 body: an OperationOutcome saying the data was incomplete."""
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "incomplete"


def assert_honest(body: dict[str, Any], truth: dict[str, Any], *, signalled: bool) -> dict[str, Any]:
    """A degraded answer may lose certainty but never contradict the full chart or speak of another patient."""
    assert OTHER_PATIENT not in orjson.dumps(body).decode().lower()
    ev = evaluations(body)[ORDER]
    full = {c["id"]: c["status"] for c in truth["criteria"]}
    for criterion in ev["criteria"]:
        allowed = {full.get(criterion["id"]), "unknown"}
        if criterion["id"] not in full:  # another pathway: only a gap or a pass, never a failure from a gap
            allowed.add("met")
        assert criterion["status"] in allowed, (criterion["id"], criterion["status"], full.get(criterion["id"]))
    if truth["decision"] != "not-met":
        assert ev["decision"] != "not-met"
    if ev["decision"] == "met":
        assert ev["pathway"] == truth["pathway"]
    if signalled:
        card = next(c for c in body["cards"] if "priorauth-cds.evaluation" in (c.get("extension") or {}))
        assert "did not return" in card["detail"]
    return ev


def check(status: int, body: dict[str, Any], elapsed: float, budget: float, expected: int,
          truth: dict[str, Any], signalled: bool = True) -> None:
    assert elapsed < budget + SLACK, f"call took {elapsed:.2f}s, budget {budget}s"
    assert status == expected, (status, body)
    if status == 412:
        assert_unavailable(body)
    else:
        assert_honest(body, truth, signalled=signalled)


# ----------------------------------------------------------------------------- behaviours


def on_searches(fault: Behaviour) -> Behaviour:
    """Reads behave (the Patient comes back), searches misbehave."""
    return lambda ex: Exchange.behave(ex) if ex.is_read else fault(ex)


def on_type(resource_type: str, fault: Behaviour) -> Behaviour:
    return lambda ex: fault(ex) if ex.resource_type == resource_type else Exchange.behave(ex)


def stall(ex: Exchange) -> None:
    """Accept, then say nothing for far longer than any budget."""
    if ex.sleep(STALL):
        ex.behave()


def http_status(code: int) -> Behaviour:
    return lambda ex: ex.send_status(code)


def html_page(ex: Exchange) -> None:
    ex.send(200, b"<!doctype html><html><body><form action='/login'>Sign in</form></body></html>",
            content_type="text/html; charset=utf-8")


def truncated_json(ex: Exchange) -> None:
    """Half the JSON, with a Content-Length that matches the half."""
    body = orjson.dumps(ex.normal()[1])
    ex.send(200, body[: len(body) // 2])


def cut_off_json(ex: Exchange) -> None:
    """The full Content-Length promised, half the bytes sent, then the connection closes."""
    body = orjson.dumps(ex.normal()[1])
    ex.send(200, body[: len(body) // 2], length=len(body))


def _with_next(ex: Exchange, page: str) -> None:
    document = ex.normal()[1]
    params = {k: v[0] for k, v in ex.params.items() if k != "_page"} | {"_page": page}
    document["link"] = [{"relation": "next", "url": f"{ex.server.base_url}/{ex.resource_type}?{urlencode(params)}"}]
    ex.send_json(200, document)


def next_loop(ex: Exchange) -> None:
    """Page 1 links to page 2, page 2 back to page 1."""
    _with_next(ex, "2" if ex.params.get("_page", ["1"])[0] == "1" else "1")


def endless_next(ex: Exchange) -> None:
    """Every page links to a new one."""
    _with_next(ex, str(int(ex.params.get("_page", ["1"])[0]) + 1))


class HugeBundle:
    """A searchset Bundle of ``size`` bytes, streamed entry by entry; records how much the client took."""

    def __init__(self, size: int = FIFTY_MB, declared: bool = False) -> None:
        self.size = size
        self.declared = declared
        self.written = 0

    def __call__(self, ex: Exchange) -> None:
        entry = orjson.dumps({"resource": ex.normal()[1]["entry"][0]["resource"]})
        head, tail = b'{"resourceType":"Bundle","type":"searchset","entry":[', b"]}"
        count = (self.size - len(head) - len(tail)) // (len(entry) + 1) + 1
        length = len(head) + count * (len(entry) + 1) - 1 + len(tail)
        ex.start(200, length=length if self.declared else -1)
        self.written = ex.stream(self._chunks(head, entry, count, tail))

    @staticmethod
    def _chunks(head: bytes, entry: bytes, count: int, tail: bytes) -> Iterator[bytes]:
        yield head
        batch = 256
        for start in range(0, count, batch):
            n = min(batch, count - start)
            yield (b"," if start else b"") + b",".join([entry] * n)
        yield tail


def distinct_conditions(count: int) -> bytes:
    """A searchset Bundle of ``count`` distinct, minimal, valid Conditions of the right patient, all PNET."""
    entry = orjson.dumps({"resource": {
        "resourceType": "Condition", "id": "ID", "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C25.4"}]}}})
    entries = b",".join(entry.replace(b'"ID"', f'"{PATIENT}-many-{n}"'.encode()) for n in range(count))
    return b'{"resourceType":"Bundle","type":"searchset","entry":[' + entries + b"]}"


@functools.cache
def gzip_bomb(size: int = FIFTY_MB) -> bytes:
    """A valid gzip of a ``size``-byte Bundle (mostly whitespace), about 50 KB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(b'{"resourceType":"Bundle","type":"searchset","entry":[]')]
    block = b" " * (1024 * 1024)
    parts += [packer.compress(block) for _ in range(size // len(block))]
    parts += [packer.compress(b"}"), packer.flush()]
    return b"".join(parts)


def send_gzip_bomb(ex: Exchange) -> None:
    ex.send(200, gzip_bomb(), headers={"Content-Encoding": "gzip"})


def trickle_body(ex: Exchange) -> None:
    """Headers at once, then the (valid) body one byte every 100 ms: each read succeeds, the whole never ends."""
    status_code, document = ex.normal()
    body = orjson.dumps(document)
    ex.start(status_code, length=len(body))
    ex.trickle(body, 0.1)


def trickle_headers(ex: Exchange) -> None:
    """The status line and headers themselves one byte every 20 ms (slowloris towards the client)."""
    head = b"HTTP/1.0 200 OK\r\nContent-Type: application/fhir+json\r\n" + b"X-Padding: " + b"x" * 4000 + b"\r\n\r\n"
    ex.trickle(head + orjson.dumps(ex.normal()[1]), 0.02)


def lie(absolute: bool) -> Behaviour:
    """Patient-compartment searches answer with another patient's resources (the chart re-pointed at them)."""

    def behaviour(ex: Exchange) -> None:
        if ex.is_read or ex.resource_type not in PATIENT_ELEMENT:
            ex.behave()
            return
        target = f"{ex.server.base_url}/Patient/{OTHER_PATIENT}" if absolute else f"Patient/{OTHER_PATIENT}"
        body = orjson.dumps(ex.normal()[1])
        body = body.replace(f'"Patient/{PATIENT}"'.encode(), f'"{target}"'.encode())
        ex.send(200, body.replace(f'"{PATIENT}-'.encode(), f'"{OTHER_PATIENT}-'.encode()))

    return behaviour


def redirect_elsewhere(ex: Exchange) -> None:
    """Every answer a redirect to another origin (a token must never follow it there)."""
    ex.send(302, b"", headers={"Location": f"http://127.0.0.2:9/fhir/{ex.path}"})


def patient_read_other_patient(ex: Exchange) -> None:
    """``Patient/rosa`` answered with another patient (a different id, a child's birth date)."""
    if ex.resource_type != "Patient":
        ex.behave()
        return
    ex.send_json(200, {"resourceType": "Patient", "id": OTHER_PATIENT, "birthDate": "2020-01-01",
                       "name": [{"family": OTHER_PATIENT}]})


def read_as_bundle(ex: Exchange) -> None:
    """A read answered with a searchset Bundle holding the resource."""
    if not ex.is_read:
        ex.behave()
        return
    ex.send_json(200, bundle([ex.normal()[1]]))


def read_as_other_type(ex: Exchange) -> None:
    """``Patient/rosa`` answered with a Practitioner that has the same id."""
    if not ex.is_read:
        ex.behave()
        return
    ex.send_json(200, {"resourceType": "Practitioner", "id": ex.resource_id, "name": [{"family": "Wrong"}]})


# ----------------------------------------------------------------------------- the fault table

#: (behaviour factory, expected status, whether the card must name a gap)
FAULTS: list[Any] = [
    pytest.param(lambda: stall, 412, True, id="slow-everything"),
    pytest.param(lambda: on_searches(stall), 200, True, id="slow-searches"),
    pytest.param(lambda: http_status(500), 412, True, id="http-500"),
    pytest.param(lambda: http_status(401), 412, True, id="http-401"),
    pytest.param(lambda: http_status(503), 412, True, id="http-503"),
    pytest.param(lambda: html_page, 412, True, id="html-body"),
    pytest.param(lambda: truncated_json, 412, True, id="truncated-json"),
    pytest.param(lambda: cut_off_json, 412, True, id="connection-cut-mid-body"),
    pytest.param(lambda: on_searches(next_loop), 200, True, id="next-link-loop"),
    pytest.param(lambda: on_searches(endless_next), 200, True, id="next-link-endless"),
    pytest.param(lambda: on_type("Condition", HugeBundle(declared=False)), 200, True, id="bundle-50mb-streamed"),
    pytest.param(lambda: on_type("Condition", HugeBundle(declared=True)), 200, True, id="bundle-50mb-declared"),
    pytest.param(lambda: on_type("Condition", send_gzip_bomb), 200, True, id="gzip-bomb-50mb"),
    pytest.param(lambda: trickle_body, 412, True, id="trickled-body"),
    pytest.param(lambda: trickle_headers, 412, True, id="trickled-headers"),
    pytest.param(lambda: lie(absolute=False), 200, False, id="other-patient-entries"),
    pytest.param(lambda: lie(absolute=True), 200, False, id="other-patient-entries-absolute-refs"),
    pytest.param(lambda: patient_read_other_patient, 200, False, id="patient-read-returns-other-patient"),
    pytest.param(lambda: redirect_elsewhere, 412, True, id="redirect-to-other-origin"),
    pytest.param(lambda: read_as_bundle, 412, True, id="read-returns-bundle"),
    pytest.param(lambda: read_as_other_type, 412, True, id="read-returns-other-type"),
    pytest.param(lambda: on_type("Condition", http_status(500)), 200, True, id="condition-500-patient-ok"),
]


@pytest.mark.parametrize(("make", "expected", "signalled"), FAULTS)
def test_fault_ends_on_time_with_412_or_honest_answer(
    fault_client: Client, fhir: BadFhirServer, truth: dict[str, Any],
    make: Callable[[], Behaviour], expected: int, signalled: bool,
) -> None:
    fhir.behaviour = make()
    status_code, body, elapsed = call(fault_client, fhir)
    check(status_code, body, elapsed, BUDGET, expected, truth, signalled)
    assert fhir.requests, "the fault server was never asked"


def test_well_behaved_server_is_asked_with_the_token(fault_client: Client, fhir: BadFhirServer,
                                                      truth: dict[str, Any]) -> None:
    """The harness itself: without faults the fallback gives the full answer (so the faults are what differ)."""
    status_code, body, elapsed = call(fault_client, fhir)
    assert status_code == 200 and elapsed < BUDGET + SLACK
    ev = evaluations(body)[ORDER]
    assert (ev["decision"], ev["criteria"]) == (truth["decision"], truth["criteria"])
    assert any(path.startswith("Condition?") for path in fhir.requests)


def test_condition_outage_names_the_gap_and_keeps_other_facts(fault_client: Client, fhir: BadFhirServer,
                                                              truth: dict[str, Any]) -> None:
    """Patient OK, Condition 500: the card says conditions are missing; facts from other keys still hold."""
    fhir.behaviour = on_type("Condition", http_status(500))
    status_code, body, _ = call(fault_client, fhir)
    assert status_code == 200
    card = next(c for c in body["cards"] if "priorauth-cds.evaluation" in (c.get("extension") or {}))
    assert "did not return: conditions" in card["detail"]
    audit = body["systemActions"][0]["resource"]["extension"][0]["extension"]
    assert {"url": "coverage", "valueReference": {"reference": "Coverage/rosa-cov"}} in audit


@pytest.mark.parametrize(("behaviour", "most"), [(next_loop, 3), (endless_next, None)], ids=["loop", "endless"])
def test_next_links_are_followed_a_bounded_number_of_times(fault_client: Client, fhir: BadFhirServer,
                                                           fault_app: Any, behaviour: Behaviour,
                                                           most: int | None) -> None:
    """A loop is noticed when a page repeats (page 1, 2, 1 again); an endless chain stops at the page limit."""
    fhir.behaviour = on_searches(behaviour)
    call(fault_client, fhir)
    pages: dict[str, int] = {}
    for path in fhir.requests:
        # One count per query: two keys search Observation (laboratory results, disease status by code).
        query = path.split("?")[0] + (" by code" if "code=" in path else "")
        pages[query] = pages.get(query, 0) + 1
    limit = most or fault_app.extensions["priorauth_cds"].config.fhir_max_pages
    assert max(pages.values()) == limit


def test_streamed_50mb_bundle_is_cut_off_not_read_whole(fault_client: Client, fhir: BadFhirServer,
                                                        fault_app: Any) -> None:
    huge = HugeBundle(declared=False)
    fhir.behaviour = on_type("Condition", huge)
    status_code, _, _ = call(fault_client, fhir)
    assert status_code == 200
    deadline = time.monotonic() + 5
    while huge.written == 0 and time.monotonic() < deadline:  # the writer notices the hang-up a little later
        time.sleep(0.05)
    cap = fault_app.extensions["priorauth_cds"].config.fhir_max_response_bytes
    assert 0 < huge.written < cap + 8 * 1024 * 1024 < FIFTY_MB


@pytest.mark.parametrize("make", [lambda: on_type("Condition", http_status(500)), lambda: lie(absolute=False)],
                         ids=["condition-500", "other-patient-entries"])
def test_unobtainable_diagnoses_do_not_reroute_to_off_label(fault_client: Client, fhir: BadFhirServer,
                                                            truth: dict[str, Any],
                                                            make: Callable[[], Behaviour]) -> None:
    fhir.behaviour = make()
    status_code, body, _ = call(fault_client, fhir)
    assert status_code == 200
    ev = evaluations(body)[ORDER]
    assert ev["decision"] in (truth["decision"], "incomplete"), (ev["pathway"], ev["decision"])
    assert ev["pathway"] == truth["pathway"]


def test_many_small_entries_are_answered_within_the_budget(fault_client: Client, fhir: BadFhirServer,
                                                           fault_app: Any) -> None:
    body = distinct_conditions(20_000)  # built before the call, so the server answers at wire speed
    assert len(body) < fault_app.extensions["priorauth_cds"].config.fhir_max_response_bytes / 5
    fhir.behaviour = on_type("Condition", lambda ex: ex.send(200, body))
    status_code, _, elapsed = call(fault_client, fhir)
    assert status_code in (200, 412)
    assert elapsed < BUDGET + SLACK, f"call took {elapsed:.2f}s, budget {BUDGET}s"


def test_prefetch_threads_end_at_the_deadline(fault_client: Client, fhir: BadFhirServer) -> None:
    fhir.behaviour = trickle_headers
    before = set(threading.enumerate())
    status_code, _, elapsed = call(fault_client, fhir)
    assert status_code == 412
    time.sleep(max(0.0, BUDGET + SLACK - elapsed))
    lingering = [t.name for t in threading.enumerate() if t not in before and t.name.startswith("fhir-prefetch")]
    assert lingering == []


# ----------------------------------------------------------------------------- through gunicorn

LIVE_FAULTS: list[Any] = [
    pytest.param(lambda: stall, 412, id="slow-everything"),
    pytest.param(lambda: trickle_body, 412, id="trickled-body"),
    pytest.param(lambda: on_type("Condition", http_status(500)), 200, id="condition-500-patient-ok"),
    pytest.param(lambda: on_type("Condition", HugeBundle(declared=False)), 200, id="bundle-50mb-streamed"),
    pytest.param(lambda: on_searches(next_loop), 200, id="next-link-loop"),
]


@pytest.mark.server
@pytest.mark.parametrize(("make", "expected"), LIVE_FAULTS)
def test_fault_through_gunicorn(live_server: LiveServer, fhir: BadFhirServer, truth: dict[str, Any],
                                make: Callable[[], Behaviour], expected: int) -> None:
    budget = Config.from_env().fhir_budget_seconds  # the live server runs on the environment's settings
    fhir.behaviour = make()
    status_code, body, elapsed = call_live(live_server, fhir, budget)
    check(status_code, body, elapsed, budget, expected, truth)


@pytest.mark.server
def test_gunicorn_still_answers_after_faults(live_server: LiveServer, fhir: BadFhirServer,
                                             truth: dict[str, Any]) -> None:
    """After stalls and floods the workers are free again: a well-behaved fallback call gets the full answer."""
    status_code, body, _ = call_live(live_server, fhir, Config.from_env().fhir_budget_seconds)
    assert status_code == 200
    assert evaluations(body)[ORDER]["decision"] == truth["decision"]
