"""The prefill is stored compact (``cds_service.dtr.stored``) and read back as the exact FHIR answers it was.

Issue 18 item 2: every coverage assertion that offers DTR stored its prefill as whole FHIR answers (5 KB a call,
three quarters of it the same two extensions), through the stdlib ``json`` with spaces. Now each answer is stored
as its value and evidence and every JSON column is compact orjson text; what a DTR client receives is unchanged,
and rows written whole by earlier versions still read.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from cds_service.dtr import stored
from cds_service.store import Store
from tests.test_store import assertion

CODING = {"valueCoding": {"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}}
ANSWERS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "cp-phar-63-i-a": {
        "I.A.2/2": [stored.answer({"valueBoolean": True}, ["Condition/c-2"])],
        "I.A.4": [stored.answer({"valueDate": "1968-11-20"}, ["Patient/p"])],
        "I.A.5/hormone-receptor": [stored.answer(CODING, ["Observation/o-3", "Observation/o-4", "Observation/o-3"])],
        "I.A.6": [
            stored.answer({"valueString": "x"}, []),
            stored.answer({"valueInteger": 3}, ["MedicationStatement/m"]),
        ],
    }
}


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.dispose()


def test_round_trip_is_byte_for_byte() -> None:
    compact = stored.compact(ANSWERS)
    assert orjson.dumps(stored.expand(compact)) == orjson.dumps(ANSWERS)
    assert stored.INFORMATION_ORIGIN not in orjson.dumps(compact).decode()
    assert compact["cp-phar-63-i-a"]["I.A.4"] == [[{"valueDate": "1968-11-20"}, ["Patient/p"]]]


@pytest.mark.parametrize(
    "odd",
    [
        {"valueBoolean": True},  # no extension at all
        {"extension": [{"url": "other"}], "valueBoolean": True},  # not the server's origin extension
        {"valueBoolean": True, "extension": stored.answer({}, ["Patient/p"])["extension"]},  # another key order
        {
            "extension": [*stored.answer({}, ["A/1"])["extension"], *stored.answer({}, ["A/1"])["extension"][1:]],
            "valueBoolean": True,
        },  # the same evidence twice: answer() would not repeat it
        {"extension": stored.answer({}, ["A/1"])["extension"] + [{"url": stored.ANSWER_EVIDENCE}], "valueBoolean": 1},
        "not an answer",
    ],
)
def test_any_other_answer_is_stored_whole(odd: Any) -> None:
    compact = stored.compact({"q": {"l": [odd]}})
    assert compact == {"q": {"l": [odd]}}
    assert orjson.dumps(stored.expand(compact)) == orjson.dumps({"q": {"l": [odd]}})


def test_the_packed_form_reads_back_byte_for_byte() -> None:
    packed = stored.pack(ANSWERS)
    assert orjson.dumps(stored.unpack(packed)) == orjson.dumps(ANSWERS)
    assert list(stored.unpack(stored.pack({"b": {}, "a": {}}))) == ["b", "a"]  # the questionnaires, in order
    assert len(packed) < len(orjson.dumps(stored.compact(ANSWERS)))


def test_rows_stored_whole_read_as_they_are() -> None:
    assert orjson.dumps(stored.expand(ANSWERS)) == orjson.dumps(ANSWERS)
    assert stored.expand(None) is None and stored.expand({"q": "x"}) == {"q": "x"}


def test_the_store_keeps_it_compact_and_returns_the_answers(store: Store) -> None:
    made = assertion("a-dtr", dtr_prefill=ANSWERS, hook_instance=None)
    store.record_assertions([made])
    row = store.dtr_prefill("a-dtr")
    assert row is not None and orjson.dumps(row["answers"]) == orjson.dumps(ANSWERS)
    latest = store.latest_dtr_prefill(["MedicationRequest/draft-1"], "Patient/pat-1")
    assert latest is not None and orjson.dumps(latest["answers"]) == orjson.dumps(ANSWERS)
    with store._transaction("test", readonly=True) as connection:
        raw = connection.execute(text("SELECT dtr_prefill FROM coverage_assertions")).one()
        legacy = connection.execute(text("SELECT count(*) FROM dtr_prefill")).scalar_one()
    assert legacy == 0  # the prefill is a column of the assertion now: one table fewer written per call
    assert row["questionnaires"] == latest["questionnaires"] == ["cp-phar-63-i-a"]
    packed = bytes(raw[0])
    assert orjson.dumps(stored.unpack(packed)) == orjson.dumps(ANSWERS)
    answers_text = zlib.decompress(packed, -15).decode()
    assert stored.INFORMATION_ORIGIN not in answers_text and ", " not in answers_text
    assert len(answers_text) < len(orjson.dumps(ANSWERS)) / 2 and len(packed) < len(answers_text)


def test_rows_written_whole_by_earlier_versions_still_read(store: Store) -> None:
    store.record_assertions([assertion("a-old", hook_instance=None)])
    with store._transaction("test") as connection:
        connection.execute(
            text(
                "INSERT INTO dtr_prefill (assertion_id, created_at, order_ref, questionnaires, answers) "
                "VALUES ('a-old', '2025-03-01 09:30:00.000000', 'MedicationRequest/draft-1', :q, :a)"
            ),
            {"q": '["cp-phar-63-i-a"]', "a": orjson.dumps(ANSWERS).decode()},
        )
    row = store.dtr_prefill("a-old")
    assert row is not None and orjson.dumps(row["answers"]) == orjson.dumps(ANSWERS)


def _compact_by_bytes(full: Any) -> Any:
    """The first implementation of ``_compact_answer`` (serialise both forms, compare the bytes): the reference the
    member-by-member check must agree with."""
    if not isinstance(full, dict) or not isinstance(full.get("extension"), list):
        return full
    refs: list[Any] = []
    for extension in full["extension"][1:]:
        reference = extension.get("valueReference") if isinstance(extension, dict) else None
        refs.append(reference.get("reference") if isinstance(reference, dict) else None)
    if not all(isinstance(ref, str) for ref in refs):
        return full
    value = {key: item for key, item in full.items() if key != "extension"}
    try:
        same = orjson.dumps(stored.answer(value, refs)) == orjson.dumps(full)
    except TypeError:
        return full
    return [value, refs] if same else full


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["A/1", "A/2", "url", "x"]))
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["url", "valueReference", "reference", "extension", "valueCode", "valueBoolean"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@st.composite
def _answers(draw: st.DrawFn) -> Any:
    """Answers as ``answer`` makes them, then (mostly) mutated: members reordered, dropped, replaced, added."""
    refs = draw(st.lists(st.sampled_from(["A/1", "A/2", "Patient/p"]), max_size=3))
    full: Any = stored.answer(
        draw(st.dictionaries(st.sampled_from(["valueBoolean", "valueString"]), _scalars, max_size=2)), refs
    )
    for _ in range(draw(st.integers(0, 2))):
        nodes = (
            [full, *full["extension"]] if isinstance(full, dict) and isinstance(full.get("extension"), list) else [full]
        )
        node = draw(st.sampled_from(nodes + [n.get("valueReference") for n in nodes if isinstance(n, dict)]))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            action = draw(st.sampled_from(["drop", "replace", "move-last", "add"]))
            if action == "drop":
                del node[key]
            elif action == "replace":
                node[key] = draw(_json)
            elif action == "move-last":
                node[key] = node.pop(key)
            else:
                node[draw(st.sampled_from(["url", "extension", "valueCode", "x"]))] = draw(_json)
        elif isinstance(full, dict) and isinstance(full.get("extension"), list):
            full["extension"].append(draw(st.sampled_from(full["extension"] or [{}])))
    return full


@settings(max_examples=600, deadline=None)
@given(_answers())
def test_compact_answer_agrees_with_the_byte_comparison(full: Any) -> None:
    expected = _compact_by_bytes(copy.deepcopy(full))
    got = stored._compact_answer(copy.deepcopy(full))
    assert orjson.dumps(got) == orjson.dumps(expected)
    assert orjson.dumps(stored.expand({"q": {"l": [got]}})) == orjson.dumps({"q": {"l": [full]}})
