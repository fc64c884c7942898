"""FHIR -> Facts: the acceptance scenarios give the facts they imply, and every Facts field has its rules tested."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest

from fhir_mappings.codes import CodeTables, load_code_tables
from fhir_mappings.facts import OrderNotFound, build_facts, find_drug_orders, requested_months
from fhir_mappings.model import Dose, Facts, Finding, LineOfBusiness
from fhir_mappings.record import build_record
from tests.scenarios import scenario

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
NUCC = "http://nucc.org/provider-taxonomy"
PLAN_PREFIXES = {"MCD-": "medicaid", "HIM-": "him", "COM-": "commercial"}
TODAY = date(2026, 11, 27)


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


def scenario_facts(name: str, tables: CodeTables) -> Facts:
    data = scenario(name)
    (order_id,) = find_drug_orders(data["draftOrders"], tables)
    record = build_record(
        {"chart": data["resources"]}, data["draftOrders"], tables, patient_id=data["patientId"], user_ref=data["userId"]
    )
    assert record.dropped == ()
    return build_facts(record, order_id, tables, plan_prefixes=PLAN_PREFIXES, user_ref=data["userId"], today=TODAY)


# ----------------------------------------------------------------------------- acceptance scenarios


def test_scenario_a_brand_without_combination(tables: CodeTables) -> None:
    facts = scenario_facts("A-brand-without-combination", tables)
    assert facts.order_ref == "MedicationRequest/bea-order-7"
    assert facts.evaluation_date == date(2026, 11, 20)
    product = facts.product
    assert (product.rxcui, product.family, product.is_brand) == ("845512", "afinitor", True)
    assert (product.generic_rxcui, product.generic_available) == ("845507", True)
    assert product.generic_display == "everolimus 10 MG Oral Tablet"
    assert facts.dose == Dose(10.0, 1.0)
    assert facts.age_years == 58 and facts.age_evidence == ("Patient/bea",)  # born 1968-11-20
    assert set(facts.diagnoses) == {"breast-cancer", "secondary-malignancy"}
    assert facts.diagnoses["breast-cancer"] == Finding(("Condition/bea-cond-1",), date(2024, 12, 20))
    assert set(facts.receptors) == {"er-positive", "pr-positive", "her2-negative"}
    assert facts.specialties == {"oncology": Finding(("PractitionerRole/bea-role",), None)}
    assert facts.requester_ref == "PractitionerRole/bea-role"
    assert facts.medication_history["letrozole"] == Finding(("MedicationStatement/bea-ms-6",), date(2025, 7, 8))
    assert "endocrine-therapy" in facts.medication_history
    assert not {"exemestane", "fulvestrant", "tamoxifen"} & set(facts.co_medications)
    assert facts.line_of_business is LineOfBusiness.MEDICAID
    assert facts.line_of_business_evidence == ("Coverage/bea-cov",) and facts.coverage_ref == "Coverage/bea-cov"
    assert facts.requested_months == 3
    assert facts.days_on_drug == 0 and facts.previous_mg_per_day is None and facts.generic_exception is None


def test_scenario_a_generic_with_exemestane(tables: CodeTables) -> None:
    facts = scenario_facts("A-met-generic-with-exemestane", tables)
    assert (facts.product.rxcui, facts.product.is_brand) == ("845507", False)
    assert facts.co_medications["exemestane"].evidence == ("MedicationRequest/ava-order-8",)
    assert "endocrine-therapy" in facts.co_medications


def test_scenario_b_pancreatic_net(tables: CodeTables) -> None:
    facts = scenario_facts("B-pnet-met", tables)
    assert set(facts.diagnoses) == {"net-pancreas", "secondary-malignancy"}
    assert facts.age_years == 64 and facts.receptors == {}


def test_scenario_c_rcc_after_sunitinib(tables: CodeTables) -> None:
    facts = scenario_facts("C-rcc-after-sunitinib", tables)
    assert set(facts.diagnoses) == {"rcc", "secondary-malignancy"}
    assert set(facts.medication_history) == {"sunitinib", "rcc-prior-therapy"}


def test_scenario_d_tsc_renal_aml(tables: CodeTables) -> None:
    facts = scenario_facts("D-tsc-renal-aml", tables)
    assert set(facts.diagnoses) == {"tsc", "renal-angiomyolipoma"}
    assert "renal-angiomyolipoma" not in facts.possible_diagnoses
    assert facts.age_years == 31


def test_scenario_f_tsc_seizures_generic_suspension(tables: CodeTables) -> None:
    facts = scenario_facts("F-tsc-seizures-generic-suspension", tables)
    product = facts.product
    assert (product.family, product.is_brand, product.dose_form) == (
        "afinitor-disperz",
        False,
        "tablet-for-suspension",
    )
    assert facts.dose == Dose(5.0, 1.0)
    assert {"tsc", "partial-onset-seizures"} <= set(facts.diagnoses)
    assert set(facts.specialties) == {"neurology"}
    assert facts.age_years == 8


def test_scenario_g_kidney_brand_zortress(tables: CodeTables) -> None:
    facts = scenario_facts("G-kidney-brand-zortress", tables)
    product = facts.product
    assert (product.family, product.is_brand, product.generic_rxcui) == ("zortress", True, "977438")
    assert facts.dose == Dose(1.5, 2.0)
    assert set(facts.diagnoses) == {"kidney-transplant"}
    assert set(facts.specialties) == {"nephrology"}
    assert {"basiliximab", "cyclosporine", "prednisone", "corticosteroid", "calcineurin-inhibitor"} <= set(
        facts.co_medications
    )
    assert "tacrolimus" in facts.medication_history and "tacrolimus" not in facts.co_medications


def test_scenario_h_endometrial_with_letrozole(tables: CodeTables) -> None:
    facts = scenario_facts("H-endometrial-with-letrozole", tables)
    assert set(facts.diagnoses) == {"endometrial-carcinoma"}
    assert facts.co_medications["letrozole"].evidence == ("MedicationRequest/gwen-order-3",)
    assert facts.medication_history == {}


def test_scenario_i_other_diagnosis(tables: CodeTables) -> None:
    facts = scenario_facts("I-other-diagnosis-medicaid", tables)
    assert facts.diagnoses == {} and facts.possible_diagnoses == {}
    assert facts.line_of_business is LineOfBusiness.MEDICAID


def test_scenario_ii_continued_same_dose(tables: CodeTables) -> None:
    facts = scenario_facts("II-continued-same-dose", tables)
    assert facts.days_on_drug == 120
    assert facts.drug_evidence == ("MedicationStatement/sage-ms-7",)
    assert facts.previous_mg_per_day == 10.0
    assert facts.dose.mg_per_day == 10.0
    assert "exemestane" in facts.co_medications


def test_scenario_without_everolimus(tables: CodeTables) -> None:
    data = scenario("none-no-everolimus-order")
    assert find_drug_orders(data["draftOrders"], tables) == []


# ----------------------------------------------------------------------------- helpers for unit cases


def draft(oid: str = "o1", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-20",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "845507", "display": "everolimus 10 MG Oral Tablet"}]
        },
        "requester": {"reference": "PractitionerRole/r1"},
    }
    base.update(extra)
    return base


def med(rtype: str, mid: str, rxcui: str, status: str, **extra: Any) -> dict[str, Any]:
    out = {
        "resourceType": rtype,
        "id": mid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui}]},
    }
    if rtype == "MedicationRequest":
        out["intent"] = "order"
    out.update(extra)
    return out


def cond(cid: str, system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def status(system_suffix: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"http://terminology.hl7.org/CodeSystem/{system_suffix}", "code": code}]}


def obs(oid: str, loinc: str, when: str, state: str = "final", **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": state,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "effectiveDateTime": when,
        **value,
    }


def facts_for(
    tables: CodeTables,
    chart: list[dict[str, Any]],
    drafts: list[dict[str, Any]] | None = None,
    order_id: str = "o1",
    user_ref: str | None = None,
) -> Facts:
    drafts = drafts if drafts is not None else [draft()]
    record = build_record({"chart": chart}, drafts, tables, patient_id="p1", user_ref=user_ref)
    return build_facts(record, order_id, tables, plan_prefixes=PLAN_PREFIXES, user_ref=user_ref, today=TODAY)


# ----------------------------------------------------------------------------- scoping


def test_find_drug_orders(tables: CodeTables) -> None:
    by_text = draft("text", medicationCodeableConcept={"text": "Afinitor Disperz 2 mg"})
    by_ndc = draft(
        "ndc",
        medicationCodeableConcept={
            "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0078-0566-51", "display": "Zortress 0.25 mg"}]
        },
    )
    contained = draft(
        "contained",
        medicationReference={"reference": "#m"},
        contained=[
            {"resourceType": "Medication", "id": "m", "code": {"coding": [{"system": RXNORM, "code": "141704"}]}}
        ],
    )
    del contained["medicationCodeableConcept"]
    other = draft("letrozole", medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "72965"}]})
    voided = draft("voided", status="entered-in-error")
    nutrition = {"resourceType": "NutritionOrder", "id": "n1", "status": "draft"}
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": r} for r in (draft("coded"), by_text, by_ndc, contained, other, voided, nutrition)],
    }
    assert find_drug_orders([bundle], tables) == ["coded", "text", "ndc", "contained"]
    assert find_drug_orders([], tables) == []


def test_unknown_order_raises(tables: CodeTables) -> None:
    record = build_record({}, [draft()], tables, patient_id="p1")
    with pytest.raises(OrderNotFound):
        build_facts(record, "nope", tables, plan_prefixes=PLAN_PREFIXES, user_ref=None, today=TODAY)


def test_invalid_everolimus_draft_is_dropped_not_evaluated(tables: CodeTables) -> None:
    """A draft of the drug that does not validate is found in the request but has no facts: the record dropped it
    (and says why), like any invalid entry; the service answers for it without an evaluation."""
    broken = draft()
    del broken["subject"]
    assert find_drug_orders([broken], tables) == ["o1"]
    record = build_record({}, [broken], tables, patient_id="p1")
    assert record.draft("MedicationRequest/o1") is None
    assert record.dropped_reason("MedicationRequest/o1") == "subject: missing"
    with pytest.raises(OrderNotFound):
        build_facts(record, "MedicationRequest/o1", tables, plan_prefixes=PLAN_PREFIXES, user_ref=None, today=TODAY)


# ----------------------------------------------------------------------------- evaluation date and age


@pytest.mark.parametrize(
    "authored,birth,expected_date,expected_age",
    [
        ("2026-11-20", "1968-11-20", date(2026, 11, 20), 58),
        ("2026-11-20", "1968-11-21", date(2026, 11, 20), 57),
        ("2026-11-20T23:30:00-05:00", "2008-11-20", date(2026, 11, 20), 18),
        (None, "2008-11-28", TODAY, 17),
        ("2026-11-20", "1968", date(2026, 11, 20), 57),  # year only: counted from its last day
        ("2026-11-20", None, date(2026, 11, 20), None),
    ],
)
def test_evaluation_date_and_age(
    tables: CodeTables, authored: str | None, birth: str | None, expected_date: date, expected_age: int | None
) -> None:
    order = draft()
    order.pop("authoredOn")
    if authored:
        order["authoredOn"] = authored
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "p1"}
    if birth:
        patient["birthDate"] = birth
    facts = facts_for(tables, [patient], [order])
    assert facts.evaluation_date == expected_date
    assert facts.age_years == expected_age
    assert facts.age_evidence == (("Patient/p1",) if expected_age is not None else ())


# ----------------------------------------------------------------------------- product


@pytest.mark.parametrize(
    "concept,rxcui,family,is_brand,strength,generic",
    [
        (
            {"coding": [{"system": RXNORM, "code": "1310144"}]},
            "1310144",
            "afinitor-disperz",
            True,
            3.0,
            "1308430",
        ),
        ({"text": "Afinitor 5 mg tablet"}, None, "afinitor", True, 5.0, "845515"),
        (
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/ndc",
                        "code": "0078-0417-20",
                        "display": "Zortress 0.5 mg tablet",
                    }
                ]
            },
            None,
            "zortress",
            True,
            0.5,
            "977434",
        ),
        (
            {"coding": [{"system": RXNORM, "code": "141704"}], "text": "everolimus 7.5 mg tablet"},
            "141704",
            "afinitor",
            False,
            7.5,
            "1119400",
        ),
        (
            {"coding": [{"system": RXNORM, "code": "141704"}], "text": "Afinitor 10 mg"},
            "141704",
            "afinitor",
            True,
            10.0,
            None,
        ),
        ({"coding": [{"system": RXNORM, "code": "845508"}]}, "845508", "afinitor", False, 10.0, "845507"),
        ({"text": "everolimus"}, None, None, False, None, None),
    ],
)
def test_product_resolution(
    tables: CodeTables,
    concept: dict[str, Any],
    rxcui: str | None,
    family: str | None,
    is_brand: bool,
    strength: float | None,
    generic: str | None,
) -> None:
    product = facts_for(tables, [], [draft(medicationCodeableConcept=concept)]).product
    assert (product.rxcui, product.family, product.is_brand, product.strength_mg) == (rxcui, family, is_brand, strength)
    assert product.generic_rxcui == generic
    if generic:
        assert product.generic_available


# ----------------------------------------------------------------------------- diagnoses


def test_condition_statuses(tables: CodeTables) -> None:
    chart = [
        cond("active", ICD10CM, "C50.912", clinicalStatus=status("condition-clinical", "active")),
        cond("resolved", ICD10CM, "C64.2", clinicalStatus=status("condition-clinical", "resolved")),
        cond("refuted", ICD10CM, "C25.4", verificationStatus=status("condition-ver-status", "refuted")),
        cond("provisional", ICD10CM, "C73", verificationStatus=status("condition-ver-status", "provisional")),
        cond("abated", ICD10CM, "C54.1", abatementDateTime="2025-01-01"),
        cond(
            "relapse",
            ICD10CM,
            "C81.10",
            clinicalStatus=status("condition-clinical", "relapse"),
            onsetPeriod={"start": "2020-02-02"},
        ),
    ]
    facts = facts_for(tables, chart)
    assert set(facts.diagnoses) == {"breast-cancer", "hodgkin-lymphoma", "recurrence"}
    assert facts.diagnoses["recurrence"] == Finding(("Condition/relapse",), date(2020, 2, 2))
    assert set(facts.possible_diagnoses) == {"dtc"}


def test_reason_code_stage_and_recorded_date(tables: CodeTables) -> None:
    order = draft(reasonCode=[{"coding": [{"system": ICD10CM, "code": "C50.912"}]}])
    staged = cond(
        "staged",
        SNOMED,
        "254837009",
        recordedDate="2025-03-04",
        stage=[{"summary": {"coding": [{"system": SNOMED, "code": "258228008"}]}}],
    )
    facts = facts_for(tables, [staged], [order])
    assert facts.diagnoses["breast-cancer"] == Finding(("Condition/staged", "MedicationRequest/o1"), date(2025, 3, 4))
    assert facts.diagnoses["metastatic-stage"] == Finding(("Condition/staged",), date(2025, 3, 4))


@pytest.mark.parametrize(
    "codes,confirmed,possible",
    [
        ([("Q85.1", "2013-01-01")], {"tsc"}, {"renal-angiomyolipoma", "sega", "partial-onset-seizures"}),
        (
            [("Q85.1", "2013-01-01"), ("D30.01", "2024-01-01")],
            {"tsc", "benign-kidney-neoplasm"},
            {"renal-angiomyolipoma", "sega", "partial-onset-seizures"},
        ),
        (
            [("Q85.1", "2013-01-01"), ("G40.109", "2024-01-01")],
            {"tsc", "partial-onset-seizures", "seizure-disorder"},
            {"renal-angiomyolipoma", "sega"},
        ),
        ([("C7A.00", "2024-01-01")], {"net-unspecified-origin"}, {"net-gi", "net-lung"}),
        ([("C65.1", "2024-01-01")], set(), {"rcc"}),
        ([("Z76.82", "2024-01-01")], {"awaiting-transplant"}, {"kidney-transplant", "liver-transplant"}),
        ([("G40.909", "2024-01-01")], {"seizure-disorder"}, set()),
    ],
)
def test_possible_diagnoses(
    tables: CodeTables, codes: list[tuple[str, str]], confirmed: set[str], possible: set[str]
) -> None:
    chart = [cond(f"c{i}", ICD10CM, code, onsetDateTime=onset) for i, (code, onset) in enumerate(codes)]
    facts = facts_for(tables, chart)
    assert set(facts.diagnoses) == confirmed
    assert set(facts.possible_diagnoses) == possible


def test_possible_renal_aml_cites_both_conditions(tables: CodeTables) -> None:
    chart = [
        cond("tsc", ICD10CM, "Q85.1", onsetDateTime="2013-01-01"),
        cond("kidney", ICD10CM, "D30.01", onsetDateTime="2024-01-01"),
    ]
    finding = facts_for(tables, chart).possible_diagnoses["renal-angiomyolipoma"]
    assert set(finding.evidence) == {"Condition/tsc", "Condition/kidney"}
    assert finding.start == date(2013, 1, 1)


# ----------------------------------------------------------------------------- receptors


def snomed_value(code: str) -> dict[str, Any]:
    return {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": code}]}}


@pytest.mark.parametrize(
    "observations,expected",
    [
        ([obs("a", "16112-5", "2026-01-01", **snomed_value("10828004"))], {"er-positive"}),
        (
            [
                obs("a", "16112-5", "2026-01-01", **snomed_value("10828004")),
                obs("b", "16112-5", "2026-06-01", **snomed_value("260385009")),
            ],
            {"er-negative"},
        ),
        (
            [
                obs("a", "16112-5", "2026-06-01", **snomed_value("10828004")),
                obs("b", "16112-5", "2026-06-01", **snomed_value("260385009")),
            ],
            set(),
        ),
        ([obs("a", "16112-5", "2026-06-01", state="preliminary", **snomed_value("10828004"))], set()),
        ([obs("a", "85329-1", "2026-01-01", valueQuantity={"value": 0.5, "unit": "%"})], {"er-negative"}),
        ([obs("a", "85325-9", "2026-01-01", valueQuantity={"value": 5, "code": "%"})], {"pr-positive"}),
        (
            [obs("a", "85329-1", "2026-01-01", valueQuantity={"value": 1, "comparator": "<", "unit": "%"})],
            {"er-negative"},
        ),
        ([obs("a", "85329-1", "2026-01-01", valueString="95%")], {"er-positive"}),
        ([obs("a", "85319-2", "2026-01-01", valueString="2+")], set()),
        ([obs("a", "85319-2", "2026-01-01", valueString="IHC 3+")], {"her2-positive"}),
        ([obs("a", "85319-2", "2026-01-01", valueCodeableConcept={"text": "Negative (1+)"})], {"her2-negative"}),
        ([obs("a", "48676-1", "2026-01-01", valueString="Equivocal")], set()),
        (
            [
                obs(
                    "a",
                    "16113-3",
                    "2026-01-01",
                    interpretation=[
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                    "code": "POS",
                                }
                            ]
                        }
                    ],
                )
            ],
            {"pr-positive"},
        ),
        ([obs("a", "49683-6", "2026-01-01", valueQuantity={"value": 2.5})], set()),  # ISH ratio: only interpreted
        (
            [
                {
                    "resourceType": "Observation",
                    "id": "panel",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"text": "Breast biomarkers"},
                    "effectiveDateTime": "2026-01-01",
                    "component": [
                        {"code": {"coding": [{"system": LOINC, "code": "16112-5"}]}, "valueString": "Positive"},
                        {"code": {"coding": [{"system": LOINC, "code": "48676-1"}]}, "valueString": "negative"},
                    ],
                }
            ],
            {"er-positive", "her2-negative"},
        ),
    ],
)
def test_receptor_observations(tables: CodeTables, observations: list[dict[str, Any]], expected: set[str]) -> None:
    assert set(facts_for(tables, observations).receptors) == expected


def test_receptor_status_codes_and_recency(tables: CodeTables) -> None:
    chart = [
        cond("z", ICD10CM, "Z17.411", onsetDateTime="2026-03-01"),
        obs("old-her2", "48676-1", "2025-01-01", valueString="positive"),
    ]
    receptors = facts_for(tables, chart).receptors
    assert set(receptors) == {"hr-positive", "her2-negative"}
    assert receptors["her2-negative"] == Finding(("Condition/z",), date(2026, 3, 1))


# ----------------------------------------------------------------------------- specialties


def test_specialties_from_roles_and_qualifications(tables: CodeTables) -> None:
    people = [
        {
            "resourceType": "PractitionerRole",
            "id": "r1",
            "practitioner": {"reference": "Practitioner/doc"},
            "specialty": [{"coding": [{"system": NUCC, "code": "207RT0003X"}]}],
        },
        {
            "resourceType": "PractitionerRole",
            "id": "r2",
            "practitioner": {"reference": "Practitioner/doc"},
            "specialty": [{"coding": [{"system": NUCC, "code": "207RN0300X"}]}],
        },
        {
            "resourceType": "PractitionerRole",
            "id": "r3",
            "active": False,
            "practitioner": {"reference": "Practitioner/doc"},
            "specialty": [{"coding": [{"system": NUCC, "code": "207RX0202X"}]}],
        },
        {
            "resourceType": "Practitioner",
            "id": "doc",
            "qualification": [{"code": {"coding": [{"system": NUCC, "code": "2084N0400X"}]}}],
        },
    ]
    facts = facts_for(tables, people)
    assert set(facts.specialties) == {"hepatology", "transplant", "nephrology", "neurology"}
    assert facts.specialties["neurology"].evidence == ("Practitioner/doc",)
    assert facts.requester_ref == "PractitionerRole/r1"


def test_specialty_falls_back_to_the_hook_user(tables: CodeTables) -> None:
    people = [
        {
            "resourceType": "PractitionerRole",
            "id": "u1",
            "specialty": [{"coding": [{"system": NUCC, "code": "2080P0207X"}]}],
        }
    ]
    order = draft()
    del order["requester"]
    facts = facts_for(tables, people, [order], user_ref="PractitionerRole/u1")
    assert set(facts.specialties) == {"oncology", "hematology"} and facts.requester_ref == "PractitionerRole/u1"
    assert facts_for(tables, people, [order]).requester_ref is None


# ----------------------------------------------------------------------------- co-medications and history


def test_co_medications(tables: CodeTables) -> None:
    drafts = [
        draft(),
        draft("exe", medicationCodeableConcept={"text": "exemestane 25 MG Oral Tablet"}),
        draft("fulv", status="cancelled", medicationCodeableConcept={"text": "fulvestrant"}),
    ]
    chart = [
        med("MedicationRequest", "tac", "42316", "active", authoredOn="2026-01-01"),
        med("MedicationRequest", "pred", "8640", "completed", authoredOn="2026-01-01"),
        med("MedicationRequest", "proposal", "3008", "active", intent="proposal"),
        med("MedicationStatement", "tam", "10324", "active", effectiveDateTime="2025-05-05"),
        med("MedicationStatement", "ana", "84857", "completed"),
    ]
    facts = facts_for(tables, chart, drafts)
    assert set(facts.co_medications) == {
        "exemestane",
        "endocrine-therapy",
        "tacrolimus",
        "calcineurin-inhibitor",
        "tamoxifen",
    }
    assert facts.co_medications["endocrine-therapy"] == Finding(
        ("MedicationRequest/exe", "MedicationStatement/tam"), date(2025, 5, 5)
    )
    assert "everolimus" not in facts.co_medications  # the order itself is not its own co-medication


def test_medication_history(tables: CodeTables) -> None:
    chart = [
        med(
            "MedicationStatement",
            "let-old",
            "72965",
            "completed",
            effectivePeriod={"start": "2024-01-01", "end": "2024-06-01"},
        ),
        med("MedicationStatement", "let-new", "72965", "completed", effectiveDateTime="2025-01-01"),
        med("MedicationStatement", "not-taken", "10324", "not-taken", effectiveDateTime="2025-01-01"),
        med("MedicationRequest", "error", "282357", "entered-in-error", authoredOn="2025-01-01"),
        med("MedicationRequest", "future", "84857", "active", authoredOn="2026-12-01"),
        med(
            "MedicationRequest",
            "validity",
            "357977",
            "completed",
            dispenseRequest={"validityPeriod": {"start": "2023-02-02"}},
        ),
        med("MedicationStatement", "undated", "38409", "completed"),
    ]
    history = facts_for(
        tables, chart, [draft(), draft("co", medicationCodeableConcept={"text": "fulvestrant"})]
    ).medication_history
    assert set(history) == {"letrozole", "sunitinib", "toremifene", "endocrine-therapy", "rcc-prior-therapy"}
    assert history["letrozole"] == Finding(
        ("MedicationStatement/let-old", "MedicationStatement/let-new"), date(2024, 1, 1)
    )
    assert history["toremifene"].start is None
    assert history["sunitinib"].start == date(2023, 2, 2)


# ----------------------------------------------------------------------------- everolimus exposure


def test_days_on_drug_and_previous_dose(tables: CodeTables) -> None:
    chart = [
        med(
            "MedicationStatement",
            "course1",
            "845507",
            "completed",
            effectivePeriod={"start": "2026-01-01", "end": "2026-01-30"},
            dosage=[
                {
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                }
            ],
        ),
        med(
            "MedicationRequest",
            "course2",
            "845515",
            "completed",
            authoredOn="2026-01-20",
            dispenseRequest={"expectedSupplyDuration": {"value": 30, "code": "d"}, "numberOfRepeatsAllowed": 1},
            dosageInstruction=[
                {
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 1, "code": "{tbl}"}}],
                }
            ],
        ),
        med("MedicationStatement", "no-end", "845507", "completed", effectiveDateTime="2025-01-01"),
        med("MedicationStatement", "after", "845507", "active", effectiveDateTime="2026-11-25"),
    ]
    facts = facts_for(tables, chart)
    # 2026-01-01 .. 2026-01-30 inclusive, then 60 days from 2026-01-20 (to 2026-03-21): one course of 79 days, but it
    # ended 8 months before the order (2026-11-20), longer ago than the 45-day gap: no current course.
    assert facts.days_on_drug == 0 and facts.drug_evidence == () and facts.course_start is None
    assert facts.previous_mg_per_day == 5.0  # course2: one 5 mg tablet a day
    # Evaluated within 45 days of its end (2026-03-21 + 45 = 2026-05-05), the same course is current.
    current = facts_for(tables, chart, drafts=[draft(authoredOn="2026-05-05")])
    assert current.days_on_drug == 79 and current.course_start == date(2026, 1, 1)
    assert set(current.drug_evidence) == {"MedicationStatement/course1", "MedicationRequest/course2"}


def test_active_everolimus_runs_to_the_evaluation_date(tables: CodeTables) -> None:
    chart = [med("MedicationRequest", "rx", "845507", "active", authoredOn="2026-10-21")]
    facts = facts_for(tables, chart)
    assert facts.days_on_drug == 30 and facts.previous_mg_per_day is None


# ----------------------------------------------------------------------------- generic exception


@pytest.mark.parametrize(
    "substitution,expected",
    [
        ({"allowedBoolean": False, "reason": {"text": "intolerance to generic excipient"}}, ("MedicationRequest/o1",)),
        ({"allowedCodeableConcept": {"coding": [{"code": "N"}]}, "reason": {"text": "x"}}, ("MedicationRequest/o1",)),
        ({"allowedBoolean": False}, None),
        ({"allowedBoolean": True, "reason": {"text": "x"}}, None),
    ],
)
def test_generic_exception_from_substitution(
    tables: CodeTables, substitution: dict[str, Any], expected: tuple[str, ...] | None
) -> None:
    finding = facts_for(tables, [], [draft(substitution=substitution)]).generic_exception
    assert (finding.evidence if finding else None) == expected


def allergy(aid: str, clinical: str | None, verification: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "id": aid,
        "patient": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": RXNORM, "code": "141704", "display": "everolimus"}]},
        "recordedDate": "2026-02-02",
    }
    if clinical:
        out["clinicalStatus"] = status("allergyintolerance-clinical", clinical)
    if verification:
        out["verificationStatus"] = status("allergyintolerance-verification", verification)
    return out


def test_generic_exception_from_allergy(tables: CodeTables) -> None:
    chart = [allergy("a1", "active"), allergy("a2", "resolved"), allergy("a3", None, "refuted"), allergy("a4", None)]
    finding = facts_for(tables, chart).generic_exception
    assert finding == Finding(("AllergyIntolerance/a1", "AllergyIntolerance/a4"), date(2026, 2, 2))


# ----------------------------------------------------------------------------- line of business


def coverage(
    cid: str, sopt: str | None = None, plan: str | None = None, state: str = "active", order: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": cid,
        "status": state,
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"display": "Plan"}],
    }
    if sopt:
        out["type"] = {"coding": [{"system": "https://nahdo.org/sopt", "code": sopt}]}
    if plan:
        out["class"] = [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]
                },
                "value": plan,
            }
        ]
    if order is not None:
        out["order"] = order
    return out


@pytest.mark.parametrize(
    "coverages,insurance,lob,ref",
    [
        ([coverage("c1", sopt="5", plan="MCD-GA-01")], ["Coverage/c1"], LineOfBusiness.MEDICAID, "Coverage/c1"),
        ([coverage("c1", plan="him-tx")], [], LineOfBusiness.HIM, "Coverage/c1"),
        ([coverage("c1", sopt="51")], [], LineOfBusiness.COMMERCIAL, "Coverage/c1"),
        ([coverage("c1", sopt="1")], [], None, "Coverage/c1"),
        ([coverage("c1", sopt="2", state="cancelled")], [], None, None),
        ([coverage("c1", sopt="5"), coverage("c2", sopt="2")], ["Coverage/c2"], LineOfBusiness.MEDICAID, "Coverage/c2"),
        (
            [coverage("c1", sopt="5", order=2), coverage("c2", sopt="2", order=1)],
            ["Coverage/missing"],
            LineOfBusiness.MEDICAID,
            "Coverage/c2",
        ),
    ],
)
def test_line_of_business(
    tables: CodeTables,
    coverages: list[dict[str, Any]],
    insurance: list[str],
    lob: LineOfBusiness | None,
    ref: str | None,
) -> None:
    order = draft(insurance=[{"reference": r} for r in insurance]) if insurance else draft()
    facts = facts_for(tables, coverages, [order])
    assert facts.line_of_business is lob
    assert facts.coverage_ref == ref
    assert facts.line_of_business_evidence == ((ref,) if lob else ())


# ----------------------------------------------------------------------------- requested duration


@pytest.mark.parametrize(
    "dispense,months",
    [
        ({"validityPeriod": {"start": "2026-11-20", "end": "2027-05-19"}}, 6),
        ({"validityPeriod": {"start": "2026-11-20", "end": "2027-11-19"}}, 12),
        ({"expectedSupplyDuration": {"value": 30, "code": "d"}, "numberOfRepeatsAllowed": 2}, 3),
        ({"expectedSupplyDuration": {"value": 28, "unit": "days"}}, 1),
        ({"expectedSupplyDuration": {"value": 1, "code": "wk"}}, 1),
        ({"expectedSupplyDuration": {"value": 3, "code": "mo"}, "numberOfRepeatsAllowed": 1}, 6),
        ({"expectedSupplyDuration": {"value": 45, "code": "d"}}, 2),
        ({"expectedSupplyDuration": {"value": 30, "code": "fortnights"}}, None),
        ({"numberOfRepeatsAllowed": 3}, None),
        (None, None),
    ],
)
def test_requested_months(tables: CodeTables, dispense: dict[str, Any] | None, months: int | None) -> None:
    order = draft(dispenseRequest=dispense) if dispense else draft()
    assert requested_months(MedicationRequest.model_validate(order)) == months
    assert facts_for(tables, [], [order]).requested_months == months


def test_user_fallback_works_when_the_record_was_built_without_the_user(tables: CodeTables) -> None:
    people = [
        {
            "resourceType": "PractitionerRole",
            "id": "u1",
            "specialty": [{"coding": [{"system": NUCC, "code": "207RX0202X"}]}],
        }
    ]
    order = draft()
    del order["requester"]
    record = build_record({"people": people}, [order], tables, patient_id="p1")  # as the hook handler calls it
    facts = build_facts(record, "o1", tables, plan_prefixes=PLAN_PREFIXES, user_ref="PractitionerRole/u1", today=TODAY)
    assert set(facts.specialties) == {"oncology"}
