"""Durable storage for card feedback, the coverage-assertion audit and the JWT replay guard.

SQLAlchemy 2 Core on SQLite (default, one file shared by all gunicorn workers) or PostgreSQL (psycopg 3). The few
statements every hook call runs (the assertion and issued-card writes, the retry read, the JWT replay claim) are
compiled by SQLAlchemy once and executed on the DBAPI cursor (``_Prepared``), without Core's per-call machinery.
Every write commits before its method returns, so whatever a client was told is stored survives a
``kill -9``: SQLite runs in WAL mode and takes its write lock at ``BEGIN`` (``BEGIN IMMEDIATE``) so that
concurrent workers queue on ``busy_timeout`` instead of failing. ``synchronous=NORMAL`` is the WAL
setting that survives any process crash (the kernel holds the committed pages) without an fsync per
request (about 4 ms each); only an operating-system crash or power loss can roll back the last
transactions. Deployments that need that too use PostgreSQL (``DATABASE_URL``), the production store.
Duplicates are ignored with ``INSERT ... ON CONFLICT DO NOTHING``, which both dialects implement.
Database failures surface as ``StorageError`` with a generic message: SQL, parameters (which may hold
PHI) and URLs (which may hold passwords) never reach a client or a log line.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import expression
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

from cds_service.config import ConfigError
from cds_service.dtr import stored as stored_prefill
from cds_service.errors import StorageError
from cds_service.feedback import FeedbackItem
from cds_service.logs import log_event
from cds_service.policy.results import OrderEvaluation

logger = logging.getLogger("priorauth_cds.store")

#: How long a SQLite connection waits for another worker's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: WAL pages after which a committing SQLite connection checkpoints by itself (SQLite's default: 1000). Once a process
#: checkpoints in the background (``Store.start_background_checkpoints``) its connections only keep this as a backstop.
WAL_BACKSTOP_PAGES = 10_000
#: Seconds between the background checkpoints of one process.
CHECKPOINT_INTERVAL_SECONDS = 1.0
#: Arbitrary constant naming the PostgreSQL advisory lock that serialises schema creation.
SCHEMA_LOCK_KEY = 0x5052_4941_4355_5448  # "PRIAUTH"-ish, fits in a signed 64-bit int
SCHEMA_CREATE_ATTEMPTS = 5
#: The client-visible message of every storage failure.
GENERIC_FAILURE = "the feedback and audit store is temporarily unavailable; retry later"

_READONLY_OPTION = "priorauth_readonly"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both dialects (SQLite stores naive UTC text, PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

feedback_table = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", Text, nullable=False),
    Column("card", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("accepted_suggestions", JSON, nullable=False),
    Column("override_code", Text),
    Column("override_system", Text),
    Column("override_display", Text),
    Column("user_comment", Text),
    Column("outcome_timestamp", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("hook_instance", Text),
    UniqueConstraint("service_id", "card", "outcome", "outcome_timestamp", name="uq_feedback_item"),
)

assertions_table = Table(
    "coverage_assertions",
    metadata,
    Column("assertion_id", Text, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("hook_instance", Text),
    Column("service_id", Text, nullable=False),
    Column("order_ref", Text, nullable=False),
    Column("patient_ref", Text),
    Column("coverage_ref", Text),
    Column("policy", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("pathway", Text),
    Column("decision", Text, nullable=False),
    Column("criteria", JSON, nullable=False),
    Column("covered", Text),
    Column("pa_needed", Text),
    Column("doc_needed", Text),
    #: What a retry must repeat to be answered with this assertion (``CoverageAssertion.retry_key``); None for
    #: assertions recorded without a hookInstance and for rows of builds before it.
    Column("request_key", Text),
    #: The verified JWT issuer of the hook call (None without JWT checks): the only caller that may fetch its DTR package.
    Column("issuer", Text),
    #: DTR: the payer's prefill for the order's questionnaires, ``{questionnaire id: {linkId: [answer]}}`` in its
    #: compact form, deflated (``cds_service.dtr.stored.pack``); its keys, in order, are the questionnaires offered.
    #: NULL when the call offered none, and on rows of builds that stored it in ``dtr_prefill`` (read as a fallback).
    Column("dtr_prefill", LargeBinary),
    #: A retried hook call finds the assertion it already made (and its id) only when the key matches, i.e. the same
    #: caller (JWT issuer), patient, coverage, order content and decision. Any other call reusing the hookInstance
    #: gets an assertion of its own. Unique, so the assertion's own INSERT is the retry check (``record_response``).
    Index("uq_coverage_assertions_retry", "hook_instance", "order_ref", "request_key", unique=True),
    Index("ix_coverage_assertions_created_at", "created_at"),
    #: ``latest_dtr_prefill`` (a DTR client that sends only its orders): partial, so only calls that store a prefill
    #: write it, and its WHERE clause is the query's.
    Index(
        "ix_coverage_assertions_prefill_order",
        "order_ref",
        sqlite_where=text("dtr_prefill IS NOT NULL"),
        postgresql_where=text("dtr_prefill IS NOT NULL"),
    ),
)

#: Superseded by ``uq_coverage_assertions_retry`` (whose first column it is): dropped at start-up where it exists.
SUPERSEDED_INDEXES = ("ix_coverage_assertions_hook_instance",)

#: Legacy (before retries were bound to their caller): one row per (hookInstance, order), never read or written now.
#: Not created on a new database; where an older build left it, retention still purges its rows.
legacy_assertion_keys = expression.table("coverage_assertion_keys", expression.column("created_at", UTCDateTime))

#: Legacy (before the retry key became a column of the assertion, issue 18): one row per (hookInstance, order, request
#: key) in a table of its own, a fourth table and third index written on every call. Not created on a new database,
#: never read or written now; where an older build left it, retention still purges its rows.
legacy_assertion_retries = expression.table("coverage_assertion_retries", expression.column("created_at", UTCDateTime))

#: Every card uuid this service sent; feedback is accepted only for these.
issued_cards_table = Table(
    "issued_cards",
    metadata,
    Column("card_uuid", Text, nullable=False),
    Column("service_id", Text, nullable=False),
    Column("hook_instance", Text),
    Column("issued_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("card_uuid", name="pk_issued_cards"),
    Index("ix_issued_cards_issued_at", "issued_at"),
)

replay_table = Table(
    "jwt_replay",
    metadata,
    Column("issuer", Text, nullable=False),
    Column("jti", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("issuer", "jti", name="pk_jwt_replay"),
    Index("ix_jwt_replay_expires_at", "expires_at"),
)

#: Legacy DTR (before the prefill became a column of its assertion, issue 18): what the payer prefilled for an order's
#: questionnaires at order-sign, by the coverage assertion made then (the ``context`` a DTR client sends to
#: ``$questionnaire-package``). ``answers`` is ``{questionnaire id: {linkId: [answer JSON]}}``. Still created (empty)
#: and never written now; the readers fall back to it for rows older builds wrote, and retention purges it.
dtr_prefill_table = Table(
    "dtr_prefill",
    metadata,
    Column("assertion_id", Text, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("order_ref", Text, nullable=False),
    Column("patient_ref", Text),
    Column("coverage_ref", Text),
    Column("questionnaires", JSON, nullable=False),
    Column("answers", JSON, nullable=False),
    #: The verified JWT issuer of the hook call (None without JWT checks): only it may fetch the package.
    Column("issuer", Text),
    Index("ix_dtr_prefill_created_at", "created_at"),
    Index("ix_dtr_prefill_order_ref", "order_ref"),
)

#: DTR: the QuestionnaireResponses (and the items of each) whose clinician answers an assertion's decision used.
dtr_answers_used_table = Table(
    "dtr_answers_used",
    metadata,
    Column("assertion_id", Text, nullable=False),
    Column("response_ref", Text, nullable=False),
    Column("link_ids", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("assertion_id", "response_ref", name="pk_dtr_answers_used"),
    Index("ix_dtr_answers_used_created_at", "created_at"),
)

#: DTR: every $questionnaire-package call, linked to the assertion it was for (None when none matched).
dtr_package_requests_table = Table(
    "dtr_package_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("assertion_id", Text),
    Column("order_ref", Text),
    Column("coverage_ref", Text),
    Column("questionnaires", JSON, nullable=False),
    Column("outcome", Text, nullable=False),
    #: The verified JWT issuer of the call (None without JWT checks): the per-issuer daily quota counts these.
    Column("issuer", Text),
    Index("ix_dtr_package_requests_received_at", "received_at"),
    Index("ix_dtr_package_requests_assertion_id", "assertion_id"),
    Index("ix_dtr_package_requests_issuer", "issuer", "received_at"),
)

#: DTR: errors a client reported rendering or running a questionnaire ($log-questionnaire-errors).
questionnaire_errors_table = Table(
    "questionnaire_errors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("questionnaire", Text, nullable=False),
    Column("outcome", JSON, nullable=False),
    Column("issuer", Text),
    Index("ix_questionnaire_errors_received_at", "received_at"),
    Index("ix_questionnaire_errors_issuer", "issuer", "received_at"),
)


def _index(table: Table, name: str) -> Index:
    return next(index for index in table.indexes if index.name == name)


#: Columns added to tables that existed before them; added (nullable) at start-up on an older database.
LATER_COLUMNS = (
    dtr_package_requests_table.c.issuer,
    questionnaire_errors_table.c.issuer,
    assertions_table.c.request_key,
    assertions_table.c.issuer,
    assertions_table.c.dtr_prefill,
)
#: Indexes added to tables that existed before them; created at start-up on an older database (after the columns).
LATER_INDEXES = (
    _index(assertions_table, "ix_coverage_assertions_created_at"),
    _index(assertions_table, "uq_coverage_assertions_retry"),
    _index(assertions_table, "ix_coverage_assertions_prefill_order"),
    _index(dtr_package_requests_table, "ix_dtr_package_requests_issuer"),
    _index(questionnaire_errors_table, "ix_questionnaire_errors_issuer"),
)

#: DTR rows one call may store, and how much of each field: whatever a client sends, a row stays small.
MAX_STORED_TEXT = 200
MAX_STORED_CONTEXT = 64
MAX_STORED_QUESTIONNAIRES = 10
MAX_STORED_ISSUES = 10
MAX_STORED_DIAGNOSTICS = 500
MAX_STORED_OUTCOME_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class CoverageAssertion:
    """One audited coverage decision: what the service asserted about one order, and on which criteria.

    ``criteria`` is a sequence of ``{"id": criterion id, "status": met|not-met|unknown}`` in policy order
    (stored as that JSON list); ``covered``, ``pa_needed`` and ``doc_needed`` carry the CRD
    coverage-information codes the card sent (e.g. "conditional", "auth-needed", "clinical").
    """

    assertion_id: str
    created_at: datetime
    hook_instance: str | None
    service_id: str
    order_ref: str
    patient_ref: str | None
    coverage_ref: str | None
    policy: str
    policy_version: str
    pathway: str | None
    decision: str
    criteria: Sequence[Mapping[str, str]] = ()
    covered: str | None = None
    pa_needed: str | None = None
    doc_needed: str | None = None
    #: DTR: the questionnaires offered for this order and the payer's prefilled answers (questionnaire id ->
    #: linkId -> answers), stored for ``$questionnaire-package``; and the clinician answers this decision used
    #: (QuestionnaireResponse reference -> linkIds).
    dtr_prefill: Mapping[str, Mapping[str, Any]] | None = None
    dtr_answers_used: Mapping[str, Sequence[str]] | None = None
    #: The verified JWT issuer of the call that made the assertion (the EHR allowed to fetch its DTR package).
    issuer: str | None = None
    #: sha256 of the draft order's canonical JSON (``order_digest``): a retry must send the same order.
    order_digest: str | None = None

    def __post_init__(self) -> None:
        _require_aware("created_at", self.created_at)
        # Copy into an immutable, JSON-ready shape; a malformed entry is a programming error, caught here.
        object.__setattr__(self, "criteria", tuple(_criterion(entry) for entry in self.criteria))

    def retry_key(self) -> str:
        """What a retry must repeat to be answered with this assertion's id: caller, patient, coverage, order
        content and the decision itself (a call that would assert something else is not a retry of this one)."""
        fields = (
            self.issuer,
            self.service_id,
            self.patient_ref,
            self.coverage_ref,
            self.order_ref,
            self.order_digest,
            self.policy,
            self.policy_version,
            self.pathway,
            self.decision,
            [[c["id"], c["status"]] for c in self.criteria],
            self.covered,
            self.pa_needed,
            self.doc_needed,
        )
        return hashlib.sha256(orjson.dumps(fields)).hexdigest()


def order_digest(order: Mapping[str, Any]) -> str:
    """sha256 of a resource's canonical JSON (keys sorted, no whitespace): equal for equal content."""
    return hashlib.sha256(orjson.dumps(order, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _criterion(entry: Mapping[str, str]) -> dict[str, str]:
    """A criterion's own copy; a plain dict of two strings (what the handler passes, 14 a call) skips the
    ``Mapping`` ABC check of ``_any_criterion``, which takes everything else."""
    if type(entry) is dict:
        ident, status = entry.get("id"), entry.get("status")
        if type(ident) is str and type(status) is str:
            return {"id": ident, "status": status}
    return _any_criterion(entry)


def _any_criterion(entry: Mapping[str, str]) -> dict[str, str]:
    if (
        not isinstance(entry, Mapping)
        or not isinstance(entry.get("id"), str)
        or not isinstance(entry.get("status"), str)
    ):
        raise TypeError("each criterion must be a mapping with string 'id' and 'status'")
    return {"id": entry["id"], "status": entry["status"]}


def criteria_statuses(evaluation: OrderEvaluation) -> tuple[dict[str, str], ...]:
    """``{"id", "status"}`` of every criterion of an evaluation, depth first, for ``CoverageAssertion``."""
    return tuple({"id": criterion.id, "status": criterion.status.value} for criterion in evaluation.all_criteria())


def normalize_database_url(database_url: str) -> URL:
    """Parse the URL and pick the driver: bare ``postgres://``/``postgresql://`` mean psycopg 3.

    Raises ``ConfigError`` (never echoing the URL, which may hold a password) for anything else.
    """
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        raise ConfigError("DATABASE_URL is not a valid database URL") from None
    if url.drivername in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        return url
    raise ConfigError("DATABASE_URL must be sqlite:///PATH or postgresql://... (psycopg 3 driver)")


def _require_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Own transaction control (pysqlite's implicit BEGIN defers the lock) and make commits crash-safe."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _private_sidecars(path: Path) -> None:
    """The ``-wal``/``-shm`` files no more readable than the database file itself (SQLite copies its mode; this
    holds even where it does not, e.g. a file whose mode was narrowed after the sidecars were made)."""
    try:
        allowed = path.stat().st_mode & 0o777
    except OSError:
        return
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        try:
            mode = sidecar.stat().st_mode & 0o777
            if mode & ~allowed:
                os.chmod(sidecar, mode & allowed)
        except OSError:  # absent (checkpointed away) or not ours: nothing to narrow
            continue


def _sqlite_on_begin(connection: Connection) -> None:
    """Writers lock at BEGIN, so two workers never both read then fail to upgrade; readers don't lock."""
    readonly = connection.get_execution_options().get(_READONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database's folders (0700) and the file itself (0600) before SQLite does.

    The audit holds clinical decisions per patient: other local users must not read it. SQLite creates the
    ``-wal`` and ``-shm`` files with the database file's permissions, so they are private too. An existing
    file keeps the mode its owner gave it.
    """
    if path.is_file():
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:  # a file path is not secret (unlike a PostgreSQL URL): say which one
        if not path.is_file():  # another worker creating it at the same moment is fine
            raise ConfigError(f"cannot create the SQLite database {path}: {exc.strerror or exc}") from None


def _make_engine(url: URL) -> Engine:
    """An engine per dialect: SQLite with the pragmas above, PostgreSQL with liveness checks."""
    json_options: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url, hide_parameters=True, pool_pre_ping=True, connect_args={"connect_timeout": 10}, **json_options
        )
    if _is_memory_sqlite(url):
        engine = create_engine(
            url, hide_parameters=True, poolclass=StaticPool, connect_args={"check_same_thread": False}, **json_options
        )
    else:
        path = Path(str(url.database))
        _prepare_sqlite_file(path)
        engine = create_engine(
            url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **json_options
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "connect", lambda *_: _private_sidecars(path))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _feedback_row(
    service_id: str, item: FeedbackItem, hook_instance: str | None, received_at: datetime
) -> dict[str, Any]:
    reason = item.override_reason.reason if item.override_reason else None
    return {
        "service_id": service_id,
        "card": item.card,
        "outcome": item.outcome,
        "accepted_suggestions": list(item.suggestion_ids),
        "override_code": reason.code if reason else None,
        "override_system": reason.system if reason else None,
        "override_display": reason.display if reason else None,
        "user_comment": item.override_reason.user_comment if item.override_reason else None,
        "outcome_timestamp": item.outcome_timestamp,
        "received_at": received_at,
        "hook_instance": hook_instance,
    }


def _feedback_key(row: Mapping[str, Any]) -> tuple[str, str, str, datetime]:
    return (row["service_id"], row["card"], row["outcome"], row["outcome_timestamp"])


def _unique_sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First of each key, in key order: a stable lock order keeps concurrent PostgreSQL inserts deadlock-free."""
    unique: dict[tuple[str, str, str, datetime], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(_feedback_key(row), row)
    return [unique[key] for key in sorted(unique)]


def _assertion_prefill_columns() -> tuple[Any, ...]:
    """The assertion's columns that make a prefill row, named as ``dtr_prefill``'s (its questionnaires are the
    stored answers' keys, in order: the same list the legacy table kept beside them; ``_prefill_row``)."""
    table = assertions_table
    return (
        table.c.assertion_id,
        table.c.created_at,
        table.c.order_ref,
        table.c.patient_ref,
        table.c.coverage_ref,
        table.c.dtr_prefill.label("answers"),
        table.c.issuer,
    )


def _prefill_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A prefill (assertion or legacy ``dtr_prefill`` row) with its answers as FHIR JSON again (stored compact:
    ``cds_service.dtr.stored``) and the questionnaires it was made for."""
    fields = {str(k): v for k, v in row.items()}
    if "questionnaires" in fields:  # a legacy row: answers as JSON, compact or whole
        answers, questionnaires = stored_prefill.expand(fields["answers"]), fields["questionnaires"]
    else:
        answers = stored_prefill.unpack(bytes(fields["answers"]))
        questionnaires = list(answers)
    return {
        "assertion_id": fields["assertion_id"],
        "created_at": fields["created_at"],
        "order_ref": fields["order_ref"],
        "patient_ref": fields["patient_ref"],
        "coverage_ref": fields["coverage_ref"],
        "questionnaires": questionnaires,
        "answers": answers,
        "issuer": fields["issuer"],
    }


def _json_text(value: Any) -> str:
    """JSON columns as compact text (no spaces), serialised by orjson: non-string keys become strings and NaN null,
    as no stored value has either; anything orjson cannot serialise fails the write, as ``json.dumps`` did."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _assertion_row(assertion: CoverageAssertion) -> dict[str, Any]:
    return {
        "assertion_id": assertion.assertion_id,
        "created_at": assertion.created_at,
        "hook_instance": assertion.hook_instance,
        "service_id": assertion.service_id,
        "order_ref": assertion.order_ref,
        "patient_ref": assertion.patient_ref,
        "coverage_ref": assertion.coverage_ref,
        "policy": assertion.policy,
        "policy_version": assertion.policy_version,
        "pathway": assertion.pathway,
        "decision": assertion.decision,
        "criteria": list(assertion.criteria),  # __post_init__'s own copies: serialised as they are
        "covered": assertion.covered,
        "pa_needed": assertion.pa_needed,
        "doc_needed": assertion.doc_needed,
        "request_key": assertion.retry_key() if assertion.hook_instance is not None else None,
        "issuer": assertion.issuer,
        "dtr_prefill": None if assertion.dtr_prefill is None else stored_prefill.pack(assertion.dtr_prefill),
    }


#: PEP 249 exception classes, most specific first: how SQLAlchemy names a driver error, and so how we do.
_DBAPI_ERRORS = (
    "IntegrityError",
    "DataError",
    "OperationalError",
    "ProgrammingError",
    "NotSupportedError",
    "InternalError",
    "InterfaceError",
    "DatabaseError",
    "Error",
)


def _error_class(exc: BaseException) -> str:
    """The failure's class name; a driver's own exception (``NotNullViolation``) by its PEP 249 class."""
    if isinstance(exc, SQLAlchemyError):
        return type(exc).__name__
    names = {klass.__name__ for klass in type(exc).__mro__}
    return next((name for name in _DBAPI_ERRORS if name in names), type(exc).__name__)


def _log_failure(operation: str, exc: BaseException) -> None:
    """Name the failure without its text: SQLAlchemy messages embed SQL, and driver messages may echo data."""
    # SQLAlchemy wraps the driver's exception (``orig``); the prepared statements raise the driver's own.
    original = getattr(exc, "orig", None) if isinstance(exc, SQLAlchemyError) else exc
    if isinstance(original, _NoRow):
        original = None
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "sqlite_errorname", None)
    log_event(
        logger,
        "storage.failed",
        logging.WARNING,
        operation=operation,
        error_type=_error_class(exc),
        driver_error=type(original).__name__ if original is not None else None,
        sqlstate=sqlstate,
    )


def _values_in_order(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """``[values[name] for name in names]``, as one C call when there are two names or more."""
    if len(names) < 2:
        return lambda values: [values[name] for name in names]
    getter = operator.itemgetter(*names)
    return lambda values: list(getter(values))


class _Prepared:
    """A statement compiled once for the engine's dialect and run on the DBAPI cursor itself.

    The hook call's writes and reads (``record_response``, the JWT replay claim) are a handful of fixed
    statements; SQLAlchemy's per-execution machinery (cache-key walk, execution context, result set-up, events)
    cost more than SQLite itself: 0.70 ms for a typical read + write, 0.16 ms on the cursor. The SQL text, the
    bind order and the bind processors (``UTCDateTime``, JSON) are still SQLAlchemy's, for the dialect in use,
    so what is stored is exactly what the Core path stores and reads back.
    """

    __slots__ = ("_processing", "_values_of", "names", "positional", "processors", "sql")

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else tuple(compiled.binds)
        self.processors: tuple[Callable[[Any], Any] | None, ...] = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self.names
        )
        # The values in bind order, fetched in one C call; then only the few binds with a processor (3 of the
        # assertion's 18) run Python.
        self._values_of = _values_in_order(self.names)
        self._processing = tuple(
            (index, processor) for index, processor in enumerate(self.processors) if processor is not None
        )

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """``values`` (by bind name) in the form the DBAPI takes, each through its type's bind processor."""
        processed = self._values_of(values)
        for index, processor in self._processing:
            processed[index] = processor(processed[index])
        return processed if self.positional else dict(zip(self.names, processed))


class _NoRow(LookupError):
    """A statement that must find a row found none."""


class _Run:
    """Runs prepared statements by name on one DBAPI cursor, inside ``Store._cursor_transaction``."""

    __slots__ = ("_cursor", "_prepared")

    def __init__(self, cursor: Any, prepared: Callable[[str], _Prepared]) -> None:
        self._cursor = cursor
        self._prepared = prepared

    def execute(self, name: str, values: Mapping[str, Any]) -> Any:
        """The cursor after running statement ``name``: ``rowcount`` for a write, ``fetchall()`` for a read."""
        statement = self._prepared(name)
        self._cursor.execute(statement.sql, statement.parameters(values))
        return self._cursor

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        statement = self._prepared(name)
        if len(rows) == 1:  # one card per answer: the cursor's executemany machinery buys nothing
            self._cursor.execute(statement.sql, statement.parameters(rows[0]))
            return
        self._cursor.executemany(statement.sql, [statement.parameters(row) for row in rows])

    def one(self, name: str, values: Mapping[str, Any]) -> Sequence[Any]:
        row = self.execute(name, values).fetchone()
        if row is None:
            raise _NoRow(name)
        return tuple(row)


def _insert_ignoring(table: Table) -> Callable[[str], Any]:
    def build(dialect: str) -> Any:
        return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).on_conflict_do_nothing()

    return build


#: The statements run on every hook call (``record_response``, ``claim``), by name; compiled
#: once per store.
_HOT_STATEMENTS: dict[str, Callable[[str], Any]] = {
    "insert_assertion": _insert_ignoring(assertions_table),
    "insert_issued_card": _insert_ignoring(issued_cards_table),
    "insert_dtr_answers_used": _insert_ignoring(dtr_answers_used_table),
    "assertion_id_for_retry": lambda _: select(assertions_table.c.assertion_id).where(
        (assertions_table.c.hook_instance == bindparam("hook_instance"))
        & (assertions_table.c.order_ref == bindparam("order_ref"))
        & (assertions_table.c.request_key == bindparam("request_key"))
    ),
    # Every authenticated call (``claim``): the JWT replay guard.
    "insert_replay": _insert_ignoring(replay_table),
    "take_over_stale_replay": lambda _: (
        update(replay_table)
        .where(
            (replay_table.c.issuer == bindparam("issuer"))
            & (replay_table.c.jti == bindparam("jti"))
            & (replay_table.c.expires_at < bindparam("now", type_=replay_table.c.expires_at.type))
        )
        .values(expires_at=bindparam("new_expires_at", type_=replay_table.c.expires_at.type))
    ),
}


def _add_later_columns(connection: Connection) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``LATER_COLUMNS`` its table lacks (nullable, so old rows keep)."""
    inspector = inspect(connection)
    preparer = connection.dialect.identifier_preparer
    for later in LATER_COLUMNS:
        name = later.table.name
        if later.name in {c["name"] for c in inspector.get_columns(name)}:
            continue
        kind = later.type.compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE {preparer.quote(name)} ADD COLUMN {preparer.quote(later.name)} {kind}")


def _clip(value: Any, limit: int = MAX_STORED_TEXT) -> str | None:
    """A string cut to ``limit`` characters (anything else: None), for DTR fields a client controls."""
    return value[:limit] if isinstance(value, str) else None


def _stored_issue(issue: Any) -> dict[str, Any]:
    """The parts of an OperationOutcome issue worth keeping, each cut short; the rest is dropped."""
    source = issue if isinstance(issue, Mapping) else {}
    details = source.get("details")
    expression = source.get("expression")
    kept: dict[str, Any] = {
        "severity": _clip(source.get("severity"), 20) or "error",
        "code": _clip(source.get("code"), 40) or "processing",
        "diagnostics": _clip(source.get("diagnostics"), MAX_STORED_DIAGNOSTICS),
        "details": {"text": _clip(details.get("text"))} if isinstance(details, Mapping) else None,
        "expression": [_clip(e, 100) for e in expression[:3] if isinstance(e, str)]
        if isinstance(expression, list)
        else None,
    }
    return {key: value for key, value in kept.items() if value not in (None, [], {"text": None})}


def stored_outcome(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """A client's OperationOutcome as stored: at most ``MAX_STORED_ISSUES`` issues, fields cut short, and never
    more than ``MAX_STORED_OUTCOME_BYTES`` of JSON; what was dropped is counted in a closing issue."""
    issues = outcome.get("issue")
    given = [_stored_issue(issue) for issue in (issues if isinstance(issues, list) else [])[:MAX_STORED_ISSUES]]
    total = len(issues) if isinstance(issues, list) else 0
    while True:
        kept = list(given)
        if total > len(kept):
            dropped = f"{total - len(kept)} more issue(s) not stored"
            kept.append({"severity": "information", "code": "informational", "diagnostics": dropped})
        stored = {"resourceType": "OperationOutcome", "issue": kept}
        if len(orjson.dumps(stored)) <= MAX_STORED_OUTCOME_BYTES or not given:
            return stored
        given.pop()


def _utc_midnight(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class Store:
    """The service's only database access; safe to share between threads, one instance per worker process."""

    #: Seconds between purges of expired replay-guard rows (per process; a purge is one indexed DELETE).
    replay_purge_interval: float = 300.0

    def __init__(self, database_url: str) -> None:
        self._url = normalize_database_url(database_url)
        self._dialect = self._url.get_backend_name()
        self._engine = _make_engine(self._url)
        # One shared in-memory connection must not interleave two threads' transactions.
        self._lock: AbstractContextManager[Any] = threading.Lock() if _is_memory_sqlite(self._url) else nullcontext()
        self._last_purge = float("-inf")
        self._last_retention_purge = float("-inf")
        self._prepared: dict[str, _Prepared] = {}
        self._checkpoints: threading.Event | None = None  # set to stop the background checkpoints
        self.checkpoints_done = 0
        #: A SQLite file's connections for the per-call statements (``_cursor_transaction``), idle ones here.
        self._spares: list[Any] | None = None if self._dialect != "sqlite" or _is_memory_sqlite(self._url) else []
        self._create_schema()
        if self._dialect == "sqlite" and not _is_memory_sqlite(self._url):
            _private_sidecars(Path(str(self._url.database)))
        if not _is_memory_sqlite(self._url):
            # Hold no connection: an app built before gunicorn forks must not hand one socket to every worker.
            self._engine.dispose()
        if self._dialect == "sqlite" and not _is_memory_sqlite(self._url):
            event.listen(self._engine, "connect", self._sqlite_autocheckpoint)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._dialect

    @contextmanager
    def _transaction(self, operation: str, *, readonly: bool = False) -> Iterator[Connection]:
        """One committed transaction; any database failure becomes a generic ``StorageError``."""
        try:
            with self._lock, self._engine.connect() as connection:
                if readonly:
                    connection.execution_options(**{_READONLY_OPTION: True})
                with connection.begin():
                    yield connection
        except SQLAlchemyError as exc:
            _log_failure(operation, exc)
            raise StorageError(GENERIC_FAILURE) from None

    @contextmanager
    def _cursor_transaction(self, operation: str, *, readonly: bool = False) -> Iterator[_Run]:
        """``_transaction`` on the pooled DBAPI connection itself, for the prepared statements (``_Prepared``).

        SQLite: a write takes the lock at ``BEGIN IMMEDIATE``, as ``_sqlite_on_begin`` does; a read is one statement,
        which SQLite runs as its own transaction (one consistent snapshot). PostgreSQL: psycopg opens the transaction
        with the first statement. Committed before returning; rolled back on any failure, which surfaces as the same
        generic ``StorageError`` (logged by type only) as on the Core path.
        """
        dialect = self._engine.dialect
        driver_error = dialect.loaded_dbapi.Error
        spares = self._spares
        try:
            with self._lock:
                connection = self._checkout(spares)
                cursor = None
                try:
                    cursor = connection.cursor()
                    if self._dialect == "sqlite" and not readonly:
                        cursor.execute("BEGIN IMMEDIATE")
                    yield _Run(cursor, self._prepared_statement)
                    connection.commit()
                except BaseException as exc:
                    try:
                        connection.rollback()
                    except driver_error:
                        pass
                    if isinstance(exc, driver_error) and dialect.is_disconnect(
                        exc, connection.dbapi_connection, cursor
                    ):
                        connection.invalidate()  # a dead PostgreSQL session is not handed out again
                    raise
                finally:
                    if cursor is not None:
                        cursor.close()
                    self._checkin(connection, spares)
        except (SQLAlchemyError, driver_error, _NoRow) as exc:
            _log_failure(operation, exc)
            raise StorageError(GENERIC_FAILURE) from None

    def _checkout(self, spares: list[Any] | None) -> Any:
        """A connection for ``_cursor_transaction``: from the pool, or for a SQLite file an idle one of its own.

        The pool's checkout and return (a queue under a condition variable, a weakref finalizer, a rollback on
        return) cost about a tenth of the audit write (py-spy, acceptance request); a SQLite file's transaction
        needs none of it: it begins and ends here, and a SQLite connection has no session to ping. So these
        connections are taken from the pool once, detached from it, and kept idle in ``spares`` (at most one per
        thread that writes at the same moment). PostgreSQL and in-memory SQLite keep the pool (pre-ping, the one
        shared connection).
        """
        if spares is None:
            return self._engine.raw_connection()
        try:
            return spares.pop()
        except IndexError:
            connection = self._engine.raw_connection()  # opened (with the engine's connect listeners) by the pool
            connection.detach()
            return connection

    def _checkin(self, connection: Any, spares: list[Any] | None) -> None:
        """Back to the pool, or idle again; one that failed (invalidated) or outlived a ``dispose`` is closed."""
        if spares is not None and spares is self._spares and connection.is_valid:
            spares.append(connection)
        else:
            connection.close()

    def _prepared_statement(self, name: str) -> _Prepared:
        """The hot-path statement ``name`` compiled for this engine (once; the dialect is initialised by then)."""
        prepared = self._prepared.get(name)
        if prepared is None:
            prepared = self._prepared[name] = _Prepared(_HOT_STATEMENTS[name](self._dialect), self._engine.dialect)
        return prepared

    def _insert_ignoring_duplicates(self, table: Table) -> Insert:
        """``INSERT ... ON CONFLICT DO NOTHING`` in the current dialect; its rowcount is the rows inserted.

        Built once per table and executed with parameters (never ``.values(rows)``): the same statement object lets
        SQLAlchemy reuse its compiled form instead of rebuilding and recompiling it inside the write lock on every
        call (a profile found that cost 12-21 % of a hook call's server CPU).
        """
        cache: dict[str, Insert] = self.__dict__.setdefault("_insert_cache", {})
        statement = cache.get(table.name)
        if statement is None:
            dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
            # SQLAlchemy keeps an INSERT's rowcount only when asked (psycopg reports it, the result drops it).
            statement = dialect_insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
            cache[table.name] = statement
        return statement

    def _create_schema(self) -> None:
        """Create missing tables; workers starting together are serialised (advisory lock / BEGIN IMMEDIATE)."""
        for attempt in range(1, SCHEMA_CREATE_ATTEMPTS + 1):
            try:
                with self._transaction("schema creation") as connection:
                    if self._dialect == "postgresql":
                        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
                    metadata.create_all(connection)
                    # An older database has the tables but not the columns and indexes added since: add those too.
                    _add_later_columns(connection)
                    for index in LATER_INDEXES:
                        index.create(connection, checkfirst=True)
                    for name in SUPERSEDED_INDEXES:
                        connection.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
                return
            except StorageError:
                if attempt == SCHEMA_CREATE_ATTEMPTS:
                    raise
                time.sleep(0.1 * 2**attempt)

    def record_feedback(self, service_id: str, items: list[FeedbackItem], hook_instance: str | None = None) -> int:
        """Store feedback once per (service, card, outcome, instant); returns how many rows are new."""
        if not items:
            return 0
        received_at = _utcnow()
        rows = _unique_sorted([_feedback_row(service_id, item, hook_instance, received_at) for item in items])
        with self._transaction("feedback write") as connection:
            result = connection.execute(self._insert_ignoring_duplicates(feedback_table).values(rows))
            return int(result.rowcount)

    def list_feedback(self, service_id: str | None = None) -> list[dict[str, Any]]:
        """Stored feedback in arrival order, optionally for one service."""
        query = select(feedback_table).order_by(feedback_table.c.id)
        if service_id is not None:
            query = query.where(feedback_table.c.service_id == service_id)
        with self._transaction("feedback read", readonly=True) as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def record_assertions(self, assertions: Sequence[CoverageAssertion]) -> dict[str, str]:
        """Store a response's assertions in one transaction; returns order_ref -> the stored assertion id."""
        return self.record_response(service_id=None, hook_instance=None, card_uuids=(), assertions=assertions)

    def record_response(
        self,
        *,
        service_id: str | None,
        hook_instance: str | None,
        card_uuids: Sequence[str],
        assertions: Sequence[CoverageAssertion],
    ) -> dict[str, str]:
        """Record what one hook answer issued: its card uuids and its coverage assertions, in one transaction.

        One assertion per (hookInstance, order, ``retry_key``): a retried call (same hookInstance, caller, patient,
        order content and decision) stores nothing new for an order already asserted, and the returned map
        (order_ref -> assertion id) gives the id stored the first time, so the client sees one stable
        ``coverage-assertion-id``. Any other call reusing the hookInstance stores and gets an assertion of its own:
        no caller is ever answered with another's id. Re-recording an id is a no-op too. When a returned id is not
        the one proposed, the cards (which cite the proposed id) are not recorded: the caller renders them again with
        the returned ids and records those.
        """
        now = _utcnow()
        ids: dict[str, str] = {}
        if not assertions and not card_uuids:
            return ids
        with self._cursor_transaction("assertion write") as run:
            for assertion in assertions:
                ids[assertion.order_ref] = self._record_assertion(run, assertion)
            retried = any(ids[a.order_ref] != a.assertion_id for a in assertions)
            if card_uuids and service_id is not None and not retried:
                rows = [
                    {"card_uuid": card, "service_id": service_id, "hook_instance": hook_instance, "issued_at": now}
                    for card in sorted(set(card_uuids))
                ]
                run.many("insert_issued_card", rows)
        return ids

    def _record_assertion(self, run: _Run, assertion: CoverageAssertion) -> str:
        row = _assertion_row(assertion)
        if run.execute("insert_assertion", row).rowcount != 1 and row["request_key"] is not None:
            # A conflict on the retry key (``uq_coverage_assertions_retry``): the first call's assertion stands.
            # (A conflict on the assertion id alone finds nothing here: re-recording an id is a no-op, as below.)
            where = {key: row[key] for key in ("hook_instance", "order_ref", "request_key")}
            found = run.execute("assertion_id_for_retry", where).fetchone()
            if found is not None:
                return str(found[0])
        if assertion.dtr_answers_used:
            used = [
                {
                    "assertion_id": assertion.assertion_id,
                    "response_ref": ref,
                    "link_ids": list(link_ids),
                    "created_at": assertion.created_at,
                }
                for ref, link_ids in assertion.dtr_answers_used.items()
            ]
            run.many("insert_dtr_answers_used", used)
        return assertion.assertion_id

    # -- DTR ---------------------------------------------------------------------------------

    def dtr_prefill(self, assertion_id: str) -> dict[str, Any] | None:
        """What was prefilled for the order of one coverage assertion, or None when it offered no questionnaire.

        Read from the assertion's own row; one an older build made has its prefill in ``dtr_prefill`` instead.
        """
        table = assertions_table
        query = select(*_assertion_prefill_columns()).where(
            (table.c.assertion_id == assertion_id) & table.c.dtr_prefill.is_not(None)
        )
        legacy = select(dtr_prefill_table).where(dtr_prefill_table.c.assertion_id == assertion_id)
        with self._transaction("dtr prefill read", readonly=True) as connection:
            row = connection.execute(query).first() or connection.execute(legacy).first()
        return _prefill_row(row._mapping) if row is not None else None

    def latest_dtr_prefill(
        self, order_refs: Sequence[str], patient_ref: str | None, *, issuer: str | None = None, own: bool = False
    ) -> dict[str, Any] | None:
        """The most recent prefill for any of the orders (a DTR client that sends no context, only its orders).

        One indexed ``IN`` query on the assertions (``ix_coverage_assertions_prefill_order``) and one on the legacy
        ``dtr_prefill`` rows of older builds, whatever the number of orders; the newer of the two wins. ``own``: only
        the prefills made for ``issuer``'s hook calls (JWT checks on; a prefill stored without an issuer then belongs
        to nobody).
        """
        if not order_refs or (own and issuer is None):
            return None
        refs = list(dict.fromkeys(order_refs))
        rows = []
        with self._transaction("dtr prefill read", readonly=True) as connection:
            for table, columns in (
                (assertions_table, _assertion_prefill_columns()),
                (dtr_prefill_table, tuple(dtr_prefill_table.c)),
            ):
                query = select(*columns).where(table.c.order_ref.in_(refs))
                if table is assertions_table:
                    query = query.where(table.c.dtr_prefill.is_not(None))
                if patient_ref:
                    query = query.where(table.c.patient_ref == patient_ref)
                if own:
                    query = query.where(table.c.issuer == issuer)
                row = connection.execute(query.order_by(table.c.created_at.desc()).limit(1)).first()
                if row is not None:
                    rows.append(row._mapping)
        latest = max(rows, key=lambda row: row["created_at"], default=None)  # first (the assertion's) on a tie
        return _prefill_row(latest) if latest is not None else None

    def record_package_request(
        self,
        *,
        assertion_id: str | None,
        order_ref: str | None,
        coverage_ref: str | None,
        questionnaires: Sequence[str],
        outcome: str,
        issuer: str | None = None,
    ) -> None:
        """Audit one ``$questionnaire-package`` call; every client-given field is cut short (``MAX_STORED_*``)."""
        row = {
            "received_at": _utcnow(),
            "assertion_id": _clip(assertion_id, MAX_STORED_CONTEXT),
            "order_ref": _clip(order_ref),
            "coverage_ref": _clip(coverage_ref),
            "questionnaires": [_clip(q) for q in questionnaires[:MAX_STORED_QUESTIONNAIRES]],
            "outcome": _clip(outcome, 64) or "",
            "issuer": issuer,
        }
        with self._transaction("dtr package request write") as connection:
            connection.execute(dtr_package_requests_table.insert(), row)

    def record_questionnaire_errors(
        self, questionnaire: str, outcomes: Sequence[Mapping[str, Any]], *, issuer: str | None = None
    ) -> int:
        """Store a client's error reports, each reduced by ``stored_outcome``; returns how many were stored."""
        now = _utcnow()
        rows = [
            {
                "received_at": now,
                "questionnaire": _clip(questionnaire, 500) or "",
                "outcome": stored_outcome(o),
                "issuer": issuer,
            }
            for o in outcomes
        ]
        if not rows:
            return 0
        with self._transaction("questionnaire error write") as connection:
            connection.execute(questionnaire_errors_table.insert(), rows)
        return len(rows)

    def dtr_rows_today(self, issuer: str | None, *, now: datetime | None = None) -> int:
        """DTR rows (package requests and error reports) stored for ``issuer`` since 00:00 UTC: the daily quota.

        Without JWT checks (``issuer`` None) every caller shares one count.
        """
        since = _utc_midnight(now or _utcnow())
        total = 0
        with self._transaction("dtr quota read", readonly=True) as connection:
            for table in (dtr_package_requests_table, questionnaire_errors_table):
                mine = table.c.issuer == issuer if issuer is not None else table.c.issuer.is_(None)
                query = select(func.count()).select_from(table).where(mine & (table.c.received_at >= since))
                total += int(connection.execute(query).scalar_one())
        return total

    def dtr_audit(self, assertion_id: str) -> dict[str, list[dict[str, Any]]]:
        """Everything DTR stored about one assertion: package requests and the answers its decision used."""
        with self._transaction("dtr audit read", readonly=True) as connection:
            requests = connection.execute(
                select(dtr_package_requests_table).where(dtr_package_requests_table.c.assertion_id == assertion_id)
            )
            package_requests = [dict(r._mapping) for r in requests]
            used = connection.execute(
                select(dtr_answers_used_table).where(dtr_answers_used_table.c.assertion_id == assertion_id)
            )
            answers_used = [dict(r._mapping) for r in used]
        return {"package_requests": package_requests, "answers_used": answers_used}

    def questionnaire_errors(self) -> list[dict[str, Any]]:
        with self._transaction("questionnaire error read", readonly=True) as connection:
            rows = connection.execute(select(questionnaire_errors_table).order_by(questionnaire_errors_table.c.id))
            return [dict(r._mapping) for r in rows]

    def assertion_ids_for(self, hook_instance: str, order_refs: Sequence[str]) -> dict[str, str]:
        """Audit: order_ref -> the earliest assertion stored under this hookInstance, whoever made it.

        Not for answering a call: a retry finds its assertion through ``record_response`` (``retry_key``).
        """
        if not order_refs:
            return {}
        table = assertions_table
        query = (
            select(table.c.order_ref, table.c.assertion_id)
            .where((table.c.hook_instance == hook_instance) & table.c.order_ref.in_(list(set(order_refs))))
            .order_by(table.c.created_at.desc())
        )
        with self._transaction("assertion read", readonly=True) as connection:
            return {str(row.order_ref): str(row.assertion_id) for row in connection.execute(query)}

    def unknown_cards(self, service_id: str, card_uuids: Sequence[str]) -> list[str]:
        """The uuids among ``card_uuids`` this service never issued (in the order given, once each)."""
        wanted = list(dict.fromkeys(card_uuids))
        if not wanted:
            return []
        query = select(issued_cards_table.c.card_uuid).where(
            (issued_cards_table.c.service_id == service_id) & issued_cards_table.c.card_uuid.in_(wanted)
        )
        with self._transaction("issued card read", readonly=True) as connection:
            known = {str(row.card_uuid) for row in connection.execute(query)}
        return [card for card in wanted if card not in known]

    def purge(self, retention_days: int, *, now: datetime | None = None) -> dict[str, int]:
        """Delete what is older than ``retention_days`` (0 keeps it forever) and every expired replay row.

        Returns rows deleted per kind: ``feedback``, ``coverage_assertions`` (with their retry keys and prefills),
        ``issued_cards``, ``dtr`` (older builds' prefill rows, answers used, package requests, questionnaire errors),
        ``jwt_replay``. One transaction, so a failure deletes nothing.
        """
        now = now or _utcnow()
        counts = {"feedback": 0, "coverage_assertions": 0, "issued_cards": 0, "dtr": 0, "jwt_replay": 0}
        with self._transaction("purge") as connection:
            if retention_days > 0:
                cutoff = now - timedelta(days=retention_days)
                counts["feedback"] = int(
                    connection.execute(delete(feedback_table).where(feedback_table.c.received_at < cutoff)).rowcount
                )
                counts["coverage_assertions"] = int(
                    connection.execute(delete(assertions_table).where(assertions_table.c.created_at < cutoff)).rowcount
                )
                for legacy in (legacy_assertion_retries, legacy_assertion_keys):
                    if inspect(connection).has_table(legacy.name):
                        connection.execute(delete(legacy).where(legacy.c.created_at < cutoff))
                counts["issued_cards"] = int(
                    connection.execute(
                        delete(issued_cards_table).where(issued_cards_table.c.issued_at < cutoff)
                    ).rowcount
                )
                counts["dtr"] = sum(
                    int(connection.execute(delete(table).where(column < cutoff)).rowcount)
                    for table, column in (
                        (dtr_prefill_table, dtr_prefill_table.c.created_at),
                        (dtr_answers_used_table, dtr_answers_used_table.c.created_at),
                        (dtr_package_requests_table, dtr_package_requests_table.c.received_at),
                        (questionnaire_errors_table, questionnaire_errors_table.c.received_at),
                    )
                )
            counts["jwt_replay"] = int(
                connection.execute(delete(replay_table).where(replay_table.c.expires_at < now)).rowcount
            )
        self._last_retention_purge = time.monotonic()
        return counts

    def purge_if_due(self, retention_days: int, interval_seconds: float = 86_400.0) -> dict[str, int] | None:
        """``purge`` at most once per interval per process (the opportunistic retention); never raises."""
        clock = time.monotonic()
        if clock - self._last_retention_purge < interval_seconds:
            return None
        self._last_retention_purge = clock
        try:
            counts = self.purge(retention_days)
        except StorageError:
            return None  # logged by _transaction; the next interval tries again
        log_event(logger, "storage.purge", retention_days=retention_days, **counts)
        return counts

    def get_assertion(self, assertion_id: str) -> dict[str, Any] | None:
        """One audited assertion by id (criteria as a list of {id, status}), or None."""
        internal = (assertions_table.c.request_key, assertions_table.c.issuer, assertions_table.c.dtr_prefill)
        audited = [column for column in assertions_table.c if not any(column is c for c in internal)]
        query = select(*audited).where(assertions_table.c.assertion_id == assertion_id)
        with self._transaction("assertion read", readonly=True) as connection:
            row = connection.execute(query).first()
        return dict(row._mapping) if row is not None else None

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (issuer, jti) is seen before ``expires_at``; False for a replay.

        Pass the token's ``exp`` plus the clock leeway: after ``expires_at`` the pair may be claimed again
        (the JWT layer rejects the expired token itself).
        """
        _require_aware("expires_at", expires_at)
        now = _utcnow()
        self._purge_expired_claims(now)
        with self._cursor_transaction("replay claim") as run:
            if run.execute("insert_replay", {"issuer": issuer, "jti": jti, "expires_at": expires_at}).rowcount == 1:
                return True
            # The pair is known; only a stale (expired, not yet purged) row may be taken over.
            stale = {"issuer": issuer, "jti": jti, "now": now, "new_expires_at": expires_at}
            return bool(run.execute("take_over_stale_replay", stale).rowcount == 1)

    def _purge_expired_claims(self, now: datetime) -> None:
        """Delete expired replay rows at most once per interval, so the table stays as small as the window."""
        clock = time.monotonic()
        if clock - self._last_purge < self.replay_purge_interval:
            return
        self._last_purge = clock
        with self._transaction("replay purge") as connection:
            connection.execute(delete(replay_table).where(replay_table.c.expires_at < now))

    def ping(self) -> bool:
        """Whether the database answers a trivial query (for /healthz); never raises."""
        try:
            with self._transaction("ping", readonly=True) as connection:
                return bool(connection.execute(select(1)).scalar_one() == 1)
        except StorageError:
            return False

    def start_background_checkpoints(self, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> bool:
        """SQLite file: copy the WAL into the database from a daemon thread of this process, not in a request.

        Left to SQLite, the commit that takes the WAL past 1000 pages checkpoints it there and then: about 1000 pages
        copied and two fsyncs, 5-10 ms on the request that happens to cross the mark (one hook call in ~100, as each
        writes about 10 pages). Here a thread runs a PASSIVE checkpoint every ``interval`` seconds (it waits for no
        lock; readers and writers carry on), and connections opened afterwards checkpoint by themselves only past
        ``WAL_BACKSTOP_PAGES``, which bounds the WAL should the thread stall. Durability is unchanged: a commit is
        durable in the WAL (``synchronous=NORMAL``) whether or not it has been checkpointed. Call it in each process
        that serves (gunicorn's ``post_fork``: threads do not survive a fork). False for other databases.
        """
        if self._dialect != "sqlite" or _is_memory_sqlite(self._url):
            return False
        if self._checkpoints is not None and not self._checkpoints.is_set():
            return True
        stop = self._checkpoints = threading.Event()
        thread = threading.Thread(target=self._checkpoint_loop, args=(stop, interval), name="sqlite-checkpoints")
        thread.daemon = True
        thread.start()
        return True

    def _checkpoint_loop(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            self.checkpoint()

    def checkpoint(self) -> bool:
        """One PASSIVE WAL checkpoint (SQLite file); True when it ran. Never raises: the next one retries."""
        if self._dialect != "sqlite" or _is_memory_sqlite(self._url):
            return False
        try:
            connection = self._engine.raw_connection()
            try:
                connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint loses nothing; the backstop bounds the WAL
            _log_failure("checkpoint", exc)
            return False
        self.checkpoints_done += 1
        return True

    def _sqlite_autocheckpoint(self, dbapi_connection: Any, _record: Any) -> None:
        """A new connection of a process that checkpoints in the background leaves checkpoints to it."""
        if self._checkpoints is not None and not self._checkpoints.is_set():
            dbapi_connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")

    def dispose(self, *, close: bool = True) -> None:
        """Drop pooled connections: at shutdown, or with ``close=False`` in a forked child.

        ``close=False`` forgets the parent's connections without closing them, which would end the
        parent's PostgreSQL sessions (SQLAlchemy's documented recipe for ``os.fork``). Background checkpoints stop
        at shutdown (a forked child never had the parent's thread).
        """
        if close and self._checkpoints is not None:
            self._checkpoints.set()
        elif not close:
            self._checkpoints = None
        if self._spares is not None:
            spares, self._spares = self._spares, []
            for connection in spares if close else ():
                connection.close()
        self._engine.dispose(close=close)
