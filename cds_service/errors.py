"""The one exception tree of the service, and its mapping to HTTP status and FHIR OperationOutcome.

Every error a client can cause is a ``ServiceError`` subclass; the web layer maps it to its status
code here and nowhere else. Anything else that escapes is a bug (answered 500 with a generic
OperationOutcome, logged with its type only, never the request body).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every client-visible error. ``status`` is the HTTP status; ``code`` the FHIR issue-type."""

    status: int = 400
    code: str = "processing"
    #: Whether ``diagnostics`` may be shown to the client (False for auth: no detail leaks).
    expose_detail: bool = True

    def __init__(self, detail: str = "", *, expression: list[str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.expression = expression or []


class ProtocolError(ServiceError):
    """The request breaks the CDS Hooks 2.0 contract (missing member, wrong hook, bad shape)."""

    status = 400
    code = "invalid"


class MalformedBody(ProtocolError):
    """The body is not JSON, not UTF-8, or nests too deeply to parse safely."""

    code = "structure"


class UnsupportedMediaType(ServiceError):
    """The body is not declared as JSON."""

    status = 415
    code = "not-supported"


class BodyTooLarge(ServiceError):
    """The body exceeds the configured limit."""

    status = 413
    code = "too-costly"


class AuthError(ServiceError):
    """The caller's JWT is absent, invalid, untrusted or replayed. Never tells which."""

    status = 401
    code = "security"
    expose_detail = False


class MisdirectedRequest(ServiceError):
    """Development mode (no JWT issuers): the Host header does not name loopback (DNS-rebinding defence)."""

    status = 421
    code = "security"


class UnknownService(ServiceError):
    """No CDS service has that id."""

    status = 404
    code = "not-found"


class UnknownCard(ServiceError):
    """Feedback names a card uuid this service never issued (or issued for another service)."""

    status = 404
    code = "not-found"


class RateLimited(ServiceError):
    """The caller (JWT issuer, or client address without JWT checks) exceeded CDS_RATE_LIMIT_PER_MINUTE."""

    status = 429
    code = "throttled"

    def __init__(self, detail: str = "", *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class MethodNotAllowed(ServiceError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "not-supported"


class PrefetchUnavailable(ServiceError):
    """Data the decision needs was neither prefetched nor obtainable from the FHIR server."""

    status = 412
    code = "incomplete"


class UnknownContext(ServiceError):
    """DTR: the ``context`` names no coverage assertion this service issued with a questionnaire."""

    status = 404
    code = "not-found"


class CoverageMismatch(ServiceError):
    """DTR: the Coverage or order sent is not the one the coverage assertion was made for."""

    status = 422
    code = "business-rule"


class StorageError(ServiceError):
    """The feedback / audit store could not be written; the caller may retry."""

    status = 503
    code = "transient"


def operation_outcome(
    code: str, diagnostics: str | None, *, severity: str = "error", expression: list[str] | None = None
) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome with one issue (no null or empty members)."""
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_for(error: ServiceError) -> dict[str, Any]:
    """The OperationOutcome body for a service error; auth errors carry no detail."""
    if not error.expose_detail:
        return operation_outcome(error.code, "Unauthorized")
    return operation_outcome(error.code, error.detail or None, expression=error.expression)
