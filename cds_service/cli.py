"""Command line: ``serve`` (gunicorn), ``evaluate`` (no server), ``samples`` (load a FHIR server), ``purge``.

Exit codes, the same for every command (README "Command line"): 0 done; 1 the request was refused (the
service rejected the hook request, or the FHIR server refused or could not be reached); 2 usage, unreadable
input or bad configuration. Errors go to stderr in plain words, never as tracebacks or JSON; stdout carries
only the result, so it can be piped.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .config import Config, ConfigError
from .errors import ServiceError
from .policy.predicates import PolicyError

if TYPE_CHECKING:
    from .registry import Pack, Registry

log = logging.getLogger("priorauth_cds.cli")

#: gunicorn worker model (benchmarks/bench.py, slow_clients.py and attacks.py measure it): gthread, subclassed in
#: ``cds_service/server.py`` so that each whole request (head and body, chunked too) is read in the worker's event
#: loop (no thread held) under deadlines, size limits and a per-client connection cap. Sync workers let two idle
#: TCP connections stall both default workers; stock gthread gives every new connection a thread that waits on
#: the client. A hook call is CPU-bound Python, so throughput comes from the processes (CDS_WORKERS, one per
#: core); the threads (CDS_THREADS) keep a call waiting on the FHIR fallback from blocking the worker. Measured
#: against gunicorn's gevent worker and nginx in front (README "Production topology"): gevent was slower and
#: left stalled clients uncut; in production a TLS terminator / buffering proxy (nginx) sits in front anyway.
WORKER_CLASS = "cds_service.server.BufferedThreadWorker"
#: Default threads per worker (``Config.threads``, CDS_THREADS).
THREADS_PER_WORKER = Config.threads
#: Seconds an idle kept-alive connection stays open.
KEEPALIVE_SECONDS = 5

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
PROG = "priorauth-cds"
ASSERTION_ID_URL = "coverage-assertion-id"


def _fail(message: str, code: int) -> int:
    """One plain line on stderr; the exit code to return."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from . import metrics
    from .app import create_app
    from .auth import check_bind_security
    from .logs import configure_logging, log_event

    metrics_dir = metrics.private_multiprocess_dir()  # before anything imports prometheus_client
    try:
        config = Config.from_env(host=args.host, port=args.port, workers=args.workers)
        problem = _bind_problem(config.host, config.port)
        if problem:  # before the app loads: one plain line, not a page of JSON logs and gunicorn's retries
            metrics.remove_multiprocess_dir(metrics_dir)
            return _fail(problem, EXIT_USAGE)
        configure_logging(config.log_level)
        warning = check_bind_security(config)
        if warning:
            log_event(log, "startup.warning", logging.WARNING, message=warning)
        app = create_app(config)  # loaded once in the master (preload): a bad policy fails here, before forking
    except (ConfigError, PolicyError) as exc:  # a bad setting, or a pack that fails validation ("file:line: ...")
        metrics.remove_multiprocess_dir(metrics_dir)
        return _fail(f"refusing to start: {exc}", EXIT_USAGE)
    except ServiceError as exc:  # StorageError while creating the schema
        metrics.remove_multiprocess_dir(metrics_dir)
        return _fail(f"refusing to start: {exc}", EXIT_USAGE)
    _warm_up(app)
    # Everything loaded so far lives as long as the workers: freeze it out of the cyclic GC, whose full pass over
    # it costs ~100 ms per worker (a latency spike), and whose header writes would unshare the forked pages.
    gc.collect()
    gc.freeze()
    from .server import BufferedThreadWorker

    BufferedThreadWorker.header_timeout = config.header_timeout_seconds
    BufferedThreadWorker.body_timeout = config.body_timeout_seconds
    BufferedThreadWorker.max_body_bytes = config.max_body_bytes
    BufferedThreadWorker.max_connections_per_client = config.max_connections_per_client

    class Server(BaseApplication):  # type: ignore[misc]
        """gunicorn with our settings; no config file, no control socket."""

        def load_config(self) -> None:
            settings: dict[str, Any] = {
                "bind": [f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"],
                "workers": config.workers,
                "worker_class": WORKER_CLASS if config.worker_class == "buffered" else "sync",
                "threads": config.threads if config.worker_class == "buffered" else 1,
                "preload_app": True,
                "timeout": 30,
                "graceful_timeout": 10,
                "keepalive": KEEPALIVE_SECONDS,
                "control_socket_disable": True,
                "post_fork": lambda server, worker: _after_fork(app.extensions["priorauth_cds"].store),
                "when_ready": lambda server: _say_serving(config.host, config.port, config.workers),
                "child_exit": lambda server, worker: metrics.worker_exited(worker.pid),
                "loglevel": "warning",
                "logger_class": "cds_service.gunicorn_logging.GunicornJsonLogger",  # gunicorn's own lines as JSON too
            }
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    try:
        Server().run()
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)
    return 0


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address of this machine), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {_url(host, port)}: {exc.strerror or exc} (another server? try --port)"
    return None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _say_serving(host: str, port: int, workers: int) -> None:
    """gunicorn ``when_ready`` (the master, once listening): the one plain line a person starting it reads."""
    print(f"{PROG}: serving on {_url(host, port)} ({workers} workers); Ctrl-C stops", flush=True)


def _after_fork(store: Any) -> None:
    """gunicorn ``post_fork``, in each worker: forget the master's connections, checkpoint SQLite's WAL in the
    background (``Store.start_background_checkpoints``) rather than in whichever request crosses the mark."""
    store.dispose(close=False)
    store.start_background_checkpoints()


def _warm_up(app: Any) -> None:
    """Evaluate the documented example once in the master, so lazily built validators are shared by every
    forked worker and the first real call is not ~20x slower than the rest. Nothing is stored."""
    from .logs import log_event
    from .openapi import hook_request_example
    from .service import HookHandler

    services = app.extensions["priorauth_cds"]
    hooks = {service.id: service.hook for service in services.registry.services}
    for pack in services.registry.packs:  # every pack: its own tables and policy
        handler = HookHandler(services.config, pack.tables, pack.policy, store=None)
        service_id = pack.service_for("order-sign").id
        try:
            handler.handle(service_id, hook_request_example(service_id, hooks, services.registry))
        except ServiceError as exc:  # the example is ours; a failure here is worth a line, not a refusal to start
            log_event(log, "startup.warm_up_failed", logging.WARNING, error_type=type(exc).__name__, pack=pack.name)


def _version() -> str:
    """The installed distribution's version (pyproject ``version``)."""
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


# ----------------------------------------------------------------------------- evaluate


def _without_assertion_ids(value: Any) -> Any:
    """The response minus every ``coverage-assertion-id`` sub-extension: without ``--store`` nothing was
    recorded, and an id that cannot be looked up must not be shown as if a later PA request could cite it."""
    if isinstance(value, list):
        return [
            _without_assertion_ids(v) for v in value if not (isinstance(v, dict) and v.get("url") == ASSERTION_ID_URL)
        ]
    if isinstance(value, dict):
        return {k: _without_assertion_ids(v) for k, v in value.items()}
    return value


def _pretty(body: dict[str, Any]) -> str:
    """Cards as plain text: indicator and summary, the detail without Markdown, suggestion labels."""
    from .plaintext import markdown_to_text

    lines: list[str] = []
    for card in body.get("cards", []):
        lines.append(f"[{str(card.get('indicator', '')).upper()}] {markdown_to_text(str(card.get('summary', '')))}")
        if card.get("detail"):
            lines += ["    " + line if line else "" for line in markdown_to_text(str(card["detail"])).splitlines()]
        for suggestion in card.get("suggestions", []):
            lines.append(f"    -> suggestion: {markdown_to_text(str(suggestion.get('label', '')))}")
        for link in card.get("links", []):
            lines.append(f"    -> link: {link.get('label', '')} ({link.get('url', '')})")
        lines.append("")
    if not body.get("cards"):
        lines.append("(no cards: no order of the service's drug in scope)")
    for action in body.get("systemActions", []):
        lines.append(f"systemAction {action.get('type')}: {action.get('description', '')}")
    return "\n".join(lines)


def _read_input(name: str) -> bytes:
    """The request body from a file, or from stdin for ``-``."""
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


class _NoService(str):
    """Why no pack's service can be picked for a request (printed as the one error line)."""


def _service_for(payload: Any, registry: Registry, source: str) -> str:
    """The service for a request without ``--service``: that of the one pack whose drug its drafts order, for the
    request's hook (said on stderr when several packs are loaded); ``_NoService`` when none or several packs match.
    A request whose drafts cannot be read goes to the default pack, whose service then says what is wrong."""
    from fhir_mappings.facts import find_drug_orders

    hook = payload.get("hook") if isinstance(payload, dict) else None
    context = payload.get("context") if isinstance(payload, dict) else None
    drafts = context.get("draftOrders") if isinstance(context, dict) else None

    def for_hook(pack: Pack) -> str:
        return next((s.id for s in pack.services if s.hook == hook), pack.services[0].id)

    if not isinstance(drafts, dict):
        return for_hook(registry.default)
    matching = [pack for pack in registry.packs if find_drug_orders([drafts], pack.tables)]
    packs = ", ".join(f"{p.policy.drug.name} ({p.policy.id})" for p in registry.packs)
    if not matching:
        return _NoService(f"{source} orders no drug of a loaded pack ({packs}); name a service with --service")
    if len(matching) > 1:
        named = ", ".join(f"{p.policy.drug.name} ({p.policy.id})" for p in matching)
        return _NoService(f"{source} orders the drugs of several packs ({named}); choose one with --service")
    service_id = for_hook(matching[0])
    if len(registry.packs) > 1:
        drug = matching[0].policy.drug.name
        print(
            f"{PROG}: evaluating with {service_id} ({matching[0].policy.id}): the request orders {drug}",
            file=sys.stderr,
        )
    return service_id


def _evaluate(args: argparse.Namespace) -> int:
    from .errors import outcome_for
    from .protocol import parse_json
    from .registry import load_registry
    from .service import HookHandler

    source = "standard input" if args.file == "-" else args.file
    try:
        raw = _read_input(args.file)
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        payload = parse_json(raw)
    except ServiceError as exc:  # MalformedBody: not JSON at all is an unreadable input file, not a refusal
        return _fail(f"cannot read {source}: {exc}", EXIT_USAGE)
    try:
        config = Config.from_env()
        store = None
        if args.store:
            from .store import Store

            store = Store(config.database_url)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", EXIT_USAGE)
    except ServiceError as exc:  # StorageError: the database exists but cannot be opened or written
        return _fail(f"cannot use DATABASE_URL: {exc}", EXIT_USAGE)
    try:
        try:
            registry = load_registry(config.policy_dirs)
        except (ConfigError, PolicyError) as exc:
            return _fail(f"cannot load the policy packs: {exc}", EXIT_USAGE)
        if args.service is not None and registry.pack_of(args.service) is None:
            known = ", ".join(service.id for service in registry.services)
            return _fail(f"unknown --service {args.service!r} (services: {known})", EXIT_USAGE)
        chosen = args.service or _service_for(payload, registry, source)
        if isinstance(chosen, _NoService):
            return _fail(str(chosen), EXIT_USAGE)
        try:
            service_id = chosen
            pack = registry.pack_of(service_id) or registry.default
            handler = HookHandler(config, pack.tables, pack.policy, store=store)
            body = handler.handle(service_id, payload).body
        except ServiceError as exc:
            outcome = outcome_for(exc)
            if args.json:
                print(json.dumps(outcome, indent=2))
            issue = outcome["issue"][0]
            reason = issue.get("diagnostics") or issue.get("code")
            return _fail(f"the service rejected {source} (HTTP {exc.status}): {reason}", EXIT_REFUSED)
    finally:
        if store is not None:
            store.dispose()
    if not args.store:
        body = _without_assertion_ids(body)
    print(json.dumps(body, indent=2) if args.json else _pretty(body))
    if not args.store and not args.json and body.get("systemActions"):
        print(f"{PROG}: note: coverage-assertion-id left out: nothing was stored (--store records it)", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------- purge


PURGE_LABELS = {
    "feedback": "feedback",
    "coverage_assertions": "coverage assertions",
    "issued_cards": "issued cards",
    "dtr": "DTR rows (prefills, answers used, package requests, error reports)",
    "jwt_replay": "expired JWT replay entries",
}


def _purge(args: argparse.Namespace) -> int:
    """Apply CDS_RETENTION_DAYS (or --days) to the database now; one "N kind" line per kind on stdout."""
    from .store import Store

    try:
        config = Config.from_env()
        days = config.retention_days if args.days is None else args.days
        if days < 0:
            return _fail("--days must be 0 or more", EXIT_USAGE)
        store = Store(config.database_url)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", EXIT_USAGE)
    except ServiceError as exc:
        return _fail(f"cannot use DATABASE_URL: {exc}", EXIT_USAGE)
    try:
        counts = store.purge(days)
    except ServiceError as exc:  # StorageError: nothing was deleted (one transaction)
        return _fail(f"purge failed, nothing deleted: {exc}", EXIT_REFUSED)
    finally:
        store.dispose()
    for key, label in PURGE_LABELS.items():
        print(f"{counts[key]} {label} deleted", file=sys.stdout)
    if days == 0:
        print(f"{PROG}: retention 0: feedback, assertions and issued cards are kept forever", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------- samples


def _samples_list(args: argparse.Namespace, out: TextIO) -> int:
    from .samples import read_sample, sample_files

    for path in sample_files(args.dir):
        request = read_sample(path)
        print(f"{path.name:45} {request.get('hook', '?'):13} Patient/{request['context']['patientId']}", file=out)
    return EXIT_OK


def _samples_load(args: argparse.Namespace, out: TextIO) -> int:
    from .samples import TOKEN_ENV, charts, load, sample_files, select

    base = args.fhir_base.rstrip("/")
    if not base.startswith(("http://", "https://")):
        return _fail(f"FHIR_BASE must be an http(s) URL, not {args.fhir_base!r}", EXIT_USAGE)
    token = os.environ.get(TOKEN_ENV) or None
    if args.token:
        print(
            f"{PROG}: warning: --token is deprecated (process lists and shell histories show it); "
            f"set {TOKEN_ENV} instead",
            file=sys.stderr,
        )
        token = args.token
    patient_charts = charts(select(sample_files(args.dir), args.only))
    failed = 0
    for result in load(base, patient_charts, token=token, deadline_seconds=args.deadline):
        chart = result.chart
        line = f"Patient/{chart.patient_id}: {len(chart.resources)} resources from {', '.join(chart.samples)}"
        if result.ok:
            print(f"{line}: stored (HTTP {result.status})", file=out)
        else:
            failed += 1
            print(f"{PROG}: Patient/{chart.patient_id}: {result.problem}", file=sys.stderr)
    if failed:
        return _fail(f"{failed} of {len(patient_charts)} patients were not stored", EXIT_REFUSED)
    return EXIT_OK


def _samples(args: argparse.Namespace) -> int:
    from .samples import SamplesError

    try:
        if args.samples_command == "list":
            return _samples_list(args, sys.stdout)
        return _samples_load(args, sys.stdout)
    except SamplesError as exc:
        return _fail(str(exc), EXIT_USAGE)


# ----------------------------------------------------------------------------- parser


EPILOG = """exit codes: 0 done; 1 refused (the service rejected the hook request, or the FHIR server refused a
transaction or could not be reached); 2 usage, unreadable input or bad configuration."""


def _parser() -> argparse.ArgumentParser:
    from .samples import DEADLINE_SECONDS, DEFAULT_DIR, TOKEN_ENV

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="CDS Hooks / Da Vinci CRD and DTR service for drug prior-authorization policy packs",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the CDS Hooks API under gunicorn")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env CDS_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080, env CDS_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default 2, env CDS_WORKERS)")
    evaluate = commands.add_parser(
        "evaluate",
        help="print the cards for a hook request, without a server",
        description="Evaluate one CDS Hooks request (a file, or - for standard input) and print the cards as "
        "plain text, or the raw response with --json.",
    )
    evaluate.add_argument("file", metavar="FILE", help="hook request JSON, or - to read standard input")
    evaluate.add_argument("--json", action="store_true", help="print the raw CDS Hooks response (or OperationOutcome)")
    evaluate.add_argument(
        "--service",
        metavar="SERVICE_ID",
        help="service id from discovery, of any loaded pack (default: the service, for the request's hook, of the "
        "one pack whose drug the request orders)",
    )
    evaluate.add_argument(
        "--store",
        action="store_true",
        help="record the coverage assertions in DATABASE_URL and keep their coverage-assertion-id in the output",
    )
    purge = commands.add_parser(
        "purge",
        help="delete stored rows older than CDS_RETENTION_DAYS",
        description="Delete feedback, coverage assertions and issued-card rows older than the retention "
        "(CDS_RETENTION_DAYS, default 365; 0 keeps them forever) and every expired JWT replay entry, in one "
        "transaction; prints how many rows of each kind were deleted.",
    )
    purge.add_argument("--days", type=int, help="retention in days for this run (default: CDS_RETENTION_DAYS)")
    samples = commands.add_parser("samples", help="list the sample bundles, or load their patients on a FHIR server")
    samples.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"samples folder (default {DEFAULT_DIR})")
    sample_commands = samples.add_subparsers(dest="samples_command", metavar="SUBCOMMAND", required=True)
    sample_commands.add_parser("list", help="one line per sample: file, hook, patient")
    load = sample_commands.add_parser(
        "load",
        help="PUT each sample patient's chart on a FHIR server (one transaction per patient)",
        description="POST one FHIR transaction per sample patient (PUT Type/id entries, so loading again changes "
        f"nothing) with the chart from the samples' prefetch; draft orders are not loaded. The FHIR server's bearer "
        f"token, if it needs one, comes from {TOKEN_ENV}.",
    )
    load.add_argument("fhir_base", metavar="FHIR_BASE", help="FHIR R4 base URL, e.g. http://127.0.0.1:8090/fhir")
    load.add_argument("--token", help=f"deprecated: set {TOKEN_ENV} (the FHIR server's bearer token) instead")
    load.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE_SECONDS,
        metavar="SECONDS",
        help=f"give up on the FHIR server after this long, for the whole load (default {DEADLINE_SECONDS:g})",
    )
    load.add_argument("--only", action="append", metavar="NAME", help="only this sample file (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bare ``priorauth-cds`` prints the usage on stderr and exits 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "samples":
            return _samples(args)
        if args.command == "purge":
            return _purge(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `priorauth-cds samples list | head`: the reader left; no traceback, no retry
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    parser.print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
