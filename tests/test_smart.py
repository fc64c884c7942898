"""SMART Backend Services for DTR apps: discovery, the token endpoint, access tokens on the DTR routes.

A registered client (CDS_DTR_CLIENTS) trades a private_key_jwt assertion for a short-lived token; the token
opens the DTR routes its scopes allow, for the EHR issuer the client acts for, and nothing else.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.config import Config, ConfigError
from tests.dtr_helpers import PACKAGE, coverage_information, package_parameters, sample
from tests.jwt_helpers import OMIT, bearer, cds_claims, ec_key, jwks, rsa_key

EHR, OTHER_EHR = "https://ehr.example.org", "https://other-ehr.example.org"
BASE = "http://localhost"
TOKEN_URL = f"{BASE}/auth/token"
SIGN = "/cds-services/everolimus-order-sign"
EHR_KEY, OTHER_EHR_KEY = ec_key("ES384"), ec_key("ES384")
APP_KEY = rsa_key("RS384")  # the DTR app's key (RS384)
OTHER_APP_KEY = ec_key("ES384")  # an app acting for the other EHR (ES384)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENTS = {
    "dtr-app": {"jwks": jwks(APP_KEY), "scopes": ["system/Questionnaire.rs", "system/ValueSet.rs"], "issuer": EHR},
    "other-app": {"jwks": jwks(OTHER_APP_KEY), "scopes": ["system/Questionnaire.rs"], "issuer": OTHER_EHR},
    "terminology-app": {"jwks": jwks(ec_key("ES384")), "scopes": ["system/ValueSet.rs"], "issuer": EHR},
}


def _config(tmp_path: Path, name: str = "smart", **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / f'{name}.sqlite3'}",
        "trusted_issuers": {EHR: jwks(EHR_KEY), OTHER_EHR: jwks(OTHER_EHR_KEY)},
        "public_base_url": BASE,
        "dtr_clients": CLIENTS,
    }
    return Config(**{**settings, **overrides})


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = create_app(_config(tmp_path))
    yield app
    app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def assertion(key: Any = APP_KEY, client_id: str = "dtr-app", **overrides: Any) -> str:
    """A client authentication JWT as SMART Backend Services describes it (exp four minutes ahead)."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 240, "jti": str(uuid.uuid4())}
    claims.update(overrides)
    return str(key.sign({k: v for k, v in claims.items() if v is not OMIT}))


def token_request(client: Any, signed: str, scope: str = "system/Questionnaire.rs", **form: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
        **form,
    }
    return client.post("/auth/token", data=data)


def access_token(client: Any, scope: str = "system/Questionnaire.rs", **kwargs: Any) -> str:
    response = token_request(client, assertion(**kwargs), scope)
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_json()["access_token"])


def hook_token(path: str, key: Any = EHR_KEY, issuer: str = EHR) -> str:
    return bearer(key.sign(cds_claims(issuer, f"{BASE}{path}", time.time())))


def signed_package_parameters(client: Any) -> dict[str, Any]:
    """The EHR signs an order (its hook JWT); the package request for that order's coverage assertion."""
    request = sample("I.A-specialty-undocumented")
    signed = client.post(SIGN, json=request, headers={"Authorization": hook_token(SIGN)})
    assert signed.status_code == 200
    return package_parameters(request, context=coverage_information(signed.get_json())["coverage-assertion-id"][0])


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("path", ["/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"])
def test_smart_configuration_names_the_token_endpoint_and_methods(client: Any, path: str) -> None:
    body = client.get(path).get_json()
    assert body["token_endpoint"] == TOKEN_URL
    assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert body["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert body["grant_types_supported"] == ["client_credentials"]
    assert "client-confidential-asymmetric" in body["capabilities"]
    assert {"system/Questionnaire.rs", "system/QuestionnaireResponse.c", "system/ValueSet.rs"} <= set(
        body["scopes_supported"]
    )


# ----------------------------------------------------------------------------- the token endpoint


def test_a_registered_client_gets_a_short_token_that_opens_its_ehrs_package(client: Any) -> None:
    parameters = signed_package_parameters(client)
    response = token_request(client, assertion())
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] <= 300 and body["scope"] == "system/Questionnaire.rs"
    package = client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(body["access_token"])})
    assert package.status_code == 200, package.get_data(as_text=True)
    assert package.get_json()["parameter"][0]["resource"]["resourceType"] == "Bundle"
    form = client.get("/fhir/Questionnaire/cp-phar-63-i-a", headers={"Authorization": bearer(body["access_token"])})
    assert form.status_code == 200


def test_an_es384_client_is_accepted_too(client: Any) -> None:
    assert access_token(client, key=OTHER_APP_KEY, client_id="other-app")


def _refused(response: Any, error: str, status: int) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    assert "access_token" not in response.get_json()


def test_an_unknown_client_is_invalid_client(client: Any) -> None:
    _refused(token_request(client, assertion(client_id="nobody")), "invalid_client", 401)


def test_an_assertion_signed_with_another_key_is_invalid_client(client: Any) -> None:
    impostor = rsa_key("RS384", kid=APP_KEY.kid)  # same kid, different key
    _refused(token_request(client, assertion(key=impostor)), "invalid_client", 401)
    # A key registered for another client does not authenticate this one either.
    _refused(token_request(client, assertion(key=OTHER_APP_KEY)), "invalid_client", 401)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 120},  # expired
        {"exp": int(time.time()) + 3600},  # more than five minutes ahead
        {"exp": OMIT},
        {"jti": OMIT},
        {"aud": f"{BASE}/fhir"},  # not the token URL
        {"sub": "someone-else"},  # iss and sub must both be the client id
    ],
    ids=["expired", "too-long", "no-exp", "no-jti", "wrong-aud", "sub-differs"],
)
def test_a_bad_assertion_is_invalid_client(client: Any, claims: dict[str, Any]) -> None:
    _refused(token_request(client, assertion(**claims)), "invalid_client", 401)


def test_an_hs256_or_rs256_assertion_is_refused(client: Any) -> None:
    _refused(token_request(client, APP_KEY.sign(_claims(), alg="RS256")), "invalid_client", 401)


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": "dtr-app", "sub": "dtr-app", "aud": TOKEN_URL, "exp": now + 240, "jti": str(uuid.uuid4())}


def test_a_replayed_assertion_is_refused(client: Any) -> None:
    signed = assertion()
    assert token_request(client, signed).status_code == 200
    _refused(token_request(client, signed), "invalid_client", 401)


def test_scope_wider_than_registered_is_dropped_and_nothing_left_is_invalid_scope(client: Any) -> None:
    # RFC 6749 3.3: the server grants the requested scopes the client is registered for and says which.
    granted = token_request(client, assertion(), "system/Questionnaire.rs system/Patient.rs system/*.rs")
    assert granted.status_code == 200 and granted.get_json()["scope"] == "system/Questionnaire.rs"
    narrower = token_request(client, assertion(), "system/Questionnaire.r")
    assert narrower.get_json()["scope"] == "system/Questionnaire.r"
    _refused(token_request(client, assertion(), "system/*.rs"), "invalid_scope", 400)
    _refused(token_request(client, assertion(), "system/Patient.read"), "invalid_scope", 400)


def test_malformed_token_requests_are_oauth_errors(client: Any) -> None:
    _refused(token_request(client, assertion(), grant_type="password"), "unsupported_grant_type", 400)
    _refused(token_request(client, assertion(), client_assertion_type="basic"), "invalid_request", 400)
    _refused(token_request(client, assertion(), scope=""), "invalid_request", 400)
    as_json = client.post("/auth/token", json={"grant_type": "client_credentials"})
    _refused(as_json, "invalid_request", 400)


# ----------------------------------------------------------------------------- the token on the DTR routes


def test_a_client_acting_for_another_ehr_gets_404_for_this_ehrs_package(client: Any) -> None:
    parameters = signed_package_parameters(client)
    theirs = access_token(client, key=OTHER_APP_KEY, client_id="other-app")
    refused = client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(theirs)})
    assert refused.status_code == 404  # as if it did not exist, exactly as for the other EHR's own JWT


def test_a_token_without_the_routes_scope_is_403(client: Any) -> None:
    parameters = signed_package_parameters(client)
    terminology = access_token(client, scope="system/ValueSet.rs")
    refused = client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(terminology)})
    assert refused.status_code == 403
    assert refused.get_json()["resourceType"] == "OperationOutcome"


def test_forged_or_foreign_access_tokens_are_401(client: Any, tmp_path: Path) -> None:
    parameters = signed_package_parameters(client)
    token = access_token(client)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    assert client.post(PACKAGE, json=parameters, headers={"Authorization": bearer(forged)}).status_code == 401
    # Another deployment (its own random key) does not accept it; one sharing CDS_DTR_TOKEN_KEY does.
    other = create_app(_config(tmp_path, "other"))
    read = other.test_client().get("/fhir/Questionnaire/cp-phar-63-i-a", headers={"Authorization": bearer(token)})
    assert read.status_code == 401
    other.extensions["priorauth_cds"].store.dispose()


def test_hosts_sharing_the_token_key_accept_each_others_tokens(tmp_path: Path) -> None:
    key = "k" * 40
    first, second = create_app(_config(tmp_path, "a", dtr_token_key=key)), create_app(_config(tmp_path, "b"))
    third = create_app(_config(tmp_path, "c", dtr_token_key=key))
    token = access_token(first.test_client())
    read = "/fhir/Questionnaire/cp-phar-63-i-a"
    assert third.test_client().get(read, headers={"Authorization": bearer(token)}).status_code == 200
    assert second.test_client().get(read, headers={"Authorization": bearer(token)}).status_code == 401
    for app in (first, second, third):
        app.extensions["priorauth_cds"].store.dispose()


def test_an_access_token_is_not_a_cds_hooks_jwt(client: Any) -> None:
    token = access_token(client)
    refused = client.post(SIGN, json=sample("I.A-specialty-undocumented"), headers={"Authorization": bearer(token)})
    assert refused.status_code == 401


def test_the_hook_jwt_still_opens_the_package_for_ehr_native_dtr(client: Any) -> None:
    parameters = signed_package_parameters(client)
    response = client.post(PACKAGE, json=parameters, headers={"Authorization": hook_token(PACKAGE)})
    assert response.status_code == 200
    other = client.post(
        PACKAGE, json=parameters, headers={"Authorization": hook_token(PACKAGE, OTHER_EHR_KEY, OTHER_EHR)}
    )
    assert other.status_code == 404


def test_terminology_reads_need_no_token(client: Any) -> None:
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get("/fhir/ValueSet/cp-phar-63-i-a-6").status_code == 200
    expanded = client.get(f"/fhir/ValueSet/$expand?url={BASE}/fhir/ValueSet/cp-phar-63-i-a-6")
    assert expanded.status_code == 200 and expanded.get_json()["expansion"]["contains"]
    assert client.get("/fhir/Questionnaire/cp-phar-63-i-a").status_code == 401  # forms still need a token


def test_terminology_reads_are_rate_limited_per_client_address(tmp_path: Path) -> None:
    app = create_app(_config(tmp_path, "limited", rate_limit_per_minute=3))
    client = app.test_client()
    codes = [client.get("/fhir/ValueSet/cp-phar-63-i-a-6").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    elsewhere = client.get("/fhir/ValueSet/cp-phar-63-i-a-6", environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert elsewhere.status_code == 200
    app.extensions["priorauth_cds"].store.dispose()


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "entry",
    [
        {"jwks": jwks(APP_KEY), "scopes": ["system/Questionnaire.rs"], "issuer": "https://unknown.example"},
        {"jwks": jwks(APP_KEY), "scopes": ["Questionnaire.rs"], "issuer": EHR},
        {"jwks": jwks(APP_KEY), "scopes": [], "issuer": EHR},
        {"jwks": "ftp://app.example/jwks", "scopes": ["system/Questionnaire.rs"], "issuer": EHR},
        {"jwks": jwks(APP_KEY), "scopes": ["system/Questionnaire.rs"], "issuer": EHR, "secret": "x"},
    ],
    ids=["unknown-issuer", "not-system-scope", "no-scopes", "bad-jwks-url", "extra-member"],
)
def test_bad_client_registrations_stop_start_up(entry: dict[str, Any]) -> None:
    config = Config(trusted_issuers={EHR: jwks(EHR_KEY)}, public_base_url=BASE, dtr_clients={"app": entry})
    with pytest.raises(ConfigError, match="CDS_DTR_CLIENTS"):
        config.validate()


def test_clients_are_read_from_the_environment_as_json() -> None:
    import json

    environ = {
        "CDS_TRUSTED_ISSUERS": json.dumps({EHR: jwks(EHR_KEY)}),
        "CDS_PUBLIC_BASE_URL": BASE,
        "CDS_DTR_CLIENTS": json.dumps({"dtr-app": CLIENTS["dtr-app"]}),
        "CDS_DTR_TOKEN_KEY": "s" * 32,
    }
    config = Config.from_env(environ)
    assert set(config.dtr_clients) == {"dtr-app"} and config.dtr_token_key == "s" * 32
    assert "s" * 32 not in repr(config)
    with pytest.raises(ConfigError, match="CDS_DTR_CLIENTS"):
        Config.from_env({**environ, "CDS_DTR_CLIENTS": "[1]"})
    with pytest.raises(ConfigError, match="CDS_DTR_TOKEN_KEY"):
        Config.from_env({**environ, "CDS_DTR_TOKEN_KEY": "short"})


# ----------------------------------------------------------------------------- OpenAPI


def test_smart_answers_are_as_documented(client: Any) -> None:
    from tests.test_openapi import assert_documented

    for path in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
        assert_documented("GET", path, client.get(path))
    assert_documented("POST", "/auth/token", token_request(client, assertion()))
    assert_documented("POST", "/auth/token", token_request(client, assertion(client_id="nobody")))
    assert_documented("POST", "/auth/token", token_request(client, assertion(), "system/Patient.rs"))
    parameters = signed_package_parameters(client)
    terminology = bearer(access_token(client, scope="system/ValueSet.rs"))
    assert_documented("POST", PACKAGE, client.post(PACKAGE, json=parameters, headers={"Authorization": terminology}))
    assert_documented("GET", "/fhir/metadata", client.get("/fhir/metadata"))


def test_the_capability_statement_points_to_the_token_endpoint(client: Any) -> None:
    security = client.get("/fhir/metadata").get_json()["rest"][0]["security"]
    uris = next(e for e in security["extension"] if e["url"].endswith("/oauth-uris"))
    assert {"url": "token", "valueUri": TOKEN_URL} in uris["extension"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_a_client_with_a_jwks_url_is_checked_against_the_fetched_keys(tmp_path: Path) -> None:
    import responses

    url = "https://dtr-app.example/.well-known/jwks.json"
    fetched = ec_key("ES384")
    clients = {"url-app": {"jwks": url, "scopes": ["system/Questionnaire.rs"], "issuer": EHR}}
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.get(url, json=jwks(fetched))
        app = create_app(_config(tmp_path, "url", dtr_clients=clients))
        client = app.test_client()
        assert access_token(client, key=fetched, client_id="url-app")
        jku_elsewhere = fetched.sign(_claims() | {"iss": "url-app", "sub": "url-app"}, jku="https://evil.example/j")
        _refused(token_request(client, jku_elsewhere), "invalid_client", 401)
        assert len(mock.calls) == 1  # fetched once, cached; never from the jku the assertion names
    app.extensions["priorauth_cds"].store.dispose()


def test_an_hs256_assertion_signed_with_the_public_key_is_refused(client: Any) -> None:
    from tests.jwt_helpers import hmac_token

    forged = hmac_token({"alg": "HS256", "typ": "JWT", "kid": APP_KEY.kid}, _claims(), APP_KEY.public_pem())
    _refused(token_request(client, forged), "invalid_client", 401)


def test_every_gunicorn_worker_accepts_a_token_another_one_issued(tmp_path: Path) -> None:
    """No CDS_DTR_TOKEN_KEY: the key is made in the master before the fork, so all workers share it."""
    import json

    import requests

    from tests.conftest import LiveServer

    server = LiveServer(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    server.extra_env.update(
        {
            "CDS_WORKERS": "2",
            "CDS_PUBLIC_BASE_URL": server.url,
            "CDS_TRUSTED_ISSUERS": json.dumps({EHR: jwks(EHR_KEY)}),
            "CDS_DTR_CLIENTS": json.dumps({"dtr-app": CLIENTS["dtr-app"]}),
            "CDS_RATE_LIMIT_PER_MINUTE": "0",
        }
    )
    server.start(tmp_path / "server.log")
    try:
        now = int(time.time())
        claims = {"iss": "dtr-app", "sub": "dtr-app", "aud": f"{server.url}/auth/token", "exp": now + 240}
        form = {
            "grant_type": "client_credentials",
            "scope": "system/Questionnaire.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": APP_KEY.sign({**claims, "jti": str(uuid.uuid4())}),
        }
        issued = requests.post(f"{server.url}/auth/token", data=form, timeout=10)
        assert issued.status_code == 200, issued.text
        header = {"Authorization": bearer(issued.json()["access_token"]), "Connection": "close"}
        codes = [
            requests.get(f"{server.url}/fhir/Questionnaire/cp-phar-63-i-a", headers=header, timeout=10).status_code
            for _ in range(30)
        ]  # a new connection each time: the kernel spreads them over both workers
        assert codes == [200] * 30
    finally:
        server.stop()
