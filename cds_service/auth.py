"""CDS Hooks 2.0 client authentication: verify the caller's bearer JWT against trusted issuers' keys.

The CDS client signs a short-lived JWT with an asymmetric key whose public half its issuer publishes as a
JWKS. We accept only issuers from ``Config.trusted_issuers``, fetch keys only from their configured JWKS URL
(never from a URL the token names: a ``jku`` header must equal that URL; with an inline, pinned JWKS the ``jku``
is ignored and nothing is fetched), require ``typ`` (when present) to be ``JWT``, accept only asymmetric algorithms whose key type and curve match the key,
and remember every ``jti`` until the token expires so a captured token cannot be replayed — across worker
processes, via the injected ``ReplayGuard``.

A JWKS URL is fetched and cached by ``JwksClient``, a ``jwt.PyJWKClient`` subclass that fetches through our
``requests`` session (its docstring says what PyJWKClient covers and what is kept here); inline JWKS are parsed
once at start-up.

Every rejection raises ``AuthError`` (the client learns nothing more) and is logged at WARNING with a reason
code such as ``jwt.expired``; logs carry the claimed issuer and key id, never the token or other claim values.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.config import Config, ConfigError, issuer_settings
from cds_service.egress import configure_session
from cds_service.errors import AuthError
from cds_service.logs import log_event

log = logging.getLogger("priorauth_cds.auth")

#: Asymmetric signature algorithms CDS Hooks clients may use; ``none`` and every HMAC are absent on purpose.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_EC_CURVE_FOR_ALG: dict[str, str] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_JWK_CURVE_NAMES: dict[str, str] = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MIN_RSA_BITS = 2048
#: Longest Authorization header we parse; real CDS Hooks JWTs are well under 2 KB.
MAX_TOKEN_CHARS = 8192
#: Longest JWKS body we read, so a hostile or broken JWKS endpoint cannot exhaust memory.
MAX_JWKS_BYTES = 512 * 1024
_MAX_JTI_CHARS = 256
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# A JWS instance that cannot even construct the algorithms we refuse (defence in depth behind the alg check).
_JWS = jwt.PyJWS(algorithms=sorted(ALLOWED_ALGORITHMS))


class ReplayGuard(Protocol):
    """Remembers (issuer, jti) pairs until they expire; shared by all workers in production."""

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True if this is the first use of ``jti`` from ``issuer``; False if it was seen and has not expired."""
        ...


class InMemoryReplayGuard:
    """Single-process replay guard (tests, one worker). Thread-safe; forgets entries once they expire."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], datetime] = {}
        self._heap: list[tuple[datetime, tuple[str, str]]] = []

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record the pair; False if it is already recorded and still live."""
        key = (issuer, jti)
        if expires_at.tzinfo is None:  # naive datetimes are taken as UTC rather than failing to compare
            expires_at = expires_at.replace(tzinfo=UTC)
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._expiry:
                return False
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _purge(self, now: datetime) -> None:
        """Drop expired pairs, oldest first, so memory stays bounded by the tokens still alive."""
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]


class _Rejected(Exception):
    """Internal: carries the reason code of a rejection to the single place that logs it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _LogContext:
    """What we may log about a rejected token: the claimed issuer and key id, nothing else."""

    iss: str | None = None
    kid: str | None = None


@dataclass(frozen=True)
class _Key:
    """One usable public verification key from a JWKS."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    public_key: Any

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a signature made with ``alg`` (key type, curve and declared alg agree)."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith("ES"):
            return self.kty == "EC" and self.crv == _EC_CURVE_FOR_ALG.get(alg)
        return self.kty == "RSA" and alg[:2] in ("RS", "PS")


def _parse_jwk(jwk: Any) -> _Key | None:
    """A verification key from one JWK, or None when it is unusable for us (wrong use, type, size or alg)."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if alg is not None and alg not in ALLOWED_ALGORITHMS:
        return None
    loaded: Any
    try:
        if kty == "EC":
            loaded = ECAlgorithm.from_jwk(jwk)
        elif kty == "RSA":
            loaded = RSAAlgorithm.from_jwk(jwk)
        else:
            return None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    # A JWKS that (wrongly) publishes private material still only ever yields a public key here.
    public = loaded.public_key() if isinstance(loaded, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else loaded
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < _MIN_RSA_BITS:
            return None
        return _Key(kid=jwk["kid"], kty="RSA", crv=None, alg=alg, public_key=public)
    crv = _JWK_CURVE_NAMES.get(public.curve.name)
    if crv is None:
        return None
    return _Key(kid=jwk["kid"], kty="EC", crv=crv, alg=alg, public_key=public)


def parse_jwks(document: Any) -> dict[str, list[_Key]]:
    """Usable keys of a JWKS document by kid (a kid may name several keys, e.g. one EC and one RSA)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")  # noqa: TRY004 - callers catch ValueError for any unusable JWKS
    keys: dict[str, list[_Key]] = {}
    for jwk in document["keys"]:
        parsed = _parse_jwk(jwk)
        if parsed is not None:
            keys.setdefault(parsed.kid, []).append(parsed)
    return keys


class JwksFetchError(jwt.PyJWKClientConnectionError):
    """A JWKS fetch that yielded no usable key set; ``reason`` is the logged code (``jwks.timeout``, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksClient(jwt.PyJWKClient):
    """The key set of one issuer whose ``CDS_TRUSTED_ISSUERS`` entry is a JWKS URL: a ``jwt.PyJWKClient``.

    Why a subclass, and what is ours (checked against PyJWT 2.15's ``jwks_client.py``):

    * Kept from PyJWKClient: the endpoint (http(s) only, refused at construction as PyJWT >= 2.13 does), the
      request headers and timeout, and ``fetch_data`` as the one fetch hook.
    * ``fetch_data`` is overridden. PyJWKClient fetches with ``urllib.request``, whose default opener honours
      ``HTTP(S)_PROXY`` from the environment, cannot be given ``CDS_HTTP_PROXY`` alone, and ``json.load``s a body
      of any size. Ours goes through the verifier's ``requests`` session (``egress.configure_session``: no
      environment proxies, no ``.netrc``, only ``CDS_HTTP_PROXY``), refuses redirects and any status but 200,
      and stops reading at ``MAX_JWKS_BYTES``.
    * PyJWKClient's caches are off (``cache_jwk_set=False, cache_keys=False``) and the cache here is kept,
      because they lack what the verifier relies on: (1) on expiry PyJWKClient drops the set before refetching,
      so a JWKS outage locks every caller out, where we keep the last good keys until the URL answers again;
      (2) its cooldown only follows successful fetches and only guards unknown-``kid`` refreshes, so while the
      endpoint fails every request would hit it, where we allow one attempt per ``min_refresh`` seconds,
      failures included; (3) its LRU key cache never expires, so a key removed from the JWKS would stay valid;
      (4) it times with ``time.monotonic``, not the verifier's injectable clock; (5) it returns one ``PyJWK`` per
      ``kid`` with the ``alg`` inferred (RS256 for any RSA key), where a kid may name an EC and an RSA key and a
      key without ``alg`` serves every algorithm of its type. Keys are vetted by ``parse_jwks`` (allow-listed
      algorithms, RSA >= 2048 bits, known curves, ``use``/``key_ops``, public halves only).

    ``get_signing_key``/``get_jwk_set`` (inherited) would bypass that cache and vetting: the verifier calls
    ``candidates`` only. Thread-safe: one lock per issuer around refresh and lookup.
    """

    def __init__(
        self,
        uri: str,
        session: requests.Session,
        *,
        timeout: float,
        clock: Callable[[], float],
        min_refresh_seconds: float,
        cache_seconds: float,
    ) -> None:
        if urlsplit(uri).scheme.lower() not in ("http", "https"):  # PyJWT >= 2.13 refuses it too; older ones do not
            raise jwt.PyJWKClientError(f"Invalid JWKS URI scheme: {uri!r}")
        super().__init__(
            uri, cache_keys=False, cache_jwk_set=False, headers={"Accept": "application/json"}, timeout=timeout
        )
        self._session = session
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._cache_seconds = cache_seconds
        self._keys: dict[str, list[_Key]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def fetch_data(self) -> dict[str, Any]:
        """GET the JWKS document: 200, JSON object with a ``keys`` list, bounded size, no redirects."""
        try:
            with self._session.get(
                self.uri, timeout=self.timeout, headers=self.headers, allow_redirects=False, stream=True
            ) as response:
                if response.status_code != 200:
                    raise JwksFetchError(f"jwks.http_{response.status_code}")
                body = _read_bounded(response, MAX_JWKS_BYTES)
        except requests.Timeout:
            raise JwksFetchError("jwks.timeout") from None
        except requests.RequestException as exc:
            raise JwksFetchError(f"jwks.unreachable.{type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise JwksFetchError("jwks.not_jwks") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksFetchError("jwks.not_jwks")
        return document

    def candidates(self, kid: str) -> list[_Key]:
        """The usable keys named ``kid``: refetched when the cache is stale or ``kid`` is unknown (rate-limited)."""
        with self._lock:
            if self._is_stale() or (kid not in self._keys and self._may_fetch()):
                self._refresh()
            found = self._keys.get(kid)
            if not found:
                raise _Rejected("jwt.jwks_unavailable" if self._fetched_at is None else "jwt.unknown_kid")
            return found

    def _is_stale(self) -> bool:
        """No keys yet, or older than the cache lifetime — and a fetch is allowed now."""
        if self._fetched_at is not None and self._clock() - self._fetched_at < self._cache_seconds:
            return False
        return self._may_fetch()

    def _may_fetch(self) -> bool:
        """At most one JWKS request per ``min_refresh_seconds``, failed ones included, whatever callers send us."""
        if self._attempted_at is None:
            return True
        elapsed = self._clock() - self._attempted_at
        return elapsed < 0 or elapsed >= self._min_refresh

    def _refresh(self) -> None:
        """Refetch; on failure keep the keys we had (if any) so a JWKS outage does not lock callers out.

        The trade-off: a key removed from the JWKS stays usable until the JWKS URL answers again.
        """
        self._attempted_at = self._clock()
        try:
            keys = parse_jwks(self.fetch_data())
            if not keys:
                raise JwksFetchError("jwks.no_usable_keys")
        except JwksFetchError as failure:
            log_event(log, "auth.jwks_fetch_failed", logging.WARNING, reason=failure.reason, url=_safe(self.uri))
            return
        self._keys = keys
        self._fetched_at = self._clock()


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    """A NumericDate claim, rejecting booleans, strings and non-finite values."""
    if name not in claims:
        if required:
            raise _Rejected(f"jwt.missing_{name}")
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Rejected(f"jwt.invalid_{name}")
    try:
        number = float(value)
    except OverflowError:
        raise _Rejected(f"jwt.invalid_{name}") from None
    if not math.isfinite(number):
        raise _Rejected(f"jwt.invalid_{name}")
    return number


def check_claims(claims: Mapping[str, Any], *, audience: str, now: float, leeway: float, max_lifetime: float) -> None:
    """Validate aud, exp, iat, nbf, lifetime and jti presence (signature and iss are checked before this)."""
    exp = _number(claims, "exp", required=True)
    iat = _number(claims, "iat", required=True)
    nbf = _number(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    jti = claims.get("jti")
    if jti is None:
        raise _Rejected("jwt.missing_jti")
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
        raise _Rejected("jwt.invalid_jti")
    _check_audience(claims.get("aud"), audience)
    if now > exp + leeway:
        raise _Rejected("jwt.expired")
    if iat > now + leeway:
        raise _Rejected("jwt.iat_in_future")
    if nbf is not None and nbf > now + leeway:
        raise _Rejected("jwt.not_yet_valid")
    if exp <= iat:
        raise _Rejected("jwt.invalid_lifetime")
    if exp - iat > max_lifetime:
        raise _Rejected("jwt.lifetime_too_long")


def _check_audience(aud: Any, audience: str) -> None:
    """``aud`` must be the URL called: the string itself, or a list of strings containing it."""
    if aud is None:
        raise _Rejected("jwt.missing_aud")
    if isinstance(aud, str):
        if aud != audience:
            raise _Rejected("jwt.wrong_audience")
        return
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        if audience not in aud:
            raise _Rejected("jwt.wrong_audience")
        return
    raise _Rejected("jwt.invalid_aud")


def _bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <jwt>`` header (scheme case-insensitive, RFC 7235)."""
    if authorization_header is None or not authorization_header.strip():
        raise _Rejected("auth.missing")
    if len(authorization_header) > MAX_TOKEN_CHARS:
        raise _Rejected("jwt.too_large")
    parts = authorization_header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise _Rejected("auth.not_bearer")
    if not _COMPACT_JWS.match(parts[1]):
        raise _Rejected("jwt.malformed")
    return parts[1]


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload before verification: only used to choose the key, never trusted."""
    try:
        decoded = _JWS.decode_complete(token, options={"verify_signature": False})
        payload = json.loads(decoded["payload"])
    except (jwt.PyJWTError, ValueError, RecursionError, UnicodeDecodeError):
        raise _Rejected("jwt.malformed") from None
    if not isinstance(payload, dict):
        raise _Rejected("jwt.malformed")
    return decoded["header"], payload


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    """The (alg, kid) of an acceptable header; refuses none/HMAC/unknown algs and critical extensions."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise _Rejected("jwt.alg_not_allowed")
    if "crit" in header or "b64" in header:  # PyJWT already refuses most; we support no extension at all
        raise _Rejected("jwt.unsupported_header")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() != "jwt"):
        raise _Rejected("jwt.bad_typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _Rejected("jwt.missing_kid")
    return alg, kid


def _safe(value: str | None) -> str:
    """A caller-supplied string made safe for one log line (quoted, no newlines, bounded)."""
    return "-" if value is None else repr(value[:120])


def key_source(
    owner: str,
    value: Any,
    session: requests.Session,
    *,
    timeout: float,
    clock: Callable[[], float],
    min_refresh_seconds: float = 30.0,
    cache_seconds: float = 3600.0,
) -> JwksClient | dict[str, list[_Key]]:
    """The keys of one JWKS setting (a trusted issuer's, or a SMART client's): a ``JwksClient`` fetching through
    ``session`` for a URL, or an inline JWKS parsed now. ``owner`` names the setting in the ``ConfigError``."""
    if isinstance(value, str) and value:
        try:
            return JwksClient(
                value,
                session,
                timeout=timeout,
                clock=clock,
                min_refresh_seconds=min_refresh_seconds,
                cache_seconds=cache_seconds,
            )
        except jwt.PyJWKClientError:
            raise ConfigError(f"{owner}: the JWKS URL must be http(s)") from None
    try:
        keys = parse_jwks(value)
    except ValueError:
        raise ConfigError(f"{owner}: value must be a JWKS URL or an inline JWKS object") from None
    if not keys:
        raise ConfigError(f"{owner}: inline JWKS has no usable signature key with a kid")
    return keys


def signature_key(source: JwksClient | dict[str, list[_Key]], kid: str, alg: str) -> _Key:
    """The key of ``source`` named ``kid`` that may verify ``alg`` (fetching a URL's JWKS when needed)."""
    if isinstance(source, JwksClient):
        candidates = source.candidates(kid)
    else:
        candidates = source.get(kid) or []
        if not candidates:
            raise _Rejected("jwt.unknown_kid")
    key = next((key for key in candidates if key.fits(alg)), None)
    if key is None:
        raise _Rejected("jwt.key_mismatch")
    return key


class JwtVerifier:
    """Verifies CDS Hooks bearer JWTs; one instance per process, safe to share between threads."""

    def __init__(
        self,
        config: Config,
        replay_guard: ReplayGuard,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
        jwks_min_refresh_seconds: float = 30.0,
        jwks_cache_seconds: float = 3600.0,
    ) -> None:
        self._config = config
        self._guard = replay_guard
        self._session = configure_session(session or requests.Session(), config)
        self._clock = clock
        self._issuers = {
            issuer: self._issuer_keys(issuer, value, jwks_min_refresh_seconds, jwks_cache_seconds)
            for issuer, value in config.trusted_issuers.items()
        }

    def _issuer_keys(
        self, issuer: str, value: Any, min_refresh: float, cache_seconds: float
    ) -> JwksClient | dict[str, list[_Key]]:
        """A ``JwksClient`` for a JWKS URL; an inline (pinned) JWKS is parsed once, here (bad ones stop start-up)."""
        value, _ = issuer_settings(value)
        return key_source(
            f"issuer {issuer!r}",
            value,
            self._session,
            timeout=self._config.jwks_timeout_seconds,
            clock=self._clock,
            min_refresh_seconds=min_refresh,
            cache_seconds=cache_seconds,
        )

    def verify(self, authorization_header: str | None, audience: str) -> dict[str, Any]:
        """The verified claims of the request's bearer JWT; raises ``AuthError`` for any problem."""
        context = _LogContext()
        try:
            claims = self._verify(authorization_header, audience, context)
        except _Rejected as rejected:
            fields = {"reason": rejected.reason, "iss": _safe(context.iss), "kid": _safe(context.kid)}
            log.warning("auth.jwt_rejected", extra={"fields": fields, "auth_reason": rejected.reason})
            raise AuthError() from None
        log_event(log, "auth.jwt_accepted", logging.DEBUG, iss=_safe(context.iss), kid=_safe(context.kid))
        return claims

    def _verify(self, authorization_header: str | None, audience: str, context: _LogContext) -> dict[str, Any]:
        token = _bearer_token(authorization_header)
        header, unverified = _unverified(token)
        if isinstance(header.get("kid"), str):
            context.kid = header["kid"]
        if isinstance(unverified.get("iss"), str):
            context.iss = unverified["iss"]
        alg, kid = _check_header(header)
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise _Rejected("jwt.missing_iss")
        entry = self._issuers.get(issuer)
        if entry is None:
            raise _Rejected("jwt.unknown_issuer")
        # A pinned (inline) JWKS ignores jku (the CDS Hooks sandbox always sends one): it is never fetched. With a
        # JWKS URL, a jku must name exactly that URL; keys are only ever fetched from the configured URL.
        if isinstance(entry, JwksClient) and "jku" in header and header["jku"] != entry.uri:
            raise _Rejected("jwt.jku_not_allowed")
        key = signature_key(entry, kid, alg)
        claims = verified_payload(token, key, alg)
        now = self._clock()
        leeway = self._config.jwt_leeway_seconds
        check_claims(
            claims, audience=audience, now=now, leeway=leeway, max_lifetime=self._config.jwt_max_lifetime_seconds
        )
        expires_at = datetime.fromtimestamp(float(claims["exp"]) + leeway, tz=UTC)
        if not self._guard.claim(issuer, claims["jti"], expires_at):
            raise _Rejected("jwt.replayed")
        return claims


def verified_payload(token: str, key: _Key, alg: str) -> dict[str, Any]:
    """The payload once the signature checks out with ``key`` under exactly ``alg``."""
    try:
        decoded = _JWS.decode_complete(token, key=key.public_key, algorithms=[alg])
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _Rejected("jwt.bad_signature") from None
    claims = json.loads(decoded["payload"])
    if not isinstance(claims, dict):
        raise _Rejected("jwt.malformed")
    return claims


def _read_bounded(response: requests.Response, limit: int) -> bytes:
    """The response body, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            raise JwksFetchError("jwks.too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def audience_for(path: str, public_base_url: str) -> str:
    """The ``aud`` a caller must use: ``CDS_PUBLIC_BASE_URL`` + the route, never derived from the Host header
    (which the caller controls). ``path`` is the route inside the app (Flask's ``request.path``);
    ``public_base_url`` already includes any prefix a proxy strips.
    """
    return public_base_url.rstrip("/") + "/" + path.lstrip("/")


def is_loopback_host(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    candidate = host.strip().strip("[]").rstrip(".").lower()
    if candidate == "localhost":
        return True
    try:
        address = ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_bind_security(config: Config) -> str | None:
    """Secure default: without trusted issuers, serve unauthenticated only on loopback unless explicitly allowed.

    Returns a warning to log at start-up (None when JWT checks are on); raises ``ConfigError`` when the
    service would accept unauthenticated calls from the network without ``allow_unauthenticated``.
    """
    if config.auth_enabled:
        if not config.public_base_url:
            raise ConfigError(
                "CDS_PUBLIC_BASE_URL is required with CDS_TRUSTED_ISSUERS (it is the JWT audience); set it to the "
                "URL EHRs call, e.g. https://cds.payer.example"
            )
        return None
    if is_loopback_host(config.host):
        return (
            f"JWT authentication is OFF (no trusted issuers): accepting unauthenticated calls on loopback "
            f"{config.host} only"
        )
    if config.allow_unauthenticated:
        return (
            f"SECURITY WARNING: JWT authentication is OFF and the service listens on {config.host}: ANY network "
            f"client can call it (allow_unauthenticated is set). Configure trusted issuers before production use."
        )
    raise ConfigError(
        f"refusing to listen on non-loopback address {config.host!r} without trusted JWT issuers; configure "
        f"CDS_TRUSTED_ISSUERS, bind to 127.0.0.1, or set CDS_ALLOW_UNAUTHENTICATED=true"
    )
