"""Only the open questions (issue 16 item 3): what the order or the chart decides is filled in (``auto-server``,
evidence the order or the record), alternatives that are not needed are disabled by ``enableWhen``, the items that
decide the outcome are required, distinct codes have distinct labels, a prior-therapy test asks for the outcome and
the reason in the policy's words and those answers decide it, and every Questionnaire carries its metadata and a
narrative."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from cds_service.policy.predicates import CompileEnv, PolicyError, compile_predicate
from cds_service.policy.questions import THERAPY_OUTCOME_SYSTEM
from tests.dtr_helpers import (
    RXNORM,
    SNOMED,
    answered,
    evaluation,
    items,
    package_for,
    resources,
    sample,
    sign,
    statuses,
    with_responses,
)
from tests.test_dtr_package import PATHWAYS, TABLES, _questionnaire

AUTO_SERVER = "auto-server"
SUNITINIB = {"valueCoding": {"system": RXNORM, "code": "357977", "display": "sunitinib"}}


def _by_id(node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["linkId"]: item for item in items(node)}


def _package(client: Any, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    request = sample(name)
    bundle = package_for(client, request, sign(client, request))
    return request, resources(bundle, "Questionnaire")[0], resources(bundle, "QuestionnaireResponse")[0]


def _origin(answer: Mapping[str, Any]) -> str:
    ext = next(e for e in answer["extension"] if e["url"].endswith("information-origin"))
    return str(ext["extension"][0]["valueCode"])


def _evidence(answer: Mapping[str, Any]) -> list[str]:
    return [e["valueReference"]["reference"] for e in answer["extension"] if e["url"].endswith("answer-evidence")]


def _enabled(item: Mapping[str, Any], answers: Mapping[str, list[dict[str, Any]]]) -> bool:
    """SDC enableWhen for the operators the questionnaires use (=, != on booleans and codings; any / all)."""
    results = []
    for cond in item.get("enableWhen") or ():
        values = answers.get(cond["question"], [])
        if "answerBoolean" in cond:
            hit = any(v.get("valueBoolean") == cond["answerBoolean"] for v in values)
        else:
            hit = any(v.get("valueCoding", {}).get("code") == cond["answerCoding"]["code"] for v in values)
        results.append(hit if cond["operator"] == "=" else not hit)
    if not results:
        return True
    return any(results) if item.get("enableBehavior") == "any" else all(results)


def _answers(response: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {item["linkId"]: item["answer"] for item in items(response) if item.get("answer")}


def _outcome(code: str) -> dict[str, Any]:
    return {"valueCoding": {"system": THERAPY_OUTCOME_SYSTEM, "code": code}}


# ----------------------------------------------------------------------------- decided items are filled in


def test_a_generic_order_fills_in_the_brand_fact_and_the_generic_exception_is_not_asked(client: Any) -> None:
    request, questionnaire, draft = _package(client, "I.A-met-generic-with-exemestane")
    order = f"MedicationRequest/{next(iter(_order_ids(request)))}"
    answers = _answers(draft)
    brand = answers["I.A.7/brand"]
    assert brand[0]["valueBoolean"] is False and _origin(brand[0]) == AUTO_SERVER and _evidence(brand[0]) == [order]
    by_id = _by_id(questionnaire)
    assert by_id["I.A.7/brand"]["readOnly"] is True
    assert "I.A.7" not in answers and not _enabled(by_id["I.A.7"], answers)  # nothing to ask for a generic


def test_a_brand_order_with_a_generic_asks_for_the_exception(client: Any) -> None:
    _, questionnaire, draft = _package(client, "I.A-brand-without-exemestane")
    answers = _answers(draft)
    assert answers["I.A.7/brand"][0]["valueBoolean"] is True
    assert _enabled(_by_id(questionnaire)["I.A.7"], answers)


def test_a_dose_within_the_limits_is_filled_in_and_the_literature_item_is_not_asked(client: Any) -> None:
    request, questionnaire, draft = _package(client, "I.A-met-generic-with-exemestane")
    answers = _answers(draft)
    order = f"MedicationRequest/{next(iter(_order_ids(request)))}"
    for limit in ("I.A.9.a.i", "I.A.9.a.ii", "I.A.9.a.iii"):
        assert answers[limit][0]["valueBoolean"] is True and _origin(answers[limit][0]) == AUTO_SERVER
        assert order in _evidence(answers[limit][0])
    literature = _by_id(questionnaire)["I.A.9.b"]
    assert not _enabled(literature, answers) and "I.A.9.b" not in answers


def test_a_dose_over_a_limit_asks_for_the_literature(client: Any) -> None:
    _, questionnaire, draft = _package(client, "I.A-dose-over-limit")
    answers = _answers(draft)
    assert answers["I.A.9.a.i"][0]["valueBoolean"] is False
    literature = _by_id(questionnaire)["I.A.9.b"]
    assert _enabled(literature, answers) and literature["required"] is True


def test_a_clinician_cannot_answer_a_limit_the_order_decides(client: Any) -> None:
    request = sample("I.A-dose-over-limit")
    first = sign(client, request)
    draft = resources(package_for(client, request, first), "QuestionnaireResponse")[0]
    completed = answered(draft, {"I.A.9.a.i": [{"valueBoolean": True}]})
    assert statuses(sign(client, with_responses(request, completed)))["I.A.9"] == statuses(first)["I.A.9"]


def _order_ids(request: Mapping[str, Any]) -> list[str]:
    entries = request["context"]["draftOrders"]["entry"]
    return [e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "MedicationRequest"]


# ----------------------------------------------------------------------------- required, alternatives


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_read_only_items_are_never_required_and_every_open_single_test_criterion_is(pathway_id: str) -> None:
    for item in items(_questionnaire(pathway_id)):
        if item.get("readOnly"):
            assert "required" not in item
        elif item["type"] not in ("group", "display") and item["linkId"] == item.get("prefix"):
            # a criterion asked as one question: its answer decides it, unless it is one alternative of several
            assert item.get("required") is True or "enableWhen" not in item or item["linkId"].count(".") > 2


def test_alternatives_inside_a_test_are_not_required_and_a_gated_alternative_is() -> None:
    rcc = _by_id(_questionnaire("I.C"))
    assert "required" not in rcc["I.C.2/2/1"] and "required" not in rcc["I.C.2/2/2"]  # extent: any of two
    assert rcc["I.C.2/1"]["required"] is True  # the diagnosis decides the criterion
    assert rcc["I.C.7.b"]["required"] is True and rcc["I.C.7.b"]["enableWhen"]  # asked only over a limit


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_distinct_codes_have_distinct_labels(pathway_id: str) -> None:
    questionnaire = _questionnaire(pathway_id)
    for value_set in questionnaire.get("contained") or ():
        labels = [c["display"].casefold() for c in value_set["expansion"]["contains"]]
        assert len(labels) == len(set(labels)), value_set["id"]
    for item in items(questionnaire):
        labels = [o["valueCoding"]["display"].casefold() for o in item.get("answerOption") or ()]
        assert len(labels) == len(set(labels)), item["linkId"]


def test_the_two_papillary_rcc_codes_name_their_code() -> None:
    histology = next(
        vs for vs in _questionnaire("I.C")["contained"] if vs["id"].endswith("i-c-6-if")
    )  # clear cell or not
    labels = {c["code"]: c["display"] for c in histology["expansion"]["contains"]}
    assert labels["733607005"] == "Papillary renal cell carcinoma (SNOMED CT 733607005)"
    assert labels["733608000"] == "Papillary renal cell carcinoma (SNOMED CT 733608000)"


# ----------------------------------------------------------------------------- outcome and reason


def test_failure_questions_ask_for_the_outcome_and_the_reason_in_the_policys_words() -> None:
    rcc = _by_id(_questionnaire("I.C"))
    outcome = rcc["I.C.6/then/outcome"]
    codes = [o["valueCoding"]["code"] for o in outcome["answerOption"]]
    assert codes == ["failed", "not-failed", "contraindicated", "not-tolerated"]
    assert outcome["enableWhen"] == rcc["I.C.6/then"]["enableWhen"]  # asked for clear cell only
    reason = rcc["I.C.6/then/reason"]
    assert reason["type"] == "string" and reason["required"] is True
    assert {c["answerCoding"]["code"] for c in reason["enableWhen"]} == {"failed", "contraindicated", "not-tolerated"}
    breast = _by_id(_questionnaire("I.A"))  # "History of endocrine therapy ... unless contraindicated or ..."
    assert [o["valueCoding"]["code"] for o in breast["I.A.6/outcome"]["answerOption"]] == [
        "received",
        "contraindicated",
        "not-tolerated",
    ]
    transplant = _by_id(_questionnaire("I.G"))  # "failure of tacrolimus unless ..."
    assert "I.G.5/then/outcome" in transplant and "I.G.5/then/reason" in transplant


def _clear_cell(client: Any, answers: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    request = sample("I.C-rcc-clear-cell-no-prior")
    first = sign(client, request)
    assert statuses(first)["I.C.6"] == "unknown"
    draft = resources(package_for(client, request, first), "QuestionnaireResponse")[0]
    clear_cell = {"valueCoding": {"system": SNOMED, "code": "254915003"}}  # the histology, only in notes here
    return sign(client, with_responses(request, answered(draft, {"I.C.6/if": [clear_cell], **answers})))


def test_contraindicated_with_a_reason_meets_failure_of_a_prior_therapy(client: Any) -> None:
    body = _clear_cell(
        client,
        {"I.C.6/then/outcome": [_outcome("contraindicated")], "I.C.6/then/reason": [{"valueString": "LVEF 30%"}]},
    )
    assert statuses(body)["I.C.6"] == "met"


def test_an_exception_without_a_reason_is_not_heard_and_the_card_says_so(client: Any) -> None:
    body = _clear_cell(client, {"I.C.6/then/outcome": [_outcome("not-tolerated")]})
    assert statuses(body)["I.C.6"] == "unknown"
    criterion = next(c for c in evaluation(body)["criteria"] if c["id"] == "I.C.6")
    assert "without a reason" in criterion.get("note", "")


def test_failed_with_the_therapy_named_meets_it(client: Any) -> None:
    body = _clear_cell(
        client,
        {
            "I.C.6/then": [SUNITINIB],
            "I.C.6/then/outcome": [_outcome("failed")],
            "I.C.6/then/reason": [{"valueString": "progression on CT after 6 months"}],
        },
    )
    assert statuses(body)["I.C.6"] == "met"


def test_received_without_failure_does_not_meet_a_failure_criterion(client: Any) -> None:
    body = _clear_cell(client, {"I.C.6/then": [SUNITINIB], "I.C.6/then/outcome": [_outcome("not-failed")]})
    assert statuses(body)["I.C.6"] == "not-met"


def test_the_reason_is_used_and_the_card_says_so(client: Any) -> None:
    body = _clear_cell(
        client,
        {"I.C.6/then/outcome": [_outcome("contraindicated")], "I.C.6/then/reason": [{"valueString": "LVEF 30%"}]},
    )
    assert "I.C.6/then/reason" in " ".join(evaluation(body)["notes"])


def test_a_therapy_named_without_an_outcome_counts_as_the_chart_would_read_it(client: Any) -> None:
    assert statuses(_clear_cell(client, {"I.C.6/then": [SUNITINIB]}))["I.C.6"] == "met"


def test_the_chart_prefills_received_for_a_history_criterion_only(client: Any) -> None:
    _, _, draft = _package(client, "I.A-met-generic-with-exemestane")
    answers = _answers(draft)
    if "I.A.6" in answers:  # the chart shows an endocrine therapy: received, with the same evidence
        outcome = answers["I.A.6/outcome"][0]
        assert outcome["valueCoding"]["code"] == "received" and _evidence(outcome) == _evidence(answers["I.A.6"][0])
    _, _, after = _package(client, "I.C-rcc-after-cabozantinib")
    assert "I.C.6/then/outcome" not in _answers(after)  # what a therapy came to is never read from the chart


# ----------------------------------------------------------------------------- metadata, help


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_every_questionnaire_has_date_publisher_contact_and_a_generated_narrative(pathway_id: str) -> None:
    questionnaire = _questionnaire(pathway_id)
    assert questionnaire["date"] and questionnaire["publisher"] == "Payer"
    assert questionnaire["contact"][0]["telecom"][0]["value"] == "https://payer.example"
    assert questionnaire["text"]["status"] == "generated"
    div = questionnaire["text"]["div"]
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">') and questionnaire["title"] in div


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_help_is_a_flyover_display_item(pathway_id: str) -> None:
    for item in items(_questionnaire(pathway_id)):
        if item["type"] == "display":
            control = item["extension"][0]["valueCodeableConcept"]["coding"][0]
            assert control["code"] == "flyover"


@pytest.mark.parametrize(
    "params",
    [{"unless": ["bogus"]}, {"outcome": "progression"}, {"unless": "contraindicated", "outcome": 3}],
)
def test_the_loader_refuses_an_outcome_or_exception_the_questionnaire_cannot_ask(params: dict[str, Any]) -> None:
    spec = {"history_of_any": {"tags": ["tacrolimus"], **params}}
    with pytest.raises(PolicyError):
        compile_predicate(spec, "X.1", CompileEnv(TABLES))


def test_a_history_test_without_outcome_words_asks_only_for_the_therapies() -> None:
    leaf = compile_predicate({"history_of_all": {"tags": ["imatinib", "sunitinib"]}}, "X.1", CompileEnv(TABLES))
    assert [q.link_id for q in leaf.leaves[0].questions] == ["X.1"]
    asked = compile_predicate(
        {"history_of_all": {"tags": ["imatinib"], "outcome": "failure"}}, "X.2", CompileEnv(TABLES)
    )
    assert [q.link_id for q in asked.leaves[0].questions] == ["X.2", "X.2/outcome", "X.2/reason"]


def _transplant(client: Any, name: str, answers: Mapping[str, list[dict[str, Any]]]) -> tuple[str, str]:
    request = sample(name)
    first = sign(client, request)
    draft = resources(package_for(client, request, first), "QuestionnaireResponse")[0]
    second = sign(client, with_responses(request, answered(draft, answers)))
    return statuses(first)["I.G.5"], statuses(second)["I.G.5"]


def test_tacrolimus_not_tolerated_with_its_reason_meets_failure_of_tacrolimus(client: Any) -> None:
    answers = {
        "I.G.5/then/outcome": [_outcome("not-tolerated")],
        "I.G.5/then/reason": [{"valueString": "posterior reversible encephalopathy on tacrolimus"}],
    }
    assert _transplant(client, "I.G-kidney-scheduled-transplant", answers) == ("unknown", "met")


def test_tacrolimus_on_record_that_did_not_fail_is_not_failure(client: Any) -> None:
    answers = {"I.G.5/then/outcome": [_outcome("not-failed")]}  # the chart reads tacrolimus as its failure
    assert _transplant(client, "I.G-kidney-missing-basiliximab", answers) == ("met", "not-met")
