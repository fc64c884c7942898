"""DTR's FHIR endpoints under ``/fhir``: thin Flask routes over ``cds_service.dtr.package``.

A caller is the EHR (its CDS Hooks JWT from a trusted issuer, audience = this URL) or a DTR app with a SMART
Backend Services access token (``cds_service.smart``: scopes checked per route, and it acts for one EHR issuer);
either way a package is only ever given to the EHR whose hook call made the assertion. Terminology reads
(``metadata``, ``ValueSet`` read and ``$expand``) carry no PHI: open, rate-limited per client address. Errors
are OperationOutcomes through the app's one error mapping (``errors.py`` via ``api.register_error_handlers``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import orjson
from flask import Blueprint, Response, g, request

from .api import _authenticate, _rate_limit, _read_json_body, _services
from .dtr import package
from .errors import ProtocolError, RateLimited, UnknownService, operation_outcome
from .logs import log_event
from .smart import TOKEN_PATH, InsufficientScope, SmartAuthority, permits

log = logging.getLogger("priorauth_cds.dtr")
dtr = Blueprint("dtr", __name__, url_prefix="/fhir")


def fhir_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/fhir+json")


def _base() -> str:
    return (_services().config.public_base_url or request.host_url).rstrip("/")


def _publisher() -> str:
    return str(_services().config.insurer_name)


def _daily_quota() -> None:
    """429 once the caller's issuer has stored ``CDS_DTR_ROWS_PER_ISSUER_PER_DAY`` DTR rows today (UTC)."""
    services = _services()
    limit = services.config.dtr_rows_per_issuer_per_day
    if limit <= 0:
        return
    now = datetime.now(UTC)
    if services.store.dtr_rows_today(g.get("issuer"), now=now) >= limit:
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        log_event(log, "dtr.quota_exceeded", logging.WARNING, limit=limit)
        raise RateLimited(
            f"more than {limit} DTR calls stored today for this client; retry after 00:00 UTC",
            retry_after=max(1, int((midnight - now).total_seconds())),
        )


def _authorize(resource: str, permission: str) -> None:
    """The caller's identity for a DTR route: a SMART access token whose scopes allow ``permission`` (c r u d s)
    on ``resource`` (``g.issuer`` = the EHR its client acts for), or else the EHR's CDS Hooks JWT."""
    services = _services()
    header = request.headers.get("Authorization")
    if services.smart is None or not SmartAuthority.is_access_token(header):
        _authenticate()
        return
    grant = services.smart.grant(header, _base() + TOKEN_PATH)
    if not permits(grant.scopes, resource, permission):
        raise InsufficientScope(f"the token's scopes ({' '.join(grant.scopes)[:200]}) do not allow this call")
    g.issuer = grant.issuer
    g.log_fields["dtr_client"] = grant.client_id[:64]


@dtr.get("/metadata")
def metadata() -> Response:
    _rate_limit(by_address=True)
    return fhir_response(package.capability_statement(_base(), _publisher()))


@dtr.post("/Questionnaire/$questionnaire-package")
@dtr.post("/$questionnaire-package")
def questionnaire_package() -> Response:
    """DTR: the questionnaire(s) for an order, with their value sets and the payer's prefilled response."""
    _authorize("Questionnaire", "r")
    _rate_limit()
    _daily_quota()
    services = _services()
    issuer = g.get("issuer")
    parsed = package.parse_package_request(_read_json_body())
    try:
        result = package.questionnaire_package(
            parsed,
            services.registry,
            services.store,
            base=_base(),
            publisher=_publisher(),
            issuer=issuer,
            issuers_configured=services.config.auth_enabled,
        )
    except Exception as error:
        services.store.record_package_request(
            assertion_id=parsed.context,
            order_ref=None,
            coverage_ref=parsed.coverage_ref,
            questionnaires=list(parsed.questionnaires),
            outcome=type(error).__name__,
            issuer=issuer,
        )
        raise
    services.store.record_package_request(
        assertion_id=result.assertion_id,
        order_ref=result.order_ref,
        coverage_ref=result.coverage_ref,
        questionnaires=list(result.questionnaires),
        outcome="ok",
        issuer=issuer,
    )
    log_event(log, "dtr.package", assertion=bool(result.assertion_id), questionnaires=len(result.questionnaires))
    return fhir_response(result.body)


@dtr.post("/Questionnaire/$log-questionnaire-errors")
def log_questionnaire_errors() -> Response:
    """DTR: a client reports errors rendering or running a questionnaire; stored for the payer to read."""
    _authorize("Questionnaire", "r")
    _rate_limit()
    _daily_quota()
    canonical, outcomes = package.parse_error_log(_read_json_body())
    count = _services().store.record_questionnaire_errors(canonical, outcomes, issuer=g.get("issuer"))
    log_event(log, "dtr.questionnaire_errors", logging.WARNING, count=count)
    return fhir_response(operation_outcome("informational", f"{count} error report(s) stored", severity="information"))


@dtr.get("/Questionnaire/<qid>")
def read_questionnaire(qid: str) -> Response:
    _authorize("Questionnaire", "r")
    found = package.questionnaire(_services().registry, _base(), qid, _publisher())
    if found is None:
        raise UnknownService(f"no Questionnaire/{qid[:64]}")
    return fhir_response(found)


@dtr.route("/ValueSet/$expand", methods=["GET", "POST"])
@dtr.route("/ValueSet/<vs_id>/$expand", methods=["GET", "POST"])
def expand(vs_id: str | None = None) -> Response:
    """ValueSet/$expand for the value sets the questionnaires use (``url`` parameter, or by id); no token needed."""
    _rate_limit(by_address=True)
    url = request.args.get("url")
    if request.method == "POST":
        body = _read_json_body()
        parameters = body.get("parameter") if isinstance(body, dict) else None
        for p in parameters if isinstance(parameters, list) else []:
            if isinstance(p, dict) and p.get("name") == "url" and isinstance(p.get("valueUri"), str):
                url = p["valueUri"]
            if isinstance(p, dict) and p.get("name") == "valueSetVersion" and isinstance(p.get("valueString"), str):
                url = f"{(url or '').partition('|')[0]}|{p['valueString']}"
    elif request.args.get("valueSetVersion") and url:
        url = f"{url.partition('|')[0]}|{request.args['valueSetVersion']}"
    if not url and vs_id is None:
        raise ProtocolError("give the value set's 'url' (or expand one by id)", expression=["url"])
    found = package.expand(_services().registry, _base(), url=url, vs_id=vs_id)
    if found is None:
        raise UnknownService(f"no ValueSet {(url or vs_id or '')[:100]} here")
    return fhir_response(found)


@dtr.get("/ValueSet/<vs_id>")
def read_value_set(vs_id: str) -> Response:
    _rate_limit(by_address=True)
    found = package.expand(_services().registry, _base(), vs_id=vs_id)
    if found is None:
        raise UnknownService(f"no ValueSet/{vs_id[:64]}")
    return fhir_response(found)
