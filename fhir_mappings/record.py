"""Raw FHIR resources (prefetch, fetched, draft orders) -> a typed ``PatientRecord``.

Validating a FHIR resource costs far more than reading a dict, so the record holds only what the
policy reads: raw entries are routed by resourceType (whatever prefetch key they came under), deduped
by type and id, filtered through the code tables, pruned to the elements the facts read, repaired for
known client oddities, and only then validated with ``fhir.resources.R4B``. An entry that still fails
is dropped and named in ``record.dropped`` ("Type/id: element: error type", no values); an entry about
another patient is named in ``record.ignored``. Neither is ever fatal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole
from pydantic import BaseModel, ValidationError

from .codes import CodeTables
from .normalize import (
    codings,
    concept_texts,
    deep_copy_json,
    drop_path,
    get,
    items,
    iter_bundle,
    medication_concept,
    reference_of,
    repair,
    split_reference,
    wrap_path,
)

MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient,
    "Condition": Condition,
    "Observation": Observation,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "Coverage": Coverage,
    "Practitioner": Practitioner,
    "PractitionerRole": PractitionerRole,
    "AllergyIntolerance": AllergyIntolerance,
    "Medication": Medication,
}

#: Top-level elements the facts read, per type (choice elements by their stem: "onset" keeps onsetDateTime).
KEEP: dict[str, frozenset[str]] = {
    "Patient": frozenset({"birthDate"}),
    "Condition": frozenset(
        {"clinicalStatus", "verificationStatus", "code", "subject", "onset", "abatement", "recordedDate", "stage"}
    ),
    "Observation": frozenset(
        {"status", "code", "subject", "effective", "issued", "value", "interpretation", "component"}
    ),
    "MedicationRequest": frozenset(
        {
            "status",
            "intent",
            "medication",
            "subject",
            "authoredOn",
            "dosageInstruction",
            "dispenseRequest",
            "requester",
            "reasonCode",
            "substitution",
            "insurance",
            "contained",
        }
    ),
    "MedicationStatement": frozenset({"status", "medication", "subject", "effective", "dosage", "contained"}),
    "Coverage": frozenset({"status", "type", "class", "beneficiary", "payor", "order"}),
    "PractitionerRole": frozenset({"active", "practitioner", "specialty"}),
    "Practitioner": frozenset({"qualification"}),
    "AllergyIntolerance": frozenset(
        {"clinicalStatus", "verificationStatus", "code", "patient", "onset", "recordedDate"}
    ),
    "Medication": frozenset({"code"}),
}
#: What is read of an order or statement for a medication other than everolimus (tags and start date only).
KEEP_OTHER_MEDICATION = frozenset(
    {"status", "intent", "medication", "subject", "authoredOn", "effective", "dispenseRequest", "contained"}
)
#: Elements of Dosage the daily-dose reader uses (route, site, method ... are not read).
KEEP_DOSAGE = frozenset(
    {
        "sequence",
        "text",
        "patientInstruction",
        "timing",
        "asNeededBoolean",
        "asNeededCodeableConcept",
        "doseAndRate",
        "doseQuantity",
        "doseRange",
    }
)
CHOICE_STEMS = frozenset({"onset", "abatement", "effective", "value", "medication"})
#: The element naming the patient a resource is about.
PATIENT_ELEMENT: dict[str, str] = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "Coverage": "beneficiary",
    "AllergyIntolerance": "patient",
}
MAX_REPAIR_ROUNDS = 3

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class PatientRecord:
    """The typed chart and draft orders of one request, reduced to what the policy reads."""

    patient_id: str | None
    patient: Patient | None = None
    conditions: tuple[Condition, ...] = ()
    observations: tuple[Observation, ...] = ()
    medication_requests: tuple[MedicationRequest, ...] = ()
    medication_statements: tuple[MedicationStatement, ...] = ()
    coverages: tuple[Coverage, ...] = ()
    practitioners: Mapping[str, Practitioner] = field(default_factory=dict)
    practitioner_roles: Mapping[str, PractitionerRole] = field(default_factory=dict)
    allergies: tuple[AllergyIntolerance, ...] = ()
    #: Medications referenced by the kept orders/statements, by "Medication/<id>".
    medications: Mapping[str, Medication] = field(default_factory=dict)
    #: Draft MedicationRequests of the request whose medication the tables know (everolimus or an ingredient).
    draft_orders: tuple[MedicationRequest, ...] = ()
    #: Everolimus drafts that failed validation, kept as repaired dicts so the order can still be evaluated.
    unvalidated_drafts: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()

    def draft(self, order_id: str) -> MedicationRequest | dict[str, Any] | None:
        """A draft order by id ("abc" or "MedicationRequest/abc"), typed when it validated."""
        bare = order_id.split("/")[-1]
        for order in self.draft_orders:
            if order.id == bare:
                return order
        return self.unvalidated_drafts.get(bare)


# ----------------------------------------------------------------------------- building


def build_record(
    resources: Mapping[str, Any],
    draft_orders: Sequence[Any],
    tables: CodeTables,
    *,
    patient_id: str | None = None,
    user_ref: str | None = None,
) -> PatientRecord:
    """Route, filter, prune, repair and validate; see the module docstring."""
    builder = _Builder(tables, patient_id)
    builder.collect(resources)
    return builder.build(draft_orders, user_ref)


class _Builder:
    """Accumulates one record; lives for one call."""

    def __init__(self, tables: CodeTables, patient_id: str | None) -> None:
        self.tables = tables
        self.patient_id = patient_id
        self.raw: dict[str, dict[str, dict[str, Any]]] = {rtype: {} for rtype in MODELS}
        self.dropped: list[str] = []
        self.ignored: list[str] = []
        self.repaired: list[str] = []

    # -- routing -----------------------------------------------------------------------------

    def collect(self, resources: Mapping[str, Any]) -> None:
        for value in resources.values():
            for resource in iter_bundle(value):
                self._route(resource)

    def _route(self, resource: dict[str, Any]) -> None:
        rtype = resource.get("resourceType")
        if rtype not in MODELS:
            return
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            self.dropped.append(f"{rtype}: no id")
            return
        if rid in self.raw[rtype]:
            return
        if self._about_other_patient(rtype, rid, resource):
            self.ignored.append(f"{rtype}/{rid}: other patient")
            return
        self.raw[rtype][rid] = resource

    def _about_other_patient(self, rtype: str, rid: str, resource: dict[str, Any]) -> bool:
        if self.patient_id is None:
            return False
        if rtype == "Patient":
            return rid != self.patient_id
        element = PATIENT_ELEMENT.get(rtype)
        if element is None:
            return False
        ref_type, ref_id = split_reference(reference_of(resource.get(element)))
        return ref_type == "Patient" and ref_id != self.patient_id

    # -- assembling --------------------------------------------------------------------------

    def build(self, draft_orders: Sequence[Any], user_ref: str | None) -> PatientRecord:
        medications_raw = {f"Medication/{rid}": r for rid, r in self.raw["Medication"].items()}
        draft_raws = [r for r in iter_bundle(list(draft_orders)) if r.get("resourceType") == "MedicationRequest"]
        drafts, unvalidated = self._drafts(draft_raws, medications_raw)
        draft_ids = {r.get("id") for r in draft_raws}
        request_tags = {
            rid: tags
            for rid, r in self.raw["MedicationRequest"].items()
            if rid not in draft_ids and (tags := self._medication_tags(r, medications_raw))
        }
        statement_tags = {
            rid: tags
            for rid, r in self.raw["MedicationStatement"].items()
            if (tags := self._medication_tags(r, medications_raw))
        }
        requests = [self.raw["MedicationRequest"][rid] for rid in request_tags]
        statements = [self.raw["MedicationStatement"][rid] for rid in statement_tags]
        lean_requests = frozenset(rid for rid, tags in request_tags.items() if "everolimus" not in tags)
        lean_statements = frozenset(rid for rid, tags in statement_tags.items() if "everolimus" not in tags)
        referenced_meds = {
            key
            for r in [*requests, *statements, *draft_raws]
            if (key := self._medication_key(r)) is not None and key in medications_raw
        }
        roles, practitioners = self._people(drafts, unvalidated, user_ref)
        return PatientRecord(
            patient_id=self.patient_id,
            patient=self._patient(),
            conditions=self._validate_all(
                "Condition", [r for r in self.raw["Condition"].values() if self._condition_relevant(r)]
            ),
            observations=self._validate_all(
                "Observation", [r for r in self.raw["Observation"].values() if self._observation_relevant(r)]
            ),
            medication_requests=self._validate_all("MedicationRequest", requests, lean_requests),
            medication_statements=self._validate_all("MedicationStatement", statements, lean_statements),
            coverages=self._validate_all("Coverage", list(self.raw["Coverage"].values())),
            practitioners={p.id: p for p in self._validate_all("Practitioner", practitioners)},
            practitioner_roles={r.id: r for r in self._validate_all("PractitionerRole", roles)},
            allergies=self._validate_all(
                "AllergyIntolerance", [r for r in self.raw["AllergyIntolerance"].values() if self._allergy_relevant(r)]
            ),
            medications={
                f"Medication/{m.id}": m
                for m in self._validate_all("Medication", [medications_raw[k] for k in sorted(referenced_meds)])
            },
            draft_orders=tuple(drafts),
            unvalidated_drafts=unvalidated,
            dropped=tuple(self.dropped),
            ignored=tuple(self.ignored),
            repaired=tuple(self.repaired),
        )

    def _patient(self) -> Patient | None:
        patients = self.raw["Patient"]
        raw = patients.get(self.patient_id) if self.patient_id else next(iter(patients.values()), None)
        if raw is None:
            return None
        validated = self._validate_all("Patient", [raw])
        return validated[0] if validated else None

    def _drafts(
        self, draft_raws: list[dict[str, Any]], medications_raw: Mapping[str, dict[str, Any]]
    ) -> tuple[list[MedicationRequest], dict[str, dict[str, Any]]]:
        """Drafts whose medication the tables know; an everolimus draft that fails validation is kept raw."""
        typed: list[MedicationRequest] = []
        unvalidated: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for raw in draft_raws:
            rid = raw.get("id")
            if not isinstance(rid, str) or rid in seen:
                continue
            seen.add(rid)
            concept = medication_concept(raw, medications_raw)
            tags = self._concept_tags(concept.codes, concept.text)
            if not tags:
                continue
            model, data = self._validate(raw, MedicationRequest, lean="everolimus" not in tags)
            if model is not None:
                typed.append(model)
            elif "everolimus" in tags and data is not None:
                unvalidated[rid] = data
        return typed, unvalidated

    def _people(
        self, drafts: list[MedicationRequest], unvalidated: Mapping[str, dict[str, Any]], user_ref: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The requesters' PractitionerRoles and Practitioners, and every role of those practitioners.

        When no requester or user reference finds anyone, every role and practitioner is kept: the
        prefetch only carries the user's own, and a few more validations beat losing the specialty.
        """
        refs = [reference_of(get(d, "requester")) for d in [*drafts, *unvalidated.values()]] + [user_ref]
        role_ids: set[str] = set()
        practitioner_ids: set[str] = set()
        for ref in refs:
            rtype, rid = split_reference(ref)
            if rtype == "PractitionerRole" and rid:
                role_ids.add(rid)
            elif rtype == "Practitioner" and rid:
                practitioner_ids.add(rid)
        for rid in role_ids:
            role = self.raw["PractitionerRole"].get(rid)
            ptype, pid = split_reference(reference_of(role.get("practitioner"))) if role else (None, None)
            if ptype == "Practitioner" and pid:
                practitioner_ids.add(pid)
        roles = [
            r
            for rid, r in self.raw["PractitionerRole"].items()
            if rid in role_ids or split_reference(reference_of(r.get("practitioner")))[1] in practitioner_ids
        ]
        practitioners = [p for pid, p in self.raw["Practitioner"].items() if pid in practitioner_ids]
        if not roles and not practitioners:
            return list(self.raw["PractitionerRole"].values()), list(self.raw["Practitioner"].values())
        return roles, practitioners

    # -- relevance (raw dicts, cheap) --------------------------------------------------------

    def _concept_tags(self, codes: Any, text: str) -> frozenset[str]:
        tags: set[str] = set()
        for coding in codes:
            if self.tables.system_name(coding.system) == "rxnorm":
                tags |= self.tables.ingredient_tags_for_code(coding.code)
        return frozenset(tags | self.tables.ingredient_tags_in_text(text))

    def _medication_tags(
        self, resource: dict[str, Any], medications_raw: Mapping[str, dict[str, Any]]
    ) -> frozenset[str]:
        concept = medication_concept(resource, medications_raw)
        return self._concept_tags(concept.codes, concept.text)

    @staticmethod
    def _medication_key(resource: dict[str, Any]) -> str | None:
        rtype, rid = split_reference(reference_of(resource.get("medicationReference")))
        return f"Medication/{rid}" if rtype == "Medication" else None

    def _condition_relevant(self, resource: dict[str, Any]) -> bool:
        concepts = [resource.get("code")] + [get(stage, "summary") for stage in items(resource, "stage")]
        return any(
            self.tables.condition_code_relevant(self.tables.system_name(c.system), c.code)
            for concept in concepts
            for c in codings(concept)
        )

    def _observation_relevant(self, resource: dict[str, Any]) -> bool:
        concepts = [resource.get("code")] + [get(component, "code") for component in items(resource, "component")]
        return any(
            self.tables.system_name(c.system) == "loinc" and c.code in self.tables.receptor_tests
            for concept in concepts
            for c in codings(concept)
        )

    def _allergy_relevant(self, resource: dict[str, Any]) -> bool:
        concept = resource.get("code")
        text = " | ".join(concept_texts(concept)) if concept is not None else ""
        return "everolimus" in self._concept_tags(codings(concept), text)

    # -- validation --------------------------------------------------------------------------

    def _validate_all(
        self, rtype: str, raws: list[dict[str, Any]], lean: frozenset[str] = frozenset()
    ) -> tuple[Any, ...]:
        """Validate each raw entry; ids in ``lean`` are pruned to what a non-everolimus medication needs."""
        model_cls = MODELS[rtype]
        out = []
        for raw in raws:
            model, _ = self._validate(raw, model_cls, raw.get("id") in lean)
            if model is not None:
                out.append(model)
        return tuple(out)

    def _validate(
        self, raw: dict[str, Any], model_cls: type[M], lean: bool = False
    ) -> tuple[M | None, dict[str, Any] | None]:
        """(model, repaired data); model None when even the repaired data does not validate."""
        rtype = raw.get("resourceType", "?")
        label = f"{rtype}/{raw.get('id')}"
        data, notes = repair(_prune(raw, lean))
        copied = False
        for _ in range(MAX_REPAIR_ROUNDS + 1):
            try:
                model = model_cls.model_validate(data)
            except ValidationError as exc:
                if not copied:
                    data, copied = deep_copy_json(data), True
                fixes = _fix_errors(data, exc)
                if not fixes:
                    self.dropped.append(f"{label}: {_reason(exc)}")
                    self.repaired.extend(f"{label}: {n}" for n in notes)
                    return None, data
                notes.extend(fixes)
                continue
            self.repaired.extend(f"{label}: {n}" for n in notes)
            return model, data
        self.dropped.append(f"{label}: still invalid after {MAX_REPAIR_ROUNDS} repairs")
        return None, data


def _prune(raw: dict[str, Any], lean: bool = False) -> dict[str, Any]:
    """Keep resourceType, id and the elements the facts read (with their primitive extensions).

    ``lean`` is for orders and statements of medications other than everolimus: only their tags and
    start date are read, so their dosage and supply are not validated at all.
    """
    rtype = raw.get("resourceType", "")
    keep = KEEP_OTHER_MEDICATION if lean else KEEP.get(rtype, frozenset())
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.removeprefix("_")
        if key in ("resourceType", "id") or name in keep or _is_kept_choice(name, keep):
            out[key] = value
    for key in ("dosageInstruction", "dosage"):
        if isinstance(out.get(key), list):
            out[key] = [_prune_dosage(d) for d in out[key]]
    if lean and isinstance(out.get("dispenseRequest"), dict):
        out["dispenseRequest"] = {k: v for k, v in out["dispenseRequest"].items() if k == "validityPeriod"}
    return out


def _prune_dosage(dosage: Any) -> Any:
    if not isinstance(dosage, dict):
        return dosage
    return {k: v for k, v in dosage.items() if (k.removeprefix("_")) in KEEP_DOSAGE}


def _is_kept_choice(name: str, keep: frozenset[str]) -> bool:
    for stem in CHOICE_STEMS & keep:
        if name.startswith(stem) and len(name) > len(stem) and name[len(stem)].isupper():
            return True
    return False


def _fix_errors(data: dict[str, Any], exc: ValidationError) -> list[str]:
    """Apply the safe repairs a validation error points at: wrap a lone object, drop an unknown element."""
    fixes = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if isinstance(part, (str, int))]
        path = ".".join(str(p) for p in loc)
        if error["type"] == "list_type" and wrap_path(data, loc):
            fixes.append(f"{path} wrapped in a list")
        elif error["type"] == "extra_forbidden" and drop_path(data, loc):
            fixes.append(f"unknown element {path} dropped")
    return fixes


def _reason(exc: ValidationError) -> str:
    """The first error's location and kind; never the offending value (it may be PHI)."""
    error = exc.errors()[0]
    path = ".".join(str(p) for p in error["loc"] if isinstance(p, (str, int))) or "resource"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {error['type']}{more}"
