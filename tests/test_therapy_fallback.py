"""Issue 14: the continued-therapy samples decide the same when nothing is prefetched.

A real FHIR R4 server (sekmet, tests/fhir_server.py) holds the samples' charts; each request goes without
prefetch, so the service fetches ``medicationDispenses`` (MedicationDispense?patient=) and ``diseaseStatus``
(Observation?patient=&code=loinc|97509-4,...) itself, with the bearer token.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fhir_server import RunningFhirServer, start_fhir_server
from tests.scenarios import SAMPLE_DIR, evaluations

SIGN = "/cds-services/everolimus-order-sign"
TOKEN = secrets.token_urlsafe(16)
SAMPLES = (
    "II.A-continued-responding-met.json",
    "II.A-progression-not-met.json",
    "II.A-dispense-only-renewal.json",
    "II.B-epilepsy-without-tsc.json",
)


def _request(name: str) -> dict[str, Any]:
    return json.loads((SAMPLE_DIR / name).read_text(encoding="utf-8"))


def _chart(request: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in request["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            out += [entry["resource"] for entry in value.get("entry", [])]
        else:
            out.append(value)
    return out


@pytest.fixture(scope="module")
def fhir() -> Iterator[RunningFhirServer]:
    resources = {(r["resourceType"], r["id"]): r for name in SAMPLES for r in _chart(_request(name))}
    with start_fhir_server(resources.values(), TOKEN) as server:
        yield server


def _criteria(ev: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in ev["criteria"]}


@pytest.mark.parametrize("name", SAMPLES)
def test_fallback_fetches_dispenses_and_disease_status(client: Any, fhir: RunningFhirServer, name: str) -> None:
    request = _request(name)
    expected = json.loads((SAMPLE_DIR / "expected.json").read_text(encoding="utf-8"))[name]
    fallback = copy.deepcopy(request)
    del fallback["prefetch"]
    fallback["fhirServer"] = fhir.base_url
    fallback["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "priorauth-cds",
    }
    answer = client.post(SIGN, json=fallback)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    got = evaluations(answer.get_json())
    for want in expected if isinstance(expected, list) else [expected]:
        ev = got[want["order"]]
        assert (ev["pathway"], ev["decision"]) == (want["pathway"], want["decision"])
        assert {k: v for k, v in _criteria(ev).items() if k in want["criteria"]} == want["criteria"]


def test_without_the_dispense_key_a_dispense_only_history_is_not_continued_therapy(client: Any) -> None:
    """The prefetch leaves medicationDispenses out and there is no FHIR server: the fills cannot be seen, so the
    course is 0 days (section I), and criteria decided by absent companions stay unknown, never not-met."""
    request = _request("II.A-dispense-only-renewal.json")
    del request["prefetch"]["medicationDispenses"]
    ev = next(iter(evaluations(client.post(SIGN, json=request).get_json()).values()))
    assert ev["pathway"] == "I.D"
    assert "not-met" not in _criteria(ev).values()


def test_discovery_offers_the_dispense_and_disease_status_templates(client: Any) -> None:
    service = next(s for s in client.get("/cds-services").get_json()["services"] if s["id"] == "everolimus-order-sign")
    prefetch = service["prefetch"]
    assert prefetch["medicationDispenses"] == "MedicationDispense?patient={{context.patientId}}"
    assert prefetch["diseaseStatus"].startswith("Observation?patient={{context.patientId}}&code=")
    assert "http://loinc.org|97509-4" in prefetch["diseaseStatus"].split("code=", 1)[1].split(",")
    assert prefetch["observations"].endswith("&category=laboratory")  # the receptor query is unchanged
