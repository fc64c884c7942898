"""The DTR loop end to end through the HTTP API: order-sign -> coverage-information names the questionnaire ->
$questionnaire-package (prefilled from the chart) -> the clinician answers what is open -> the same order re-signed
with the completed QuestionnaireResponse moves from incomplete to met or not-met, and answers never silently
override coded chart data."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from tests.dtr_helpers import (
    NEGATIVE,
    POSITIVE,
    RXNORM,
    answered,
    coverage_information,
    drug_order,
    evaluation,
    package_for,
    resources,
    sample,
    sign,
    statuses,
    with_responses,
    without,
)


def _draft(bundle: dict[str, Any]) -> dict[str, Any]:
    return resources(bundle, "QuestionnaireResponse")[0]


def _answers_note(body: dict[str, Any]) -> str:
    return " ".join(evaluation(body).get("notes") or [])


# ----------------------------------------------------------------------------- breast cancer


def test_breast_cancer_receptors_and_endocrine_history_answered_move_incomplete_to_met(client: Any) -> None:
    request = without(sample("I.A-met-generic-with-exemestane"), "Observation", ids=["ia-met-ms-6"])
    first = sign(client, request)
    assert evaluation(first)["decision"] == "incomplete"
    assert statuses(first)["I.A.5"] == "unknown" and statuses(first)["I.A.6"] == "unknown"
    info = coverage_information(first)
    assert info["doc-needed"] == ["clinical"]
    assert [q.split("/")[-1] for q in info["questionnaire"]] == ["cp-phar-63-i-a|02.25"]

    bundle = package_for(client, request, first)
    draft = _draft(bundle)
    prefilled = {item["linkId"] for item in draft["item"]}
    assert "I.A.5" not in prefilled and "I.A.6" not in prefilled  # the chart does not show them: left open
    completed = answered(
        draft,
        {
            "I.A.5/hormone-receptor": [POSITIVE],
            "I.A.5/her2": [NEGATIVE],
            "I.A.6": [{"valueCoding": {"system": RXNORM, "code": "72965", "display": "letrozole"}}],
        },
    )
    second = sign(client, with_responses(request, completed))
    assert evaluation(second)["decision"] == "met"
    assert statuses(second)["I.A.5"] == "met" and statuses(second)["I.A.6"] == "met"
    criteria = {c["id"]: c for c in evaluation(second)["criteria"]}
    assert "QuestionnaireResponse/qr-clinician" in criteria["I.A.6"]["evidence"]
    assert "QuestionnaireResponse/qr-clinician" in _answers_note(second)


def test_breast_cancer_answer_her2_positive_moves_incomplete_to_not_met(client: Any) -> None:
    request = without(sample("I.A-met-generic-with-exemestane"), "Observation")
    draft = _draft(package_for(client, request, sign(client, request)))
    completed = answered(draft, {"I.A.5/hormone-receptor": [POSITIVE], "I.A.5/her2": [POSITIVE]})
    second = sign(client, with_responses(request, completed))
    assert statuses(second)["I.A.5"] == "not-met"
    assert evaluation(second)["decision"] == "not-met"


def test_an_answer_contradicting_a_coded_result_does_not_override_it_and_the_card_says_so(client: Any) -> None:
    request = sample("I.A-her2-positive")  # HER2 positive on record: I.A.5 not met
    first = sign(client, request)
    assert statuses(first)["I.A.5"] == "not-met"
    completed = answered(
        {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": coverage_information(first)["questionnaire"][0],
            "subject": {"reference": f"Patient/{request['context']['patientId']}"},
            "extension": [
                {
                    "url": "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context",
                    "valueReference": {"reference": f"MedicationRequest/{drug_order(request)['id']}"},
                }
            ],
            "item": [],
        },
        {"I.A.5/hormone-receptor": [POSITIVE], "I.A.5/her2": [NEGATIVE]},
    )
    second = sign(client, with_responses(request, completed))
    assert statuses(second)["I.A.5"] == "not-met"
    criterion = next(c for c in evaluation(second)["criteria"] if c["id"] == "I.A.5")
    assert "contradicts" in (criterion.get("note") or "")
    assert "contradicts" in second["cards"][0]["detail"]


# ----------------------------------------------------------------------------- transplant companions


def test_kidney_transplant_companions_answered_move_not_met_to_met(client: Any) -> None:
    request = sample("I.G-kidney-missing-basiliximab")
    first = sign(client, request)
    assert statuses(first)["I.G.7"] == "not-met"
    draft = _draft(package_for(client, request, sign(client, request)))
    # The chart shows cyclosporine and prednisone; the prefill lists them for I.G.7.a's companions.
    prefilled = {item["linkId"]: item for item in _walk(draft)}
    assert {a["valueCoding"]["code"] for a in prefilled["I.G.7.a/2"]["answer"]} == {"3008", "8640"}
    given = [
        {"valueCoding": {"system": RXNORM, "code": code}}
        for code in ("196102", "3008", "8640")  # basiliximab given at the transplant centre, cyclosporine, prednisone
    ]
    completed = answered(draft, {"I.G.7.a/2": given})
    second = sign(client, with_responses(request, completed))
    assert statuses(second)["I.G.7"] == "met"
    assert evaluation(second)["decision"] == "met"


def test_a_companion_answer_without_basiliximab_keeps_it_not_met(client: Any) -> None:
    request = sample("I.G-kidney-missing-basiliximab")
    draft = _draft(package_for(client, request, sign(client, request)))
    completed = answered(draft, {"I.G.7.a/2": [{"valueCoding": {"system": RXNORM, "code": "3008"}}]})
    assert statuses(sign(client, with_responses(request, completed)))["I.G.7"] == "not-met"


# ----------------------------------------------------------------------------- TSC age boundary


def _tsc_without_birth_date() -> dict[str, Any]:
    request = sample("I.E-tsc-infant-below-age")
    del request["prefetch"]["patient"]["birthDate"]
    return request


def _first_birthday_answers(evaluated_on: date, *, days_younger: int) -> dict[str, list[dict[str, Any]]]:
    born = evaluated_on.replace(year=evaluated_on.year - 1) + timedelta(days=days_younger)
    # SEGA has a sourced code now (ICD-O-3 9384/1), so the DTR asks for the coded diagnosis, not yes/no.
    sega = {"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "9384/1"}
    return {"I.E.4": [{"valueDate": born.isoformat()}], "I.E.2/1": [{"valueCoding": sega}]}


def test_tsc_sega_age_answered_exactly_one_year_meets_the_age_limit(client: Any) -> None:
    request = _tsc_without_birth_date()
    first = sign(client, request)
    assert statuses(first)["I.E.4"] == "unknown"
    authored = date.fromisoformat(drug_order(request)["authoredOn"])
    draft = _draft(package_for(client, request, first))
    second = sign(client, with_responses(request, answered(draft, _first_birthday_answers(authored, days_younger=0))))
    assert statuses(second)["I.E.4"] == "met"
    assert statuses(second)["I.E.2"] == "met"
    assert evaluation(second)["decision"] == "met"


def test_tsc_sega_age_answered_one_day_short_of_one_year_is_not_met(client: Any) -> None:
    request = _tsc_without_birth_date()
    authored = date.fromisoformat(drug_order(request)["authoredOn"])
    draft = _draft(package_for(client, request, sign(client, request)))
    second = sign(client, with_responses(request, answered(draft, _first_birthday_answers(authored, days_younger=1))))
    assert statuses(second)["I.E.4"] == "not-met"
    assert evaluation(second)["decision"] == "not-met"


def test_a_birth_date_answer_never_overrides_the_recorded_one(client: Any) -> None:
    request = sample("I.E-tsc-infant-below-age")  # 11 months old on record
    authored = date.fromisoformat(drug_order(request)["authoredOn"])
    draft = _draft(package_for(client, request, sign(client, request)))
    prefilled = {item["linkId"]: item for item in _walk(draft)}
    assert prefilled["I.E.4"]["answer"][0]["valueDate"] == request["prefetch"]["patient"]["birthDate"]
    older = answered(draft, {"I.E.4": [{"valueDate": (authored - timedelta(days=800)).isoformat()}]}, origin="override")
    second = sign(client, with_responses(request, older))
    assert statuses(second)["I.E.4"] == "not-met"
    assert "contradicts" in second["cards"][0]["detail"]


# ----------------------------------------------------------------------------- what does not count


def test_only_completed_answers_by_a_person_about_this_order_count(client: Any) -> None:
    request = sample("I.A-specialty-undocumented")
    first = sign(client, request)
    assert statuses(first)["I.A.3"] == "unknown"
    draft = _draft(package_for(client, request, first))
    yes = {"I.A.3": [{"valueBoolean": True}]}
    in_progress = answered(draft, yes, status="in-progress", response_id="qr-draft")
    auto = answered(draft, yes, origin="auto-client", response_id="qr-auto")
    other_order = answered(draft, yes, response_id="qr-other")
    for ext in other_order["extension"]:
        if ext["url"].endswith("qr-context"):
            ext["valueReference"]["reference"] = "MedicationRequest/someone-else"
    old_version = answered(draft, yes, response_id="qr-old")
    old_version["questionnaire"] = old_version["questionnaire"].replace("|02.25", "|01.24")
    second = sign(client, with_responses(request, in_progress, auto, other_order, old_version))
    assert statuses(second)["I.A.3"] == "unknown"
    assert evaluation(second)["decision"] == "incomplete"
    counted = sign(client, with_responses(request, answered(draft, yes)))
    assert statuses(counted)["I.A.3"] == "met" and evaluation(counted)["decision"] == "met"


def test_the_answers_used_are_audited_with_the_new_coverage_assertion(client: Any, app: Any) -> None:
    request = sample("I.A-specialty-undocumented")
    first = sign(client, request)
    draft = _draft(package_for(client, request, first))
    second = sign(client, with_responses(request, answered(draft, {"I.A.3": [{"valueBoolean": True}]})))
    store = app.extensions["priorauth_cds"].store
    new_id = coverage_information(second)["coverage-assertion-id"][0]
    audit = store.dtr_audit(new_id)
    assert [(row["response_ref"], row["link_ids"]) for row in audit["answers_used"]] == [
        ("QuestionnaireResponse/qr-clinician", ["I.A.3"])
    ]
    first_id = coverage_information(first)["coverage-assertion-id"][0]
    assert [row["outcome"] for row in store.dtr_audit(first_id)["package_requests"]] == ["ok"]


def test_a_met_order_still_offers_its_questionnaire_fully_prefilled_but_no_dtr_link(app: Any) -> None:
    app.extensions["priorauth_cds"].handler.config = _with_launch(app)
    client = app.test_client()
    request = sample("I.A-met-generic-with-exemestane")
    body = sign(client, request)
    assert evaluation(body)["decision"] == "met"
    assert coverage_information(body)["questionnaire"]
    assert not [link for card in body["cards"] for link in card.get("links") or [] if link["type"] == "smart"]


def test_an_incomplete_order_gets_a_smart_link_that_launches_dtr(app: Any) -> None:
    import json

    app.extensions["priorauth_cds"].handler.config = _with_launch(app)
    client = app.test_client()
    request = sample("I.A-specialty-undocumented")
    body = sign(client, request)
    link = next(link for link in body["cards"][0]["links"] if link["type"] == "smart")
    assert link["url"] == "https://ehr.example/dtr/launch"
    context = json.loads(link["appContext"])
    info = coverage_information(body)
    assert context == {
        "order": f"MedicationRequest/{drug_order(request)['id']}",
        "coverage": info["coverage"][0]["reference"],
        "questionnaire": info["questionnaire"],
        "coverageAssertionId": info["coverage-assertion-id"][0],
        "payerFhirBase": "http://localhost/fhir",  # its .well-known/smart-configuration names the token endpoint
    }


def _with_launch(app: Any) -> Any:
    from dataclasses import replace

    return replace(app.extensions["priorauth_cds"].handler.config, dtr_launch_url="https://ehr.example/dtr/launch")


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item in node.get("item") or []:
        out.append(item)
        out.extend(_walk(item))
    return out


def test_answers_without_an_origin_count_only_when_a_practitioner_authored_the_response(client: Any) -> None:
    request = sample("I.A-specialty-undocumented")
    draft = _draft(package_for(client, request, sign(client, request)))
    bare = answered(draft, {"I.A.3": [{"valueBoolean": True}]})
    for item in bare["item"]:  # as a form filler that drops answer extensions would hand it back
        for answer in item.get("answer", []):
            answer.pop("extension", None)
    assert statuses(sign(client, with_responses(request, bare)))["I.A.3"] == "unknown"
    bare["author"] = {"reference": "Practitioner/dr"}
    assert statuses(sign(client, with_responses(request, bare)))["I.A.3"] == "met"


def test_answers_are_found_by_fhir_query_when_not_prefetched(client: Any) -> None:
    """Fallback: no prefetch; the service finds the completed QuestionnaireResponse on the EHR's FHIR server."""
    import secrets

    from tests.fhir_server import start_fhir_server

    request = sample("I.A-specialty-undocumented")
    draft = _draft(package_for(client, request, sign(client, request)))
    response = answered(draft, {"I.A.3": [{"valueBoolean": True}]})
    response["authored"] = "2026-11-20T10:00:00Z"
    chart = [
        e["resource"]
        for value in request["prefetch"].values()
        for e in (value.get("entry", []) if value.get("resourceType") == "Bundle" else [{"resource": value}])
    ]
    token = secrets.token_urlsafe(16)
    with start_fhir_server([*chart, response], token, validation="warn") as fhir:
        call = {k: v for k, v in request.items() if k != "prefetch"}
        call["fhirServer"] = fhir.base_url
        call["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "priorauth-cds",
        }
        body = sign(client, call)
    assert statuses(body)["I.A.3"] == "met"
    assert "QuestionnaireResponse/qr-clinician" in _answers_note(body)


def test_ignored_responses_are_logged_by_reason_without_resource_ids(client: Any, service_log: Any) -> None:
    request = sample("I.A-specialty-undocumented")
    draft = _draft(package_for(client, request, sign(client, request)))
    other_order = answered(draft, {"I.A.3": [{"valueBoolean": True}]}, response_id="qr-secret-id")
    for ext in other_order["extension"]:
        if ext["url"].endswith("qr-context"):
            ext["valueReference"]["reference"] = "MedicationRequest/secret-order-id"
    sign(client, with_responses(request, other_order))
    text = service_log()
    assert "dtr.responses_ignored" in text and "for another order" in text
    assert "secret" not in text
