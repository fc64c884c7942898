"""Unit tests for the CDS Hooks request reader and response writer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.errors import MalformedBody, ProtocolError
from cds_service.protocol import (
    Action,
    Card,
    HookResponse,
    Source,
    Suggestion,
    parse_hook_request,
    parse_json,
    to_json,
)
from tests.scenarios import external_dir, request_for, scenario


def _request(**changes: Any) -> dict[str, Any]:
    body = request_for(scenario("B-pnet-met"))
    body.update(changes)
    return body


def test_tolerant_reader_ignores_unknown_members_and_extensions() -> None:
    body = _request(surprise={"x": 1}, extension={"davinci-crd.configuration": {"max-cards": 1}, "other": [1]})
    body["context"]["surprise"] = True
    request = parse_hook_request(body, "order-sign")
    assert request.crd_configuration() == {"max-cards": 1}


def test_bundle_without_type_and_sandbox_shapes_are_accepted() -> None:
    body = _request()
    del body["context"]["draftOrders"]["type"]
    body.pop("fhirAuthorization", None)
    request = parse_hook_request(body, "order-sign")
    assert request.access_token is None
    assert len(request.context.draftOrders.resources()) == 1


def test_explicit_null_fhir_authorization_is_accepted() -> None:
    assert parse_hook_request(_request(fhirAuthorization=None), "order-sign").fhirAuthorization is None


def test_malformed_crd_configuration_is_ignored() -> None:
    assert parse_hook_request(_request(extension={"davinci-crd.configuration": "yes"}), "order-sign").crd_configuration() == {}


@pytest.mark.parametrize("mutate,member", [
    (lambda b: b.pop("hook"), "hook"),
    (lambda b: b.pop("hookInstance"), "hookInstance"),
    (lambda b: b["context"].pop("userId"), "context.userId"),
    (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
])
def test_missing_members_are_named(mutate: Any, member: str) -> None:
    body = _request()
    mutate(body)
    with pytest.raises(ProtocolError) as info:
        parse_hook_request(body, "order-sign")
    assert member in info.value.detail


def test_hook_mismatch_names_both_hooks() -> None:
    with pytest.raises(ProtocolError, match="order-select"):
        parse_hook_request(_request(hook="order-select"), "order-sign")


def test_order_select_needs_selections() -> None:
    body = _request(hook="order-select")
    with pytest.raises(ProtocolError, match="selections"):
        parse_hook_request(body, "order-select")
    body["context"]["selections"] = ["MedicationRequest/rosa-order-3"]
    assert parse_hook_request(body, "order-select").context.selections == ["MedicationRequest/rosa-order-3"]


@pytest.mark.parametrize("raw", [b"{", b"\xff", b"[" * 5000 + b"]" * 5000, b'{"a": Infinity}'])
def test_parse_json_rejects_bad_bytes(raw: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_json(raw)


def test_external_wrapped_library_requests_parse() -> None:
    for name, hook in (("cds-hooks-library-order-sign-R4-example-wrapped.json", "order-sign"),
                       ("cds-hooks-library-order-select-R4-example-wrapped.json", "order-select")):
        request = parse_hook_request(json.loads((external_dir() / name).read_text()), hook)
        assert request.context.patientId == "1288992"


def test_writer_prunes_null_and_empty_but_keeps_cards() -> None:
    assert to_json(HookResponse()) == {"cards": []}
    card = Card(summary="s", indicator="info", source=Source(label="Plan"),
                suggestions=[Suggestion(label="x", actions=[Action(type="create", description="d",
                                                                   resource={"resourceType": "X", "empty": []})])],
                selectionBehavior="any")
    body = to_json(HookResponse(cards=[card]))
    dumped = json.dumps(body)
    assert "null" not in dumped and "[]" not in dumped and "{}" not in dumped
    assert body["cards"][0]["uuid"] and body["cards"][0]["suggestions"][0]["uuid"]


def _pruned_reference(value: Any) -> Any:
    """What pruning means, written plainly: None, "" and (after pruning) empty objects and arrays go."""
    def drop(member: Any) -> bool:
        return member is None or member == "" or (isinstance(member, (dict, list)) and not member)

    if isinstance(value, dict):
        return {k: p for k, v in value.items() if not drop(p := _pruned_reference(v))}
    if isinstance(value, list):
        return [p for v in value if not drop(p := _pruned_reference(v))]
    return value


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["", "x", "0"]) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from("abcd"), children, max_size=4),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_pruning_drops_exactly_null_empty_string_and_empty_containers(value: Any) -> None:
    from cds_service.protocol import _prune

    assert _prune(value) == _pruned_reference(value)
    assert json.dumps(_prune(value)) == json.dumps(_pruned_reference(value))  # False and 0 stay (0 == False in ==)


def test_summary_over_139_characters_is_refused() -> None:
    with pytest.raises(ValueError):
        Card(summary="x" * 140, indicator="info", source=Source(label="Plan"))
