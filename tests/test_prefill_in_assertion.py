"""The DTR prefill is a column of its coverage assertion (issue 18): one table, index and statement fewer per call.

A new call's prefill is stored in, and served from, the assertion row; a database an older build made keeps its
``dtr_prefill`` rows, which still serve their ``$questionnaire-package`` after the upgrade (the readers fall back to
them), and retention purges both.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.dtr import stored
from cds_service.store import Store
from tests.dtr_helpers import PACKAGE, coverage_information, package_parameters, sample, sign
from tests.test_store import assertion, count_rows
from tests.test_stored_prefill import ANSWERS

SAMPLE = "I.A-specialty-undocumented"
#: Each package names its entries with fresh uuids: everything else is compared byte for byte.
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.dispose()


def _packages(config: Config, request: dict[str, Any], context: str) -> tuple[bytes, bytes]:
    """The package by context and by order alone, as a DTR client gets them (fresh entry uuids masked)."""
    app = create_app(config)
    try:
        client = app.test_client()
        by_context = client.post(PACKAGE, json=package_parameters(request, context=context))
        by_order = client.post(PACKAGE, json=package_parameters(request))
        assert by_context.status_code == by_order.status_code == 200, by_context.get_data(as_text=True)
        return UUID.sub(b"uuid", by_context.get_data()), UUID.sub(b"uuid", by_order.get_data())
    finally:
        app.extensions["priorauth_cds"].store.dispose()


def _signed(config: Config) -> tuple[dict[str, Any], str]:
    app = create_app(config)
    try:
        request = sample(SAMPLE)
        return request, coverage_information(sign(app.test_client(), request))["coverage-assertion-id"][0]
    finally:
        app.extensions["priorauth_cds"].store.dispose()


def _as_an_older_build_stored_it(path: Path) -> None:
    """Move each prefill into a ``dtr_prefill`` row (answers whole, as the oldest builds wrote them) and drop the
    assertion's new columns and index: the database as it was before the upgrade."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT assertion_id, created_at, order_ref, patient_ref, coverage_ref, dtr_prefill, issuer "
            "FROM coverage_assertions WHERE dtr_prefill IS NOT NULL"
        ).fetchall()
        assert rows
        for assertion_id, created_at, order_ref, patient_ref, coverage_ref, prefill, issuer in rows:
            answers = stored.unpack(prefill)
            connection.execute(
                "INSERT INTO dtr_prefill VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    assertion_id,
                    created_at,
                    order_ref,
                    patient_ref,
                    coverage_ref,
                    orjson.dumps(list(answers)).decode(),
                    orjson.dumps(answers).decode(),
                    issuer,
                ),
            )
        connection.execute("DROP INDEX ix_coverage_assertions_prefill_order")
        connection.execute("ALTER TABLE coverage_assertions DROP COLUMN dtr_prefill")
        connection.execute("ALTER TABLE coverage_assertions DROP COLUMN issuer")


def test_a_new_calls_prefill_is_served_from_the_assertion_row(config: Config) -> None:
    request, context = _signed(config)
    served = _packages(config, request, context)
    path = Path(config.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM dtr_prefill").fetchone() == (0,)
        (prefill,) = connection.execute(
            "SELECT dtr_prefill FROM coverage_assertions WHERE assertion_id = ?", (context,)
        ).fetchone()
    assert orjson.dumps(list(stored.unpack(prefill))) == b'["cp-phar-63-i-a"]'
    assert served[0] == served[1]


def test_an_older_database_still_serves_its_questionnaire_package_after_upgrade(config: Config) -> None:
    request, context = _signed(config)
    before = _packages(config, request, context)
    path = Path(config.database_url.removeprefix("sqlite:///"))
    _as_an_older_build_stored_it(path)
    after = _packages(config, request, context)  # start-up adds the columns back, empty: read from dtr_prefill
    assert after == before
    with sqlite3.connect(path) as connection:
        query = "SELECT count(*) FROM coverage_assertions WHERE dtr_prefill IS NOT NULL"
        assert connection.execute(query).fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM dtr_prefill").fetchone() == (1,)


def test_the_newer_of_a_legacy_row_and_an_assertion_row_wins(store: Store) -> None:
    store.record_assertions([assertion("a-new", dtr_prefill={"q-new": {}}, hook_instance=None)])
    store.record_assertions([assertion("a-old", hook_instance=None)])
    _legacy_row(store, "a-old", "2020-01-01 00:00:00.000000")
    latest = store.latest_dtr_prefill(["MedicationRequest/draft-1"], "Patient/pat-1")
    assert latest is not None and latest["assertion_id"] == "a-new" and latest["questionnaires"] == ["q-new"]
    _legacy_row(store, "a-later", "2030-01-01 00:00:00.000000")
    latest = store.latest_dtr_prefill(["MedicationRequest/draft-1"], "Patient/pat-1")
    assert latest is not None and latest["assertion_id"] == "a-later"
    assert store.latest_dtr_prefill(["MedicationRequest/draft-1"], "Patient/pat-1", issuer="x", own=True) is None
    legacy = store.dtr_prefill("a-old")
    assert legacy is not None and orjson.dumps(legacy["answers"]) == orjson.dumps(ANSWERS)
    assert store.dtr_prefill("a-1") is None


def _legacy_row(store: Store, assertion_id: str, created_at: str) -> None:
    with store._transaction("test") as connection:
        connection.execute(
            text(
                "INSERT INTO dtr_prefill (assertion_id, created_at, order_ref, patient_ref, questionnaires, answers) "
                "VALUES (:id, :at, 'MedicationRequest/draft-1', 'Patient/pat-1', :q, :a)"
            ),
            {"id": assertion_id, "at": created_at, "q": '["cp-phar-63-i-a"]', "a": orjson.dumps(ANSWERS).decode()},
        )


def test_retention_purges_the_prefills_of_both_forms(store: Store, database_url: str) -> None:
    store.record_assertions([assertion("a-new", dtr_prefill=ANSWERS, hook_instance=None)])
    store.record_assertions([assertion("a-old", hook_instance=None)])
    _legacy_row(store, "a-old", "2025-03-01 09:30:00.000000")
    store.purge(30, now=datetime.now(UTC) + timedelta(days=365 * 20))
    assert count_rows(database_url, "coverage_assertions") == count_rows(database_url, "dtr_prefill") == 0
    assert store.dtr_prefill("a-new") is None and store.dtr_prefill("a-old") is None


def test_the_order_lookup_uses_the_partial_index(tmp_path: Path) -> None:
    path = tmp_path / "plan.sqlite3"
    Store(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as connection:
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT assertion_id FROM coverage_assertions WHERE order_ref IN ('a', 'b') "
            "AND dtr_prefill IS NOT NULL AND patient_ref = 'p' ORDER BY created_at DESC LIMIT 1"
        ).fetchall()
    assert "ix_coverage_assertions_prefill_order" in str(plan)
