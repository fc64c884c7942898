"""The DTR package in a second real renderer: CSIRO Smart Forms (``@aehrc/smart-forms-renderer``) in headless Chromium.

The package is rendered exactly as received (no terminology server: an unreachable one is configured, so only the
contained ValueSets can resolve); a click answers what the chart left open, the renderer's QuestionnaireResponse is
completed as a DTR app completes it and sent with the re-signed order, which moves from incomplete to met.
``PRIORAUTH_DTR_SMART_FORMS_SCREENSHOT=path`` keeps a screenshot (docs/dtr-smart-forms.png).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.browser.smart_forms import SmartFormsBrowser
from tests.dtr_helpers import evaluation, package_for, resources, sample, sign, statuses, with_responses
from tests.test_dtr_browser import _walk, completed_by_dtr_app

UNRESOLVED = ("error fetching options", "Unable to load", "unable to fetch")


def _package(client: Any, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    request = sample(name)
    first = sign(client, request)
    bundle = package_for(client, request, first)
    return request, first, resources(bundle, "Questionnaire")[0], resources(bundle, "QuestionnaireResponse")[0]


def test_the_package_renders_in_smart_forms_and_a_clicked_answer_decides_the_order(client: Any, tmp_path: Path) -> None:
    request, first, questionnaire, draft = _package(client, "I.A-specialty-undocumented")
    assert evaluation(first)["decision"] == "incomplete" and statuses(first)["I.A.3"] == "unknown"
    with SmartFormsBrowser(timeout_ms=30_000) as browser:
        browser.render(questionnaire, draft)  # exactly as received
        text = browser.text()
        assert not [word for word in UNRESOLVED if word.lower() in text.lower()], text
        for prefix in ("I.A.2", "I.A.3", "I.A.4", "I.A.6"):
            assert prefix in text
        birth = browser.page.locator('[data-linkid="I.A.4"] input').first.input_value()
        assert birth  # prefilled from the chart and shown
        remedy = next(i for i in questionnaire["item"] if i["linkId"] == "I.A.3")["item"][0]["text"]
        assert remedy not in browser.text()  # help is a flyover: not inline text ...
        browser.page.locator('[id="label-I.A.3"] svg').first.hover()
        browser.page.locator(".MuiPopover-root", has_text=remedy).wait_for()  # ... but shown over the label
        browser.page.locator('[data-linkid="I.A.3"] input[type="radio"][value="true"]').click()
        browser.page.wait_for_function(
            '() => document.querySelector(\'[data-linkid="I.A.3"] input[value="true"]\').checked'
        )
        harvested = browser.harvest()
        target = os.environ.get("PRIORAUTH_DTR_SMART_FORMS_SCREENSHOT")
        browser.screenshot(Path(target) if target else tmp_path / "dtr-smart-forms.png", whole_page=True)
        assert not browser.page_errors, browser.page_errors

    answers = {item["linkId"] for item in _walk(harvested) if item.get("answer")}
    assert {"I.A.3", "I.A.4", "I.A.6"} <= answers  # the new answer and the prefilled ones survive
    second = sign(client, with_responses(request, completed_by_dtr_app(draft, harvested, "Practitioner/ia-spec-prac")))
    assert statuses(second)["I.A.3"] == "met" and evaluation(second)["decision"] == "met"


def test_smart_forms_lists_the_contained_value_set_with_distinct_labels_and_follows_enable_when(client: Any) -> None:
    _, _, questionnaire, draft = _package(client, "I.C-rcc-clear-cell-no-prior")
    with SmartFormsBrowser(timeout_ms=30_000) as browser:
        browser.render(questionnaire, draft)
        assert "Outcome of the prior therapy" not in browser.text()  # asked for clear cell only
        browser.page.locator('[id="choice-I.C.6/if"]').click()
        options = browser.page.locator('[role="option"]')
        options.first.wait_for()
        labels = options.all_inner_texts()
        assert len(labels) == len(set(labels)) and "Papillary renal cell carcinoma (SNOMED CT 733607005)" in labels
        clear_cell = next(label for label in labels if "clear cell" in label.lower())
        options.filter(has_text=clear_cell).first.click()
        browser.page.get_by_text("Outcome of the prior therapy").wait_for()
        assert not browser.page_errors, browser.page_errors
