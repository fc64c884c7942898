"""The member's course of the requested drug and the response to it, from every source a reviewer reads.

A payer's reviewer reads three kinds of medication record: the pharmacy's dispensing (MedicationDispense:
``whenHandedOver`` + ``daysSupply``), the prescriber's orders (MedicationRequest: ``authoredOn`` / validity
period + the supply it allows) and what the member is recorded as taking (MedicationStatement: its effective
period). Each becomes a span of covered days. Spans closer than the pack's ``max_gap_days`` form one course;
the *current* course is the last one, provided it reaches within ``max_gap_days`` of the evaluation date --
a course stopped months ago is history, not therapy the member is "currently receiving".

The response to therapy is the latest final disease-status / response assessment (the code tables'
``therapy_response.csv``: mCODE CancerDiseaseStatus and whatever a pack adds) dated after the current course
started. Two assessments on that latest day that disagree decide nothing; the note says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from fhir.resources.R4B.dosage import Dosage
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest, MedicationRequestDispenseRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.quantity import Quantity

from .codes import CodeTables
from .normalize import add_days, to_date, to_float
from .read import codings, observation_date, present
from .record import PatientRecord

#: A medication record of the chart: an order, a statement or a dispense.
MedicationRecord = MedicationRequest | MedicationStatement | MedicationDispense

#: Statement / order statuses that never show the drug was taken (FHIR R4 value sets).
NOT_TAKEN_STATUS = frozenset({"entered-in-error", "not-taken", "cancelled", "draft"})
#: Orders that show therapy: an active or completed order (a stopped, revoked or draft one does not) ...
ORDER_STATUS = frozenset({"active", "completed"})
#: ... with an ordering intent (a proposal is no prescription; a plan is the prescriber's standing order).
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order", "plan"})
#: Dispenses that show the drug reached the member: completed, or in progress once handed over.
DISPENSED_STATUS = frozenset({"completed"})
HANDED_OVER_STATUS = frozenset({"in-progress"})
#: A statement of a medication the member stopped taking: past use (history), never the current course.
STOPPED_STATEMENT = frozenset({"stopped"})
#: Statements still running when they carry no end date.
ONGOING_STATEMENT = frozenset({"active", "intended"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
#: The longest break that keeps one course when a caller names none (CP.PHAR.63 states 45 in policy.yaml
#: ``drug.max_gap_days``; the service always passes the pack's value).
DEFAULT_MAX_GAP_DAYS = 45
SUPPLY_UNIT_DAYS: dict[str, float] = {
    "d": 1,
    "day": 1,
    "days": 1,
    "wk": 7,
    "week": 7,
    "weeks": 7,
    "mo": 30,
    "month": 30,
    "months": 30,
    "a": 365,
    "year": 365,
    "years": 365,
}


# ----------------------------------------------------------------------------- one record


def dispense_date(dispense: MedicationDispense) -> date | None:
    """When the member got it: ``whenHandedOver``, else ``whenPrepared``."""
    return to_date(dispense.whenHandedOver) or to_date(dispense.whenPrepared)


def record_start(resource: MedicationRecord) -> date | None:
    """Earliest date a record shows: dispensed (dispense), effective start (statement), authored / validity start
    (order)."""
    if isinstance(resource, MedicationDispense):
        return dispense_date(resource)
    if isinstance(resource, MedicationStatement):
        period = resource.effectivePeriod
        return to_date(period.start) if period is not None else to_date(resource.effectiveDateTime)
    dispense = resource.dispenseRequest
    validity = dispense.validityPeriod if dispense is not None else None
    dated = [d for d in (to_date(resource.authoredOn), to_date(validity.start) if validity else None) if d]
    return min(dated) if dated else None


def record_dosages(resource: MedicationRecord) -> list[Dosage]:
    """The Dosage list of an order or dispense (dosageInstruction) or a statement (dosage)."""
    if isinstance(resource, MedicationStatement):
        return present(resource.dosage)
    return present(resource.dosageInstruction)


def shows_use(resource: MedicationRecord) -> bool:
    """Whether the record shows the member had the medication (history): never a cancelled, not-taken,
    entered-in-error or draft record; a dispense only once completed (or handed over while in progress)."""
    if isinstance(resource, MedicationDispense):
        if resource.status in DISPENSED_STATUS:
            return True
        return resource.status in HANDED_OVER_STATUS and resource.whenHandedOver is not None
    return resource.status not in NOT_TAKEN_STATUS


def days_of(quantity: Quantity | None, default_unit: str = "") -> float | None:
    """A duration Quantity in days (``d``, ``wk``, ``mo`` ...); None when absent, not positive or in another unit."""
    if quantity is None:
        return None
    value = to_float(quantity.value)
    if value is None or value <= 0:
        return None
    unit = next((u for u in (quantity.code, quantity.unit) if u is not None and u.strip()), default_unit)
    factor = SUPPLY_UNIT_DAYS.get(unit.strip().lower())
    return value * factor if factor is not None else None


def supply_days(dispense: MedicationRequestDispenseRequest | None) -> float | None:
    """An order's supply: expectedSupplyDuration x (numberOfRepeatsAllowed + 1), in days."""
    if dispense is None:
        return None
    days = days_of(dispense.expectedSupplyDuration)
    if days is None:
        return None
    repeats = to_float(dispense.numberOfRepeatsAllowed) or 0
    return days * (repeats + 1)


def record_end(resource: MedicationRecord, start: date, evaluation_date: date) -> date | None:
    """Exclusive end of the days a record covers; None when it shows a start only.

    Dispense: ``daysSupply`` (a day without it). Statement: effective end (inclusive in FHIR, so +1 day), or
    the evaluation date while active. Order: its supply, else its validity end, or the evaluation date while
    active.
    """
    if isinstance(resource, MedicationDispense):
        days = days_of(resource.daysSupply, default_unit="d")
        return add_days(start, math.ceil(days) if days is not None else 1)
    if isinstance(resource, MedicationStatement):
        period = resource.effectivePeriod
        if period is not None and period.end is not None:
            return add_days(to_date(period.end, end=True), 1)
        return evaluation_date if resource.status in ONGOING_STATEMENT else None
    supply = supply_days(resource.dispenseRequest)
    if supply is not None:
        return add_days(start, math.ceil(supply))
    validity = resource.dispenseRequest.validityPeriod if resource.dispenseRequest is not None else None
    if validity is not None and validity.end is not None:
        return add_days(to_date(validity.end, end=True), 1)
    return evaluation_date if resource.status == "active" else None


def counts_for_course(resource: MedicationRecord) -> bool:
    """Records whose days count toward the current course: orders only when active or completed (and an order, not
    a proposal), statements not when stopped (the member stopped taking it: a new order restarts therapy),
    dispenses once handed over."""
    if isinstance(resource, MedicationRequest):
        return resource.status in ORDER_STATUS and resource.intent in ORDER_INTENTS
    if isinstance(resource, MedicationStatement) and resource.status in STOPPED_STATEMENT:
        return False
    return shows_use(resource)


# ----------------------------------------------------------------------------- the course


@dataclass(frozen=True)
class DrugUse:
    """One chart record of the drug and the days it covers (``end`` exclusive; None: a start only)."""

    ref: str
    start: date
    end: date | None
    resource: MedicationRecord


@dataclass(frozen=True)
class Course:
    """The current course of the drug: when it began, its covered days up to the evaluation date, its records."""

    start: date | None = None
    days: int = 0
    evidence: tuple[str, ...] = ()


def chart_medication_records(record: PatientRecord) -> list[tuple[str, MedicationRecord]]:
    """Every chart order, statement and dispense (not the drafts), with its reference type."""
    out: list[tuple[str, MedicationRecord]] = [("MedicationRequest", r) for r in record.medication_requests]
    out += [("MedicationStatement", s) for s in record.medication_statements]
    out += [("MedicationDispense", d) for d in record.medication_dispenses]
    return out


def drug_uses(
    record: PatientRecord, is_drug: Callable[[MedicationRecord], bool], evaluation_date: date
) -> list[DrugUse]:
    """The drug's records started before the evaluation date that count toward a course, oldest first."""
    uses: list[DrugUse] = []
    for rtype, resource in chart_medication_records(record):
        if not counts_for_course(resource) or not is_drug(resource):
            continue
        start = record_start(resource)
        if start is None or start >= evaluation_date:
            continue
        end = record_end(resource, start, evaluation_date)
        uses.append(DrugUse(f"{rtype}/{resource.id}", start, end, resource))
    return sorted(uses, key=lambda u: (u.start, u.ref))


def current_course(uses: Sequence[DrugUse], evaluation_date: date, max_gap_days: float) -> Course:
    """The last course (spans no more than ``max_gap_days`` apart) if it reaches within ``max_gap_days`` of the
    evaluation date; its covered days are counted without the gaps, up to the evaluation date."""
    spans = sorted((u.start, min(u.end, evaluation_date), u.ref) for u in uses if u.end is not None and u.end > u.start)
    courses: list[list[tuple[date, date, str]]] = []
    reach: date | None = None
    for span in spans:
        if reach is None or (span[0] - reach).days > max_gap_days:
            courses.append([])
            reach = span[1]
        courses[-1].append(span)
        reach = max(reach, span[1])
    if not courses or reach is None or (evaluation_date - reach).days > max_gap_days:
        return Course()
    last = courses[-1]
    return Course(start=last[0][0], days=covered_days([(s, e) for s, e, _ in last]), evidence=_refs(last))


def _refs(spans: Sequence[tuple[date, date, str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ref for _, _, ref in spans))


def covered_days(spans: Sequence[tuple[date, date]]) -> int:
    """Days in the union of [start, end) spans."""
    total, current_start, current_end = 0, None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_start is not None and current_end is not None:
                total += (current_end - current_start).days
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_start is not None and current_end is not None:
        total += (current_end - current_start).days
    return total


# ----------------------------------------------------------------------------- the response


@dataclass(frozen=True)
class Response:
    """The latest response assessment after the course began: its meaning (None: none on record), evidence, note."""

    meaning: str | None = None  # "responding" | "progressing" | "undetermined"
    evidence: tuple[str, ...] = ()
    note: str | None = None


def _meaning(observation: Observation, tables: CodeTables) -> str:
    """What one assessment says; a value the tables do not know, or codings that disagree, is undetermined."""
    meanings = {
        m
        for coding in codings(observation.valueCodeableConcept)
        if (m := tables.response_meaning(tables.system_name(coding.system), coding.code)) is not None
    }
    return meanings.pop() if len(meanings) == 1 else "undetermined"


def is_response_observation(observation: Observation, tables: CodeTables) -> bool:
    return any(tables.is_response_observation(tables.system_name(c.system), c.code) for c in codings(observation.code))


def therapy_response(
    record: PatientRecord, tables: CodeTables, course_start: date | None, evaluation_date: date
) -> Response:
    """The latest final assessment dated after ``course_start`` (and not after the evaluation date) decides."""
    if course_start is None:
        return Response()
    dated: list[tuple[date, str, str]] = []
    for observation in record.observations:
        if observation.status not in FINAL_OBSERVATION or not is_response_observation(observation, tables):
            continue
        day = observation_date(observation)
        if day is None or not course_start < day <= evaluation_date:
            continue
        dated.append((day, f"Observation/{observation.id}", _meaning(observation, tables)))
    if not dated:
        return Response()
    latest = max(day for day, _, _ in dated)
    winners = [(ref, meaning) for day, ref, meaning in dated if day == latest]
    refs = tuple(dict.fromkeys(ref for ref, _ in winners))
    meanings = {meaning for _, meaning in winners}
    if len(meanings) > 1:
        said = ", ".join(f"{ref} ({meaning})" for ref, meaning in winners)
        return Response("undetermined", refs, f"assessments of {latest.isoformat()} disagree: {said}")
    return Response(meanings.pop(), refs, f"latest assessment {latest.isoformat()}")


__all__ = [
    "DEFAULT_MAX_GAP_DAYS",
    "Course",
    "DrugUse",
    "MedicationRecord",
    "Response",
    "chart_medication_records",
    "counts_for_course",
    "covered_days",
    "current_course",
    "dispense_date",
    "drug_uses",
    "record_dosages",
    "record_start",
    "shows_use",
    "supply_days",
    "therapy_response",
]
