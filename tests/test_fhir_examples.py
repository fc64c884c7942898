"""Replay the official FHIR R4 examples (hl7.fhir.r4.examples 4.0.1) through the hook, as real-world input.

1. Every MedicationRequest example, sent as the one draft order with the examples' chart as prefetch, gets a
   documented 200 and no evaluation (none is everolimus).
2. Every example file, of every resource type, placed where it does not belong never gets a 5xx: in per-type
   Bundles of a few MiB as "patient" and as "conditions" (the record routes Bundle entries by type, whatever
   the key), and the first few files of each type alone as "patient" and under every other key.
3. A synthetic everolimus order with the examples' Patient and Conditions gets exactly one evaluation.

The package is fetched with npm on first use (tests/fhir_examples.py). Without npm the tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.openapi import openapi_document
from tests.fhir_examples import ExamplesUnavailable, by_type, examples_folder, load
from tests.scenarios import SEARCH_KEYS, evaluations, prefetch_for, request_for

SIGN = "/cds-services/everolimus-order-sign"
#: Patient/example is the subject most clinical examples point at.
PATIENT_ID = "example"
CHART_TYPES = ("Condition", "MedicationStatement", "Observation")
#: Files per batch request stay under this many bytes (one larger file goes alone).
BATCH_BYTES = 4 * 1024 * 1024
#: The first files (by name) of each type that are also sent alone.
ALONE_PER_TYPE = 3
#: Larger than the biggest example (Bundle-resources.json, 35 MB) so every file is processed, not refused.
MAX_BODY_BYTES = 64 * 1024 * 1024
UNAVAILABLE = "examples-unavailable"


# ----------------------------------------------------------------------------- package and parametrization


def _groups_or_empty() -> dict[str, list[str]]:
    """resourceType -> files at collection time; empty when the package cannot be had (the fixture says why)."""
    try:
        return by_type(examples_folder())
    except ExamplesUnavailable:
        return {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    groups = _groups_or_empty() if {"medication_request_file", "resource_type"} & set(metafunc.fixturenames) else {}
    if "medication_request_file" in metafunc.fixturenames:
        metafunc.parametrize("medication_request_file", groups.get("MedicationRequest") or [UNAVAILABLE])
    if "resource_type" in metafunc.fixturenames:
        metafunc.parametrize("resource_type", sorted(groups) or [UNAVAILABLE])


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return examples_folder()
    except ExamplesUnavailable as exc:
        reason = str(exc)
    message = f"the official FHIR R4 examples could not be fetched: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so this is a failure: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def groups(folder: Path) -> dict[str, list[str]]:
    return by_type(folder)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    database = tmp_path_factory.mktemp("fhir-examples") / "examples.sqlite3"
    app = create_app(Config(database_url=f"sqlite:///{database}", max_body_bytes=MAX_BODY_BYTES,
                            rate_limit_per_minute=0))  # thousands of example calls: no 429
    app.config["TESTING"] = True
    yield app
    app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def example_patient(folder: Path) -> dict[str, Any]:
    return load(folder, f"Patient-{PATIENT_ID}.json")


@pytest.fixture(scope="module")
def chart(folder: Path, groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every Condition, MedicationStatement and Observation example (each patient's; the record sorts them)."""
    return [load(folder, name) for resource_type in CHART_TYPES for name in groups.get(resource_type, [])]


# ----------------------------------------------------------------------------- requests and checks


def everolimus_order() -> dict[str, Any]:
    """Generic everolimus 10 mg tablets (RxNorm 845507), once daily, for Patient/example."""
    return {
        "resourceType": "MedicationRequest",
        "id": "everolimus-order",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "845507",
                        "display": "everolimus 10 MG Oral Tablet"}]
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "dosageInstruction": [{"text": "10 mg by mouth once daily", "timing": {"repeat": {"frequency": 1, "period": 1,
                                                                                            "periodUnit": "d"}}}],
    }


def hook_request(patient_id: str, draft_orders: list[dict[str, Any]], prefetch: dict[str, Any]) -> dict[str, Any]:
    sc = {"hook": "order-sign", "userId": "Practitioner/example", "patientId": patient_id,
          "draftOrders": draft_orders, "resources": []}
    request = request_for(sc, prefetch=False)
    request["prefetch"] = prefetch
    return request


def post(client: FlaskClient, request: dict[str, Any]) -> TestResponse:
    return client.post(SIGN, data=orjson.dumps(request), content_type="application/json")


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": resource} for resource in resources]}


def contract_errors(response: TestResponse) -> list[str]:
    """Why the response breaks the documented contract of POST /cds-services/{id} (empty when it does not)."""
    documented = openapi_document()["paths"]["/cds-services/{service_id}"]["post"]["responses"]
    entry = documented.get(str(response.status_code))
    if entry is None:
        return [f"undocumented status {response.status_code}"]
    media = entry["content"].get(response.mimetype)
    if media is None:
        return [f"undocumented media type {response.mimetype} for {response.status_code}"]
    schema = {"$ref": media["schema"]["$ref"], "components": openapi_document()["components"]}
    errors = jsonschema_rs.Draft202012Validator(schema).iter_errors(response.get_json())
    return [error.message[:200] for error in errors]


def batches(folder: Path, names: list[str]) -> Iterator[list[str]]:
    """Consecutive runs of files whose sizes add up to at most BATCH_BYTES (a larger file alone)."""
    batch: list[str] = []
    size = 0
    for name in names:
        file_size = (folder / name).stat().st_size
        if batch and size + file_size > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(name)
        size += file_size
    if batch:
        yield batch


# ----------------------------------------------------------------------------- tests


def test_the_package_is_the_published_one(groups: dict[str, list[str]]) -> None:
    assert sum(len(names) for names in groups.values()) == 5306
    assert len(groups) == 140
    assert len(groups["MedicationRequest"]) == 40


def test_medication_request_example_as_the_draft_order(
    client: FlaskClient, folder: Path, chart: list[dict[str, Any]], medication_request_file: str
) -> None:
    order = load(folder, medication_request_file)
    assert order["resourceType"] == "MedicationRequest"
    patient_id = order.get("subject", {}).get("reference", f"Patient/{PATIENT_ID}").rsplit("/", 1)[-1]
    patient_file = folder / f"Patient-{patient_id}.json"
    patients = [load(folder, patient_file.name)] if patient_file.is_file() else []
    response = post(client, hook_request(patient_id, [order], prefetch_for(patients + chart)))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert not contract_errors(response)
    body = response.get_json()
    assert evaluations(body) == {} and "systemActions" not in body


def test_examples_under_the_wrong_prefetch_key_never_fail(
    client: FlaskClient, folder: Path, groups: dict[str, list[str]], example_patient: dict[str, Any],
    resource_type: str,
) -> None:
    names = groups[resource_type]
    problems: list[str] = []

    def check(label: str, prefetch: dict[str, Any], allowed: set[int]) -> None:
        response = post(client, hook_request(PATIENT_ID, [everolimus_order()], prefetch))
        errors = contract_errors(response)
        if response.status_code not in allowed or errors:
            problems.append(f"{label}: {response.status_code} {errors[:2]} {response.get_data(as_text=True)[:200]}")

    for batch in batches(folder, names):
        label = f"{batch[0]}..{batch[-1]} ({len(batch)} files)"
        bundle = searchset([load(folder, name) for name in batch])
        check(f"{label} in a Bundle as 'patient'", {"patient": bundle}, {200, 412})
        check(f"{label} in a Bundle as 'conditions'", {"patient": example_patient, "conditions": bundle}, {200})
    for name in names[:ALONE_PER_TYPE]:
        resource = load(folder, name)
        check(f"{name} alone as 'patient'", {"patient": resource}, {200, 412})
        check(f"{name} alone under every other key",
              {"patient": example_patient, "practitioner": resource, **dict.fromkeys(SEARCH_KEYS, resource)}, {200})
    assert not problems, "\n".join(problems[:10])


def test_synthetic_everolimus_order_with_the_examples_chart(
    client: FlaskClient, folder: Path, groups: dict[str, list[str]], example_patient: dict[str, Any]
) -> None:
    conditions = [load(folder, name) for name in groups["Condition"]]
    order = everolimus_order()
    response = post(client, hook_request(PATIENT_ID, [order], prefetch_for([example_patient, *conditions])))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert not contract_errors(response)
    body = response.get_json()
    assert list(evaluations(body)) == ["MedicationRequest/everolimus-order"]
    evaluation_cards = [card for card in body["cards"] if "priorauth-cds.evaluation" in card.get("extension", {})]
    assert len(evaluation_cards) == 1
    # The examples chart has no Coverage: no coverage is asserted, and the card says so.
    assert not body.get("systemActions")
    assert "No active Coverage is on file" in evaluation_cards[0]["detail"]
