"""HTTP behaviour through Flask's test client: discovery, the bad-input matrix, CORS, health, feedback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.issued import issue_cards
from tests.scenarios import SAMPLE_DIR, evaluations, external_dir, external_params

SIGN = "/cds-services/everolimus-order-sign"
SELECT = "/cds-services/everolimus-order-select"


def assert_outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and body["issue"][0]["severity"] == "error"
    assert "Traceback" not in response.get_data(as_text=True)
    return body


# ----------------------------------------------------------------------------- discovery


def test_discovery_lists_both_order_hooks(client: Any) -> None:
    body = client.get("/cds-services").get_json()
    hooks = {s["hook"]: s for s in body["services"]}
    assert set(hooks) == {"order-sign", "order-select"}
    for service in body["services"]:
        assert service["id"] and service["title"] and service["description"] and service["usageRequirements"]
        prefetch = service["prefetch"]
        for key in ("patient", "coverage", "conditions", "medicationStatements", "medicationRequests",
                    "observations", "practitionerRole", "practitioner", "allergies"):
            assert key in prefetch
        for template in prefetch.values():
            assert "draftOrders" not in template
            tokens = [t.strip() for t in template.replace("}}", "{{").split("{{")[1::2]]
            assert all(t.startswith("context.") and "." not in t[len("context."):] or t.startswith("user") for t in tokens)
        assert "laboratory" in prefetch["observations"]
        assert "status=active" in prefetch["coverage"]
        ext = service["extension"]
        assert ext["davinci-crd.version"]
        assert {o["code"] for o in ext["davinci-crd.configuration-options"]} >= {"max-cards"}


# ----------------------------------------------------------------------------- bad input matrix


def _sample(name: str) -> dict[str, Any]:
    """A complete request from sample_bundles/ (in the repository, so this module runs on a plain clone)."""
    request: dict[str, Any] = json.loads((SAMPLE_DIR / f"{name}.json").read_text())
    return request


def _valid() -> dict[str, Any]:
    return _sample("I.A-met-generic-with-exemestane")


def _without(path: str) -> bytes:
    body = _valid()
    target = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    del target[parts[-1]]
    return json.dumps(body).encode()


def _with(path: str, value: Any) -> bytes:
    body = _valid()
    target = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return json.dumps(body).encode()


BAD_INPUTS: list[tuple[str, str, bytes, str, int]] = [
    ("malformed JSON", SIGN, b'{"hook": "order-sign",', "application/json", 400),
    ("invalid UTF-8", SIGN, b'{"hook": "\xff\xfe"}', "application/json", 400),
    ("empty body", SIGN, b"", "application/json", 400),
    ("JSON array", SIGN, b"[]", "application/json", 400),
    ("JSON string", SIGN, b'"order-sign"', "application/json", 400),
    ("deeply nested", SIGN, b"[" * 100000 + b"]" * 100000, "application/json", 400),
    ("NaN", SIGN, b'{"hook": NaN}', "application/json", 400),
    ("missing hook", SIGN, _without("hook"), "application/json", 400),
    ("missing hookInstance", SIGN, _without("hookInstance"), "application/json", 400),
    ("missing context", SIGN, _without("context"), "application/json", 400),
    ("missing draftOrders", SIGN, _without("context.draftOrders"), "application/json", 400),
    ("missing patientId", SIGN, _without("context.patientId"), "application/json", 400),
    ("hook mismatch", SIGN, _with("hook", "order-select"), "application/json", 400),
    ("patient-view hook", SIGN, _with("hook", "patient-view"), "application/json", 400),
    ("draftOrders not a Bundle", SIGN, _with("context.draftOrders", {"resourceType": "Patient"}), "application/json", 400),
    ("draftOrders a list", SIGN, _with("context.draftOrders", []), "application/json", 400),
    ("draftOrders entry not object", SIGN, _with("context.draftOrders", {"resourceType": "Bundle", "entry": [1]}),
     "application/json", 400),
    ("context a string", SIGN, _with("context", "x"), "application/json", 400),
    ("hookInstance a number", SIGN, _with("hookInstance", 12), "application/json", 400),
    ("prefetch a list", SIGN, _with("prefetch", []), "application/json", 400),
    ("fhirAuthorization a string", SIGN, _with("fhirAuthorization", "Bearer x"), "application/json", 400),
    ("huge number", SIGN, _with("hookInstance", 10**400), "application/json", 400),
    ("NUL in hookInstance", SIGN, _with("hookInstance", "abc\u0000def"), "application/json", 400),
    ("invalid everolimus order id", SIGN, _with("context.draftOrders.entry", [
        {"resource": {**_valid()["context"]["draftOrders"]["entry"][0]["resource"], "id": "bad id/../x"}}]),
     "application/json", 400),
    ("order-select without selections", SELECT, _with("hook", "order-select"), "application/json", 400),
    ("not JSON media type", SIGN, json.dumps(_valid()).encode(), "text/plain", 415),
    ("form post", SIGN, b"a=b", "application/x-www-form-urlencoded", 415),
    ("unknown service", "/cds-services/nope", json.dumps(_valid()).encode(), "application/json", 404),
]


@pytest.mark.parametrize("name,path,body,content_type,status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_matrix(client: Any, name: str, path: str, body: bytes, content_type: str, status: int) -> None:
    response = client.post(path, data=body, content_type=content_type)
    outcome = assert_outcome(response, status)
    if status == 400:
        assert outcome["issue"][0].get("diagnostics")


def test_body_over_limit_is_413(client: Any, app: Any) -> None:
    limit = app.extensions["priorauth_cds"].config.max_body_bytes
    response = client.post(SIGN, data=b" " * (limit + 10), content_type="application/json")
    assert_outcome(response, 413)


def test_wrong_method_is_405(client: Any) -> None:
    assert_outcome(client.get(SIGN), 405)
    assert_outcome(client.put("/cds-services"), 405)


def test_unknown_path_is_404_outcome(client: Any) -> None:
    assert_outcome(client.get("/nowhere"), 404)


def test_invalid_dates_and_wrong_types_inside_resources_never_500(client: Any) -> None:
    body = _valid()
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["authoredOn"] = "2026-02-31"
    order["dosageInstruction"] = "twice a day"
    body["prefetch"]["patient"]["birthDate"] = "not-a-date"
    body["prefetch"]["conditions"]["entry"][0]["resource"]["code"] = 17
    response = client.post(SIGN, json=body)
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:300]


# ----------------------------------------------------------------------------- happy path, CORS, health


def test_order_sign_returns_evaluation_card(client: Any) -> None:
    response = client.post(SIGN, json=_valid())
    assert response.status_code == 200
    body = response.get_json()
    ev = evaluations(body)["MedicationRequest/ia-met-order-7"]
    assert ev["pathway"] == "I.A" and ev["decision"] == "met"
    assert body["systemActions"]


def test_draft_with_non_string_id_beside_everolimus_is_not_a_500(client: Any) -> None:
    body = _valid()
    body["context"]["draftOrders"]["entry"].append(
        {"resource": {"resourceType": "MedicationRequest", "id": ["x"], "status": "draft", "intent": "order"}})
    response = client.post(SIGN, json=body)
    assert response.status_code in (200, 400)


def test_no_everolimus_order_gives_empty_cards(client: Any) -> None:
    response = client.post(SIGN, json=_sample("no-everolimus"))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_cors_preflight_and_headers(client: Any) -> None:
    """Development mode (no issuers): loopback origins only by default, never "*"."""
    response = client.options(SIGN, headers={"Origin": "http://localhost:3000",
                                              "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers
    other = client.options(SIGN, headers={"Origin": "https://sandbox.cds-hooks.org",
                                           "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in client.get("/cds-services").headers


def test_cors_allowlist(tmp_path: Any) -> None:
    from cds_service.app import create_app
    from cds_service.config import Config

    app = create_app(Config(database_url=f"sqlite:///{tmp_path / 'c.sqlite3'}", cors_origins=("https://ehr.example",)))
    client = app.test_client()
    assert client.get("/cds-services", headers={"Origin": "https://ehr.example"}).headers[
        "Access-Control-Allow-Origin"] == "https://ehr.example"
    assert "Access-Control-Allow-Origin" not in client.get("/cds-services", headers={"Origin": "https://evil.example"}).headers


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"


# ----------------------------------------------------------------------------- feedback


def test_feedback_is_validated_and_idempotent(client: Any, app: Any) -> None:
    item = {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "accepted",
            "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
            "outcomeTimestamp": "2026-11-27T10:00:00Z"}
    issue_cards(app.extensions["priorauth_cds"].store, item["card"])
    first = client.post(f"{SIGN}/feedback", json={"feedback": [item]})
    again = client.post(f"{SIGN}/feedback", json={"feedback": [item]})
    assert first.status_code == 200 and again.status_code == 200
    assert first.get_json()["stored"] == 1 and again.get_json()["stored"] == 0
    assert len(app.extensions["priorauth_cds"].store.list_feedback("everolimus-order-sign")) == 1
    assert_outcome(client.post(f"{SIGN}/feedback", json={"feedback": [{"card": "x", "outcome": "maybe"}]}), 400)
    assert_outcome(client.post("/cds-services/nope/feedback", json={"feedback": [item]}), 404)


# ----------------------------------------------------------------------------- external requests


#: What each published request must get, per service it is posted to (SOURCES.md in the shared folder says what each
#: file holds), reasoned from the file, not read off the service: a request without ``hook`` or for another hook is
#: a 400; a well-formed order-sign / order-select request without an everolimus draft is a 200 with no card. The
#: sandbox captures point their ``fhirServer`` at a loopback server that is normally not running: the everolimus
#: ones are then 412 (the Patient cannot be obtained), or 200 with the evaluation card when something answers there.
EXTERNAL_EXPECTED: dict[str, dict[str, tuple[int, ...]]] = {
    "ahrq-cqlservices-hooks-R4-Cher186_Crooks415.json": {SIGN: (400,)},  # patient-view, not an order hook
    "cds-hooks-library-order-select-R4-example-wrapped.json": {SELECT: (200,)},  # NutritionOrder + a non-everolimus drug
    "cds-hooks-library-order-select-R4-example.json": {SIGN: (400,), SELECT: (400,)},  # context only: no hook
    "cds-hooks-library-order-sign-R4-example-wrapped.json": {SIGN: (200,)},
    "cds-hooks-library-order-sign-R4-example.json": {SIGN: (400,), SELECT: (400,)},  # context only: no hook
    "crd-ig-CRDServiceRequest.json": {SIGN: (200,)},  # ServiceRequests (mammography, oxygen)
    "crd-ig-CRDServiceRequest3.json": {SIGN: (200,)},  # a CommunicationRequest
    "crd-ri-requestWithHydratedPrefetchBundle.json": {SIGN: (200,)},  # a DeviceRequest
    "inferno-order_select_hook_request.json": {SELECT: (200,)},  # RxNorm 617993 is not everolimus
    "inferno-order_sign_hook_request.json": {SIGN: (200,)},
    "sandbox-captured-order-select-no-medication.json": {SELECT: (200,)},
    "sandbox-captured-order-select-with-medication.json": {SELECT: (200, 412)},
    "sandbox-captured-order-sign-no-medication.json": {SIGN: (200,)},
    "sandbox-captured-order-sign-with-medication.json": {SIGN: (200, 412)},
}


def test_every_published_request_has_an_expectation() -> None:
    """A file added to the shared folder without an expected status here fails, rather than passing as 200-or-400."""
    assert sorted(EXTERNAL_EXPECTED) == sorted(p.name for p in external_dir().glob("*.json"))


@pytest.mark.parametrize("name", external_params())
def test_external_requests_get_their_expected_status(client: Any, name: str) -> None:
    payload = (external_dir() / name).read_bytes()
    expected = EXTERNAL_EXPECTED.get(name)
    assert expected is not None, f"{name}: no expected status in EXTERNAL_EXPECTED"
    for path, allowed in expected.items():
        response = client.post(path, data=payload, content_type="application/json")
        assert response.status_code in allowed, (name, path, response.status_code, response.get_data(as_text=True)[:300])
        body = response.get_json()
        if response.status_code == 200:
            assert isinstance(body["cards"], list)
            if allowed == (200,):  # nothing of the drug was ordered: no evaluation, no coverage assertion
                assert body["cards"] == [] and not body.get("systemActions")
        else:
            assert body["resourceType"] == "OperationOutcome"
            assert "Traceback" not in response.get_data(as_text=True)


# ----------------------------------------------------------------------------- nesting limit, boundary


def _depth(value: Any) -> int:
    """Levels of objects and arrays (a scalar is 0), counted here independently of the service's own counter."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _request_nesting_exactly(levels: int) -> dict[str, Any]:
    """The I.A sample with a request-level ``extension`` nested so the echoed part (all but prefetch) is ``levels``
    deep."""
    request = json.loads((SAMPLE_DIR / "I.A-brand-without-exemestane.json").read_text())
    base = _depth({k: v for k, v in request.items() if k != "prefetch"})
    assert base < levels
    nested: Any = "x"
    for _ in range(levels - 2):  # the request object itself is level 1, the extension object level 2
        nested = [nested]
    request["extension"] = {"example.nesting": nested}
    assert _depth({k: v for k, v in request.items() if k != "prefetch"}) == levels
    return request


def test_nesting_of_exactly_100_levels_is_answered(client: Any) -> None:
    response = client.post(SIGN, json=_request_nesting_exactly(100))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["cards"]


def test_nesting_of_101_levels_is_a_400(client: Any) -> None:
    body = assert_outcome(client.post(SIGN, json=_request_nesting_exactly(101)), 400)
    assert "100 levels" in body["issue"][0]["diagnostics"]


# ----------------------------------------------------------------------------- numbers beyond 1e12, boundary


def _criterion(evaluation: dict[str, Any], cid: str) -> dict[str, Any]:
    stack = list(evaluation["criteria"])
    while stack:
        criterion = stack.pop()
        if criterion["id"] == cid:
            return criterion
        stack += criterion.get("criteria", [])
    raise AssertionError(f"{cid} not in the evaluation")


@pytest.mark.parametrize(
    "value, status",
    [(1e12, "not-met"), (1.0000001e12, "unknown"), (1e13, "unknown"), (1e308, "unknown")],
    ids=["1e12-read", "just-above-absent", "1e13-absent", "1e308-absent"],
)
def test_a_dose_number_above_1e12_counts_as_absent(client: Any, value: float, status: str) -> None:
    """README: a number beyond 1e12 is ignored (absent), so a dose of 1e13 mg is unknown, not a dose over the limit;
    1e12 itself is a number (a dose over 20 mg/day)."""
    request = json.loads((SAMPLE_DIR / "I.A-met-generic-with-exemestane.json").read_text())
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["id"] == "ia-met-order-7"
    dosage = order["dosageInstruction"][0]
    dosage["text"] = "as directed"  # no words to read a dose from: the number alone decides
    dosage["doseAndRate"][0]["doseQuantity"]["value"] = value
    response = client.post(SIGN, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    evaluation = evaluations(response.get_json())["MedicationRequest/ia-met-order-7"]
    assert _criterion(evaluation, "I.A.9.a.i")["status"] == status


# ----------------------------------------------------------------------------- a missing key never moves the pathway


def _rcc_and_breast_cancer(drop: str | None) -> dict[str, Any]:
    """Metastatic RCC after cabozantinib (I.C met) in a member whose problem list also codes breast cancer without
    receptors or an endocrine partner (I.A not met): two coded candidates. ``drop`` leaves one prefetch key out
    (no fhirServer: it cannot be fetched)."""
    request = json.loads((SAMPLE_DIR / "I.C-rcc-after-cabozantinib.json").read_text())
    conditions = request["prefetch"]["conditions"]
    patient = request["context"]["patientId"]
    conditions["entry"].append(
        {
            "resource": {
                "resourceType": "Condition",
                "id": "tie-breast",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                    ]
                },
                "code": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/sid/icd-10-cm",
                            "code": "C50.911",
                            "display": "Malignant neoplasm of unspecified site of right female breast",
                        }
                    ]
                },
                "subject": {"reference": f"Patient/{patient}"},
                "onsetDateTime": "2025-03-01",
            }
        }
    )
    if drop is not None:
        del request["prefetch"][drop]
    assert "fhirServer" not in request
    return request


@pytest.mark.parametrize("drop", ["medicationStatements", "observations", "medicationDispenses"])
def test_a_missing_prefetch_key_does_not_move_the_pathway(client: Any, drop: str) -> None:
    """With every key the RCC pathway (met) outranks breast cancer (not met) on the decision; without the statements
    both would read "incomplete" and policy order would pick I.A. Ranking reads the facts as if every key had
    answered, so the order stays under I.C, and what the missing key feeds is unknown."""
    full = client.post(SIGN, json=_rcc_and_breast_cancer(None))
    assert full.status_code == 200
    (complete,) = evaluations(full.get_json()).values()
    assert (complete["pathway"], complete["decision"]) == ("I.C", "met")
    partial = client.post(SIGN, json=_rcc_and_breast_cancer(drop))
    assert partial.status_code == 200, partial.get_data(as_text=True)[:300]
    (evaluation,) = evaluations(partial.get_json()).values()
    assert evaluation["pathway"] == "I.C"
    if drop == "medicationStatements":  # the cabozantinib history is in that key: I.C.6 cannot be read
        assert evaluation["decision"] == "incomplete"
        assert _criterion(evaluation, "I.C.6")["status"] == "unknown"
