"""Test helpers: signing keys, JWKS documents and CDS Hooks JWTs, including deliberately broken ones.

Tokens are assembled with PyJWT's JWS layer over raw JSON bytes, so tests can put anything in a claim
(wrong types, missing members) without PyJWT's own claim handling getting in the way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_JWS = jwt.PyJWS()
#: Pass as a header or claim value to leave that member out.
OMIT: Any = object()


@dataclass(frozen=True)
class SigningKey:
    """A private key with the kid and default alg a CDS client would use with it."""

    alg: str
    kid: str
    private_key: Any

    def public_jwk(self, **members: Any) -> dict[str, Any]:
        """The public JWK (with kid, alg, use), ``members`` overriding or (with OMIT) removing entries."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return _apply(jwk, members)

    def public_pem(self) -> bytes:
        """The public key as PEM: the 'secret' of the classic HS256 key-confusion attack."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any] | bytes, *, alg: str | None = None, **headers: Any) -> str:
        """A compact JWS over ``claims`` (a dict, or raw payload bytes); header kid defaults to this key's."""
        payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
        header = _apply({"kid": self.kid, "typ": "JWT"}, headers)
        return _JWS.encode(payload, self.private_key, algorithm=alg or self.alg, headers=header)


def ec_key(alg: str = "ES384", kid: str | None = None) -> SigningKey:
    """A fresh EC key on the curve ``alg`` requires."""
    return SigningKey(alg, kid or f"ec-{uuid.uuid4().hex[:8]}", ec.generate_private_key(_CURVES[alg]()))


def rsa_key(alg: str = "RS384", kid: str | None = None, bits: int = 2048) -> SigningKey:
    """A fresh RSA key (slow-ish: create once per module)."""
    return SigningKey(alg, kid or f"rsa-{uuid.uuid4().hex[:8]}", rsa.generate_private_key(65537, bits))


def jwks(*keys: SigningKey | dict[str, Any]) -> dict[str, Any]:
    """A JWKS document from keys (their public JWKs) or ready-made JWK dicts."""
    return {"keys": [k.public_jwk() if isinstance(k, SigningKey) else k for k in keys]}


def cds_claims(issuer: str, audience: str, now: float, *, lifetime: int = 300, **overrides: Any) -> dict[str, Any]:
    """CDS Hooks 2.0 JWT claims issued at ``now``; ``overrides`` replace claims (OMIT removes one)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "test-client",
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": str(uuid.uuid4()),
    }
    return _apply(claims, overrides)


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS segments use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (e.g. ``alg: none``) with whatever signature bytes are given."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)])


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed by hand (PyJWT refuses PEM secrets, which is exactly the attack to simulate)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> str:
    """The Authorization header value for ``token``."""
    return f"Bearer {token}"


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **changes}
    return {k: v for k, v in merged.items() if v is not OMIT}
