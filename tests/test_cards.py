"""Unit tests for the card builder: summaries, detail, suggestions, CRD coverage-information, configuration."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from cds_service.cards import (
    CRD_COVERAGE_INFO,
    EVALUATION_KEY,
    EvaluatedOrder,
    render,
    summary_for,
)
from cds_service.policy.results import CriterionResult, Decision, Fix, OrderEvaluation, Status
from cds_service.protocol import HookResponse, to_json

DRAFT: dict[str, Any] = {
    "resourceType": "MedicationRequest",
    "id": "o1",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                              "code": "845512", "display": "everolimus 10 MG Oral Tablet [Afinitor]"}]},
    "subject": {"reference": "Patient/p1"},
    "requester": {"reference": "PractitionerRole/r1"},
    "authoredOn": "2026-11-20",
    "dosageInstruction": [{"text": "10 mg daily"}],
    "dispenseRequest": {"numberOfRepeatsAllowed": 2},
    "extension": [{"url": "http://example.org/other", "valueString": "kept"}],
}
GENERIC = Fix(kind="switch-to-generic", rxcui="845507", display="everolimus 10 MG Oral Tablet")
EXEMESTANE = Fix(kind="add-companion", rxcui="258494", display="exemestane 25 mg oral tablet",
                 sig="25 mg by mouth once daily", dose_mg=25, frequency_per_day=1)


def _evaluation(decision: Decision, statuses: dict[str, Status], **extra: Any) -> OrderEvaluation:
    fixes = {"I.A.7": (GENERIC,), "I.A.8": (EXEMESTANE,)}
    criteria = tuple(
        CriterionResult(id=cid, text=f"text of {cid}", status=status, remedy=f"remedy {cid}",
                        fixes=fixes.get(cid, ()), evidence=("MedicationRequest/o1",))
        for cid, status in statuses.items()
    )
    return OrderEvaluation(order_ref="MedicationRequest/o1", policy="CP.PHAR.63", policy_version="02.25",
                           pathway="I.A", pathway_title="Breast Cancer", decision=decision, criteria=criteria,
                           line_of_business="medicaid", approval_months=6, evaluation_date="2026-11-20", drug="everolimus", **extra)


NOT_MET = _evaluation(Decision.NOT_MET, {"I.A.1": Status.MET, "I.A.7": Status.NOT_MET, "I.A.8": Status.NOT_MET,
                                         "I.A.3": Status.UNKNOWN})


def _render(ev: OrderEvaluation, hook: str = "order-sign", config: dict[str, Any] | None = None) -> dict[str, Any]:
    rendered = render([EvaluatedOrder(ev, DRAFT, coverage_ref="Coverage/c1", patient_ref="Patient/p1")],
                      hook=hook, insurer="Plan", crd_configuration=config or {}, today=date(2026, 11, 27))
    return to_json(HookResponse(cards=rendered.cards, systemActions=rendered.system_actions))


def _coverage(body: dict[str, Any]) -> dict[str, Any]:
    ext = next(e for e in body["systemActions"][0]["resource"]["extension"] if e["url"] == CRD_COVERAGE_INFO)
    return {sub["url"]: next(v for k, v in sub.items() if k.startswith("value")) for sub in ext["extension"]}


def test_not_met_evaluation_card_and_fix_card() -> None:
    body = _render(NOT_MET)
    evaluation_card, fix_card = body["cards"]
    assert evaluation_card["indicator"] == "warning" and len(evaluation_card["summary"]) < 140
    assert "use generic everolimus" in evaluation_card["summary"] and "add exemestane" in evaluation_card["summary"]
    assert "remedy I.A.7" in evaluation_card["detail"] and "remedy I.A.3" in evaluation_card["detail"]
    assert evaluation_card["source"]["topic"]["code"] == "coverage-info"
    ext = evaluation_card["extension"][EVALUATION_KEY]
    assert ext["order"] == "MedicationRequest/o1" and ext["decision"] == "not-met" and ext["approvalMonths"] == 6
    assert {c["id"]: c["status"] for c in ext["criteria"]}["I.A.7"] == "not-met"
    assert "referTo" not in ext
    assert fix_card["selectionBehavior"] == "any" and len(fix_card["suggestions"]) == 2
    switch, add = fix_card["suggestions"]
    replaced = switch["actions"][0]["resource"]
    assert switch["actions"][0]["type"] == "update"
    assert replaced["medicationCodeableConcept"]["coding"][0]["code"] == "845507"
    for member in ("id", "dosageInstruction", "dispenseRequest", "subject", "requester"):
        assert replaced[member] == DRAFT[member]
    created = add["actions"][0]["resource"]
    assert add["actions"][0]["type"] == "create" and created["status"] == "draft"
    assert created["medicationCodeableConcept"]["coding"][0]["code"] == "258494"
    assert created["subject"] == DRAFT["subject"] and created["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 1


def test_system_action_echoes_draft_except_coverage_extension() -> None:
    body = _render(NOT_MET)
    action = body["systemActions"][0]
    assert action["type"] == "update" and action["description"]
    echoed = copy.deepcopy(action["resource"])
    extensions = echoed.pop("extension")
    original = copy.deepcopy(DRAFT)
    assert extensions[0] == original.pop("extension")[0]
    assert echoed == original
    info = _coverage(body)
    assert info["covered"] == "conditional" and info["pa-needed"] == "auth-needed" and info["doc-needed"] == "clinical"
    assert info["coverage"] == {"reference": "Coverage/c1"} and info["date"] == "2026-11-27"
    assert info["coverage-assertion-id"]


def test_order_select_never_says_documentation_is_needed() -> None:
    assert "doc-needed" not in _coverage(_render(NOT_MET, hook="order-select"))


def test_met_is_info_and_covered() -> None:
    met = _evaluation(Decision.MET, {"I.A.1": Status.MET, "I.A.7": Status.MET})
    body = _render(met)
    assert [c["indicator"] for c in body["cards"]] == ["info"]
    assert "meets CP.PHAR.63 I.A" in body["cards"][0]["summary"]
    assert _coverage(body)["covered"] == "covered"


def test_refer_names_the_policy() -> None:
    refer = _evaluation(Decision.REFER, {"I.I.2": Status.UNKNOWN}, refer_to="CP.PMN.53")
    body = _render(refer)
    assert "CP.PMN.53" in body["cards"][0]["summary"]
    assert body["cards"][0]["extension"][EVALUATION_KEY]["referTo"] == "CP.PMN.53"


def test_unknown_criteria_get_no_fixes() -> None:
    incomplete = _evaluation(Decision.INCOMPLETE, {"I.A.7": Status.UNKNOWN, "I.A.8": Status.MET})
    assert len(_render(incomplete)["cards"]) == 1


@pytest.mark.parametrize("config,cards,actions", [
    ({"coverage-info": False}, 1, 0),
    ({"therapy-alternatives-req": False}, 1, 1),
    ({"max-cards": 1}, 1, 1),
    ({"max-cards": 0}, 0, 1),
    ({"max-cards": "two"}, 2, 1),
])
def test_crd_configuration(config: dict[str, Any], cards: int, actions: int) -> None:
    body = _render(NOT_MET, config=config)
    assert len(body["cards"]) == cards
    assert len(body.get("systemActions", [])) == actions


def test_not_met_without_fix_names_the_criterion() -> None:
    ev = _evaluation(Decision.NOT_MET, {"I.A.4": Status.NOT_MET})
    assert "I.A.4 not met (text of I.A.4)" in summary_for(ev)


def test_single_undocumented_criterion_is_named() -> None:
    ev = _evaluation(Decision.INCOMPLETE, {"I.A.3": Status.UNKNOWN, "I.A.1": Status.MET})
    assert "document I.A.3" in summary_for(ev)


def test_summaries_stay_under_140_characters() -> None:
    many = {f"I.H.2.{chr(97 + i)}.{j}": Status.NOT_MET for i in range(6) for j in range(5)}
    ev = _evaluation(Decision.NOT_MET, many)
    assert len(summary_for(ev)) < 140
