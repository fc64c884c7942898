"""Issue 14 items 4, 6 and 8, one chart each, reasoned from the policy text the way a clinical pharmacist would.

4. Procedures: a completed transplant is received, a planned one (preparation, in-progress, a future date) is
   scheduled and counts where the criterion accepts it (I.G.2 "received or is scheduled"); not-done and
   entered-in-error never count.
6. The day's dose is per member: every draft of the drug in the request adds up (and the card says so).
8. Safe suggestions: no drug the chart records an active allergy or intolerance to, no regimen for the other organ,
   no induction after the transplant, and no fix that would not satisfy its criterion.

Charts are built with the helpers of ``test_accuracy_rules`` and answered through ``HookHandler`` (order-sign).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.procedure import Procedure

from cds_service.policy.predicates import CompileEnv, PolicyError, compile_predicate
from cds_service.policy.results import Status
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables
from fhir_mappings.model import Dose, DraftDose, Finding
from fhir_mappings.procedures import procedure_state
from tests.fhir_server import start_fhir_server

from .scenarios import request_for
from .test_accuracy_rules import (
    BREAST,
    ICD10,
    LIVER_METS,
    SNOMED,
    call,
    condition,
    coverage,
    daily,
    evaluation,
    handler,
    med_order,
    patient,
    prescriber,
    status,
    suggested_codes,
)
from .test_policy_cp_phar_63 import facts_for as _base_facts

__all__ = ["handler"]  # the module-scoped HookHandler fixture, shared

ZORTRESS_075 = ("977438", "everolimus 0.75 MG Oral Tablet")
GENERIC_10 = ("845507", "everolimus 10 MG Oral Tablet")
GENERIC_5 = ("845515", "everolimus 5 MG Oral Tablet")
AFINITOR_5 = ("845518", "everolimus 5 MG Oral Tablet [Afinitor]")
EXEMESTANE = ("310261", "exemestane 25 MG Oral Tablet")
BASILIXIMAB, CYCLOSPORINE, PREDNISONE, TACROLIMUS = "196102", "835894", "312617", "198377"
KIDNEY_TX = (SNOMED, "70536003", "Transplant of kidney")
LIVER_TX = (SNOMED, "18027006", "Transplantation of liver")
AWAITING = (ICD10, "Z76.82", "Awaiting organ transplant status")
NEPHROLOGY = "207RN0300X"
YESTERDAY, IN_3_DAYS = "2026-11-19", "2026-11-23"  # the orders are authored 2026-11-20


def procedure(pid: str, code: tuple[str, str, str], status: str, performed: str | None) -> dict[str, Any]:
    system, value, display = code
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": pid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": value, "display": display}]},
    }
    if performed:
        resource["performedDateTime"] = performed
    return resource


def allergy(
    aid: str, text: str, *, kind: str = "intolerance", clinical: str = "active", verification: str = "confirmed"
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": aid,
        "patient": {"reference": "Patient/p1"},
        "type": kind,
        "criticality": "low",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": clinical}
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": verification,
                }
            ]
        },
        "code": {"text": text},
    }


def breast_chart(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        patient("1960-01-01"),
        condition("c1", BREAST),
        condition("c2", LIVER_METS),
        coverage(),
        *prescriber(),
        *extra,
    ]


def transplant_chart(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [patient("1970-01-01"), coverage(), *prescriber(NEPHROLOGY), *extra]


def zortress(oid: str = "order-1") -> dict[str, Any]:
    return med_order(oid, *ZORTRESS_075, dosage=daily(0.75, 2))


def note(ev: dict[str, Any], cid: str) -> str:
    return next(c.get("note", "") for c in ev["criteria"] if c["id"] == cid)


def evidence(ev: dict[str, Any], cid: str) -> list[str]:
    return next(c.get("evidence", []) for c in ev["criteria"] if c["id"] == cid)


def tablets(count: float) -> dict[str, Any]:
    dosage = daily(5 * count)
    dosage["doseAndRate"] = [
        {"doseQuantity": {"value": count, "unit": "tablet", "code": "{tbl}", "system": "http://unitsofmeasure.org"}}
    ]
    return dosage


# ----------------------------------------------------------------------------- 6. the day's dose per member


def test_two_drafts_sum_to_25_mg_a_day_and_both_orders_say_so(handler: HookHandler) -> None:
    drafts = [
        med_order("order-1", *GENERIC_10, dosage=daily(10, 2)),
        med_order("order-2", *GENERIC_5, dosage=daily(5)),
        med_order("exe", *EXEMESTANE, dosage=daily(25)),
    ]
    body = call(handler, breast_chart(), drafts)
    for order in ("MedicationRequest/order-1", "MedicationRequest/order-2"):
        ev = evaluation(body, order)
        assert status(ev, "I.A.9.a.i") == "not-met" and ev["decision"] != "met"
        assert {"MedicationRequest/order-1", "MedicationRequest/order-2"} <= set(evidence(ev, "I.A.9.a.i"))
        words = note(ev, "I.A.9.a.i")
        assert "= 25 mg/day exceeds 20 mg/day" in words
        assert "10 mg twice daily" in words and "5 mg daily" in words
    first = evaluation(body, "MedicationRequest/order-1")["_card"]["detail"]
    assert "10 mg twice daily + 5 mg daily = 25 mg/day exceeds 20 mg/day" in first


def test_two_drafts_of_exactly_20_mg_a_day_are_within_the_limit(handler: HookHandler) -> None:
    drafts = [med_order("order-1", *GENERIC_10, dosage=daily(10)), med_order("order-2", *GENERIC_10, dosage=daily(10))]
    body = call(handler, breast_chart(), drafts)
    assert status(evaluation(body), "I.A.9.a.i") == "met"


def test_a_second_draft_whose_dose_cannot_be_read_leaves_the_total_unknown(handler: HookHandler) -> None:
    unreadable = med_order("order-2", *GENERIC_5, dosage={"text": "as directed"})
    body = call(handler, breast_chart(), [med_order("order-1", *GENERIC_10, dosage=daily(10)), unreadable])
    ev = evaluation(body)
    assert status(ev, "I.A.9.a.i") == "unknown"
    assert "MedicationRequest/order-2 cannot be read" in note(ev, "I.A.9.a.i")


@pytest.mark.parametrize("withdrawn", ["entered-in-error", "cancelled"])
def test_withdrawn_drafts_do_not_add_to_the_day(handler: HookHandler, withdrawn: str) -> None:
    drafts = [
        med_order("order-1", *GENERIC_10, dosage=daily(10, 2)),
        med_order("order-2", *GENERIC_10, status=withdrawn, dosage=daily(10, 2)),
    ]
    body = call(handler, breast_chart(), drafts)
    assert status(evaluation(body), "I.A.9.a.i") == "met"


def test_tablet_limit_sums_the_family_only(handler: HookHandler) -> None:
    # 1 + 2 Afinitor tablets = 3 > 2 a day; a Disperz draft does not count against the Afinitor tablet limit
    drafts = [
        med_order("order-1", *AFINITOR_5, dosage=tablets(1)),
        med_order("order-2", *AFINITOR_5, dosage=tablets(2)),
    ]
    ev = evaluation(call(handler, breast_chart(), drafts))
    assert status(ev, "I.A.9.a.ii") == "not-met" and "3 Afinitor tablets/day exceeds 2" in note(ev, "I.A.9.a.ii")
    disperz = med_order("order-2", "1308432", "everolimus 5 MG Tablet for Oral Suspension", dosage=tablets(2))
    ev = evaluation(call(handler, breast_chart(), [med_order("order-1", *AFINITOR_5, dosage=tablets(1)), disperz]))
    assert status(ev, "I.A.9.a.ii") == "met"


def test_fewer_tablets_is_not_offered_when_the_total_stays_over(handler: HookHandler) -> None:
    # 3 x 5 mg Afinitor (15 mg) alone becomes 2 x 7.5 mg; with another Afinitor tablet drafted the family total
    # would still be 3 tablets a day, so the one-click consolidation would be wrong for the member.
    alone = call(handler, breast_chart(), [med_order("order-1", *AFINITOR_5, dosage=tablets(3))])
    assert "1119400" in suggested_codes(alone)
    drafts = [
        med_order("order-1", *AFINITOR_5, dosage=tablets(3)),
        med_order("order-2", *AFINITOR_5, dosage=tablets(1)),
    ]
    body = call(handler, breast_chart(), drafts)
    assert "1119400" not in suggested_codes(body)
    assert status(evaluation(body), "I.A.9.a.ii") == "not-met"


# ----------------------------------------------------------------------------- 8. safe suggestions


@pytest.mark.parametrize(
    ("entry", "suggested"),
    [
        (allergy("ai1", "exemestane"), False),  # active intolerance, low criticality
        (allergy("ai1", "exemestane", kind="allergy"), False),
        (allergy("ai1", "exemestane", verification="unconfirmed"), False),
        (allergy("ai1", "exemestane", clinical="inactive"), True),
        (allergy("ai1", "exemestane", clinical="resolved"), True),
        (allergy("ai1", "exemestane", verification="refuted"), True),
        (allergy("ai1", "exemestane", verification="entered-in-error"), True),
        (allergy("ai1", "tamoxifen"), True),  # another drug of the list says nothing about exemestane
    ],
)
def test_no_exemestane_for_a_member_who_cannot_take_it(
    handler: HookHandler, entry: dict[str, Any], suggested: bool
) -> None:
    body = call(handler, breast_chart(entry), [med_order("order-1", *GENERIC_10, dosage=daily(10))])
    assert (EXEMESTANE[0] in suggested_codes(body)) is suggested
    ev = evaluation(body)
    assert status(ev, "I.A.8") == "not-met"  # the criterion itself is unchanged: only the suggestion is withheld
    detail = ev["_card"]["detail"]
    if not suggested:
        kind = "an allergy" if entry["type"] == "allergy" else "an intolerance"
        assert f"exemestane 25 MG Oral Tablet not suggested: AllergyIntolerance/ai1 records {kind}" in detail
        assert ev["withheldSuggestions"]


def test_nothing_is_suggested_when_the_allergies_cannot_be_read(handler: HookHandler) -> None:
    sc = {
        "hook": "order-sign",
        "userId": "PractitionerRole/role1",
        "patientId": "p1",
        "draftOrders": [med_order("order-1", *GENERIC_10, dosage=daily(10))],
        "resources": breast_chart(),
    }
    request = copy.deepcopy(request_for(sc))
    request["prefetch"].pop("allergies")
    body = handler.handle("everolimus-order-sign", request).body
    assert EXEMESTANE[0] not in suggested_codes(body)
    assert "allergies could not be read" in evaluation(body)["_card"]["detail"]


def test_an_allergy_to_a_drug_class_covers_its_members(handler: HookHandler) -> None:
    chart = transplant_chart(
        condition("c1", (ICD10, "Z94.4", "Liver transplant status")), allergy("ai1", "Corticosteroids", kind="allergy")
    )
    body = call(handler, chart, [zortress()])
    assert PREDNISONE not in suggested_codes(body)
    assert "AllergyIntolerance/ai1 records an allergy" in evaluation(body)["_card"]["detail"]


def test_no_generic_switch_to_a_drug_the_member_is_allergic_to(handler: HookHandler) -> None:
    body = call(
        handler,
        breast_chart(allergy("ai1", "everolimus", kind="allergy")),
        [med_order("order-1", "845512", "everolimus 10 MG Oral Tablet [Afinitor]", dosage=daily(10))],
    )
    assert GENERIC_10[0] not in suggested_codes(body)


def test_kidney_regimen_drafted_with_no_organ_documented_never_gets_the_liver_regimen(handler: HookHandler) -> None:
    chart = transplant_chart(condition("c1", AWAITING))
    drafts = [
        zortress(),
        med_order("basi", BASILIXIMAB, "basiliximab 20 mg IV"),
        med_order("cyc", CYCLOSPORINE, "cyclosporine"),
    ]
    codes = suggested_codes(call(handler, chart, drafts))
    assert TACROLIMUS not in codes  # the liver regimen: never while the kidney regimen is drafted
    assert PREDNISONE in codes  # the kidney regimen the drafts show is completed


def test_liver_regimen_drafted_never_gets_the_kidney_regimen(handler: HookHandler) -> None:
    chart = transplant_chart(condition("c1", AWAITING))
    codes = suggested_codes(
        call(handler, chart, [zortress(), med_order("tac", TACROLIMUS, "Tacrolimus 1 MG Oral Capsule")])
    )
    assert not {BASILIXIMAB, CYCLOSPORINE} & codes
    assert PREDNISONE in codes


def test_no_second_calcineurin_inhibitor_is_suggested(handler: HookHandler) -> None:
    # A kidney recipient on tacrolimus: the kidney regimen names cyclosporine, but two calcineurin inhibitors are not
    # given together; without cyclosporine I.G.7.a cannot be met, so nothing of that regimen is proposed either.
    chart = transplant_chart(condition("c1", (ICD10, "Z94.0", "Kidney transplant status")))
    body = call(handler, chart, [zortress(), med_order("tac", TACROLIMUS, "Tacrolimus 1 MG Oral Capsule")])
    assert not {CYCLOSPORINE, TACROLIMUS, BASILIXIMAB, PREDNISONE} & suggested_codes(body)
    detail = evaluation(body)["_card"]["detail"]
    assert "MedicationRequest/tac already orders a calcineurin inhibitor" in detail


def test_no_regimen_is_guessed_when_neither_the_organ_nor_a_regimen_is_on_record(handler: HookHandler) -> None:
    body = call(handler, transplant_chart(condition("c1", AWAITING)), [zortress()])
    assert not {BASILIXIMAB, CYCLOSPORINE, TACROLIMUS, PREDNISONE} & suggested_codes(body)
    assert status(evaluation(body), "I.G.2") == "unknown"


@pytest.mark.parametrize(
    ("performed", "state", "induction_suggested"),
    [
        (YESTERDAY, "completed", False),  # transplanted yesterday: the induction was due before the surgery
        ("2015-03-02", "completed", False),  # long ago
        (IN_3_DAYS, "preparation", True),  # scheduled: basiliximab within 2 hours before the surgery
        (IN_3_DAYS, "completed", True),  # a "completed" one dated after the order is scheduled all the same
    ],
)
def test_induction_only_before_the_transplant(
    handler: HookHandler, performed: str, state: str, induction_suggested: bool
) -> None:
    chart = transplant_chart(procedure("px1", KIDNEY_TX, state, performed))
    body = call(handler, chart, [zortress()])
    ev = evaluation(body)
    assert ev["pathway"] == "I.G" and status(ev, "I.G.2") == "met"
    codes = suggested_codes(body)
    assert (BASILIXIMAB in codes) is induction_suggested
    assert {CYCLOSPORINE, PREDNISONE} <= codes and TACROLIMUS not in codes
    if not induction_suggested:
        assert "document the induction given at the transplant instead" in ev["_card"]["detail"]
        assert "Procedure/px1" in ev["_card"]["detail"]


def test_a_suggestion_that_would_not_satisfy_its_criterion_is_not_offered(handler: HookHandler) -> None:
    # Kidney recipient allergic to prednisone: basiliximab (documented) and cyclosporine alone leave I.G.7.a unmet.
    chart = transplant_chart(
        condition("c1", (ICD10, "Z94.0", "Kidney transplant status")), allergy("ai1", "prednisone")
    )
    body = call(handler, chart, [zortress()])
    codes = suggested_codes(body)
    assert PREDNISONE not in codes and CYCLOSPORINE not in codes
    detail = evaluation(body)["_card"]["detail"]
    assert "Prednisone 5 MG Oral Tablet not suggested: AllergyIntolerance/ai1" in detail
    assert "I.G.7.a would still not be met" in detail


# ----------------------------------------------------------------------------- 4. procedures


def test_scheduled_kidney_transplant_with_awaiting_status_is_i_g(handler: HookHandler) -> None:
    chart = transplant_chart(condition("c1", AWAITING), procedure("px1", KIDNEY_TX, "preparation", IN_3_DAYS))
    ev = evaluation(call(handler, chart, [zortress()]))
    assert ev["pathway"] == "I.G"
    assert status(ev, "I.G.2") == "met"
    assert "Procedure/px1" in evidence(ev, "I.G.2")
    assert status(ev, "I.G.5") == "unknown"  # a kidney case: failure of tacrolimus is asked for
    assert next(c for c in ev["criteria"] if c["id"] == "I.G.7.b").get("applicable") is False


@pytest.mark.parametrize("state", ["not-done", "entered-in-error", "stopped"])
def test_a_procedure_that_did_not_happen_never_counts(handler: HookHandler, state: str) -> None:
    chart = transplant_chart(condition("c1", AWAITING), procedure("px1", KIDNEY_TX, state, YESTERDAY))
    ev = evaluation(call(handler, chart, [zortress()]))
    assert status(ev, "I.G.2") == "unknown"  # the awaiting status alone names no organ
    assert "Procedure/px1" not in str(ev["criteria"])


def test_a_procedure_named_only_in_words_suggests_the_transplant(handler: HookHandler) -> None:
    words_only = procedure("px1", KIDNEY_TX, "preparation", IN_3_DAYS)
    words_only["code"] = {"text": "Living donor kidney transplant"}
    ev = evaluation(call(handler, transplant_chart(words_only), [zortress()]))
    assert ev["pathway"] == "I.G"
    assert status(ev, "I.G.2") == "unknown" and "Procedure/px1" in evidence(ev, "I.G.2")  # words suggest, not prove
    negated = procedure("px2", KIDNEY_TX, "completed", YESTERDAY)
    negated["code"] = {"text": "No kidney transplant (evaluation only)"}
    assert evaluation(call(handler, transplant_chart(negated), [zortress()])).get("pathway") != "I.G"


def test_a_procedure_alone_selects_the_transplant_pathway(handler: HookHandler) -> None:
    ev = evaluation(
        call(handler, transplant_chart(procedure("px1", LIVER_TX, "completed", "2026-01-05")), [zortress()])
    )
    assert (ev["pathway"], status(ev, "I.G.2"), status(ev, "I.G.5")) == ("I.G", "met", "met")
    assert next(c for c in ev["criteria"] if c["id"] == "I.G.7.a").get("applicable") is False


def test_liver_label_note_reads_the_procedure_date_when_known(handler: HookHandler) -> None:
    recent = transplant_chart(procedure("px1", LIVER_TX, "completed", "2026-11-10"))
    assert any("30 days" in n for n in evaluation(call(handler, recent, [zortress()])).get("notes", []))
    # the status Condition was recorded last week, but the surgery was two months ago
    old = transplant_chart(
        procedure("px1", LIVER_TX, "completed", "2026-09-15"),
        condition("c1", (ICD10, "Z94.4", "Liver transplant status"), onset="2026-11-15"),
    )
    assert not any("30 days" in n for n in evaluation(call(handler, old, [zortress()])).get("notes", []))


def test_procedures_that_cannot_be_read_leave_the_gate_unknown(handler: HookHandler) -> None:
    sc = {
        "hook": "order-sign",
        "userId": "PractitionerRole/role1",
        "patientId": "p1",
        "draftOrders": [zortress()],
        "resources": transplant_chart(condition("c1", AWAITING)),
    }
    request = copy.deepcopy(request_for(sc))
    request["prefetch"].pop("procedures")
    body = handler.handle("everolimus-order-sign", request).body
    ev = evaluation(body)
    assert status(ev, "I.G.2") == "unknown"
    assert "procedures" in ev["_card"]["detail"]


def test_procedures_come_from_the_fhir_server_when_not_prefetched(handler: HookHandler) -> None:
    """FHIR fallback for the new key: the real FHIR server answers Procedure?patient=."""
    resources = transplant_chart(condition("c1", AWAITING), procedure("px1", KIDNEY_TX, "preparation", IN_3_DAYS))
    token = "procedures-token-77"
    with start_fhir_server(resources, token) as server:
        sc = {
            "hook": "order-sign",
            "userId": "PractitionerRole/role1",
            "patientId": "p1",
            "draftOrders": [zortress()],
            "resources": resources,
        }
        request = copy.deepcopy(request_for(sc, prefetch=False, fhir_server=server.base_url, token=token))
        body = handler.handle("everolimus-order-sign", request).body
    ev = evaluation(body)
    assert status(ev, "I.G.2") == "met" and "Procedure/px1" in evidence(ev, "I.G.2")


# ----------------------------------------------------------------------------- procedure states and the predicate


def facts_for(pathway: str, **changes: Any) -> Any:
    """The engine tests' hand-built facts for a pathway, with procedure findings set."""
    return replace(_base_facts(pathway), **changes)


@pytest.mark.parametrize(
    ("state", "performed", "expected"),
    [
        ("completed", "2026-11-20", "received"),  # the order's own date: done
        ("completed", "2026-11-21", "scheduled"),  # a date after the order: not done yet
        ("completed", None, "received"),
        ("in-progress", "2026-11-20", "scheduled"),
        ("preparation", None, "scheduled"),
        ("on-hold", IN_3_DAYS, None),
        ("unknown", YESTERDAY, None),
        ("not-done", YESTERDAY, None),
        ("entered-in-error", None, None),
    ],
)
def test_procedure_state(state: str, performed: str | None, expected: str | None) -> None:
    model = Procedure.model_validate(procedure("px1", KIDNEY_TX, state, performed))
    assert procedure_state(model, date(2026, 11, 20)) == expected


def test_procedure_in_rejects_a_scheduled_flag_that_is_not_a_boolean() -> None:
    tables = load_code_tables()
    spec = {"procedure_in": {"tags": ["kidney-transplant"], "scheduled": "yes"}}
    with pytest.raises(PolicyError, match="scheduled"):
        compile_predicate(spec, "X.1", CompileEnv(tables))


def test_scheduled_counts_only_where_the_criterion_accepts_it() -> None:
    tables = load_code_tables()
    received_only = compile_predicate({"procedure_in": {"tags": ["kidney-transplant"]}}, "X.1", CompileEnv(tables))
    either = compile_predicate(
        {"procedure_in": {"tags": ["kidney-transplant"], "scheduled": True}}, "X.2", CompileEnv(tables)
    )
    planned = Finding(("Procedure/px1",), date(2026, 11, 23))
    facts = facts_for("I.G", scheduled_procedures={"kidney-transplant": planned})
    assert received_only.fn(facts, ()).status is Status.UNKNOWN
    assert either.fn(facts, ()).status is Status.MET
    done = facts_for("I.G", procedures={"kidney-transplant": Finding(("Procedure/px0",), date(2026, 11, 19))})
    assert received_only.fn(done, ()).status is Status.MET
    assert received_only.fn(facts_for("I.G"), ()).status is Status.UNKNOWN  # absent: unknown by default


def test_a_dose_increase_counts_every_draft_of_the_day() -> None:
    tables = load_code_tables()
    increase = compile_predicate("dose_increase", "X.1", CompileEnv(tables))
    same = facts_for("II.A")  # 10 mg/day before, 10 mg/day ordered
    assert increase.fn(same, ()).status is Status.NOT_MET
    second = DraftDose("MedicationRequest/order-2", "afinitor", Dose(5.0, 1.0, "5 mg daily"))
    more = replace(same, other_doses=(second,))
    outcome = increase.fn(more, ())
    assert outcome.status is Status.MET and "MedicationRequest/order-2" in outcome.evidence
    unreadable = replace(same, other_doses=(replace(second, dose=Dose(None, None)),))
    assert increase.fn(unreadable, ()).status is Status.UNKNOWN
