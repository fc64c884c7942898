"""JWT trust through the HTTP layer: signed calls accepted, everything else 401 with no detail."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.config import Config
from tests.issued import issue_cards
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks, raw_token
from tests.scenarios import request_for, scenario

ISSUER = "https://ehr.example.org"
SIGN = "/cds-services/everolimus-order-sign"
KEY = ec_key("ES384")


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    config = Config(database_url=f"sqlite:///{tmp_path / 'jwt.sqlite3'}", trusted_issuers={ISSUER: jwks(KEY)},
                    public_base_url="http://localhost")
    app = create_app(config)
    yield app.test_client()
    app.extensions["priorauth_cds"].store.dispose()


def _token(path: str = SIGN, **overrides: Any) -> str:
    return KEY.sign(cds_claims(ISSUER, f"http://localhost{path}", time.time(), **overrides))


def test_signed_call_is_accepted(secured: Any) -> None:
    response = secured.post(SIGN, json=request_for(scenario("B-pnet-met")), headers={"Authorization": bearer(_token())})
    assert response.status_code == 200


def test_public_base_url_is_the_audience(tmp_path: Path) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}", trusted_issuers={ISSUER: jwks(KEY)},
                    public_base_url="https://cds.payer.example/api")
    client = create_app(config).test_client()
    token = KEY.sign(cds_claims(ISSUER, f"https://cds.payer.example/api{SIGN}", time.time()))
    assert client.post(SIGN, json=request_for(scenario("B-pnet-met")),
                       headers={"Authorization": bearer(token)}).status_code == 200
    wrong = KEY.sign(cds_claims(ISSUER, f"http://localhost{SIGN}", time.time()))
    assert client.post(SIGN, json=request_for(scenario("B-pnet-met")),
                       headers={"Authorization": bearer(wrong)}).status_code == 401


@pytest.mark.parametrize("header", [
    None,
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "Bearer not.a.jwt",
    bearer(raw_token({"alg": "none", "typ": "JWT"}, cds_claims(ISSUER, f"http://localhost{SIGN}", time.time()))),
    bearer(_token(aud="https://elsewhere.example/cds-services/everolimus-order-sign")),
    bearer(_token(exp=int(time.time()) - 3600, iat=int(time.time()) - 3900)),
    bearer(_token(iss="https://unknown.example")),
    bearer(ec_key("ES384", kid=KEY.kid).sign(cds_claims(ISSUER, f"http://localhost{SIGN}", time.time()))),
], ids=["absent", "empty bearer", "basic", "garbage", "alg none", "wrong aud", "expired", "unknown iss", "wrong key"])
def test_rejected_calls_get_bare_401(secured: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = secured.post(SIGN, json=request_for(scenario("B-pnet-met")), headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body == {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "security", "diagnostics": "Unauthorized"}]}


def test_replayed_token_is_rejected(secured: Any) -> None:
    token = _token()
    request = request_for(scenario("B-pnet-met"))
    assert secured.post(SIGN, json=request, headers={"Authorization": bearer(token)}).status_code == 200
    assert secured.post(SIGN, json=request, headers={"Authorization": bearer(token)}).status_code == 401


def test_feedback_needs_a_token_too(secured: Any) -> None:
    body = {"feedback": [{"card": "c1", "outcome": "accepted", "outcomeTimestamp": "2026-11-27T10:00:00Z"}]}
    issue_cards(secured.application.extensions["priorauth_cds"].store, "c1")
    assert secured.post(f"{SIGN}/feedback", json=body).status_code == 401
    token = _token(f"{SIGN}/feedback")
    assert secured.post(f"{SIGN}/feedback", json=body, headers={"Authorization": bearer(token)}).status_code == 200


def test_discovery_stays_open(secured: Any) -> None:
    assert secured.get("/cds-services").status_code == 200


def test_dtr_operations_need_a_token_for_their_own_url_and_metadata_stays_open(secured: Any) -> None:
    from tests.dtr_helpers import PACKAGE, coverage_information, package_parameters, sample

    request = sample("I.A-specialty-undocumented")
    signed = secured.post(SIGN, json=request, headers={"Authorization": bearer(_token())}).get_json()
    parameters = package_parameters(request, context=coverage_information(signed)["coverage-assertion-id"][0])
    assert secured.post(PACKAGE, json=parameters).status_code == 401
    wrong_audience = bearer(_token(SIGN))  # a token for the hook is not a token for the package operation
    assert secured.post(PACKAGE, json=parameters, headers={"Authorization": wrong_audience}).status_code == 401
    ok = secured.post(PACKAGE, json=parameters, headers={"Authorization": bearer(_token(PACKAGE))})
    assert ok.status_code == 200
    assert secured.get("/fhir/Questionnaire/cp-phar-63-i-a").status_code == 401
    assert secured.get("/fhir/metadata").status_code == 200


def test_another_ehr_cannot_fetch_a_package_it_did_not_ask_for(tmp_path: Path) -> None:
    from tests.dtr_helpers import PACKAGE, coverage_information, package_parameters, sample

    other_key, other = ec_key("ES384"), "https://other-ehr.example.org"
    config = Config(
        database_url=f"sqlite:///{tmp_path / 'jwt2.sqlite3'}",
        trusted_issuers={ISSUER: jwks(KEY), other: jwks(other_key)},
        public_base_url="http://localhost",
    )
    app = create_app(config)
    client = app.test_client()
    request = sample("I.A-specialty-undocumented")
    signed = client.post(SIGN, json=request, headers={"Authorization": bearer(_token())}).get_json()
    parameters = package_parameters(request, context=coverage_information(signed)["coverage-assertion-id"][0])
    theirs = other_key.sign(cds_claims(other, f"http://localhost{PACKAGE}", time.time()))
    refused = client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(theirs)})
    assert refused.status_code == 404  # as if it did not exist: the id is not confirmed to another EHR
    assert client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(_token(PACKAGE))}).status_code == 200
    app.extensions["priorauth_cds"].store.dispose()
