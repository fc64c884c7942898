"""SMART Backend Services (SMART App Launch 2.x) for DTR clients: discovery, token endpoint, access tokens.

A DTR app in a browser cannot sign the EHR's CDS Hooks JWT, so the payer authenticates it as a registered
backend client (``CDS_DTR_CLIENTS``): the client POSTs ``grant_type=client_credentials`` with a
``private_key_jwt`` assertion (RS384 or ES384, ``iss`` = ``sub`` = its client id, ``aud`` = our token URL,
``exp`` at most five minutes ahead, a ``jti`` never seen before), and gets a short-lived bearer token for the
DTR routes, limited to the scopes it asked for *and* was registered with (the intersection; none left is
``invalid_scope``).

Access tokens are HS256 JWTs (``typ: at+jwt``) signed with ``CDS_DTR_TOKEN_KEY`` or, unset, a random key made
when the app is built — in the gunicorn master before it forks, so every worker verifies every token; a
restart invalidates them (they last five minutes anyway). Nothing is stored per token. A token carries the
EHR issuer its client acts for: its calls see exactly that EHR's coverage assertions, like the EHR's own
hook JWT would. The asymmetric-only CDS Hooks verifier (``auth.py``) never accepts these tokens, and this
module never accepts anything but its own HMAC (keys and ``typ`` differ), so neither can stand in for the other.

Assertion keys come from the client's inline JWKS or its JWKS URL, fetched with ``auth.JwksClient`` through
the same fenced session (``egress.configure_session``) as issuers' keys; ``jti`` replay is refused through
the same ``ReplayGuard`` (the store, shared by all workers).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import requests

from .auth import (
    JwksClient,
    ReplayGuard,
    _bearer_token,
    _check_audience,
    _Key,
    _number,
    _Rejected,
    _safe,
    _unverified,
    key_source,
    signature_key,
    verified_payload,
)
from .config import DTR_SCOPES, SCOPE_PATTERN, Config, dtr_client_settings
from .egress import configure_session
from .errors import AuthError, ServiceError
from .logs import log_event

log = logging.getLogger("priorauth_cds.smart")

TOKEN_PATH = "/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: What SMART Backend Services requires servers to support; nothing else is accepted for assertions.
ASSERTION_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
#: Longest assertion lifetime the spec allows (exp no more than five minutes in the future).
MAX_ASSERTION_SECONDS = 300
ACCESS_TOKEN_SECONDS = 300
ACCESS_TOKEN_TYPE = "at+jwt"
_ACCESS_ALGORITHM = "HS256"
_MAX_FORM_VALUE = 8192
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}


class InsufficientScope(ServiceError):
    """A valid access token whose scopes do not cover the route (RFC 6750 ``insufficient_scope``)."""

    status = 403
    code = "forbidden"


class TokenError(Exception):
    """An OAuth 2.0 error answer of the token endpoint (RFC 6749 §5.2): ``{"error": ..., "error_description"}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Scope:
    """One ``system/<Resource>.<permissions>`` scope; v1 ``read``/``write``/``*`` become v2 letters."""

    resource: str
    permissions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        match = SCOPE_PATTERN.fullmatch(text)
        if match is None:
            return None
        resource, permissions = match.groups()
        return cls(resource, frozenset(_V1_PERMISSIONS.get(permissions, permissions)))

    def covers(self, other: Scope) -> bool:
        """Whether holding this scope allows everything ``other`` allows."""
        return self.resource in ("*", other.resource) and other.permissions <= self.permissions


def granted_scopes(requested: str, allowed: Sequence[str]) -> list[str]:
    """The requested scopes a client registered with ``allowed`` may have, as requested (order kept).

    A scope wider than the registration (``system/*.rs`` for a client allowed ``system/Questionnaire.rs``) is
    dropped, not narrowed: the token response's ``scope`` tells the client what it got (RFC 6749 §3.3).
    """
    held = [scope for scope in (Scope.parse(a) for a in allowed) if scope is not None]
    granted: list[str] = []
    for text in requested.split():
        scope = Scope.parse(text)
        if scope is not None and any(h.covers(scope) for h in held) and text not in granted:
            granted.append(text)
    return granted


def permits(scopes: Sequence[str], resource: str, permission: str) -> bool:
    """Whether ``scopes`` allow ``permission`` (one of c r u d s) on ``resource``."""
    wanted = Scope(resource, frozenset(permission))
    return any(scope is not None and scope.covers(wanted) for scope in (Scope.parse(s) for s in scopes))


@dataclass(frozen=True)
class DtrClient:
    """A registered backend client: its assertion keys, allowed scopes and the EHR issuer it acts for."""

    client_id: str
    keys: JwksClient | dict[str, list[_Key]]
    scopes: tuple[str, ...]
    issuer: str


@dataclass(frozen=True)
class AccessGrant:
    """A verified access token: who holds it, for which EHR, with which scopes."""

    client_id: str
    issuer: str
    scopes: tuple[str, ...]


def smart_configuration(base: str) -> dict[str, Any]:
    """``/.well-known/smart-configuration`` for the DTR routes (SMART App Launch 2.x, Backend Services)."""
    return {
        "issuer": base.rstrip("/"),
        "token_endpoint": base.rstrip("/") + TOKEN_PATH,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": list(DTR_SCOPES),
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }


class SmartAuthority:
    """Issues and checks DTR access tokens; one per process, built before gunicorn forks, thread-safe."""

    def __init__(
        self,
        config: Config,
        replay_guard: ReplayGuard,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._guard = replay_guard
        self._clock = clock
        self._key = (config.dtr_token_key or "").encode() or secrets.token_bytes(32)
        fenced = configure_session(session or requests.Session(), config)
        self._clients: dict[str, DtrClient] = {}
        for client_id, value in config.dtr_clients.items():
            keys, scopes, issuer = dtr_client_settings(client_id, value, config.trusted_issuers)
            source = key_source(
                f"CDS_DTR_CLIENTS {client_id!r}", keys, fenced, timeout=config.jwks_timeout_seconds, clock=clock
            )
            self._clients[client_id] = DtrClient(client_id, source, scopes, issuer)

    # ------------------------------------------------------------------------- token endpoint

    def issue(self, form: Mapping[str, str], token_url: str) -> dict[str, Any]:
        """The token response for a client_credentials request, or ``TokenError``."""
        if any(len(value) > _MAX_FORM_VALUE for value in form.values()):
            raise TokenError("invalid_request", "a form value is too long")
        if form.get("grant_type") != "client_credentials":
            raise TokenError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion, requested = form.get("client_assertion"), form.get("scope")
        if not assertion or not requested:
            raise TokenError("invalid_request", "client_assertion and scope are required")
        client = self._authenticate(assertion, token_url)
        granted = granted_scopes(requested, client.scopes)
        if not granted:
            log_event(log, "smart.invalid_scope", logging.WARNING, client=_safe(client.client_id))
            raise TokenError("invalid_scope", "none of the requested scopes is allowed for this client")
        now = int(self._clock())
        claims = {
            "iss": token_url,
            "aud": self._audience(token_url),
            "sub": client.client_id,
            "ehr": client.issuer,
            "scope": " ".join(granted),
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self._key, algorithm=_ACCESS_ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE})
        log_event(log, "smart.token_issued", client=_safe(client.client_id), scope=claims["scope"])
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": claims["scope"],
        }

    def _authenticate(self, assertion: str, token_url: str) -> DtrClient:
        """The registered client whose private_key_jwt this is; ``invalid_client`` (401) for any failure."""
        claimed: str | None = None
        try:
            header, unverified = _unverified(_bearer_token(f"Bearer {assertion}"))
            claimed = unverified.get("iss") if isinstance(unverified.get("iss"), str) else None
            client = self._clients.get(claimed or "")
            if client is None:
                raise _Rejected("smart.unknown_client")
            alg, kid = header.get("alg"), header.get("kid")
            if alg not in ASSERTION_ALGORITHMS or "crit" in header:
                raise _Rejected("jwt.alg_not_allowed")
            if not isinstance(kid, str) or not kid:
                raise _Rejected("jwt.missing_kid")
            if isinstance(client.keys, JwksClient) and "jku" in header and header["jku"] != client.keys.uri:
                raise _Rejected("jwt.jku_not_allowed")
            claims = verified_payload(assertion, signature_key(client.keys, kid, alg), alg)
            self._check_assertion(claims, client.client_id, token_url)
        except _Rejected as rejected:
            log_event(log, "smart.assertion_rejected", logging.WARNING, reason=rejected.reason, client=_safe(claimed))
            raise TokenError("invalid_client", "client authentication failed", status=401) from None
        return client

    def _check_assertion(self, claims: Mapping[str, Any], client_id: str, token_url: str) -> None:
        """iss = sub = client id, aud = token URL, exp within five minutes, a jti never used before."""
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise _Rejected("smart.iss_sub_mismatch")
        _check_audience(claims.get("aud"), token_url)
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        now, leeway = self._clock(), self._config.jwt_leeway_seconds
        if now > exp + leeway:
            raise _Rejected("jwt.expired")
        if exp - now > MAX_ASSERTION_SECONDS + leeway:
            raise _Rejected("jwt.lifetime_too_long")
        nbf = _number(claims, "nbf", required=False)
        if nbf is not None and nbf > now + leeway:
            raise _Rejected("jwt.not_yet_valid")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise _Rejected("jwt.missing_jti")
        if not self._guard.claim(f"smart-client:{client_id}", jti, datetime.fromtimestamp(exp + leeway, tz=UTC)):
            raise _Rejected("jwt.replayed")

    # ------------------------------------------------------------------------- access tokens

    @staticmethod
    def _audience(token_url: str) -> str:
        """The FHIR base the tokens are for: ``<base>/fhir`` of the same public base as the token URL."""
        return token_url.removesuffix(TOKEN_PATH) + "/fhir"

    @staticmethod
    def is_access_token(authorization_header: str | None) -> bool:
        """Whether the bearer token claims to be one of ours (``typ: at+jwt``); only then is ``grant`` asked."""
        try:
            header, _ = _unverified(_bearer_token(authorization_header))
        except _Rejected:
            return False
        return header.get("typ") == ACCESS_TOKEN_TYPE

    def grant(self, authorization_header: str | None, token_url: str) -> AccessGrant:
        """The verified access token's grant; ``AuthError`` (401) when it is not a live token of ours."""
        try:
            token = _bearer_token(authorization_header)
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ACCESS_ALGORITHM],
                audience=self._audience(token_url),
                issuer=token_url,
                options={"require": ["exp", "iat", "sub", "scope", "ehr"]},
                leeway=0,
            )
            header = jwt.get_unverified_header(token)
        except (_Rejected, jwt.PyJWTError) as failure:
            log_event(log, "smart.token_rejected", logging.WARNING, reason=type(failure).__name__)
            raise AuthError() from None
        client = self._clients.get(str(claims["sub"]))
        if (
            header.get("typ") != ACCESS_TOKEN_TYPE
            or client is None
            or not hmac.compare_digest(client.issuer.encode(), str(claims["ehr"]).encode())
        ):
            log_event(log, "smart.token_rejected", logging.WARNING, reason="client_unregistered")
            raise AuthError()
        return AccessGrant(client.client_id, client.issuer, tuple(str(claims["scope"]).split()))
