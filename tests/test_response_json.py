"""The answer is written from the cards' JSON forms (``protocol.json_form``, ``protocol.response_json``), and the
pydantic response models stay its typed contract: what the card builders make validates into ``Card`` and
``Action``, and the bytes are exactly those of the models' writer (``to_json``) on the same values.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import cards
from cds_service.config import Config
from cds_service.discovery import SERVICES
from cds_service.policy.engine import load_policy
from cds_service.policy.results import CriterionResult, Decision, Fix, OrderEvaluation, Status
from cds_service.protocol import (
    Action,
    Card,
    Coding,
    HookResponse,
    Link,
    Source,
    Suggestion,
    _prune,
    json_form,
    response_json,
    to_json,
)
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables
from tests.scenarios import request_for, scenario_params
from tests.test_protocol_writer import _CONVERTED, _PLAIN, _free_form, _responses

#: The sample bundles that are hook requests (the folder also holds DTR examples, which no hook answers).
SAMPLES = sorted(
    path
    for path in (Path(__file__).resolve().parent.parent / "sample_bundles").glob("*.json")
    if orjson.loads(path.read_bytes()).get("hook") in {service["hook"] for service in SERVICES.values()}
)


def _models_bytes(card_forms: list[dict[str, Any]], action_forms: list[dict[str, Any]]) -> bytes:
    """The answer as the models' path writes it: the forms validated into the models, then ``to_json``."""
    return orjson.dumps(to_json(HookResponse(cards=card_forms, systemActions=action_forms)))


def _as_forms(value: Any, *, pruned: bool) -> Any:
    """A response model (and the models in it) as the card builders write it, with ``json_form``; free-form members
    as they are or, with ``pruned``, without their null and empty members (then the answer often takes the fast
    path)."""
    if isinstance(value, list):
        return [_as_forms(item, pruned=pruned) for item in value]
    if type(value) in (Coding, Source, Link, Action, Suggestion, Card):
        members = {name: _as_forms(getattr(value, name), pruned=pruned) for name in type(value).model_fields}
        return json_form(type(value), **members)
    return _prune(value) if pruned and type(value) is dict else value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_responses(_free_form(_PLAIN)), st.booleans())
def test_plain_answers_match_the_models_writer(response: HookResponse, pruned: bool) -> None:
    card_forms, action_forms = (
        _as_forms(response.cards, pruned=pruned),
        _as_forms(response.systemActions, pruned=pruned),
    )
    assert response_json(card_forms, action_forms) == orjson.dumps(to_json(response))
    assert response_json(card_forms, action_forms) == _models_bytes(card_forms, action_forms)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_responses(_free_form(_PLAIN | _CONVERTED)), st.booleans())
def test_values_only_the_models_convert_match_too(response: HookResponse, pruned: bool) -> None:
    card_forms, action_forms = (
        _as_forms(response.cards, pruned=pruned),
        _as_forms(response.systemActions, pruned=pruned),
    )
    assert response_json(card_forms, action_forms) == orjson.dumps(to_json(response))


def test_an_answer_without_cards_keeps_the_empty_cards_member_last() -> None:
    action = json_form(Action, type="update", description="d", resource={"resourceType": "X"})
    assert response_json([], []) == b'{"cards":[]}'
    assert response_json([], [action]) == _models_bytes([], [action])
    assert orjson.loads(response_json([], [action])) == {"systemActions": [action], "cards": []}


def test_an_answer_with_nothing_to_prune_is_written_once(monkeypatch: pytest.MonkeyPatch) -> None:
    card = json_form(
        Card,
        summary="s",
        indicator="warning",
        source=json_form(Source, label="Plan", topic=cards.TOPIC_COVERAGE),
        overrideReasons=list(cards.OVERRIDE_REASONS),
        extension={"e": {"criteria": [{"id": "I.A.1", "applicable": False, "n": 0, "x": 1.5}]}},
    )
    expected = _models_bytes([card], [])

    def no_models(*_: Any) -> Any:
        raise AssertionError("the models' path ran")

    monkeypatch.setattr("cds_service.protocol.to_json", no_models)
    assert response_json([card], []) == expected


def test_members_the_writer_prunes_send_the_answer_through_the_models() -> None:
    card = json_form(Card, summary="s", indicator="info", source=json_form(Source, label="l"), extension={"a": ""})
    assert orjson.loads(response_json([card], []))["cards"][0].get("extension") is None
    assert response_json([card], []) == _models_bytes([card], [])


_TEXT = st.text(max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    code=_TEXT,
    system=st.none() | _TEXT,
    display=st.none() | _TEXT,
    label=_TEXT,
    url=st.none() | _TEXT,
    kind=st.sampled_from(["absolute", "smart"]),
    app_context=st.none() | _TEXT,
    recommended=st.none() | st.booleans(),
)
def test_json_form_is_the_models_dump(
    code: str,
    system: str | None,
    display: str | None,
    label: str,
    url: str | None,
    kind: str,
    app_context: str | None,
    recommended: bool | None,
) -> None:
    """Field order, defaults (uuids aside) and members as the models hold them (``model_dump``), None and empty
    containers left out."""
    coding = json_form(Coding, code=code, system=system, display=display)
    assert coding == Coding(code=code, system=system, display=display).model_dump(exclude_none=True)
    source = json_form(Source, label=label, url=url, topic=coding)
    assert source == Source(label=label, url=url, topic=coding).model_dump(exclude_none=True)
    link = json_form(Link, label=label, url=code, type=kind, appContext=app_context)
    assert link == Link(label=label, url=code, type=kind, appContext=app_context).model_dump(exclude_none=True)
    suggestion = json_form(Suggestion, label=label, isRecommended=recommended)
    model = Suggestion(label=label, uuid=suggestion["uuid"], isRecommended=recommended)
    assert suggestion == {**model.model_dump(exclude_none=True, exclude={"actions"})}


def test_json_form_refuses_what_the_model_refuses_to_hold() -> None:
    with pytest.raises(TypeError, match="no member"):
        json_form(Coding, code="c", colour="red")
    with pytest.raises(TypeError, match="needs code"):
        json_form(Coding, system="s")
    first, second = json_form(Card, summary="s", indicator="info", source={}), json_form(Suggestion, label="x")
    assert list(first) == ["summary", "indicator", "uuid"] and first["uuid"] != second["uuid"]


# ----------------------------------------------------------------------------- what the card builders make


def test_suggestions_that_keep_an_over_limit_dose_say_so() -> None:
    """The label rewrite of a suggestion whose regimen is still over the day's limit (no sample bundle has one)."""
    generic = Fix(kind="switch-to-generic", rxcui="845507", display="everolimus 10 MG Oral Tablet")
    fewer = Fix(kind="change-strength", rxcui="845507", display="everolimus 10 MG", sig="20 mg", frequency_per_day=2)
    over = "30 mg/day exceeds 20 mg/day"
    for fix, consolidates in ((generic, False), (fewer, True)):
        criteria = (
            CriterionResult(id="I.A.7", text="generic", status=Status.NOT_MET, fixes=(fix,)),
            CriterionResult(id="I.A.9", text="dose", status=Status.NOT_MET, note=over),
        )
        evaluation = OrderEvaluation(
            order_ref="MedicationRequest/o1",
            policy="CP.PHAR.63",
            policy_version="02.25",
            pathway="I.A",
            pathway_title="Breast Cancer",
            decision=Decision.NOT_MET,
            criteria=criteria,
            drug="everolimus",
        )
        draft = {"resourceType": "MedicationRequest", "id": "o1", "status": "draft", "intent": "order"}
        (suggestion,) = cards.suggestions_for(cards.EvaluatedOrder(evaluation, draft, coverage_ref="Coverage/c"))
        plain = cards.change_strength(draft, fix) if consolidates else cards.switch_to_generic(draft, fix)
        assert suggestion["label"] == cards._clip(f"{plain['label']} (dose still over: {over})", 80)
        assert list(suggestion) == list(plain) and Suggestion.model_validate(suggestion).label == suggestion["label"]
        rendered = cards.render(
            [cards.EvaluatedOrder(evaluation, draft, coverage_ref="Coverage/c")],
            hook="order-sign",
            insurer="Plan",
            crd_configuration={},
            today=date(2026, 11, 27),
        )
        _check_contract(rendered)


@pytest.fixture(scope="module")
def handler() -> HookHandler:
    tables = load_code_tables()
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None)


def _rendered(handler: HookHandler, request: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[cards.Rendered]:
    seen: list[cards.Rendered] = []
    render = cards.render

    def spy(*args: Any, **kwargs: Any) -> cards.Rendered:
        seen.append(render(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(cards, "render", spy)
    service = next(sid for sid, s in SERVICES.items() if s["hook"] == request["hook"])
    outcome = handler.handle(service, request)
    if not seen:  # no order of the drug in scope
        assert outcome.json == b'{"cards":[]}' == orjson.dumps(to_json(HookResponse()))
        return seen
    assert outcome.json == response_json(seen[-1].cards, seen[-1].system_actions)
    return seen


def _check_contract(rendered: cards.Rendered) -> None:
    for card in rendered.cards:
        Card.model_validate(card)  # the builders' dicts are valid cards (summary length, indicator, members)
    for action in rendered.system_actions:
        Action.model_validate(action)
    assert response_json(rendered.cards, rendered.system_actions) == _models_bytes(
        rendered.cards, rendered.system_actions
    )


@pytest.mark.parametrize("sc", scenario_params())
def test_scenario_cards_are_valid_models_written_alike(
    handler: HookHandler, sc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rendered in _rendered(handler, request_for(sc), monkeypatch):
        _check_contract(rendered)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_bundle_cards_are_valid_models_written_alike(
    handler: HookHandler, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = orjson.loads(path.read_bytes())
    for rendered in _rendered(handler, request, monkeypatch):
        _check_contract(rendered)
