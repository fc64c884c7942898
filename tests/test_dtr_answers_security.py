"""Whose DTR answers count, and saying why not (issue 15 items 4 and 15, issue 16 items 2 and 4).

Each rule is attacked through the HTTP API the way an EHR (or whoever writes into it) could: a response authored by
the patient, a relative, a device or nobody; a canonical of another host, a bare ``id|version``, another version;
a response dated in the future; one pathway's form answering another's items; Markdown and control characters in
an answer's display; a chart diagnosis an answer contradicts. Every response about the order that is not used is
named on the evaluation card with one line saying why.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.dtr_helpers import (
    ORIGIN,
    QR_CONTEXT,
    RXNORM,
    answered,
    evaluation,
    items,
    package_for,
    resources,
    sample,
    sign,
    statuses,
    with_responses,
    without,
)

YES = {"I.A.3": [{"valueBoolean": True}]}  # "prescribed by or in consultation with an oncologist"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.fixture
def open_item(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order left incomplete by one open item (I.A.3), and its package's draft QuestionnaireResponse."""
    request = sample("I.A-specialty-undocumented")
    first = sign(client, request)
    assert statuses(first)["I.A.3"] == "unknown" and evaluation(first)["decision"] == "incomplete"
    return request, resources(package_for(client, request, first), "QuestionnaireResponse")[0]


def _not_used(body: dict[str, Any]) -> list[str]:
    """The card's "not used" lines, checked to be in the Markdown detail and the evaluation extension alike."""
    lines: list[str] = evaluation(body).get("answersNotUsed") or []
    detail = next(c["detail"] for c in body["cards"] if c.get("extension"))
    for line in lines[:5]:  # the detail shows five, then counts the rest
        assert f"- {line}" in detail
    return lines


def _by_person(draft: dict[str, Any], *, author: str | None, origin_author: str | None, rid: str) -> dict[str, Any]:
    """The draft completed with I.A.3 = yes by a person's ``manual`` answer, with the given authors."""
    response = answered(draft, YES, response_id=rid)
    for item in response["item"]:
        for answer in item.get("answer", []):
            for ext in answer.get("extension", []):
                if ext["url"] == ORIGIN and any(
                    p["valueCode"] == "manual" for p in ext["extension"] if "valueCode" in p
                ):
                    ext["extension"] = [p for p in ext["extension"] if p["url"] != "author"]
                    if origin_author:
                        practitioner = {"url": "practitioner", "valueReference": {"reference": origin_author}}
                        ext["extension"].append({"url": "author", "extension": [practitioner]})
    if author:
        response["author"] = {"reference": author}
    return response


# ----------------------------------------------------------------------------- only clinicians' answers count


@pytest.mark.parametrize(
    ("author", "origin_author"),
    [
        ("Patient/ia-spec-pat", None),
        ("Patient/ia-spec-pat", "Practitioner/dr"),  # the patient's form cannot vouch for a clinician
        ("RelatedPerson/mother", None),
        ("Device/kiosk", None),
        ("Organization/clinic", None),
        (None, None),  # nobody
        (None, "Patient/ia-spec-pat"),
        ("Practitioner/dr", "RelatedPerson/mother"),  # the answer's own author is not a clinician
    ],
)
def test_a_manual_answer_counts_only_with_a_clinician_behind_it(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]], author: str | None, origin_author: str | None
) -> None:
    request, draft = open_item
    response = _by_person(draft, author=author, origin_author=origin_author, rid="qr-person")
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "unknown" and evaluation(body)["decision"] == "incomplete"
    assert _not_used(body) == ["QuestionnaireResponse/qr-person not used: no clinician author"]


@pytest.mark.parametrize(
    ("author", "origin_author"),
    [
        ("Practitioner/dr", None),
        ("PractitionerRole/oncologist", None),
        (None, "Practitioner/dr"),
        ("https://ehr.example/fhir/PractitionerRole/onc/_history/2", "Practitioner/dr"),
    ],
)
def test_a_clinicians_answer_counts(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]], author: str | None, origin_author: str | None
) -> None:
    request, draft = open_item
    body = sign(client, with_responses(request, _by_person(draft, author=author, origin_author=origin_author, rid="x")))
    assert statuses(body)["I.A.3"] == "met" and evaluation(body)["decision"] == "met"
    assert not _not_used(body)


def test_a_patient_authored_form_cannot_turn_an_off_label_referral_into_covered(client: Any) -> None:
    """The attack of issue 15 item 4: the off-label request, answered "breast cancer, oncologist, ..." by the
    patient through the I.A form with every answer marked manual, stays where the chart puts it."""
    request = sample("I.I-off-label-commercial")
    first = sign(client, request)
    before = evaluation(first)
    assert before["decision"] != "met"
    order = before["order"]
    patient = f"Patient/{request['context']['patientId']}"
    forged = _from_scratch(request, "qr-forged", "i-a", order, author=patient)
    forged["authored"] = datetime.now(UTC).isoformat(timespec="seconds")
    forged["item"] = [
        _diagnosis("I.A.2/1", "C50.911"),
        {"linkId": "I.A.3", "answer": [_manual({"valueBoolean": True})]},
    ]
    after = evaluation(sign(client, with_responses(request, forged)))
    assert (after["decision"], after.get("pathway")) == (before["decision"], before.get("pathway"))
    assert after["answersNotUsed"] == ["QuestionnaireResponse/qr-forged not used: no clinician author"]


def _manual(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "extension": [{"url": ORIGIN, "extension": [{"url": "source", "valueCode": "manual"}]}]}


def _diagnosis(link_id: str, icd10: str) -> dict[str, Any]:
    return {"linkId": link_id, "answer": [_manual({"valueCoding": {"system": ICD10, "code": icd10}})]}


def _from_scratch(request: dict[str, Any], rid: str, form: str, order: str, *, author: str) -> dict[str, Any]:
    """A completed response to this service's form ``cp-phar-63-{form}`` about ``order``, written by ``author``."""
    return {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "questionnaire": f"http://localhost/fhir/Questionnaire/cp-phar-63-{form}|02.25",
        "status": "completed",
        "subject": {"reference": f"Patient/{request['context']['patientId']}"},
        "author": {"reference": author},
        "extension": [{"url": QR_CONTEXT, "valueReference": {"reference": order}}],
    }


# ----------------------------------------------------------------------------- the full canonical


@pytest.mark.parametrize(
    ("canonical", "why"),
    [
        ("https://evil.example/fhir/Questionnaire/cp-phar-63-i-a|02.25", "questionnaire of another service"),
        ("http://localhost/other/fhir/Questionnaire/cp-phar-63-i-a|02.25", "questionnaire of another service"),
        ("cp-phar-63-i-a|02.25", "questionnaire of another service"),
        ("Questionnaire/cp-phar-63-i-a|02.25", "questionnaire of another service"),
        ("http://localhost/fhir/Questionnaire/cp-phar-63-i-a", "for another questionnaire version"),
        ("http://localhost/fhir/Questionnaire/cp-phar-63-i-a|01.24", "for another questionnaire version"),
        ("https://other-payer.example/Questionnaire/prior-auth", "questionnaire of another service"),
    ],
)
def test_only_the_full_version_specific_canonical_of_this_service_counts(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]], canonical: str, why: str
) -> None:
    request, draft = open_item
    response = answered(draft, YES, response_id="qr-canonical")
    assert response["questionnaire"] == "http://localhost/fhir/Questionnaire/cp-phar-63-i-a|02.25"
    response["questionnaire"] = canonical
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "unknown"
    assert _not_used(body) == [f"QuestionnaireResponse/qr-canonical not used: {why}"]


def test_another_payers_form_about_something_else_is_not_this_cards_business(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    response = answered(draft, YES, response_id="qr-elsewhere")
    response["questionnaire"] = "https://other-payer.example/Questionnaire/prior-auth|1"
    for ext in response["extension"]:
        if ext["url"] == QR_CONTEXT:
            ext["valueReference"]["reference"] = "ServiceRequest/mri"
    assert not _not_used(sign(client, with_responses(request, response)))


# ----------------------------------------------------------------------------- authored in the future


def test_a_response_authored_in_the_future_is_refused_and_never_outranks_a_real_one(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    now = datetime.now(UTC)
    future = answered(draft, {"I.A.3": [{"valueBoolean": False}]}, response_id="qr-future")
    future["authored"] = (now + timedelta(days=1)).isoformat(timespec="seconds")
    real = answered(draft, YES, response_id="qr-real")
    real["authored"] = now.isoformat(timespec="seconds")
    body = sign(client, with_responses(request, future, real))
    assert statuses(body)["I.A.3"] == "met"
    assert _not_used(body) == ["QuestionnaireResponse/qr-future not used: authored in the future"]
    tomorrow = copy.deepcopy(future)
    # A date alone, too: the day after tomorrow, since tomorrow's date begins within the 5-minute clock skew
    # allowed (CLOCK_SKEW) in the last minutes of a UTC day, where this test failed.
    tomorrow["authored"] = (now + timedelta(days=2)).date().isoformat()
    assert _not_used(sign(client, with_responses(request, tomorrow))) == [
        "QuestionnaireResponse/qr-future not used: authored in the future"
    ]


def test_a_clock_a_little_fast_is_tolerated(client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """CLOCK_SKEW: 5 minutes."""
    request, draft = open_item
    response = answered(draft, YES, response_id="qr-skew")
    response["authored"] = (datetime.now(UTC) + timedelta(minutes=2)).isoformat(timespec="seconds")
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "met" and not _not_used(body)
    response["authored"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat(timespec="seconds")
    assert statuses(sign(client, with_responses(request, response)))["I.A.3"] == "unknown"


# ----------------------------------------------------------------------------- one form, its own items


def test_one_pathways_form_never_settles_another_pathways_items(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    response = answered(draft, YES, response_id="qr-net-form")
    response["questionnaire"] = "http://localhost/fhir/Questionnaire/cp-phar-63-i-b|02.25"  # the NET pathway's form
    response["item"] = [i for i in response["item"] if i["linkId"] == "I.A.3"]
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "unknown"
    assert _not_used(body) == [
        "QuestionnaireResponse/qr-net-form not used: its answers are to items of another questionnaire"
    ]


def test_foreign_items_beside_counted_ones_are_named(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    response = answered(draft, {**YES, "I.B.3": [{"valueBoolean": True}]}, response_id="qr-mixed")
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "met"
    assert _not_used(body) == [
        "QuestionnaireResponse/qr-mixed not used: its answers to 1 item(s) of another questionnaire"
    ]


# ----------------------------------------------------------------------------- every other "why not"


def _context(response: dict[str, Any], reference: str | None) -> dict[str, Any]:
    response["extension"] = [e for e in response["extension"] if e["url"] != QR_CONTEXT]
    if reference:
        response["extension"].append({"url": QR_CONTEXT, "valueReference": {"reference": reference}})
    return response


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda r: {**r, "status": "in-progress"}, "not completed"),
        (lambda r: {**r, "status": "stopped"}, "not completed"),
        (lambda r: _context(r, "MedicationRequest/another-order"), "for another order"),
        (lambda r: _context(r, None), "names no order (no DTR qr-context)"),
        (lambda r: {**r, "subject": {"reference": "Patient/someone-else"}}, "about another patient"),
        (lambda r: {k: v for k, v in r.items() if k != "questionnaire"}, "names no questionnaire"),
        (lambda r: {**r, "authored": "yesterday"}, "not a valid QuestionnaireResponse (ValidationError)"),
    ],
)
def test_every_response_not_used_is_named_with_why(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]], change: Any, why: str
) -> None:
    request, draft = open_item
    response = change(answered(draft, YES, response_id="qr-why"))
    body = sign(client, with_responses(request, response))
    assert statuses(body)["I.A.3"] == "unknown"
    assert _not_used(body) == [f"QuestionnaireResponse/qr-why not used: {why}"]


def test_prefill_only_and_superseded_responses_are_named_too(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    earlier = answered(draft, YES, response_id="qr-earlier")
    earlier["authored"] = "2026-01-01T10:00:00Z"
    later = answered(draft, YES, response_id="qr-later")
    later["authored"] = "2026-02-01T10:00:00Z"
    prefill_only = answered(draft, {}, response_id="qr-confirmed")
    body = sign(client, with_responses(request, earlier, later, prefill_only))
    assert statuses(body)["I.A.3"] == "met"
    assert sorted(_not_used(body)) == [
        (
            "QuestionnaireResponse/qr-confirmed not used: only prefilled answers (auto-server or auto-client), "
            "none a clinician gave"
        ),
        "QuestionnaireResponse/qr-earlier not used: every answer in it is superseded by a later response",
    ]


def test_a_response_id_that_is_not_a_fhir_id_never_reaches_the_card(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    response = answered(draft, YES, response_id="**x**\n# [click](https://evil.example)")
    lines = _not_used(sign(client, with_responses(request, response)))
    assert lines == [
        "A QuestionnaireResponse without a valid id not used: not a valid QuestionnaireResponse (ValidationError)"
    ]


def test_many_unused_responses_are_counted_after_five(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    request, draft = open_item
    drafts = [answered(draft, YES, status="in-progress", response_id=f"qr-{n}") for n in range(7)]
    body = sign(client, with_responses(request, *drafts))
    assert len(_not_used(body)) == 7  # all in the extension
    detail = next(c["detail"] for c in body["cards"] if c.get("extension"))
    assert detail.count(" not used: not completed") == 5 and "- and 2 more" in detail


# ----------------------------------------------------------------------------- answer text on the card


def test_answer_display_text_is_stripped_of_control_characters_and_markdown_escaped(client: Any) -> None:
    request = without(sample("I.A-met-generic-with-exemestane"), ids=["ia-met-ms-6"])  # no endocrine history
    first = sign(client, request)
    draft = resources(package_for(client, request, first), "QuestionnaireResponse")[0]
    display = "anastrozole\x1b[31m **now** [click](https://evil.example)\n# Approved\u202e<img src=x>\x00"
    coding = {"valueCoding": {"system": RXNORM, "code": "84857", "display": display}}
    body = sign(client, with_responses(request, answered(draft, {"I.A.6": [coding]})))
    assert statuses(body)["I.A.6"] == "met"
    ev = evaluation(body)
    texts = [*ev["notes"], *(c.get("note", "") for c in ev["criteria"])]
    detail = next(c["detail"] for c in body["cards"] if c.get("extension"))
    said = [t for t in texts if "anastrozole" in t]
    assert said, texts
    for text in [*said, detail]:
        assert not any(ch in text for ch in "\x1b\x00\u202e"), repr(text)
    for text in said:
        assert "\n" not in text
        assert r"\*\*now\*\* \[click\](https://evil.example) \# Approved \<img src=x\>" in text
        assert "**now**" not in text and "[click](" not in text


# ----------------------------------------------------------------------------- diagnoses from answers


def test_an_answered_diagnosis_never_silently_outranks_the_charts_coded_one(
    client: Any, open_item: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """The chart codes breast cancer; the clinician answers renal cell carcinoma: the chart decides, the card says."""
    request, draft = open_item
    rcc = {"valueCoding": {"system": ICD10, "code": "C64.1", "display": "Malignant neoplasm of right kidney"}}
    body = sign(client, with_responses(request, answered(draft, {**YES, "I.A.2/1": [rcc]}, response_id="qr-dx")))
    ev = evaluation(body)
    assert ev["pathway"] == "I.A"
    note = next(n for n in ev["notes"] if n.startswith("The diagnosis answered in QuestionnaireResponse/qr-dx"))
    assert "C64.1" in note and "Condition/" in note and "the chart's coded diagnosis decides the pathway" in note


def test_without_a_coded_diagnosis_the_card_says_the_pathway_follows_the_answer(client: Any) -> None:
    request = sample("no-diagnosis-on-file")
    first = sign(client, request)
    assert evaluation(first).get("pathway") in (None, "I.I")
    order = evaluation(first)["order"]
    response = _from_scratch(request, "qr-dx-only", "i-a", order, author="Practitioner/dr")
    response["item"] = [_diagnosis("I.A.2/1", "C50.911")]
    ev = evaluation(sign(client, with_responses(request, response)))
    assert ev["pathway"] == "I.A"
    assert any(
        n.startswith("No diagnosis the policy names is coded on the chart: the pathway follows the diagnosis answered")
        and "QuestionnaireResponse/qr-dx-only" in n
        for n in ev["notes"]
    )


# ----------------------------------------------------------------------------- self-contained forms, $expand


def test_the_package_questionnaire_is_self_contained(client: Any, open_item: tuple[dict[str, Any], Any]) -> None:
    request, _ = open_item
    first = sign(client, request)
    bundle = package_for(client, request, first)
    (questionnaire,) = resources(bundle, "Questionnaire")
    contained = {f"#{r['id']}": r for r in questionnaire["contained"]}
    referenced = [i["answerValueSet"] for i in items(questionnaire) if "answerValueSet" in i]
    assert referenced and all(ref in contained for ref in referenced)
    in_bundle = {f"{v['url']}|{v['version']}" for v in resources(bundle, "ValueSet")}
    assert {f"{v['url']}|{v['version']}" for v in contained.values()} == in_bundle


def test_expand_resolves_url_with_version(client: Any) -> None:
    canonical = "http://localhost/fhir/ValueSet/cp-phar-63-i-a-6|02.25"
    posted = client.post(
        "/fhir/ValueSet/$expand",
        json={"resourceType": "Parameters", "parameter": [{"name": "url", "valueUri": canonical}]},
    )
    assert posted.status_code == 200 and posted.get_json()["id"] == "cp-phar-63-i-a-6"
    encoded = client.get("/fhir/ValueSet/$expand?url=" + canonical.replace("|", "%7C"))
    assert encoded.status_code == 200 and encoded.get_json()["expansion"]["contains"]
    stale = client.get("/fhir/ValueSet/$expand?url=" + canonical.replace("02.25", "01.24"))
    assert stale.status_code == 404


def test_escaped_answer_text_stays_literal_in_the_terminal_view_of_a_card() -> None:
    from cds_service.plaintext import markdown_to_text
    from fhir_mappings.answers import card_text

    said = card_text("**now** [click](https://evil.example) <b>~x~</b>\x1b[2J")
    assert markdown_to_text(f"- {said} and **real** emphasis") == (
        "- **now** [click](https://evil.example) <b>~x~</b> [2J and real emphasis"
    )


def test_a_manifestation_answered_for_tsc_alone_documents_it(client: Any) -> None:
    """TSC alone suggests each of its manifestations: the clinician's answer naming one (partial-onset seizures) is
    not a contradiction of the chart but the documentation asked for, and moves the order to that pathway."""
    request = sample("TSC-alone-which-manifestation")
    first = evaluation(sign(client, request))
    assert first["pathway"] == "I.D" and "I.F" in first["diagnosisOptions"]
    response = _from_scratch(request, "qr-seizures", "i-f", first["order"], author="Practitioner/neuro")
    response["item"] = [_diagnosis("I.F.2/1", "G40.1")]
    ev = evaluation(sign(client, with_responses(request, response)))
    assert ev["pathway"] == "I.F"
    assert not [n for n in ev.get("notes", []) if "chart's coded diagnosis decides" in n]
    assert not ev.get("answersNotUsed")


def test_a_primary_the_charts_finding_suggests_under_the_policy_is_heard() -> None:
    """Carcinoid syndrome on the chart suggests a neuroendocrine tumour (pathway I.B ``suggested_by``): the NET
    primary a clinician answers documents it; a breast cancer answered beside the same chart is set aside."""
    from cds_service.dtr.offer import suggested_diagnoses
    from cds_service.registry import default_registry
    from fhir_mappings.answers import ReadAnswers, diagnosis_notes, with_answers
    from fhir_mappings.model import Answer, AnswerValue
    from tests.test_policy_cp_phar_63 import make_facts

    policy = default_registry().default.policy
    chart = make_facts(diagnoses=("functional-carcinoid",))
    suggested = suggested_diagnoses(policy, chart)
    assert "net-pancreas" in suggested
    net = AnswerValue(system="icd-10-cm", code="C25.4", tags=frozenset({"net-pancreas"}))
    breast = AnswerValue(system="icd-10-cm", code="C50.911", tags=frozenset({"breast-cancer"}))
    read = ReadAnswers(
        {
            "I.B.2/1": Answer("I.B.2/1", "QuestionnaireResponse/net", "manual", (net,)),
            "I.A.2/1": Answer("I.A.2/1", "QuestionnaireResponse/breast", "manual", (breast,)),
        }
    )
    heard = with_answers(chart, read, suggested)
    assert heard.diagnoses["net-pancreas"].evidence == ("QuestionnaireResponse/net",)
    assert "breast-cancer" not in heard.diagnoses
    (note,) = diagnosis_notes(chart, read, suggested)
    assert note.startswith("The diagnosis answered in QuestionnaireResponse/breast (C50.911) is not the one")
    assert "net-pancreas" not in with_answers(chart, read).diagnoses  # without the policy's suggestion: set aside
