"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Request and response bodies are derived from the pydantic models the service itself reads and writes
(``protocol.py``, ``feedback.py``), so the document cannot drift from the code that produces the JSON;
what pydantic cannot see (the OperationOutcome error body, discovery, the evaluation extension, the
writer's "no null or empty members" rule) is stated here by hand. Every status a route answers is
listed, including the ones decided before the route runs: 405 wrong method, 413 body size, 415 media
type, 401 JWT. OpenAPI 3.1 is used because its schemas are JSON Schema 2020-12, which is what pydantic
emits, so the derived schemas go in unchanged.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from . import __version__
from .discovery import CRD_VERSION, PREFETCH_TEMPLATES, SERVICES
from .feedback import FeedbackRequest
from .protocol import ORDER_HOOKS, HookRequest, HookResponse

if TYPE_CHECKING:
    from .registry import Pack, Registry

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
FHIR_JSON = "application/fhir+json"
SCHEMAS = "#/components/schemas/"
SECURITY_SCHEME = "cdsHooksJwt"
SMART_SCHEME = "smartBackendServices"
FORM = "application/x-www-form-urlencoded"

JsonObject = dict[str, Any]


def _ref(name: str) -> JsonObject:
    return {"$ref": f"{SCHEMAS}{name}"}


# ----------------------------------------------------------------------------- schema transforms (pure)


def _walk(node: Any, visit: Callable[[JsonObject], JsonObject]) -> Any:
    """Apply ``visit`` bottom-up to every JSON object in a schema tree; returns a new tree."""
    if isinstance(node, list):
        return [_walk(item, visit) for item in node]
    if isinstance(node, dict):
        return visit({key: _walk(value, visit) for key, value in node.items()})
    return node


def _without_titles(node: JsonObject) -> JsonObject:
    """Pydantic's generated titles ("Resourcetype") are noise; a property named ``title`` is a dict and stays."""
    return {key: value for key, value in node.items() if not (key == "title" and isinstance(value, str))}


def _renamed(mapping: Mapping[str, str]) -> Callable[[JsonObject], JsonObject]:
    def visit(node: JsonObject) -> JsonObject:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMAS) and ref[len(SCHEMAS) :] in mapping:
            return {**node, "$ref": SCHEMAS + mapping[ref[len(SCHEMAS) :]]}
        return node

    return visit


def _never_null_or_empty(node: JsonObject) -> JsonObject:
    """The response writer prunes null and empty members: state that, instead of pydantic's ``anyOf [X, null]``."""
    node = {key: value for key, value in node.items() if key != "default"}
    branches = node.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            node = {**{k: v for k, v in node.items() if k != "anyOf"}, **kept[0]}
        elif len(kept) != len(branches):
            node = {**node, "anyOf": kept}
    if node.get("type") == "array":
        node.setdefault("minItems", 1)
    if node.get("type") == "string" and "enum" not in node and "const" not in node:
        node.setdefault("minLength", 1)
    return node


def model_schemas(
    models: list[type[BaseModel]],
    mode: JsonSchemaMode,
    *,
    rename: Mapping[str, str] | None = None,
    transform: Callable[[JsonObject], JsonObject] | None = None,
) -> dict[str, JsonObject]:
    """Component schemas for pydantic models (and the models they use), refs pointing into components."""
    _, top = models_json_schema([(model, mode) for model in models], ref_template=SCHEMAS + "{model}")
    rename = dict(rename or {})
    out: dict[str, JsonObject] = {}
    for name, schema in top.get("$defs", {}).items():
        schema = _walk(_walk(schema, _without_titles), _renamed(rename))
        out[rename.get(name, name)] = _walk(schema, transform) if transform else schema
    return out


def _merge(*groups: dict[str, JsonObject]) -> dict[str, JsonObject]:
    """Union of component groups; two different schemas under one name is a programming error."""
    merged: dict[str, JsonObject] = {}
    for group in groups:
        for name, schema in group.items():
            if name in merged and merged[name] != schema:
                raise ValueError(f"two different component schemas named {name!r}")
            merged[name] = schema
    return merged


# ----------------------------------------------------------------------------- component schemas


def response_schemas() -> dict[str, JsonObject]:
    """HookResponse and what it contains, as the writer (``protocol.to_json``) emits them."""
    schemas = model_schemas([HookResponse], "serialization", transform=_never_null_or_empty)
    hook_response = schemas["HookResponse"]
    hook_response["required"] = ["cards"]
    hook_response["properties"]["cards"].pop("minItems", None)  # the one empty member kept: "cards": []
    hook_response["description"] = (
        'CDS Hooks 2.0 response. No member is ever null or empty except the top-level "cards": []. '
        "By default, per evaluated order of the service's drug: one evaluation card carrying "
        "extension['priorauth-cds.evaluation'], one suggestions card when there are one-click fixes, and one "
        "systemActions update echoing the draft with the Da Vinci CRD ext-coverage-information extension. An order "
        "of the drug that is not valid FHIR gets one warning card saying it could not be read and why (no evaluation "
        "extension, no coverage assertion, no systemAction). The request's davinci-crd.configuration can turn either "
        "kind off or cap the number of cards."
    )
    for name in ("Card", "Suggestion"):
        schemas[name]["required"] = [*schemas[name].get("required", []), "uuid"]  # the writer always fills it
    schemas["Card"]["properties"]["extension"] = {
        "type": "object",
        "minProperties": 1,
        "properties": {"priorauth-cds.evaluation": _ref("EvaluationExtension")},
        "additionalProperties": True,
    }
    schemas["Action"]["properties"]["resource"] = {
        **schemas["Action"]["properties"]["resource"],
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string", "minLength": 1}},
        "description": "The FHIR resource to create or update (a draft order, echoed as received plus changes).",
    }
    schemas["EvaluationExtension"] = evaluation_extension_schema()
    return schemas


def evaluation_extension_schema() -> JsonObject:
    """``priorauth-cds.evaluation``: the machine-readable policy result (see cards.evaluation_extension)."""
    status = {"type": "string", "enum": ["met", "not-met", "unknown", "not-applicable"]}
    criterion = {
        "type": "object",
        "required": ["id", "status", "text"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1, "examples": ["I.A.1"]},
            "status": status,
            "text": {"type": "string"},
            "remedy": {"type": "string", "description": "What would satisfy the criterion (from the policy file)."},
            "note": {"type": "string", "description": "Words beside the status, e.g. '30 mg/day exceeds 20 mg/day'."},
            "applicable": {"type": "boolean", "const": False, "description": "A branch whose diagnosis is absent."},
            "review": {"type": "string", "enum": ["payer"], "description": "Settled by the payer, not the chart."},
            "evidence": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        },
    }
    return {
        "type": "object",
        "description": "The policy evaluation of one draft order; criteria are listed depth first, in policy order.",
        "required": ["order", "policy", "policyVersion", "decision"],
        "additionalProperties": False,
        "properties": {
            "order": {"type": "string", "minLength": 1, "examples": ["MedicationRequest/example-order"]},
            "policy": {"type": "string", "minLength": 1, "description": "The pack's policy id (policy.yaml policy.id)"},
            "policyVersion": {"type": "string", "minLength": 1},
            "pathway": {
                "type": "string",
                "minLength": 1,
                "examples": ["I.A"],
                "description": "Absent when no diagnosis is documented at all (decision 'incomplete').",
            },
            "diagnosisOptions": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string"},
                "description": "Pathways the prescriber may document: TSC manifestations, or every indication.",
            },
            "notes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "withheldSuggestions": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "decision": {"type": "string", "enum": ["met", "not-met", "incomplete", "refer"]},
            "referTo": {"type": "string", "minLength": 1},
            "lineOfBusiness": {"type": "string", "enum": ["medicaid", "him", "commercial"]},
            "approvalMonths": {"type": "integer", "minimum": 0},
            "evaluationDate": {"type": "string", "minLength": 1},
            "criteria": {"type": "array", "minItems": 1, "items": criterion},
        },
    }


def request_schemas() -> dict[str, JsonObject]:
    """HookRequest as the tolerant reader accepts it (unknown members ignored, JSON null counts as absent)."""
    schemas = model_schemas([HookRequest], "validation")
    schemas["HookRequest"]["description"] = (
        "CDS Hooks 2.0 order-sign / order-select request. 'hook' must be the hook of the service called "
        "(otherwise 400). Prefetch keys are those of the discovery document; a key that is absent, an "
        "OperationOutcome or of the wrong shape is fetched from fhirServer when one is given."
    )
    properties = schemas["HookRequest"]["properties"]
    properties["hook"]["examples"] = list(ORDER_HOOKS)
    properties["prefetch"]["description"] = "Prefetch key -> FHIR resource, search Bundle, OperationOutcome or null."
    properties["extension"]["description"] = (
        "Request extensions; 'davinci-crd.configuration' (an object) is honoured, everything else is ignored."
    )
    schemas["OrderContext"]["description"] = (
        "order-sign / order-select context. 'selections' is required for order-select (otherwise 400)."
    )
    entries = schemas["DraftOrdersBundle"]["properties"]["entry"]
    entries["items"] = {
        "type": "object",
        "properties": {
            "resource": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {"resourceType": {"type": "string"}},
                    },
                    {"type": "null"},
                ]
            }
        },
    }
    entries["anyOf"] = [{"type": "array"}, {"type": "null"}]
    entries.pop("type", None)
    return schemas


def feedback_schemas() -> dict[str, JsonObject]:
    """The feedback request (prefixed where a name would collide with the response models) and its answer."""
    rename = {
        "Coding": "FeedbackCoding",
        "OverrideReason": "FeedbackOverrideReason",
        "AcceptedSuggestion": "FeedbackAcceptedSuggestion",
    }
    schemas = model_schemas([FeedbackRequest], "validation", rename=rename)
    schemas["FeedbackResponse"] = {
        "type": "object",
        "description": "How many feedback entries were received, and how many were new (the rest were duplicates).",
        "required": ["received", "stored"],
        "additionalProperties": False,
        "properties": {"received": {"type": "integer", "minimum": 1}, "stored": {"type": "integer", "minimum": 0}},
    }
    return schemas


def smart_schemas() -> dict[str, JsonObject]:
    """SMART Backend Services bodies (cds_service/smart.py): discovery, token request, token answer and error."""
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "SmartConfiguration": {
            "type": "object",
            "required": [
                "token_endpoint",
                "token_endpoint_auth_methods_supported",
                "token_endpoint_auth_signing_alg_values_supported",
                "grant_types_supported",
                "scopes_supported",
                "capabilities",
            ],
            "properties": {
                "issuer": {"type": "string"},
                "token_endpoint": {"type": "string", "format": "uri"},
                "token_endpoint_auth_methods_supported": strings,
                "token_endpoint_auth_signing_alg_values_supported": strings,
                "grant_types_supported": strings,
                "scopes_supported": strings,
                "capabilities": strings,
            },
        },
        "TokenRequest": {
            "type": "object",
            "required": ["grant_type", "scope", "client_assertion_type", "client_assertion"],
            "properties": {
                "grant_type": {"const": "client_credentials"},
                "scope": {
                    "type": "string",
                    "description": "Space-separated SMART scopes, e.g. system/Questionnaire.rs",
                },
                "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
                "client_assertion": {
                    "type": "string",
                    "description": "RS384/ES384 JWT: iss = sub = client id, aud = the token URL, exp <= 5 min, jti.",
                },
            },
        },
        "TokenResponse": {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in", "scope"],
            "properties": {
                "access_token": {"type": "string"},
                "token_type": {"const": "bearer"},
                "expires_in": {"type": "integer", "minimum": 1},
                "scope": {
                    "type": "string",
                    "description": "The granted scopes (the requested ones the client may have).",
                },
            },
        },
        "TokenError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "enum": ["invalid_request", "invalid_client", "invalid_scope", "unsupported_grant_type"],
                },
                "error_description": {"type": "string"},
            },
        },
    }


def hand_written_schemas(services: Mapping[str, str] | None = None) -> dict[str, JsonObject]:
    """Bodies no pydantic model describes: errors, discovery, health and this document itself."""
    configuration_option = {
        "type": "object",
        "required": ["code", "type", "name", "description"],
        "properties": {
            "code": {"type": "string", "minLength": 1},
            "type": {"type": "string", "enum": ["boolean", "integer"]},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "default": {"type": ["boolean", "integer"]},
        },
    }
    service = {
        "type": "object",
        "required": ["hook", "description", "id"],
        "properties": {
            "hook": {"type": "string", "enum": list(ORDER_HOOKS)},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "id": {"type": "string", "enum": list(_hooks(services))},
            "prefetch": {
                "type": "object",
                "description": "Prefetch key -> FHIR query template (CDS Hooks 2.0 tokens only).",
                "properties": {key: {"type": "string"} for key in PREFETCH_TEMPLATES},
                "additionalProperties": {"type": "string"},
            },
            "usageRequirements": {"type": "string"},
            "extension": {
                "type": "object",
                "properties": {
                    "davinci-crd.version": {"type": "string", "examples": [CRD_VERSION]},
                    "davinci-crd.configuration-options": {"type": "array", "items": configuration_option},
                },
            },
        },
    }
    issue = {
        "type": "object",
        "required": ["severity", "code"],
        "additionalProperties": False,
        "properties": {
            "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
            "code": {"type": "string", "minLength": 1, "description": "FHIR issue-type code (invalid, security, ...)."},
            "diagnostics": {"type": "string", "minLength": 1},
            "expression": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        },
    }
    return {
        "Discovery": {
            "type": "object",
            "required": ["services"],
            "additionalProperties": False,
            "properties": {"services": {"type": "array", "items": _ref("CdsService")}},
        },
        "CdsService": service,
        "FhirResource": {
            "type": "object",
            "description": "A FHIR R4 resource (Parameters, Bundle, ValueSet, Questionnaire, CapabilityStatement ...).",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string", "minLength": 1}},
        },
        "OperationOutcome": {
            "type": "object",
            "description": "FHIR R4 OperationOutcome with one issue; 401 bodies carry no detail.",
            "required": ["resourceType", "issue"],
            "additionalProperties": False,
            "properties": {
                "resourceType": {"const": "OperationOutcome"},
                "issue": {"type": "array", "minItems": 1, "items": issue},
            },
            "examples": [
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "invalid",
                            "diagnostics": "missing required member 'hook'",
                            "expression": ["hook"],
                        }
                    ],
                }
            ],
        },
        "Health": {
            "type": "object",
            "required": ["status", "storage"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "storage": {"type": "string", "enum": ["ok", "unavailable"]},
            },
        },
        "OpenApiDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"}},
        },
    }


# ----------------------------------------------------------------------------- responses and operations


def _body(schema_name: str, media_type: str = JSON) -> JsonObject:
    return {media_type: {"schema": _ref(schema_name)}}


def _ok(description: str, schema_name: str) -> JsonObject:
    return {"description": description, "content": _body(schema_name)}


def _outcome(description: str) -> JsonObject:
    return {"description": description, "content": _body("OperationOutcome", FHIR_JSON)}


METHOD_NOT_ALLOWED = _outcome(
    "The path exists but not for this HTTP method (answered for any method the path does not list)."
)
INTERNAL_ERROR = _outcome("An unexpected error (a bug: no input is meant to produce it); the body is generic.")
UNAUTHORIZED = _outcome(
    "JWT missing, invalid, untrusted, expired or replayed (only when CDS_TRUSTED_ISSUERS is set); no detail."
)
UNKNOWN_SERVICE = _outcome("No CDS service has this id (checked before authentication and the body).")
UNSUPPORTED_MEDIA_TYPE = _outcome(
    "Content-Type is not application/json, application/fhir+json or another +json type (or, without JWT issuers, "
    "absent)."
)
MISDIRECTED = _outcome(
    "Without JWT issuers (development mode): the Host header is not localhost, 127.0.0.1 or [::1] (nor the host of "
    "CDS_PUBLIC_BASE_URL); a defence against DNS rebinding."
)
TOO_LARGE = _outcome("The body exceeds CDS_MAX_BODY_BYTES (5 MiB by default).")
RATE_LIMITED = _outcome(
    "More than CDS_RATE_LIMIT_PER_MINUTE calls (600 by default) from this JWT issuer (or client address without "
    "JWT checks) in this worker; on the DTR operations also more than CDS_DTR_ROWS_PER_ISSUER_PER_DAY stored calls "
    "today (UTC). The Retry-After header gives the seconds to wait."
)
STORAGE_UNAVAILABLE = _outcome("The audit / feedback store could not be written; the call may be retried.")


def _json_request_body(schema_name: str, examples: Mapping[str, JsonObject] | None = None) -> JsonObject:
    media: JsonObject = {"schema": _ref(schema_name)}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {
        "required": True,
        "description": "JSON (any +json media type is read too; a body without Content-Type is read as JSON).",
        "content": {JSON: media, FHIR_JSON: copy.deepcopy(media)},
    }


def _service_id_parameter(services: Mapping[str, str]) -> JsonObject:
    return {
        "name": "service_id",
        "in": "path",
        "required": True,
        "description": "A service id from discovery; any other id is a 404 OperationOutcome.",
        "schema": {"type": "string", "minLength": 1},
        "examples": {service_id: {"value": service_id} for service_id in services},
    }


def _preflight(path_label: str) -> JsonObject:
    return {
        "operationId": f"preflight{path_label}",
        "summary": "CORS preflight",
        "tags": ["cors"],
        "responses": {"204": {"description": "Empty; CORS headers allow GET, POST, OPTIONS with Authorization."}},
    }


def _searchset(resources: list[JsonObject]) -> JsonObject:
    bundle: JsonObject = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        bundle["entry"] = [{"resource": resource} for resource in resources]
    return bundle


@dataclass(frozen=True)
class PackExample:
    """What one pack's example request orders and documents, from its own tables (no pack speaks for another)."""

    policy_id: str
    drug: str
    rxcui: str
    display: str
    dose_text: str
    #: (system URI, code, display) of a diagnosis of the pack's first indication, when its tables code one.
    condition: tuple[str, str, str] | None = None


def pack_example(pack: Pack) -> PackExample:
    """The pack's example: a generic product of its table (else any product with a family) for its first indication."""
    products = sorted(pack.tables.products.values(), key=lambda p: (p.is_brand, p.tty != "SCD", p.rxcui))
    product = next((p for p in products if p.family is not None and p.strength_mg is not None), None)
    drug = pack.policy.drug.name
    if product is None:
        rxcui, display, dose = "", drug, f"{drug} by mouth once daily"
    else:
        rxcui, display, dose = product.rxcui, product.display, f"{product.strength_mg:g} mg by mouth once daily"
    condition = None
    tags = next((p.diagnoses for p in pack.policy.pathways if p.kind == "indication" and p.diagnoses), ())
    row = next(iter(pack.tables.codes_for("diagnosis", tags)), None)
    if row is not None and (uri := pack.tables.system_uri(row.system)) is not None:
        condition = (uri, row.code, row.display)
    return PackExample(pack.policy.id, drug, rxcui, display, dose, condition)


def _example_of(service_id: str, registry: Registry | None) -> PackExample:
    from .registry import default_registry  # late: the registry loads the packs

    found = registry or default_registry()
    return pack_example(found.pack_of(service_id) or found.default)


def hook_request_example(
    service_id: str, services: Mapping[str, str] | None = None, registry: Registry | None = None
) -> JsonObject:
    """A complete request for a service: its pack's generic product for a Medicaid patient with the pack's first
    indication (``registry``: where the service's pack is; default the packaged packs)."""
    if services is None and registry is not None:
        services = {s.id: s.hook for s in registry.services}
    return _hook_request_example(service_id, _hooks(services)[service_id], _example_of(service_id, registry))


def _medication(example: PackExample) -> JsonObject:
    concept: JsonObject = {"text": example.display}
    if example.rxcui:
        rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
        concept["coding"] = [{"system": rxnorm, "code": example.rxcui, "display": example.display}]
    return concept


def _hook_request_example(service_id: str, hook: str, example: PackExample) -> JsonObject:
    order = {
        "resourceType": "MedicationRequest",
        "id": "example-order",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": _medication(example),
        "subject": {"reference": "Patient/example-patient"},
        "dosageInstruction": [{"text": example.dose_text}],
    }
    context: JsonObject = {
        "userId": "Practitioner/example-prescriber",
        "patientId": "example-patient",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
    }
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/example-order"]
    coverage = {
        "resourceType": "Coverage",
        "id": "example-coverage",
        "status": "active",
        "beneficiary": {"reference": "Patient/example-patient"},
        "payor": [{"display": "Health Plan"}],
        "class": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]
                },
                "value": "MCD-EXAMPLE",
            }
        ],
    }
    conditions = []
    if example.condition is not None:
        system, code, display = example.condition
        conditions.append(
            {
                "resourceType": "Condition",
                "id": "example-condition",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                    ]
                },
                "code": {"coding": [{"system": system, "code": code, "display": display}]},
                "subject": {"reference": "Patient/example-patient"},
            }
        )
    prefetch: JsonObject = {key: _searchset([]) for key in PREFETCH_TEMPLATES if key not in ("patient", "practitioner")}
    prefetch["patient"] = {
        "resourceType": "Patient",
        "id": "example-patient",
        "gender": "female",
        "birthDate": "1968-11-20",
    }
    prefetch["coverage"] = _searchset([coverage])
    prefetch["conditions"] = _searchset(conditions)
    return {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context,
        "prefetch": prefetch,
    }


def _hook_operation(services: Mapping[str, str], examples: Mapping[str, PackExample]) -> JsonObject:
    return {
        "operationId": "callService",
        "summary": "Call a CDS service (order-sign / order-select)",
        "tags": ["cds-hooks"],
        "security": [{SECURITY_SCHEME: []}, {}],
        "requestBody": _json_request_body(
            "HookRequest",
            {
                service_id: _hook_request_example(service_id, hook, examples[service_id])
                for service_id, hook in services.items()
            },
        ),
        "responses": {
            "200": _ok(
                "Cards and systemActions; 'cards' is empty when no order of the service's drug is in scope.",
                "HookResponse",
            ),
            "400": _outcome(
                "Malformed JSON or invalid UTF-8, empty body, a missing or ill-typed member (hook, hookInstance, "
                "context, userId, patientId, draftOrders), a hook not matching the service, draftOrders not a "
                "Bundle, or order-select without selections."
            ),
            "401": UNAUTHORIZED,
            "404": UNKNOWN_SERVICE,
            "405": METHOD_NOT_ALLOWED,
            "412": _outcome(
                "Data the decision needs (the patient) was neither prefetched nor obtainable from fhirServer."
            ),
            "413": TOO_LARGE,
            "415": UNSUPPORTED_MEDIA_TYPE,
            "421": MISDIRECTED,
            "429": RATE_LIMITED,
            "500": INTERNAL_ERROR,
            "503": STORAGE_UNAVAILABLE,
        },
    }


def _feedback_operation() -> JsonObject:
    example = {
        "feedback": [
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "overrideReason": {"userComment": "documented in outside records"},
                "outcomeTimestamp": "2021-12-11T10:05:31Z",
            }
        ]
    }
    return {
        "operationId": "sendFeedback",
        "summary": "CDS Hooks 2.0 feedback on cards (idempotent: a repeated entry is not stored twice)",
        "tags": ["cds-hooks"],
        "security": [{SECURITY_SCHEME: []}, {}],
        "requestBody": _json_request_body("FeedbackRequest", {"overridden": example}),
        "responses": {
            "200": _ok("Feedback received.", "FeedbackResponse"),
            "400": _outcome(
                "Malformed JSON, empty body, or a feedback entry the service cannot store (wrong type, unknown "
                "outcome, timestamp without a time zone, NUL characters, members contradicting the outcome, "
                "too many entries)."
            ),
            "401": UNAUTHORIZED,
            "404": _outcome(
                "No CDS service has this id, or a feedback entry names a card uuid this service did not issue "
                "(nothing of the request is stored then)."
            ),
            "405": METHOD_NOT_ALLOWED,
            "413": TOO_LARGE,
            "415": UNSUPPORTED_MEDIA_TYPE,
            "421": MISDIRECTED,
            "429": RATE_LIMITED,
            "500": INTERNAL_ERROR,
            "503": STORAGE_UNAVAILABLE,
        },
    }


def _paths(services: Mapping[str, str], examples: Mapping[str, PackExample]) -> JsonObject:
    service_id = _service_id_parameter(services)
    return {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "summary": "CDS Hooks discovery: services, prefetch templates, Da Vinci CRD extensions",
                "tags": ["cds-hooks"],
                "responses": {
                    "200": _ok("The services.", "Discovery"),
                    "405": METHOD_NOT_ALLOWED,
                    "500": INTERNAL_ERROR,
                },
            },
            "options": _preflight("Discovery"),
        },
        "/cds-services/{service_id}": {
            "parameters": [service_id],
            "post": _hook_operation(services, examples),
            "options": _preflight("Service"),
        },
        "/cds-services/{service_id}/feedback": {
            "parameters": [copy.deepcopy(service_id)],
            "post": _feedback_operation(),
            "options": _preflight("Feedback"),
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and storage readiness",
                "tags": ["operations"],
                "responses": {
                    "200": _ok("Serving, storage reachable.", "Health"),
                    "503": _ok("Serving, but storage is unreachable.", "Health"),
                    "405": METHOD_NOT_ALLOWED,
                    "500": INTERNAL_ERROR,
                },
            },
            "options": _preflight("Health"),
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (off unless CDS_METRICS; then loopback-only or CDS_METRICS_TOKEN)",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "CDS_METRICS_TOKEN is set and the bearer token is missing or wrong.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _outcome(
                        "CDS_METRICS is off, or (without a token) the client is not a direct loopback one."
                    ),
                    "405": METHOD_NOT_ALLOWED,
                    "421": MISDIRECTED,
                    "500": INTERNAL_ERROR,
                },
            },
            "options": _preflight("Metrics"),
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["operations"],
                "responses": {
                    "200": _ok("The OpenAPI document.", "OpenApiDocument"),
                    "405": METHOD_NOT_ALLOWED,
                    "500": INTERNAL_ERROR,
                },
            },
            "options": _preflight("OpenApi"),
        },
        **_dtr_paths(),
    }


def _fhir_ok(description: str) -> JsonObject:
    return {"description": description, "content": _body("FhirResource", FHIR_JSON)}


FORBIDDEN = _outcome("A SMART access token whose scopes do not allow this call (insufficient_scope).")


def _dtr_operation(
    operation_id: str, summary: str, responses: JsonObject, *, body: bool = True, scope: str | None = None
) -> JsonObject:
    """A DTR route; with ``scope`` it needs the EHR's CDS Hooks JWT or a SMART access token with that scope
    (none when no issuers are configured); without, it is an open terminology read (no PHI)."""
    operation: JsonObject = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["dtr"],
        "security": [{SECURITY_SCHEME: []}, {SMART_SCHEME: []}, {}] if scope else [],
        "responses": {
            **responses,
            "405": METHOD_NOT_ALLOWED,
            "429": RATE_LIMITED,
            "500": INTERNAL_ERROR,
        },
    }
    if scope:
        operation["responses"].update({"401": UNAUTHORIZED, "403": FORBIDDEN})
    if body:
        operation["requestBody"] = _json_request_body("FhirResource")
        operation["responses"].update(
            {"413": TOO_LARGE, "415": UNSUPPORTED_MEDIA_TYPE, "421": MISDIRECTED, "503": STORAGE_UNAVAILABLE}
        )
    return operation


def _dtr_paths() -> JsonObject:
    """Da Vinci DTR payer operations (cds_service/dtr_api.py)."""
    package = _dtr_operation(
        "questionnairePackage",
        "DTR $questionnaire-package: Parameters (coverage, order, questionnaire, context) -> package Bundles",
        {
            "200": _fhir_ok(
                "Parameters with one packagebundle per questionnaire (and an outcome for unknown ones); without a "
                "context, for orders no questionnaire applies to: only an outcome warning that says so. A client "
                "declaring DTR 2.0.x or 2.1.x gets the names PackageBundle and operationOutcome."
            ),
            "400": _outcome(
                "Not a Parameters resource, no Coverage, none of order / questionnaire / context, or more than 10 "
                "order or questionnaire parameters."
            ),
            "404": _outcome(
                "Unknown context (coverage-assertion-id), or (DTR 2.0.x clients, whose output needs a package) no "
                "questionnaire applies to the order."
            ),
            "422": _outcome("The Coverage or order is not the one the coverage assertion was made for."),
        },
        scope="system/Questionnaire.rs",
    )
    expand = {
        "200": _fhir_ok("The expanded ValueSet."),
        "400": _outcome("No url (and no id in the path)."),
        "404": _outcome("No such value set (or version) here."),
        "421": MISDIRECTED,
    }
    expand_query = [
        {"name": "url", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "valueSetVersion", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    vs_id = {"name": "vs_id", "in": "path", "required": True, "schema": {"type": "string"}}
    by_id = {
        "200": _fhir_ok("The expanded ValueSet."),
        "400": _outcome("The id `$expand` is the operation itself: without a url it is this 400."),
        "404": _outcome("No such value set here."),
        "421": MISDIRECTED,
    }
    paths: JsonObject = {
        "/fhir/metadata": {
            "get": {
                "operationId": "capabilityStatement",
                "summary": "DTR payer service CapabilityStatement",
                "tags": ["dtr"],
                "responses": {
                    "200": _fhir_ok("The CapabilityStatement."),
                    "405": METHOD_NOT_ALLOWED,
                    "421": MISDIRECTED,
                    "429": RATE_LIMITED,
                    "500": INTERNAL_ERROR,
                },
            }
        },
        **_smart_paths(),
        "/fhir/Questionnaire/$questionnaire-package": {"post": package},
        "/fhir/$questionnaire-package": {
            "post": {**copy.deepcopy(package), "operationId": "questionnairePackageSystem"}
        },
        "/fhir/Questionnaire/$log-questionnaire-errors": {
            "post": _dtr_operation(
                "logQuestionnaireErrors",
                "DTR $log-questionnaire-errors: store what a client could not render or run",
                {
                    "200": _fhir_ok("An informational OperationOutcome: how many reports were stored."),
                    "400": _outcome("No questionnaire canonical, no OperationOutcome, or more than 10 of them."),
                },
                scope="system/Questionnaire.rs",
            )
        },
        "/fhir/ValueSet/$expand": {
            "get": {
                **_dtr_operation("expandValueSet", "ValueSet/$expand by url (and valueSetVersion)", expand, body=False),
                "parameters": copy.deepcopy(expand_query),
            },
            "post": _dtr_operation("expandValueSetPost", "ValueSet/$expand with Parameters (url)", expand),
        },
        "/fhir/ValueSet/{vs_id}/$expand": {
            "parameters": [vs_id],
            "get": {
                **_dtr_operation("expandValueSetById", "ValueSet/{id}/$expand", by_id, body=False),
                "parameters": copy.deepcopy(expand_query),
            },
            "post": _dtr_operation("expandValueSetByIdPost", "ValueSet/{id}/$expand with Parameters (url)", by_id),
        },
        "/fhir/ValueSet/{vs_id}": {
            "parameters": [copy.deepcopy(vs_id)],
            "get": _dtr_operation("readValueSet", "Read a value set (expanded)", by_id, body=False),
        },
        "/fhir/Questionnaire/{qid}": {
            "parameters": [{"name": "qid", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _dtr_operation(
                "readQuestionnaire",
                "Read a questionnaire",
                {"200": _fhir_ok("The Questionnaire."), "404": _outcome("No such questionnaire."), "421": MISDIRECTED},
                body=False,
                scope="system/Questionnaire.rs",
            ),
        },
    }
    for path, item in paths.items():  # preflight is answered on every path
        item["options"] = _preflight("Fhir" + re.sub(r"[^A-Za-z0-9]+", " ", path).title().replace(" ", ""))
    return paths


def _smart_paths() -> JsonObject:
    """SMART Backend Services for DTR apps (cds_service/smart_api.py): discovery and the token endpoint."""
    discovery = {
        "summary": "SMART configuration: token endpoint, private_key_jwt (RS384, ES384), client_credentials",
        "tags": ["smart"],
        "responses": {
            "200": _ok("The SMART configuration.", "SmartConfiguration"),
            "405": METHOD_NOT_ALLOWED,
            "421": MISDIRECTED,
            "429": RATE_LIMITED,
            "500": INTERNAL_ERROR,
        },
    }
    token_error = {"description": "", "content": _body("TokenError")}
    return {
        "/fhir/.well-known/smart-configuration": {"get": {"operationId": "smartConfiguration", **discovery}},
        "/.well-known/smart-configuration": {
            "get": {"operationId": "smartConfigurationRoot", **copy.deepcopy(discovery)}
        },
        "/auth/token": {
            "post": {
                "operationId": "token",
                "summary": "OAuth 2.0 client_credentials with a private_key_jwt client assertion (SMART Backend "
                "Services); a 5-minute bearer token for the DTR routes",
                "tags": ["smart"],
                "requestBody": {"required": True, "content": {FORM: {"schema": _ref("TokenRequest")}}},
                "responses": {
                    "200": _ok("The access token (Cache-Control: no-store).", "TokenResponse"),
                    "400": {
                        **token_error,
                        "description": "invalid_request (not a form, a parameter missing or repeated), "
                        "unsupported_grant_type, or invalid_scope (none of the requested scopes is allowed).",
                    },
                    "401": {
                        **token_error,
                        "description": "invalid_client: unknown client, wrong key or algorithm, expired or "
                        "too long-lived assertion, wrong aud, or a replayed jti.",
                    },
                    "405": METHOD_NOT_ALLOWED,
                    "413": TOO_LARGE,
                    "421": MISDIRECTED,
                    "429": RATE_LIMITED,
                    "500": INTERNAL_ERROR,
                    "503": STORAGE_UNAVAILABLE,
                },
            }
        },
    }


def _hooks(services: Mapping[str, str] | None) -> Mapping[str, str]:
    """service id -> hook: ``services`` as given, else the packaged packs' services."""
    if services is not None:
        return services
    return {service_id: service["hook"] for service_id, service in SERVICES.items()}


def openapi_document(registry: Registry | None = None) -> dict[str, Any]:
    """The OpenAPI document for every service of ``registry`` (default: the packaged packs); built once per
    process and registry and shared, so callers must not mutate it. Each service's example request is its own
    pack's (one example per pack's service, ordering that pack's drug)."""
    if registry is None:
        from .registry import default_registry  # late: the registry loads the packs

        registry = default_registry()
    examples = {pack.policy.id: pack_example(pack) for pack in registry.packs}
    items = tuple(
        (s.id, s.hook, examples[pack.policy.id])
        for s in registry.services
        if (pack := registry.pack_of(s.id)) is not None
    )
    return _document(items)


@cache
def _document(service_items: tuple[tuple[str, str, PackExample], ...]) -> dict[str, Any]:
    services = {service_id: hook for service_id, hook, _ in service_items}
    examples = {service_id: example for service_id, _, example in service_items}
    policies = ", ".join(dict.fromkeys(f"{e.policy_id} ({e.drug})" for e in examples.values()))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "priorauth-cds",
            "version": __version__,
            "summary": f"CDS Hooks 2.0 / Da Vinci CRD service checking prior-authorization policies: {policies}",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "cds-hooks", "description": "CDS Hooks 2.0 discovery, service calls and feedback."},
            {"name": "operations", "description": "Health and API description."},
            {"name": "cors", "description": "Preflight answered for any path."},
            {"name": "dtr", "description": "Da Vinci DTR payer operations: questionnaire packages, value sets."},
            {"name": "smart", "description": "SMART Backend Services: how a DTR app gets its access token."},
        ],
        "paths": _paths(services, examples),
        "components": {
            "schemas": _merge(
                response_schemas(),
                request_schemas(),
                feedback_schemas(),
                hand_written_schemas(services),
                smart_schemas(),
            ),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "CDS Hooks 2.0 client JWT (iss, sub, aud = the called URL, exp, iat, jti), signed with a key "
                        "from the issuer's JWKS. Required on service and feedback calls when CDS_TRUSTED_ISSUERS is "
                        "set; ignored when no issuers are configured (loopback / sandbox use)."
                    ),
                },
                SMART_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "SMART Backend Services access token for DTR apps registered in CDS_DTR_CLIENTS, from POST "
                        "/auth/token (client_credentials with a private_key_jwt assertion; see "
                        "/fhir/.well-known/smart-configuration). Lasts 5 minutes, acts for the client's EHR issuer; "
                        "its scopes (system/Questionnaire.rs, system/QuestionnaireResponse.c, system/ValueSet.rs) "
                        "are checked per route (403 when they do not cover it)."
                    ),
                },
            },
        },
    }
