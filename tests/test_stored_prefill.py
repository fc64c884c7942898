"""The prefill is stored compact (``cds_service.dtr.stored``) and read back as the exact FHIR answers it was.

Issue 18 item 2: every coverage assertion that offers DTR stored its prefill as whole FHIR answers (5 KB a call,
three quarters of it the same two extensions), through the stdlib ``json`` with spaces. Now each answer is stored
as its value and evidence and every JSON column is compact orjson text; what a DTR client receives is unchanged,
and rows written whole by earlier versions still read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
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
        raw = connection.execute(text("SELECT answers, questionnaires FROM dtr_prefill")).one()
    answers_text = raw[0] if isinstance(raw[0], str) else orjson.dumps(raw[0]).decode()
    assert stored.INFORMATION_ORIGIN not in answers_text
    if store.dialect == "sqlite":  # PostgreSQL keeps json as given; SQLite stores the serialiser's text
        assert ", " not in answers_text and raw[1] == '["cp-phar-63-i-a"]'
        assert len(answers_text) < len(orjson.dumps(ANSWERS)) / 2


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
