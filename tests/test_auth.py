"""Tests for CDS Hooks JWT client authentication (cds_service.auth).

The JWT matrix checks not only that a bad token is refused but that it is refused for the expected reason
(the reason code in the WARNING log), so a test cannot pass because an earlier, unrelated check failed.
Time is frozen through the verifier's injected clock; the JWKS endpoint is mocked with ``responses``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
import responses
from jwt.algorithms import ECAlgorithm

from cds_service.auth import (
    InMemoryReplayGuard,
    JwtVerifier,
    audience_for,
    check_bind_security,
    is_loopback_host,
)
from cds_service.config import Config, ConfigError
from cds_service.errors import AuthError, outcome_for
from tests.jwt_helpers import OMIT, bearer, cds_claims, ec_key, hmac_token, jwks, raw_token, rsa_key

ISSUER = "https://ehr.example.org"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
INLINE_ISSUER = "https://inline.example.org"
AUD = "https://cds.example.org/cds-services/everolimus-crd"
NOW = 1_750_000_000.0
LEEWAY = 30
MAX_LIFETIME = 3600
REFRESH = 30.0

EC = ec_key("ES384", kid="ec-1")
RSA = rsa_key("RS384", kid="rsa-1")
RSA_RS256_ONLY = rsa_key("RS256", kid="rsa-2")
INLINE = ec_key("ES256", kid="inline-1")
STRANGER = ec_key("ES384", kid="stranger")
P256 = ec_key("ES256", kid="p256")
EC_NO_ALG = ec_key("ES384", kid="ec-no-alg")
# The RSA key's JWK declares no alg, so it serves RS* and PS*; rsa-2 declares RS256 and serves nothing else;
# ec-no-alg declares no alg, so only its curve (P-384) ties it to ES384.
ISSUER_JWKS = jwks(EC, RSA.public_jwk(alg=OMIT), RSA_RS256_ONLY, EC_NO_ALG.public_jwk(alg=OMIT))


class FakeClock:
    """Frozen wall clock (seconds since the epoch) that tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def as_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=timezone.utc)


@dataclass
class World:
    """A verifier wired to a mocked JWKS endpoint, a frozen clock and an in-memory replay guard."""

    verifier: JwtVerifier
    clock: FakeClock
    guard: InMemoryReplayGuard
    mock: responses.RequestsMock
    config: Config

    def jwks_calls(self) -> int:
        return sum(1 for call in self.mock.calls if call.request.url == JWKS_URL)


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "trusted_issuers": {ISSUER: JWKS_URL, INLINE_ISSUER: jwks(INLINE)},
        "jwt_leeway_seconds": LEEWAY,
        "jwt_max_lifetime_seconds": MAX_LIFETIME,
        "jwks_timeout_seconds": 1.5,
    }
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def world(mock: responses.RequestsMock) -> World:
    mock.get(JWKS_URL, json=ISSUER_JWKS)
    clock = FakeClock(NOW)
    guard = InMemoryReplayGuard(clock=clock.as_datetime)
    config = make_config()
    verifier = JwtVerifier(config, guard, clock=clock, jwks_min_refresh_seconds=REFRESH)
    return World(verifier, clock, guard, mock, config)


@pytest.fixture
def auth_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # The service's loggers do not propagate to the root logger caplog listens on: attach its handler.
    from cds_service.logs import JsonFormatter

    logger = logging.getLogger("priorauth_cds.auth")
    propagate = logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False  # caplog's handler is on the root logger too: count each record once
    caplog.handler.setFormatter(JsonFormatter())  # the fields (reason, iss, kid) as the service writes them
    caplog.set_level(logging.DEBUG, logger="priorauth_cds.auth")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.auth_reason for r in caplog.records if hasattr(r, "auth_reason")]


def claims(**overrides: Any) -> dict[str, Any]:
    return cds_claims(ISSUER, AUD, NOW, **overrides)


def tampered(token: str, **overrides: Any) -> str:
    """The token with its payload swapped for another, signature kept."""
    header, _, signature = token.split(".")
    forged = raw_token({}, claims(**overrides)).split(".")[1]
    return f"{header}.{forged}.{signature}"


MATRIX: list[Any] = [
    # accepted
    pytest.param(lambda: bearer(EC.sign(claims())), None, id="valid-ES384"),
    pytest.param(lambda: bearer(RSA.sign(claims())), None, id="valid-RS384"),
    pytest.param(lambda: bearer(RSA.sign(claims(), alg="PS256")), None, id="valid-PS256-same-rsa-key"),
    pytest.param(lambda: bearer(RSA_RS256_ONLY.sign(claims())), None, id="valid-RS256-declared-alg"),
    pytest.param(lambda: bearer(INLINE.sign(claims(iss=INLINE_ISSUER))), None, id="valid-inline-jwks-ES256"),
    pytest.param(lambda: bearer(EC.sign(claims(aud=["https://other.example", AUD]))), None, id="aud-list-has-url"),
    pytest.param(lambda: "bearer " + EC.sign(claims()), None, id="scheme-case-insensitive"),
    pytest.param(lambda: bearer(EC.sign(claims(iat=NOW - 300, exp=NOW - 10))), None, id="expired-within-leeway"),
    pytest.param(lambda: bearer(EC.sign(claims(nbf=NOW + 10))), None, id="nbf-within-leeway"),
    pytest.param(lambda: bearer(EC.sign(claims(exp=NOW + MAX_LIFETIME))), None, id="lifetime-at-maximum"),
    pytest.param(lambda: bearer(EC.sign(claims(), jku=JWKS_URL)), None, id="jku-equals-configured-url"),
    pytest.param(
        lambda: bearer(INLINE.sign(claims(iss=INLINE_ISSUER), jku="https://inline.example.org/jwks.json")),
        None,
        id="jku-on-inline-issuer-pinned-keys",
    ),
    pytest.param(lambda: bearer(EC.sign(claims(), typ="jwt")), None, id="typ-jwt-any-case"),
    pytest.param(lambda: bearer(EC.sign(claims(), typ=OMIT)), None, id="typ-absent"),
    pytest.param(lambda: bearer(EC.sign(claims(), typ="at+jwt")), "jwt.bad_typ", id="typ-access-token"),
    pytest.param(lambda: bearer(EC.sign(claims(), typ="JOSE")), "jwt.bad_typ", id="typ-jose"),
    # algorithm attacks
    pytest.param(
        lambda: bearer(raw_token({"alg": "none", "kid": "ec-1", "typ": "JWT"}, claims())),
        "jwt.alg_not_allowed",
        id="alg-none",
    ),
    pytest.param(
        lambda: bearer(raw_token({"alg": "None", "kid": "ec-1"}, claims(), b"sig")),
        "jwt.alg_not_allowed",
        id="alg-None-with-signature",
    ),
    pytest.param(lambda: bearer(raw_token({"kid": "ec-1"}, claims(), b"sig")), "jwt.alg_not_allowed", id="no-alg"),
    pytest.param(
        lambda: bearer(hmac_token({"alg": "HS256", "kid": "ec-1"}, claims(), b"a-shared-secret")),
        "jwt.alg_not_allowed",
        id="HS256-shared-secret",
    ),
    pytest.param(
        lambda: bearer(hmac_token({"alg": "HS256", "kid": "ec-1"}, claims(), EC.public_pem())),
        "jwt.alg_not_allowed",
        id="HS256-signed-with-EC-public-key-pem",
    ),
    pytest.param(
        lambda: bearer(hmac_token({"alg": "HS256", "kid": "rsa-1"}, claims(), RSA.public_pem())),
        "jwt.alg_not_allowed",
        id="HS256-signed-with-RSA-public-key-pem",
    ),
    pytest.param(
        lambda: bearer(raw_token({"alg": "EdDSA", "kid": "ec-1"}, claims(), b"sig")),
        "jwt.alg_not_allowed",
        id="alg-outside-allow-list",
    ),
    pytest.param(lambda: bearer(RSA.sign(claims(), kid="ec-1")), "jwt.key_mismatch", id="RS384-on-EC-key"),
    pytest.param(lambda: bearer(EC.sign(claims(), kid="rsa-1")), "jwt.key_mismatch", id="ES384-on-RSA-key"),
    pytest.param(lambda: bearer(P256.sign(claims(), kid="ec-1")), "jwt.key_mismatch", id="ES256-on-P384-key"),
    pytest.param(lambda: bearer(EC_NO_ALG.sign(claims())), None, id="valid-ES384-key-without-declared-alg"),
    pytest.param(
        lambda: bearer(P256.sign(claims(), kid="ec-no-alg")), "jwt.key_mismatch", id="ES256-on-P384-key-without-alg"
    ),
    pytest.param(
        lambda: bearer(RSA_RS256_ONLY.sign(claims(), alg="PS256")), "jwt.key_mismatch", id="alg-not-jwk-declared-alg"
    ),
    pytest.param(lambda: bearer(STRANGER.sign(claims(), kid="ec-1")), "jwt.bad_signature", id="signed-by-other-key"),
    pytest.param(
        lambda: bearer(tampered(EC.sign(claims()), aud=AUD)), "jwt.bad_signature", id="payload-swapped"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(), crit=["exp"])), "jwt.malformed", id="crit-header"),
    # audience
    pytest.param(lambda: bearer(EC.sign(claims(aud="https://cds.example.org/"))), "jwt.wrong_audience", id="aud"),
    pytest.param(
        lambda: bearer(EC.sign(claims(aud=["https://a.example", "https://b.example"]))),
        "jwt.wrong_audience",
        id="aud-list-without-url",
    ),
    pytest.param(lambda: bearer(EC.sign(claims(aud=OMIT))), "jwt.missing_aud", id="aud-missing"),
    pytest.param(lambda: bearer(EC.sign(claims(aud=42))), "jwt.invalid_aud", id="aud-not-string"),
    # time
    pytest.param(
        lambda: bearer(EC.sign(claims(iat=NOW - 600, exp=NOW - LEEWAY - 1))), "jwt.expired", id="expired"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(nbf=NOW + LEEWAY + 1))), "jwt.not_yet_valid", id="nbf-in-future"),
    pytest.param(
        lambda: bearer(EC.sign(claims(iat=NOW + LEEWAY + 1))), "jwt.iat_in_future", id="iat-in-future"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(exp=OMIT))), "jwt.missing_exp", id="exp-missing"),
    pytest.param(lambda: bearer(EC.sign(claims(iat=OMIT))), "jwt.missing_iat", id="iat-missing"),
    pytest.param(lambda: bearer(EC.sign(claims(exp=str(NOW + 60)))), "jwt.invalid_exp", id="exp-string"),
    pytest.param(lambda: bearer(EC.sign(claims(iat=True))), "jwt.invalid_iat", id="iat-boolean"),
    pytest.param(lambda: bearer(EC.sign(claims(exp=10**400))), "jwt.invalid_exp", id="exp-overflows-float"),
    pytest.param(
        lambda: bearer(EC.sign(claims(exp=NOW + MAX_LIFETIME + 1))), "jwt.lifetime_too_long", id="lifetime-too-long"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(exp=NOW))), "jwt.invalid_lifetime", id="exp-equals-iat"),
    # jti
    pytest.param(lambda: bearer(EC.sign(claims(jti=OMIT))), "jwt.missing_jti", id="jti-missing"),
    pytest.param(lambda: bearer(EC.sign(claims(jti=""))), "jwt.invalid_jti", id="jti-empty"),
    pytest.param(lambda: bearer(EC.sign(claims(jti=7))), "jwt.invalid_jti", id="jti-number"),
    pytest.param(lambda: bearer(EC.sign(claims(jti="x" * 257))), "jwt.invalid_jti", id="jti-too-long"),
    # issuer and keys
    pytest.param(
        lambda: bearer(EC.sign(claims(iss="https://evil.example"))), "jwt.unknown_issuer", id="unknown-iss"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(iss=OMIT))), "jwt.missing_iss", id="iss-missing"),
    pytest.param(
        lambda: bearer(EC.sign(claims(), jku="https://evil.example/jwks.json")),
        "jwt.jku_not_allowed",
        id="jku-unlisted",
    ),
    pytest.param(lambda: bearer(STRANGER.sign(claims())), "jwt.unknown_kid", id="unknown-kid"),
    pytest.param(
        lambda: bearer(STRANGER.sign(claims(iss=INLINE_ISSUER))), "jwt.unknown_kid", id="unknown-kid-inline-issuer"
    ),
    pytest.param(lambda: bearer(EC.sign(claims(), kid=OMIT)), "jwt.missing_kid", id="kid-missing"),
    pytest.param(lambda: bearer(EC.sign(b"[1, 2]")), "jwt.malformed", id="payload-not-object"),
    # the Authorization header itself
    pytest.param(lambda: None, "auth.missing", id="no-header"),
    pytest.param(lambda: "  ", "auth.missing", id="blank-header"),
    pytest.param(lambda: "Bearer", "auth.not_bearer", id="bearer-without-token"),
    pytest.param(lambda: "Basic x", "auth.not_bearer", id="basic-auth"),
    pytest.param(lambda: "Bearer a b", "auth.not_bearer", id="bearer-two-tokens"),
    pytest.param(lambda: "Bearer not.a.jwt", "jwt.malformed", id="bearer-not-a-jwt"),
    pytest.param(lambda: "Bearer !!.??.**", "jwt.malformed", id="bearer-bad-characters"),
    pytest.param(lambda: "Bearer " + "A" * 9000, "jwt.too_large", id="header-too-large"),
]


@pytest.mark.parametrize(("make_header", "reason"), MATRIX)
def test_jwt_matrix(
    world: World, auth_log: pytest.LogCaptureFixture, make_header: Callable[[], str | None], reason: str | None
) -> None:
    header = make_header()
    if reason is None:
        verified = world.verifier.verify(header, AUD)
        assert verified["jti"] and verified["iss"] in (ISSUER, INLINE_ISSUER)
        assert reasons(auth_log) == []
    else:
        with pytest.raises(AuthError) as raised:
            world.verifier.verify(header, AUD)
        assert reasons(auth_log) == [reason]
        assert outcome_for(raised.value)["issue"][0]["diagnostics"] == "Unauthorized"
        assert [r.levelno for r in auth_log.records if hasattr(r, "auth_reason")] == [logging.WARNING]


def test_unlisted_jku_is_never_fetched(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    evil = "https://evil.example/jwks.json"
    world.mock.get(evil, json=jwks(STRANGER))
    with pytest.raises(AuthError):
        world.verifier.verify(bearer(STRANGER.sign(claims(), jku=evil)), AUD)
    assert [c.request.url for c in world.mock.calls if c.request.url == evil] == []


def test_replayed_jti_is_rejected(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    token = bearer(EC.sign(claims()))
    world.verifier.verify(token, AUD)
    with pytest.raises(AuthError):
        world.verifier.verify(token, AUD)
    assert reasons(auth_log) == ["jwt.replayed"]


def test_replay_is_detected_across_verifiers_sharing_a_guard(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    other_worker = JwtVerifier(world.config, world.guard, clock=world.clock)
    token = bearer(EC.sign(claims()))
    world.verifier.verify(token, AUD)
    with pytest.raises(AuthError):
        other_worker.verify(token, AUD)
    assert reasons(auth_log) == ["jwt.replayed"]


def test_rejected_token_does_not_use_up_its_jti(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    token = bearer(EC.sign(claims()))
    with pytest.raises(AuthError):
        world.verifier.verify(token, "https://cds.example.org/cds-services/other")
    assert world.verifier.verify(token, AUD)["aud"] == AUD


def test_same_jti_from_another_issuer_is_not_a_replay(world: World) -> None:
    world.verifier.verify(bearer(EC.sign(claims(jti="shared"))), AUD)
    assert world.verifier.verify(bearer(INLINE.sign(claims(iss=INLINE_ISSUER, jti="shared"))), AUD)["jti"] == "shared"


def test_replay_guard_remembers_jti_until_exp_plus_leeway(world: World) -> None:
    seen: list[tuple[str, str, datetime]] = []

    class Recorder:
        def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
            seen.append((issuer, jti, expires_at))
            return True

    verifier = JwtVerifier(world.config, Recorder(), clock=world.clock)
    verifier.verify(bearer(EC.sign(claims(jti="j-1", exp=NOW + 120))), AUD)
    assert seen == [(ISSUER, "j-1", datetime.fromtimestamp(NOW + 120 + LEEWAY, tz=timezone.utc))]


def test_jwks_is_fetched_once_and_cached(world: World) -> None:
    for _ in range(3):
        world.verifier.verify(bearer(EC.sign(claims())), AUD)
    assert world.jwks_calls() == 1
    call = world.mock.calls[0]
    assert call.request.req_kwargs["timeout"] == 1.5


def test_unknown_kid_triggers_one_refresh_that_finds_the_rotated_key(world: World) -> None:
    world.verifier.verify(bearer(EC.sign(claims())), AUD)
    rotated = ec_key("ES384", kid="ec-2")
    world.mock.replace(responses.GET, JWKS_URL, json=jwks(EC, rotated))
    world.clock.now += REFRESH
    assert world.verifier.verify(bearer(rotated.sign(claims())), AUD)["iss"] == ISSUER
    assert world.jwks_calls() == 2


def test_unknown_kid_refresh_still_missing_is_rejected_and_rate_limited(
    world: World, auth_log: pytest.LogCaptureFixture
) -> None:
    world.verifier.verify(bearer(EC.sign(claims())), AUD)
    world.clock.now += REFRESH
    for _ in range(5):
        with pytest.raises(AuthError):
            world.verifier.verify(bearer(STRANGER.sign(claims())), AUD)
    assert world.jwks_calls() == 2  # the first unknown kid refreshed; the next four did not hit the JWKS URL
    assert reasons(auth_log) == ["jwt.unknown_kid"] * 5
    world.clock.now += REFRESH
    with pytest.raises(AuthError):
        world.verifier.verify(bearer(STRANGER.sign(claims())), AUD)
    assert world.jwks_calls() == 3


def test_cache_expiry_refetches_and_keeps_old_keys_when_refetch_fails(world: World) -> None:
    verifier = JwtVerifier(world.config, world.guard, clock=world.clock, jwks_cache_seconds=600)
    verifier.verify(bearer(EC.sign(claims())), AUD)
    world.mock.replace(responses.GET, JWKS_URL, status=503)
    world.clock.now += 601
    assert verifier.verify(bearer(EC.sign(cds_claims(ISSUER, AUD, world.clock.now))), AUD)["iss"] == ISSUER
    assert world.jwks_calls() == 2


def test_cache_expiry_drops_a_revoked_key(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    verifier = JwtVerifier(world.config, world.guard, clock=world.clock, jwks_cache_seconds=600)
    verifier.verify(bearer(EC.sign(claims())), AUD)
    world.mock.replace(responses.GET, JWKS_URL, json=jwks(RSA))
    world.clock.now += 601
    with pytest.raises(AuthError):
        verifier.verify(bearer(EC.sign(cds_claims(ISSUER, AUD, world.clock.now))), AUD)
    assert reasons(auth_log) == ["jwt.unknown_kid"]


@pytest.mark.parametrize(
    "response",
    [
        pytest.param({"body": requests.ConnectionError("down")}, id="connection-refused"),
        pytest.param({"body": requests.Timeout("slow")}, id="timeout"),
        pytest.param({"status": 500, "body": "oops"}, id="http-500"),
        pytest.param({"status": 302, "headers": {"Location": "https://evil.example/jwks.json"}}, id="redirect"),
        pytest.param({"body": "<html>not json</html>"}, id="not-json"),
        pytest.param({"json": {"no": "keys"}}, id="json-not-jwks"),
        pytest.param({"json": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "ec-1"}]}}, id="only-hmac-key"),
        pytest.param({"body": json.dumps(ISSUER_JWKS) + " " * (600 * 1024)}, id="valid-but-too-large"),
    ],
)
def test_jwks_failures_are_auth_errors(
    mock: responses.RequestsMock, auth_log: pytest.LogCaptureFixture, response: dict[str, Any]
) -> None:
    mock.get(JWKS_URL, **response)
    mock.get("https://evil.example/jwks.json", json=jwks(EC))
    clock = FakeClock(NOW)
    verifier = JwtVerifier(make_config(), InMemoryReplayGuard(), clock=clock)
    with pytest.raises(AuthError):
        verifier.verify(bearer(EC.sign(claims())), AUD)
    assert reasons(auth_log) == ["jwt.jwks_unavailable"]
    assert [c.request.url for c in mock.calls] == [JWKS_URL]
    # A second attempt right away does not hammer the broken endpoint.
    with pytest.raises(AuthError):
        verifier.verify(bearer(EC.sign(claims())), AUD)
    assert len(mock.calls) == 1


def test_jwks_recovers_after_outage(mock: responses.RequestsMock) -> None:
    mock.get(JWKS_URL, status=500)
    clock = FakeClock(NOW)
    verifier = JwtVerifier(make_config(), InMemoryReplayGuard(), clock=clock, jwks_min_refresh_seconds=REFRESH)
    with pytest.raises(AuthError):
        verifier.verify(bearer(EC.sign(claims())), AUD)
    mock.replace(responses.GET, JWKS_URL, json=ISSUER_JWKS)
    clock.now += REFRESH
    assert verifier.verify(bearer(EC.sign(claims())), AUD)["iss"] == ISSUER


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_unusable_keys_in_jwks_are_ignored(mock: responses.RequestsMock, auth_log: pytest.LogCaptureFixture) -> None:
    weak = rsa_key("RS256", kid="weak", bits=1024)
    encryption = ec_key("ES384", kid="enc")
    mock.get(JWKS_URL, json=jwks(EC, weak, encryption.public_jwk(use="enc")))
    verifier = JwtVerifier(make_config(), InMemoryReplayGuard(), clock=FakeClock(NOW))
    assert verifier.verify(bearer(EC.sign(claims())), AUD)["iss"] == ISSUER
    for key in (weak, encryption):
        with pytest.raises(AuthError):
            verifier.verify(bearer(key.sign(claims())), AUD)
    assert reasons(auth_log) == ["jwt.unknown_kid", "jwt.unknown_kid"]


def test_private_key_material_in_jwks_only_yields_the_public_key(mock: responses.RequestsMock) -> None:
    leaky = ec_key("ES384", kid="leaky")
    private_jwk = json.loads(ECAlgorithm.to_jwk(leaky.private_key)) | {"kid": "leaky"}
    mock.get(JWKS_URL, json={"keys": [private_jwk]})
    verifier = JwtVerifier(make_config(), InMemoryReplayGuard(), clock=FakeClock(NOW))
    assert verifier.verify(bearer(leaky.sign(claims())), AUD)["iss"] == ISSUER


def test_inline_jwks_without_usable_keys_refuses_to_start() -> None:
    with pytest.raises(ConfigError):
        hmac_only = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]}
        JwtVerifier(make_config(trusted_issuers={ISSUER: hmac_only}), InMemoryReplayGuard())
    with pytest.raises(ConfigError):
        JwtVerifier(make_config(trusted_issuers={ISSUER: 42}), InMemoryReplayGuard())


def test_failure_log_never_contains_token_or_claim_values(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    secret_claims = claims(sub="dr-who-client", jti="jti-do-not-log", aud="https://wrong.example/aud-do-not-log")
    tokens = [
        EC.sign(secret_claims),
        STRANGER.sign(secret_claims, kid="ec-1"),
        EC.sign({**secret_claims, "aud": AUD, "exp": NOW - 3600, "iat": NOW - 3700}),
    ]
    for token in tokens:
        with pytest.raises(AuthError) as raised:
            world.verifier.verify(bearer(token), AUD)
        assert token not in str(raised.value) and raised.value.__cause__ is None
    text = auth_log.text + " ".join(str(r.__dict__) for r in auth_log.records)
    for token in tokens:
        for segment in token.split("."):
            assert segment not in text
    for value in ("dr-who-client", "jti-do-not-log", "aud-do-not-log"):
        assert value not in text
    assert reasons(auth_log) == ["jwt.wrong_audience", "jwt.bad_signature", "jwt.expired"]
    assert ISSUER in auth_log.text and "ec-1" in auth_log.text


def test_log_line_neutralises_control_characters(world: World, auth_log: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AuthError):
        world.verifier.verify(bearer(EC.sign(claims(iss="https://x\nFAKE LOG LINE"))), AUD)
    assert all("\n" not in r.getMessage() for r in auth_log.records)


# --------------------------------------------------------------------------- replay guard


def test_in_memory_guard_claims_once_and_forgets_after_expiry() -> None:
    clock = FakeClock(NOW)
    guard = InMemoryReplayGuard(clock=clock.as_datetime)
    expires = clock.as_datetime() + timedelta(seconds=60)
    assert guard.claim(ISSUER, "a", expires) is True
    assert guard.claim(ISSUER, "a", expires) is False
    assert guard.claim(INLINE_ISSUER, "a", expires) is True
    assert len(guard) == 2
    clock.now += 61
    assert guard.claim(ISSUER, "b", clock.as_datetime() + timedelta(seconds=60)) is True
    assert len(guard) == 1  # both "a" entries purged
    assert guard.claim(ISSUER, "a", clock.as_datetime() + timedelta(seconds=60)) is True


def test_in_memory_guard_is_thread_safe() -> None:
    guard = InMemoryReplayGuard()
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        results.append(guard.claim(ISSUER, "contended", expires))

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


# --------------------------------------------------------------------------- audience


def test_audience_for_uses_public_base_url_behind_a_proxy() -> None:
    assert audience_for("/cds-services/x", "https://cds.example.org/prefix") == (
        "https://cds.example.org/prefix/cds-services/x"
    )
    assert audience_for("/cds-services/x", "https://cds.example.org/") == "https://cds.example.org/cds-services/x"


# --------------------------------------------------------------------------- bind security


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
)
def test_unauthenticated_on_loopback_is_allowed_with_a_warning(host: str) -> None:
    assert is_loopback_host(host)
    warning = check_bind_security(Config(host=host))
    assert warning is not None and "OFF" in warning and "loopback" in warning


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "cds.example.org", "", "localhost.evil"])
def test_unauthenticated_off_loopback_refuses_to_start(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(ConfigError):
        check_bind_security(Config(host=host))


def test_unauthenticated_off_loopback_with_explicit_opt_in_warns_loudly() -> None:
    warning = check_bind_security(Config(host="0.0.0.0", allow_unauthenticated=True))
    assert warning is not None and warning.startswith("SECURITY WARNING")


def test_bind_security_is_silent_when_issuers_are_trusted() -> None:
    assert check_bind_security(Config(host="0.0.0.0", trusted_issuers={ISSUER: JWKS_URL},
                                      public_base_url="https://cds.example.org")) is None


def test_issuers_without_public_base_url_refuse_to_start() -> None:
    with pytest.raises(ConfigError, match="CDS_PUBLIC_BASE_URL"):
        check_bind_security(Config(host="0.0.0.0", trusted_issuers={ISSUER: JWKS_URL}))


def test_url_issuers_use_a_pyjwkclient_without_its_caches(world: World) -> None:
    from jwt import PyJWKClient

    from cds_service.auth import JwksClient

    client = JwksClient(JWKS_URL, requests.Session(), timeout=1.5, clock=world.clock, min_refresh_seconds=REFRESH,
                        cache_seconds=600)
    assert isinstance(client, PyJWKClient)
    assert client.jwk_set_cache is None  # our cache keeps old keys through an outage and rate-limits failures
    assert client.fetch_data() == ISSUER_JWKS
    assert world.mock.calls[-1].request.headers["Accept"] == "application/json"
