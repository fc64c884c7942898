"""Issue 14 items 1-2: the course of the drug from every medication record, and the response to it.

Charts are built raw (as prefetch would carry them) and read through ``build_record`` + ``build_facts``; the order
is authored 2026-11-20, and the pack's course gap is 45 days.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from fhir_mappings.codes import CodeTables, load_code_tables
from fhir_mappings.facts import build_facts
from fhir_mappings.model import Facts
from fhir_mappings.record import build_record
from fhir_mappings.therapy import DrugUse, covered_days, current_course

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ORDERED = date(2026, 11, 20)
GENERIC_10 = "845507"
EXEMESTANE = "258494"
LETROZOLE = "72965"
STABLE, IMPROVED, WORSENED, UNDETERMINED, NO_EVIDENCE = "359746009", "268910001", "271299001", "709137006", "260415000"
GAP = 45


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


def ago(days: int) -> str:
    return (ORDERED - timedelta(days=days)).isoformat()


def dispense(did: str, days_ago: int, supply: int | None = 30, status: str = "completed", **extra: Any) -> dict:
    out: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": did,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": extra.pop("rxcui", GENERIC_10)}]},
        "whenHandedOver": ago(days_ago),
    }
    if supply is not None:
        out["daysSupply"] = {"value": supply, "unit": "days", "code": "d"}
    out.update(extra)
    return out


def statement(sid: str, status: str, start: int, end: int | None = None) -> dict[str, Any]:
    period = {"start": ago(start)} if end is None else {"start": ago(start), "end": ago(end)}
    return {
        "resourceType": "MedicationStatement",
        "id": sid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": GENERIC_10}]},
        "effectivePeriod": period,
    }


def assessment(oid: str, value: str | list[str], days_ago: int, status: str = "final", code: str = "97509-4") -> dict:
    values = [value] if isinstance(value, str) else value
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": ago(days_ago),
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": v} for v in values]},
    }


def draft() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "o1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": ORDERED.isoformat(),
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": GENERIC_10}]},
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
            }
        ],
    }


def facts_for(tables: CodeTables, chart: list[dict[str, Any]], gap: float = GAP) -> Facts:
    record = build_record({"chart": chart}, [draft()], tables, patient_id="p1")
    return build_facts(record, "o1", tables, plan_prefixes={}, user_ref=None, today=ORDERED, max_gap_days=gap)


# ----------------------------------------------------------------------------- days of the current course


def test_dispense_only_history_counts_every_fill(tables: CodeTables) -> None:
    facts = facts_for(tables, [dispense(f"d{n}", days) for n, days in enumerate((150, 120, 90, 60, 30))])
    assert facts.days_on_drug == 150
    assert facts.course_start == date(2026, 6, 23)
    assert facts.drug_evidence == (
        "MedicationDispense/d0",
        "MedicationDispense/d1",
        "MedicationDispense/d2",
        "MedicationDispense/d3",
        "MedicationDispense/d4",
    )


def test_when_prepared_stands_in_for_when_handed_over(tables: CodeTables) -> None:
    prepared = dispense("d1", 40)
    prepared["whenPrepared"] = prepared.pop("whenHandedOver")
    assert facts_for(tables, [prepared]).days_on_drug == 30


@pytest.mark.parametrize(
    ("status", "handed_over", "counts"),
    [
        ("completed", True, True),
        ("in-progress", True, True),
        ("in-progress", False, False),  # prepared, not yet with the member
        ("cancelled", True, False),
        ("entered-in-error", True, False),
        ("stopped", True, False),
        ("declined", True, False),
        ("preparation", True, False),
    ],
)
def test_dispense_statuses(tables: CodeTables, status: str, handed_over: bool, counts: bool) -> None:
    fill = dispense("d1", 40, status=status)
    if not handed_over:
        fill["whenPrepared"] = fill.pop("whenHandedOver")
    facts = facts_for(tables, [fill])
    assert (facts.days_on_drug == 30) is counts
    assert ("everolimus" in facts.medication_history) is counts


@pytest.mark.parametrize(("late", "days"), [(45, 60), (46, 30)])
def test_a_gap_longer_than_the_pack_states_ends_the_course(tables: CodeTables, late: int, days: int) -> None:
    """Fill 1 covers 30 days; fill 2 comes ``late`` days after that ran out: 45 continues the course, 46 starts
    a new one (only its 30 days count)."""
    second = 40
    first = second + 30 + late
    facts = facts_for(tables, [dispense("d1", first), dispense("d2", second)])
    assert facts.days_on_drug == days
    assert facts.course_start == ORDERED - timedelta(days=first if late <= GAP else second)


@pytest.mark.parametrize(("ended_ago", "current"), [(45, True), (46, False)])
def test_a_course_is_current_only_within_the_gap_of_the_order(
    tables: CodeTables, ended_ago: int, current: bool
) -> None:
    facts = facts_for(tables, [dispense("d1", ended_ago + 30), dispense("d2", ended_ago + 60)])
    assert facts.days_on_drug == (60 if current else 0)
    assert (facts.course_start is not None) is current
    assert "everolimus" in facts.medication_history  # history either way


def test_the_gap_is_the_packs_setting(tables: CodeTables) -> None:
    chart = [dispense("d1", 130), dispense("d2", 40)]  # 60 days between the first fill's end and the second
    assert facts_for(tables, chart, gap=45).days_on_drug == 30
    assert facts_for(tables, chart, gap=60).days_on_drug == 60


def test_a_course_stopped_long_ago_never_counts_as_current(tables: CodeTables) -> None:
    chart = [statement("s1", "completed", 400, 200), statement("s2", "stopped", 300, 150)]
    facts = facts_for(tables, chart)
    assert facts.days_on_drug == 0 and facts.drug_evidence == ()
    assert set(facts.medication_history["everolimus"].evidence) == {"MedicationStatement/s1", "MedicationStatement/s2"}


@pytest.mark.parametrize(
    ("status", "days"), [("active", 90), ("stopped", 0), ("not-taken", 0), ("entered-in-error", 0)]
)
def test_statement_statuses(tables: CodeTables, status: str, days: int) -> None:
    assert facts_for(tables, [statement("s1", status, 90)]).days_on_drug == days


@pytest.mark.parametrize(
    ("status", "intent", "days"),
    [
        ("active", "order", 30),
        ("completed", "order", 30),
        ("stopped", "order", 0),
        ("cancelled", "order", 0),
        ("active", "proposal", 0),
    ],
)
def test_order_statuses(tables: CodeTables, status: str, intent: str, days: int) -> None:
    order = {
        "resourceType": "MedicationRequest",
        "id": "rx1",
        "status": status,
        "intent": intent,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": GENERIC_10}]},
        "authoredOn": ago(40),
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "code": "d"}},
    }
    assert facts_for(tables, [order]).days_on_drug == days


def test_order_validity_period_covers_days_without_a_supply(tables: CodeTables) -> None:
    order = {
        "resourceType": "MedicationRequest",
        "id": "rx1",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": GENERIC_10}]},
        "dispenseRequest": {"validityPeriod": {"start": ago(70), "end": ago(11)}},
    }
    assert facts_for(tables, [order]).days_on_drug == 60


def test_mixed_sources_make_one_course(tables: CodeTables) -> None:
    """An old statement, then pharmacy fills, overlapping: covered days are counted once."""
    chart = [statement("s1", "completed", 120, 75), dispense("d1", 80), dispense("d2", 50), dispense("d3", 20)]
    facts = facts_for(tables, chart)
    assert facts.days_on_drug == 120  # 2026-07-23 .. the order (2026-11-20), no day counted twice
    assert facts.course_start == date(2026, 7, 23)


def test_a_dispense_shows_the_previous_dose(tables: CodeTables) -> None:
    fill = dispense(
        "d1",
        20,
        dosageInstruction=[
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}],
            }
        ],
    )
    assert facts_for(tables, [fill]).previous_mg_per_day == 5.0


def test_dispenses_are_history_and_running_supply_is_a_co_medication(tables: CodeTables) -> None:
    chart = [
        dispense("let", 400, rxcui=LETROZOLE),
        dispense("exe-now", 10, rxcui=EXEMESTANE),
        dispense("exe-old", 100, rxcui=EXEMESTANE),
    ]
    facts = facts_for(tables, chart)
    assert facts.medication_history["letrozole"].evidence == ("MedicationDispense/let",)
    assert facts.co_medications["exemestane"].evidence == ("MedicationDispense/exe-now",)
    assert "letrozole" not in facts.co_medications


def test_course_spans_helpers() -> None:
    day = date(2026, 1, 1)
    assert covered_days([(day, day + timedelta(10)), (day + timedelta(5), day + timedelta(20))]) == 20
    uses = [DrugUse("a", day, day + timedelta(10), None), DrugUse("b", day + timedelta(100), None, None)]  # type: ignore[arg-type]
    # A record with a start only adds no days; the course of "a" ended 90+ days before the evaluation date.
    assert current_course(uses, day + timedelta(101), 45).days == 0


# ----------------------------------------------------------------------------- response to therapy


COURSE = [dispense(f"d{n}", days) for n, days in enumerate((120, 90, 60, 30))]  # began 2026-07-23


@pytest.mark.parametrize(
    ("observations", "meaning"),
    [
        ([assessment("a", STABLE, 20)], "responding"),
        ([assessment("a", IMPROVED, 20)], "responding"),
        ([assessment("a", NO_EVIDENCE, 20)], "responding"),
        ([assessment("a", WORSENED, 20)], "progressing"),
        ([assessment("a", UNDETERMINED, 20)], "undetermined"),
        ([assessment("a", "999999", 20)], "undetermined"),  # a value the tables do not know
        ([assessment("a", [STABLE, WORSENED], 20)], "undetermined"),  # codings that disagree
        ([assessment("a", STABLE, 90), assessment("b", WORSENED, 20)], "progressing"),  # the latest decides
        ([assessment("a", WORSENED, 90), assessment("b", STABLE, 20)], "responding"),
        ([assessment("a", STABLE, 20, code="88040-1")], "responding"),  # mCODE STU1 response observation
        ([assessment("a", STABLE, 20, status="amended")], "responding"),
        ([assessment("a", STABLE, 20, status="preliminary")], None),
        ([assessment("a", STABLE, 20, status="entered-in-error")], None),
        ([assessment("a", STABLE, 120)], None),  # the day the course began: a baseline, not a response
        ([assessment("a", STABLE, 119)], "responding"),  # the day after
        ([assessment("a", WORSENED, 200)], None),  # before the course
        ([], None),
    ],
)
def test_latest_assessment_after_the_course_start_decides(
    tables: CodeTables, observations: list[dict[str, Any]], meaning: str | None
) -> None:
    facts = facts_for(tables, [*COURSE, *observations])
    assert facts.therapy_response == meaning


def test_a_tie_on_the_latest_day_that_disagrees_says_so(tables: CodeTables) -> None:
    chart = [*COURSE, assessment("old", STABLE, 60), assessment("a", STABLE, 20), assessment("b", WORSENED, 20)]
    facts = facts_for(tables, chart)
    assert facts.therapy_response == "undetermined"
    assert facts.therapy_response_evidence == ("Observation/a", "Observation/b")
    assert facts.therapy_response_note is not None and "disagree" in facts.therapy_response_note
    assert "Observation/a (responding)" in facts.therapy_response_note


def test_a_tie_that_agrees_cites_both(tables: CodeTables) -> None:
    facts = facts_for(tables, [*COURSE, assessment("a", STABLE, 20), assessment("b", IMPROVED, 20)])
    assert facts.therapy_response == "responding"
    assert facts.therapy_response_evidence == ("Observation/a", "Observation/b")


def test_no_current_course_no_response(tables: CodeTables) -> None:
    facts = facts_for(tables, [dispense("d1", 300), assessment("a", STABLE, 20)])
    assert facts.course_start is None and facts.therapy_response is None


def test_a_pack_table_adds_rows_to_the_shared_response_table(tmp_path: Any) -> None:
    from fhir_mappings.codes import DEFAULT_PACK_TABLES

    pack = tmp_path / "tables"
    pack.mkdir()
    for source in DEFAULT_PACK_TABLES.glob("*.csv"):
        (pack / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (pack / "therapy_response.csv").write_text(
        "role,system,code,display,meaning,source\nvalue,snomed,1234567,A pack's own value,progressing,test row\n",
        encoding="utf-8",
    )
    tables = load_code_tables(pack=pack)
    assert tables.response_meaning("snomed", "1234567") == "progressing"
    assert tables.response_meaning("snomed", STABLE) == "responding"  # the shared rows still hold


def test_another_patients_dispense_is_ignored(tables: CodeTables) -> None:
    other = dispense("d-other", 40)
    other["subject"] = {"reference": "Patient/someone-else"}
    record = build_record({"chart": [other]}, [draft()], tables, patient_id="p1")
    assert record.medication_dispenses == () and "MedicationDispense/d-other: other patient" in record.ignored
