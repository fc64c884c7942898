"""The CDS Hooks 2.0 feedback request reader: what it accepts, what it refuses, and that it only ever refuses
with a ``ProtocolError`` (a 400), whatever JSON arrives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.errors import ProtocolError
from cds_service.feedback import (
    MAX_ACCEPTED_SUGGESTIONS,
    MAX_COMMENT_CHARS,
    MAX_FEEDBACK_ITEMS,
    MAX_ID_CHARS,
    FeedbackItem,
    parse_feedback,
)

CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
SUGGESTION = "e56e1945-20b3-4393-8503-a1a20fd73152"
INSTANT = datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)


def accepted(**changes: Any) -> dict[str, Any]:
    """The specification's 'suggestion accepted' example entry, with changes."""
    entry: dict[str, Any] = {
        "card": CARD,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": SUGGESTION}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    entry.update(changes)
    return entry


def overridden(**changes: Any) -> dict[str, Any]:
    """The specification's 'overridden with overrideReason' example entry, with changes."""
    entry: dict[str, Any] = {
        "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "d7ecf885", "system": "https://example.com/cds-hooks/override-reason-system"},
            "userComment": "A comment entered by the clinician.",
        },
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    entry.update(changes)
    return entry


def without(entry: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != key}


def body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"feedback": list(entries)}


# --- accepted bodies --------------------------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any]]] = [
    ("spec accepted example", body(accepted())),
    ("spec overridden example", body(overridden())),
    ("overridden without a reason", body(without(overridden(), "overrideReason"))),
    ("override with only a comment", body(overridden(overrideReason={"userComment": "Already approved."}))),
    ("override with only a coded reason", body(overridden(overrideReason={"reason": {"code": "x"}}))),
    ("accepted without suggestions", body(without(accepted(), "acceptedSuggestions"))),
    ("accepted with empty suggestions", body(accepted(acceptedSuggestions=[]))),
    ("null members count as absent", body(accepted(overrideReason=None), overridden(acceptedSuggestions=None))),
    ("overridden with empty suggestions", body(overridden(acceptedSuggestions=[]))),
    ("unknown members and extensions", {"feedback": [accepted(extension={"a.b": 1}, x=2)], "extension": {}}),
    ("suggestion extensions", body(accepted(acceptedSuggestions=[{"id": SUGGESTION, "extension": {"z": 1}}]))),
    ("non-uuid card id", body(accepted(card="card-7"))),
    ("longest card id", body(accepted(card="c" * MAX_ID_CHARS))),
    ("offset timestamp", body(accepted(outcomeTimestamp="2021-12-11T11:05:31+01:00"))),
    ("fractional seconds", body(accepted(outcomeTimestamp="2021-12-11T10:05:31.000Z"))),
    ("several entries", body(accepted(), overridden(), accepted(card="other"))),
    ("largest request", body(*[accepted(card=f"c{n}") for n in range(MAX_FEEDBACK_ITEMS)])),
]


@pytest.mark.parametrize(("name", "request_body"), VALID, ids=[name for name, _ in VALID])
def test_valid_feedback_is_accepted(name: str, request_body: dict[str, Any]) -> None:
    snapshot = copy.deepcopy(request_body)
    items = parse_feedback(request_body)
    assert len(items) == len(request_body["feedback"])
    assert all(isinstance(item, FeedbackItem) for item in items)
    assert all(item.outcome_timestamp == INSTANT and item.outcome_timestamp.tzinfo == UTC for item in items)
    assert request_body == snapshot  # the reader never mutates the caller's JSON


def test_accepted_entry_fields() -> None:
    (item,) = parse_feedback(body(accepted(acceptedSuggestions=[{"id": "s1"}, {"id": "s2"}])))
    assert (item.card, item.outcome, item.suggestion_ids) == (CARD, "accepted", ("s1", "s2"))
    assert item.override_reason is None


def test_overridden_entry_fields() -> None:
    (item,) = parse_feedback(body(overridden()))
    assert item.outcome == "overridden" and item.suggestion_ids == ()
    assert item.override_reason is not None and item.override_reason.reason is not None
    assert item.override_reason.reason.code == "d7ecf885"
    assert item.override_reason.reason.system == "https://example.com/cds-hooks/override-reason-system"
    assert item.override_reason.reason.display is None
    assert item.override_reason.user_comment == "A comment entered by the clinician."


def test_the_same_instant_in_two_offsets_parses_equal() -> None:
    first, second = parse_feedback(body(accepted(), accepted(outcomeTimestamp="2021-12-11T05:05:31-05:00")))
    assert first == second


# --- refused bodies ---------------------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str, str]] = [
    # name, body, expected expression, fragment of the message
    ("body is a list", [accepted()], "feedback", "JSON object"),
    ("body is a string", "feedback", "feedback", "JSON object"),
    ("body is null", None, "feedback", "JSON object"),
    ("feedback missing", {}, "feedback", "required"),
    ("feedback null", {"feedback": None}, "feedback", "list"),
    ("feedback not a list", {"feedback": accepted()}, "feedback", "list"),
    ("feedback empty", {"feedback": []}, "feedback", "at least 1"),
    ("too many entries", body(*[accepted()] * (MAX_FEEDBACK_ITEMS + 1)), "feedback", "at most"),
    ("entry not an object", {"feedback": ["x"]}, "feedback[0]", "valid dictionary"),
    ("card missing", body(without(accepted(), "card")), "feedback[0].card", "required"),
    ("card empty", body(accepted(card="")), "feedback[0].card", "at least 1"),
    ("card blank", body(accepted(card="   ")), "feedback[0].card", "blank"),
    ("card a number", body(accepted(card=42)), "feedback[0].card", "string"),
    ("card too long", body(accepted(card="c" * (MAX_ID_CHARS + 1))), "feedback[0].card", "at most"),
    ("card with NUL", body(accepted(card="a\x00b")), "feedback[0].card", "NUL"),
    ("card with lone surrogate", body(accepted(card="a\ud800")), "feedback[0].card", "unicode"),
    ("outcome missing", body(without(accepted(), "outcome")), "feedback[0].outcome", "required"),
    ("outcome unknown", body(accepted(outcome="ignored")), "feedback[0].outcome", "'accepted' or 'overridden'"),
    ("outcome wrong case", body(accepted(outcome="Accepted")), "feedback[0].outcome", "'accepted'"),
    ("outcome a boolean", body(accepted(outcome=True)), "feedback[0].outcome", "'accepted'"),
    ("timestamp missing", body(without(accepted(), "outcomeTimestamp")), "feedback[0].outcomeTimestamp", "required"),
    ("timestamp null", body(accepted(outcomeTimestamp=None)), "feedback[0].outcomeTimestamp", "string"),
    ("timestamp epoch number", body(accepted(outcomeTimestamp=1639217131)), "feedback[0].outcomeTimestamp", "string"),
    (
        "timestamp without zone",
        body(accepted(outcomeTimestamp="2021-12-11T10:05:31")),
        "feedback[0].outcomeTimestamp",
        "time zone",
    ),
    ("timestamp date only", body(accepted(outcomeTimestamp="2021-12-11")), "feedback[0].outcomeTimestamp", "time zone"),
    ("timestamp not a date", body(accepted(outcomeTimestamp="yesterday")), "feedback[0].outcomeTimestamp", "ISO 8601"),
    (
        "timestamp impossible",
        body(accepted(outcomeTimestamp="2021-02-30T10:05:31Z")),
        "feedback[0].outcomeTimestamp",
        "ISO 8601",
    ),
    (
        "timestamp out of range",
        body(accepted(outcomeTimestamp="0001-01-01T00:00:00+05:00")),
        "feedback[0].outcomeTimestamp",
        "range",
    ),
    (
        "timestamp too long",
        body(accepted(outcomeTimestamp="2021-12-11T10:05:31" + "0" * 80 + "Z")),
        "feedback[0].outcomeTimestamp",
        "too long",
    ),
    (
        "suggestions not a list",
        body(accepted(acceptedSuggestions={"id": SUGGESTION})),
        "feedback[0].acceptedSuggestions",
        "tuple",
    ),
    (
        "suggestion a bare string",
        body(accepted(acceptedSuggestions=[SUGGESTION])),
        "feedback[0].acceptedSuggestions[0]",
        "valid dictionary",
    ),
    (
        "suggestion without id",
        body(accepted(acceptedSuggestions=[{"uuid": SUGGESTION}])),
        "feedback[0].acceptedSuggestions[0].id",
        "required",
    ),
    (
        "too many suggestions",
        body(accepted(acceptedSuggestions=[{"id": "s"}] * (MAX_ACCEPTED_SUGGESTIONS + 1))),
        "feedback[0].acceptedSuggestions",
        "at most",
    ),
    (
        "suggestions with overridden",
        body(overridden(acceptedSuggestions=[{"id": SUGGESTION}])),
        "feedback[0]",
        "acceptedSuggestions is allowed only with outcome 'accepted'",
    ),
    (
        "override reason with accepted",
        body(accepted(overrideReason={"userComment": "no"})),
        "feedback[0]",
        "overrideReason is allowed only with outcome 'overridden'",
    ),
    (
        "override reason a string",
        body(overridden(overrideReason="wrong drug")),
        "feedback[0].overrideReason",
        "valid dictionary",
    ),
    (
        "reason without code",
        body(overridden(overrideReason={"reason": {"system": "s"}})),
        "feedback[0].overrideReason.reason.code",
        "required",
    ),
    (
        "reason code a number",
        body(overridden(overrideReason={"reason": {"code": 7}})),
        "feedback[0].overrideReason.reason.code",
        "string",
    ),
    (
        "reason system a list",
        body(overridden(overrideReason={"reason": {"code": "c", "system": ["s"]}})),
        "feedback[0].overrideReason.reason.system",
        "string",
    ),
    (
        "comment too long",
        body(overridden(overrideReason={"userComment": "x" * (MAX_COMMENT_CHARS + 1)})),
        "feedback[0].overrideReason.userComment",
        "at most",
    ),
    (
        "error in a later entry",
        body(accepted(), accepted(), overridden(outcome="dismissed")),
        "feedback[2].outcome",
        "'accepted' or 'overridden'",
    ),
]


@pytest.mark.parametrize(("name", "request_body", "where", "fragment"), INVALID, ids=[row[0] for row in INVALID])
def test_invalid_feedback_is_a_protocol_error(name: str, request_body: Any, where: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_feedback(request_body)
    assert raised.value.status == 400
    assert raised.value.expression == [where]
    assert raised.value.detail.startswith(f"{where}: ")
    assert fragment in raised.value.detail


def test_error_messages_do_not_echo_the_input() -> None:
    secret = "Patient John Q Example, MRN 555-12"
    with pytest.raises(ProtocolError) as raised:
        parse_feedback(body(overridden(overrideReason={"reason": {"code": 7}, "userComment": secret}, card=[secret])))
    assert secret not in raised.value.detail
    assert "more)" in raised.value.detail  # two problems: the first is named, the count of the rest given


# --- property: nothing but ProtocolError, whatever arrives ------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)).map(
    lambda offset: timezone(timedelta(minutes=offset // timedelta(minutes=1)))
)
timestamps = st.one_of(
    st.datetimes(timezones=st.none() | offsets).map(lambda moment: moment.isoformat()),
    st.sampled_from([datetime.min, datetime.max]).flatmap(
        lambda edge: offsets.map(lambda tz: edge.replace(tzinfo=tz).isoformat())
    ),
    st.text(alphabet="0123456789-:TZ+. ", max_size=30),
    json_values,
)
codings = st.fixed_dictionaries(
    {}, optional={"code": st.text(max_size=5) | json_values, "system": json_values, "display": json_values}
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "card": st.uuids().map(str) | st.text(max_size=140) | json_values,
        "outcome": st.sampled_from(["accepted", "overridden", "ignored"]) | json_values,
        "acceptedSuggestions": st.lists(st.fixed_dictionaries({}, optional={"id": st.text() | json_values}))
        | json_values,
        "overrideReason": st.fixed_dictionaries(
            {}, optional={"reason": codings | json_values, "userComment": json_values}
        )
        | json_values,
        "outcomeTimestamp": timestamps,
        "extension": json_values,
    },
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"feedback": st.lists(entries | json_values, max_size=5) | json_values}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_parse_feedback_raises_nothing_but_protocol_error(candidate: Any) -> None:
    try:
        items = parse_feedback(candidate)
    except ProtocolError as error:
        assert error.detail and error.expression
        return
    assert items and all(item.outcome in ("accepted", "overridden") for item in items)
    assert all(item.outcome_timestamp.tzinfo == UTC for item in items)
    assert all(item.outcome == "accepted" or not item.suggestion_ids for item in items)
    assert all(item.outcome == "overridden" or item.override_reason is None for item in items)
