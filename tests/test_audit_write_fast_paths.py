"""The audit write's fast paths (issue 18): same rows, same failures, same connections' fate.

``_criterion`` skips the ``Mapping`` ABC check for a plain ``dict`` of two strings (what the handler passes, 14 times a
call); anything else takes the general path (``_any_criterion``), compared with it here over random entries.

A SQLite file's per-call transactions (``Store._cursor_transaction``) reuse idle connections of their own instead of
checking one out of SQLAlchemy's pool each time: one per concurrent writer, rolled back and kept after a failed
statement, closed at ``dispose`` and forgotten (not closed) in a forked child, as the pool's are.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.errors import StorageError
from cds_service.store import Store, _any_criterion, _criterion
from tests.test_store import assertion


class _Str(str):
    """A str subclass: the general path accepts it, the fast path must hand it over."""


_values = st.one_of(
    st.none(), st.integers(), st.booleans(), st.sampled_from(["I.A.1", "met", ""]), st.builds(_Str, st.text(max_size=3))
)
_dicts = st.dictionaries(st.sampled_from(["id", "status", "text", "x"]), _values, max_size=4)
_entries = st.one_of(
    _dicts,
    _dicts.map(MappingProxyType),
    st.tuples(_values, _values),
    st.lists(_values, max_size=2),
    _values,
)


def _outcome(entry: Any, check: Any) -> tuple[str, Any]:
    try:
        result = check(entry)
    except (TypeError, AttributeError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", (result, [type(value) for value in result.values()])


@settings(max_examples=800, deadline=None)
@given(_entries)
def test_criterion_agrees_with_the_general_check(entry: Any) -> None:
    assert _outcome(entry, _criterion) == _outcome(entry, _any_criterion)


def test_criterion_copies_the_handlers_dict() -> None:
    given_entry = {"id": "I.A.1", "status": "met"}
    copied = _criterion(given_entry)
    assert copied == given_entry and copied is not given_entry


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield opened
    opened.dispose()


def _record(store: Store, n: int) -> dict[str, str]:
    made = replace(assertion(f"a-{n}"), hook_instance=f"h-{n}")
    return store.record_response(
        service_id="everolimus-pa", hook_instance=f"h-{n}", card_uuids=[f"card-{n}"], assertions=[made]
    )


def test_one_writer_reuses_one_connection_and_dispose_closes_it(sqlite_store: Store) -> None:
    _record(sqlite_store, 1)
    spares = list(sqlite_store._spares or ())
    assert len(spares) == 1
    _record(sqlite_store, 2)
    assert sqlite_store._spares == spares  # the same connection again, idle, outside a transaction
    dbapi_connection = spares[0].dbapi_connection
    assert not dbapi_connection.in_transaction
    sqlite_store.dispose()
    assert sqlite_store._spares == []
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        dbapi_connection.execute("SELECT 1")
    assert _record(sqlite_store, 3) == {"MedicationRequest/draft-1": "a-3"}  # usable again, as after the pool's


def test_concurrent_writers_get_connections_of_their_own(sqlite_store: Store) -> None:
    start = threading.Barrier(4)

    def write(n: int) -> None:
        start.wait()
        for k in range(10):
            _record(sqlite_store, n * 100 + k)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(sqlite_store._spares or ()) <= 4
    assert (
        sqlite_store.unknown_cards("everolimus-pa", [f"card-{n * 100 + k}" for n in range(4) for k in range(10)]) == []
    )


def test_a_failed_write_is_rolled_back_and_its_connection_kept(sqlite_store: Store) -> None:
    _record(sqlite_store, 1)
    broken = replace(assertion("a-broken"), hook_instance="h-x", policy=None)  # type: ignore[arg-type]  # NOT NULL
    with pytest.raises(StorageError):
        sqlite_store.record_response(
            service_id="everolimus-pa", hook_instance="h-x", card_uuids=["card-x"], assertions=[broken]
        )
    assert len(sqlite_store._spares or ()) == 1
    assert not (sqlite_store._spares or [])[0].dbapi_connection.in_transaction
    assert sqlite_store.get_assertion("a-broken") is None and sqlite_store.unknown_cards("everolimus-pa", ["card-x"])
    assert _record(sqlite_store, 2) == {"MedicationRequest/draft-1": "a-2"}


def test_a_postgres_or_in_memory_store_keeps_the_pool() -> None:
    memory = Store("sqlite://")
    try:
        assert memory._spares is None
        assert _record(memory, 1) == {"MedicationRequest/draft-1": "a-1"}
    finally:
        memory.dispose()


def test_connections_used_before_fork_are_forgotten_in_the_child(sqlite_store: Store) -> None:
    _record(sqlite_store, 1)  # the parent now keeps an idle connection
    pid = os.fork()
    if pid == 0:  # child: what gunicorn's post_fork hook does, then a write
        code = 1
        try:
            sqlite_store.dispose(close=False)
            code = 0 if _record(sqlite_store, 2) == {"MedicationRequest/draft-1": "a-2"} else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _record(sqlite_store, 3) == {"MedicationRequest/draft-1": "a-3"}  # the parent's connection still works
    assert all(sqlite_store.get_assertion(f"a-{n}") is not None for n in (1, 2, 3))
