"""Service configuration: one frozen object, read from environment variables with embedded defaults.

Every setting is listed in the README's configuration table; ``Config.from_env()`` is the only place
that reads the environment, so tests build ``Config(...)`` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _float(name: str, value: str | None, default: float) -> float:
    if value is None or value.strip() == "":
        return default
    try:
        parsed = float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is not a number: {value!r}") from exc
    if parsed <= 0:
        raise ConfigError(f"{name} must be positive")
    return parsed


def _int(name: str, value: str | None, default: int) -> int:
    return int(_float(name, value, float(default)))


def _list(value: str | None) -> tuple[str, ...]:
    """A comma-separated setting as a tuple of non-empty, stripped items."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


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


def _count(name: str, value: str | None, default: int) -> int:
    """A whole number >= 0 (0 means "off" / "forever" for the settings that use it)."""
    if value is None or value.strip() == "":
        return default
    try:
        parsed = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} is not a whole number: {value!r}") from None
    if parsed < 0:
        raise ConfigError(f"{name} must be 0 or more")
    return parsed


def _json_object(name: str, value: str | None, default: dict[str, Any]) -> dict[str, Any]:
    if value is None or value.strip() == "":
        return dict(default)
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object")
    return parsed


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
    plan_prefixes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PLAN_PREFIXES))
    log_level: str = "INFO"
    #: Hook and feedback calls per minute per verified JWT issuer (per client address without JWT checks), per
    #: worker process; 0 turns the limit off.
    rate_limit_per_minute: int = 600
    #: Days feedback, coverage assertions, issued-card rows and expired replay rows are kept; 0 keeps them forever.
    retention_days: int = 365
    #: Expose POST /benchmark/floor (parse-only baseline for benchmarks/). Off in production.
    benchmark_floor: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``CDS_*`` and ``DATABASE_URL``; keyword overrides win (used by the CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "host": env.get("CDS_HOST") or cls.host,
            "port": _int("CDS_PORT", env.get("CDS_PORT"), cls.port),
            "workers": _int("CDS_WORKERS", env.get("CDS_WORKERS"), cls.workers),
            "trusted_issuers": _json_object("CDS_TRUSTED_ISSUERS", env.get("CDS_TRUSTED_ISSUERS"), {}),
            "allow_unauthenticated": _bool(env.get("CDS_ALLOW_UNAUTHENTICATED"), False),
            "public_base_url": (env.get("CDS_PUBLIC_BASE_URL") or "").rstrip("/") or None,
            "jwt_leeway_seconds": _int("CDS_JWT_LEEWAY_SECONDS", env.get("CDS_JWT_LEEWAY_SECONDS"), 30),
            "jwt_max_lifetime_seconds": _int(
                "CDS_JWT_MAX_LIFETIME_SECONDS", env.get("CDS_JWT_MAX_LIFETIME_SECONDS"), 3600
            ),
            "max_body_bytes": _int("CDS_MAX_BODY_BYTES", env.get("CDS_MAX_BODY_BYTES"), cls.max_body_bytes),
            "fhir_budget_seconds": _float("CDS_FHIR_BUDGET_SECONDS", env.get("CDS_FHIR_BUDGET_SECONDS"), 3.0),
            "fhir_connect_timeout_seconds": _float(
                "CDS_FHIR_CONNECT_TIMEOUT_SECONDS", env.get("CDS_FHIR_CONNECT_TIMEOUT_SECONDS"), 1.0
            ),
            "fhir_max_pages": _int("CDS_FHIR_MAX_PAGES", env.get("CDS_FHIR_MAX_PAGES"), 10),
            "fhir_max_response_bytes": _int(
                "CDS_FHIR_MAX_RESPONSE_BYTES", env.get("CDS_FHIR_MAX_RESPONSE_BYTES"), cls.fhir_max_response_bytes
            ),
            "fhir_max_call_bytes": _int(
                "CDS_FHIR_MAX_CALL_BYTES", env.get("CDS_FHIR_MAX_CALL_BYTES"), cls.fhir_max_call_bytes
            ),
            "threads": _int("CDS_THREADS", env.get("CDS_THREADS"), cls.threads),
            "worker_class": (env.get("CDS_WORKER_CLASS") or cls.worker_class).strip().lower(),
            "header_timeout_seconds": _float("CDS_HEADER_TIMEOUT_SECONDS", env.get("CDS_HEADER_TIMEOUT_SECONDS"), 10.0),
            "body_timeout_seconds": _float("CDS_BODY_TIMEOUT_SECONDS", env.get("CDS_BODY_TIMEOUT_SECONDS"), 30.0),
            "metrics": _bool(env.get("CDS_METRICS"), False),
            "metrics_token": env.get("CDS_METRICS_TOKEN") or None,
            "max_resources_per_key": _int(
                "CDS_MAX_RESOURCES_PER_KEY", env.get("CDS_MAX_RESOURCES_PER_KEY"), cls.max_resources_per_key
            ),
            "database_url": env.get("DATABASE_URL") or default_database_url(env),
            "cors_origins": _list(env.get("CDS_CORS_ORIGINS")) or None,
            "fhir_servers": _list(env.get("CDS_FHIR_SERVERS")),
            "http_proxy": (env.get("CDS_HTTP_PROXY") or "").strip() or None,
            "insurer_name": env.get("CDS_INSURER_NAME") or cls.insurer_name,
            "policy_url": env.get("CDS_POLICY_URL") or None,
            "plan_prefixes": _json_object("CDS_PLAN_PREFIXES", env.get("CDS_PLAN_PREFIXES"), DEFAULT_PLAN_PREFIXES),
            "log_level": (env.get("CDS_LOG_LEVEL") or "INFO").upper(),
            "benchmark_floor": _bool(env.get("CDS_BENCHMARK_FLOOR"), False),
            "rate_limit_per_minute": _count(
                "CDS_RATE_LIMIT_PER_MINUTE", env.get("CDS_RATE_LIMIT_PER_MINUTE"), cls.rate_limit_per_minute
            ),
            "retention_days": _count("CDS_RETENTION_DAYS", env.get("CDS_RETENTION_DAYS"), cls.retention_days),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
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
            for server in servers:
                ServerRule.parse(server, f"issuer {issuer!r} fhirServers")
        for server in self.fhir_servers:
            ServerRule.parse(server, "CDS_FHIR_SERVERS")
        if self.public_base_url is not None:
            parts = urlsplit(self.public_base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ConfigError(f"CDS_PUBLIC_BASE_URL is not an http(s) base URL: {self.public_base_url!r}")
        if self.auth_enabled and not self.public_base_url:
            raise ConfigError(
                "CDS_PUBLIC_BASE_URL is required with CDS_TRUSTED_ISSUERS (the JWT audience never comes from the "
                "Host header); set it to the URL EHRs call, e.g. https://cds.payer.example"
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
