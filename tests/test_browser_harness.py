"""The LHC-Forms browser harness (tests/browser/harness.py) on a small DTR-style Questionnaire.

The Questionnaire (tests/browser/fixtures/questionnaire.json) has a boolean, two choices (autocomplete and
radio-button layouts), a date, a string shown only when I.X.1 is true (enableWhen), a text item and nested groups.
The prefilled QuestionnaireResponse answers I.X.3-I.X.6, each answer carrying the DTR information-origin extension
(source auto-server), as a payer's CQL prepopulation would. Needs Chromium and ``npm ci --prefix tests/browser``:
skips without them, fails without them under PRIORAUTH_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from tests.browser import harness
from tests.browser.harness import LFormsBrowser

FIXTURES = Path(harness.__file__).resolve().parent / "fixtures"
INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
ECOG = "http://example.org/fhir/CodeSystem/harness-ecog"
ROUTE = "http://example.org/fhir/CodeSystem/harness-route"
INDICATION = "http://example.org/fhir/CodeSystem/harness-indication"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


QUESTIONNAIRE = load("questionnaire.json")
PREFILLED = load("questionnaire-response.json")


def answers(response: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """linkId -> answer list, for every answered item at any depth."""
    found: dict[str, list[dict[str, Any]]] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if "answer" in item:
                found[item["linkId"]] = item["answer"]
            walk(item.get("item", []))
            for answer in item.get("answer", []):
                walk(answer.get("item", []))

    walk(response.get("item", []))
    return found


def values(response: dict[str, Any]) -> dict[str, list[Any]]:
    """linkId -> the answers' value[x] alone (extensions left out)."""
    return {
        link_id: [{key: value for key, value in answer.items() if key.startswith("value")} for answer in answer_list]
        for link_id, answer_list in answers(response).items()
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[LFormsBrowser]:
    with LFormsBrowser() as started:
        yield started


@pytest.fixture
def form(browser: LFormsBrowser) -> LFormsBrowser:
    """The harness Questionnaire rendered afresh with the prefilled response merged in."""
    browser.render(copy.deepcopy(QUESTIONNAIRE), copy.deepcopy(PREFILLED))
    return browser


def test_fixtures_are_valid_fhir() -> None:
    QuestionnaireResponse.model_validate(PREFILLED)
    prefilled = answers(PREFILLED)
    assert set(prefilled) == {"I.X.3", "I.X.4", "I.X.5", "I.X.6"}
    for answer_list in prefilled.values():
        (origin,) = [ext for ext in answer_list[0]["extension"] if ext["url"] == INFORMATION_ORIGIN]
        assert origin["extension"] == [{"url": "source", "valueCode": "auto-server"}]


def test_prefilled_answers_are_shown(form: LFormsBrowser) -> None:
    assert form.shown_answer("I.X.3") == "03/15/2024"
    assert form.shown_answer("I.X.4") == "Yes"
    assert form.shown_answer("I.X.5") == "1 - Restricted in strenuous activity"
    assert form.shown_answer("I.X.6") == "Oral"
    # Open questions.
    assert form.shown_answer("I.X.1") == "Not Answered"
    assert form.shown_answer("I.X.2") == ""
    assert form.shown_answer("I.X.7") == ""
    # enableWhen I.X.1 = true: not rendered while I.X.1 is unanswered.
    assert form.is_shown("I.X") and not form.is_shown("I.X.1.1")
    assert form.page_errors == []


def test_user_answers_are_harvested_with_the_prefilled_ones(form: LFormsBrowser, tmp_path: Path) -> None:
    form.answer_boolean("I.X.1", True)
    form.wait_shown("I.X.1.1")  # enableWhen now satisfied
    form.type_text("I.X.1.1", "sunitinib")
    form.choose("I.X.2", "Advanced renal cell carcinoma")  # autocomplete list
    form.choose("I.X.5", "2 - Ambulatory, capable of self-care")  # overrides a prefilled answer
    form.type_text("I.X.7", "Progressed on first-line therapy.")  # textarea

    assert form.shown_answer("I.X.1") == "Yes"
    assert form.shown_answer("I.X.2") == "Advanced renal cell carcinoma"
    assert form.shown_answer("I.X.5") == "2 - Ambulatory, capable of self-care"

    harvested = form.harvest()
    assert harvested["resourceType"] == "QuestionnaireResponse"
    QuestionnaireResponse.model_validate(harvested)
    assert values(harvested) == {
        # answered in the browser
        "I.X.1": [{"valueBoolean": True}],
        "I.X.1.1": [{"valueString": "sunitinib"}],
        "I.X.2": [{"valueCoding": {"system": INDICATION, "code": "rcc", "display": "Advanced renal cell carcinoma"}}],
        "I.X.5": [{"valueCoding": {"system": ECOG, "code": "2", "display": "2 - Ambulatory, capable of self-care"}}],
        "I.X.7": [{"valueString": "Progressed on first-line therapy."}],
        # prefilled and left alone
        "I.X.3": [{"valueDate": "2024-03-15"}],
        "I.X.4": [{"valueBoolean": True}],
        "I.X.6": [{"valueCoding": {"system": ROUTE, "code": "po", "display": "Oral"}}],
    }
    # Groups are kept: I > I.X > questions.
    assert [item["linkId"] for item in harvested["item"]] == ["I"]
    assert [item["linkId"] for item in harvested["item"][0]["item"]] == ["I.X"]

    png = form.screenshot(tmp_path / "form.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 5_000
    assert form.page_errors == []


def test_prefilled_answers_can_be_changed_and_cleared(form: LFormsBrowser) -> None:
    form.type_date("I.X.3", "2023-01-02")
    form.answer_boolean("I.X.4", False)
    form.choose("I.X.6", "Intravenous")  # radio-button layout
    form.answer_boolean("I.X.1", True)
    form.type_text("I.X.1.1", "everolimus")
    form.answer_boolean("I.X.1", None)  # back to Not Answered: the enableWhen item goes, and its answer with it
    form.wait_hidden("I.X.1.1")

    harvested = values(form.harvest())
    assert harvested["I.X.3"] == [{"valueDate": "2023-01-02"}]
    assert harvested["I.X.4"] == [{"valueBoolean": False}]
    assert harvested["I.X.6"] == [{"valueCoding": {"system": ROUTE, "code": "iv", "display": "Intravenous"}}]
    assert "I.X.1" not in harvested and "I.X.1.1" not in harvested


def test_information_origin_extensions_do_not_survive_harvest(form: LFormsBrowser) -> None:
    """lforms 40.1.3 keeps the prefilled *values* but drops answer-level extensions when it merges the
    QuestionnaireResponse into the form (SDC.mergeQuestionnaireResponseToLForms), so the harvested response
    has no information-origin at all, not even on untouched answers. Whoever receives a harvested response
    must re-derive the origin (e.g. auto-server where the value equals the prefilled one, else override).
    If a new lforms keeps them, this fails: update the report and the server side."""
    harvested = form.harvest()
    prefilled = answers(harvested)
    assert set(prefilled) == {"I.X.3", "I.X.4", "I.X.5", "I.X.6"}
    assert all("extension" not in answer for answer_list in prefilled.values() for answer in answer_list)
    assert INFORMATION_ORIGIN not in json.dumps(harvested)
    # What else differs from the prefilled response: LHC-Forms writes its own envelope.
    assert "id" not in harvested and "subject" not in harvested
    assert harvested["status"] == "completed"
    assert harvested["questionnaire"] == f"{QUESTIONNAIRE['url']}|{QUESTIONNAIRE['version']}"


def test_missing_pieces_skip_or_fail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No browser needed: a missing Chromium skips, or fails under PRIORAUTH_REQUIRE_BROWSER=1."""
    monkeypatch.setenv(harness.CHROMIUM_VARIABLE, str(tmp_path / "no-chromium"))
    monkeypatch.delenv(harness.REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium"):
        harness.require_browser()
    monkeypatch.setenv(harness.REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="PRIORAUTH_REQUIRE_BROWSER=1.*Chromium"):
        harness.require_browser()
    monkeypatch.setattr(harness, "LFORMS_DIR", tmp_path / "node_modules" / "lforms")
    with pytest.raises(pytest.fail.Exception, match="npm ci --prefix tests/browser"):
        harness.require_browser()
