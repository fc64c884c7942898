"""Storage hygiene (issues 8 and 15): feedback only for issued cards, one assertion per retry and never another
caller's (hookInstance, order, and the caller's issuer, patient, order content and decision), per-caller rate limits,
retention (``priorauth-cds purge`` and at start-up), private SQLite files, and older databases.

Storage tests run on SQLite and, when PRIORAUTH_TEST_POSTGRES_URL is set, on PostgreSQL too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Index, MetaData, Table, Text, create_engine, inspect, text

from cds_service import cli
from cds_service.app import create_app
from cds_service.config import Config, ConfigError
from cds_service.ratelimit import RateLimiter
from cds_service.store import (
    CoverageAssertion,
    Store,
    UTCDateTime,
    assertions_table,
    dtr_package_requests_table,
    normalize_database_url,
    questionnaire_errors_table,
)
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks
from tests.scenarios import SAMPLE_DIR

POSTGRES_ENV = "PRIORAUTH_TEST_POSTGRES_URL"
SIGN = "/cds-services/everolimus-order-sign"
SELECT = "/cds-services/everolimus-order-select"
SAMPLE = json.loads((SAMPLE_DIR / "I.A-brand-without-exemestane.json").read_text())


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    app = create_app(Config(database_url=database_url, rate_limit_per_minute=0))
    app.config["TESTING"] = True
    yield app
    app.extensions["priorauth_cds"].store.dispose()


def _request(hook_instance: str | None = None) -> dict[str, Any]:
    body = json.loads(json.dumps(SAMPLE))
    body["hookInstance"] = hook_instance or str(uuid.uuid4())
    return body


def _assertion_ids(body: dict[str, Any]) -> list[str]:
    return [
        sub["valueString"]
        for action in body.get("systemActions", [])
        for ext in action["resource"].get("extension", [])
        for sub in ext.get("extension", [])
        if sub.get("url") == "coverage-assertion-id"
    ]


def _count(database_url: str, table: str) -> int:
    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _feedback(card: str) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-27T10:00:00Z",
                "overrideReason": {"userComment": "documented elsewhere"},
            }
        ]
    }


# ----------------------------------------------------------------------------- feedback only for issued cards


def test_feedback_only_for_cards_this_service_issued(app: Any) -> None:
    client = app.test_client()
    answer = client.post(SIGN, json=_request())
    assert answer.status_code == 200
    cards = [card["uuid"] for card in answer.get_json()["cards"]]
    assert cards

    unknown = client.post(f"{SIGN}/feedback", json=_feedback(str(uuid.uuid4())))
    assert unknown.status_code == 404
    issue = unknown.get_json()["issue"][0]
    assert issue["code"] == "not-found" and issue["expression"] == ["feedback[0].card"]

    # Issued by order-sign, reported to order-select: not that service's card.
    assert client.post(f"{SELECT}/feedback", json=_feedback(cards[0])).status_code == 404

    # One unknown card refuses the whole request: nothing of it is stored.
    mixed = _feedback(cards[0])
    mixed["feedback"].append(_feedback("never-issued")["feedback"][0])
    refused = client.post(f"{SIGN}/feedback", json=mixed)
    assert refused.status_code == 404 and refused.get_json()["issue"][0]["expression"] == ["feedback[1].card"]
    assert app.extensions["priorauth_cds"].store.list_feedback() == []

    ok = client.post(f"{SIGN}/feedback", json=_feedback(cards[0]))
    assert ok.status_code == 200 and ok.get_json() == {"received": 1, "stored": 1}


# ----------------------------------------------------------------------------- one assertion per retry


def test_retry_with_the_same_hook_instance_keeps_one_assertion_and_its_id(app: Any, database_url: str) -> None:
    client = app.test_client()
    hook_instance = str(uuid.uuid4())
    first = client.post(SIGN, json=_request(hook_instance)).get_json()
    again = client.post(SIGN, json=_request(hook_instance)).get_json()
    other = client.post(SIGN, json=_request()).get_json()
    assert _assertion_ids(first) and _assertion_ids(first) == _assertion_ids(again)
    assert _assertion_ids(other) != _assertion_ids(first)
    assert _count(database_url, "coverage_assertions") == 2
    # Both answers' cards were issued: feedback on the retry's card is accepted too.
    retry_card = again["cards"][0]["uuid"]
    assert client.post(f"{SIGN}/feedback", json=_feedback(retry_card)).status_code == 200


def test_concurrent_retries_agree_on_one_assertion(database_url: str) -> None:
    hook_instance = str(uuid.uuid4())
    apps = [create_app(Config(database_url=database_url, rate_limit_per_minute=0)) for _ in range(2)]
    try:
        handlers = [a.extensions["priorauth_cds"].handler for a in apps]
        with ThreadPoolExecutor(4) as pool:
            bodies = list(
                pool.map(
                    lambda i: handlers[i % 2].handle("everolimus-order-sign", _request(hook_instance)).body, range(6)
                )
            )
    finally:
        for a in apps:
            a.extensions["priorauth_cds"].store.dispose()
    ids = {tuple(_assertion_ids(body)) for body in bodies}
    assert len(ids) == 1 and next(iter(ids))
    assert _count(database_url, "coverage_assertions") == 1


# ----------------------------------------------------------------------------- a retry is bound to its caller

ISSUER_A, ISSUER_B = "https://ehr-a.example", "https://ehr-b.example"


def _sample(name: str, hook_instance: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((SAMPLE_DIR / f"{name}.json").read_text())
    body["hookInstance"] = hook_instance
    return body


def _with_draft_id(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The request with its draft ``old`` renamed ``new`` (the id another caller's order has)."""
    for entry in body["context"]["draftOrders"]["entry"]:
        if entry["resource"].get("id") == old:
            entry["resource"]["id"] = new
    return body


@pytest.fixture
def two_issuers(database_url: str) -> Iterator[tuple[Any, Any]]:
    """An app trusting two EHRs, and a ``post(issuer, body)`` that signs with the right key."""
    keys = {ISSUER_A: ec_key(), ISSUER_B: ec_key()}
    app = create_app(
        Config(
            database_url=database_url,
            trusted_issuers={i: jwks(k) for i, k in keys.items()},
            public_base_url="http://localhost",
            rate_limit_per_minute=0,
        )
    )
    client = app.test_client()

    def post(issuer: str, body: dict[str, Any]) -> dict[str, Any]:
        token = keys[issuer].sign(cds_claims(issuer, f"http://localhost{SIGN}", time.time()))
        answer = client.post(SIGN, json=body, headers={"Authorization": bearer(token)})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        result: dict[str, Any] = answer.get_json()
        return result

    yield app, post
    app.extensions["priorauth_cds"].store.dispose()


def test_a_replayed_hook_instance_never_gets_another_callers_assertion(
    two_issuers: tuple[Any, Any], database_url: str
) -> None:
    app, post = two_issuers
    store = app.extensions["priorauth_cds"].store
    hook_instance = str(uuid.uuid4())
    met = _sample("I.A-met-generic-with-exemestane", hook_instance)
    (a_id,) = _assertion_ids(post(ISSUER_A, met))
    assert store.get_assertion(a_id)["decision"] == "met"
    # Issuer B: same hookInstance and draft id, another patient, a not-met order.
    other = _with_draft_id(_sample("I.E-tsc-infant-below-age", hook_instance), "ie-infant-order-3", "ia-met-order-7")
    assert other["context"]["patientId"] != met["context"]["patientId"]
    (b_id,) = _assertion_ids(post(ISSUER_B, other))
    assert b_id != a_id
    b_stored = store.get_assertion(b_id)
    assert (b_stored["decision"], b_stored["patient_ref"]) == ("not-met", f"Patient/{other['context']['patientId']}")
    # B replaying A's very request (same patient, order and decision) is still another caller.
    (b_copy_id,) = _assertion_ids(post(ISSUER_B, _sample("I.A-met-generic-with-exemestane", hook_instance)))
    assert b_copy_id not in (a_id, b_id)
    # Each caller's own retry keeps its own id; A's stored decision is untouched.
    assert _assertion_ids(post(ISSUER_A, _sample("I.A-met-generic-with-exemestane", hook_instance))) == [a_id]
    assert _assertion_ids(post(ISSUER_B, other)) == [b_id]
    assert store.get_assertion(a_id)["decision"] == "met"
    assert _count(database_url, "coverage_assertions") == 3


def test_a_retry_with_other_order_content_is_a_new_assertion(app: Any, database_url: str) -> None:
    client = app.test_client()
    hook_instance = str(uuid.uuid4())
    first = _assertion_ids(client.post(SIGN, json=_request(hook_instance)).get_json())
    changed = _request(hook_instance)
    draft = next(
        e["resource"]
        for e in changed["context"]["draftOrders"]["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    )
    draft["note"] = [{"text": "changed after the first call"}]
    second = _assertion_ids(client.post(SIGN, json=changed).get_json())
    assert first and second and first != second
    assert _assertion_ids(client.post(SIGN, json=changed).get_json()) == second
    assert _count(database_url, "coverage_assertions") == 2


def test_the_retry_key_covers_caller_patient_order_and_decision() -> None:
    base = _assertion(datetime.now(UTC))
    key = base.retry_key()
    assert CoverageAssertion(**{**base.__dict__, "assertion_id": "another-id"}).retry_key() == key
    for change in (
        {"issuer": "https://ehr-b.example"},
        {"patient_ref": "Patient/p-2"},
        {"order_digest": "0" * 64},
        {"decision": "not-met"},
        {"coverage_ref": "Coverage/c-2"},
        {"criteria": [{"id": "I.A.1", "status": "met"}]},
    ):
        assert CoverageAssertion(**{**base.__dict__, **change}).retry_key() != key, change


# ----------------------------------------------------------------------------- rate limit


def test_token_bucket_refills_over_the_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.check("a") == 0 for _ in range(60))
    assert limiter.check("a") == 1 and limiter.check("b") == 0  # another caller has its own bucket
    now[0] += 1.0
    assert limiter.check("a") == 0 and limiter.check("a") >= 1
    assert RateLimiter(0).check("a") == 0  # 0 turns the limit off


def test_rate_limit_is_a_429_with_retry_after_per_client_address(tmp_path: Path) -> None:
    app = create_app(Config(database_url=f"sqlite:///{tmp_path / 'r.sqlite3'}", rate_limit_per_minute=2))
    client = app.test_client()
    try:
        assert client.post(SIGN, json=_request()).status_code == 200
        assert client.post(f"{SIGN}/feedback", json=_feedback("x")).status_code == 404  # counted too
        limited = client.post(SIGN, json=_request())
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.get_json()["issue"][0]["code"] == "throttled"
        assert client.get("/cds-services").status_code == 200  # discovery is not limited
        other = client.post(SIGN, json=_request(), environ_base={"REMOTE_ADDR": "10.0.0.9"})
        assert other.status_code == 200
    finally:
        app.extensions["priorauth_cds"].store.dispose()


def test_rate_limit_is_per_verified_issuer(tmp_path: Path) -> None:
    key_a, key_b = ec_key(), ec_key()
    issuers = {"https://ehr-a.example": jwks(key_a), "https://ehr-b.example": jwks(key_b)}
    app = create_app(
        Config(
            database_url=f"sqlite:///{tmp_path / 'i.sqlite3'}",
            trusted_issuers=issuers,
            public_base_url="http://localhost",
            rate_limit_per_minute=1,
        )
    )
    client = app.test_client()

    def call(key: Any, issuer: str) -> int:
        token = key.sign(cds_claims(issuer, f"http://localhost{SIGN}", time.time()))
        return int(client.post(SIGN, json=_request(), headers={"Authorization": bearer(token)}).status_code)

    try:
        assert call(key_a, "https://ehr-a.example") == 200
        assert call(key_a, "https://ehr-a.example") == 429
        assert call(key_b, "https://ehr-b.example") == 200  # same address, another issuer
    finally:
        app.extensions["priorauth_cds"].store.dispose()


def test_rate_and_retention_settings_are_read_and_checked() -> None:
    config = Config.from_env({"CDS_RATE_LIMIT_PER_MINUTE": "0", "CDS_RETENTION_DAYS": "30"})
    assert (config.rate_limit_per_minute, config.retention_days) == (0, 30)
    assert (Config.from_env({}).rate_limit_per_minute, Config.from_env({}).retention_days) == (600, 365)
    for name, value in (("CDS_RATE_LIMIT_PER_MINUTE", "-1"), ("CDS_RETENTION_DAYS", "ten")):
        with pytest.raises(ConfigError):
            Config.from_env({name: value})


# ----------------------------------------------------------------------------- retention


def _assertion(created_at: datetime, hook_instance: str = "h-old") -> CoverageAssertion:
    return CoverageAssertion(
        assertion_id=str(uuid.uuid4()),
        created_at=created_at,
        hook_instance=hook_instance,
        service_id="everolimus-order-sign",
        order_ref="MedicationRequest/o-1",
        patient_ref="Patient/p-1",
        coverage_ref="Coverage/c-1",
        policy="CP.PHAR.63",
        policy_version="02.25",
        pathway="I.A",
        decision="met",
    )


def test_purge_deletes_what_is_older_than_the_retention(database_url: str) -> None:
    store = Store(database_url)
    try:
        now = datetime.now(UTC)
        store.record_response(
            service_id="everolimus-order-sign",
            hook_instance="h-old",
            card_uuids=["card-old"],
            assertions=[_assertion(now - timedelta(days=400))],
        )
        store.record_response(
            service_id="everolimus-order-sign",
            hook_instance="h-new",
            card_uuids=[],
            assertions=[_assertion(now, "h-new")],
        )
        from cds_service.feedback import parse_feedback

        store.record_feedback("everolimus-order-sign", parse_feedback(_feedback("card-old")))
        store.claim("https://ehr.example", "jti-1", now - timedelta(seconds=1))  # already expired
        assert store.purge(0) == {"feedback": 0, "coverage_assertions": 0, "issued_cards": 0, "dtr": 0, "jwt_replay": 1}
        assert store.purge(365) == {
            "feedback": 0,
            "coverage_assertions": 1,
            "issued_cards": 0,
            "dtr": 0,
            "jwt_replay": 0,
        }
        # A year and more later, everything recorded "now" is past the retention too.
        later = store.purge(365, now=now + timedelta(days=366))
        assert later == {"feedback": 1, "coverage_assertions": 1, "issued_cards": 1, "dtr": 0, "jwt_replay": 0}
        assert _count(database_url, "coverage_assertions") == 0  # the retry key is a column of the assertion
    finally:
        store.dispose()


def test_purge_command_prints_counts_and_uses_the_exit_codes(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(database_url)
    store.record_assertions([_assertion(datetime.now(UTC) - timedelta(days=40))])
    store.dispose()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CDS_RETENTION_DAYS", "365")
    assert cli.main(["purge"]) == 0
    assert "0 coverage assertions deleted" in capsys.readouterr().out
    assert cli.main(["purge", "--days", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "0 feedback deleted",
        "1 coverage assertions deleted",
        "0 issued cards deleted",
        "0 DTR rows (prefills, answers used, package requests, error reports) deleted",
        "0 expired JWT replay entries deleted",
    ]
    monkeypatch.setenv("CDS_RETENTION_DAYS", "-3")
    assert cli.main(["purge"]) == 2
    assert "CDS_RETENTION_DAYS" in capsys.readouterr().err


def test_retention_is_applied_at_start_up(database_url: str) -> None:
    store = Store(database_url)
    old = _assertion(datetime.now(UTC) - timedelta(days=30))
    store.record_assertions([old])
    store.dispose()
    kept = create_app(Config(database_url=database_url, retention_days=0))
    assert kept.extensions["priorauth_cds"].store.get_assertion(old.assertion_id) is not None
    kept.extensions["priorauth_cds"].store.dispose()
    purged = create_app(Config(database_url=database_url, retention_days=7))
    try:
        assert purged.extensions["priorauth_cds"].store.get_assertion(old.assertion_id) is None
    finally:
        purged.extensions["priorauth_cds"].store.dispose()


# ----------------------------------------------------------------------------- SQLite files and older databases


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = tmp_path / "deep" / "er" / "audit.sqlite3"
        store = Store(f"sqlite:///{path}")
        store.record_assertions([_assertion(datetime.now(UTC))])
        wal, shm = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
        assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
        for sidecar in (wal, shm):
            if sidecar.exists():
                assert _mode(sidecar) == 0o600, sidecar.name
        store.dispose()
        # A sidecar left world-readable (e.g. by an older build or a copy) is narrowed on the next open.
        wal.touch()
        os.chmod(wal, 0o644)
        reopened = Store(f"sqlite:///{path}")
        try:
            reopened.record_assertions([_assertion(datetime.now(UTC), "h-other")])
            assert not wal.exists() or _mode(wal) & 0o077 == 0
        finally:
            reopened.dispose()
    finally:
        os.umask(previous)


OLD_SCHEMA = """
CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, service_id TEXT NOT NULL, card TEXT NOT NULL,
  outcome TEXT NOT NULL, accepted_suggestions JSON NOT NULL, override_code TEXT, override_system TEXT,
  override_display TEXT, user_comment TEXT, outcome_timestamp DATETIME NOT NULL, received_at DATETIME NOT NULL,
  hook_instance TEXT, CONSTRAINT uq_feedback_item UNIQUE (service_id, card, outcome, outcome_timestamp));
CREATE TABLE coverage_assertions (assertion_id TEXT PRIMARY KEY, created_at DATETIME NOT NULL, hook_instance TEXT,
  service_id TEXT NOT NULL, order_ref TEXT NOT NULL, patient_ref TEXT, coverage_ref TEXT, policy TEXT NOT NULL,
  policy_version TEXT NOT NULL, pathway TEXT, decision TEXT NOT NULL, criteria JSON NOT NULL, covered TEXT,
  pa_needed TEXT, doc_needed TEXT);
CREATE INDEX ix_coverage_assertions_hook_instance ON coverage_assertions (hook_instance);
CREATE TABLE jwt_replay (issuer TEXT NOT NULL, jti TEXT NOT NULL, expires_at DATETIME NOT NULL,
  CONSTRAINT pk_jwt_replay PRIMARY KEY (issuer, jti));
CREATE INDEX ix_jwt_replay_expires_at ON jwt_replay (expires_at);
INSERT INTO coverage_assertions VALUES ('old-1', '2026-01-01 00:00:00', 'h-1', 'everolimus-order-sign',
  'MedicationRequest/o-1', NULL, NULL, 'CP.PHAR.63', '02.25', 'I.A', 'met', '[]', NULL, NULL, NULL);
INSERT INTO coverage_assertions VALUES ('old-2', '2026-01-01 00:00:01', 'h-1', 'everolimus-order-sign',
  'MedicationRequest/o-1', NULL, NULL, 'CP.PHAR.63', '02.25', 'I.A', 'met', '[]', NULL, NULL, NULL);
"""


def test_an_older_database_gains_the_new_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
    store = Store(f"sqlite:///{path}")
    try:
        # Retries stored twice by the older build stay readable (their ids were handed out).
        assert store.get_assertion("old-1") is not None and store.get_assertion("old-2") is not None
        assert store.unknown_cards("everolimus-order-sign", ["c"]) == ["c"]
        ids = store.record_response(
            service_id="everolimus-order-sign",
            hook_instance="h-2",
            card_uuids=["c"],
            assertions=[_assertion(datetime.now(UTC), "h-2")],
        )
        assert list(ids) == ["MedicationRequest/o-1"] and store.unknown_cards("everolimus-order-sign", ["c"]) == []
    finally:
        store.dispose()
    with sqlite3.connect(path) as connection:
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_coverage_assertions_created_at", "ix_issued_cards_issued_at"} <= indexes


def test_an_older_database_gains_the_issuer_columns_and_the_retry_key(database_url: str) -> None:
    """The DTR tables as the previous build made them (no issuer), the assertions without their retry key and the
    retry keys in a table of their own: the columns and their indexes are added at start-up, on SQLite and
    PostgreSQL, the index the retry key's supersedes is dropped, and the rows already there are kept (counted as
    issuer-less; the old retry keys are purged with the retention)."""
    old = MetaData()
    for table in (dtr_package_requests_table, questionnaire_errors_table, assertions_table):
        columns = [c for c in table.columns if c.name not in ("issuer", "request_key", "dtr_prefill")]
        Table(
            table.name, old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in columns)
        )
    Index("ix_coverage_assertions_hook_instance", old.tables["coverage_assertions"].c.hook_instance)
    old_retries = Table(
        "coverage_assertion_retries",
        old,
        *(Column(name, Text, nullable=False) for name in ("hook_instance", "order_ref", "request_key", "assertion_id")),
        Column("created_at", UTCDateTime, nullable=False),
    )
    errors = old.tables["questionnaire_errors"]
    legacy_keys = Table(
        "coverage_assertion_keys",
        old,
        *(Column(name, Text, nullable=False) for name in ("hook_instance", "order_ref", "assertion_id")),
        Column("created_at", UTCDateTime, nullable=False),
    )
    engine = create_engine(normalize_database_url(database_url))
    try:
        old.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                errors.insert(),
                {
                    "received_at": datetime.now(UTC),
                    "questionnaire": "q",
                    "outcome": {"resourceType": "OperationOutcome", "issue": []},
                },
            )
            old_key = {"hook_instance": "h", "order_ref": "o", "assertion_id": "a"}
            connection.execute(legacy_keys.insert(), {**old_key, "created_at": datetime.now(UTC) - timedelta(days=400)})
            old_retry = {**old_key, "request_key": "k", "created_at": datetime.now(UTC) - timedelta(days=400)}
            connection.execute(old_retries.insert(), old_retry)
    finally:
        engine.dispose()
    for _ in range(2):  # the second start finds everything in place
        store = Store(database_url)
        store.dispose()
    store = Store(database_url)
    try:
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        assert store.record_questionnaire_errors("q", [outcome], issuer="https://ehr-a.example") == 1
        store.record_package_request(
            assertion_id=None,
            order_ref=None,
            coverage_ref="Coverage/c",
            questionnaires=[],
            outcome="ok",
            issuer="https://ehr-a.example",
        )
        assert store.dtr_rows_today("https://ehr-a.example") == 2
        assert store.dtr_rows_today(None) == 1  # the older row
        assert store.dtr_rows_today("https://ehr-a.example", now=datetime.now(UTC) + timedelta(days=1)) == 0
        store.purge(365)  # the legacy retry keys an older build left are purged too
        assert _count(database_url, "coverage_assertion_keys") == 0
        assert _count(database_url, "coverage_assertion_retries") == 0
        first = _assertion(datetime.now(UTC), "h-upgraded")
        retry = dataclasses.replace(first, assertion_id="a-retry")
        for made in (first, retry):  # a retry on the upgraded database gets the first call's id
            ids = store.record_response(
                service_id=first.service_id, hook_instance="h-upgraded", card_uuids=[], assertions=[made]
            )
            assert ids == {first.order_ref: first.assertion_id}
    finally:
        store.dispose()
    engine = create_engine(normalize_database_url(database_url))
    try:
        inspector = inspect(engine)
        for table in ("dtr_package_requests", "questionnaire_errors"):
            assert f"ix_{table}_issuer" in {index["name"] for index in inspector.get_indexes(table)}
        assertion_indexes = {index["name"] for index in inspector.get_indexes("coverage_assertions")}
        assert {"uq_coverage_assertions_retry", "ix_coverage_assertions_prefill_order"} <= assertion_indexes
        assert "ix_coverage_assertions_hook_instance" not in assertion_indexes
        added = {"request_key", "issuer", "dtr_prefill"}
        assert added <= {column["name"] for column in inspector.get_columns("coverage_assertions")}
    finally:
        engine.dispose()


def test_purge_deletes_the_dtr_rows_past_the_retention(database_url: str) -> None:
    store = Store(database_url)
    try:
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        store.record_questionnaire_errors("q", [outcome, outcome], issuer="https://ehr-a.example")
        store.record_package_request(
            assertion_id="x", order_ref=None, coverage_ref=None, questionnaires=[], outcome="UnknownContext"
        )
        assert store.purge(30)["dtr"] == 0
        assert store.purge(30, now=datetime.now(UTC) + timedelta(days=31))["dtr"] == 3
        assert store.dtr_rows_today("https://ehr-a.example") == store.dtr_rows_today(None) == 0
    finally:
        store.dispose()
