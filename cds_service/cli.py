"""Command line: ``priorauth-cds serve`` (gunicorn) and ``priorauth-cds evaluate FILE`` (no server)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import Config, ConfigError
from .errors import ServiceError, outcome_for

log = logging.getLogger("priorauth_cds.cli")

#: gunicorn worker model (benchmarks/bench.py measures it). A hook call is CPU-bound Python: threads in one
#: worker would share one GIL, so one request per process, ``CDS_WORKERS`` processes (one per core), and the
#: kernel's accept queue in front of them gives first-come-first-served order. On 2 cores, gthread (2 or 4
#: threads) gave no better p99 and 10-30 % less closed-loop throughput. The cost: a call waiting on the FHIR
#: fallback holds its worker for up to ``CDS_FHIR_BUDGET_SECONDS``.
WORKER_CLASS = "sync"
THREADS_PER_WORKER = 1
#: Only used by threaded workers (sync workers close each connection after its answer).
KEEPALIVE_SECONDS = 5


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app
    from .auth import check_bind_security
    from .logs import configure_logging, log_event

    try:
        config = Config.from_env(host=args.host, port=args.port, workers=args.workers)
        configure_logging(config.log_level)
        warning = check_bind_security(config)
    except ConfigError as exc:
        print(f"priorauth-cds: refusing to start: {exc}", file=sys.stderr)
        return 2
    if warning:
        log_event(log, "startup.warning", logging.WARNING, message=warning)
    app = create_app(config)  # loaded once in the master (preload): a bad policy fails here, before forking
    _warm_up(app)
    # Everything loaded so far lives as long as the workers: freeze it out of the cyclic GC, whose full pass over
    # it costs ~100 ms per worker (a latency spike), and whose header writes would unshare the forked pages.
    gc.collect()
    gc.freeze()

    class Server(BaseApplication):  # type: ignore[misc]
        """gunicorn with our settings; no config file, no control socket."""

        def load_config(self) -> None:
            settings: dict[str, Any] = {
                "bind": [f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"],
                "workers": config.workers,
                "worker_class": WORKER_CLASS,
                "threads": THREADS_PER_WORKER,
                "preload_app": True,
                "timeout": 30,
                "graceful_timeout": 10,
                "keepalive": KEEPALIVE_SECONDS,
                "control_socket_disable": True,
                "post_fork": lambda server, worker: app.extensions["priorauth_cds"].store.dispose(close=False),
                "loglevel": "warning",
            }
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Server().run()
    return 0


def _warm_up(app: Any) -> None:
    """Evaluate the documented example once in the master, so lazily built validators are shared by every
    forked worker and the first real call is not ~20x slower than the rest. Nothing is stored."""
    from .openapi import hook_request_example
    from .service import HookHandler

    services = app.extensions["priorauth_cds"]
    handler = HookHandler(services.config, services.tables, services.policy, store=None)
    try:
        handler.handle("everolimus-order-sign", hook_request_example("everolimus-order-sign"))
    except ServiceError as exc:  # the example is ours; a failure here is worth a line, not a refusal to start
        log.warning("warm-up request failed: %s", type(exc).__name__)


def _pretty(body: dict[str, Any]) -> str:
    lines: list[str] = []
    for card in body.get("cards", []):
        lines.append(f"[{card['indicator'].upper()}] {card['summary']}")
        if card.get("detail"):
            lines += ["    " + line for line in card["detail"].splitlines()]
        for suggestion in card.get("suggestions", []):
            lines.append(f"    -> suggestion: {suggestion['label']}")
        lines.append("")
    if not body.get("cards"):
        lines.append("(no cards: no everolimus order in scope)")
    for action in body.get("systemActions", []):
        lines.append(f"systemAction {action['type']}: {action['description']}")
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> int:
    from fhir_mappings.codes import load_code_tables

    from .discovery import SERVICES
    from .policy.engine import load_policy
    from .protocol import parse_json
    from .service import HookHandler

    config = Config.from_env()
    tables = load_code_tables()
    handler = HookHandler(config, tables, load_policy(vocabulary=tables), store=None)
    try:
        payload = parse_json(Path(args.file).read_bytes())
        hook = payload.get("hook") if isinstance(payload, dict) else None
        service_id = args.service or next((sid for sid, s in SERVICES.items() if s["hook"] == hook), "everolimus-order-sign")
        body = handler.handle(service_id, payload).body
    except ServiceError as exc:
        print(json.dumps(outcome_for(exc), indent=2))
        return 1
    except OSError as exc:
        print(f"priorauth-cds: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2) if args.json else _pretty(body))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="priorauth-cds", description="CP.PHAR.63 everolimus CDS Hooks service")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve the CDS Hooks API under gunicorn")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env CDS_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080, env CDS_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default 2, env CDS_WORKERS)")
    evaluate = commands.add_parser("evaluate", help="print the cards for a hook request file, without a server")
    evaluate.add_argument("file")
    evaluate.add_argument("--json", action="store_true", help="print the raw CDS Hooks response")
    evaluate.add_argument("--service", help="service id (default: from the request's hook)")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command in (None, "serve"):
        if args.command is None:
            args = serve.parse_args([])
        return _serve(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
