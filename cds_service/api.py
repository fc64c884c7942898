"""The HTTP layer: a thin Flask blueprint that parses, authenticates, calls the handler and maps errors.

Every error body is a FHIR OperationOutcome; the mapping from exception to status lives in
``errors.py`` and is applied here, once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .discovery import discovery_document, hook_of
from .errors import (
    BodyTooLarge,
    MethodNotAllowed,
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


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(error: ServiceError) -> Response:
    response = Response(orjson.dumps(outcome_for(error)), status=error.status, mimetype="application/fhir+json")
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _route() -> str:
    """The URL rule that matched (``/cds-services/<service_id>``), never the raw path, for logs."""
    rule = request.url_rule
    return rule.rule if rule is not None else "(no route)"


def _services() -> Any:
    return current_app.extensions["priorauth_cds"]


def _read_json_body() -> Any:
    """The body as JSON, enforcing media type and size before parsing."""
    mimetype = (request.mimetype or "").lower()
    if mimetype and mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {mimetype[:64]}")
    limit = _services().config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    if not data:
        raise ProtocolError("request body is empty")
    return parse_json(data)


def _authenticate() -> None:
    services = _services()
    if services.verifier is None:
        return
    from .auth import audience_for

    audience = audience_for(request.base_url, request.path, services.config.public_base_url)
    claims = services.verifier.verify(request.headers.get("Authorization"), audience)
    g.issuer = claims.get("iss")


def _rate_limit() -> None:
    """One token from the caller's bucket: the verified issuer, or the client address without JWT checks."""
    services = _services()
    limiter = services.limiter
    if limiter is None or not limiter.enabled:
        return
    caller = f"iss:{g.get('issuer')}" if services.verifier is not None else f"addr:{request.remote_addr}"
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
    return json_response(discovery_document())


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    """Answer an order-sign / order-select call."""
    if hook_of(service_id) is None:
        raise UnknownService(f"no CDS service '{service_id[:64]}'")
    _authenticate()
    _rate_limit()
    payload = _read_json_body()
    outcome = _services().handler.handle(service_id, payload)
    g.log_fields.update(
        hookInstance=outcome.hook_instance[:64],
        evaluated=outcome.evaluated,
        decisions=outcome.decisions,
        stages_ms=outcome.timings.stages,
    )
    return json_response(outcome.body)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """Store CDS Hooks feedback on cards (idempotent)."""
    if hook_of(service_id) is None:
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
    return json_response({"status": "ok" if ok else "degraded", "storage": "ok" if ok else "unavailable"}, 200 if ok else 503)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API (built once per process)."""
    return json_response(openapi_document())


# ----------------------------------------------------------------------------- CORS, logging, errors


def _cors_origin() -> str | None:
    allowed = _services().config.cors_origins
    origin = request.headers.get("Origin")
    if "*" in allowed:
        return "*"
    if origin and origin in allowed:
        return origin
    return None


@bp.before_app_request
def _start() -> Response | None:
    g.started = time.perf_counter()
    g.log_fields = {}
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
    elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    log_event(
        log,
        "request",
        method=request.method,
        route=_route(),
        status=response.status_code,
        ms=round(elapsed, 2),
        **g.get("log_fields", {}),
    )
    return response


def register_error_handlers(app: Any) -> None:
    """Map every exception to an OperationOutcome; nothing else reaches the client."""

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        if error.status == 401:
            log_event(log, "auth.rejected", logging.WARNING, route=_route())
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error: RequestEntityTooLarge) -> Response:
        return error_response(BodyTooLarge("request body too large"))

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
