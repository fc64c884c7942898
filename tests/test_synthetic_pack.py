"""A second, fictional policy pack (tests/packs/zentorimab) served beside CP.PHAR.63 through CDS_POLICY_DIRS.

Zentorimab, its brands Zentora and Zentora Sprinkle, quelvastin, the diseases and every code here are fictional
(synthetic test data): the pack proves that a new drug policy is data only — its folder adds two services, and
each pack evaluates only its own drug's orders.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Config
from tests.scenarios import evaluations, prefetch_for

PACKS = Path(__file__).parent / "packs"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"  # matching is by RxNorm system; Z-codes are fictional
TEST_DX = "urn:example:zentorimab-test-diagnoses"  # the pack's own fictional code system (tables/systems.csv)
SIGN = "/cds-services/zentorimab-order-sign"
EVEROLIMUS_SIGN = "/cds-services/everolimus-order-sign"
PATIENT = "zp-patient"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    database = tmp_path_factory.mktemp("zentorimab") / "audit.sqlite3"
    return create_app(Config(database_url=f"sqlite:///{database}", policy_dirs=(str(PACKS),)))


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    yield app.test_client()


def order(code: str, display: str, mg: float, order_id: str = "zp-order") -> dict[str, Any]:
    """A draft order of ``mg`` once a day (structured Dosage: the dose limits read doseQuantity and timing)."""
    dose = {
        "text": f"{mg:g} mg by mouth once daily",
        "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org",
                                          "code": "mg"}}],
    }
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "dosageInstruction": [dose],
    }


GENERIC_10 = ("Z1003", "zentorimab 10 MG Oral Tablet")
BRAND_10 = ("Z1004", "zentorimab 10 MG Oral Tablet [Zentora]")
SPRINKLE_2 = ("Z1011", "zentorimab 2 MG Oral Granules [Zentora Sprinkle]")
EVEROLIMUS_10 = ("845507", "everolimus 10 MG Oral Tablet")


def chart(*, birth: str = "1970-05-01", disease: str = "ZDX-A", companion: bool = True) -> list[dict[str, Any]]:
    """A Medicaid member with a fictional disease, an oncologist prescriber and (optionally) quelvastin."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": birth},
        {
            "resourceType": "Coverage",
            "id": "zp-coverage",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{PATIENT}"},
            "payor": [{"display": "Health Plan"}],
            "class": [
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                         "code": "plan"}]},
                    "value": "MCD-TEST",
                }
            ],
        },
        {
            "resourceType": "Condition",
            "id": "zp-condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": "confirmed"}]},
            "code": {"coding": [{"system": TEST_DX, "code": disease, "display": "Fictional disease"}]},
            "subject": {"reference": f"Patient/{PATIENT}"},
        },
        {
            "resourceType": "PractitionerRole",
            "id": "zp-role",
            "practitioner": {"reference": "Practitioner/zp-prescriber"},
            "specialty": [{"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "207RX0202X"}]}],
        },
        {"resourceType": "Practitioner", "id": "zp-prescriber"},
    ]
    if companion:
        resources.append(
            {
                "resourceType": "MedicationStatement",
                "id": "zp-quelvastin",
                "status": "active",
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "Z2001",
                                                          "display": "quelvastin 50 MG Oral Tablet"}]},
                "subject": {"reference": f"Patient/{PATIENT}"},
                "effectivePeriod": {"start": "2026-01-01"},
            }
        )
    return resources


def request(draft: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "PractitionerRole/zp-role",
            "patientId": PATIENT,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        },
        "prefetch": prefetch_for(resources),
    }


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, data=orjson.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    result: dict[str, Any] = response.get_json()
    return result


def evaluate(client: FlaskClient, draft: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    body = post(client, SIGN, request(draft, resources))
    found = evaluations(body)
    assert list(found) == [f"MedicationRequest/{draft['id']}"], body
    evaluation = dict(found[f"MedicationRequest/{draft['id']}"])  # a copy: "_body" holds the original
    evaluation["_body"] = body
    return evaluation


def statuses(evaluation: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            found[item["id"]] = item["status"]
            walk(item.get("criteria", []))

    walk(evaluation["criteria"])
    return found


def criterion(evaluation: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    def walk(items: list[dict[str, Any]]) -> dict[str, Any] | None:
        for item in items:
            if item["id"] == criterion_id:
                return item
            inner = walk(item.get("criteria", []))
            if inner is not None:
                return inner
        return None

    found = walk(evaluation["criteria"])
    assert found is not None, criterion_id
    return found


def suggestion_labels(body: dict[str, Any]) -> list[str]:
    return [s["label"] for card in body.get("cards", []) for s in card.get("suggestions", [])]


# ----------------------------------------------------------------------------- discovery


def test_discovery_lists_both_packs_services(client: FlaskClient) -> None:
    services = client.get("/cds-services").get_json()["services"]
    ids = [service["id"] for service in services]
    assert ids == ["everolimus-order-sign", "everolimus-order-select", "zentorimab-order-sign",
                   "zentorimab-order-select"]
    by_id = {service["id"]: service for service in services}
    assert by_id["zentorimab-order-select"]["hook"] == "order-select"
    assert "ZP.TEST.01" in by_id["zentorimab-order-sign"]["title"]
    assert by_id["zentorimab-order-sign"]["prefetch"] == by_id["everolimus-order-sign"]["prefetch"]
    enum = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert "zentorimab-order-sign" in orjson.dumps(enum).decode()


def test_unknown_service_is_still_404(client: FlaskClient) -> None:
    response = client.post("/cds-services/zentorimab-order-nope", data=b"{}", content_type="application/json")
    assert response.status_code == 404


# ----------------------------------------------------------------------------- scenarios


def test_met_case(client: FlaskClient) -> None:
    evaluation = evaluate(client, order(*GENERIC_10, 10), chart())
    assert evaluation["policy"] == "ZP.TEST.01" and evaluation["pathway"] == "I.A"
    assert evaluation["decision"] == "met", statuses(evaluation)
    assert evaluation["approvalMonths"] == 6


def test_companion_missing_creates_a_suggestion(client: FlaskClient) -> None:
    evaluation = evaluate(client, order(*GENERIC_10, 10), chart(companion=False))
    assert evaluation["decision"] == "not-met"
    assert statuses(evaluation)["I.A.6"] == "not-met"
    assert any("quelvastin 50 MG Oral Tablet" in label for label in suggestion_labels(evaluation["_body"]))


def test_dose_over_the_limit_is_not_met_with_the_numbers(client: FlaskClient) -> None:
    evaluation = evaluate(client, order(*GENERIC_10, 20), chart())
    assert evaluation["decision"] == "not-met"
    assert statuses(evaluation)["I.A.7.a"] == "not-met"
    assert "20 mg/day exceeds 10 mg/day" in orjson.dumps(evaluation["_body"]).decode()


def test_brand_ordered_with_a_generic_available_suggests_the_switch(client: FlaskClient) -> None:
    evaluation = evaluate(client, order(*BRAND_10, 10), chart())
    assert evaluation["decision"] == "not-met"
    assert statuses(evaluation)["I.A.5"] == "not-met"
    assert any("zentorimab 10 MG Oral Tablet" in label and "Zentora]" not in label
               for label in suggestion_labels(evaluation["_body"]))


def test_child_under_the_age_is_not_met(client: FlaskClient) -> None:
    evaluation = evaluate(client, order(*GENERIC_10, 10), chart(birth="2020-01-01"))
    assert evaluation["decision"] == "not-met"
    assert statuses(evaluation)["I.A.4"] == "not-met"


def test_disease_b_uses_the_other_family_and_age_limit(client: FlaskClient) -> None:
    resources = chart(birth="2022-01-01", disease="ZDX-B", companion=False)
    evaluation = evaluate(client, order(*SPRINKLE_2, 2), resources)
    assert evaluation["pathway"] == "I.B"
    assert statuses(evaluation)["I.B.1"] == "met" and statuses(evaluation)["I.B.3"] == "met"
    young = chart(birth="2025-06-01", disease="ZDX-B", companion=False)
    assert statuses(evaluate(client, order(*SPRINKLE_2, 2), young))["I.B.3"] == "not-met"


def test_each_pack_evaluates_only_its_own_drug(client: FlaskClient) -> None:
    zentorimab = request(order(*GENERIC_10, 10), chart())
    assert post(client, EVEROLIMUS_SIGN, zentorimab)["cards"] == []
    everolimus = request(order(*EVEROLIMUS_10, 10, order_id="ev-order"), chart())
    assert post(client, SIGN, everolimus)["cards"] == []
    assert evaluations(post(client, EVEROLIMUS_SIGN, everolimus))["MedicationRequest/ev-order"]["policy"] == (
        "CP.PHAR.63"
    )


def test_an_unreadable_order_is_named_in_the_packs_words(client: FlaskClient) -> None:
    draft = order(*GENERIC_10, 10)
    del draft["subject"]
    body = post(client, SIGN, request(draft, chart()))
    (card,) = body["cards"]
    assert card["summary"].startswith("Zentorimab order MedicationRequest/zp-order could not be read (subject: missing)")
    assert "ZP.TEST.01" in card["detail"] and "zentorimab" in card["detail"]
    assert "everolimus" not in orjson.dumps(body).decode().lower()
    assert evaluations(body) == {} and "systemActions" not in body
