"""HTTP routes of SMART Backend Services: discovery (``.well-known/smart-configuration``) and the token endpoint.

Both are public (a client has no token yet) and rate-limited per client address. Token errors are OAuth 2.0
JSON bodies (``{"error": "invalid_client", ...}``, RFC 6749 §5.2), not OperationOutcomes; token answers are
never cached (``Cache-Control: no-store``).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from flask import Blueprint, Response, request

from .api import _rate_limit, _services, json_response
from .dtr_api import _base
from .smart import TOKEN_PATH, TokenError, smart_configuration

smart = Blueprint("smart", __name__)

FORM_TYPE = "application/x-www-form-urlencoded"


@smart.get("/.well-known/smart-configuration")
@smart.get("/fhir/.well-known/smart-configuration")
def configuration() -> Response:
    """SMART discovery at the FHIR base (``/fhir``) and at the root: where and how a DTR app gets a token."""
    _rate_limit(by_address=True)
    return json_response(smart_configuration(_base()))


def _token_answer(body: Mapping[str, object], status: int) -> Response:
    response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@smart.post(TOKEN_PATH)
def token() -> Response:
    """OAuth 2.0 client_credentials with a private_key_jwt assertion (SMART Backend Services)."""
    _rate_limit(by_address=True)
    services = _services()
    if (request.mimetype or "").lower() != FORM_TYPE:
        return _token_answer(TokenError("invalid_request", f"the body must be {FORM_TYPE}").body(), 400)
    form = request.form
    repeated = sorted(name for name in form if len(form.getlist(name)) > 1)
    if repeated:  # RFC 6749 §3.2: request parameters MUST NOT be included more than once
        return _token_answer(TokenError("invalid_request", f"repeated parameter {repeated[0][:40]}").body(), 400)
    try:
        body = services.smart.issue(form.to_dict(), _base() + TOKEN_PATH)
    except TokenError as error:
        return _token_answer(error.body(), error.status)
    return _token_answer(body, 200)
