"""Issue 7's rules, one chart each, written from the policy text the way a clinical pharmacist would.

Every chart is built inline (no ../shared): a Patient, Conditions coded the way EHRs send them (ICD-10-CM,
SNOMED, both, or text only), companion orders, Coverage and the prescriber; then one order-sign call
through ``HookHandler``. Codes come from fhir_mappings/tables/*.csv.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from cds_service.config import Config
from cds_service.policy.engine import load_policy
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables

from .scenarios import request_for

TODAY = date(2026, 11, 27)
AUTHORED = "2026-11-20"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
NUCC = "http://nucc.org/provider-taxonomy"
ORDER = "MedicationRequest/order-1"


@pytest.fixture(scope="module")
def handler() -> HookHandler:
    tables = load_code_tables()
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None, today=lambda: TODAY)


# ----------------------------------------------------------------------------- chart builders


def patient(birth: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "birthDate": birth, "gender": "female"}


def condition(cid: str, *codings: tuple[str, str, str], text: str | None = None, onset: str = "2025-01-10") -> dict[str, Any]:
    code: dict[str, Any] = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text:
        code["text"] = text
    if not codings:
        code.pop("coding")
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": code,
        "onsetDateTime": onset,
    }


def coverage(plan: str = "MCD-001") -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": "cov1",
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"display": "Health plan"}],
        "class": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]},
                "value": plan,
            }
        ],
    }


def prescriber(taxonomy: str = "207RX0202X") -> list[dict[str, Any]]:
    """Medical oncology by default (NUCC 207RX0202X); pediatric neurology is 2080P0008X."""
    return [
        {"resourceType": "Practitioner", "id": "doc1", "name": [{"family": "Doe"}]},
        {
            "resourceType": "PractitionerRole",
            "id": "role1",
            "practitioner": {"reference": "Practitioner/doc1"},
            "specialty": [{"coding": [{"system": NUCC, "code": taxonomy}]}],
        },
    ]


def med_order(oid: str, rxcui: str | None, display: str, *, status: str = "draft", dosage: dict[str, Any] | None = None,
              reason: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": display}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": display}]
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": AUTHORED,
        "requester": {"reference": "PractitionerRole/role1"},
        "medicationCodeableConcept": concept,
    }
    if dosage is not None:
        order["dosageInstruction"] = [dosage]
    if reason is not None:
        order["reasonCode"] = reason
    return order


def daily(mg: float, per_day: int = 1) -> dict[str, Any]:
    return {
        "text": f"{mg:g} mg by mouth {per_day} time(s) a day",
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}],
    }


def call(handler: HookHandler, resources: list[dict[str, Any]], drafts: list[dict[str, Any]]) -> dict[str, Any]:
    sc = {"hook": "order-sign", "userId": "PractitionerRole/role1", "patientId": "p1", "resources": resources,
          "draftOrders": drafts}
    return handler.handle("everolimus-order-sign", copy.deepcopy(request_for(sc))).body


def evaluation(body: dict[str, Any], order: str = ORDER) -> dict[str, Any]:
    for card in body["cards"]:
        ev = (card.get("extension") or {}).get("priorauth-cds.evaluation")
        if ev and ev["order"] == order:
            return {**ev, "_card": card}
    raise AssertionError(f"no evaluation for {order}")


def status(ev: dict[str, Any], cid: str) -> str:
    return next(c["status"] for c in ev["criteria"] if c["id"] == cid)


def suggested_codes(body: dict[str, Any]) -> set[str]:
    return {
        coding["code"]
        for card in body["cards"]
        for s in card.get("suggestions", [])
        for a in s["actions"]
        for coding in (a.get("resource") or {}).get("medicationCodeableConcept", {}).get("coding", [])
    }


DISPERZ_2 = ("1308428", "everolimus 2 MG Tablet for Oral Suspension")
GENERIC_5 = ("845515", "everolimus 5 MG Oral Tablet")
GENERIC_10 = ("845507", "everolimus 10 MG Oral Tablet")
TSC = (ICD10, "Q85.1", "Tuberous sclerosis")


# ----------------------------------------------------------------------------- rule 1: pathway by evidence


def test_infant_with_tsc_and_a_brain_tumour_is_judged_under_sega_not_renal_aml(handler: HookHandler) -> None:
    """11 months old, TSC + D43.0: SEGA (I.E) is the specific suggestion; I.E.4 (age >= 1) is what fails."""
    chart = [patient("2025-12-20"), condition("c1", TSC),
             condition("c2", (ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial")),
             coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *DISPERZ_2, dosage=daily(2))]))
    assert ev["pathway"] == "I.E"
    assert status(ev, "I.E.4") == "not-met"
    assert "Age ≥ 18" not in ev["_card"]["detail"]


def test_toddler_with_tsc_focal_seizures_is_told_i_f_needs_age_two(handler: HookHandler) -> None:
    chart = [patient("2025-05-01"), condition("c1", TSC),
             condition("c2", (ICD10, "G40.109", "Localization-related symptomatic epilepsy, simple partial")),
             coverage(), *prescriber("2080P0008X")]
    ev = evaluation(call(handler, chart, [med_order("order-1", *DISPERZ_2, dosage=daily(2))]))
    assert ev["pathway"] == "I.F"
    assert status(ev, "I.F.4") == "not-met"
    assert "SEGA" not in ev["_card"]["summary"]


def test_tsc_alone_names_all_three_manifestations(handler: HookHandler) -> None:
    chart = [patient("1990-03-01"), condition("c1", TSC), coverage(), *prescriber()]
    body = call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    ev = evaluation(body)
    assert ev["diagnosisOptions"] == ["I.D", "I.E", "I.F"]
    card = ev["_card"]
    for words in ("renal angiomyolipoma", "SEGA", "seizures"):
        assert words in card["summary"]
    for pid in ("I.D", "I.E", "I.F"):
        assert f"**{pid}**" in card["detail"]


def test_text_only_sega_with_tsc_is_a_specific_suggestion(handler: HookHandler) -> None:
    chart = [patient("2015-03-01"), condition("c1", (SNOMED, "7199000", "Tuberous sclerosis syndrome")),
             condition("c2", text="Subependymal giant cell astrocytoma"), coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_5, dosage=daily(5))]))
    assert ev["pathway"] == "I.E"
    assert status(ev, "I.E.2") == "unknown"  # named in text only: the payer wants it documented (coded)


def test_reason_on_the_order_beats_a_generic_suggestion(handler: HookHandler) -> None:
    chart = [patient("1980-03-01"), condition("c1", TSC), coverage(), *prescriber()]
    order = med_order("order-1", *GENERIC_10, dosage=daily(10), reason=[{"text": "renal angiomyolipoma"}])
    ev = evaluation(call(handler, chart, [order]))
    assert ev["pathway"] == "I.D" and "diagnosisOptions" not in ev


def test_a_missing_medication_key_does_not_change_the_pathway(handler: HookHandler) -> None:
    chart = [patient("2015-03-01"), condition("c1", TSC),
             condition("c2", (ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial")),
             coverage(), *prescriber()]
    sc = {"hook": "order-sign", "userId": "PractitionerRole/role1", "patientId": "p1", "resources": chart,
          "draftOrders": [med_order("order-1", *DISPERZ_2, dosage=daily(2))]}
    full = evaluation(handler.handle("everolimus-order-sign", request_for(sc)).body)
    request = request_for(sc)
    request["prefetch"].pop("medicationStatements")
    request["prefetch"].pop("medicationRequests")
    request["prefetch"].pop("allergies")
    partial = evaluation(handler.handle("everolimus-order-sign", request).body)
    assert partial["pathway"] == full["pathway"] == "I.E"


# ----------------------------------------------------------------------------- rule 2: no diagnosis


def test_nothing_on_file_asks_for_the_diagnosis(handler: HookHandler) -> None:
    body = call(handler, [patient("1970-01-01"), coverage(), *prescriber()],
                [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    ev = evaluation(body)
    assert ev["decision"] == "incomplete" and "pathway" not in ev
    assert "off-label" not in ev["_card"]["summary"] and "not covered" not in ev["_card"]["summary"]
    for pid in ("I.A", "I.D", "I.G", "I.H"):
        assert f"**{pid}**" in ev["_card"]["detail"]


def test_an_unrelated_diagnosis_still_goes_to_i_i(handler: HookHandler) -> None:
    chart = [patient("1970-01-01"), condition("c1", (ICD10, "I10", "Essential (primary) hypertension")),
             coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert (ev["pathway"], ev["decision"], ev["referTo"]) == ("I.I", "refer", "CP.PMN.53")
    payer = next(c for c in ev["criteria"] if c["id"] == "I.I.1")
    assert payer.get("review") == "payer"
    assert "Payer review" in ev["_card"]["detail"]


# ----------------------------------------------------------------------------- rule 3: companion forms

MENINGIOMA = (ICD10, "D32.9", "Benign neoplasm of meninges, unspecified")


def _meningioma(handler: HookHandler, octreotide: dict[str, Any]) -> dict[str, Any]:
    chart = [patient("1960-01-01"), condition("c1", MENINGIOMA), coverage(), *prescriber(), octreotide]
    return evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))


def _octreotide(rxcui: str | None, text: str, dosage: dict[str, Any] | None = None) -> dict[str, Any]:
    return med_order("oct-1", rxcui, text, status="active", dosage=dosage)


def test_short_acting_octreotide_is_not_the_lar(handler: HookHandler) -> None:
    sc_tid = {"text": "100 mcg subcutaneously three times a day",
              "route": {"coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]},
              "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}}
    ev = _meningioma(handler, _octreotide("7617", "octreotide", sc_tid))
    assert status(ev, "I.H.2.f") == "not-met"
    assert ev["decision"] == "not-met"
    coded = _meningioma(handler, _octreotide("312068", "1 ML octreotide 0.05 MG/ML Injection"))
    assert status(coded, "I.H.2.f") == "not-met"


def test_the_lar_meets_i_h_2_f_by_code_words_or_route_and_interval(handler: HookHandler) -> None:
    assert status(_meningioma(handler, _octreotide("898589", "octreotide 20 MG Injection")), "I.H.2.f") == "met"
    assert status(_meningioma(handler, _octreotide(None, "Sandostatin LAR Depot 20 mg")), "I.H.2.f") == "met"
    im_monthly = {"text": "20 mg IM every 4 weeks",
                  "route": {"coding": [{"system": SNOMED, "code": "78421000", "display": "Intramuscular route"}]},
                  "timing": {"repeat": {"frequency": 1, "period": 4, "periodUnit": "wk"}}}
    assert status(_meningioma(handler, _octreotide("7617", "octreotide", im_monthly)), "I.H.2.f") == "met"


def test_octreotide_of_unstated_form_is_unknown_never_met(handler: HookHandler) -> None:
    ev = _meningioma(handler, _octreotide("7617", "octreotide"))
    assert status(ev, "I.H.2.f") == "unknown"
    assert ev["decision"] != "met"


# ----------------------------------------------------------------------------- rule 5: prescribable fixes


BREAST = (ICD10, "C50.911", "Malignant neoplasm of unspecified site of right female breast")
LIVER_METS = (ICD10, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")


def test_add_exemestane_is_the_25_mg_tablet_with_a_sig(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", BREAST), condition("c2", LIVER_METS), coverage(), *prescriber()]
    body = call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    assert "310261" in suggested_codes(body)
    create = next(
        a["resource"] for card in body["cards"] for s in card.get("suggestions", []) for a in s["actions"]
        if a["type"] == "create"
    )
    assert create["dosageInstruction"][0]["text"] == "25 mg by mouth once daily"


def test_kidney_transplant_suggests_only_the_kidney_regimen(handler: HookHandler) -> None:
    chart = [patient("1970-01-01"), condition("c1", (ICD10, "Z94.0", "Kidney transplant status")), coverage(),
             *prescriber("207RN0300X")]
    body = call(handler, chart, [med_order("order-1", "977438", "everolimus 0.75 MG Oral Tablet", dosage=daily(0.75, 2))])
    ev = evaluation(body)
    assert ev["pathway"] == "I.G"
    codes = suggested_codes(body)
    assert {"835894", "312617"} <= codes and "198377" not in codes  # no tacrolimus for a kidney
    # Z94.0 is the status after a transplant: induction (basiliximab, before the surgery) is documented, not ordered
    assert "196102" not in codes
    detail = ev["_card"]["detail"]
    assert "I.G.7.a" in detail and "**I.G.7.b**" not in detail
    assert "document the induction given at the transplant instead" in detail


def test_tablet_overrun_offers_the_same_mg_in_fewer_tablets(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", BREAST), condition("c2", LIVER_METS), coverage(), *prescriber()]
    three_fives = daily(15)
    three_fives["doseAndRate"] = [{"doseQuantity": {"value": 3, "unit": "tablet", "code": "{tbl}",
                                                    "system": "http://unitsofmeasure.org"}}]
    body = call(handler, chart, [med_order("order-1", "845518", "everolimus 5 MG Oral Tablet [Afinitor]", dosage=three_fives)])
    assert "1119400" in suggested_codes(body)  # 2 x 7.5 mg generic
    assert "845515" not in suggested_codes(body)  # the plain generic swap would keep 3 tablets a day


# ----------------------------------------------------------------------------- rule 6: cards


def test_dose_over_the_limit_is_not_met_with_numbers(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", BREAST), condition("c2", LIVER_METS), coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(30))]))
    detail = ev["_card"]["detail"]
    not_met = detail.split("**Not met as ordered:**")[1].split("\n\n")[0]
    assert "30 mg/day exceeds 20 mg/day" in not_met
    assert "30 mg/day exceeds 20 mg/day" in ev["_card"]["summary"]


def test_gist_after_imatinib_names_ripretinib(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", (SNOMED, "420120006", "Gastrointestinal stromal tumor")),
             coverage(), *prescriber(),
             med_order("ima-1", "403879", "imatinib 400 MG Oral Tablet", status="active", dosage=daily(400)),
             med_order("sun-1", "616289", "sunitinib 50 MG Oral Capsule", status="completed", dosage=daily(50)),
             med_order("reg-1", None, "regorafenib 40 mg tablet", status="completed")]
    for old in chart[-3:]:
        old["authoredOn"] = "2024-01-01"
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert ev["pathway"] == "I.H"
    assert "ripretinib (Qinlock)" in ev["_card"]["summary"]


def test_him_disperz_generic_referral_explains_itself(handler: HookHandler) -> None:
    chart = [patient("2015-01-01"), condition("c1", TSC),
             condition("c2", (ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial")),
             coverage("HIM-002"), *prescriber()]
    body = call(handler, chart, [med_order("order-1", *DISPERZ_2, dosage=daily(4))])
    ev = evaluation(body)
    assert (ev["decision"], ev["referTo"]) == ("refer", "HIM.PA.103")
    assert "non-formulary" in ev["_card"]["detail"] and "Not addressed" not in str(body)


def test_no_active_coverage_asserts_nothing(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", BREAST), condition("c2", LIVER_METS), *prescriber()]
    body = call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    assert not body.get("systemActions")
    assert "No active Coverage is on file" in evaluation(body)["_card"]["detail"]


def test_evaluation_card_has_override_reasons_link_and_readable_met_criteria(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", BREAST), condition("c2", LIVER_METS), coverage(), *prescriber()]
    body = call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    ev = evaluation(body)
    card = ev["_card"]
    assert card["overrideReasons"] and all(r["system"] and r["code"] and r["display"] for r in card["overrideReasons"])
    assert card["source"]["url"] and card["links"][0]["url"] == card["source"]["url"]
    assert "- **I.A.1** Request is for Afinitor or Afinitor Disperz" in card["detail"]
    assert all("remedy" in c for c in ev["criteria"])
    fix_card = next(c for c in body["cards"] if c.get("suggestions"))
    assert "change(s)" not in fix_card["summary"]


def test_label_limitation_is_information_only(handler: HookHandler) -> None:
    chart = [patient("1960-01-01"), condition("c1", (ICD10, "C7A.010", "Malignant carcinoid tumor of the duodenum")),
             condition("c2", (ICD10, "E34.00", "Carcinoid syndrome, unspecified")), coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert any("functional carcinoid" in n for n in ev["notes"])
    assert "Information (does not change the decision)" in ev["_card"]["detail"]


@pytest.mark.parametrize("birth,expected", [("2025-11-20", "met"), ("2025-11-21", "not-met")])
def test_sega_age_boundary_is_the_first_birthday(handler: HookHandler, birth: str, expected: str) -> None:
    chart = [patient(birth), condition("c1", TSC),
             condition("c2", (ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial")),
             coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *DISPERZ_2, dosage=daily(2))]))
    assert ev["pathway"] == "I.E" and status(ev, "I.E.4") == expected


def test_snomed_code_the_tables_lack_is_read_by_its_display(handler: HookHandler) -> None:
    """A SNOMED SEGA concept we have no row for still names SEGA: with TSC it is the specific suggestion (I.E)."""
    sega = condition("c2", (SNOMED, "1000000001", "Subependymal giant cell astrocytoma"))
    chart = [patient("2015-03-01"), condition("c1", TSC), sega, coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *DISPERZ_2, dosage=daily(4))]))
    assert ev["pathway"] == "I.E" and status(ev, "I.E.2") == "unknown"


def test_an_icd_code_left_out_on_purpose_is_not_read_by_its_words(handler: HookHandler) -> None:
    kidney_carcinoid = condition("c1", (ICD10, "C7A.093", "Malignant carcinoid tumor of the kidney"))
    chart = [patient("1960-01-01"), kidney_carcinoid, coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert ev["pathway"] == "I.I"


def test_entered_in_error_conditions_are_no_diagnosis(handler: HookHandler) -> None:
    wrong = condition("c1", BREAST)
    wrong["verificationStatus"]["coding"][0]["code"] = "entered-in-error"
    ev = evaluation(call(handler, [patient("1960-01-01"), wrong, coverage(), *prescriber()],
                         [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert ev["decision"] == "incomplete" and "pathway" not in ev


def test_documented_generic_exception_is_payer_review_not_document_it(handler: HookHandler) -> None:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "sample_bundles" / "I.A-brand-dispense-as-written.json"
    body = handler.handle("everolimus-order-sign", json.loads(path.read_text())).body
    card = next(c for c in body["cards"] if "priorauth-cds.evaluation" in (c.get("extension") or {}))
    payer = card["detail"].split("**Payer review (nothing to document):**")[1]
    assert "I.A.7" in payer and "the payer reviews it" in payer
    assert "document I.A.7" not in card["summary"]


def test_history_of_breast_cancer_with_bone_metastases_is_i_a(handler: HookHandler) -> None:
    """Primary excised years ago: coded Z85.3 + C79.51 (ICD-10-CM guidelines) -> I.A, diagnosis to confirm."""
    chart = [patient("1960-01-01"), condition("c1", (ICD10, "Z85.3", "Personal history of malignant neoplasm of breast")),
             condition("c2", (ICD10, "C79.51", "Secondary malignant neoplasm of bone")), coverage(), *prescriber()]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert ev["pathway"] == "I.A" and status(ev, "I.A.2") == "unknown" and ev["decision"] != "met"


def test_hodgkin_with_another_antineoplastic_is_not_single_agent(handler: HookHandler) -> None:
    chart = [patient("1980-01-01"), condition("c1", (SNOMED, "118599009", "Hodgkin's disease (clinical)")), coverage(),
             *prescriber(), med_order("gem-1", "12574", "gemcitabine", status="active")]
    ev = evaluation(call(handler, chart, [med_order("order-1", *GENERIC_10, dosage=daily(10))]))
    assert ev["pathway"] == "I.H" and status(ev, "I.H.2.a") == "not-met" and ev["decision"] == "not-met"
