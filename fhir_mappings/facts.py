"""PatientRecord + one draft order of the pack's drug -> the ``Facts`` its policy is evaluated on.

Each fact carries the references of the resources that show it. What the record cannot show stays
absent or ``None`` (the policy then reports it as unknown); nothing here knows what a code means --
that is in the code tables -- only which FHIR elements to read and how statuses and dates count.

The record holds validated fhir.resources models, and everything here reads them by attribute (through the
typed readers of ``fhir_mappings.read``). Only ``find_drug_orders`` reads raw JSON: it runs on the request's
drafts before anything is validated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.dosage import Dosage
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.practitionerrole import PractitionerRole

from .allergies import read_allergies
from .codes import CodeTables, IngredientForm
from .diagnoses import ConditionReading, find_conflicts, read_condition, read_qualifiers
from .dose import administrations_per_day, daily_dose
from .labs import read_lab_results
from .model import (
    Conflict,
    DraftDose,
    Facts,
    Finding,
    LineOfBusiness,
    Product,
    QualifierFinding,
    frozen_instance,
)
from .normalize import (
    MedicationConcept,
    is_partial_date,
    iter_bundle,
    raw_medication_concept,
    split_reference,
    to_date,
    to_float,
)
from .procedures import read_procedures, resolve_possible
from .read import (
    codings,
    concept_texts,
    medication_concept,
    observation_date,
    present,
    reference_of,
    status_code,
)
from .record import PatientRecord
from .therapy import (
    DEFAULT_MAX_GAP_DAYS,
    Course,
    MedicationRecord,
    chart_medication_records,
    current_course,
    drug_uses,
    record_dosages,
    record_end,
    record_start,
    shows_use,
    supply_days,
    therapy_response,
)

#: A medication order, statement or dispense of the chart (or a draft): what the medication readers take.
MedicationResource = MedicationRecord

ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
POSSIBLE_VERIFICATION = frozenset({"provisional", "differential", "unconfirmed"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
CO_DRAFT_STATUS = frozenset({"draft", "active"})
ACTIVE_REQUEST_STATUS = frozenset({"active", "on-hold"})
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order", "plan"})
ACTIVE_STATEMENT_STATUS = frozenset({"active", "intended"})
#: Drafts of the request that are not orders any more: their dose does not add to the day's total.
WITHDRAWN_DRAFT_STATUS = frozenset({"entered-in-error", "cancelled", "stopped", "completed"})
INACTIVE_ALLERGY = frozenset({"inactive", "resolved"})
#: v3 substanceAdminSubstitution "N": no substitution.
NO_SUBSTITUTION_CODES = frozenset({"N"})
COVERAGE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/coverage-class"
#: Order of preference when an order carries several RxNorm codings of the drug.
TTY_RANK = {"SBD": 0, "SCD": 0, "BPCK": 1, "GPCK": 1, "SBDF": 2, "SCDF": 2, "SCDC": 3, "IN": 4}


class OrderNotFound(LookupError):
    """build_facts was asked about a draft the record does not hold."""


# ----------------------------------------------------------------------------- scoping


def find_drug_orders(draft_orders: Sequence[Any], tables: CodeTables) -> list[str]:
    """Ids of the draft MedicationRequests that order the pack's drug, by RxNorm code or by name.

    Reads the request's raw JSON (before validation, so an order of the drug that will not validate is still found
    and answered for)."""
    ids: list[str] = []
    for resource in iter_bundle(list(draft_orders)):
        rid = resource.get("id")
        if resource.get("resourceType") != "MedicationRequest" or not isinstance(rid, str) or rid in ids:
            continue
        if resource.get("status") == "entered-in-error":
            continue
        if is_requested_drug(raw_medication_concept(resource), tables):
            ids.append(rid)
    return ids


def is_requested_drug(concept: MedicationConcept, tables: CodeTables) -> bool:
    for coding in concept.codes:
        if tables.system_name(coding.system) == "rxnorm" and tables.drug_tag in tables.ingredient_tags_for_code(
            coding.code
        ):
            return True
    return tables.text_product(concept.text).is_drug


def form_tags(
    resource: MedicationResource, concept: MedicationConcept, tags: frozenset[str], tables: CodeTables
) -> tuple[frozenset[str], frozenset[str]]:
    """(form tags shown, ingredients whose form the order does not show) for form-specific ingredients.

    Read in order of certainty: the drug-level RxNorm code, the words of the product and the sig, the route,
    then the dosing interval (a depot every 4 weeks is long-acting; several doses a day is short-acting).
    """
    found: set[str] = set()
    unknown: set[str] = set()
    for ingredient in tags & tables.dosage_read_tags:
        forms = tables.ingredient_forms.get(ingredient)
        if not forms:
            continue
        form = _form_of(resource, concept, ingredient, forms, tables)
        if form is None:
            unknown.add(ingredient)
        else:
            found.add(form)
    return frozenset(found), frozenset(unknown)


def _dosages(resource: MedicationResource) -> list[Dosage]:
    """The Dosage list of an order or dispense (dosageInstruction) or a statement (dosage)."""
    return record_dosages(resource)


def _form_of(
    resource: MedicationResource,
    concept: MedicationConcept,
    ingredient: str,
    forms: Sequence[IngredientForm],
    tables: CodeTables,
) -> str | None:
    by_release: dict[str, str] = {f.release: f.tag for f in forms}
    for coding in concept.codes:
        drug = tables.drug_product(coding.code) if tables.system_name(coding.system) == "rxnorm" else None
        if drug is not None and drug.ingredient == ingredient:
            if drug.release in by_release:
                return by_release[drug.release]
            if drug.route is not None:
                by_route = [f.tag for f in forms if drug.route in f.routes]
                if len(by_route) == 1:
                    return by_route[0]
    dosages = _dosages(resource)
    texts = list(concept.texts)
    texts += [t for d in dosages for t in (d.text, d.patientInstruction) if t is not None]
    named = {f.tag for text in texts for f in tables.forms_in_text(ingredient, text)}
    if len(named) == 1:
        return named.pop()
    if named:
        return None  # contradictory words: let a person read it
    routes: set[str] = set()
    for dosage in dosages:
        for coding in codings(dosage.route):
            name = tables.route_of(tables.system_name(coding.system), coding.code)
            if name:
                routes.add(name)
        for text in concept_texts(dosage.route) + ([dosage.text] if dosage.text is not None else []):
            routes |= tables.routes_in_text(text)
    routed = {f.tag for f in forms if f.routes & routes}
    if len(routed) == 1:
        return routed.pop()
    if routed:
        return None
    per_day = [p for p in (administrations_per_day(d) for d in dosages) if p]
    if per_day:
        interval = 1 / max(per_day)
        timed = {
            f.tag
            for f in forms
            if (f.min_interval_days is not None and interval >= f.min_interval_days)
            or (f.max_interval_days is not None and interval <= f.max_interval_days)
        }
        if len(timed) == 1:
            return timed.pop()
    return None


def medication_tags(concept: MedicationConcept, tables: CodeTables) -> frozenset[str]:
    """Ingredient tags (by RxNorm code, then by name in the text) plus their group tags."""
    tags: set[str] = set()
    for coding in concept.codes:
        if tables.system_name(coding.system) == "rxnorm":
            tags |= tables.ingredient_tags_for_code(coding.code)
    tags |= tables.ingredient_tags_in_text(concept.text)
    return tables.with_groups(tags)


# ----------------------------------------------------------------------------- findings


def finding(evidence: tuple[str, ...], start: date | None) -> Finding:
    """``Finding(evidence, start)``, built as ``frozen_instance`` builds: a call makes one per tag of each fact map,
    and the dataclass's ``__init__`` was a fifth of that cost (``tests/test_facts_shortcuts.py``)."""
    return frozen_instance(Finding, evidence=evidence, start=start)


@dataclass
class _Findings:
    """tag -> evidence references (in order seen, no repeats) and earliest start."""

    #: An insertion-ordered dict per tag acts as an ordered set: adding stays O(1) on charts of thousands.
    evidence: dict[str, dict[str, None]] = field(default_factory=dict)
    starts: dict[str, date | None] = field(default_factory=dict)

    def add(self, tag: str, ref: str, start: date | None) -> None:
        self.evidence.setdefault(tag, {})[ref] = None
        known = self.starts.get(tag)
        if start is not None and (known is None or start < known):
            self.starts[tag] = start
        else:
            self.starts.setdefault(tag, None)

    def tags(self) -> set[str]:
        return set(self.evidence)

    def freeze(self, exclude: Iterable[str] = ()) -> dict[str, Finding]:
        skip = set(exclude)
        return {
            tag: finding(tuple(refs), self.starts.get(tag))
            for tag, refs in sorted(self.evidence.items())
            if tag not in skip
        }


# ----------------------------------------------------------------------------- the facts


def build_facts(
    record: PatientRecord,
    order_id: str,
    tables: CodeTables,
    *,
    plan_prefixes: Mapping[str, str],
    user_ref: str | None,
    today: date,
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS,
) -> Facts:
    """Everything CP.PHAR.63 may ask about one draft order (see ``fhir_mappings.model.Facts``).

    ``max_gap_days``: the longest break that keeps one course of the drug (the pack's ``drug.max_gap_days``)."""
    order = record.draft(order_id)
    if order is None:
        raise OrderNotFound(f"no draft MedicationRequest {order_id.split('/')[-1]!r} in the record")
    order_ref = f"MedicationRequest/{order.id}"
    evaluation_date = to_date(order.authoredOn) or today
    medications = _Medications(record.medications, tables)
    concept = medications.concept(order)
    product = resolve_product(concept, tables)
    age, age_evidence = _age(record, evaluation_date)
    counted = _counted_conditions(record)
    found = _diagnoses(counted, order, order_ref, tables)
    specialties, requester_ref = _specialties(record, order, user_ref, tables)
    co_medications, co_unknown_form = _co_medications(record, order_ref, medications, evaluation_date)
    history, history_unknown_form = _history(record, evaluation_date, medications)
    course, previous_mg = _drug_exposure(record, evaluation_date, medications, max_gap_days)
    response = therapy_response(record, tables, course.start, evaluation_date)
    lob, lob_evidence, coverage_ref = _line_of_business(record, order, plan_prefixes, tables)
    procedures = read_procedures(record.procedures, evaluation_date, tables)
    allergies = read_allergies(record.allergies, tables)
    return Facts(
        order_ref=order_ref,
        evaluation_date=evaluation_date,
        product=product,
        dose=daily_dose(order.dosageInstruction, product),
        other_doses=_other_drug_drafts(record, order_ref, medications),
        age_years=age,
        age_evidence=age_evidence,
        diagnoses=found.confirmed,
        possible_diagnoses=resolve_possible(found.possible, found.confirmed, procedures, tables.possible_rules),
        generic_suggestions=found.generic_only,
        diagnosis_conflicts=found.conflicts,
        qualifiers=found.qualifiers,
        diagnosis_documented=bool(
            record.condition_count
            or present(order.reasonCode)
            or present(order.reasonReference)
            or procedures.received
            or procedures.scheduled
            or procedures.possible
        ),
        receptors=_receptors(record, counted, tables),
        specialties=specialties,
        requester_ref=requester_ref,
        co_medications=co_medications,
        co_medications_form_unknown=co_unknown_form,
        medication_history=history,
        history_form_unknown=history_unknown_form,
        days_on_drug=course.days,
        drug_evidence=course.evidence,
        course_start=course.start,
        therapy_response=response.meaning,
        therapy_response_evidence=response.evidence,
        therapy_response_note=response.note,
        previous_mg_per_day=previous_mg,
        generic_exception=_generic_exception(record, order, order_ref, tables),
        line_of_business=lob,
        line_of_business_evidence=lob_evidence,
        requested_months=requested_months(order),
        coverage_ref=coverage_ref,
        procedures=procedures.received,
        scheduled_procedures=procedures.scheduled,
        allergies=allergies.tags,
        allergy_kinds=allergies.kinds,
        lab_results=read_lab_results(record.observations, tables, evaluation_date),
    )


# -- product -------------------------------------------------------------------------------


def resolve_product(concept: MedicationConcept, tables: CodeTables) -> Product:
    """The product of the drug an order asks for: its RxNorm row refined by its words, or its words alone."""
    coded = [
        (coding, row)
        for coding in concept.codes
        if tables.system_name(coding.system) == "rxnorm" and (row := tables.product(coding.code)) is not None
    ]
    coded.sort(key=lambda pair: TTY_RANK.get(pair[1].tty, 9))
    words = tables.text_product(concept.text)
    if coded:
        coding, row = coded[0]
        strength = row.strength_mg if row.strength_mg is not None else words.strength_mg
        form = row.dose_form or words.dose_form
        family = row.family or tables.family_for(strength, form) or (words.family if words.is_drug else None)
        generic_concept = row.tty in ("IN", "SCDF", "SCDC")
        is_brand: bool | None = row.is_brand or bool(generic_concept and words.is_brand)
        rxcui: str | None = coding.code
        display = coding.display or row.display
    else:
        strength, form, family, is_brand = words.strength_mg, words.dose_form, words.family, words.is_brand
        row, rxcui, display = None, None, concept.text
    generic = tables.generic_for(strength, form) or (tables.product(row.generic_rxcui) if row else None)
    if generic is not None and generic.strength_mg is None and strength is not None:
        generic = None
    if generic is not None:
        available = generic.generic_available
    elif strength is not None:
        available = False
    else:
        available = row.generic_available if row is not None else family is not None
    return Product(
        rxcui=rxcui,
        display=display or "",
        family=family,
        is_brand=is_brand,
        strength_mg=strength,
        dose_form=form,
        generic_rxcui=generic.rxcui if generic else None,
        generic_display=generic.display if generic else None,
        generic_available=available,
    )


# -- the day's dose ------------------------------------------------------------------------


def _other_drug_drafts(record: PatientRecord, order_ref: str, medications: _Medications) -> tuple[DraftDose, ...]:
    """The request's other drafts of the drug (a member takes them all the same day), each with its daily dose."""
    found: list[DraftDose] = []
    for draft in record.draft_orders:
        ref = f"MedicationRequest/{draft.id}"
        if ref == order_ref or draft.status in WITHDRAWN_DRAFT_STATUS:
            continue
        subject = split_reference(reference_of(draft.subject))
        if record.patient_id and subject[0] is not None and subject != ("Patient", record.patient_id):
            continue  # another member's order: not this member's day
        concept = medications.concept(draft)
        if not is_requested_drug(concept, medications.tables):
            continue
        product = resolve_product(concept, medications.tables)
        found.append(DraftDose(ref, product.family, daily_dose(draft.dosageInstruction, product)))
    return tuple(found)


# -- age -----------------------------------------------------------------------------------


def _age(record: PatientRecord, on: date) -> tuple[int | None, tuple[str, ...]]:
    """Completed years on ``on``; a partial birth date counts from its last possible day (never overstates)."""
    patient = record.patient
    if patient is None or patient.birthDate is None:
        return None, ()
    born = to_date(patient.birthDate, end=is_partial_date(patient.birthDate))
    if born is None or born > on:
        return None, ()
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return years, (f"Patient/{patient.id}",)


# -- diagnoses -----------------------------------------------------------------------------


def _condition_state(condition: Condition) -> str | None:
    """ "confirmed", "possible", or None when the Condition does not count (inactive, refuted, ended)."""
    clinical = status_code(condition.clinicalStatus)
    if clinical is not None and clinical not in ACTIVE_CLINICAL:
        return None
    if clinical is None and _abated(condition):
        return None
    verification = status_code(condition.verificationStatus)
    if verification in EXCLUDED_VERIFICATION:
        return None
    return "possible" if verification in POSSIBLE_VERIFICATION else "confirmed"


def _abated(condition: Condition) -> bool:
    """Whether any abatement[x] is recorded."""
    return any(
        value is not None
        for value in (
            condition.abatementDateTime,
            condition.abatementAge,
            condition.abatementPeriod,
            condition.abatementRange,
            condition.abatementString,
        )
    )


def _condition_start(resource: Condition | AllergyIntolerance) -> date | None:
    """onsetDateTime, else onsetPeriod.start; recordedDate when the onset is neither (absent, an age, a range ...)."""
    if resource.onsetDateTime is not None:
        return to_date(resource.onsetDateTime)
    if resource.onsetPeriod is not None:
        return to_date(resource.onsetPeriod.start)
    return to_date(resource.recordedDate)


class _Counted(NamedTuple):
    """A Condition that counts (``_condition_state``), read once per call for the diagnoses and the receptors."""

    condition: Condition
    ref: str
    state: str
    clinical: str | None
    start: date | None


def _counted_conditions(record: PatientRecord) -> list[_Counted]:
    """The record's Conditions that count, in chart order, with their state, clinical status and start."""
    counted: list[_Counted] = []
    for condition in record.conditions:
        state = _condition_state(condition)
        if state is not None:
            clinical = status_code(condition.clinicalStatus)
            counted.append(
                _Counted(condition, f"Condition/{condition.id}", state, clinical, _condition_start(condition))
            )
    return counted


@dataclass
class _DiagnosisFindings:
    confirmed: dict[str, Finding]
    possible: dict[str, Finding]
    #: Possible tags suggested only by a generic rule (TSC alone): the weakest link to a pathway.
    generic_only: frozenset[str]
    conflicts: Mapping[str, tuple[Conflict, ...]] = field(default_factory=dict)
    qualifiers: tuple[QualifierFinding, ...] = ()


def _diagnoses(
    counted: Sequence[_Counted], order: MedicationRequest, order_ref: str, tables: CodeTables
) -> _DiagnosisFindings:
    """Coded Conditions confirm (or, provisional / broad codes, suggest); names in text and the order's reason
    suggest; possible.csv rules derive manifestations (TSC + a brain tumour suggests SEGA)."""
    confirmed, possible = _Findings(), _Findings()
    readings: list[tuple[str, ConditionReading]] = []
    qualifiers: list[QualifierFinding] = []
    for condition, ref, state, clinical, start in counted:
        reading = read_condition(condition, tables)
        readings.append((ref, reading))
        for tag in reading.confirmed:
            (possible if state == "possible" else confirmed).add(tag, ref, start)
        for tag in reading.possible:
            possible.add(tag, ref, start)
        tagged = bool(reading.tags)
        words = _diagnosis_words(condition.code, tables)
        for tag in words:
            possible.add(tag, ref, start)
            tagged = True
        qualifiers += read_qualifiers(condition, ref, reading.tags | words, tables)
        for stage in present(condition.stage):
            for coding in codings(stage.summary):
                for match in tables.condition_matches(tables.system_name(coding.system), coding.code):
                    for tag in match.tags:
                        (possible if state == "possible" else confirmed).add(tag, ref, start)
        if tagged and state == "confirmed" and clinical is not None:
            for tag in tables.condition_status.get(("condition-clinical", clinical), ()):
                confirmed.add(tag, ref, start)
    for concept in present(order.reasonCode):
        for coding in codings(concept):
            for match in tables.condition_matches(tables.system_name(coding.system), coding.code):
                for tag in match.tags:
                    (possible if match.possible else confirmed).add(tag, order_ref, None)
        for tag in _diagnosis_words(concept, tables):
            possible.add(tag, order_ref, None)
    for reference in present(order.reasonReference):
        for tag in tables.condition_tags_in_text(reference.display or ""):
            possible.add(tag, order_ref, None)
    conflicts = find_conflicts(readings, tables)
    _demote(conflicts, confirmed, possible)
    named = confirmed.tags() | possible.tags()
    strength: dict[str, set[str]] = {}
    for rule in tables.possible_rules:
        if rule.if_all <= named:
            evidence = [
                (ref, _start_of(confirmed, possible, tag))
                for tag in rule.if_all
                for ref in [*confirmed.evidence.get(tag, {}), *possible.evidence.get(tag, {})]
            ]
            for tag in rule.then - confirmed.tags():
                strength.setdefault(tag, set()).add(rule.strength)
                for ref, start in evidence:
                    possible.add(tag, ref, start)
    # A tag is generic-only when nothing but a generic rule suggested it (no code, text or specific rule).
    direct = named
    generic_only = frozenset(tag for tag, kinds in strength.items() if kinds == {"generic"} and tag not in direct)
    return _DiagnosisFindings(
        confirmed.freeze(), possible.freeze(exclude=confirmed.tags()), generic_only, conflicts, tuple(qualifiers)
    )


def _demote(conflicts: Mapping[str, tuple[Conflict, ...]], confirmed: _Findings, possible: _Findings) -> None:
    """What a conflict's Conditions say of a tag is never confirmed: only possible (a suggested pathway at most). A
    Condition outside the conflict that codes the tag cleanly keeps it confirmed."""
    for tag, found in conflicts.items():
        disputed = {ref for conflict in found for ref in conflict.evidence}
        refs = confirmed.evidence.get(tag, {})
        start = confirmed.starts.get(tag)
        for ref in [r for r in refs if r in disputed]:
            del refs[ref]
            possible.add(tag, ref, start)
        if tag in confirmed.evidence and not refs:
            del confirmed.evidence[tag]
            confirmed.starts.pop(tag, None)


def _diagnosis_words(concept: CodeableConcept | None, tables: CodeTables) -> frozenset[str]:
    return tables.diagnosis_words(codings(concept), _lazy_texts(concept))


def _lazy_texts(concept: CodeableConcept | None) -> Iterator[str]:
    """``concept_texts``, read only if iterated: ``diagnosis_words`` needs the words only when the codes do not
    speak, and most coded Conditions' codes do."""
    yield from concept_texts(concept)


def _start_of(confirmed: _Findings, possible: _Findings, tag: str) -> date | None:
    starts = [s for s in (confirmed.starts.get(tag), possible.starts.get(tag)) if s is not None]
    return min(starts) if starts else None


# -- receptors -----------------------------------------------------------------------------


class _ReceptorSighting(NamedTuple):  # a named tuple: one per result read, construction cost counts
    on: date | None
    tag: str
    ref: str


def _receptors(record: PatientRecord, counted: Sequence[_Counted], tables: CodeTables) -> dict[str, Finding]:
    """Per receptor (er, pr, her2, hr) the most recent final result wins; a tie that disagrees says nothing."""
    sightings: list[_ReceptorSighting] = []
    for observation in record.observations:
        if observation.status not in FINAL_OBSERVATION:
            continue
        ref, on = f"Observation/{observation.id}", observation_date(observation)
        elements: list[Observation | ObservationComponent] = [observation, *present(observation.component)]
        for element in elements:
            for coding in codings(element.code):
                test = (
                    tables.receptor_tests.get(coding.code or "")
                    if tables.system_name(coding.system) == "loinc"
                    else None
                )
                if test is None:
                    continue
                result = _interpret(element, test.receptor, test.kind, test.positive_at_least, tables)
                if result in ("positive", "negative"):
                    sightings.append(_ReceptorSighting(on, f"{test.receptor}-{result}", ref))
                break
    for condition, ref, state, _, start in counted:
        if state != "confirmed":
            continue
        for coding in codings(condition.code):
            for tag in tables.receptor_status_tags(tables.system_name(coding.system), coding.code):
                sightings.append(_ReceptorSighting(start, tag, ref))
    return _latest_per_axis(sightings)


def _latest_per_axis(sightings: Sequence[_ReceptorSighting]) -> dict[str, Finding]:
    """Per axis (er, pr, her2, hr) the latest sightings' result, when they agree; sorted by axis."""
    by_axis: dict[str, list[_ReceptorSighting]] = {}  # one pass: sightings in chart order per axis
    for sighting in sightings:
        by_axis.setdefault(sighting.tag.rsplit("-", 1)[0], []).append(sighting)
    out: dict[str, Finding] = {}
    for axis in sorted(by_axis):
        on_axis = by_axis[axis]
        if len(on_axis) == 1:  # one result on the axis (the usual chart): it wins, alone
            only = on_axis[0]
            out[only.tag] = finding((only.ref,), only.on)
            continue
        latest = max((s.on for s in on_axis if s.on is not None), default=None)
        winners = [s for s in on_axis if s.on == latest]
        if len({s.tag for s in winners}) == 1:
            tag = winners[0].tag
            out[tag] = finding(tuple(dict.fromkeys([s.ref for s in winners])), latest)
    return out


def _interpret(
    element: Observation | ObservationComponent,
    receptor: str,
    kind: str,
    threshold: float | None,
    tables: CodeTables,
) -> str | None:
    """positive / negative / equivocal from interpretation, coded or text value, IHC score or % of cells."""
    for coding in [c for concept in present(element.interpretation) for c in codings(concept)]:
        result = tables.result_of_code(tables.system_name(coding.system), coding.code)
        if result is not None:
            return result
    if kind == "interpretation-only":
        return None
    if element.valueCodeableConcept is not None:
        value = element.valueCodeableConcept
        for coding in codings(value):
            result = tables.result_of_code(tables.system_name(coding.system), coding.code)
            if result is not None:
                return result
        return _interpret_text(" | ".join(concept_texts(value)), receptor, kind, threshold, tables)
    if element.valueString is not None:
        return _interpret_text(element.valueString, receptor, kind, threshold, tables)
    quantity = element.valueQuantity
    if quantity is not None and kind == "percent" and threshold is not None:
        number = to_float(quantity.value)
        unit = quantity.code or quantity.unit
        if number is None or (unit not in (None, "%")):
            return None
        comparator = quantity.comparator
        if comparator in ("<", "<=") and number <= threshold:
            return "negative"
        if comparator in (">", ">=") and number >= threshold:
            return "positive"
        if comparator is None:
            return "positive" if number >= threshold else "negative"
        return None
    if element.valueInteger is not None and receptor == "her2" and kind == "status":
        score = element.valueInteger
        return tables.her2_ihc_result("0" if score == 0 else f"{score}+")
    return None


def _interpret_text(text: str, receptor: str, kind: str, threshold: float | None, tables: CodeTables) -> str | None:
    result = tables.result_of_text(text)
    if result is not None:
        return result
    if receptor == "her2":
        scores = set(re.findall(r"(?<![\d.])([0-3])\s*\+", text))
        if len(scores) == 1:
            return tables.her2_ihc_result(f"{scores.pop()}+")
        if re.fullmatch(r"\s*(?:ihc\s*)?0\s*", text, re.IGNORECASE):
            return tables.her2_ihc_result("0")
    if kind == "percent" and threshold is not None:
        match = re.fullmatch(r"\s*([<>]=?)?\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
        if match:
            number = float(match.group(2))
            if match.group(1) is None:
                return "positive" if number >= threshold else "negative"
            if match.group(1).startswith("<") and number <= threshold:
                return "negative"
            if match.group(1).startswith(">") and number >= threshold:
                return "positive"
    return None


# -- specialties ---------------------------------------------------------------------------


def _specialties(
    record: PatientRecord, order: MedicationRequest, user_ref: str | None, tables: CodeTables
) -> tuple[dict[str, Finding], str | None]:
    """Specialty tags of the requester (else the hook's user): its role(s) and its Practitioner's qualifications."""
    ref = reference_of(order.requester) or user_ref
    rtype, rid = split_reference(ref)
    if rtype not in ("PractitionerRole", "Practitioner") or not rid:
        return {}, (f"{rtype}/{rid}" if rtype and rid else None)
    found = _Findings()
    practitioner_id = rid if rtype == "Practitioner" else None
    roles: list[PractitionerRole] = []
    if rtype == "PractitionerRole":
        role = record.practitioner_roles.get(rid)
        if role is not None:
            roles.append(role)
            ptype, pid = split_reference(reference_of(role.practitioner))
            practitioner_id = pid if ptype == "Practitioner" else None
    if practitioner_id:
        for role in record.practitioner_roles.values():
            same = split_reference(reference_of(role.practitioner)) == ("Practitioner", practitioner_id)
            if same and role not in roles and role.active is not False:
                roles.append(role)
    for role in roles:
        for concept in present(role.specialty):
            for coding in codings(concept):
                for tag in tables.specialty_tags_for(tables.system_name(coding.system), coding.code):
                    found.add(tag, f"PractitionerRole/{role.id}", None)
    practitioner = record.practitioners.get(practitioner_id) if practitioner_id else None
    if practitioner is not None:
        for qualification in present(practitioner.qualification):
            for coding in codings(qualification.code):
                for tag in tables.specialty_tags_for(tables.system_name(coding.system), coding.code):
                    found.add(tag, f"Practitioner/{practitioner.id}", None)
    return found.freeze(), f"{rtype}/{rid}"


# -- medications ---------------------------------------------------------------------------


def _medication_start(resource: MedicationResource) -> date | None:
    """Earliest date the record shows (``therapy.record_start``)."""
    return record_start(resource)


def _chart_medications(record: PatientRecord) -> list[tuple[str, MedicationResource]]:
    return chart_medication_records(record)


class _Medications:
    """The concept and ingredient tags of each medication resource, read once per ``build_facts`` call: the chart's
    orders, statements and dispenses are read by the co-medications, the history and the drug's course, the drafts
    by the order, the co-medications and the day's other drafts. Lives for one call (``tests/test_facts_shortcuts.py``
    compares it with reading every time)."""

    def __init__(self, medications: Mapping[str, Medication], tables: CodeTables) -> None:
        self.medications = medications
        self.tables = tables
        #: id(resource) -> (resource, its concept, its tags once read); the resource is kept so its id stays its own.
        self._read: dict[int, tuple[MedicationResource, MedicationConcept, frozenset[str] | None]] = {}

    def concept(self, resource: MedicationResource) -> MedicationConcept:
        """``medication_concept`` of the resource."""
        known = self._read.get(id(resource))
        if known is None:
            known = self._read[id(resource)] = (resource, medication_concept(resource, self.medications), None)
        return known[1]

    def tags(self, resource: MedicationResource) -> frozenset[str]:
        """``medication_tags`` of the resource's concept."""
        concept = self.concept(resource)
        known = self._read[id(resource)][2]
        if known is None:
            known = medication_tags(concept, self.tables)
            self._read[id(resource)] = (resource, concept, known)
        return known


def _tags_with_forms(resource: MedicationResource, medications: _Medications) -> tuple[frozenset[str], frozenset[str]]:
    tags = medications.tags(resource)
    forms, unknown = form_tags(resource, medications.concept(resource), tags, medications.tables)
    return tags | forms, unknown


def _dispense_covers(dispense: MedicationDispense, on: date) -> bool:
    """A dispense handed over whose days supply still runs on ``on``: the member has the medication now."""
    start = record_start(dispense)
    if start is None or not shows_use(dispense) or start > on:
        return False
    end = record_end(dispense, start, on)
    return end is not None and end > on


def _co_medications(
    record: PatientRecord, order_ref: str, medications: _Medications, evaluation_date: date
) -> tuple[dict[str, Finding], dict[str, Finding]]:
    """Other drafts of this request, the chart's active orders and statements, and dispenses whose supply runs on
    the evaluation date (and, per form-specific ingredient, the ones whose form they do not show)."""
    found, unknown_form = _Findings(), _Findings()
    for draft in record.draft_orders:
        ref = f"MedicationRequest/{draft.id}"
        if ref == order_ref or draft.status not in CO_DRAFT_STATUS:
            continue
        tags, unknown = _tags_with_forms(draft, medications)
        for tag in tags:
            found.add(tag, ref, to_date(draft.authoredOn))
        for tag in unknown:
            unknown_form.add(tag, ref, None)
    for rtype, resource in _chart_medications(record):
        if isinstance(resource, MedicationDispense):
            active = _dispense_covers(resource, evaluation_date)
        elif isinstance(resource, MedicationRequest):
            active = resource.status in ACTIVE_REQUEST_STATUS and resource.intent in ORDER_INTENTS
        else:
            active = resource.status in ACTIVE_STATEMENT_STATUS
        if not active:
            continue
        ref = f"{rtype}/{resource.id}"
        tags, unknown = _tags_with_forms(resource, medications)
        for tag in tags:
            found.add(tag, ref, _medication_start(resource))
        for tag in unknown:
            unknown_form.add(tag, ref, None)
    return found.freeze(), unknown_form.freeze()


def _history(
    record: PatientRecord, evaluation_date: date, medications: _Medications
) -> tuple[dict[str, Finding], dict[str, Finding]]:
    """Chart orders, statements and dispenses (not the drafts) started before the evaluation date; undated ones
    count."""
    found, unknown_form = _Findings(), _Findings()
    for rtype, resource in _chart_medications(record):
        if not shows_use(resource):
            continue
        start = _medication_start(resource)
        if start is not None and start >= evaluation_date:
            continue
        tags, unknown = _tags_with_forms(resource, medications)
        for tag in tags:
            found.add(tag, f"{rtype}/{resource.id}", start)
        for tag in unknown:
            unknown_form.add(tag, f"{rtype}/{resource.id}", start)
    return found.freeze(), unknown_form.freeze()


def _drug_exposure(
    record: PatientRecord, evaluation_date: date, medications: _Medications, max_gap_days: float
) -> tuple[Course, float | None]:
    """The current course of the drug (``therapy.current_course``) and the latest prior mg/day (dose increase)."""
    tables = medications.tables

    def is_drug(resource: MedicationResource) -> bool:
        return tables.drug_tag in medications.tags(resource)

    uses = drug_uses(record, is_drug, evaluation_date)
    course = current_course(uses, evaluation_date, max_gap_days)
    previous = None
    if uses:
        latest = max(uses, key=lambda u: u.start).resource
        concept = medications.concept(latest)
        previous = daily_dose(_dosages(latest), resolve_product(concept, tables)).mg_per_day
    return course, previous


# -- generic exception ---------------------------------------------------------------------


def _generic_exception(
    record: PatientRecord, order: MedicationRequest, order_ref: str, tables: CodeTables
) -> Finding | None:
    """Dispense-as-written with a stated reason, or a current allergy / intolerance to the drug."""
    evidence: list[str] = []
    starts: list[date] = []
    substitution = order.substitution
    if substitution is not None:
        refused = substitution.allowedBoolean is False or any(
            c.code in NO_SUBSTITUTION_CODES for c in codings(substitution.allowedCodeableConcept)
        )
        if refused and substitution.reason is not None:
            evidence.append(order_ref)
    for allergy in record.allergies:
        if status_code(allergy.clinicalStatus) in INACTIVE_ALLERGY:
            continue
        if status_code(allergy.verificationStatus) in EXCLUDED_VERIFICATION:
            continue
        concept = MedicationConcept(tuple(codings(allergy.code)), tuple(concept_texts(allergy.code)))
        if tables.drug_tag in medication_tags(concept, tables):
            evidence.append(f"AllergyIntolerance/{allergy.id}")
            start = _condition_start(allergy)
            if start is not None:
                starts.append(start)
    if not evidence:
        return None
    return Finding(evidence=tuple(evidence), start=min(starts) if starts else None)


# -- coverage and duration -----------------------------------------------------------------


def _line_of_business(
    record: PatientRecord, order: MedicationRequest, plan_prefixes: Mapping[str, str], tables: CodeTables
) -> tuple[LineOfBusiness | None, tuple[str, ...], str | None]:
    """The order's Coverage if the record has it, else the active ones (primary first): plan prefix, then SOPT."""
    by_ref = {f"Coverage/{c.id}": c for c in record.coverages}
    wanted = []
    for insurance in present(order.insurance):
        rtype, rid = split_reference(reference_of(insurance))
        if rtype == "Coverage" and f"Coverage/{rid}" in by_ref:
            wanted.append(by_ref[f"Coverage/{rid}"])
    if not wanted:
        active = [c for c in record.coverages if c.status == "active"]
        wanted = sorted(active, key=lambda c: c.order if c.order is not None else math.inf)
    for coverage in wanted:
        lob = _coverage_line_of_business(coverage, plan_prefixes, tables)
        if lob is not None:
            ref = f"Coverage/{coverage.id}"
            return lob, (ref,), ref
    return None, (), (f"Coverage/{wanted[0].id}" if wanted else None)


def _coverage_line_of_business(
    coverage: Coverage, plan_prefixes: Mapping[str, str], tables: CodeTables
) -> LineOfBusiness | None:
    for klass in present(coverage.class_fhir):
        is_plan = any(c.code == "plan" and c.system in (None, COVERAGE_CLASS_SYSTEM) for c in codings(klass.type))
        value = klass.value
        if not is_plan or value is None:
            continue
        for prefix, name in plan_prefixes.items():
            if value.upper().startswith(prefix.upper()):
                return LineOfBusiness(name)
    for coding in codings(coverage.type):
        lob = tables.line_of_business_for(tables.system_name(coding.system), coding.code)
        if lob is not None:
            return lob
    return None


def requested_months(order: MedicationRequest) -> int | None:
    """Whole 30-day months asked for: validityPeriod span, else supply x fills; at least 1; None if neither."""
    dispense = order.dispenseRequest
    validity = dispense.validityPeriod if dispense is not None else None
    start = to_date(validity.start) if validity is not None else None
    end = to_date(validity.end, end=True) if validity is not None else None
    days: float | None = None
    if start is not None and end is not None and end >= start:
        days = float((end - start).days)
    else:
        days = supply_days(dispense)
    if days is None:
        return None
    return max(1, math.floor(days / 30 + 0.5))


__all__ = [
    "OrderNotFound",
    "build_facts",
    "find_drug_orders",
    "is_requested_drug",
    "medication_tags",
    "requested_months",
    "resolve_product",
]
