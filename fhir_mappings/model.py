"""The facts a drug policy reads, each with the evidence (resource references) behind it.

This module is the contract between ``fhir_mappings`` (which builds ``Facts`` from a patient record
and a draft order) and ``cds_service.policy`` (which evaluates criteria over them). Facts are plain,
frozen values: no FHIR models, no I/O. A missing fact is ``None`` or an absent key, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any, TypeVar

_Frozen = TypeVar("_Frozen")


def frozen_instance(cls: type[_Frozen], **fields: Any) -> _Frozen:
    """``cls(**fields)`` for a frozen dataclass given every field, in one ``__dict__`` update instead of
    ``__init__``'s ``object.__setattr__`` per field (several times cheaper): for the values a call builds by the
    hundred (findings, criterion results). No default and no ``__post_init__`` runs, so every field must be given;
    the tests compare each use with the dataclass's own constructor field for field."""
    made: _Frozen = object.__new__(cls)
    made.__dict__.update(fields)
    return made


class LineOfBusiness(str, Enum):
    MEDICAID = "medicaid"
    HIM = "him"
    COMMERCIAL = "commercial"


@dataclass(frozen=True)
class Finding:
    """A fact seen in the record: the resources that show it and, for history, when it started."""

    evidence: tuple[str, ...] = ()  # e.g. ("Condition/abc", "Observation/def")
    start: date | None = None  # earliest known start (history, diagnoses); None when undated


@dataclass(frozen=True)
class AnswerValue:
    """One answer of a QuestionnaireResponse item, read into the forms the policy compares."""

    boolean: bool | None = None
    date: date | None = None
    number: float | None = None  # a quantity's value (its unit in ``unit``)
    unit: str | None = None
    system: str | None = None  # a coding's system, by table name ("icd-10-cm", "rxnorm", "snomed")
    code: str | None = None
    display: str | None = None
    #: Tags the coding carries in the code tables (diagnosis, ingredient with its groups, receptor result).
    tags: frozenset[str] = frozenset()
    text: str | None = None  # a free-text answer (valueString): the reason a prior therapy could not be used

    def words(self) -> str:
        """The answer as a reader would say it ("yes", "2011-04-02", "C50.911 Malignant neoplasm ...")."""
        if self.boolean is not None:
            return "yes" if self.boolean else "no"
        if self.date is not None:
            return self.date.isoformat()
        if self.number is not None:
            return f"{self.number:g} {self.unit or ''}".strip()
        if self.text is not None:
            return f'"{self.text}"'
        return " ".join(part for part in (self.code, self.display) if part) or "(no value)"


@dataclass(frozen=True)
class Answer:
    """A clinician's answer to one questionnaire item (DTR information-origin manual or override)."""

    link_id: str
    source: str  # "QuestionnaireResponse/<id>"
    origin: str  # "manual" | "override"
    values: tuple[AnswerValue, ...] = ()
    author: str | None = None  # "Practitioner/<id>" when the response names one

    def words(self) -> str:
        return ", ".join(v.words() for v in self.values)


@dataclass(frozen=True)
class Product:
    """The product of the requested drug a draft order asks for, resolved through the pack's product table."""

    rxcui: str | None  # the RxNorm code on the order (None when coded only by text)
    display: str
    family: str | None  # the product family (products.csv); None when the drug is ordered but the product is unclear
    is_brand: bool | None  # None when undeterminable
    strength_mg: float | None
    dose_form: str | None  # a form of the shared dose_forms.csv ("tablet", "capsule", "oral-solution" ...)
    generic_rxcui: str | None  # the generic (SCD) of the same strength and form
    generic_display: str | None
    generic_available: bool  # a marketed generic exists for that strength and form


@dataclass(frozen=True)
class Dose:
    """Daily amount from the order's dosageInstruction; None where it cannot be parsed."""

    mg_per_day: float | None
    units_per_day: float | None  # units of the dose form (tablets, capsules, mL)
    #: The sig in a few words for the card ("10 mg twice daily"); None when it cannot be said for certain.
    words: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DraftDose:
    """Another draft of the requested drug in the same request: the day's dose is per member, so limits sum them."""

    order_ref: str  # "MedicationRequest/<id>"
    family: str | None  # the product family (tablet limits sum one family); None when unclear
    dose: Dose


@dataclass(frozen=True)
class Conflict:
    """Two diagnosis tags the tables say exclude each other, both coded on the record: neither is decided."""

    tags: tuple[str, str]
    evidence: tuple[str, ...]  # the Conditions that carry them
    #: For the card: which resource codes what ("Condition/x codes both ... and ...: the codes disagree").
    note: str


@dataclass(frozen=True)
class QualifierFinding:
    """A listed phrase of a Condition's note or code text that documents (or, contrary, denies) a qualifier."""

    qualifier: str  # e.g. "no-immediate-surgery"
    ref: str  # "Condition/<id>"
    quote: str  # "Condition/x note: '... not requiring immediate surgery ...'"
    contrary: bool
    #: The diagnosis tags of that Condition (what the qualifier is about).
    condition_tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LabResult:
    """One final lab value of a test a pack names (lab_tests.csv), as the Observation states it."""

    ref: str  # "Observation/<id>"
    on: date  # the effective date (else issued)
    value: float
    unit: str | None  # the units.csv unit (UCUM code) when the tables know it, else what the Observation says
    #: "<", "<=", ">" or ">=" when the laboratory reports a bound ("< 0.1 ng/mL"), None for a plain value.
    comparator: str | None = None

    def words(self) -> str:
        """ "0.3 ng/mL on 2026-05-01"."""
        bound = f"{self.comparator} " if self.comparator else ""
        return f"{bound}{self.value:g} {self.unit or '(no unit)'} on {self.on.isoformat()}"


@dataclass(frozen=True)
class Facts:
    """Everything the policy may ask about one draft order of the requested drug.

    Tag vocabularies (keys of the mappings) are the ``tag`` columns of the code tables in
    ``fhir_mappings/tables/``; the policy engine checks at start-up that every tag it uses exists.
    """

    order_ref: str  # "MedicationRequest/<id>"
    evaluation_date: date  # the order's authoredOn, else today
    product: Product
    dose: Dose
    age_years: int | None  # completed years on evaluation_date; None without birthDate
    age_evidence: tuple[str, ...] = ()
    #: Diagnosis tag -> finding, from confirmed (or unverified) active Conditions and the order's reasonCode.
    diagnoses: Mapping[str, Finding] = field(default_factory=dict)
    #: Diagnosis tags only suggested (provisional / differential Conditions, or a parent code such as TSC
    #: for renal angiomyolipoma): a pathway naming them applies, but its diagnosis criterion is unknown.
    possible_diagnoses: Mapping[str, Finding] = field(default_factory=dict)
    #: Possible diagnosis tags suggested only by a generic finding (TSC alone suggests each of its
    #: manifestations): the weakest link to a pathway, after coded diagnoses and specific suggestions.
    generic_suggestions: frozenset[str] = frozenset()
    #: Whether the record documents any diagnosis at all (a Condition not entered-in-error or refuted, or a
    #: reason on the order). Without one the pathway cannot be chosen: the prescriber is asked for it.
    diagnosis_documented: bool = True
    #: "er-positive" | "er-negative" | "pr-positive" | "pr-negative" | "her2-positive" | "her2-negative" |
    #: "hr-positive" | "hr-negative" (combined Z17.4x codes).
    receptors: Mapping[str, Finding] = field(default_factory=dict)
    #: Specialty tag ("oncology", "neurology", "nephrology", "hepatology", "transplant") of the requester.
    specialties: Mapping[str, Finding] = field(default_factory=dict)
    requester_ref: str | None = None
    #: Ingredient tag -> other draft orders in this request, or active MedicationRequest / MedicationStatement.
    co_medications: Mapping[str, Finding] = field(default_factory=dict)
    #: Ingredient tag -> any MedicationRequest / MedicationStatement / MedicationDispense started before
    #: evaluation_date (never a cancelled, not-taken or entered-in-error one).
    medication_history: Mapping[str, Finding] = field(default_factory=dict)
    #: Ingredient tag -> co-medications / history whose form the record does not show, for ingredients the
    #: policy names in one form only (octreotide LAR): such an order may or may not be that form.
    co_medications_form_unknown: Mapping[str, Finding] = field(default_factory=dict)
    history_form_unknown: Mapping[str, Finding] = field(default_factory=dict)
    #: Covered days of the CURRENT course of the requested drug before evaluation_date (0 when none: never taken,
    #: or the last course ended more than the pack's ``max_gap_days`` ago), and the dispenses / orders / statements
    #: showing it.
    days_on_drug: int = 0
    drug_evidence: tuple[str, ...] = ()
    #: When the current course began (None without one): response assessments count only after it.
    course_start: date | None = None
    #: The latest disease-status / response assessment after course_start: "responding", "progressing" or
    #: "undetermined" (also when assessments of that day disagree); None when there is none.
    therapy_response: str | None = None
    therapy_response_evidence: tuple[str, ...] = ()
    therapy_response_note: str | None = None
    #: Every other draft of the requested drug in this request (not entered-in-error or cancelled), in request
    #: order: daily limits apply to the member's total, not to one order line.
    other_doses: tuple[DraftDose, ...] = ()
    #: The most recent prior daily dose of the requested drug, for "dose increase" (continued therapy).
    previous_mg_per_day: float | None = None
    #: Documented reason not to use the generic: substitution.allowedBoolean=false with a reason, or a
    #: recorded intolerance / allergy to the requested drug.
    generic_exception: Finding | None = None
    line_of_business: LineOfBusiness | None = None
    line_of_business_evidence: tuple[str, ...] = ()
    #: Requested duration in whole 30-day months (validityPeriod, else supply x fills); None when absent.
    requested_months: int | None = None
    coverage_ref: str | None = None
    #: Diagnosis tag -> Procedures showing it was received (completed, performed on or before evaluation_date);
    #: ``start`` is the latest performed date. From the pack's procedures.csv (a kidney transplant procedure).
    procedures: Mapping[str, Finding] = field(default_factory=dict)
    #: Diagnosis tag -> Procedures scheduled (preparation / in-progress, or performed after evaluation_date).
    scheduled_procedures: Mapping[str, Finding] = field(default_factory=dict)
    #: Ingredient (or medication group) tag -> active AllergyIntolerance entries naming it (allergy or intolerance,
    #: any criticality): a suggestion never names such a drug.
    allergies: Mapping[str, Finding] = field(default_factory=dict)
    #: "AllergyIntolerance/<id>" -> how the card names it ("an allergy", "an intolerance").
    allergy_kinds: Mapping[str, str] = field(default_factory=dict)
    #: Prefetch keys whose data could not be obtained (the FHIR query failed, or it answered only with
    #: another patient's data). What they would have shown is missing, not absent: criteria that would be
    #: decided by absence (a diagnosis, a companion drug, an intolerance) stay unknown instead.
    unavailable: frozenset[str] = frozenset()
    #: Diagnosis tag -> the conflicts it is part of (exclusive_tags.csv): such a tag is only possible, and a
    #: criterion asking about it is unknown with the conflict named.
    diagnosis_conflicts: Mapping[str, tuple[Conflict, ...]] = field(default_factory=dict)
    #: Qualifier phrases read from Conditions' notes and code text (qualifier_phrases.csv), negation-aware.
    qualifiers: tuple[QualifierFinding, ...] = ()
    #: Lab test tag (lab_tests.csv) -> its final values dated on or before evaluation_date, oldest first.
    lab_results: Mapping[str, tuple[LabResult, ...]] = field(default_factory=dict)
    #: Clinician answers (DTR QuestionnaireResponse items, manual or override) by questionnaire linkId: each
    #: decides the test it answers unless coded chart data contradicts it (see cds_service.policy.questions).
    answers: Mapping[str, Answer] = field(default_factory=dict)
