"""The DTR questionnaire package seen in a real renderer: LHC-Forms in headless Chromium.

The package the service generates for an order (Questionnaire + prefilled QuestionnaireResponse) is rendered in
LHC-Forms exactly as received (the Questionnaire carries its expanded ValueSets as ``contained`` resources, so the
renderer needs no terminology server and no step of ours in between); a person's clicks answer what the chart left open; the QuestionnaireResponse LHC-Forms builds is read
back, completed the way a DTR app completes it, and sent with the re-signed order, which moves from incomplete to
met. ``PRIORAUTH_DTR_SCREENSHOT=path`` keeps a screenshot of the rendered form (docs/dtr-questionnaire.png).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from tests.browser.harness import LFormsBrowser
from tests.dtr_helpers import (
    RXNORM,
    evaluation,
    package_for,
    resources,
    sample,
    sign,
    statuses,
    with_responses,
    without,
)


def completed_by_dtr_app(draft: dict[str, Any], harvested: dict[str, Any], author: str) -> dict[str, Any]:
    """What a DTR app stores after the form: the renderer's items and answers, with the draft's identity, context
    and coverage (LHC-Forms keeps none of them), completed and signed by the practitioner."""
    response = copy.deepcopy(harvested)
    for key in ("id", "meta", "extension", "questionnaire", "subject"):
        response[key] = copy.deepcopy(draft[key])
    response["status"] = "completed"
    response["author"] = {"reference": author}
    return response


def _screenshot(browser: LFormsBrowser, tmp_path: Path) -> None:
    target = os.environ.get("PRIORAUTH_DTR_SCREENSHOT")
    browser.screenshot(Path(target) if target else tmp_path / "dtr-questionnaire.png", whole_page=True)


def test_the_package_renders_in_lhc_forms_and_a_clicked_answer_decides_the_order(client: Any, tmp_path: Path) -> None:
    request = sample("I.A-specialty-undocumented")
    first = sign(client, request)
    assert evaluation(first)["decision"] == "incomplete" and statuses(first)["I.A.3"] == "unknown"
    bundle = package_for(client, request, first)
    questionnaire = resources(bundle, "Questionnaire")[0]  # exactly as received: its ValueSets are contained
    draft = resources(bundle, "QuestionnaireResponse")[0]

    with LFormsBrowser() as browser:
        browser.render(questionnaire, draft)
        birth = request["prefetch"]["patient"]["birthDate"]  # prefilled from the chart, shown as the form shows dates
        year, month, day = birth.split("-")
        assert browser.shown_answer("I.A.4") == f"{month}/{day}/{year}"
        assert browser.shown_answer("I.A.3") in ("", "Not Answered", None)  # left open for the clinician
        assert not [e for e in browser.console_errors if "ValueSet" in e], browser.console_errors  # nothing unresolved
        browser.answer_boolean("I.A.3", True)
        harvested = browser.harvest()
        _screenshot(browser, tmp_path)

    answers = {item["linkId"] for item in _walk(harvested) if item.get("answer")}
    assert {"I.A.3", "I.A.4", "I.A.6"} <= answers  # the new answer and the prefilled ones
    response = completed_by_dtr_app(draft, harvested, "Practitioner/ia-spec-prac")
    second = sign(client, with_responses(request, response))
    assert statuses(second)["I.A.3"] == "met"
    assert evaluation(second)["decision"] == "met"
    criterion = next(c for c in evaluation(second)["criteria"] if c["id"] == "I.A.3")
    assert f"QuestionnaireResponse/{draft['id']}" in criterion["evidence"]


def test_a_choice_picked_from_the_value_set_in_the_form_counts(client: Any) -> None:
    request = without(sample("I.A-met-generic-with-exemestane"), ids=["ia-met-ms-6"])  # no endocrine history
    first = sign(client, request)
    assert statuses(first)["I.A.6"] == "unknown"
    bundle = package_for(client, request, first)
    questionnaire = resources(bundle, "Questionnaire")[0]  # exactly as received: its ValueSets are contained
    draft = resources(bundle, "QuestionnaireResponse")[0]
    with LFormsBrowser() as browser:
        browser.render(questionnaire, draft)
        browser.choose("I.A.6", "anastrozole")
        harvested = browser.harvest()
    picked = next(item for item in _walk(harvested) if item["linkId"] == "I.A.6")
    assert picked["answer"][0]["valueCoding"]["system"] == RXNORM
    second = sign(client, with_responses(request, completed_by_dtr_app(draft, harvested, "Practitioner/dr")))
    assert statuses(second)["I.A.6"] == "met" and evaluation(second)["decision"] == "met"


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item in node.get("item") or []:
        out.append(item)
        out.extend(_walk(item))
        for answer in item.get("answer") or []:
            out.extend(_walk(answer))
    return out
