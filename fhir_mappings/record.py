"""Raw FHIR resources (prefetch, fetched, draft orders) -> a typed ``PatientRecord``.

Validating a FHIR resource costs far more than reading a dict, so the record holds only what the
policy reads: raw entries are routed by resourceType (whatever prefetch key they came under), deduped
by type and id, filtered through the code tables, pruned to the elements the facts read, repaired for
known client oddities, and only then validated with ``fhir.resources.R4B``. An entry that still fails
is dropped and named in ``record.dropped`` ("Type/id: element: error type", no values); an entry about
another patient is named in ``record.ignored``. Neither is ever fatal. Draft orders go the same way: a draft
of the drug that does not validate is dropped and reported like a prefetch entry, and the caller answers
for that order without evaluating it (``PatientRecord.draft`` gives None, ``dropped_reason`` says why).

Pruning, the repair check and interning run as one pass over each raw resource (``_prepared``); only a resource
that ``repair`` would change (or that fails) takes the general path: prune, repair, intern, validate, fix errors.

Only raw dicts are read here before validation, with the ``raw_*`` readers of ``normalize``; the record
itself holds validated models only, read by the fact layer through ``fhir_mappings.read``.

Validation input is interned: a CodeableConcept that validated once is reused as the validated model
(charts and requests repeat the same status, category and code concepts endlessly), and a Reference is
validated once per request. fhir.resources accepts a model instance where it expects that element and
does not validate it again, so the typed record is the same as without interning -- the models are only
ever read, never mutated. The concept cache is bounded and holds CodeableConcepts only (codes, displays,
concept text), never references, identifiers or dates; references (patient and practitioner ids) are
interned for one call only.

fhir_core's per-element Python validation runs through ``fast_validation`` (installed on import): the same
checks and errors, with what it reads from each model class worked out once per class. Models are built with
``Model(**data)``, which is what ``Model.model_validate(data)`` calls (fhir.resources models have their own
``__init__``), without the second run of the model's after-validator that ``model_validate`` adds around it.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.element import Element
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.reference import Reference
from pydantic import BaseModel, ValidationError

from . import fast_validation
from .allergies import class_tags_in_text
from .codes import CodeTables
from .diagnoses import HISTOLOGY_EXTENSION
from .normalize import (
    REPAIRABLE,
    Code,
    deep_copy_json,
    drop_path,
    iter_bundle,
    raw_codings,
    raw_concept_texts,
    raw_get,
    raw_items,
    raw_medication_concept,
    raw_reference,
    raw_system_codes,
    repair,
    repairs,
    split_reference,
    wrap_path,
)
from .read import reference_of

fast_validation.install()

MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient,
    "Condition": Condition,
    "Observation": Observation,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "MedicationDispense": MedicationDispense,
    "Coverage": Coverage,
    "Practitioner": Practitioner,
    "PractitionerRole": PractitionerRole,
    "AllergyIntolerance": AllergyIntolerance,
    "Medication": Medication,
    "Procedure": Procedure,
}

#: Top-level elements the facts read, per type (choice elements by their stem: "onset" keeps onsetDateTime).
KEEP: dict[str, frozenset[str]] = {
    "Patient": frozenset({"birthDate"}),
    "Condition": frozenset(
        {
            "clinicalStatus",
            "verificationStatus",
            "code",
            "subject",
            "onset",
            "abatement",
            "recordedDate",
            "stage",
            "bodySite",
            "note",
            "extension",  # only the mCODE histology-morphology-behavior one (see _prune)
        }
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
            "reasonReference",
            "substitution",
            "insurance",
            "contained",
        }
    ),
    "MedicationStatement": frozenset({"status", "medication", "subject", "effective", "dosage", "contained"}),
    "MedicationDispense": frozenset(
        {
            "status",
            "medication",
            "subject",
            "whenHandedOver",
            "whenPrepared",
            "daysSupply",
            "dosageInstruction",
            "contained",
        }
    ),
    "Coverage": frozenset({"status", "type", "class", "beneficiary", "payor", "order"}),
    "PractitionerRole": frozenset({"active", "practitioner", "specialty"}),
    "Practitioner": frozenset({"qualification"}),
    "AllergyIntolerance": frozenset(
        {"clinicalStatus", "verificationStatus", "type", "code", "patient", "onset", "recordedDate"}
    ),
    "Medication": frozenset({"code", "form"}),
    "Procedure": frozenset({"status", "code", "subject", "performed"}),
}
#: What is read of an order or statement for a medication other than the drug (tags and start date only).
KEEP_OTHER_MEDICATION = frozenset(
    {
        "status",
        "intent",
        "medication",
        "subject",
        "authoredOn",
        "effective",
        "dispenseRequest",
        "contained",
        "whenHandedOver",
        "whenPrepared",
        "daysSupply",
    }
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
        "route",
    }
)
CHOICE_STEMS = frozenset({"onset", "abatement", "effective", "value", "medication", "performed"})
#: The element naming the patient a resource is about.
PATIENT_ELEMENT: dict[str, str] = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "MedicationDispense": "subject",
    "Coverage": "beneficiary",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
}
MAX_REPAIR_ROUNDS = 3
#: Validated CodeableConcepts kept across requests (about 1.7 KB each); the cache is emptied when full.
CONCEPT_CACHE_SIZE = 2048

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
    #: Pharmacy dispenses of medications the tables know (the drug's days on therapy, prior therapies).
    medication_dispenses: tuple[MedicationDispense, ...] = ()
    coverages: tuple[Coverage, ...] = ()
    practitioners: Mapping[str, Practitioner] = field(default_factory=dict)
    practitioner_roles: Mapping[str, PractitionerRole] = field(default_factory=dict)
    #: Allergies and intolerances to the drug or to an ingredient the tables know (safe suggestions read them).
    allergies: tuple[AllergyIntolerance, ...] = ()
    #: Procedures whose code the procedure table knows (a kidney or liver transplant), any status.
    procedures: tuple[Procedure, ...] = ()
    #: Medications referenced by the kept orders/statements, by "Medication/<id>".
    medications: Mapping[str, Medication] = field(default_factory=dict)
    #: Draft MedicationRequests of the request whose medication the tables know (the drug or an ingredient) and
    #: that validated; one that did not is in ``dropped``.
    draft_orders: tuple[MedicationRequest, ...] = ()
    #: Entries that did not validate, even repaired: "Type/id: element: error type" (no values).
    dropped: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    #: Conditions about the patient that are not entered-in-error or refuted, whatever their code: none at all
    #: (and no reason on the order) means no diagnosis is documented, not an off-label one.
    condition_count: int = 0

    def draft(self, order_id: str) -> MedicationRequest | None:
        """A draft order by id ("abc" or "MedicationRequest/abc"); None when the request holds no such draft of a
        medication the tables know, or it did not validate (then ``dropped_reason`` says why)."""
        bare = order_id.split("/")[-1]
        for order in self.draft_orders:
            if order.id == bare:
                return order
        return None

    def dropped_reason(self, ref: str) -> str | None:
        """Why the entry ``ref`` ("Type/id") was dropped ("element: error type", no values); None if it was not."""
        prefix = f"{ref}: "
        for entry in self.dropped:
            if entry.startswith(prefix):
                return entry[len(prefix) :]
        return None


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
        #: Validated References of this call by their JSON (see the module docstring).
        self.references: dict[bytes, BaseModel] = {}
        self.own_reference = f"Patient/{patient_id}" if patient_id is not None else None

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
        subject = resource.get(element)
        if isinstance(subject, dict) and subject.get("reference") == self.own_reference:
            return False  # the common case, decided without parsing the reference
        ref_type, ref_id = split_reference(raw_reference(subject))
        return ref_type == "Patient" and ref_id != self.patient_id

    # -- assembling --------------------------------------------------------------------------

    def build(self, draft_orders: Sequence[Any], user_ref: str | None) -> PatientRecord:
        medications_raw = {f"Medication/{rid}": r for rid, r in self.raw["Medication"].items()}
        draft_raws = [r for r in iter_bundle(list(draft_orders)) if r.get("resourceType") == "MedicationRequest"]
        drafts = self._drafts(draft_raws, medications_raw)
        draft_ids = {r.get("id") for r in draft_raws if isinstance(r.get("id"), str)}
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
        dispense_tags = {
            rid: tags
            for rid, r in self.raw["MedicationDispense"].items()
            if (tags := self._medication_tags(r, medications_raw))
        }
        requests = [self.raw["MedicationRequest"][rid] for rid in request_tags]
        statements = [self.raw["MedicationStatement"][rid] for rid in statement_tags]
        dispenses = [self.raw["MedicationDispense"][rid] for rid in dispense_tags]
        dosage_read = self.tables.dosage_read_tags
        lean_requests = frozenset(rid for rid, tags in request_tags.items() if not tags & dosage_read)
        lean_statements = frozenset(rid for rid, tags in statement_tags.items() if not tags & dosage_read)
        lean_dispenses = frozenset(rid for rid, tags in dispense_tags.items() if not tags & dosage_read)
        referenced_meds = {
            key
            for r in [*requests, *statements, *dispenses, *draft_raws]
            if (key := self._medication_key(r)) is not None and key in medications_raw
        }
        roles, practitioners = self._people(drafts, user_ref)
        return PatientRecord(
            patient_id=self.patient_id,
            patient=self._patient(),
            conditions=self._validate_all(
                Condition, [r for r in self.raw["Condition"].values() if self._condition_relevant(r)]
            ),
            observations=self._validate_all(
                Observation, [r for r in self.raw["Observation"].values() if self._observation_relevant(r)]
            ),
            medication_requests=self._validate_all(MedicationRequest, requests, lean_requests),
            medication_statements=self._validate_all(MedicationStatement, statements, lean_statements),
            medication_dispenses=self._validate_all(MedicationDispense, dispenses, lean_dispenses),
            coverages=self._validate_all(Coverage, list(self.raw["Coverage"].values())),
            practitioners={p.id: p for p in self._validate_all(Practitioner, practitioners) if p.id},
            practitioner_roles={r.id: r for r in self._validate_all(PractitionerRole, roles) if r.id},
            allergies=self._validate_all(
                AllergyIntolerance, [r for r in self.raw["AllergyIntolerance"].values() if self._allergy_relevant(r)]
            ),
            procedures=self._validate_all(
                Procedure, [r for r in self.raw["Procedure"].values() if self._procedure_relevant(r)]
            ),
            medications={
                f"Medication/{m.id}": m
                for m in self._validate_all(Medication, [medications_raw[k] for k in sorted(referenced_meds)])
            },
            draft_orders=tuple(drafts),
            dropped=tuple(self.dropped),
            ignored=tuple(self.ignored),
            repaired=tuple(self.repaired),
            condition_count=sum(1 for r in self.raw["Condition"].values() if _counts_as_condition(r)),
        )

    def _patient(self) -> Patient | None:
        patients = self.raw["Patient"]
        raw = patients.get(self.patient_id) if self.patient_id else next(iter(patients.values()), None)
        if raw is None:
            return None
        validated = self._validate_all(Patient, [raw])
        return validated[0] if validated else None

    def _drafts(
        self, draft_raws: list[dict[str, Any]], medications_raw: Mapping[str, dict[str, Any]]
    ) -> list[MedicationRequest]:
        """Drafts whose medication the tables know, validated; one that does not validate is dropped like any entry."""
        typed: list[MedicationRequest] = []
        seen: set[str] = set()
        for raw in draft_raws:
            rid = raw.get("id")
            if not isinstance(rid, str) or rid in seen:
                continue
            seen.add(rid)
            concept = raw_medication_concept(raw, medications_raw)
            tags = self._concept_tags(concept.codes, concept.text)
            if not tags:
                continue
            model = self._validate(raw, MedicationRequest, lean=not tags & self.tables.dosage_read_tags)
            if model is not None:
                typed.append(model)
        return typed

    def _people(
        self, drafts: list[MedicationRequest], user_ref: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The requesters' PractitionerRoles and Practitioners, and every role of those practitioners.

        When no requester or user reference finds anyone, every role and practitioner is kept: the
        prefetch only carries the user's own, and a few more validations beat losing the specialty.
        """
        refs = [reference_of(d.requester) for d in drafts] + [user_ref]
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
            ptype, pid = split_reference(raw_reference(role.get("practitioner"))) if role else (None, None)
            if ptype == "Practitioner" and pid:
                practitioner_ids.add(pid)
        roles = [
            r
            for rid, r in self.raw["PractitionerRole"].items()
            if rid in role_ids or split_reference(raw_reference(r.get("practitioner")))[1] in practitioner_ids
        ]
        practitioners = [p for pid, p in self.raw["Practitioner"].items() if pid in practitioner_ids]
        if not roles and not practitioners:
            return list(self.raw["PractitionerRole"].values()), list(self.raw["Practitioner"].values())
        return roles, practitioners

    # -- relevance (raw dicts, cheap) --------------------------------------------------------

    def _concept_tags(self, codes: Iterable[Code], text: str) -> frozenset[str]:
        tags: set[str] = set()
        for coding in codes:
            if self.tables.system_name(coding.system) == "rxnorm":
                tags |= self.tables.ingredient_tags_for_code(coding.code)
        return frozenset(tags | self.tables.ingredient_tags_in_text(text))

    def _medication_tags(
        self, resource: dict[str, Any], medications_raw: Mapping[str, dict[str, Any]]
    ) -> frozenset[str]:
        concept = raw_medication_concept(resource, medications_raw)
        return self._concept_tags(concept.codes, concept.text)

    @staticmethod
    def _medication_key(resource: dict[str, Any]) -> str | None:
        rtype, rid = split_reference(raw_reference(resource.get("medicationReference")))
        return f"Medication/{rid}" if rtype == "Medication" else None

    def _condition_relevant(self, resource: dict[str, Any]) -> bool:
        main = resource.get("code")
        concepts = [main] + [raw_get(stage, "summary") for stage in raw_items(resource, "stage")]
        concepts += [raw_get(ext, "valueCodeableConcept") for ext in _histology_extensions(resource)]
        if any(
            self.tables.condition_code_relevant(self.tables.system_name(system), code)
            for concept in concepts
            for system, code in raw_system_codes(concept)
        ):
            return True
        return bool(self.tables.diagnosis_words(raw_codings(main), raw_concept_texts(main)))

    def _observation_relevant(self, resource: dict[str, Any]) -> bool:
        concepts = [resource.get("code")] + [
            raw_get(component, "code") for component in raw_items(resource, "component")
        ]
        return any(
            self._observation_code_read(self.tables.system_name(system), code)
            for concept in concepts
            for system, code in raw_system_codes(concept)
        )

    def _observation_code_read(self, system: str | None, code: str | None) -> bool:
        """A receptor test (receptor_tests.csv), a response-to-therapy assessment (therapy_response.csv) or a lab
        test the pack names (lab_tests.csv)."""
        is_receptor_test = system == "loinc" and code in self.tables.receptor_tests
        is_lab_test = self.tables.lab_test_tag(system, code) is not None
        return is_receptor_test or is_lab_test or self.tables.is_response_observation(system, code)

    def _allergy_relevant(self, resource: dict[str, Any]) -> bool:
        """To the drug (a generic exception) or to any ingredient a suggestion could name (never suggested then)."""
        concept = resource.get("code")
        text = " | ".join(raw_concept_texts(concept)) if concept is not None else ""
        groups = self.tables.medication_group_tags
        return bool(self._concept_tags(raw_codings(concept), text) or class_tags_in_text(text, groups))

    def _procedure_relevant(self, resource: dict[str, Any]) -> bool:
        """A code the procedure table knows, or words naming a diagnosis ("kidney transplant")."""
        system_name, concept = self.tables.system_name, resource.get("code")
        if any(self.tables.procedure_tags(system_name(s), c) for s, c in raw_system_codes(concept)):
            return True
        return any(self.tables.condition_tags_in_text(text) for text in raw_concept_texts(concept))

    # -- validation --------------------------------------------------------------------------

    def _validate_all(
        self, model_cls: type[M], raws: list[dict[str, Any]], lean: frozenset[str] = frozenset()
    ) -> tuple[M, ...]:
        """Validate each raw entry; ids in ``lean`` are pruned to what a medication other than the drug needs."""
        out = []
        for raw in raws:
            model = self._validate(raw, model_cls, raw.get("id") in lean)
            if model is not None:
                out.append(model)
        return tuple(out)

    def _validate(self, raw: dict[str, Any], model_cls: type[M], lean: bool = False) -> M | None:
        """The validated model, or None when even the repaired data does not validate (named in ``dropped``).

        A resource nested deeper than Python's recursion allows (prefetch is not depth-checked at the door, to
        keep large charts cheap) is dropped like any other invalid entry. So is one the model library fails on
        with something other than a ``ValidationError`` (an unknown ``resourceType`` in ``contained`` raises
        ``KeyError``, a primitive's ``_status`` given as a string ``AttributeError``): any exception validating
        one resource makes that resource invalid, never the request.
        """
        try:
            return self._validate_once(raw, model_cls, lean)
        except RecursionError:
            self.dropped.append(f"{raw.get('resourceType', '?')}/{raw.get('id')}: nested too deeply")
            return None
        except Exception as exc:  # noqa: BLE001 - the library's own failure on odd input: the resource is invalid
            self.dropped.append(f"{raw.get('resourceType', '?')}/{raw.get('id')}: not valid ({type(exc).__name__})")
            return None

    def _validate_once(self, raw: dict[str, Any], model_cls: type[M], lean: bool = False) -> M | None:
        try:
            prepared = _prepared(raw, lean, model_cls, self.references)
            if prepared is not None:
                return model_cls(**prepared)
        except Exception:  # noqa: BLE001, S110 - the general path runs it all again, in its order, and reports it
            pass
        return self._validate_repaired(raw, model_cls, _slots(model_cls), lean)

    def _validate_repaired(
        self, raw: dict[str, Any], model_cls: type[M], slots: Mapping[str, _Slot], lean: bool
    ) -> M | None:
        """Prune, repair, validate, and fix what the errors point at (up to ``MAX_REPAIR_ROUNDS`` times)."""
        rtype = raw.get("resourceType", "?")
        label = f"{rtype}/{raw.get('id')}"
        data, notes = repair(_prune(raw, lean))
        copied = False
        for _ in range(MAX_REPAIR_ROUNDS + 1):
            try:
                model = model_cls(**_interned(data, slots, self.references))
            except ValidationError as exc:
                if not copied:
                    data, copied = deep_copy_json(data), True
                fixes = _fix_errors(data, exc)
                if not fixes:
                    self.dropped.append(f"{label}: {_reason(exc)}")
                    self.repaired.extend(f"{label}: {n}" for n in notes)
                    return None
                notes.extend(fixes)
                continue
            if notes:
                self.repaired.extend(f"{label}: {n}" for n in notes)
            return model
        self.dropped.append(f"{label}: still invalid after {MAX_REPAIR_ROUNDS} repairs")
        return None


_NOT_A_CONDITION = frozenset({"entered-in-error", "refuted"})


def _counts_as_condition(resource: dict[str, Any]) -> bool:
    """A Condition on record unless it was entered in error or refuted (raw dict, any shape)."""
    status = resource.get("verificationStatus")
    codes = [code for _, code in raw_system_codes(status)] if isinstance(status, dict) else []
    return not any(code in _NOT_A_CONDITION for code in codes)


# ----------------------------------------------------------------------------- interning


@dataclass(frozen=True)
class _Slot:
    """How one element of a model is interned: as a concept, a reference, or by descending into it."""

    kind: str  # "concept" | "reference" | "element"
    many: bool
    model: type[BaseModel]


_SLOTS: dict[type[BaseModel], dict[str, _Slot]] = {}
#: Keys are exact JSON: dates, dataclasses and str/int subclasses are refused rather than converted.
_STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_CONCEPTS: dict[bytes, BaseModel] = {}
#: keep set -> element name -> kept by ``_prune``: a pure function of the two, worked out once per name (element
#: names, never values; at most ``KEPT_KEYS_SIZE`` names per keep set, further names are decided each time).
_KEPT_KEYS: dict[frozenset[str], dict[str, bool]] = {}
_NOTHING: frozenset[str] = frozenset()
#: ``_prepared``'s step per element name: False (pruned) or (pruned inside, ``repair`` may change it, its slot).
_Step = Literal[False] | tuple[bool, bool, "_Slot | None"]
#: (resource type, lean, model class) -> element name -> its ``_Step``: a pure function of the three and the name,
#: worked out once per name (names, never values; at most ``KEPT_KEYS_SIZE`` names each, further ones each time).
_STEPS: dict[tuple[Any, bool, type[BaseModel]], dict[str, _Step]] = {}
KEPT_KEYS_SIZE = 512


def clear_validation_caches() -> None:
    """Forget every interned CodeableConcept and remembered decimal (benchmarks measure the cold path with this)."""
    _CONCEPTS.clear()
    fast_validation.forget_values()


def _slots(model_cls: type[BaseModel]) -> dict[str, _Slot]:
    """JSON name -> slot for the elements of ``model_cls`` worth interning (computed once per class)."""
    slots = _SLOTS.get(model_cls)
    if slots is None:
        slots = {}
        for name, info in model_cls.model_fields.items():
            element, many = _element_type(info.annotation)
            model = _model_of(element)
            if model is None:
                continue
            if model is CodeableConcept:
                kind = "concept"
            elif model is Reference:
                kind = "reference"
            elif issubclass(model, Element):
                kind = "element"
            else:  # contained resources stay raw
                continue
            slots[info.alias or name] = _Slot(kind, many, model)
        _SLOTS[model_cls] = slots
    return slots


def _element_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a list) of a field annotation such as ``Optional[List[CodeableConceptType]]``."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is list:
            many, annotation = True, typing.get_args(annotation)[0]
        elif origin is not None:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None, False
            annotation = args[0]
        else:
            return annotation, many


def _model_of(element: Any) -> type[BaseModel] | None:
    klass = getattr(element, "get_model_klass", None)
    if klass is None:
        return None
    model = klass()
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _interned(value: dict[str, Any], slots: Mapping[str, _Slot], references: dict[bytes, BaseModel]) -> dict[str, Any]:
    """``value`` with its valid concepts and references replaced by validated models (a copy; never mutated)."""
    changed: dict[str, Any] | None = None
    for key, item in value.items():  # in the data's order: a failure other than a ValidationError is the first one
        slot = slots.get(key)
        if slot is None:
            continue
        new = _intern_list(item, slot, references) if slot.many else _intern_one(item, slot, references)
        if new is not item:
            if changed is None:
                changed = dict(value)
            changed[key] = new
    return value if changed is None else changed


def _prepared(
    raw: dict[str, Any], lean: bool, model_cls: type[BaseModel], references: dict[bytes, BaseModel]
) -> dict[str, Any] | None:
    """``_interned(repair(_prune(raw, lean))[0], _slots(model_cls), references)`` in one pass over ``raw`` when ``repair``
    changes nothing; None when it may (a lone object where an array belongs, an STU3 dose, an R5 medication).

    The passes are the same functions, applied element by element: one dict is built instead of three, and what
    each pass does with an element name is looked up once (``_STEPS``), not in three tables per element.
    """
    rtype = raw.get("resourceType", "")
    steps = _STEPS.get((rtype, lean, model_cls))
    if steps is None:
        steps = _STEPS.setdefault((rtype, lean, model_cls), {})
    out: dict[str, Any] = {}
    for key, value in raw.items():
        step = steps.get(key)
        if step is None:
            step = _step(key, rtype, lean, model_cls)
            if len(steps) < KEPT_KEYS_SIZE:
                steps[key] = step
        if step is False:
            continue
        inside, repairable, slot = step
        if inside and (value := _pruned_inside(rtype, lean, key, value, raw)) is _DROPPED:
            continue
        if repairable and repairs(rtype, key, value):
            return None
        if slot is not None:
            value = _intern_list(value, slot, references) if slot.many else _intern_one(value, slot, references)
        out[key] = value
    return out


def _step(key: str, rtype: Any, lean: bool, model_cls: type[BaseModel]) -> _Step:
    """What ``_prepared`` does with element ``key``: False (pruned), else (``_prune`` prunes inside it, ``repair``
    may change it, how it is interned)."""
    if not _is_kept(key, KEEP_OTHER_MEDICATION if lean else KEEP.get(rtype, _NOTHING)):
        return False
    return key in _PRUNED_INSIDE, key in REPAIRABLE.get(rtype, _NOTHING), _slots(model_cls).get(key)


def _intern_list(item: Any, slot: _Slot, references: dict[bytes, BaseModel]) -> Any:
    """A list member of an object, interned item by item (the list itself when nothing changed)."""
    if not isinstance(item, list):
        return item
    new = [_intern_one(x, slot, references) for x in item]
    return new if any(map(operator.is_not, new, item)) else item


def _intern_one(item: Any, slot: _Slot, references: dict[bytes, BaseModel]) -> Any:
    """A validated model for a concept or reference dict, or the dict itself when it does not validate."""
    if not isinstance(item, dict):
        return item
    if slot.kind == "element":
        return _interned(item, _slots(slot.model), references)
    cache = _CONCEPTS if slot.kind == "concept" else references
    try:
        key = orjson.dumps(item, option=_STRICT_JSON)
    except TypeError:  # not plain JSON (a caller passed Python objects): validate as usual
        return item
    model = cache.get(key)
    if model is None:
        try:
            model = slot.model(**item)
        except ValidationError:
            return item  # validated in place, so the error keeps its location
        if cache is _CONCEPTS and len(_CONCEPTS) >= CONCEPT_CACHE_SIZE:
            _CONCEPTS.clear()
        cache[key] = model
    return model


def _prune(raw: dict[str, Any], lean: bool = False) -> dict[str, Any]:
    """Keep resourceType, id and the elements the facts read (with their primitive extensions).

    ``lean`` is for orders and statements of medications other than the drug: only their tags and
    start date are read, so their dosage and supply are not validated at all.
    """
    rtype = raw.get("resourceType", "")
    keep = KEEP_OTHER_MEDICATION if lean else KEEP.get(rtype, _NOTHING)
    decided = _KEPT_KEYS.setdefault(keep, {})
    if not decided.keys() >= raw.keys():
        decided = _decide_keys(raw, keep, decided)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not decided[key]:
            continue
        if key in _PRUNED_INSIDE and (value := _pruned_inside(rtype, lean, key, value, raw)) is _DROPPED:
            continue
        out[key] = value
    return out


#: Elements ``_prune`` prunes inside (besides dropping top-level names).
_PRUNED_INSIDE = frozenset({"extension", "dispenseRequest", "dosageInstruction", "dosage"})
#: What ``_pruned_inside`` gives for an element that keeps nothing (dropped from the resource).
_DROPPED: Any = object()


def _pruned_inside(rtype: str, lean: bool, key: str, value: Any, raw: dict[str, Any]) -> Any:
    """What is kept inside element ``key`` (one of ``_PRUNED_INSIDE``) of ``raw``, or ``_DROPPED``: a Condition keeps
    only its histology extensions, a lean order only its supply's validity period, every dosage only what the dose
    readers read. ``_prune`` and ``_prepared`` both prune with it."""
    if key == "extension":
        if rtype != "Condition":
            return value
        return _histology_extensions(raw) or _DROPPED
    if key == "dispenseRequest":
        if lean and isinstance(value, dict):
            return {k: v for k, v in value.items() if k == "validityPeriod"}
        return value
    return [_prune_dosage(d) for d in value] if isinstance(value, list) else value


def _histology_extensions(resource: dict[str, Any]) -> list[Any]:
    """The mCODE histology-morphology-behavior extensions of a raw Condition (the only extensions read)."""
    return [ext for ext in raw_items(resource, "extension") if raw_get(ext, "url") == HISTOLOGY_EXTENSION]


def _prune_dosage(dosage: Any) -> Any:
    if not isinstance(dosage, dict):
        return dosage
    return {k: v for k, v in dosage.items() if (k.removeprefix("_")) in KEEP_DOSAGE}


def _decide_keys(raw: dict[str, Any], keep: frozenset[str], decided: dict[str, bool]) -> dict[str, bool]:
    """``decided`` with ``raw``'s undecided element names added (in place while it has room, else in a copy)."""
    new = {key: _is_kept(key, keep) for key in raw.keys() - decided.keys()}
    if len(decided) + len(new) <= KEPT_KEYS_SIZE:
        decided.update(new)
        return decided
    return {**decided, **new}


def _is_kept(key: str, keep: frozenset[str]) -> bool:
    """Whether ``_prune`` keeps the element ``key`` (remembered per keep set in ``_KEPT_KEYS``)."""
    name = key.removeprefix("_")
    return key in ("resourceType", "id") or name in keep or _is_kept_choice(name, keep)


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
