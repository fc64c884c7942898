"""Storage tests, run on SQLite and, when PRIORAUTH_TEST_POSTGRES_URL is set, on PostgreSQL too.

Each PostgreSQL test gets its own schema (via ``search_path``) so runs can share one database.
Get a server with ``export PRIORAUTH_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import QueuePool

from cds_service import store as store_module
from cds_service.config import ConfigError
from cds_service.errors import StorageError
from cds_service.feedback import FeedbackItem, parse_feedback
from cds_service.policy.results import CriterionResult, Decision, OrderEvaluation, Status
from cds_service.store import (
    GENERIC_FAILURE,
    CoverageAssertion,
    Store,
    criteria_statuses,
    normalize_database_url,
    replay_table,
)

POSTGRES_ENV = "PRIORAUTH_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.dispose()


def feedback(*entries: dict[str, Any]) -> list[FeedbackItem]:
    return parse_feedback({"feedback": list(entries)})


def accepted(card: str = "card-1", at: str = "2025-03-01T09:30:00Z", *suggestions: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestions],
        "outcomeTimestamp": at,
    }


def overridden(card: str = "card-1", at: str = "2025-03-01T09:30:00Z", **reason: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": at}
    if reason:
        entry["overrideReason"] = reason
    return entry


def assertion(assertion_id: str = "a-1", **changes: Any) -> CoverageAssertion:
    values: dict[str, Any] = {
        "assertion_id": assertion_id,
        "created_at": T0,
        "hook_instance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "service_id": "everolimus-pa",
        "order_ref": "MedicationRequest/draft-1",
        "patient_ref": "Patient/pat-1",
        "coverage_ref": "Coverage/cov-1",
        "policy": "CP.PHAR.63",
        "policy_version": "02.25",
        "pathway": "I.A",
        "decision": "incomplete",
        "criteria": [{"id": "I.A.1", "status": "met"}, {"id": "I.A.2", "status": "unknown"}],
        "covered": "conditional",
        "pa_needed": "auth-needed",
        "doc_needed": "clinical",
    }
    values.update(changes)
    return CoverageAssertion(**values)


def count_rows(database_url: str, table: str) -> int:
    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(text(table))).scalar_one())
    finally:
        engine.dispose()


#: Prefix of snippets run by ``start_together``: import everything, report ready, wait for the go line.
READY_THEN_WAIT = """
import sys
from cds_service.store import Store
print("ready", flush=True)
sys.stdin.readline()
"""


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """Run a snippet in a fresh interpreter (its own connections, its own process to kill)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_together(code: str, *args: str, count: int = 4) -> list[subprocess.Popen[str]]:
    """Start ``count`` interpreters and release them at once, after their (slow) imports."""
    workers = [python(READY_THEN_WAIT + textwrap.dedent(code), *args) for _ in range(count)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return workers


def finish(process: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


# --- schema -----------------------------------------------------------------------------------------------


def test_schema_creation_twice_is_safe(database_url: str) -> None:
    first = Store(database_url)
    first.record_feedback("svc", feedback(accepted()))
    second = Store(database_url)
    try:
        assert len(second.list_feedback()) == 1
        assert second.record_feedback("svc", feedback(accepted("card-2"))) == 1
        assert len(first.list_feedback()) == 2
    finally:
        first.dispose()
        second.dispose()


def test_workers_starting_together_create_the_schema_once(database_url: str) -> None:
    code = """
        import os
        from cds_service.feedback import parse_feedback
        store = Store(sys.argv[1])
        item = {"card": f"card-{os.getpid()}", "outcome": "overridden", "outcomeTimestamp": "2025-03-01T09:30:00Z"}
        print(store.record_feedback("svc", parse_feedback({"feedback": [item]})))
    """
    workers = start_together(code, database_url, count=6)
    assert [finish(worker).strip() for worker in workers] == ["1"] * 6
    check = Store(database_url)
    try:
        assert sorted(row["card"] for row in check.list_feedback()) == sorted(f"card-{w.pid}" for w in workers)
    finally:
        check.dispose()


# --- feedback ---------------------------------------------------------------------------------------------


def test_feedback_posted_twice_is_stored_once(store: Store) -> None:
    items = feedback(accepted("card-1", "2025-03-01T09:30:00Z", "sug-1"), overridden("card-2"))
    assert store.record_feedback("svc", items) == 2
    assert store.record_feedback("svc", items) == 0
    assert len(store.list_feedback()) == 2


def test_same_instant_written_with_another_offset_is_a_duplicate(store: Store) -> None:
    assert store.record_feedback("svc", feedback(overridden(at="2025-03-01T09:30:00Z"))) == 1
    assert store.record_feedback("svc", feedback(overridden(at="2025-03-01T11:30:00.000+02:00"))) == 0


def test_duplicates_inside_one_request_are_stored_once(store: Store) -> None:
    assert store.record_feedback("svc", feedback(overridden(), overridden(), accepted())) == 2
    assert len(store.list_feedback()) == 2


def test_each_part_of_the_key_distinguishes_feedback(store: Store) -> None:
    assert store.record_feedback("svc", feedback(overridden())) == 1
    assert store.record_feedback("other-svc", feedback(overridden())) == 1
    assert store.record_feedback("svc", feedback(overridden("card-2"))) == 1
    assert store.record_feedback("svc", feedback(accepted())) == 1
    assert store.record_feedback("svc", feedback(overridden(at="2025-03-01T09:30:00.000001Z"))) == 1
    assert len(store.list_feedback()) == 5


def test_feedback_round_trip(store: Store) -> None:
    items = feedback(
        accepted("card-1", "2025-03-01T10:30:00+01:00", "sug-1", "sug-2"),
        overridden(
            "card-2",
            "2025-03-01T09:31:00Z",
            reason={"code": "not-applicable", "system": "https://example.org/reasons", "display": "N/A"},
            userComment="Patient already approved.",
        ),
    )
    before = datetime.now(UTC)
    store.record_feedback("everolimus-pa", items, hook_instance="hook-1")
    first, second = store.list_feedback("everolimus-pa")
    assert first["card"] == "card-1" and first["outcome"] == "accepted"
    assert first["accepted_suggestions"] == ["sug-1", "sug-2"]
    assert first["outcome_timestamp"] == T0 and first["outcome_timestamp"].tzinfo is not None
    assert first["override_code"] is None and first["user_comment"] is None
    assert second["card"] == "card-2" and second["outcome"] == "overridden"
    assert second["accepted_suggestions"] == []
    assert (second["override_code"], second["override_system"], second["override_display"]) == (
        "not-applicable",
        "https://example.org/reasons",
        "N/A",
    )
    assert second["user_comment"] == "Patient already approved."
    assert second["hook_instance"] == "hook-1"
    assert before - timedelta(seconds=1) <= second["received_at"] <= datetime.now(UTC) + timedelta(seconds=1)


def test_list_feedback_filters_by_service(store: Store) -> None:
    store.record_feedback("svc-a", feedback(overridden("a")))
    store.record_feedback("svc-b", feedback(overridden("b")))
    assert [row["card"] for row in store.list_feedback("svc-a")] == ["a"]
    assert [row["card"] for row in store.list_feedback()] == ["a", "b"]
    assert store.list_feedback("svc-c") == []


def test_empty_feedback_list_stores_nothing(store: Store) -> None:
    assert store.record_feedback("svc", []) == 0
    assert store.list_feedback() == []


# --- coverage assertions ----------------------------------------------------------------------------------


def test_assertions_round_trip(store: Store) -> None:
    store.record_assertions(
        [
            assertion("a-1"),
            assertion("a-2", decision="met", coverage_ref=None, criteria=(), order_ref="MedicationRequest/draft-2"),
        ]
    )
    first = store.get_assertion("a-1")
    assert first is not None
    assert first["criteria"] == [{"id": "I.A.1", "status": "met"}, {"id": "I.A.2", "status": "unknown"}]
    assert first["created_at"] == T0
    assert {key: first[key] for key in ("policy", "policy_version", "pathway", "decision")} == {
        "policy": "CP.PHAR.63",
        "policy_version": "02.25",
        "pathway": "I.A",
        "decision": "incomplete",
    }
    assert (first["covered"], first["pa_needed"], first["doc_needed"]) == ("conditional", "auth-needed", "clinical")
    assert (first["order_ref"], first["patient_ref"], first["coverage_ref"]) == (
        "MedicationRequest/draft-1",
        "Patient/pat-1",
        "Coverage/cov-1",
    )
    second = store.get_assertion("a-2")
    assert second is not None and second["decision"] == "met"
    assert second["coverage_ref"] is None and second["criteria"] == []
    assert store.get_assertion("missing") is None


def test_prepared_statements_store_what_sqlalchemy_core_stores(store: Store) -> None:
    """The hot path (record_response, claim) runs SQLAlchemy-compiled SQL on the DBAPI cursor: same column values,
    as the database holds them (SQLite: the DATETIME text and the JSON text), as a Core insert of the same row."""
    aware = datetime(2025, 3, 1, 10, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    fast = assertion("a-fast", created_at=aware, hook_instance=None)
    core = assertion("a-core", created_at=aware, hook_instance=None)
    store.record_assertions([fast])
    with store._transaction("test") as connection:
        connection.execute(store_module.assertions_table.insert(), store_module._assertion_row(core))
    raw = text("SELECT * FROM coverage_assertions WHERE assertion_id IN ('a-fast', 'a-core') ORDER BY assertion_id")
    with store._transaction("test", readonly=True) as connection:
        rows = {row[0]: tuple(row[1:]) for row in connection.execute(raw)}
    assert rows["a-fast"] == rows["a-core"]
    assert store.claim("iss", "jti-1", T0 + timedelta(days=3650)) and not store.claim("iss", "jti-1", T0)


def test_recording_an_assertion_again_keeps_the_first(store: Store) -> None:
    store.record_assertions([assertion("a-1", decision="met")])
    store.record_assertions([assertion("a-1", decision="not-met")])
    stored = store.get_assertion("a-1")
    assert stored is not None and stored["decision"] == "met"


def test_assertions_are_written_in_one_transaction(store: Store, service_log: Callable[[], str]) -> None:
    broken = assertion(
        "a-2",
        decision=None,
        patient_ref="Patient/secret-patient",  # NOT NULL violation
        order_ref="MedicationRequest/draft-2",
    )
    with pytest.raises(StorageError) as raised:
        store.record_assertions([assertion("a-1"), broken])
    assert raised.value.status == 503 and raised.value.detail == GENERIC_FAILURE
    assert store.get_assertion("a-1") is None
    assert "INSERT" not in service_log() and "secret-patient" not in service_log()
    assert "IntegrityError" in service_log()


def test_assertion_requires_an_aware_timestamp() -> None:
    with pytest.raises(ValueError):
        assertion(created_at=datetime(2025, 3, 1, 9, 30))


def test_criteria_statuses_walks_the_tree_in_policy_order() -> None:
    child = CriterionResult(id="I.A.2.a", text="child", status=Status.UNKNOWN)
    evaluation = OrderEvaluation(
        order_ref="MedicationRequest/1",
        policy="CP.PHAR.63",
        policy_version="02.25",
        pathway="I.A",
        pathway_title="TSC",
        decision=Decision.INCOMPLETE,
        criteria=(
            CriterionResult(id="I.A.1", text="one", status=Status.MET),
            CriterionResult(id="I.A.2", text="two", status=Status.UNKNOWN, children=(child,)),
            CriterionResult(id="I.A.3", text="three", status=Status.NOT_MET),
        ),
    )
    assert criteria_statuses(evaluation) == (
        {"id": "I.A.1", "status": "met"},
        {"id": "I.A.2", "status": "unknown"},
        {"id": "I.A.2.a", "status": "unknown"},
        {"id": "I.A.3", "status": "not-met"},
    )


@pytest.mark.parametrize("criteria", [[("I.A.1", "met")], [{"id": "I.A.1"}], [{"id": 1, "status": "met"}], ["I.A.1"]])
def test_assertion_rejects_malformed_criteria(criteria: Any) -> None:
    with pytest.raises(TypeError, match="criterion"):
        assertion(criteria=criteria)


def test_assertion_criteria_are_copied_and_frozen() -> None:
    given = [{"id": "I.A.1", "status": "met", "text": "not stored"}]
    made = assertion(criteria=given)
    given[0]["status"] = "not-met"
    assert made.criteria == ({"id": "I.A.1", "status": "met"},)


# --- JWT replay guard -------------------------------------------------------------------------------------


def test_claim_is_granted_once_per_issuer_and_jti(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim("https://ehr.example.org", "jti-1", expires) is True
    assert store.claim("https://ehr.example.org", "jti-1", expires) is False
    assert store.claim("https://other.example.org", "jti-1", expires) is True
    assert store.claim("https://ehr.example.org", "jti-2", expires) is True


def test_an_expired_claim_may_be_taken_again_but_only_once(store: Store) -> None:
    store.replay_purge_interval = 3600  # keep the stale row: exercise the take-over path
    store.claim("iss", "jti-1", datetime.now(UTC) + timedelta(minutes=5))  # first claim purges
    assert store.claim("iss", "jti-old", datetime.now(UTC) - timedelta(seconds=1)) is True
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim("iss", "jti-old", later) is True
    assert store.claim("iss", "jti-old", later) is False


def test_claim_purges_expired_rows(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    store.replay_purge_interval = 3600
    for n in range(5):
        store.claim("iss", f"old-{n}", now - timedelta(minutes=1))
    store.claim("iss", "live", now + timedelta(minutes=5))
    assert count_rows(database_url, replay_table.name) == 6
    store.replay_purge_interval = 0
    store.claim("iss", "next", now + timedelta(minutes=5))
    assert count_rows(database_url, replay_table.name) == 2


def test_claim_requires_an_aware_expiry(store: Store) -> None:
    with pytest.raises(ValueError):
        store.claim("iss", "jti", datetime(2030, 1, 1))


def test_concurrent_claims_from_threads_grant_exactly_one(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    for jti in ("t-1", "t-2", "t-3"):
        barrier = threading.Barrier(8)

        def contend(_: int, jti: str = jti, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.claim("iss", jti, expires)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(contend, range(8)))
        assert results.count(True) == 1, (jti, results)


def test_concurrent_claims_from_processes_grant_exactly_one(database_url: str) -> None:
    Store(database_url).dispose()  # schema first: this test is about claims, not start-up
    jtis = [f"p-{n}" for n in range(10)]
    code = """
        import json
        from datetime import datetime, timedelta, timezone
        store = Store(sys.argv[1])
        expires = datetime.now(timezone.utc) + timedelta(minutes=5)
        print(json.dumps([store.claim("iss", jti, expires) for jti in sys.argv[2:]]))
    """
    workers = start_together(code, database_url, *jtis)
    results = [json.loads(finish(worker)) for worker in workers]
    for index, jti in enumerate(jtis):
        assert [result[index] for result in results].count(True) == 1, jti


# --- durability -------------------------------------------------------------------------------------------


def test_data_survives_a_restart(database_url: str) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    before = Store(database_url)
    before.record_feedback("svc", feedback(accepted("card-1", "2025-03-01T09:30:00Z", "sug-1")), "hook-1")
    before.record_assertions([assertion("a-1")])
    assert before.claim("iss", "jti-1", expires) is True
    before.dispose()

    after = Store(database_url)
    try:
        rows = after.list_feedback()
        assert [(row["card"], row["accepted_suggestions"], row["hook_instance"]) for row in rows] == [
            ("card-1", ["sug-1"], "hook-1")
        ]
        assert after.get_assertion("a-1") is not None
        assert after.claim("iss", "jti-1", expires) is False
        assert after.record_feedback("svc", feedback(accepted("card-1", "2025-03-01T09:30:00Z", "sug-1"))) == 0
    finally:
        after.dispose()


def test_acknowledged_writes_survive_sigkill(database_url: str) -> None:
    code = """
        import sys
        from cds_service.feedback import parse_feedback
        from cds_service.store import CoverageAssertion, Store
        from datetime import datetime, timezone
        store = Store(sys.argv[1])
        n = 0
        while True:  # write, acknowledge, repeat until killed
            item = {"card": f"card-{n}", "outcome": "overridden", "outcomeTimestamp": "2025-03-01T09:30:00Z"}
            store.record_feedback("svc", parse_feedback({"feedback": [item]}))
            store.record_assertions([CoverageAssertion(
                assertion_id=f"a-{n}", created_at=datetime.now(timezone.utc), hook_instance=None,
                service_id="svc", order_ref="MedicationRequest/1", patient_ref=None, coverage_ref=None,
                policy="CP.PHAR.63", policy_version="02.25", pathway=None, decision="met")])
            print(n, flush=True)
            n += 1
    """
    writer = python(code, database_url)
    assert writer.stdout is not None
    acknowledged = [writer.stdout.readline() for _ in range(25)]
    writer.send_signal(signal.SIGKILL)
    rest, err = writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL, err
    acknowledged_ids = [int(line) for line in acknowledged + rest.splitlines() if line.strip()]
    assert acknowledged_ids == list(range(len(acknowledged_ids))) and len(acknowledged_ids) >= 25

    reopened = Store(database_url)
    try:
        stored_cards = {row["card"] for row in reopened.list_feedback()}
        assert {f"card-{n}" for n in acknowledged_ids} <= stored_cards
        assert all(reopened.get_assertion(f"a-{n}") is not None for n in acknowledged_ids)
    finally:
        reopened.dispose()


# --- engine set-up and failures ---------------------------------------------------------------------------


def test_sqlite_is_configured_for_concurrent_crash_safe_writes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'pragmas.sqlite3'}")
    try:
        with store._engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }
    finally:
        store.dispose()
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": store_module.SQLITE_BUSY_TIMEOUT_MS}


def test_background_checkpoints_take_the_wal_off_the_request_path(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite3"
    store = Store(f"sqlite:///{path}")
    try:
        assert store.start_background_checkpoints(interval=0.05) is True
        with store._engine.connect() as connection:  # a connection opened afterwards: SQLite's own mark is a backstop
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == store_module.WAL_BACKSTOP_PAGES
        schema_only = path.stat().st_size
        store.record_assertions([assertion(f"a-{n}", order_ref=f"MedicationRequest/{n}") for n in range(50)])
        written = store.checkpoints_done
        deadline = time.monotonic() + 30
        while store.checkpoints_done < written + 2 and time.monotonic() < deadline:  # no speed asserted, only that
            time.sleep(0.01)  # the thread runs
        # The rows were copied from the WAL into the database file, by the thread: no commit reached the backstop.
        assert path.stat().st_size > schema_only
    finally:
        store.dispose()
    assert store._checkpoints is not None and store._checkpoints.is_set()  # stopped at shutdown
    reopened = Store(f"sqlite:///{path}")
    try:
        assert reopened.get_assertion("a-49") is not None
        assert reopened.start_background_checkpoints() is True
    finally:
        reopened.dispose()


def test_background_checkpoints_are_for_sqlite_files_only(database_url: str) -> None:
    for url in ("sqlite://", database_url):
        store = Store(url)
        try:
            assert store.start_background_checkpoints() is (url.startswith("sqlite:///"))
        finally:
            store.dispose()


def test_in_memory_sqlite_is_one_database_shared_by_threads() -> None:
    store = Store("sqlite://")
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            counts = list(pool.map(lambda n: store.record_feedback("svc", feedback(overridden(f"c-{n}"))), range(8)))
        assert counts == [1] * 8
        assert len(store.list_feedback()) == 8
    finally:
        store.dispose()


def test_start_up_leaves_no_connection_to_inherit(database_url: str) -> None:
    opened = Store(database_url)
    try:
        pool = opened._engine.pool
        assert isinstance(pool, QueuePool) and pool.checkedin() == 0  # nothing for a preloading gunicorn to fork
    finally:
        opened.dispose()


def test_store_used_before_fork_works_in_child_and_parent(store: Store) -> None:
    store.record_feedback("svc", feedback(overridden("before")))  # the parent now pools a connection
    pid = os.fork()
    if pid == 0:  # child: what gunicorn's post_fork hook does, then a write
        code = 1
        try:
            store.dispose(close=False)
            code = 0 if store.record_feedback("svc", feedback(overridden("child"))) == 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.record_feedback("svc", feedback(overridden("parent"))) == 1
    assert [row["card"] for row in store.list_feedback()] == ["before", "child", "parent"]


def test_ping(store: Store) -> None:
    assert store.ping() is True


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5433/cds", "postgresql+psycopg://u:p@db.example:5433/cds"),
        ("postgresql://u:p@db.example/cds", "postgresql+psycopg://u:p@db.example/cds"),
        ("postgresql+psycopg://u:p@db.example/cds", "postgresql+psycopg://u:p@db.example/cds"),
        ("sqlite:///priorauth-cds.sqlite3", "sqlite:///priorauth-cds.sqlite3"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_database_url_normalisation(given: str, expected: str) -> None:
    assert normalize_database_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url", ["mysql://root:hunter2@db/cds", "postgresql+psycopg2://u:hunter2@db/cds", "not a url hunter2", ""]
)
def test_unsupported_database_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Store(url)
    assert "hunter2" not in str(raised.value)


def test_unopenable_sqlite_file_is_a_generic_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service_log: Callable[[], str]
) -> None:
    monkeypatch.setattr(store_module, "SCHEMA_CREATE_ATTEMPTS", 1)
    missing = tmp_path / "store.sqlite3"  # missing folders are created now, so: a file that is no database
    missing.write_bytes(b"not a database, not even empty" * 100)
    with pytest.raises(StorageError) as raised:
        Store(f"sqlite:///{missing}")
    assert raised.value.detail == GENERIC_FAILURE
    assert "storage.failed" in service_log() and str(missing) not in service_log()


@pytest.mark.postgres
def test_postgres_login_failure_leaks_no_password(
    monkeypatch: pytest.MonkeyPatch, service_log: Callable[[], str]
) -> None:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set; export it from `bash .ci/postgres.sh` to run PostgreSQL tests")
    monkeypatch.setattr(store_module, "SCHEMA_CREATE_ATTEMPTS", 1)
    wrong = normalize_database_url(base).set(password="Wr0ngSecretPassword")
    with pytest.raises(StorageError) as raised:
        Store(wrong.render_as_string(hide_password=False))
    assert raised.value.detail == GENERIC_FAILURE
    assert "storage.failed" in service_log()
    assert "Wr0ngSecretPassword" not in service_log() and "Wr0ngSecretPassword" not in str(raised.value)
