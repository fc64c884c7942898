"""The synthetic pack's lab and procedure criteria (ZP.TEST.01 I.C), end to end through the HTTP service.

The pack declares them as data only (tests/packs/zentorimab: lab_tests.csv, procedures.csv, policy.yaml I.C); the
expectations below are read from the criteria's own wording: "≥ 2 rising values > 0.1 ng/mL in the last year",
"latest zeta marker ≤ 50 ng/mL", "bilateral zeta-gland removal".
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.test_synthetic_pack import GENERIC_10, PATIENT, app, chart, client, criterion, evaluate, order, statuses

__all__ = ["app", "client"]  # the module-scoped service of test_synthetic_pack, reused

LOINC = "http://loinc.org"  # the pack's fictional lab code ZL-1 is matched under the LOINC system, as a real one is
PROCEDURES = "urn:example:zentorimab-test-procedures"


def marker(oid: str, value: float, unit: str, day: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": "ZL-1", "display": "zeta marker"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


REMOVAL = {
    "resourceType": "Procedure",
    "id": "zp-removal",
    "status": "completed",
    "code": {"coding": [{"system": PROCEDURES, "code": "ZPX-1", "display": "Bilateral zeta-gland removal"}]},
    "subject": {"reference": f"Patient/{PATIENT}"},
    "performedDateTime": "2025-11-02",
}
RISING = [
    marker("zm-1", 0.08, "ng/mL", "2026-01-10"),
    marker("zm-2", 0.15, "ng/mL", "2026-03-10"),
    marker("zm-3", 0.4, "ug/L", "2026-05-10"),  # ug/L is ng/mL: 0.4 rises over 0.15
]


def disease_c(client: FlaskClient, extra: list[dict[str, Any]]) -> dict[str, Any]:
    draft = order(*GENERIC_10, mg=10)
    draft["authoredOn"] = "2026-06-01"
    return evaluate(client, draft, chart(disease="ZDX-C", companion=False) + extra)


def test_rising_marker_and_the_procedure_meet_pathway_c(client: FlaskClient) -> None:
    evaluation = disease_c(client, [*RISING, REMOVAL])
    assert evaluation["pathway"] == "I.C"
    assert statuses(evaluation) == {"I.C.1": "met", "I.C.2": "met", "I.C.3": "met", "I.C.4": "met"}
    assert evaluation["decision"] == "met"
    assert criterion(evaluation, "I.C.2")["evidence"] == ["Observation/zm-1", "Observation/zm-2", "Observation/zm-3"]
    assert criterion(evaluation, "I.C.4")["evidence"] == ["Procedure/zp-removal"]


def test_a_falling_latest_value_is_not_met_with_the_numbers(client: FlaskClient) -> None:
    evaluation = disease_c(client, [*RISING, marker("zm-4", 0.2, "ng/mL", "2026-05-20"), REMOVAL])
    trend = criterion(evaluation, "I.C.2")
    assert trend["status"] == "not-met"
    assert "0.15, 0.4, 0.2" in trend["note"] and "not rising" in trend["note"]
    assert evaluation["decision"] == "not-met"


def test_no_results_and_no_procedure_are_unknown_never_not_met(client: FlaskClient) -> None:
    evaluation = disease_c(client, [])
    found = statuses(evaluation)
    assert (found["I.C.2"], found["I.C.3"], found["I.C.4"]) == ("unknown", "unknown", "unknown")
    assert evaluation["decision"] == "incomplete"


def test_preliminary_and_old_results_do_not_count(client: FlaskClient) -> None:
    stale = [marker("old-1", 0.2, "ng/mL", "2024-01-01"), marker("old-2", 0.3, "ng/mL", "2024-02-01")]
    evaluation = disease_c(client, [*stale, marker("pre", 0.5, "ng/mL", "2026-05-01", status="preliminary")])
    assert criterion(evaluation, "I.C.2")["status"] == "unknown"  # outside the year, or not released


def test_a_high_latest_value_is_not_met(client: FlaskClient) -> None:
    evaluation = disease_c(client, [*RISING, marker("zm-high", 60, "ng/mL", "2026-05-30"), REMOVAL])
    assert criterion(evaluation, "I.C.3")["status"] == "not-met"
    assert criterion(evaluation, "I.C.3")["evidence"] == ["Observation/zm-high"]
