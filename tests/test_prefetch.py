"""Tests for cds_service.prefetch: template tokens, prefetch shapes, and the FHIR fallback under faults.

HTTP answers come from ``responses`` where only the content matters, and from a real local HTTP server
where timing does (parallelism, slow or trickling servers, bodies without a length).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses

from cds_service.config import Config
from cds_service.discovery import PREFETCH_TEMPLATES, REQUIRED_PREFETCH_KEYS
from cds_service.prefetch import PrefetchOutcome, fetch_reference, fill_template, gather

BASE = "http://fhir.test/r4"
TOKEN = "s3cr3t-access-token"
CONTEXT: dict[str, Any] = {"patientId": "ava", "userId": "PractitionerRole/ava-role", "encounterId": "enc-1"}
PATIENT = {"resourceType": "Patient", "id": "ava"}
CONDITION = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/ava"}}


def bundle(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle as a FHIR server would send it."""
    result: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        result["link"] = [{"relation": "next", "url": next_url}]
    return result


def outcome(severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": "processing"}]}


def run(
    keys: list[str] | None = None,
    *,
    prefetch: dict[str, Any] | None = None,
    fhir_server: str | None = BASE,
    token: str | None = TOKEN,
    config: Config | None = None,
    templates: dict[str, str] | None = None,
    context: dict[str, Any] | None = None,
) -> PrefetchOutcome:
    return gather(
        templates=templates or PREFETCH_TEMPLATES,
        context=CONTEXT if context is None else context,
        prefetch=prefetch,
        fhir_server=fhir_server,
        access_token=token,
        config=_allowing_base(config or Config()),
        keys=keys,
    )


def _allowing_base(config: Config) -> Config:
    """Without JWT issuers only loopback FHIR servers are called: the fake one on ``BASE`` is listed."""
    return config if config.fhir_servers else replace(config, fhir_servers=(BASE,))


# ---------------------------------------------------------------- a fake FHIR server on top of responses


@dataclass
class FakeFhir:
    """URL -> canned answer, served through ``responses``; records every request it sees."""

    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)

    def json(self, url: str, body: Any, status: int = 200) -> None:
        self.routes[url] = (status, json.dumps(body).encode(), {"Content-Type": "application/fhir+json"})

    def raw(self, url: str, body: bytes, status: int = 200, content_type: str = "text/html") -> None:
        self.routes[url] = (status, body, {"Content-Type": content_type})

    def urls(self) -> list[str]:
        return [r.url for r in self.requests]

    def answer(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(request)
        if request.url not in self.routes:
            return 599, {}, b"unexpected request"
        status, body, headers = self.routes[request.url]
        return status, headers, body


@pytest.fixture
def fake() -> Iterator[FakeFhir]:
    server = FakeFhir()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, re.compile(r"https?://.*"), callback=server.answer)
        yield server


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("user_id", "token", "expected"),
    [
        ("Practitioner/p1", "userPractitionerId", "p1"),
        ("PractitionerRole/r1", "userPractitionerRoleId", "r1"),
        ("Patient/pt1", "userPatientId", "pt1"),
        ("RelatedPerson/rp1", "userRelatedPersonId", "rp1"),
        ("https://ehr.example/fhir/PractitionerRole/r2", "userPractitionerRoleId", "r2"),
    ],
)
def test_user_tokens_come_from_user_id(user_id: str, token: str, expected: str) -> None:
    assert fill_template(f"X?id={{{{{token}}}}}", {"userId": user_id}) == f"X?id={expected}"


def test_all_discovery_templates_fill_from_an_order_sign_context() -> None:
    filled = {key: fill_template(t, CONTEXT) for key, t in PREFETCH_TEMPLATES.items()}
    assert filled["patient"] == "Patient/ava"
    assert filled["observations"] == "Observation?patient=ava&category=laboratory"
    assert filled["practitionerRole"] == "PractitionerRole?_id=ava-role&_include=PractitionerRole:practitioner"
    assert filled["practitioner"] is None  # the user is a PractitionerRole, not a Practitioner


def test_several_context_tokens_and_spaces_inside_braces() -> None:
    template = "Encounter?patient={{ context.patientId }}&_id={{context.encounterId}}"
    assert fill_template(template, CONTEXT) == "Encounter?patient=ava&_id=enc-1"


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("Patient/{{context.patientId}}", {}),
        ("Patient/{{context.patientId}}", {"patientId": 42}),
        ("Patient/{{context.patientId}}", {"patientId": {"id": "x"}}),
        ("Patient/{{context.patientId}}", {"patientId": None}),
        ("X?a={{context.draftOrders.id}}", {"draftOrders": {"id": "x"}}),
        ("X?a={{context.userId.id}}", CONTEXT),
        ("X?a={{patientId}}", CONTEXT),
        ("X?a={{userPractitionerId}}", {"userId": "PractitionerRole/r1"}),
        ("X?a={{userPractitionerId}}", {"userId": "p1"}),
        ("X?a={{userPractitionerId}}", {"userId": "Device/p1"}),
        ("X?a={{userPractitionerId}}", {"userId": "a/Practitioner/p1"}),
        ("X?a={{userPractitionerId}}", {"userId": "Practitioner/"}),
        ("X?a={{userPractitionerId}}", {"userId": ["Practitioner/p1"]}),
        ("Patient/{{context.patientId", CONTEXT),
        ("Patient/context.patientId}}", CONTEXT),
    ],
)
def test_unfillable_templates_are_not_applicable(template: str, context: dict[str, Any]) -> None:
    assert fill_template(template, context) is None


@pytest.mark.parametrize(
    "value",
    ["a&b", "a/b", "a?b", "a#b", "a b", "a\tb", "a\r\nX-Evil: 1", "a,b", "a;b", "a=b", "a%26b", "a\\b", ".", "..",
     "", "x" * 257, "a\x00b"],
)
def test_values_that_would_change_the_query_are_refused(value: str) -> None:
    assert fill_template("Condition?patient={{context.patientId}}&status=active", {"patientId": value}) is None
    assert fill_template("Patient/{{context.patientId}}", {"patientId": value}) is None


def test_substituted_values_are_url_encoded() -> None:
    assert fill_template("Patient/{{context.patientId}}", {"patientId": "a:b|c+d"}) == "Patient/a%3Ab%7Cc%2Bd"


def test_user_id_value_is_checked_like_any_other() -> None:
    assert fill_template("X?_id={{userPractitionerRoleId}}", {"userId": "PractitionerRole/a&b=c"}) is None


# ---------------------------------------------------------------- prefetch shapes (no server involved)


def test_prefetched_resource_and_bundle_are_used_without_fetching(fake: FakeFhir) -> None:
    result = run(["patient", "conditions"], prefetch={"patient": PATIENT, "conditions": bundle(CONDITION)})
    assert result.origin == {"patient": "prefetch", "conditions": "prefetch"}
    assert result.resources == {"patient": [PATIENT], "conditions": [CONDITION]}
    assert result.failed == {} and fake.requests == []
    assert result.fetch_seconds == 0.0


def test_single_resource_of_the_searched_type_is_accepted_for_a_search_key() -> None:
    result = run(["conditions"], prefetch={"conditions": CONDITION}, fhir_server=None)
    assert result.origin == {"conditions": "prefetch"} and result.resources == {"conditions": [CONDITION]}


def test_null_prefetch_means_queried_and_empty(fake: FakeFhir) -> None:
    result = run(["conditions"], prefetch={"conditions": None})
    assert result.origin == {"conditions": "prefetch"} and result.resources == {"conditions": []}
    assert fake.requests == []


def test_bundle_entries_without_resource_are_skipped() -> None:
    value = {"resourceType": "Bundle", "entry": [{"fullUrl": "x"}, "junk", {"resource": "x"}, {"resource": CONDITION}]}
    result = run(["conditions"], prefetch={"conditions": value}, fhir_server=None)
    assert result.resources == {"conditions": [CONDITION]} and result.origin["conditions"] == "prefetch"


def test_bundle_with_only_a_warning_outcome_keeps_its_data() -> None:
    value = bundle(CONDITION)
    value["entry"].append({"resource": outcome("warning"), "search": {"mode": "outcome"}})
    result = run(["conditions"], prefetch={"conditions": value}, fhir_server=None)
    assert result.resources == {"conditions": [CONDITION]} and result.origin["conditions"] == "prefetch"


@pytest.mark.parametrize(
    ("value", "note"),
    [
        (outcome(), "prefetch-operation-outcome"),
        (bundle(outcome()), "prefetch-operation-outcome"),
        (bundle(CONDITION, {"resourceType": "OperationOutcome"}), "prefetch-operation-outcome"),
        ("Condition/c1", "prefetch-wrong-type"),
        (42, "prefetch-wrong-type"),
        ([CONDITION], "prefetch-wrong-type"),
        (True, "prefetch-wrong-type"),
        ({"id": "c1"}, "prefetch-not-a-resource"),
        ({"resourceType": "Bundle", "entry": {"resource": CONDITION}}, "prefetch-bad-bundle"),
        (PATIENT, "prefetch-wrong-resource-type"),
    ],
)
def test_unusable_prefetch_is_fetched_instead(fake: FakeFhir, value: Any, note: str) -> None:
    fake.json(f"{BASE}/Condition?patient=ava", bundle(CONDITION))
    result = run(["conditions"], prefetch={"conditions": value})
    assert result.origin == {"conditions": "fetched"}
    assert result.resources == {"conditions": [CONDITION]}
    assert result.notes == {"conditions": note}
    assert fake.urls() == [f"{BASE}/Condition?patient=ava"]


def test_unusable_prefetch_without_a_server_fails() -> None:
    result = run(["patient"], prefetch={"patient": outcome()}, fhir_server=None)
    assert result.origin == {"patient": "failed"} and result.failed == {"patient": "no-fhir-server"}
    assert result.missing_required(REQUIRED_PREFETCH_KEYS) == ["patient"]


def test_missing_key_without_server_fails_but_others_are_kept() -> None:
    result = run(["patient", "conditions"], prefetch={"patient": PATIENT}, fhir_server=None)
    assert result.origin == {"patient": "prefetch", "conditions": "failed"}
    assert result.failed == {"conditions": "no-fhir-server"}
    assert result.missing_required(REQUIRED_PREFETCH_KEYS) == []


def test_unfillable_missing_key_is_not_applicable_and_not_fetched(fake: FakeFhir) -> None:
    result = run(["practitioner"])
    assert result.origin == {"practitioner": "not-applicable"} and result.resources == {"practitioner": []}
    assert result.failed == {} and fake.requests == []


def test_prefetch_is_used_even_when_the_template_cannot_be_filled() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "p9"}
    result = run(["practitioner"], prefetch={"practitioner": practitioner}, fhir_server=None)
    assert result.origin == {"practitioner": "prefetch"} and result.resources["practitioner"] == [practitioner]


def test_unknown_keys_are_a_caller_error() -> None:
    with pytest.raises(ValueError):
        run(["nope"])


def test_missing_required_counts_empty_data_as_missing() -> None:
    result = run(["patient"], prefetch={"patient": None}, fhir_server=None)
    assert result.origin == {"patient": "prefetch"}
    assert result.missing_required(frozenset({"patient"})) == ["patient"]


# ---------------------------------------------------------------- fallback to the FHIR server


def test_only_missing_keys_are_fetched(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Coverage?patient=ava&status=active", bundle({"resourceType": "Coverage", "id": "cov"}))
    result = run(["patient", "coverage", "conditions"], prefetch={"patient": PATIENT, "conditions": None})
    assert fake.urls() == [f"{BASE}/Coverage?patient=ava&status=active"]
    assert result.origin == {"patient": "prefetch", "conditions": "prefetch", "coverage": "fetched"}
    assert result.resources["coverage"] == [{"resourceType": "Coverage", "id": "cov"}]
    assert result.fetch_seconds > 0


def test_bearer_token_and_fhir_accept_header_are_sent(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Patient/ava", PATIENT)
    run(["patient"])
    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/fhir+json"


def test_no_authorization_header_without_a_token(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Patient/ava", PATIENT)
    result = run(["patient"], token=None)
    assert result.origin == {"patient": "fetched"}
    assert "Authorization" not in fake.requests[0].headers


@pytest.mark.parametrize("server", [f"{BASE}/", BASE, f"{BASE}//"])
def test_server_base_with_or_without_trailing_slash(fake: FakeFhir, server: str) -> None:
    fake.json(f"{BASE}/Patient/ava", PATIENT)
    assert run(["patient"], fhir_server=server).resources == {"patient": [PATIENT]}


@pytest.mark.parametrize("server", ["ftp://fhir.test/r4", "fhir.test/r4", "/r4", "http://", "http://u:p@fhir.test/r4"])
def test_unusable_server_url_fails_every_missing_key(fake: FakeFhir, server: str) -> None:
    result = run(["patient", "conditions"], fhir_server=server)
    assert result.failed == {"patient": "bad-fhir-server", "conditions": "bad-fhir-server"}
    assert fake.requests == []


def test_read_404_is_empty_not_a_failure(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Patient/ava", outcome(), status=404)
    result = run(["patient"])
    assert result.origin == {"patient": "fetched"} and result.resources == {"patient": []}
    assert result.failed == {}
    assert result.missing_required(REQUIRED_PREFETCH_KEYS) == ["patient"]


@pytest.mark.parametrize(
    ("status", "body", "content_type", "reason"),
    [
        (500, b'{"resourceType": "OperationOutcome"}', "application/fhir+json", "http-500"),
        (503, b"", "text/plain", "http-503"),
        (401, b"", "text/plain", "http-401"),
        (403, b"", "text/plain", "http-403"),
        (404, b"", "text/plain", "http-404"),  # 404 on a search is a failure, unlike a read
        (302, b"", "text/plain", "redirect"),
        (200, b"<html><body>Login</body></html>", "text/html", "not-json"),
        (200, b'{"resourceType": "Bundle", "entry": [', "application/fhir+json", "not-json"),
        (200, b"", "application/fhir+json", "not-json"),
        (200, b"[]", "application/json", "not-fhir"),
        (200, b'{"total": 0}', "application/json", "not-fhir"),
        (200, json.dumps(outcome()).encode(), "application/fhir+json", "operation-outcome"),
        (200, json.dumps(bundle(outcome())).encode(), "application/fhir+json", "operation-outcome"),
        (200, json.dumps(PATIENT).encode(), "application/fhir+json", "wrong-resource-type"),
    ],
)
def test_search_failures_are_recorded_not_raised(
    fake: FakeFhir, status: int, body: bytes, content_type: str, reason: str
) -> None:
    fake.raw(f"{BASE}/Condition?patient=ava", body, status=status, content_type=content_type)
    result = run(["conditions"])
    assert result.origin == {"conditions": "failed"}
    assert result.failed == {"conditions": reason}
    assert result.resources == {"conditions": []}


def test_redirect_is_not_followed(fake: FakeFhir) -> None:
    fake.routes[f"{BASE}/Patient/ava"] = (302, b"", {"Location": "http://elsewhere.test/Patient/ava"})
    result = run(["patient"])
    assert result.failed == {"patient": "redirect"} and fake.urls() == [f"{BASE}/Patient/ava"]


def test_read_answered_with_another_type_fails(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Patient/ava", bundle(PATIENT))
    assert run(["patient"]).failed == {"patient": "wrong-resource-type"}


def test_warning_outcome_in_a_fetched_search_is_dropped(fake: FakeFhir) -> None:
    page = bundle(CONDITION)
    page["entry"].append({"resource": outcome("warning"), "search": {"mode": "outcome"}})
    fake.json(f"{BASE}/Condition?patient=ava", page)
    assert run(["conditions"]).resources == {"conditions": [CONDITION]}


def test_paging_across_three_pages_with_include(fake: FakeFhir) -> None:
    role = {"resourceType": "PractitionerRole", "id": "ava-role"}
    prac = {"resourceType": "Practitioner", "id": "ava-prac"}
    first = f"{BASE}/PractitionerRole?_id=ava-role&_include=PractitionerRole:practitioner"
    fake.json(first, bundle(role, next_url=f"{BASE}/?_getpages=x&_offset=1"))
    fake.json(f"{BASE}/?_getpages=x&_offset=1", bundle(prac, next_url="?_getpages=x&_offset=2"))  # relative link
    fake.json(f"{BASE}/?_getpages=x&_offset=2", bundle())
    result = run(["practitionerRole"])
    assert result.origin == {"practitionerRole": "fetched"}
    assert result.resources == {"practitionerRole": [role, prac]}
    assert len(fake.requests) == 3
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fake.requests)


def test_page_cap_fails_the_key_rather_than_truncating(fake: FakeFhir) -> None:
    for n in range(5):
        fake.json(f"{BASE}/Condition?patient=ava&page={n}" if n else f"{BASE}/Condition?patient=ava",
                  bundle(dict(CONDITION, id=f"c{n}"), next_url=f"{BASE}/Condition?patient=ava&page={n + 1}"))
    result = run(["conditions"], config=Config(fhir_max_pages=3))
    assert result.failed == {"conditions": "page-limit"} and result.resources == {"conditions": []}
    assert len(fake.requests) == 3


def test_next_link_loop_is_detected(fake: FakeFhir) -> None:
    fake.json(f"{BASE}/Condition?patient=ava", bundle(CONDITION, next_url=f"{BASE}/Condition?patient=ava&p=2"))
    fake.json(f"{BASE}/Condition?patient=ava&p=2", bundle(CONDITION, next_url=f"{BASE}/Condition?patient=ava"))
    result = run(["conditions"])
    assert result.failed == {"conditions": "page-loop"}
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "next_url",
    ["http://evil.test/r4/Condition?page=2", "https://fhir.test/r4/Condition?page=2", "http://fhir.test:8080/r4/x",
     "//evil.test/r4/Condition?page=2", "file:///etc/passwd"],
)
def test_cross_origin_next_link_is_not_followed_and_token_not_leaked(fake: FakeFhir, next_url: str) -> None:
    fake.json(f"{BASE}/Condition?patient=ava", bundle(CONDITION, next_url=next_url))
    fake.json(next_url, bundle(CONDITION))
    result = run(["conditions"])
    assert result.failed == {"conditions": "cross-origin-next"}
    assert fake.urls() == [f"{BASE}/Condition?patient=ava"]


@pytest.mark.parametrize(
    "next_path",
    ["/r4/..;/admin/Condition", "/r4/%252e%252e/admin/Condition", "/r4/%5c..%5cadmin", "/r4/..%2Fadmin",
     "/r4;jsessionid=1/Condition"],
)
def test_next_link_with_path_tricks_is_not_followed(fake: FakeFhir, next_path: str) -> None:
    """Same origin, under the allowed base as a prefix, but a path another server reads differently (item 16)."""
    next_url = f"http://fhir.test{next_path}?page=2"
    fake.json(f"{BASE}/Condition?patient=ava", bundle(CONDITION, next_url=next_url))
    result = run(["conditions"])
    assert result.failed == {"conditions": "next-not-allowed"}
    assert fake.urls() == [f"{BASE}/Condition?patient=ava"]


def test_declared_size_over_the_byte_cap_fails(fake: FakeFhir) -> None:
    conditions = [dict(CONDITION, id=f"c{n}") for n in range(200)]
    fake.json(f"{BASE}/Condition?patient=ava", bundle(*conditions))
    assert run(["conditions"], config=Config(fhir_max_response_bytes=2000)).failed == {"conditions": "too-large"}
    assert run(["conditions"]).resources == {"conditions": conditions}  # the same answer fits the default cap


def test_failure_logs_hold_neither_token_nor_patient_id(fake: FakeFhir, service_log: Callable[[], str]) -> None:
    fake.json(f"{BASE}/Patient/pid-7731", dict(PATIENT, id="pid-7731"))
    fake.raw(f"{BASE}/Condition?patient=pid-7731", b"oops pid-7731", status=500)
    result = run(["conditions", "patient"], context={"patientId": "pid-7731", "userId": "Practitioner/p"})
    assert result.failed == {"conditions": "http-500"} and result.origin["patient"] == "fetched"
    summary = [json.loads(line) for line in service_log().splitlines() if '"prefetch.summary"' in line]
    assert summary and summary[-1]["failed"] == {"conditions": "http-500"}
    assert TOKEN not in service_log() and "pid-7731" not in service_log()


def test_fetch_reference_reads_one_resource(fake: FakeFhir) -> None:
    prac = {"resourceType": "Practitioner", "id": "p2"}
    fake.json(f"{BASE}/Practitioner/p2", prac)
    assert fetch_reference("Practitioner/p2", fhir_server=BASE, access_token=TOKEN, config=_allowing_base(Config())).resources == [prac]
    bad = fetch_reference("Practitioner/a&b", fhir_server=BASE, access_token=TOKEN, config=_allowing_base(Config()))
    assert bad.failure == "bad-reference" and len(fake.requests) == 1


# ---------------------------------------------------------------- a real, misbehaving local HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Behaviour picked by the ``mode`` query parameter: fast (default), slow, hang, trickle, endless, short."""

    server: _MisbehavingServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        mode = dict(parse_qsl(urlsplit(self.path).query)).get("mode", "fast")
        self.server.seen.append(self.path)
        stop = self.server.stopping
        try:
            if mode == "slow":
                stop.wait(0.5)
                self._send(bundle(CONDITION))
            elif mode == "hang":
                stop.wait(20)
            elif mode == "trickle":
                self._head(100_000)
                while not stop.wait(0.05):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            elif mode == "endless":  # no Content-Length: the body runs until the connection closes
                self._head(None)
                chunk = b" " * 65536
                while not stop.is_set():
                    self.wfile.write(chunk)
            elif mode == "short":
                self._head(5000)
                self.wfile.write(b'{"resourceType": "Bundle"')
            else:
                self._send(bundle(CONDITION))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _head(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self._head(len(data))
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass


class _MisbehavingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stopping = threading.Event()
        self.seen: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a slow answer is the point of these tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


@pytest.fixture
def local() -> Iterator[_MisbehavingServer]:
    server = _MisbehavingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


def four_keys(mode: str) -> dict[str, str]:
    """Four search templates the local server answers in the given way."""
    return {f"k{n}": f"Condition?patient={{{{context.patientId}}}}&k={n}&mode={mode}" for n in range(4)}


FAST_BUDGET = Config(fhir_budget_seconds=1.0, fhir_connect_timeout_seconds=0.5)


def _timed(**kwargs: Any) -> tuple[PrefetchOutcome, float]:
    started = time.monotonic()
    result = run(**kwargs)
    return result, time.monotonic() - started


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fhir-prefetch")]


def test_keys_are_fetched_in_parallel(local: _MisbehavingServer) -> None:
    result, elapsed = _timed(templates=four_keys("slow"), fhir_server=local.url, config=Config())
    assert result.origin == {key: "fetched" for key in four_keys("")}
    assert all(result.resources[key] == [CONDITION] for key in four_keys(""))
    assert len(local.seen) == 4
    assert elapsed < 1.3  # four 0.5 s answers one after another would take 2 s


def test_server_that_never_answers_times_out_within_budget(local: _MisbehavingServer) -> None:
    result, elapsed = _timed(templates=four_keys("hang"), fhir_server=local.url, config=FAST_BUDGET)
    assert result.failed == {key: "timeout" for key in four_keys("")}
    assert elapsed < FAST_BUDGET.fhir_budget_seconds + 1.0


def test_trickling_server_is_cut_off_at_the_budget(local: _MisbehavingServer) -> None:
    result, elapsed = _timed(templates=four_keys("trickle"), fhir_server=local.url, config=FAST_BUDGET)
    assert result.failed == {key: "timeout" for key in four_keys("")}
    assert elapsed < FAST_BUDGET.fhir_budget_seconds + 1.0
    time.sleep(0.5)  # the workers stop reading on their own: nothing keeps a connection open past the budget
    assert _prefetch_threads() == []


def test_slow_key_does_not_spoil_the_others(local: _MisbehavingServer) -> None:
    templates = {"fast": "Condition?patient={{context.patientId}}", "slow": "Condition?patient=x&mode=hang"}
    result, elapsed = _timed(templates=templates, fhir_server=local.url, config=FAST_BUDGET)
    assert result.origin == {"fast": "fetched", "slow": "failed"} and result.failed == {"slow": "timeout"}
    assert elapsed < FAST_BUDGET.fhir_budget_seconds + 1.0


def test_body_without_length_is_capped_while_streaming(local: _MisbehavingServer) -> None:
    config = Config(fhir_max_response_bytes=1_000_000)
    result, elapsed = _timed(templates=four_keys("endless"), fhir_server=local.url, config=config)
    assert result.failed == {key: "too-large" for key in four_keys("")}
    assert elapsed < config.fhir_budget_seconds + 1.0


def test_body_shorter_than_its_length_fails(local: _MisbehavingServer) -> None:
    templates = {"conditions": "Condition?patient={{context.patientId}}&mode=short"}
    result = run(templates=templates, fhir_server=local.url, config=FAST_BUDGET)
    assert result.failed == {"conditions": "incomplete-body"}


def test_connection_refused_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        result, elapsed = _timed(keys=["patient", "conditions"], fhir_server=f"http://127.0.0.1:{port}/r4")
    assert result.failed == {"patient": "connection-error", "conditions": "connection-error"}
    assert elapsed < 1.0
