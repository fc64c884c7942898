"""Service configuration: one frozen object, read from environment variables with embedded defaults.

Two classes, on purpose:

* ``Settings`` (a ``pydantic_settings.BaseSettings`` model) is the environment parsed: one field per variable of
  the README's configuration table, each with the exact variable name as its alias (case-sensitive, as the
  environment is). Parsing is strict: an integer setting is digits only (``2.9``, ``8080.9``, ``1e3``, ``8080x``
  and ``two`` are refused, not truncated), a number is a finite decimal, a boolean is one of
  true/false/1/0/yes/no/on/off, lists are comma-separated, ``CDS_TRUSTED_ISSUERS`` / ``CDS_PLAN_PREFIXES`` are
  JSON objects. A blank variable counts as unset. No ``.env`` file and no secrets directory are read.
* ``Config`` stays a frozen dataclass with the same attributes and defaults as before, so tests and callers
  build ``Config(database_url=..., trusted_issuers=...)`` by field name, without any environment, and nothing
  is parsed or validated there (``Config.validate`` runs in ``from_env``, as it always did).

``Config.from_env(environ=None, **overrides)`` is the only place that reads the environment: it parses
``environ`` (``os.environ`` by default) through ``Settings``, with the non-None keyword overrides (the CLI flags)
on top, parsed the same way; every refusal is a ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_PLAN_PREFIXES: dict[str, str] = {"MCD-": "medicaid", "HIM-": "him", "COM-": "commercial"}
DATABASE_FILE = Path("priorauth-cds") / "priorauth-cds.sqlite3"


def default_database_url(environ: Mapping[str, str]) -> str:
    """``sqlite:///$XDG_DATA_HOME/priorauth-cds/priorauth-cds.sqlite3`` (``~/.local/share`` when unset).

    Outside the working tree, so the audit database and its ``-wal``/``-shm`` files never end up in a commit
    and survive a fresh clone. A relative ``XDG_DATA_HOME`` is ignored, as the XDG specification says.
    """
    data_home = (environ.get("XDG_DATA_HOME") or "").strip()
    if data_home and Path(data_home).is_absolute():
        base = Path(data_home)
    else:
        home = (environ.get("HOME") or "").strip()
        base = (Path(home) if home else Path.home()) / ".local" / "share"
    return f"sqlite:///{base / DATABASE_FILE}"


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; raised at start-up, never per request."""


def issuer_settings(value: Any) -> tuple[Any, tuple[str, ...]]:
    """(JWKS URL or inline JWKS, FHIR server allow-list) of one ``CDS_TRUSTED_ISSUERS`` value.

    Accepted forms: ``"https://.../jwks.json"``, ``{"keys": [...]}``, and
    ``{"jwks": <either of those>, "fhirServers": ["https://ehr.example/fhir", ...]}``.
    """
    if isinstance(value, dict) and "jwks" in value:
        servers = value.get("fhirServers", [])
        if not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers):
            raise ConfigError("fhirServers must be a list of FHIR base URLs")
        return value["jwks"], tuple(servers)
    return value, ()


#: The SMART scopes the DTR routes understand (``cds_service.smart`` checks them per route).
DTR_SCOPES: tuple[str, ...] = ("system/Questionnaire.rs", "system/QuestionnaireResponse.c", "system/ValueSet.rs")
SCOPE_PATTERN = re.compile(r"system/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*|(?=[cruds])c?r?u?d?s?)")


def dtr_client_settings(client_id: Any, value: Any, issuers: Mapping[str, Any]) -> tuple[Any, tuple[str, ...], str]:
    """(JWKS URL or inline JWKS, allowed scopes, EHR issuer) of one ``CDS_DTR_CLIENTS`` entry, checked.

    A client acts for one trusted issuer, so its calls see exactly what that EHR's own hook calls made.
    """
    name = f"CDS_DTR_CLIENTS {client_id!r}"
    if not isinstance(client_id, str) or not client_id or len(client_id) > 256:
        raise ConfigError("CDS_DTR_CLIENTS keys must be client ids (1 to 256 characters)")
    if not isinstance(value, dict) or set(value) - {"jwks", "scopes", "issuer"}:
        raise ConfigError(f"{name}: must be an object with jwks, scopes and issuer (nothing else)")
    keys, scopes, issuer = value.get("jwks"), value.get("scopes"), value.get("issuer")
    if not (isinstance(keys, str) and _is_http_url(keys)) and not (
        isinstance(keys, dict) and isinstance(keys.get("keys"), list)
    ):
        raise ConfigError(f"{name}: jwks must be an http(s) JWKS URL or an inline JWKS object")
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and SCOPE_PATTERN.fullmatch(s) for s in scopes)
    ):
        raise ConfigError(f"{name}: scopes must be a non-empty list of system/<Resource>.<permissions> scopes")
    if not isinstance(issuer, str) or issuer not in issuers:
        raise ConfigError(f"{name}: issuer must be one of CDS_TRUSTED_ISSUERS (the EHR the client acts for)")
    return keys, tuple(scopes), issuer


@dataclass(frozen=True)
class Config:
    """Everything the app needs; defaults are safe for a developer machine on loopback."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    #: issuer -> JWKS URL (str), inline JWKS (dict with "keys"), or {"jwks": URL or inline JWKS,
    #: "fhirServers": [base URL, ...]} (the FHIR servers the fallback may call for that issuer's tokens).
    trusted_issuers: Mapping[str, Any] = field(default_factory=dict)
    #: Without issuers (development): FHIR servers the fallback may call besides loopback ones.
    fhir_servers: tuple[str, ...] = ()
    #: Proxy for the FHIR fallback and JWKS fetches (environment proxies and .netrc are never used).
    http_proxy: str | None = None
    #: Run without JWT checks on a non-loopback bind (off: refuse to start).
    allow_unauthenticated: bool = False
    #: Public base URL (scheme://host[:port][/prefix]) used for the JWT ``aud`` behind a proxy.
    public_base_url: str | None = None
    jwt_leeway_seconds: int = 30
    #: Longest JWT lifetime accepted (exp - iat), which also bounds the replay window.
    jwt_max_lifetime_seconds: int = 3600
    jwks_timeout_seconds: float = 2.0
    max_body_bytes: int = 5 * 1024 * 1024
    fhir_budget_seconds: float = 3.0
    fhir_connect_timeout_seconds: float = 1.0
    fhir_max_pages: int = 10
    fhir_max_response_bytes: int = 20 * 1024 * 1024
    #: FHIR bytes one hook call may read across all keys and pages (fetched in parallel); past it the keys still
    #: fetching fail with ``call-budget`` (their criteria stay unknown). Keeps a worker's RSS bounded.
    fhir_max_call_bytes: int = 8 * 1024 * 1024
    #: gunicorn threads per worker process (``cds_service/server.py``).
    threads: int = 4
    #: ``buffered`` (``cds_service/server.py``); ``sync`` only to compare in benchmarks (slow clients stall it).
    worker_class: str = "buffered"
    #: Seconds a client has to send its request head, and then its body (slow clients get a 408 and are closed).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    #: Connections one client address may hold open per worker process (0: no cap); behind a proxy, raise it
    #: above the proxy's own connection count (README "Production topology").
    max_connections_per_client: int = 64
    #: Serve GET /metrics (Prometheus): to loopback clients without proxy headers, or with CDS_METRICS_TOKEN.
    metrics: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    #: Resources read per prefetch key; a key with more is treated as unobtainable (its criteria stay unknown)
    #: so processing, which the FHIR budget does not bound, stays bounded too.
    max_resources_per_key: int = 10_000
    #: SQLite file (created 0600 with its folders) or PostgreSQL URL; see ``default_database_url``.
    database_url: str = field(default_factory=lambda: default_database_url(os.environ))
    #: Allowed CORS origins; None: loopback origins without issuers, "*" with issuers.
    cors_origins: tuple[str, ...] | None = None
    insurer_name: str = "Centene Health Plan"
    #: Card link to the policy document; the policy file's document_url when unset.
    policy_url: str | None = None
    #: Launch URL of the EHR's DTR SMART app: evaluation cards that need documentation link to it (type smart).
    dtr_launch_url: str | None = None
    #: Extra policy-pack folders (each a pack folder or a folder of pack folders) loaded besides the packaged ones.
    policy_dirs: tuple[str, ...] = ()
    plan_prefixes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PLAN_PREFIXES))
    log_level: str = "INFO"
    #: Hook and feedback calls per minute per verified JWT issuer (per client address without JWT checks), per
    #: worker process; 0 turns the limit off.
    rate_limit_per_minute: int = 600
    #: Days feedback, coverage assertions, issued-card rows and expired replay rows are kept; 0 keeps them forever.
    retention_days: int = 365
    #: DTR rows (``$questionnaire-package`` audits, ``$log-questionnaire-errors`` reports) stored per JWT issuer per
    #: UTC day (all callers together without JWT checks); past it those calls are a 429. 0 turns the quota off.
    dtr_rows_per_issuer_per_day: int = 2000
    #: Expose POST /benchmark/floor (parse-only baseline for benchmarks/). Off in production.
    benchmark_floor: bool = False
    #: SMART Backend Services clients of the DTR routes: client_id -> {"jwks": JWKS URL or inline JWKS, "scopes":
    #: [allowed SMART scopes], "issuer": the CDS_TRUSTED_ISSUERS issuer (EHR) the client acts for}.
    dtr_clients: Mapping[str, Any] = field(default_factory=dict)
    #: HMAC key (32+ characters) signing DTR access tokens; unset: a random key made at start-up in the gunicorn
    #: master (shared by its workers; tokens die with a restart). Set it when several hosts serve the same URL.
    dtr_token_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``CDS_*`` and ``DATABASE_URL`` through ``Settings``; non-None keyword overrides win (CLI flags)."""
        env = os.environ if environ is None else environ
        given = {name: value for name, value in overrides.items() if value is not None}
        variables = environment_variables()
        settings = Settings.from_environ(env, **{variables[k]: v for k, v in given.items() if k in variables})
        values = settings.model_dump()
        if values["database_url"] is None:
            values["database_url"] = default_database_url(env)
        values.update({k: v for k, v in given.items() if k not in variables})  # settings with no variable
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings that cannot work (checked once at start-up)."""
        from cds_service.egress import ServerRule  # late: egress imports this module

        for issuer, value in self.trusted_issuers.items():
            if not isinstance(issuer, str) or not issuer:
                raise ConfigError("CDS_TRUSTED_ISSUERS keys must be issuer strings")
            keys, servers = issuer_settings(value)
            if not (isinstance(keys, str) or (isinstance(keys, dict) and isinstance(keys.get("keys"), list))):
                raise ConfigError(f"issuer {issuer!r}: value must be a JWKS URL or an inline JWKS object")
            if isinstance(keys, str) and not _is_http_url(keys):
                raise ConfigError(f"issuer {issuer!r}: the JWKS URL must be an http(s) URL")
            for server in servers:
                ServerRule.parse(server, f"issuer {issuer!r} fhirServers")
        for server in self.fhir_servers:
            ServerRule.parse(server, "CDS_FHIR_SERVERS")
        for client_id, client in self.dtr_clients.items():
            dtr_client_settings(client_id, client, self.trusted_issuers)
        if self.dtr_token_key is not None and len(self.dtr_token_key) < 32:
            raise ConfigError("CDS_DTR_TOKEN_KEY must be at least 32 characters")
        if self.public_base_url is not None:
            parts = urlsplit(self.public_base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ConfigError(f"CDS_PUBLIC_BASE_URL is not an http(s) base URL: {self.public_base_url!r}")
        if self.dtr_launch_url is not None and urlsplit(self.dtr_launch_url).scheme not in ("http", "https"):
            raise ConfigError(f"CDS_DTR_LAUNCH_URL is not an http(s) URL: {self.dtr_launch_url!r}")
        if self.auth_enabled and not self.public_base_url:
            raise ConfigError(
                "CDS_PUBLIC_BASE_URL is required with CDS_TRUSTED_ISSUERS (the JWT audience never comes from the "
                "Host header); set it to the URL EHRs call, e.g. https://cds.payer.example"
            )
        if self.metrics and self.auth_enabled and not self.metrics_token:
            raise ConfigError(
                "CDS_METRICS_TOKEN is required with CDS_METRICS and CDS_TRUSTED_ISSUERS: behind a proxy that adds no "
                "forwarding header every client looks like loopback; set a long random token for the scraper"
            )
        if not self.auth_enabled and self.cors_origins and "*" in self.cors_origins:
            raise ConfigError("CDS_CORS_ORIGINS '*' is not allowed without JWT issuers; list the origins")
        for prefix, lob in self.plan_prefixes.items():
            if lob not in ("medicaid", "him", "commercial"):
                raise ConfigError(f"CDS_PLAN_PREFIXES: {prefix!r} maps to unknown line of business {lob!r}")
        if self.worker_class not in ("buffered", "sync"):
            raise ConfigError("CDS_WORKER_CLASS must be buffered or sync")
        if self.rate_limit_per_minute < 0 or self.retention_days < 0:
            raise ConfigError("CDS_RATE_LIMIT_PER_MINUTE and CDS_RETENTION_DAYS must be 0 or more")
        if not 1 <= self.port <= 65535:
            raise ConfigError("CDS_PORT out of range")

    @property
    def auth_enabled(self) -> bool:
        """JWT checks run whenever at least one issuer is trusted."""
        return bool(self.trusted_issuers)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


# ----------------------------------------------------------------------------- parsing one variable
# Each parser takes the variable's text (or, from an override, an already typed value) and raises ValueError
# with a short reason; ``Settings.from_environ`` turns that into a ConfigError naming the variable.

_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _whole_number(minimum: int) -> Callable[[Any], int]:
    """Digits only (an optional sign): ``2.9``, ``1e3``, ``1_000`` or ``8080x`` are refused, never truncated."""

    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            raise ValueError(f"not a whole number: {_shown(value)}")
        if number < minimum:
            raise ValueError("must be positive" if minimum == 1 else f"must be {minimum} or more")
        return number

    return parse


def _positive_number(value: Any) -> float:
    """A finite decimal number above 0 (``1.5``, ``3``, ``2e-1``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        raise ValueError(f"not a number: {_shown(value)}")
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a positive number")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean (true/false, 1/0, yes/no, on/off): {_shown(value)}")


def _comma_list(value: Any) -> tuple[str, ...]:
    """Comma-separated items, stripped, empty ones dropped."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(str(item).strip() for item in items if str(item).strip())


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")  # noqa: TRY004 - pydantic reports ValueError, not TypeError
    return parsed


def _text(value: Any) -> str | None:
    """A string setting; blank is unset."""
    text = "" if value is None else str(value).strip()
    return text or None


def _base_url(value: Any) -> str | None:
    return (_text(value) or "").rstrip("/") or None


def _shown(value: Any) -> str:
    return repr(value)[:80]


Positive = Annotated[int, BeforeValidator(_whole_number(1))]
Count = Annotated[int, BeforeValidator(_whole_number(0))]
Seconds = Annotated[float, BeforeValidator(_positive_number)]
Flag = Annotated[bool, BeforeValidator(_boolean)]
Items = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
JsonObject = Annotated[dict[str, Any], BeforeValidator(_json_object)]
Text = Annotated[str | None, BeforeValidator(_text)]


def _var(name: str, default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A field read from the environment variable ``name`` (exactly, case-sensitive)."""
    if factory is not None:
        return Field(default_factory=factory, validation_alias=name)
    return Field(default=default, validation_alias=name)


# The Settings source for an explicit environment mapping (``Config.from_env(environ)``); os.environ otherwise.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("priorauth_cds_environ", default=None)


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, with every value handed to the field's own
    parser as text: no JSON decoding by the source (lists are comma-separated), and a blank value is unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls, case_sensitive=True)
        self.env_vars = {name: value for name, value in environ.items() if isinstance(value, str) and value.strip()}

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        return value


class Settings(BaseSettings):
    """The environment, parsed: one field per variable of the README configuration table (alias = its name).

    Field names and types are those of ``Config``; ``database_url`` is None when ``DATABASE_URL`` is unset
    (``Config.from_env`` then derives it from ``XDG_DATA_HOME``/``HOME`` of the same environment).
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    host: Annotated[str, BeforeValidator(_text)] = _var("CDS_HOST", Config.host)
    port: Positive = _var("CDS_PORT", Config.port)
    workers: Positive = _var("CDS_WORKERS", Config.workers)
    threads: Positive = _var("CDS_THREADS", Config.threads)
    header_timeout_seconds: Seconds = _var("CDS_HEADER_TIMEOUT_SECONDS", Config.header_timeout_seconds)
    body_timeout_seconds: Seconds = _var("CDS_BODY_TIMEOUT_SECONDS", Config.body_timeout_seconds)
    max_connections_per_client: Count = _var("CDS_MAX_CONNECTIONS_PER_CLIENT", Config.max_connections_per_client)
    worker_class: Annotated[str, BeforeValidator(lambda v: str(v).strip().lower())] = _var(
        "CDS_WORKER_CLASS", Config.worker_class
    )
    trusted_issuers: JsonObject = _var("CDS_TRUSTED_ISSUERS", factory=dict)
    fhir_servers: Items = _var("CDS_FHIR_SERVERS", ())
    http_proxy: Text = _var("CDS_HTTP_PROXY")
    allow_unauthenticated: Flag = _var("CDS_ALLOW_UNAUTHENTICATED", Config.allow_unauthenticated)
    public_base_url: Annotated[str | None, BeforeValidator(_base_url)] = _var("CDS_PUBLIC_BASE_URL")
    jwt_leeway_seconds: Positive = _var("CDS_JWT_LEEWAY_SECONDS", Config.jwt_leeway_seconds)
    jwt_max_lifetime_seconds: Positive = _var("CDS_JWT_MAX_LIFETIME_SECONDS", Config.jwt_max_lifetime_seconds)
    max_body_bytes: Positive = _var("CDS_MAX_BODY_BYTES", Config.max_body_bytes)
    fhir_budget_seconds: Seconds = _var("CDS_FHIR_BUDGET_SECONDS", Config.fhir_budget_seconds)
    fhir_connect_timeout_seconds: Seconds = _var(
        "CDS_FHIR_CONNECT_TIMEOUT_SECONDS", Config.fhir_connect_timeout_seconds
    )
    fhir_max_pages: Positive = _var("CDS_FHIR_MAX_PAGES", Config.fhir_max_pages)
    fhir_max_response_bytes: Positive = _var("CDS_FHIR_MAX_RESPONSE_BYTES", Config.fhir_max_response_bytes)
    fhir_max_call_bytes: Positive = _var("CDS_FHIR_MAX_CALL_BYTES", Config.fhir_max_call_bytes)
    max_resources_per_key: Positive = _var("CDS_MAX_RESOURCES_PER_KEY", Config.max_resources_per_key)
    database_url: Text = _var("DATABASE_URL")
    cors_origins: Annotated[tuple[str, ...] | None, BeforeValidator(lambda v: _comma_list(v) or None)] = _var(
        "CDS_CORS_ORIGINS"
    )
    policy_url: Text = _var("CDS_POLICY_URL")
    dtr_launch_url: Annotated[str | None, BeforeValidator(_base_url)] = _var("CDS_DTR_LAUNCH_URL")
    policy_dirs: Items = _var("CDS_POLICY_DIRS", ())
    insurer_name: Annotated[str, BeforeValidator(_text)] = _var("CDS_INSURER_NAME", Config.insurer_name)
    plan_prefixes: JsonObject = _var("CDS_PLAN_PREFIXES", factory=lambda: dict(DEFAULT_PLAN_PREFIXES))
    log_level: Annotated[str, BeforeValidator(lambda v: str(v).strip().upper())] = _var(
        "CDS_LOG_LEVEL", Config.log_level
    )
    benchmark_floor: Flag = _var("CDS_BENCHMARK_FLOOR", Config.benchmark_floor)
    rate_limit_per_minute: Count = _var("CDS_RATE_LIMIT_PER_MINUTE", Config.rate_limit_per_minute)
    retention_days: Count = _var("CDS_RETENTION_DAYS", Config.retention_days)
    dtr_rows_per_issuer_per_day: Count = _var("CDS_DTR_ROWS_PER_ISSUER_PER_DAY", Config.dtr_rows_per_issuer_per_day)
    metrics: Flag = _var("CDS_METRICS", Config.metrics)
    dtr_clients: JsonObject = _var("CDS_DTR_CLIENTS", factory=dict)
    dtr_token_key: Annotated[str | None, BeforeValidator(lambda v: v or None)] = Field(
        default=None, validation_alias="CDS_DTR_TOKEN_KEY", repr=False
    )
    metrics_token: Annotated[str | None, BeforeValidator(lambda v: v or None)] = Field(
        default=None, validation_alias="CDS_METRICS_TOKEN", repr=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword values (CLI overrides, keyed by variable name) over the environment; no .env, no secrets dir."""
        environ = _ENVIRON.get()
        return init_settings, _EnvironSource(settings_cls, os.environ if environ is None else environ)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **values: Any) -> Settings:
        """Parse ``environ`` (``values``, keyed by variable name, win); ``ConfigError`` names each bad variable."""
        with _reading(environ):
            try:
                return cls(**values)
            except ValidationError as exc:
                raise ConfigError("; ".join(_explain(error) for error in exc.errors())) from None


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _explain(error: Any) -> str:
    """``CDS_PORT: not a whole number: '2.9'`` from one pydantic error (its loc is the variable name)."""
    location = ".".join(str(part) for part in error.get("loc", ())) or "configuration"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{location}: {message}"


def environment_variables() -> dict[str, str]:
    """``Config`` field name -> the environment variable it is read from (every variable the service reads)."""
    return {name: str(info.validation_alias) for name, info in Settings.model_fields.items()}
