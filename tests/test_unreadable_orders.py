"""An order of the drug that is not valid FHIR: dropped by the record, answered with a card, never evaluated.

The request still gets a CDS Hooks 200: one warning card per unreadable order naming the order and the validation
error (element and error kind, never a value), no evaluation extension, no coverage assertion, no systemAction;
the other orders of the same request get their usual cards.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cds_service.cards import MAX_REASON_CHARS, unreadable_summary
from cds_service.policy.results import UnreadableOrder
from cds_service.protocol import MAX_SUMMARY_CHARS
from tests.scenarios import SAMPLE_DIR, evaluations

SIGN = "/cds-services/everolimus-order-sign"
SELECT = "/cds-services/everolimus-order-select"
VALID_ORDER = "ia-met-order-7"


def sample() -> dict[str, Any]:
    """A met order-sign request (an everolimus draft and its exemestane companion), from sample_bundles/."""
    request: dict[str, Any] = json.loads((SAMPLE_DIR / "I.A-met-generic-with-exemestane.json").read_text())
    return request


def drafts(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in request["context"]["draftOrders"]["entry"]]


def everolimus_draft(request: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in drafts(request) if d["id"] == VALID_ORDER)


def broken_copy(request: dict[str, Any], order_id: str, breakage: str) -> dict[str, Any]:
    """A copy of the request's everolimus draft with another id, made invalid FHIR."""
    order = copy.deepcopy(everolimus_draft(request))
    order["id"] = order_id
    if breakage == "no subject":
        del order["subject"]
    elif breakage == "status not a code":
        order["status"] = 5
    else:
        raise AssertionError(breakage)
    return order


def post(client: Any, request: dict[str, Any], path: str = SIGN) -> dict[str, Any]:
    response = client.post(path, data=json.dumps(request), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    body: dict[str, Any] = response.get_json()
    assert isinstance(body["cards"], list)
    for card in body["cards"]:  # spec-shaped: every card has what CDS Hooks 2.0 requires
        assert card["summary"] and len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"] and card["uuid"]
    return body


def unreadable_cards(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [card for card in body["cards"] if "could not be read" in card["summary"]]


def annotated_orders(body: dict[str, Any]) -> list[str]:
    return [f"MedicationRequest/{action['resource']['id']}" for action in body.get("systemActions", [])]


@pytest.mark.parametrize(
    "breakage,reason", [("no subject", "subject: missing"), ("status not a code", "status: string_type")]
)
def test_only_drug_order_invalid_gets_200_and_a_degraded_card(client: Any, breakage: str, reason: str) -> None:
    request = sample()
    request["context"]["draftOrders"]["entry"] = [
        {"resource": broken_copy(request, VALID_ORDER, breakage)},
        *[e for e in request["context"]["draftOrders"]["entry"] if e["resource"]["id"] != VALID_ORDER],
    ]
    body = post(client, request)
    (card,) = body["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"] == (
        f"Everolimus order MedicationRequest/{VALID_ORDER} could not be read ({reason}): "
        "coverage not evaluated; fix it and sign again"
    )
    assert "CP.PHAR.63" in card["detail"] and reason in card["detail"]
    assert "priorauth-cds.evaluation" not in (card.get("extension") or {})
    assert evaluations(body) == {}
    assert "systemActions" not in body  # no coverage assertion, so nothing to add to the order


def test_one_valid_and_one_invalid_drug_order(client: Any, app: Any) -> None:
    request = sample()
    request["context"]["draftOrders"]["entry"].append({"resource": broken_copy(request, "broken-1", "no subject")})
    body = post(client, request)
    assert evaluations(body)[f"MedicationRequest/{VALID_ORDER}"]["decision"] == "met"
    (card,) = unreadable_cards(body)
    assert "MedicationRequest/broken-1" in card["summary"] and "subject: missing" in card["summary"]
    assert annotated_orders(body) == [f"MedicationRequest/{VALID_ORDER}"]
    # In request order: the valid order's evaluation card, then the unreadable one's.
    assert body["cards"][0]["extension"]["priorauth-cds.evaluation"]["order"] == f"MedicationRequest/{VALID_ORDER}"
    assert body["cards"][1]["summary"] == card["summary"]
    # The audit holds an assertion for the evaluated order only.
    store = app.extensions["priorauth_cds"].store
    stored = store.assertion_ids_for(
        request["hookInstance"], [f"MedicationRequest/{VALID_ORDER}", "MedicationRequest/broken-1"]
    )
    assert list(stored) == [f"MedicationRequest/{VALID_ORDER}"]


def test_the_same_request_with_the_invalid_order_fixed_is_evaluated_normally(client: Any) -> None:
    request = sample()
    fixed = copy.deepcopy(everolimus_draft(request))
    fixed["id"] = "broken-1"
    request["context"]["draftOrders"]["entry"].append({"resource": fixed})
    body = post(client, request)
    assert set(evaluations(body)) == {f"MedicationRequest/{VALID_ORDER}", "MedicationRequest/broken-1"}
    assert unreadable_cards(body) == []


def test_order_select_answers_for_the_selected_unreadable_order_only(client: Any) -> None:
    request = sample()
    request["hook"] = "order-select"
    request["context"]["draftOrders"]["entry"].append({"resource": broken_copy(request, "broken-1", "no subject")})
    request["context"]["selections"] = ["MedicationRequest/broken-1"]
    body = post(client, request, SELECT)
    (card,) = body["cards"]
    assert "MedicationRequest/broken-1" in card["summary"]
    assert "systemActions" not in body


def test_unreadable_card_follows_the_coverage_info_setting(client: Any) -> None:
    request = sample()
    request["context"]["draftOrders"]["entry"] = [{"resource": broken_copy(request, VALID_ORDER, "no subject")}]
    request["extension"] = {"davinci-crd.configuration": {"coverage-info": False}}
    assert post(client, request) == {"cards": []}


def test_feedback_on_the_unreadable_card_is_accepted(client: Any) -> None:
    request = sample()
    request["context"]["draftOrders"]["entry"] = [{"resource": broken_copy(request, VALID_ORDER, "no subject")}]
    (card,) = post(client, request)["cards"]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}
    response = client.post(f"{SIGN}/feedback", data=json.dumps(feedback), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]


def test_summary_stays_under_the_limit_and_shows_no_control_characters() -> None:
    def summary(order_id: str, reason: str, drug: str = "somedrug") -> str:
        text = unreadable_summary(
            UnreadableOrder(f"MedicationRequest/{order_id}", reason, policy="P.1", policy_version="1", drug=drug)
        )
        assert len(text) <= MAX_SUMMARY_CHARS and text.endswith(": coverage not evaluated; fix it and sign again")
        return text

    assert summary("o1", "subject: missing") == (
        "Somedrug order MedicationRequest/o1 could not be read (subject: missing): "
        "coverage not evaluated; fix it and sign again"
    )
    # A long id gives way first, then the reason is shortened to fit; odd characters never reach the card.
    odd = summary("a" * 64, "dosageInstruction.0.timing.repeat.\u202eodd\u0000key" + "x" * 200 + ": extra_forbidden")
    assert odd.startswith("Somedrug order could not be read (dosageInstruction.0.timing.repeat. odd…): ")
    assert "\u202e" not in odd and "\u0000" not in odd
    assert summary("o1", "x" * 500).startswith("Somedrug order could not be read (xxx")
    # A drug name too long to leave room for the reason: the summary still says what matters.
    assert summary("o1", "subject: missing", drug="d" * 60) == f"{'D' + 'd' * 59} order could not be read" + (
        ": coverage not evaluated; fix it and sign again"
    )
    assert MAX_REASON_CHARS < MAX_SUMMARY_CHARS
