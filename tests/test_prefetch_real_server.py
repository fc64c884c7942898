"""The FHIR fallback against a real FHIR R4 server (sekmet) seeded with acceptance scenario A's record.

No prefetch is sent, so every applicable key is fetched over HTTP with the bearer token: reads,
searches with ``_include``, real paging links, a real 401 for a wrong token and a real 404.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from cds_service.config import Config
from cds_service.discovery import PREFETCH_TEMPLATES, REQUIRED_PREFETCH_KEYS
from cds_service.prefetch import PrefetchOutcome, fetch_reference, gather
from tests.fhir_server import RunningFhirServer, start_fhir_server
from tests.scenarios import scenario as scenario_named

TOKEN = "real-server-token-4b1d"
CONFIG = Config(fhir_budget_seconds=5.0)


@pytest.fixture(scope="module")
def scenario() -> dict[str, Any]:
    return scenario_named("A-met-generic-with-exemestane")


@pytest.fixture(scope="module")
def server(scenario: dict[str, Any]) -> Iterator[RunningFhirServer]:
    with start_fhir_server(scenario["resources"], TOKEN) as running:
        yield running


def _context(scenario: dict[str, Any]) -> dict[str, Any]:
    return {"patientId": scenario["patientId"], "userId": scenario["userId"], "draftOrders": {}}


def _ids(outcome: PrefetchOutcome, key: str) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in outcome.resources[key]}


def _expected(scenario: dict[str, Any], resource_type: str) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in scenario["resources"] if r["resourceType"] == resource_type}


def _gather(server: RunningFhirServer, scenario: dict[str, Any], **overrides: Any) -> PrefetchOutcome:
    arguments: dict[str, Any] = {
        "templates": PREFETCH_TEMPLATES,
        "context": _context(scenario),
        "prefetch": None,
        "fhir_server": server.base_url,
        "access_token": TOKEN,
        "config": CONFIG,
    }
    arguments.update(overrides)
    return gather(**arguments)


def test_every_applicable_key_is_fetched_with_the_token(server: RunningFhirServer, scenario: dict[str, Any]) -> None:
    outcome = _gather(server, scenario)
    assert outcome.failed == {}
    assert outcome.origin == {
        **{key: "fetched" for key in PREFETCH_TEMPLATES},
        "practitioner": "not-applicable",  # the user is a PractitionerRole; its Practitioner comes via _include
    }
    assert outcome.missing_required(REQUIRED_PREFETCH_KEYS) == []
    assert _ids(outcome, "patient") == {"Patient/ava"}
    assert _ids(outcome, "coverage") == {"Coverage/ava-cov"}
    assert _ids(outcome, "conditions") == _expected(scenario, "Condition")
    assert _ids(outcome, "observations") == _expected(scenario, "Observation")
    assert _ids(outcome, "medicationStatements") == _expected(scenario, "MedicationStatement")
    assert _ids(outcome, "practitionerRole") == {"PractitionerRole/ava-role", "Practitioner/ava-prac"}
    assert outcome.resources["medicationRequests"] == [] and outcome.resources["allergies"] == []
    assert outcome.resources["patient"][0]["birthDate"] == "1968-11-20"


def test_prefetched_keys_are_kept_and_only_the_rest_fetched(
    server: RunningFhirServer, scenario: dict[str, Any]
) -> None:
    sent_patient = {"resourceType": "Patient", "id": "ava", "birthDate": "1968-11-20"}
    outcome = _gather(server, scenario, prefetch={"patient": sent_patient, "conditions": None},
                      keys=["patient", "conditions", "coverage"])
    assert outcome.origin == {"patient": "prefetch", "conditions": "prefetch", "coverage": "fetched"}
    assert outcome.resources["patient"] == [sent_patient] and outcome.resources["conditions"] == []


def test_wrong_token_fails_every_fetched_key_with_an_auth_reason(
    server: RunningFhirServer, scenario: dict[str, Any]
) -> None:
    outcome = _gather(server, scenario, access_token="not-the-token")
    fetched_keys = [key for key in PREFETCH_TEMPLATES if key != "practitioner"]
    assert outcome.failed == {key: "http-401" for key in fetched_keys}
    assert all(outcome.resources[key] == [] for key in fetched_keys)
    assert outcome.missing_required(REQUIRED_PREFETCH_KEYS) == ["patient"]


def test_no_token_is_refused_by_the_server(server: RunningFhirServer, scenario: dict[str, Any]) -> None:
    outcome = _gather(server, scenario, access_token=None, keys=["patient"])
    assert outcome.failed == {"patient": "http-401"}


def test_real_paging_links_are_followed(server: RunningFhirServer, scenario: dict[str, Any]) -> None:
    templates = {"observations": "Observation?patient={{context.patientId}}&category=laboratory&_count=1"}
    outcome = _gather(server, scenario, templates=templates, fhir_server=server.base_url + "/")
    assert outcome.origin == {"observations": "fetched"}
    assert _ids(outcome, "observations") == _expected(scenario, "Observation")
    assert len(outcome.resources["observations"]) == len(_expected(scenario, "Observation")) == 3  # 3 pages


def test_page_cap_applies_to_real_paging(server: RunningFhirServer, scenario: dict[str, Any]) -> None:
    templates = {"observations": "Observation?patient={{context.patientId}}&_count=1"}
    outcome = _gather(server, scenario, templates=templates, config=Config(fhir_max_pages=2))
    assert outcome.failed == {"observations": "page-limit"}


def test_read_of_an_unknown_patient_is_empty(server: RunningFhirServer, scenario: dict[str, Any]) -> None:
    context = dict(_context(scenario), patientId="nobody")
    outcome = _gather(server, scenario, context=context, keys=["patient", "conditions"])
    assert outcome.origin == {"patient": "fetched", "conditions": "fetched"}
    assert outcome.resources == {"patient": [], "conditions": []}
    assert outcome.missing_required(REQUIRED_PREFETCH_KEYS) == ["patient"]


def test_fetch_reference_reads_the_practitioner(server: RunningFhirServer) -> None:
    result = fetch_reference("Practitioner/ava-prac", fhir_server=server.base_url, access_token=TOKEN, config=CONFIG)
    assert result.failure is None and [r["id"] for r in result.resources] == ["ava-prac"]
