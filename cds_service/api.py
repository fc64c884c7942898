"""The HTTP layer: a thin Flask blueprint that parses, authenticates, calls the handler and maps errors.

Every error body is a FHIR OperationOutcome; the mapping from exception to status lives in
``errors.py`` and is applied here, once.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Response, current_app, g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.sansio.utils import get_current_url

from . import metrics
from .discovery import discovery_document
from .errors import (
    AuthError,
    BodyTooLarge,
    MethodNotAllowed,
    MisdirectedRequest,
    ProtocolError,
    RateLimited,
    ServiceError,
    UnknownCard,
    UnknownService,
    UnsupportedMediaType,
    operation_outcome,
    outcome_for,
)
from .feedback import parse_feedback
from .logs import log_event
from .openapi import openapi_document
from .protocol import parse_json

log = logging.getLogger("priorauth_cds.http")
bp = Blueprint("cds", __name__)

JSON_TYPES = ("application/json", "application/fhir+json")
#: After a 413, read and discard at most this much of the rest of the body, for at most DRAIN_SECONDS, so an
#: ordinary client that is still sending reads the answer instead of a connection reset; then close.
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 1.0
_PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(error: ServiceError) -> Response:
    response = Response(orjson.dumps(outcome_for(error)), status=error.status, mimetype="application/fhir+json")
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(error.retry_after)
    challenge = _CHALLENGES.get(error.status)
    if challenge:  # RFC 6750 §3: a bearer-protected resource names its scheme; which check failed stays unsaid
        response.headers["WWW-Authenticate"] = challenge
    return response


#: RFC 6750 challenges: 401 for a missing or refused token (the CDS Hooks JWT or a DTR access token), 403 for an
#: access token whose scopes do not cover the route.
_CHALLENGES = {401: 'Bearer realm="priorauth-cds"', 403: 'Bearer realm="priorauth-cds", error="insufficient_scope"'}


def _route() -> str:
    """The URL rule that matched (``/cds-services/<service_id>``), never the raw path, for logs."""
    rule = request.url_rule
    return rule.rule if rule is not None else "(no route)"


def _services() -> Any:
    return current_app.extensions["priorauth_cds"]


def _read_json_body() -> Any:
    """The body as JSON, enforcing media type and size before parsing."""
    mimetype = (request.mimetype or "").lower()
    if not mimetype and _services().verifier is None:  # dev mode: a body without a type is a CORS "simple" request
        raise UnsupportedMediaType("Content-Type must be application/json")
    if mimetype and mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {mimetype[:64]}")
    limit = _services().config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    data = _read_body_bytes(limit + 1)
    if len(data) > limit:  # whatever the framing (Content-Length or chunked): never truncated and parsed
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    if not data:
        raise ProtocolError("request body is empty")
    return parse_json(data)


def _read_body_bytes(size: int) -> bytes:
    """``_read_at_most``, with a body whose framing cannot be decoded (a bad chunk size, extension or terminator;
    a client that hung up mid-body) answered 400: the client's mistake, never a 500."""
    try:
        return _read_at_most(size)
    except (ParseException, OSError, ValueError) as exc:  # gunicorn's chunk errors, NoMoreData, werkzeug's OSError
        g.log_fields["body_error"] = type(exc).__name__
        raise ProtocolError("the request body could not be read: malformed chunked framing or a cut-off body") from None


def _read_at_most(size: int) -> bytes:
    """Up to ``size`` bytes of the body, looping over short reads (a chunked body arrives chunk by chunk)."""
    stream = request.environ["wsgi.input"] if request.content_length is None else request.stream
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = stream.read(min(size - got, 64 * 1024))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _drain() -> None:
    """Read and discard what is left of the body, bounded in bytes and time (after a 413)."""
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return
    deadline = time.monotonic() + DRAIN_SECONDS
    drained = 0
    try:
        while drained < DRAIN_BYTES and time.monotonic() < deadline:
            part = stream.read(min(64 * 1024, DRAIN_BYTES - drained))
            if not part:
                return
            drained += len(part)
    except Exception:  # noqa: BLE001 - a broken or stalled client: the connection is closed anyway
        return


def _authenticate() -> None:
    services = _services()
    if services.verifier is None:
        return
    from .auth import audience_for

    if not services.config.public_base_url:  # refused at start-up; never fall back to the Host header
        raise AuthError()
    audience = audience_for(request.path, services.config.public_base_url)
    claims = services.verifier.verify(request.headers.get("Authorization"), audience)
    g.issuer = claims.get("iss")


def _rate_limit(*, by_address: bool = False) -> None:
    """One token from the caller's bucket: the verified issuer, or the client address without JWT checks (and
    with ``by_address``, for calls that need no token: terminology reads, the SMART token endpoint)."""
    services = _services()
    limiter = services.limiter
    if limiter is None or not limiter.enabled:
        return
    by_issuer = services.verifier is not None and not by_address
    caller = f"iss:{g.get('issuer')}" if by_issuer else f"addr:{request.remote_addr}"
    wait = limiter.check(caller)
    if wait:
        g.log_fields["rate_limited"] = True
        raise RateLimited(
            f"more than {services.config.rate_limit_per_minute} calls per minute; retry after {wait} s",
            retry_after=wait,
        )


@bp.get("/cds-services")
def discovery() -> Response:
    """CDS Hooks discovery: the services, their prefetch templates and CRD extensions."""
    return json_response(discovery_document(_services().registry))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    """Answer an order-sign / order-select call."""
    handler = _services().handler_for(service_id)
    if handler is None:
        raise UnknownService(f"no CDS service '{service_id[:64]}'")
    _authenticate()
    _rate_limit()
    payload = _read_json_body()
    outcome = handler.handle(
        service_id,
        payload,
        issuer=g.get("issuer"),
        base_url=_host_url(request.scheme, request.host),
        log_fields=g.log_fields,
    )
    g.decisions = outcome.decisions
    g.log_fields.update(
        hookInstance=outcome.hook_instance[:64],
        evaluated=outcome.evaluated,
        decisions=outcome.decisions,
        unreadable=outcome.unreadable,
        stages_ms=outcome.timings.stages,
    )
    return Response(outcome.json, mimetype="application/json")


@functools.lru_cache(maxsize=64)
def _host_url(scheme: str, host: str) -> str:
    """``request.host_url``, a pure function of the scheme and the (validated) ``request.host``: worked out once per
    host instead of per call (werkzeug's IRI decoding of it was 1 % of a hook call); bounded, whatever Host values
    clients send."""
    return get_current_url(scheme, host)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """Store CDS Hooks feedback on cards (idempotent)."""
    if _services().registry.hook_of(service_id) is None:
        raise UnknownService(f"no CDS service '{service_id[:64]}'")
    _authenticate()
    _rate_limit()
    items = parse_feedback(_read_json_body())
    store = _services().store
    unknown = store.unknown_cards(service_id, [item.card for item in items])
    if unknown:
        index = next(i for i, item in enumerate(items) if item.card == unknown[0])
        g.log_fields.update(feedback_items=len(items), feedback_unknown_cards=len(unknown))
        raise UnknownCard(
            f"feedback[{index}].card: no card with this uuid was issued by service '{service_id}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            expression=[f"feedback[{index}].card"],
        )
    stored = store.record_feedback(service_id, items)  # hookInstance is not part of feedback bodies
    g.log_fields.update(feedback_items=len(items), feedback_new=stored)
    return json_response({"received": len(items), "stored": stored})


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness and storage readiness."""
    ok = _services().store.ping()
    return json_response(
        {"status": "ok" if ok else "degraded", "storage": "ok" if ok else "unavailable"}, 200 if ok else 503
    )


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text format; 404 unless CDS_METRICS is on, then loopback-only or bearer CDS_METRICS_TOKEN."""
    config = _services().config
    if not config.metrics:
        raise UnknownService(f"no resource at {request.path[:100]}")
    if config.metrics_token:
        supplied = request.headers.get("Authorization", "")
        expected = f"Bearer {config.metrics_token}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            response = Response(b"metrics need the bearer token\n", status=401, mimetype="text/plain")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not _direct_loopback_client():
        raise UnknownService(f"no resource at {request.path[:100]}")
    return Response(metrics.exposition(), status=200, content_type=metrics.CONTENT_TYPE)


def _direct_loopback_client() -> bool:
    """A client on this host talking to us directly: loopback peer and no reverse-proxy header."""
    if any(name in request.headers for name in _PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address((request.remote_addr or "").split("%")[0]).is_loopback
    except ValueError:
        return False


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API (built once per process)."""
    return json_response(openapi_document(_services().registry))


# ----------------------------------------------------------------------------- CORS, logging, errors


#: Development mode's default CORS origins: loopback, any port.
_LOOPBACK_ORIGIN = re.compile(r"http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?")


def _cors_origin() -> str | None:
    services = _services()
    allowed = services.config.cors_origins
    origin = request.headers.get("Origin")
    if allowed is None:  # default: any origin with JWT issuers (bearer tokens, no credentials), loopback without
        if services.verifier is not None:
            return "*"
        return origin if origin and _LOOPBACK_ORIGIN.fullmatch(origin) else None
    if "*" in allowed and services.verifier is not None:  # "*" without issuers is refused at start-up
        return "*"
    if origin and origin in allowed:
        return origin
    return None


def _check_dev_host() -> None:
    """Without JWT issuers, only a loopback Host (or CDS_PUBLIC_BASE_URL's) is served: a web page whose name was
    rebound to 127.0.0.1 sends its own name as Host, and gets 421 instead of the service."""
    services = _services()
    if services.verifier is not None:
        return
    if not _dev_host_allowed(request.headers.get("Host", ""), services.config.public_base_url):
        raise MisdirectedRequest("without JWT issuers this service only answers Host localhost, 127.0.0.1 or [::1]")


_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(:[0-9]{1,5})?")


@functools.lru_cache(maxsize=64)
def _dev_host_allowed(host: str, public_base_url: str | None) -> bool:
    """Whether a Host header names loopback or ``public_base_url``'s host. A pure function of the two, asked on
    every request with the same few values: cached (bounded, whatever Host values clients send)."""
    from .auth import is_loopback_host

    match = _HOST_HEADER.fullmatch(host)
    name = match.group(1).lower() if match else ""
    public = urlsplit(public_base_url or "").hostname
    return bool(name) and (is_loopback_host(name) or name.strip("[]") == public)


@bp.before_app_request
def _start() -> Response | None:
    g.started = time.perf_counter()
    g.log_fields = {}
    _check_dev_host()
    services = _services()
    if services.config.retention_days:
        services.store.purge_if_due(services.config.retention_days)  # at most once a day per worker
    if request.method == "OPTIONS":
        return Response(status=204)
    return None


@bp.after_app_request
def _finish(response: Response) -> Response:
    origin = _cors_origin()
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin != "*":
            response.headers.add("Vary", "Origin")
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
    if "body_error" in g.get("log_fields", {}):  # the framing is lost: the next request cannot be found in it
        response.headers["Connection"] = "close"
    elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    if _services().config.metrics:  # off: nothing recorded at all
        _record_metrics(response, elapsed)
    log_event(
        log,
        "request",
        method=request.method,
        route=_route(),
        status=response.status_code,
        ms=round(elapsed, 2),
        pid=os.getpid(),  # which gunicorn worker answered (no PHI): per-worker state such as rate buckets shows here
        **g.get("log_fields", {}),
    )
    return response


def _record_metrics(response: Response, elapsed_ms: float) -> None:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.record_request(rule, request.method, response.status_code)
    service_id = (request.view_args or {}).get("service_id")
    if request.endpoint == "cds.call_service" and _services().registry.hook_of(str(service_id)) is not None:
        metrics.record_hook(str(service_id), elapsed_ms / 1000, g.get("decisions", ()))


def register_error_handlers(app: Any) -> None:
    """Map every exception to an OperationOutcome; nothing else reaches the client."""

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        if error.status == 401:
            log_event(log, "auth.rejected", logging.WARNING, route=_route())
        if isinstance(error, BodyTooLarge):
            return _too_large_response(error)
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error: RequestEntityTooLarge) -> Response:
        return _too_large_response(BodyTooLarge("request body too large"))

    def _too_large_response(error: BodyTooLarge) -> Response:
        _drain()
        response = error_response(error)
        response.headers["Connection"] = "close"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        if error.code == 405:
            response = error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path[:100]}"))
            allowed = getattr(error, "valid_methods", None) or []
            if allowed:
                response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        if error.code == 404:
            return error_response(UnknownService(f"no resource at {request.path[:100]}"))
        code = "invalid" if (error.code or 500) < 500 else "exception"
        body = operation_outcome(code, error.description or error.name)
        return Response(orjson.dumps(body), status=error.code or 500, mimetype="application/fhir+json")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.error("unexpected error", exc_info=error, extra={"fields": {"route": _route()}})
        body = operation_outcome("exception", "internal error")
        return Response(orjson.dumps(body), status=500, mimetype="application/fhir+json")
