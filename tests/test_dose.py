"""Daily dose parsing: a matrix of Dosage shapes, including the ones that must stay unknown.

The cases are written as FHIR JSON and read as the service reads them: validated ``Dosage`` models (the dose reader
takes nothing else), alone and as the dosageInstruction of a draft order that went through the record builder.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.dosage import Dosage

from fhir_mappings.codes import load_code_tables
from fhir_mappings.dose import administrations_per_day, daily_dose
from fhir_mappings.model import Dose, Product
from fhir_mappings.record import build_record

GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"


def product(strength: float | None) -> Product:
    return Product(
        rxcui=None,
        display="everolimus",
        family="afinitor",
        is_brand=False,
        strength_mg=strength,
        dose_form="tablet",
        generic_rxcui=None,
        generic_display=None,
        generic_available=True,
    )


def qty(value: float, code: str | None = None, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if code is not None:
        out["system"] = "http://unitsofmeasure.org"
        out["code"] = code
    if unit is not None:
        out["unit"] = unit
    return out


def dosage(dose: dict[str, Any] | None = None, *, timing: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    if dose is not None:
        out["doseAndRate"] = [{"doseQuantity": dose}]
    if timing is not None:
        out["timing"] = timing
    return out


def repeat(
    frequency: float | None = None, period: float | None = 1, unit: str | None = "d", **extra: Any
) -> dict[str, Any]:
    rep: dict[str, Any] = dict(extra)
    if frequency is not None:
        rep["frequency"] = frequency
    if period is not None:
        rep["period"] = period
    if unit is not None:
        rep["periodUnit"] = unit
    return {"repeat": rep}


def typed(dosages: list[dict[str, Any]]) -> list[Dosage]:
    return [Dosage.model_validate(d) for d in dosages]


def through_the_record(dosages: list[dict[str, Any]]) -> list[Dosage] | None:
    """The dosageInstruction of an everolimus draft carrying ``dosages``, as the record builder validates it."""
    order = {
        "resourceType": "MedicationRequest",
        "id": "o1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "845507"}]},
        "dosageInstruction": dosages,
    }
    record = build_record({}, [order], load_code_tables(), patient_id="p1")
    assert record.dropped == ()
    draft = record.draft("o1")
    assert draft is not None
    return draft.dosageInstruction


def code(value: str, system: str | None = GTS) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": value}
    if system:
        coding["system"] = system
    return {"code": {"coding": [coding]}}


CASES: list[tuple[str, list[dict[str, Any]], float | None, Dose]] = [
    ("10 mg once daily", [dosage(qty(10, "mg"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("0.75 mg twice daily", [dosage(qty(0.75, "mg"), timing=repeat(2))], 0.75, Dose(1.5, 2.0)),
    ("unit text MG", [dosage(qty(5, unit="MG"), timing=repeat(1))], 5, Dose(5.0, 1.0)),
    ("milligram", [dosage(qty(5, unit="milligram"), timing=repeat(1))], 2.5, Dose(5.0, 2.0)),
    ("grams", [dosage(qty(0.01, "g"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("micrograms", [dosage(qty(750, "ug"), timing=repeat(2))], 0.75, Dose(1.5, 2.0)),
    ("mcg unit", [dosage(qty(500, unit="mcg"), timing=repeat(1))], 0.5, Dose(0.5, 1.0)),
    ("tablets {tbl}", [dosage(qty(2, "{tbl}"), timing=repeat(1))], 5, Dose(10.0, 2.0)),
    ("tablets unit word", [dosage(qty(1, unit="tablet"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("1 with code TAB", [dosage(qty(1, "TAB"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("UCUM 1 with unit tablet", [dosage(qty(1, "1", "tablet"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("sandbox {pill}", [dosage(qty(1, "{pill}"), timing=repeat(1))], 10, Dose(10.0, 1.0)),
    ("tablets without strength", [dosage(qty(2, "{tbl}"), timing=repeat(1))], None, Dose(None, 2.0)),
    ("mg without strength", [dosage(qty(10, "mg"), timing=repeat(1))], None, Dose(10.0, None)),
    ("every 12 hours", [dosage(qty(1, "mg"), timing=repeat(1, 12, "h"))], 1, Dose(2.0, 2.0)),
    ("3 a week", [dosage(qty(10, "mg"), timing=repeat(3, 1, "wk"))], 10, Dose(round(30 / 7, 6), round(3 / 7, 6))),
    ("every other day", [dosage(qty(10, "mg"), timing=repeat(1, 2, "d"))], 10, Dose(5.0, 0.5)),
    ("frequencyMax ignored", [dosage(qty(5, "mg"), timing=repeat(1, frequencyMax=2))], 5, Dose(5.0, 1.0)),
    ("when, no frequency", [dosage(qty(5, "mg"), timing={"repeat": {"when": ["MORN", "EVE"]}})], 5, Dose(10.0, 2.0)),
    (
        "timeOfDay x3 per day",
        [
            dosage(
                qty(1, "mg"),
                timing={"repeat": {"timeOfDay": ["08:00:00", "14:00:00", "20:00:00"], "period": 1, "periodUnit": "d"}},
            )
        ],
        1,
        Dose(3.0, 3.0),
    ),
    ("code BID", [dosage(qty(0.75, "mg"), timing=code("BID"))], 0.75, Dose(1.5, 2.0)),
    ("code QD without system", [dosage(qty(10, "mg"), timing=code("QD", None))], 10, Dose(10.0, 1.0)),
    ("code QOD", [dosage(qty(10, "mg"), timing=code("QOD"))], 10, Dose(5.0, 0.5)),
    ("code Q8H", [dosage(qty(1, "mg"), timing=code("Q8H"))], 1, Dose(3.0, 3.0)),
    ("code AM", [dosage(qty(10, "mg"), timing=code("AM"))], 10, Dose(10.0, 1.0)),
    (
        "dose range uses high",
        [{"doseAndRate": [{"doseRange": {"low": qty(5, "mg"), "high": qty(10, "mg")}}], "timing": repeat(1)}],
        5,
        Dose(10.0, 2.0),
    ),
    ("no timing, plain sig", [dosage(qty(10, "mg"), text="10 mg by mouth 1 time(s) daily")], 10, Dose(10.0, 1.0)),
    ("no timing, no text", [dosage(qty(10, "mg"))], 10, Dose(10.0, 1.0)),
    (
        "same sequence is concurrent",
        [dosage(qty(5, "mg"), timing=code("AM"), sequence=1), dosage(qty(2.5, "mg"), timing=code("PM"), sequence=1)],
        2.5,
        Dose(7.5, 3.0),
    ),
    (
        "later sequence: the larger daily amount",
        [dosage(qty(5, "mg"), timing=repeat(1), sequence=1), dosage(qty(10, "mg"), timing=repeat(1), sequence=2)],
        5,
        Dose(10.0, 2.0),
    ),
    (
        "ordered amount preferred over calculated",
        [
            {
                "doseAndRate": [
                    {"type": {"coding": [{"code": "calculated"}]}, "doseQuantity": qty(3, "mg")},
                    {"type": {"coding": [{"code": "ordered"}]}, "doseQuantity": qty(5, "mg")},
                ],
                "timing": repeat(1),
            }
        ],
        5,
        Dose(5.0, 1.0),
    ),
]

UNKNOWN: list[tuple[str, list[dict[str, Any]]]] = [
    ("no dosage", []),
    ("text only", [{"text": "as directed"}]),
    ("no dose quantity", [dosage(None, timing=repeat(1))]),
    ("mL is not mg", [dosage(qty(5, "mL"), timing=repeat(1))]),
    ("no unit", [dosage(qty(5), timing=repeat(1))]),
    ("range without high", [{"doseAndRate": [{"doseRange": {"low": qty(5, "mg")}}], "timing": repeat(1)}]),
    ("as needed, no timing", [dosage(qty(10, "mg"), asNeededBoolean=True)]),
    ("sig says twice", [dosage(qty(10, "mg"), text="10 mg twice daily")]),
    ("sig says BID", [dosage(qty(10, "mg"), text="10 mg PO BID")]),
    ("sig says 2 time(s)", [dosage(qty(10, "mg"), text="10 mg by mouth 2 time(s) daily")]),
    ("sig as directed", [dosage(qty(10, "mg"), text="take as directed")]),
    ("frequency without period", [dosage(qty(10, "mg"), timing={"repeat": {"frequency": 1}})]),
    ("unknown period unit", [dosage(qty(10, "mg"), timing=repeat(1, 1, "fortnight"))]),
    ("unknown timing code", [dosage(qty(10, "mg"), timing=code("XYZ"))]),
    ("code from another system", [dosage(qty(10, "mg"), timing=code("BID", "http://example.org/local"))]),
    ("timing with bounds only", [dosage(qty(10, "mg"), timing={"repeat": {"boundsPeriod": {"start": "2026-01-01"}}})]),
    (
        "one sequence unreadable",
        [dosage(qty(10, "mg"), timing=repeat(1), sequence=1), dosage(qty(10, "mL"), timing=repeat(1), sequence=2)],
    ),
]


@pytest.mark.parametrize("name,dosages,strength,expected", CASES, ids=[c[0] for c in CASES])
def test_daily_dose(name: str, dosages: list[dict[str, Any]], strength: float | None, expected: Dose) -> None:
    assert daily_dose(typed(dosages), product(strength)) == expected


@pytest.mark.parametrize("name,dosages,strength,expected", CASES, ids=[c[0] for c in CASES])
def test_daily_dose_of_a_draft_through_the_record(
    name: str, dosages: list[dict[str, Any]], strength: float | None, expected: Dose
) -> None:
    """Pruning keeps every Dosage element the reader uses."""
    assert daily_dose(through_the_record(dosages), product(strength)) == expected


@pytest.mark.parametrize("name,dosages", UNKNOWN, ids=[c[0] for c in UNKNOWN])
def test_unparseable_dose_is_unknown(name: str, dosages: list[dict[str, Any]]) -> None:
    assert daily_dose(typed(dosages), product(10)).mg_per_day is None


def test_no_product_and_none_dosages() -> None:
    assert daily_dose(None, None) == Dose(None, None)
    assert daily_dose([None, *typed([dosage(qty(10, "mg"), timing=repeat(1))])], None) == Dose(10.0, None)


def test_administrations_per_day_prefers_repeat_over_code() -> None:
    both = Dosage.model_validate({"timing": {**repeat(2), **code("QD")}})
    assert administrations_per_day(both) == 2.0
