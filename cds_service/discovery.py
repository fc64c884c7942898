"""The services this CDS service offers and their prefetch templates (CDS Hooks 2.0 discovery).

Templates use only CDS Hooks 2.0 prefetch tokens: root-level context fields (``context.patientId``)
and the ``user*Id`` tokens derived from ``context.userId``. A client that cannot fill a token leaves
the key out; the service then fetches it itself when the token can be filled from the request.
"""

from __future__ import annotations

from typing import Any

#: key -> FHIR query; what the policy reads on every call.
PREFETCH_TEMPLATES: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "coverage": "Coverage?patient={{context.patientId}}&status=active",
    "conditions": "Condition?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&category=laboratory",
    "practitionerRole": "PractitionerRole?_id={{userPractitionerRoleId}}&_include=PractitionerRole:practitioner",
    "practitioner": "Practitioner/{{userPractitionerId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
}

#: Keys whose absence makes any decision impossible (412 when they cannot be obtained).
REQUIRED_PREFETCH_KEYS: frozenset[str] = frozenset({"patient"})

CRD_VERSION = "2.1.0"

#: Da Vinci CRD configuration options this service honours (``davinci-crd.configuration``); the codes are
#: the CRD card-type codes (CodeSystem http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp) plus max-cards.
CRD_CONFIGURATION_OPTIONS: list[dict[str, Any]] = [
    {
        "code": "coverage-info",
        "type": "boolean",
        "name": "Coverage information",
        "description": "Return the CP.PHAR.63 evaluation card and coverage-information systemActions.",
        "default": True,
    },
    {
        "code": "therapy-alternatives-req",
        "type": "boolean",
        "name": "Required alternatives",
        "description": "Return one-click fixes (generic everolimus, missing companion drugs) as suggestions.",
        "default": True,
    },
    {
        "code": "max-cards",
        "type": "integer",
        "name": "Maximum cards",
        "description": "Return at most this many cards; evaluation cards are kept first.",
    },
]

SERVICES: dict[str, dict[str, Any]] = {
    "everolimus-order-sign": {
        "hook": "order-sign",
        "title": "Everolimus prior-authorization check (CP.PHAR.63)",
        "description": (
            "Checks draft everolimus orders (Afinitor, Afinitor Disperz, Zortress and generics) against the "
            "payer's clinical policy CP.PHAR.63 when the order is signed, returns what is missing with one-click "
            "fixes, and records a Da Vinci CRD coverage-information assertion on each evaluated order."
        ),
    },
    "everolimus-order-select": {
        "hook": "order-select",
        "title": "Everolimus prior-authorization preview (CP.PHAR.63)",
        "description": (
            "Previews the CP.PHAR.63 criteria for selected everolimus orders while the prescriber is still "
            "choosing, so the order can be fixed before it is signed."
        ),
    },
}

USAGE_REQUIREMENTS = (
    "Send draft MedicationRequests coded with RxNorm. Prefetch (or FHIR read access with fhirAuthorization) "
    "to Patient, Coverage, Condition, MedicationStatement, MedicationRequest, laboratory Observation, "
    "AllergyIntolerance and the user's PractitionerRole / Practitioner."
)


def hook_of(service_id: str) -> str | None:
    """The hook a service answers, or None for an unknown id."""
    service = SERVICES.get(service_id)
    return service["hook"] if service else None


def discovery_document() -> dict[str, Any]:
    """The ``GET /cds-services`` body."""
    services = []
    for service_id, service in SERVICES.items():
        services.append(
            {
                "hook": service["hook"],
                "title": service["title"],
                "description": service["description"],
                "id": service_id,
                "prefetch": dict(PREFETCH_TEMPLATES),
                "usageRequirements": USAGE_REQUIREMENTS,
                "extension": {
                    "davinci-crd.version": CRD_VERSION,
                    "davinci-crd.configuration-options": CRD_CONFIGURATION_OPTIONS,
                },
            }
        )
    return {"services": services}
