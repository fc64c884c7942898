"""``to_json``'s one-walk writer gives exactly what ``_prune(model_dump(mode="json", exclude_none=True))`` gave."""

from __future__ import annotations

import datetime
import enum
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cds_service.protocol import (
    Action,
    Card,
    Coding,
    HookResponse,
    Link,
    Source,
    Suggestion,
    _plain,
    _prune,
    to_json,
)


class _Colour(enum.Enum):
    RED = "red"


def _two_step(response: HookResponse) -> dict[str, Any]:
    """The previous writer, verbatim."""
    body: dict[str, Any] = _prune(response.model_dump(mode="json", exclude_none=True))
    body["cards"] = body.get("cards", [])
    return body


_TEXT = st.sampled_from(["", " ", "a", "0", "null"]) | st.text(max_size=5)
_PLAIN = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
#: What only ``mode="json"`` turns into JSON: each must send the writer to the two-step path.
_CONVERTED = (
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not math.isfinite(f))
    | st.dates()
    | st.just(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
    | st.just(_Colour.RED)
    | st.tuples(_PLAIN, _PLAIN)
    | st.frozensets(st.integers(min_value=0, max_value=9), max_size=2)
)


def _free_form(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=20,
    )
    return st.dictionaries(_TEXT, values, max_size=4)


def _responses(free: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[HookResponse]:
    optional_text = st.none() | _TEXT
    coding = st.builds(Coding, code=_TEXT, system=optional_text, display=optional_text)
    source = st.builds(Source, label=_TEXT, url=optional_text, icon=optional_text, topic=st.none() | coding)
    link = st.builds(
        Link, label=_TEXT, url=_TEXT, type=st.sampled_from(["absolute", "smart"]), appContext=optional_text
    )
    action = st.builds(
        Action,
        type=st.sampled_from(["create", "update", "delete"]),
        description=_TEXT,
        resource=st.none() | free,
        resourceId=st.none() | st.lists(_TEXT, max_size=3),
    )
    suggestion = st.builds(
        Suggestion,
        label=_TEXT,
        uuid=_TEXT,
        isRecommended=st.none() | st.booleans(),
        actions=st.lists(action, max_size=2),
    )
    card = st.builds(
        Card,
        summary=st.text(min_size=1, max_size=8),
        indicator=st.sampled_from(["info", "warning", "critical"]),
        source=source,
        uuid=_TEXT,
        detail=optional_text,
        suggestions=st.lists(suggestion, max_size=2),
        selectionBehavior=st.none() | st.sampled_from(["at-most-one", "any"]),
        overrideReasons=st.lists(coding, max_size=2),
        links=st.lists(link, max_size=2),
        extension=st.none() | free,
    )
    return st.builds(HookResponse, cards=st.lists(card, max_size=2), systemActions=st.lists(action, max_size=2))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_responses(_free_form(_PLAIN)))
def test_plain_json_answers_are_identical(response: HookResponse) -> None:
    _plain(response)  # the one-walk path, never the fallback, serves plain JSON
    body = to_json(response)
    assert body == _two_step(response)
    assert orjson.dumps(body) == orjson.dumps(_two_step(response))  # False/0 and 1/1.0/True compare equal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_responses(_free_form(_PLAIN | _CONVERTED)))
def test_values_json_mode_converts_are_identical(response: HookResponse) -> None:
    body = to_json(response)
    assert body == _two_step(response)
    assert orjson.dumps(body) == orjson.dumps(_two_step(response))


def test_response_models_inside_free_form_members_match() -> None:
    extension = {"m": Coding(code="x", system=None), "n": [Source(label="")]}
    response = HookResponse(cards=[Card(summary="s", indicator="info", source=Source(label="l"), extension=extension)])
    assert (
        to_json(response)
        == _two_step(response)
        == {
            "cards": [
                {
                    "summary": "s",
                    "indicator": "info",
                    "source": {"label": "l"},
                    "uuid": response.cards[0].uuid,
                    "extension": {"m": {"code": "x"}},
                }
            ]
        }
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns that the int key is not a str
def test_non_string_keys_fall_back() -> None:
    card = Card.model_construct(summary="s", indicator="info", source=Source(label="l"), extension={1: "a"})
    response = HookResponse.model_construct(cards=[card], systemActions=[])
    assert to_json(response) == _two_step(response)


class _Foreign(BaseModel):
    label: str = ""
    when: datetime.date | None = None


def test_foreign_models_fall_back() -> None:
    extension = {"f": _Foreign(when=datetime.date(2026, 1, 2)), "g": [_Foreign()]}
    response = HookResponse(cards=[Card(summary="s", indicator="info", source=Source(label="l"), extension=extension)])
    assert to_json(response) == _two_step(response)
    assert to_json(response)["cards"][0]["extension"] == {"f": {"when": "2026-01-02"}}
