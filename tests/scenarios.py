"""Turn the shared acceptance scenarios (and our sample bundles) into CDS Hooks requests for tests.

The scenarios live outside the repository (tests/shared_data.py finds them): a test that reads one skips when
they are absent, and fails instead under PRIORAUTH_REQUIRE_SHARED=1.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import ROOT, find, missing_param, shared_path

SCENARIO_PARTS = ("acceptance", "scenarios")
EXTERNAL_PARTS = ("external",)
SAMPLE_DIR = ROOT / "sample_bundles"

#: resourceType -> the prefetch key our discovery document uses for it.
KEY_FOR_TYPE = {
    "Patient": "patient",
    "Coverage": "coverage",
    "Condition": "conditions",
    "MedicationStatement": "medicationStatements",
    "MedicationRequest": "medicationRequests",
    "MedicationDispense": "medicationDispenses",
    "Observation": "observations",
    "PractitionerRole": "practitionerRole",
    "Practitioner": "practitioner",
    "AllergyIntolerance": "allergies",
    "Procedure": "procedures",
}
SEARCH_KEYS = {
    "medicationDispenses",
    "diseaseStatus",
    "coverage",
    "conditions",
    "medicationStatements",
    "medicationRequests",
    "observations",
    "practitionerRole",
    "allergies",
    "procedures",
}


def _read_all(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def load_scenarios() -> list[dict[str, Any]]:
    """Every acceptance scenario; inside a test (or at import: the module skips) when they may be absent."""
    return _read_all(shared_path(*SCENARIO_PARTS))


def scenario(name: str) -> dict[str, Any]:
    """One acceptance scenario by id; skips the calling test when the shared folder is absent."""
    return json.loads((shared_path(*SCENARIO_PARTS) / f"{name}.json").read_text())


def scenario_params(keep: Callable[[dict[str, Any]], bool] = lambda sc: True) -> list[Any]:
    """Scenarios for ``parametrize`` (id = scenario id), or one skipped placeholder when they are absent."""
    directory = find(*SCENARIO_PARTS)
    if directory is None:
        return [missing_param(*SCENARIO_PARTS)]
    return [pytest.param(sc, id=sc["id"]) for sc in _read_all(directory) if keep(sc)]


def external_dir() -> Path:
    """The folder of external (published) hook requests; skips the calling test when absent."""
    return shared_path(*EXTERNAL_PARTS)


def external_params() -> list[Any]:
    """External request file names for ``parametrize``, or one skipped placeholder when they are absent."""
    directory = find(*EXTERNAL_PARTS)
    if directory is None:
        return [missing_param(*EXTERNAL_PARTS)]
    return sorted(p.name for p in directory.glob("*.json"))


def prefetch_for(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Group a chart into our prefetch keys, as a CDS client filling our templates would."""
    prefetch: dict[str, Any] = {key: None for key in KEY_FOR_TYPE.values()}
    for key in SEARCH_KEYS:
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    for resource in resources:
        key = KEY_FOR_TYPE.get(resource["resourceType"])
        if key is None:
            continue
        if key in SEARCH_KEYS:
            bundle = prefetch[key]
            bundle.setdefault("entry", []).append({"resource": resource})
            bundle["total"] += 1
        else:
            prefetch[key] = resource
    if prefetch.get("practitionerRole", {}).get("entry") and prefetch.get("practitioner"):
        prefetch["practitionerRole"]["entry"].append(
            {"resource": prefetch.pop("practitioner"), "search": {"mode": "include"}}
        )
    return prefetch


def request_for(
    sc: dict[str, Any], *, prefetch: bool = True, fhir_server: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """The hook request the acceptance EHR would send for a scenario."""
    context: dict[str, Any] = {
        "userId": sc["userId"],
        "patientId": sc["patientId"],
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in sc["draftOrders"]],
        },
    }
    if sc["hook"] == "order-select":
        context["selections"] = sc.get("selections") or [f"{r['resourceType']}/{r['id']}" for r in sc["draftOrders"]]
    request: dict[str, Any] = {"hook": sc["hook"], "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        request["fhirServer"] = fhir_server
    if token:
        request["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "priorauth-cds",
        }
    if prefetch:
        request["prefetch"] = prefetch_for(sc["resources"])
    return request


def evaluations(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """order ref -> the priorauth-cds.evaluation extension of its card."""
    found = {}
    for card in body.get("cards", []):
        ev = (card.get("extension") or {}).get("priorauth-cds.evaluation")
        if ev:
            found[ev["order"]] = ev
    return found
