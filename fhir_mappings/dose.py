"""Daily amount of a medication order from its FHIR Dosage: mg per day and units of its dose form per day.

The policy limits the daily dose (mg per day, tablets / capsules / mL per day per product family), so a
wrong number is worse than none: anything this module cannot read with certainty is ``None`` (the
policy then asks for it) and nothing is guessed. Dosages that share a ``sequence`` are taken together
(FHIR R4 Dosage.sequence: "the same sequence number ... concurrent"), different sequences one after
the other, so the answer is the largest daily total of any sequence.

A unit of the product's dose form (a tablet, a capsule, a mL of oral solution) is read from the unit words of the
shared dose-form table (``fhir_mappings/tables/dose_forms.csv``) and converted to mg through the product's strength
(mg per tablet, per capsule, per mL); a unit word of another form is unreadable, never converted.

It reads validated ``Dosage`` models only (the record validates every order it keeps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from fhir.resources.R4B.dosage import Dosage, DosageDoseAndRate
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.timing import TimingRepeat

from .codes import dose_forms
from .model import Dose, Product
from .normalize import to_float
from .read import codings, present

MG_PER_UNIT: dict[str, float] = {
    "mg": 1.0,
    "milligram": 1.0,
    "milligrams": 1.0,
    "g": 1000.0,
    "gram": 1000.0,
    "grams": 1000.0,
    "ug": 0.001,
    "mcg": 0.001,
    "µg": 0.001,
    "microgram": 0.001,
    "micrograms": 0.001,
}
#: The form a Dosage's count units are read for when the product's form is unknown (a plain "tablet" sig).
DEFAULT_FORM = "tablet"
#: UCUM-ish Timing.repeat.periodUnit -> days.
PERIOD_DAYS: dict[str, float] = {
    "s": 1 / 86400,
    "min": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "wk": 7.0,
    "mo": 30.0,
    "a": 365.0,
}
#: Administrations per day of the Timing.code abbreviations (HL7 timing-abbreviation / v3 GTSAbbreviation).
GTS_PER_DAY: dict[str, float] = {
    "QD": 1,
    "BID": 2,
    "TID": 3,
    "QID": 4,
    "AM": 1,
    "PM": 1,
    "BED": 1,
    "QOD": 0.5,
    "WK": 1 / 7,
    "MO": 1 / 30,
    "Q1H": 24,
    "Q2H": 12,
    "Q3H": 8,
    "Q4H": 6,
    "Q6H": 4,
    "Q8H": 3,
    "Q12H": 2,
}
GTS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

_CONTRARY = re.compile(
    r"\b(?:twice|thrice|two\s+times|three\s+times|four\s+times|[2-9]\d*\s*(?:x|times?|time\(s\))"
    r"|b\.?i\.?d|t\.?i\.?d|q\.?i\.?d|q\.?o\.?d|every\s+other|every\s+\d+|q\s?\d+\s?h|weekly|week|weeks|monthly|month"
    r"|hourly|hours?|as\s+needed|prn|as\s+directed|per\s+protocol|taper|alternate)\b",
    re.IGNORECASE,
)


def daily_dose(dosage_instructions: Sequence[Dosage | None] | None, product: Product | None) -> Dose:
    """mg/day and units/day (of the product's dose form) of the order's dosage; either is None when it cannot be read
    for certain."""
    dosages = present(dosage_instructions)
    if not dosages:
        return Dose(None, None)
    strength = product.strength_mg if product is not None else None
    units = unit_words(product.dose_form if product is not None else None)
    groups: dict[int | None, list[Dosage]] = {}
    for dosage in dosages:
        groups.setdefault(dosage.sequence, []).append(dosage)
    mg_totals: list[float | None] = []
    tablet_totals: list[float | None] = []
    for members in groups.values():
        per_member = [_one_daily(d, strength, units) for d in members]
        mg_totals.append(_sum([m for m, _, _ in per_member]))
        tablet_totals.append(_sum([t for _, t, _ in per_member]))
    mg_per_day = _max(mg_totals)
    words = per_member[0][2] if len(dosages) == 1 else None  # the one Dosage (the loop's only member)
    if words is None and mg_per_day is not None:
        words = f"{mg_per_day:g} mg/day"
    return Dose(mg_per_day, _max(tablet_totals), words)


#: Administrations a day -> how a sig says it.
TIMES_A_DAY_WORDS = {1.0: "daily", 2.0: "twice daily", 3.0: "three times daily", 4.0: "four times daily"}


def unit_words(form: str | None) -> frozenset[str]:
    """The Dosage units meaning one unit of a dose form (the default form's when the form is unknown)."""
    known = dose_forms()
    return (known[form] if form is not None and form in known else known[DEFAULT_FORM]).unit_words


def _words(mg: float | None, per_day: float | None) -> str | None:
    """ "10 mg twice daily" for one readable Dosage; None when the amount or how often is not certain."""
    if mg is None or per_day is None:
        return None
    often = TIMES_A_DAY_WORDS.get(per_day) or f"{per_day:g} times a day"
    return f"{mg:g} mg {often}"


def _finite(value: float | None) -> float | None:
    """Arithmetic on extreme (but finite) inputs, e.g. a 1e-300 day period, is unreadable rather than infinite."""
    return value if value is None or math.isfinite(value) else None


def _sum(values: list[float | None]) -> float | None:
    return None if None in values else round(sum(v for v in values if v is not None), 6)


def _max(values: list[float | None]) -> float | None:
    return None if not values or None in values else max(v for v in values if v is not None)


def _one_daily(
    dosage: Dosage, strength: float | None, units: frozenset[str]
) -> tuple[float | None, float | None, str | None]:
    """(mg a day, units a day, the words of its sig) of one Dosage: the dosage is read once for all three."""
    mg, tablets = amount_per_administration(dosage, strength, units)
    per_day = administrations_per_day(dosage)
    if per_day is None:
        return None, None, None
    return (
        _finite(round(mg * per_day, 6)) if mg is not None else None,
        _finite(round(tablets * per_day, 6)) if tablets is not None else None,
        _words(mg, per_day),
    )


def amount_per_administration(
    dosage: Dosage, strength: float | None, units: frozenset[str] | None = None
) -> tuple[float | None, float | None]:
    """(mg, units of the dose form) of one administration from Dosage.doseAndRate (a range counts at its high
    end); ``units``: the form's unit words (the default form's when not given)."""
    units = unit_words(None) if units is None else units
    entries = present(dosage.doseAndRate)
    # A lone entry (the usual sig) needs no ordering: sorting would read its type all the same.
    ordered = sorted(entries, key=lambda e: 0 if _is_ordered(e) else 1) if len(entries) > 1 else entries
    for entry in ordered:
        quantity = entry.doseQuantity
        if quantity is None and entry.doseRange is not None:
            quantity = entry.doseRange.high
            if quantity is None:
                return None, None
        if quantity is not None:
            return _quantity(quantity, strength, units)
    return None, None


def _is_ordered(entry: DosageDoseAndRate) -> bool:
    return entry.type is None or any(c.code == "ordered" for c in codings(entry.type))


def _quantity(quantity: Quantity, strength: float | None, units: frozenset[str]) -> tuple[float | None, float | None]:
    value = to_float(quantity.value)
    if value is None or value < 0:
        return None, None
    for raw_unit in (quantity.code, quantity.unit):
        unit = raw_unit.strip().lower() if raw_unit is not None else ""
        if unit in MG_PER_UNIT:
            mg = value * MG_PER_UNIT[unit]
            return round(mg, 6), (round(mg / strength, 6) if strength else None)
        if unit in units:
            return (round(value * strength, 6) if strength else None), value
    return None, None


def administrations_per_day(dosage: Dosage) -> float | None:
    """How many times a day, from Timing.repeat, else Timing.code; no timing means once a day only when
    neither asNeeded nor the sig text says otherwise."""
    timing = dosage.timing
    if timing is None:
        return _untimed(dosage)
    if timing.repeat is not None:
        from_repeat = _from_repeat(timing.repeat)
        if from_repeat is not None:
            return from_repeat
    for coding in codings(timing.code):
        if coding.code and coding.system in (None, GTS_SYSTEM) and coding.code.upper() in GTS_PER_DAY:
            return float(GTS_PER_DAY[coding.code.upper()])
    return None


def _from_repeat(repeat: TimingRepeat) -> float | None:
    frequency = to_float(repeat.frequency)
    period = to_float(repeat.period)
    unit = repeat.periodUnit
    events = len(present(repeat.when)) + len(present(repeat.timeOfDay))
    weekdays = len(present(repeat.dayOfWeek))
    if period is not None:
        days = PERIOD_DAYS.get(unit) if unit is not None else None
        if days is None or period <= 0:
            return None
        count = frequency if frequency is not None else float(events or 1)
        if count <= 0:
            return None
        return _finite(count / (period * days)) if period * days > 0 else None
    if frequency is not None:
        return None  # a frequency with no period says nothing about days
    if events or weekdays:
        return float(events or 1) * (weekdays / 7 if weekdays else 1.0)
    return None


def _untimed(dosage: Dosage) -> float | None:
    if dosage.asNeededBoolean is True or dosage.asNeededCodeableConcept is not None:
        return None
    text = " ".join(t for t in (dosage.text, dosage.patientInstruction) if t is not None)
    if _CONTRARY.search(text):
        return None
    return 1.0
