"""The services this CDS service offers and their prefetch templates (CDS Hooks 2.0 discovery).

Templates use only CDS Hooks 2.0 prefetch tokens: root-level context fields (``context.patientId``)
and the ``user*Id`` tokens derived from ``context.userId``. A client that cannot fill a token leaves
the key out; the service then fetches it itself when the token can be filled from the request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import Registry


def _response_codes() -> str:
    """``system|code`` tokens of the shared response observations, comma-separated (one FHIR ``code`` search)."""
    from fhir_mappings.codes import load_code_tables

    return ",".join(load_code_tables().response_search_codes())


#: key -> FHIR query; what the policy reads on every call.
PREFETCH_TEMPLATES: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "coverage": "Coverage?patient={{context.patientId}}&status=active",
    "conditions": "Condition?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&category=laboratory",
    # Disease-status / response-to-therapy assessments (II.A.2): by code, from the shared response table
    # (fhir_mappings/tables/therapy_response.csv), since mCODE's CancerDiseaseStatus fixes the code, not a category.
    "diseaseStatus": f"Observation?patient={{{{context.patientId}}}}&code={_response_codes()}",
    "medicationDispenses": "MedicationDispense?patient={{context.patientId}}",
    "practitionerRole": "PractitionerRole?_id={{userPractitionerRoleId}}&_include=PractitionerRole:practitioner",
    "practitioner": "Practitioner/{{userPractitionerId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    # Transplants (and other procedures a pack's procedures.csv names): received or scheduled.
    "procedures": "Procedure?patient={{context.patientId}}",
    # Da Vinci DTR: the clinician's completed questionnaires for this patient; answers about the order count as
    # evidence (fhir_mappings.answers). Optional: when it cannot be read, answers are simply not used.
    "questionnaireResponses": "QuestionnaireResponse?subject=Patient/{{context.patientId}}&status=completed,amended",
}

#: Prefetch keys holding DTR QuestionnaireResponses (evidence when present, never "unavailable" chart data).
ANSWER_KEYS: frozenset[str] = frozenset({"questionnaireResponses"})

#: Keys whose absence makes any decision impossible (412 when they cannot be obtained).
REQUIRED_PREFETCH_KEYS: frozenset[str] = frozenset({"patient"})

CRD_VERSION = "2.1.0"


def crd_configuration_options(policy_id: str, drug: str) -> list[dict[str, Any]]:
    """Da Vinci CRD configuration options a service honours (``davinci-crd.configuration``), in its pack's words;
    the codes are the CRD card-type codes (CodeSystem http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp) plus
    max-cards."""
    return [
        {
            "code": "coverage-info",
            "type": "boolean",
            "name": "Coverage information",
            "description": f"Return the {policy_id} evaluation card and coverage-information systemActions.",
            "default": True,
        },
        {
            "code": "therapy-alternatives-req",
            "type": "boolean",
            "name": "Required alternatives",
            "description": (
                f"Return one-click fixes to the {drug} order (the generic, missing companion drugs, fewer tablets) "
                "as suggestions."
            ),
            "default": True,
        },
        {
            "code": "max-cards",
            "type": "integer",
            "name": "Maximum cards",
            "description": "Return at most this many cards; evaluation cards are kept first.",
        },
    ]


class _DefaultServices(Mapping[str, dict[str, Any]]):
    """The packaged packs' services, id -> {hook, title, description}; read from the packs on first use."""

    def _services(self) -> dict[str, dict[str, Any]]:
        from .registry import default_registry  # late: the registry loads the packs (and imports this module's users)

        return {
            s.id: {"hook": s.hook, "title": s.title, "description": s.description} for s in default_registry().services
        }

    def __getitem__(self, service_id: str) -> dict[str, Any]:
        return self._services()[service_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._services())

    def __len__(self) -> int:
        return len(self._services())


#: The packaged packs' services (id -> hook, title, description); the services of a running app are those of
#: its registry (``app.extensions["priorauth_cds"].registry``), which adds the ``CDS_POLICY_DIRS`` packs.
SERVICES: Mapping[str, dict[str, Any]] = _DefaultServices()

USAGE_REQUIREMENTS = (
    "Send draft MedicationRequests coded with RxNorm. Prefetch (or FHIR read access with fhirAuthorization) "
    "to Patient, Coverage, Condition, MedicationStatement, MedicationRequest, MedicationDispense, laboratory "
    "and disease-status Observation, "
    "AllergyIntolerance and the user's PractitionerRole / Practitioner; completed DTR QuestionnaireResponses "
    "(optional) are read as the clinician's answers."
)


def hook_of(service_id: str, registry: Registry | None = None) -> str | None:
    """The hook a service answers (in ``registry``, default: the packaged packs), or None for an unknown id."""
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    return registry.hook_of(service_id)


def discovery_document(registry: Registry | None = None) -> dict[str, Any]:
    """The ``GET /cds-services`` body: every pack's services (default: the packaged packs)."""
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    services = []
    for service in registry.services:
        pack = registry.pack_of(service.id)
        policy_id, drug = (pack.policy.id, pack.policy.drug.name) if pack is not None else ("policy", "drug")
        services.append(
            {
                "hook": service.hook,
                "title": service.title,
                "description": service.description,
                "id": service.id,
                "prefetch": dict(PREFETCH_TEMPLATES),
                "usageRequirements": USAGE_REQUIREMENTS,
                "extension": {
                    "davinci-crd.version": CRD_VERSION,
                    "davinci-crd.configuration-options": crd_configuration_options(policy_id, drug),
                },
            }
        )
    return {"services": services}
