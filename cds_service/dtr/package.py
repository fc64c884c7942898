"""``$questionnaire-package``, ``ValueSet/$expand``, the CapabilityStatement: DTR's payer-side operations.

Pure functions over the pack registry and a store-like object; ``cds_service.dtr_api`` is the HTTP layer.

The package is tied to a CRD decision: ``context`` is the coverage-assertion-id the order-sign answer issued
(or, without one, the latest assertion for the ``order``). Its Questionnaire(s), their ValueSets (expanded) and
one draft QuestionnaireResponse prefilled from what the service saw at order-sign go in one collection Bundle
per questionnaire. A ``questionnaire`` canonical asks for that form explicitly (prefilled when a context or
order is known); an unknown one is a warning in ``outcome`` (DTR oper-9).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fhir.resources.R4B.coverage import Coverage

from fhir_mappings.normalize import INVALID_RESOURCE_ERRORS

from .. import __version__
from ..errors import CoverageMismatch, ProtocolError, UnknownContext, operation_outcome
from ..registry import Pack, Registry
from .prefill import draft_response
from .questionnaire import (
    ValueSetRef,
    all_value_sets,
    asked_pathways,
    build_questionnaire,
    questionnaire_id,
    value_set_resource,
)

DTR_PAYER_SERVICE = "http://hl7.org/fhir/us/davinci-dtr/CapabilityStatement/dtr-payer-service|2.2.0"
QUESTIONNAIRE_PACKAGE = "http://hl7.org/fhir/us/davinci-dtr/OperationDefinition/questionnaire-package"
LOG_ERRORS = "http://hl7.org/fhir/us/davinci-dtr/OperationDefinition/log-questionnaire-errors"
VALUESET_EXPAND = "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
PACKAGE_BUNDLE_PROFILE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/DTR-QPackageBundle"
OUTPUT_PROFILE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-qpackage-output-parameters"
#: Output parameter names (package Bundle, outcome) of dtr-qpackage-output-parameters per DTR version a client
#: declares in its input's ``meta.profile`` (``...dtr-qpackage-input-parameters|2.0.1``): "PackageBundle" and
#: "operationOutcome" in 2.0.1 and 2.1.0, "packagebundle" and "outcome" in 2.2.0 (HL7/davinci-dtr
#: input/fsh/DTRParameters.fsh at tags 2.0.1, 2.1.0, 2.2.0). Undeclared or unknown: the newest, 2.2.0.
OUTPUT_NAMES: dict[str, tuple[str, str]] = {
    "2.0": ("PackageBundle", "operationOutcome"),
    "2.1": ("PackageBundle", "operationOutcome"),
}
NEWEST_OUTPUT_NAMES = ("packagebundle", "outcome")
#: DTR versions whose output needs at least one package Bundle (2.0.x: PackageBundle 1..*); from 2.1 it is 0..*.
_BUNDLE_REQUIRED = frozenset({"2.0"})
_INPUT_PROFILE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-qpackage-input-parameters"


#: Orders and questionnaires one package call may name (a DTR client sends one order, or a few): more is a 400,
#: before any query, so a call cannot hold a worker with thousands of lookups.
MAX_ORDERS = 10
MAX_QUESTIONNAIRES = 10
#: A coverage-assertion-id is a UUID (36 characters): a longer ``context`` is unknown without a lookup.
MAX_CONTEXT_CHARS = 64
#: OperationOutcomes one ``$log-questionnaire-errors`` call may report.
MAX_ERROR_OUTCOMES = 10


class PrefillStore(Protocol):
    def dtr_prefill(self, assertion_id: str) -> dict[str, Any] | None: ...

    def latest_dtr_prefill(
        self, order_refs: Sequence[str], patient_ref: str | None, *, issuer: str | None = None, own: bool = False
    ) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class PackageRequest:
    coverage: Coverage
    coverage_ref: str
    orders: tuple[Mapping[str, Any], ...]
    questionnaires: tuple[str, ...]
    context: str | None
    #: The DTR version (major.minor) the client declared for its input profile; None when undeclared.
    dtr_version: str | None = None

    @property
    def output_names(self) -> tuple[str, str]:
        """(package Bundle, outcome) parameter names for the client's declared DTR version."""
        return OUTPUT_NAMES.get(self.dtr_version or "", NEWEST_OUTPUT_NAMES)


@dataclass(frozen=True)
class PackageResult:
    body: dict[str, Any]
    assertion_id: str | None
    order_ref: str | None
    coverage_ref: str
    questionnaires: tuple[str, ...]


def _parameters(payload: Any) -> list[Mapping[str, Any]]:
    if not isinstance(payload, Mapping) or payload.get("resourceType") != "Parameters":
        raise ProtocolError("the body must be a FHIR Parameters resource", expression=["Parameters"])
    parameters = payload.get("parameter")
    if not isinstance(parameters, list) or not all(isinstance(p, Mapping) for p in parameters):
        raise ProtocolError("Parameters.parameter must be a list of parameters", expression=["Parameters.parameter"])
    return [p for p in parameters if isinstance(p, Mapping)]


def _at_most(parameters: Sequence[Mapping[str, Any]], name: str, limit: int) -> None:
    """A 400 naming the limit when more than ``limit`` parameters are called ``name``."""
    count = sum(1 for p in parameters if p.get("name") == name)
    if count > limit:
        raise ProtocolError(f"at most {limit} '{name}' parameters per call (got {count})", expression=[name])


def parse_package_request(payload: Any) -> PackageRequest:
    """The operation's inputs (DTR dtr-qpackage-input-parameters), checked."""
    parameters = _parameters(payload)
    coverages = [p.get("resource") for p in parameters if p.get("name") == "coverage"]
    if len(coverages) != 1 or not isinstance(coverages[0], Mapping):
        raise ProtocolError(
            "exactly one 'coverage' parameter with a Coverage resource is required", expression=["coverage"]
        )
    try:
        coverage = Coverage.model_validate(coverages[0])
    except INVALID_RESOURCE_ERRORS as exc:
        raise ProtocolError(
            f"'coverage' is not a valid Coverage ({type(exc).__name__})", expression=["coverage"]
        ) from None
    if not coverage.id:
        raise ProtocolError(
            "'coverage' needs an id (the EHR's Coverage the order was checked with)", expression=["coverage"]
        )
    _at_most(parameters, "order", MAX_ORDERS)
    _at_most(parameters, "questionnaire", MAX_QUESTIONNAIRES)
    orders = tuple(
        p["resource"] for p in parameters if p.get("name") == "order" and isinstance(p.get("resource"), Mapping)
    )
    questionnaires = tuple(
        str(p["valueCanonical"]) for p in parameters if p.get("name") == "questionnaire" and p.get("valueCanonical")
    )
    contexts = [p.get("valueString") for p in parameters if p.get("name") == "context"]
    context = contexts[0] if contexts and isinstance(contexts[0], str) and contexts[0] else None
    if not orders and not questionnaires and context is None:
        raise ProtocolError(
            "give at least one of 'order', 'questionnaire' and 'context' (DTR dtr-1)", expression=["Parameters"]
        )
    return PackageRequest(
        coverage, f"Coverage/{coverage.id}", orders, questionnaires, context, _declared_version(payload.get("meta"))
    )


def _declared_version(meta: Any) -> str | None:
    """major.minor of the DTR input profile version in ``meta.profile`` (``...|2.0.1`` -> ``2.0``), if any."""
    profiles = meta.get("profile") if isinstance(meta, Mapping) else None
    for profile in profiles if isinstance(profiles, list) else []:
        if isinstance(profile, str) and profile.startswith(_INPUT_PROFILE + "|"):
            parts = profile.partition("|")[2].split(".")
            if len(parts) >= 2 and all(part.isdigit() for part in parts[:2]):
                return f"{int(parts[0])}.{int(parts[1])}"
    return None


def questionnaire_index(registry: Registry) -> dict[str, tuple[Pack, str]]:
    """Questionnaire id -> (pack, pathway id), over every loaded pack."""
    return {
        questionnaire_id(pack.policy, pathway.id): (pack, pathway.id)
        for pack in registry.packs
        for pathway in asked_pathways(pack.policy)
    }


def _order_ref(order: Mapping[str, Any]) -> str | None:
    rtype, rid = order.get("resourceType"), order.get("id")
    return f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) and rid else None


def _beneficiary(coverage: Coverage) -> str | None:
    return coverage.beneficiary.reference if coverage.beneficiary is not None else None


def _requested_ids(canonicals: Sequence[str], index: Mapping[str, tuple[Pack, str]]) -> tuple[list[str], list[str]]:
    """(known questionnaire ids, canonicals nobody here publishes); a version other than the policy's is unknown."""
    known: list[str] = []
    unknown: list[str] = []
    for canonical in canonicals:
        url, _, version = canonical.partition("|")
        qid = url.rstrip("/").rsplit("/", 1)[-1]
        entry = index.get(qid)
        if entry is None or "/Questionnaire/" not in url or (version and version != entry[0].policy.version):
            unknown.append(canonical)
        elif qid not in known:
            known.append(qid)
    return known, unknown


def _bundle(
    pack: Pack,
    pathway_id: str,
    base: str,
    publisher: str,
    answers: Mapping[str, Any],
    *,
    patient_ref: str,
    order_ref: str,
    coverage_ref: str,
    now: datetime,
) -> dict[str, Any]:
    pathway = pack.policy.pathway(pathway_id)
    stamp = now.isoformat(timespec="seconds")
    questionnaire, value_sets = build_questionnaire(pack.policy, pathway, pack.tables, base, publisher, stamp)
    response = draft_response(
        questionnaire, answers, patient_ref=patient_ref, order_ref=order_ref, coverage_ref=coverage_ref, now=now
    )
    entries = [questionnaire, response] + [
        value_set_resource(ref, question, pack.policy, pack.tables, stamp) for ref, question in value_sets
    ]
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [PACKAGE_BUNDLE_PROFILE]},
        "type": "collection",
        "timestamp": stamp,
        "entry": [{"fullUrl": _full_url(base, r), "resource": r} for r in entries],
    }


def _full_url(base: str, resource: Mapping[str, Any]) -> str:
    if resource["resourceType"] == "QuestionnaireResponse":
        return f"urn:uuid:{resource['id']}"
    return f"{base.rstrip('/')}/fhir/{resource['resourceType']}/{resource['id']}"


def _own(row: dict[str, Any] | None, issuer: str | None, issuers_configured: bool) -> dict[str, Any] | None:
    """The stored prefill when the caller may see it: with JWT checks, only the EHR (issuer) whose hook call made
    the assertion, and a prefill stored without an issuer by nobody; to anyone else it does not exist (404, never
    "forbidden": an id is not confirmed). Without JWT checks (development) every prefill is readable."""
    if row is None or (issuers_configured and (issuer is None or row.get("issuer") != issuer)):
        return None
    return row


def questionnaire_package(
    request: PackageRequest,
    registry: Registry,
    store: PrefillStore,
    *,
    base: str,
    publisher: str,
    issuer: str | None = None,
    issuers_configured: bool = False,
    now: datetime | None = None,
) -> PackageResult:
    """The operation: Parameters with one package Bundle per questionnaire (see the module docstring).

    ``issuer`` is the caller's verified JWT ``iss``; ``issuers_configured`` whether JWT checks are on (then only
    that issuer's prefills exist for it).
    """
    now = now or datetime.now(UTC)
    index = questionnaire_index(registry)
    row: dict[str, Any] | None = None
    order_refs = [ref for order in request.orders if (ref := _order_ref(order))]
    if request.context is not None:
        known = store.dtr_prefill(request.context) if len(request.context) <= MAX_CONTEXT_CHARS else None
        row = _own(known, issuer, issuers_configured)
        if row is None:
            raise UnknownContext(
                f"no coverage assertion {request.context[:64]!r} with a questionnaire: sign the order again (CRD) "
                "to get a current one"
            )
        if row.get("coverage_ref") and row["coverage_ref"] != request.coverage_ref:
            raise CoverageMismatch(
                f"the coverage assertion was made for {row['coverage_ref']}, not {request.coverage_ref}"
            )
        if order_refs and row["order_ref"] not in order_refs:
            raise CoverageMismatch(
                f"the coverage assertion was made for {row['order_ref']}, not {', '.join(order_refs)}"
            )
    elif order_refs:
        latest = store.latest_dtr_prefill(
            order_refs, _beneficiary(request.coverage), issuer=issuer, own=issuers_configured
        )
        row = _own(latest, issuer, issuers_configured)
        if row is not None and row.get("coverage_ref") and row["coverage_ref"] != request.coverage_ref:
            raise CoverageMismatch(f"the order was checked with {row['coverage_ref']}, not {request.coverage_ref}")
    beneficiary = _beneficiary(request.coverage)
    if row is not None and beneficiary and row.get("patient_ref") and beneficiary != row["patient_ref"]:
        raise CoverageMismatch("the Coverage's beneficiary is not the patient of the coverage assertion")
    requested, unknown = _requested_ids(request.questionnaires, index)
    wanted = requested or list(row["questionnaires"] if row else [])
    bundle_name, outcome_name = request.output_names
    if not wanted:
        why = (
            "no questionnaire applies: this service has no coverage assertion for the order (sign it first, CRD "
            "order-sign) and no known questionnaire was asked for"
            + (f" (unknown: {', '.join(c[:100] for c in unknown)})" if unknown else "")
        )
        if request.context is not None or request.dtr_version in _BUNDLE_REQUIRED:
            raise UnknownContext(why)
        # DTR 2.1+: an order the payer has no questionnaire for is a warning in the outcome of a 200 (oper-9), which
        # every client reads the same way: nothing to document here. Another EHR's order reads exactly the same.
        body = {
            "resourceType": "Parameters",
            "meta": {"profile": [OUTPUT_PROFILE]},
            "parameter": [{"name": outcome_name, "resource": operation_outcome("not-found", why, severity="warning")}],
        }
        return PackageResult(body, None, order_refs[0] if order_refs else None, request.coverage_ref, ())
    patient_ref = (row or {}).get("patient_ref") or _beneficiary(request.coverage)
    if not patient_ref:
        raise ProtocolError(
            "the Coverage names no beneficiary (the patient the questionnaire is about)", expression=["coverage"]
        )
    order_ref = (row or {}).get("order_ref") or (order_refs[0] if order_refs else None)
    if order_ref is None:
        raise ProtocolError("give the order (or a context) the questionnaire is for", expression=["order"])
    prefilled: Mapping[str, Any] = (row or {}).get("answers") or {}
    parameters: list[dict[str, Any]] = []
    for qid in wanted:
        entry = index.get(qid)
        if entry is None:
            unknown.append(qid)
            continue
        pack, pathway_id = entry
        bundle = _bundle(
            pack,
            pathway_id,
            base,
            publisher,
            prefilled.get(qid) or {},
            patient_ref=patient_ref,
            order_ref=order_ref,
            coverage_ref=request.coverage_ref,
            now=now,
        )
        parameters.append({"name": bundle_name, "resource": bundle})
    parameters.append({"name": outcome_name, "resource": package_outcome(base, unknown)})
    body = {"resourceType": "Parameters", "meta": {"profile": [OUTPUT_PROFILE]}, "parameter": parameters}
    return PackageResult(body, (row or {}).get("assertion_id"), order_ref, request.coverage_ref, tuple(wanted))


def package_outcome(base: str, unknown: Sequence[str]) -> dict[str, Any]:
    """The package's ``outcome``: a warning per questionnaire nobody here publishes, and always the instruction to
    report a form the client cannot render or run with ``$log-questionnaire-errors`` (the payer reads those)."""
    issues: list[dict[str, Any]] = []
    if unknown:
        issues += operation_outcome(
            "not-found",
            f"questionnaire(s) not published here: {', '.join(u[:100] for u in unknown)}",
            severity="warning",
        )["issue"]
    issues += operation_outcome(
        "informational",
        f"If a questionnaire cannot be rendered, prefilled or completed, report it: POST "
        f"{base.rstrip('/')}/fhir/Questionnaire/$log-questionnaire-errors with its 'questionnaire' canonical and "
        "an 'operationOutcome' per error. A completed QuestionnaireResponse counts when a Practitioner or "
        "PractitionerRole authored it, it names this Questionnaire's canonical with its version and the order in "
        "qr-context; the next order-sign card names any response it did not use and why.",
        severity="information",
    )["issue"]
    return {"resourceType": "OperationOutcome", "issue": issues}


# ----------------------------------------------------------------------------- value sets, metadata


def value_sets(registry: Registry, base: str) -> Iterator[tuple[Pack, ValueSetRef, Any]]:
    for pack in registry.packs:
        for ref, question in all_value_sets(pack.policy, pack.tables, base):
            yield pack, ref, question


def expand(
    registry: Registry, base: str, *, url: str | None = None, vs_id: str | None = None, now: datetime | None = None
) -> dict[str, Any] | None:
    """The expanded ValueSet by canonical url (a version other than the policy's finds nothing) or id."""
    wanted_url, _, version = (url or "").partition("|")
    for pack, ref, question in value_sets(registry, base):
        same_url = wanted_url and wanted_url.rstrip("/").rsplit("/", 1)[-1] == ref.id and "/ValueSet/" in wanted_url
        if (same_url and (not version or version == pack.policy.version)) or (vs_id is not None and vs_id == ref.id):
            stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
            return value_set_resource(ref, question, pack.policy, pack.tables, stamp)
    return None


def questionnaire(registry: Registry, base: str, qid: str, publisher: str) -> dict[str, Any] | None:
    entry = questionnaire_index(registry).get(qid)
    if entry is None:
        return None
    pack, pathway_id = entry
    return build_questionnaire(pack.policy, pack.policy.pathway(pathway_id), pack.tables, base, publisher)[0]


def capability_statement(base: str, publisher: str) -> dict[str, Any]:
    """What a DTR client may call here (DTR payer service: $questionnaire-package, $expand, error logging)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "publisher": publisher,
        "kind": "instance",
        "instantiates": [DTR_PAYER_SERVICE],
        "software": {"name": "priorauth-cds", "version": __version__},
        "implementation": {
            "description": "Prior-authorization CRD + DTR payer service",
            "url": f"{base.rstrip('/')}/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Questionnaires are generated from the policy packs that make the CRD decision.",
                "security": {
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base.rstrip('/')}/auth/token"}],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": (
                        "With CDS_TRUSTED_ISSUERS set: the EHR's CDS Hooks JWT, or a SMART Backend Services access "
                        "token (see .well-known/smart-configuration). Terminology reads need no token."
                    ),
                },
                "resource": [
                    {
                        "type": "Questionnaire",
                        "interaction": [{"code": "read"}],
                        "operation": [
                            {"name": "questionnaire-package", "definition": QUESTIONNAIRE_PACKAGE},
                            {"name": "log-questionnaire-errors", "definition": LOG_ERRORS},
                        ],
                    },
                    {
                        "type": "ValueSet",
                        "interaction": [{"code": "read"}],
                        "operation": [{"name": "expand", "definition": VALUESET_EXPAND}],
                    },
                ],
                "operation": [{"name": "questionnaire-package", "definition": QUESTIONNAIRE_PACKAGE}],
            }
        ],
    }


def parse_error_log(payload: Any) -> tuple[str, list[Mapping[str, Any]]]:
    """$log-questionnaire-errors inputs: the questionnaire canonical and its OperationOutcomes."""
    parameters = _parameters(payload)
    canonicals = [p.get("valueCanonical") for p in parameters if p.get("name") == "questionnaire"]
    outcomes = [
        p["resource"]
        for p in parameters
        if p.get("name") in ("operationOutcome", "outcome")
        and isinstance(p.get("resource"), Mapping)
        and p["resource"].get("resourceType") == "OperationOutcome"
    ]
    if not canonicals or not isinstance(canonicals[0], str) or not canonicals[0]:
        raise ProtocolError("'questionnaire' (a canonical) is required", expression=["questionnaire"])
    if not outcomes:
        raise ProtocolError("at least one 'operationOutcome' resource is required", expression=["operationOutcome"])
    if len(outcomes) > MAX_ERROR_OUTCOMES:
        raise ProtocolError(
            f"at most {MAX_ERROR_OUTCOMES} 'operationOutcome' parameters per call (got {len(outcomes)})",
            expression=["operationOutcome"],
        )
    return canonicals[0][:500], outcomes
