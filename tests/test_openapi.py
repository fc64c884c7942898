"""The OpenAPI document: valid OpenAPI 3.1, served as built, and true to what the service really answers.

Real responses (discovery, every acceptance scenario, feedback, health and each error status, including
the ones produced before a route runs) must have a documented status and media type and a body that
validates against the documented schema (JSON Schema 2020-12 via jsonschema_rs, which schemathesis
brings). Schemathesis itself (tests/test_schemathesis.py) adds generated and mutated requests.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.discovery import SERVICES
from cds_service.errors import StorageError
from cds_service.openapi import hook_request_example, openapi_document
from tests.issued import issue_cards
from tests.jwt_helpers import ec_key, jwks
from tests.scenarios import request_for, scenario_params

SIGN = "/cds-services/everolimus-order-sign"
HOOK = "/cds-services/{service_id}"
FEEDBACK = "/cds-services/{service_id}/feedback"
SCHEMA_PREFIX = "#/components/schemas/"


# ----------------------------------------------------------------------------- helpers


@cache
def validator(ref: str) -> jsonschema_rs.Validator:
    """A 2020-12 validator for a component ref, resolving refs against the whole document."""
    root = {"$ref": ref, "components": openapi_document()["components"]}
    return jsonschema_rs.Draft202012Validator(root)


def schema_errors(ref: str, body: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}"[:300] for e in validator(ref).iter_errors(body)]


def template_for(path: str) -> str:
    """The documented path template a concrete request path falls under."""
    if path.endswith("/feedback") and path.startswith("/cds-services/"):
        return FEEDBACK
    if path.startswith("/cds-services/"):
        return HOOK
    return path


def assert_documented(method: str, path: str, response: TestResponse) -> None:
    """Status documented for the operation, media type documented for the status, body valid against it."""
    path_item = openapi_document()["paths"][template_for(path)]
    operation = path_item.get(method.lower())
    if operation is None:  # an undocumented method: the path's operations document the 405 it gets
        assert response.status_code == 405, f"{method} {path} answered {response.status_code}, not 405"
        operation = next(op for key, op in path_item.items() if key in ("get", "post"))
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method} {path} answered undocumented {response.status_code}"
    content = documented.get("content")
    if content is None:
        assert not response.data, f"{method} {path} {response.status_code}: body where none is documented"
        return
    assert response.mimetype in content, f"{method} {path} {response.status_code}: undocumented {response.mimetype}"
    errors = schema_errors(content[response.mimetype]["schema"]["$ref"], response.get_json())
    assert not errors, f"{method} {path} {response.status_code}: {errors[:5]}"


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


@contextmanager
def running(config: Config) -> Iterator[Flask]:
    """An app on ``config`` whose store is disposed afterwards."""
    app = create_app(config)
    app.config["TESTING"] = True
    try:
        yield app
    finally:
        app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Flask]:
    with running(Config(database_url=f"sqlite:///{tmp_path / 'openapi.sqlite3'}", fhir_budget_seconds=1.0)) as app:
        yield app


@pytest.fixture
def client(api: Flask) -> FlaskClient:
    return api.test_client()


def feedback_body() -> dict[str, Any]:
    item = {"card": str(uuid.uuid4()), "outcome": "accepted", "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
            "outcomeTimestamp": "2021-12-11T10:05:31Z"}
    return {"feedback": [item]}


# ----------------------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_3_1() -> None:
    document = copy.deepcopy(openapi_document())
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema schemathesis ships


def test_the_meta_schema_check_rejects_a_broken_document() -> None:
    broken = copy.deepcopy(openapi_document())
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = {"content": "not an object"}
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_ref_resolves_and_every_component_is_used() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    refs = set(all_refs(document))
    assert refs and all(ref.startswith(SCHEMA_PREFIX) for ref in refs)
    names = {ref[len(SCHEMA_PREFIX):] for ref in refs}
    assert names <= set(schemas), names - set(schemas)
    assert set(schemas) <= names, f"unused components: {set(schemas) - names}"


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        (HOOK, {"200", "400", "401", "404", "405", "412", "413", "415", "503"}),
        (FEEDBACK, {"200", "400", "401", "404", "405", "413", "415", "503"}),
    ],
)
def test_body_taking_operations_document_every_status(path: str, statuses: set[str]) -> None:
    operation = openapi_document()["paths"][path]["post"]
    assert statuses <= set(operation["responses"])
    outcome = {"application/fhir+json": {"schema": {"$ref": SCHEMA_PREFIX + "OperationOutcome"}}}
    for status, response in operation["responses"].items():
        if status != "200":
            assert response["content"] == outcome, status
    assert {"cdsHooksJwt": []} in operation["security"] and {} in operation["security"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/fhir+json"}


def test_service_id_is_a_plain_string_with_the_real_ids_as_examples() -> None:
    parameter = openapi_document()["paths"][HOOK]["parameters"][0]
    assert parameter["schema"] == {"type": "string", "minLength": 1}
    assert {example["value"] for example in parameter["examples"].values()} == set(SERVICES)


def test_documented_examples_validate() -> None:
    paths = openapi_document()["paths"]
    for path in (HOOK, FEEDBACK):
        media = paths[path]["post"]["requestBody"]["content"]["application/json"]
        for example in media["examples"].values():
            assert not schema_errors(media["schema"]["$ref"], example["value"])
    outcome = openapi_document()["components"]["schemas"]["OperationOutcome"]
    assert not schema_errors(SCHEMA_PREFIX + "OperationOutcome", outcome["examples"][0])


def test_schemas_reject_what_the_writer_never_emits() -> None:
    """The response schemas are not vacuous: nulls, empty members, long summaries and unknown members fail."""
    card = {"summary": "s", "indicator": "info", "source": {"label": "x"}, "uuid": "u"}
    assert not schema_errors(SCHEMA_PREFIX + "HookResponse", {"cards": [card]})
    without_uuid = {k: v for k, v in card.items() if k != "uuid"}
    for bad in ({**card, "detail": None}, {**card, "suggestions": []}, {**card, "summary": "x" * 140},
                {**card, "indicator": "hard-stop"}, {**card, "colour": "red"}, without_uuid):
        assert schema_errors(SCHEMA_PREFIX + "HookResponse", {"cards": [bad]}), bad
    assert schema_errors(SCHEMA_PREFIX + "HookResponse", {})
    assert schema_errors(SCHEMA_PREFIX + "OperationOutcome", {"resourceType": "OperationOutcome", "issue": []})


# ----------------------------------------------------------------------------- real responses


def test_served_document_is_the_built_one(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == openapi_document()
    assert_documented("GET", "/openapi.json", response)


def test_discovery_and_health_conform(client: FlaskClient) -> None:
    assert_documented("GET", "/cds-services", client.get("/cds-services"))
    assert_documented("GET", "/healthz", client.get("/healthz"))


def test_health_when_storage_is_down_conforms(api: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.extensions["priorauth_cds"].store, "ping", lambda: False)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert_documented("GET", "/healthz", response)


@pytest.mark.parametrize("sc", scenario_params())
def test_scenario_responses_conform(client: FlaskClient, sc: dict[str, Any]) -> None:
    service = next(service_id for service_id, s in SERVICES.items() if s["hook"] == sc["hook"])
    response = client.post(f"/cds-services/{service}", json=request_for(sc))
    assert response.status_code == 200
    assert_documented("POST", f"/cds-services/{service}", response)


@pytest.mark.parametrize("service_id", sorted(SERVICES))
def test_documented_example_gets_an_evaluation(client: FlaskClient, service_id: str) -> None:
    response = client.post(f"/cds-services/{service_id}", json=hook_request_example(service_id))
    assert response.status_code == 200
    assert_documented("POST", f"/cds-services/{service_id}", response)
    evaluation = response.get_json()["cards"][0]["extension"]["priorauth-cds.evaluation"]
    assert evaluation["order"] == "MedicationRequest/example-order" and evaluation["lineOfBusiness"] == "medicaid"


def test_feedback_responses_conform(client: FlaskClient) -> None:
    path = f"{SIGN}/feedback"
    body = feedback_body()
    assert_documented("POST", path, client.post(path, json=body))  # a card this service never issued: 404
    issue_cards(client.application.extensions["priorauth_cds"].store, body["feedback"][0]["card"])
    first = client.post(path, json=body)
    assert first.status_code == 200 and first.get_json() == {"received": 1, "stored": 1}
    assert_documented("POST", path, first)
    assert_documented("POST", path, client.post(path, json=body))  # a duplicate: stored 0
    assert_documented("POST", path, client.post(path, json={"feedback": []}))


def _without_patient() -> dict[str, Any]:
    request = hook_request_example("everolimus-order-sign")
    del request["prefetch"]["patient"]
    return request


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", SIGN, {"data": b"{not json", "content_type": "application/json"}, 400),
        ("POST", SIGN, {"data": b"", "content_type": "application/json"}, 400),
        ("POST", SIGN, {"json": {"hookInstance": "x"}}, 400),
        ("POST", SIGN, {"json": {**hook_request_example("everolimus-order-select")}}, 400),
        ("POST", "/cds-services/no-such-service", {"json": {}}, 404),
        ("POST", "/cds-services/no-such-service/feedback", {"json": {}}, 404),
        ("GET", SIGN, {}, 405),
        ("DELETE", f"{SIGN}/feedback", {}, 405),
        ("POST", "/healthz", {}, 405),
        ("PUT", "/cds-services", {}, 405),
        ("POST", "/openapi.json", {}, 405),
        ("POST", SIGN, {"json": _without_patient()}, 412),
        ("POST", SIGN, {"data": b"hook=order-sign", "content_type": "application/x-www-form-urlencoded"}, 415),
        ("POST", f"{SIGN}/feedback", {"data": b"<feedback/>", "content_type": "text/xml"}, 415),
    ],
)
def test_error_responses_conform(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = client.open(path, method=method, **kwargs)
    assert response.status_code == status
    assert_documented(method, path, response)


@pytest.mark.parametrize("path", [SIGN, f"{SIGN}/feedback"])
def test_too_large_conforms(tmp_path: Path, path: str) -> None:
    with running(Config(database_url=f"sqlite:///{tmp_path / 'small.sqlite3'}", max_body_bytes=64)) as app:
        response = app.test_client().post(path, json=hook_request_example("everolimus-order-sign"))
        assert response.status_code == 413
        assert_documented("POST", path, response)


@pytest.mark.parametrize("path", [SIGN, f"{SIGN}/feedback"])
def test_unauthorized_conforms(tmp_path: Path, path: str) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'jwt.sqlite3'}",
                    trusted_issuers={"https://ehr.example.org": jwks(ec_key("ES384"))},
                    public_base_url="http://localhost")
    with running(config) as app:
        response = app.test_client().post(path, json=hook_request_example("everolimus-order-sign"))
        assert response.status_code == 401
        assert_documented("POST", path, response)


def test_storage_failures_conform(api: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise StorageError("storage unavailable")

    store = api.extensions["priorauth_cds"].store
    body = feedback_body()
    issue_cards(store, body["feedback"][0]["card"])
    monkeypatch.setattr(store, "record_assertions", fail)
    monkeypatch.setattr(store, "record_response", fail)
    monkeypatch.setattr(store, "record_feedback", fail)
    hook = client.post(SIGN, json=hook_request_example("everolimus-order-sign"))
    feedback = client.post(f"{SIGN}/feedback", json=body)
    assert (hook.status_code, feedback.status_code) == (503, 503)
    assert_documented("POST", SIGN, hook)
    assert_documented("POST", f"{SIGN}/feedback", feedback)


def test_preflight_conforms(client: FlaskClient) -> None:
    for path in ("/cds-services", SIGN, f"{SIGN}/feedback", "/healthz", "/openapi.json"):
        assert_documented("OPTIONS", path, client.options(path, headers={"Origin": "https://ehr.example.org"}))


def test_method_not_allowed_lists_the_allowed_methods(client: FlaskClient) -> None:
    assert client.get(SIGN).headers.get("Allow")
