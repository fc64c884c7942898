"""Flask application factory: loads everything a worker needs once, then serves requests.

Start-up refuses to run with a broken policy file, broken code tables or an unsafe trust setting,
so a misconfiguration is a failed deploy rather than wrong answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from fhir_mappings.codes import CodeTables

from .api import bp, register_error_handlers
from .auth import JwtVerifier
from .config import Config
from .dtr_api import dtr
from .logs import configure_logging, log_event
from .policy.engine import Policy, load_policy
from .ratelimit import RateLimiter
from .registry import Registry, default_registry, load_registry
from .service import HookHandler
from .smart import SmartAuthority
from .smart_api import smart as smart_routes
from .store import Store

log = logging.getLogger("priorauth_cds.app")


@dataclass
class Services:
    """What the blueprint reads from ``app.extensions["priorauth_cds"]``.

    ``handler``, ``tables`` and ``policy`` are the default pack's (CP.PHAR.63); ``handlers`` holds one handler per
    service id of every pack in ``registry``, which is what requests are dispatched through.
    """

    config: Config
    store: Store
    handler: HookHandler
    verifier: JwtVerifier | None
    tables: CodeTables
    policy: Policy
    limiter: RateLimiter | None = None
    registry: Registry = field(default_factory=default_registry)
    handlers: dict[str, HookHandler] = field(default_factory=dict)
    #: SMART Backend Services for DTR apps (``CDS_DTR_CLIENTS``); built here, before gunicorn forks, so every
    #: worker shares its token key.
    smart: SmartAuthority | None = None

    def handler_for(self, service_id: str) -> HookHandler | None:
        """The handler of the pack that declares ``service_id``; None for an unknown id."""
        return self.handlers.get(service_id)


def load_policy_for(tables: CodeTables) -> Policy:
    """The packaged CP.PHAR.63 policy, checked against the code tables' tag vocabularies."""
    return load_policy(vocabulary=tables)


def create_app(config: Config | None = None, *, store: Store | None = None, **handler_options: Any) -> Flask:
    """Build the app; ``config`` defaults to the environment (``Config.from_env()``)."""
    config = config or Config.from_env()
    config.validate()  # also for a Config built in code: issuers need CDS_PUBLIC_BASE_URL, no CORS "*" in dev mode
    configure_logging(config.log_level)
    registry = load_registry(config.policy_dirs)  # every pack, checked: a broken one is a failed start
    store = store or Store(config.database_url)
    verifier = JwtVerifier(config, replay_guard=store) if config.auth_enabled else None
    pack_handlers = {
        pack.name: HookHandler(config, pack.tables, pack.policy, store=store, **handler_options)
        for pack in registry.packs
    }
    handlers = {service.id: pack_handlers[pack.name] for pack in registry.packs for service in pack.services}
    default = registry.default
    handler = pack_handlers[default.name]
    tables, policy = default.tables, default.policy

    app = Flask("priorauth_cds", static_folder=None)  # no /static route: every route is in /openapi.json
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    limiter = RateLimiter(config.rate_limit_per_minute)
    app.extensions["priorauth_cds"] = Services(
        config,
        store,
        handler,
        verifier,
        tables,
        policy,
        limiter,
        registry=registry,
        handlers=handlers,
        smart=SmartAuthority(config, replay_guard=store),
    )
    if config.retention_days:
        store.purge_if_due(config.retention_days)  # at start-up, then once a day per worker (api.py)
    app.register_blueprint(bp)
    app.register_blueprint(dtr)
    app.register_blueprint(smart_routes)
    if config.benchmark_floor:
        from .floor import floor

        app.register_blueprint(floor)
    register_error_handlers(app)
    for pack in registry.packs:  # e.g. an ingredient without an RxNorm code (left out of DTR answer lists)
        for warning in pack.tables.warnings:
            log_event(log, "pack.warning", logging.WARNING, pack=pack.name, warning=warning)
    log_event(
        log,
        "app.ready",
        auth="jwt" if verifier else "none",
        issuers=len(config.trusted_issuers),
        dtr_clients=len(config.dtr_clients),
        packs=[pack.name for pack in registry.packs],
    )
    return app
