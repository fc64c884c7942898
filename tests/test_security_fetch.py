"""Issue 8 ("safe to expose to EHRs"): the FHIR fallback's allow-list, DNS rebinding, ambient credentials and
proxies, the generic 412, the JWT audience / typ / jku rules and development mode (content type, Host, CORS).

A recording HTTP server on 127.0.0.1 stands in for FHIR servers and JWKS endpoints, so every test can assert
that a disallowed server received nothing at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.auth import InMemoryReplayGuard, JwtVerifier
from cds_service.config import Config, ConfigError
from cds_service.discovery import PREFETCH_TEMPLATES
from cds_service.egress import FhirAccess, ServerRule, fhir_access_for
from cds_service.prefetch import PrefetchOutcome, gather
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks
from tests.scenarios import SAMPLE_DIR

SIGN = "/cds-services/everolimus-order-sign"
FEEDBACK = f"{SIGN}/feedback"
TOKEN = "fhir-access-token-7c1"
CONTEXT: dict[str, Any] = {"patientId": "ava", "userId": "PractitionerRole/ava-role"}
GENERIC_412 = "required data could not be obtained from prefetch or fhirServer"
PUBLIC = "https://cds.payer.example"
ISSUER_A = "https://ehr-a.example"
ISSUER_B = "https://ehr-b.example"
KEY_A = ec_key("ES384")
KEY_B = ec_key("ES384")


# ----------------------------------------------------------------------------- a recording server


@dataclass
class Recorder:
    """A tiny HTTP server on 127.0.0.1 that answers every GET like a FHIR server and records what it got."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    jwks: dict[str, Any] | None = None
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.origin}/fhir"

    def answer(self, path: str) -> dict[str, Any]:
        if path.endswith("/jwks.json") and self.jwks is not None:
            return self.jwks
        tail = path.split("?", 1)[0].rstrip("/").split("/")
        if len(tail) >= 2 and tail[-2] == "Patient":
            return {"resourceType": "Patient", "id": tail[-1]}
        if len(tail) >= 2 and tail[-2] in ("Practitioner", "PractitionerRole"):
            return {"resourceType": tail[-2], "id": tail[-1]}
        return {"resourceType": "Bundle", "type": "searchset", "entry": []}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    record = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            record.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            body = json.dumps(record.answer(self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gather(fhir_server: str, config: Config, access: FhirAccess | None = None, token: str | None = TOKEN,
            keys: list[str] | None = None) -> PrefetchOutcome:
    return gather(templates=PREFETCH_TEMPLATES, context=CONTEXT, prefetch=None, fhir_server=fhir_server,
                  access_token=token, config=config, keys=keys or ["patient"], fhir_access=access)


def _issuers(**servers: list[str]) -> dict[str, Any]:
    """Issuer A and B with inline keys; ``a=[...]`` / ``b=[...]`` give their fhirServers."""
    return {
        ISSUER_A: {"jwks": jwks(KEY_A), "fhirServers": servers.get("a", [])},
        ISSUER_B: {"jwks": jwks(KEY_B), "fhirServers": servers.get("b", [])},
    }


def _sample() -> dict[str, Any]:
    request: dict[str, Any] = json.loads((SAMPLE_DIR / "I.A-met-generic-with-exemestane.json").read_text())
    request["hookInstance"] = str(uuid.uuid4())
    return request


def _fallback_request(fhir_server: str) -> dict[str, Any]:
    request = _sample()
    request.pop("prefetch")
    request["fhirServer"] = fhir_server
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "priorauth-cds"}
    return request


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Any]:
    apps: list[Any] = []

    def make(**settings: Any) -> Any:
        settings.setdefault("database_url", f"sqlite:///{tmp_path / f'{len(apps)}.sqlite3'}")
        settings.setdefault("fhir_budget_seconds", 2.0)
        app = create_app(Config(**settings))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["priorauth_cds"].store.dispose()


def _signed(key: Any, issuer: str, path: str = SIGN, audience_base: str = PUBLIC, **headers: Any) -> dict[str, str]:
    return {"Authorization": bearer(key.sign(cds_claims(issuer, f"{audience_base}{path}", time.time()), **headers))}


# ----------------------------------------------------------------------------- allow-list matching


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://ehr.example/fhir", True),
    ("https://ehr.example/fhir/", True),
    ("https://ehr.example/fhir/R4", True),
    ("https://EHR.example:443/fhir/R4/", True),
    ("https://ehr.example/fhirx", False),
    ("https://ehr.example/fhir-admin", False),
    ("https://ehr.example/", False),
    ("https://ehr.example/fhir/../admin", False),
    ("https://ehr.example/fhir/%2e%2e/admin", False),
    ("http://ehr.example/fhir", False),
    ("https://ehr.example:8443/fhir", False),
    ("https://ehr.example.evil.test/fhir", False),
    ("https://user:pw@ehr.example/fhir", False),
    # issue 15 item 16: what a server behind the prefix check may read as another path
    ("https://ehr.example/fhir/..;/admin", False),
    ("https://ehr.example/fhir;x=1/R4", False),
    ("https://ehr.example/fhir/%252e%252e/admin", False),
    ("https://ehr.example/fhir/%252E%252E/admin", False),
    ("https://ehr.example/fhir/%5c..%5cadmin", False),
    ("https://ehr.example/fhir/%5C..%5Cadmin", False),
    ("https://ehr.example/fhir/..%2fadmin", False),
    ("https://ehr.example/fhir/%2F..%2Fadmin", False),
    ("https://ehr.example/fhir\\..\\admin", False),
    ("https://ehr.example/fhir/R4?_elements=a;b", True),  # only the path is checked
])
def test_allow_list_matches_scheme_host_port_and_path_segments(url: str, allowed: bool) -> None:
    access = FhirAccess(rules=(ServerRule.parse("https://ehr.example/fhir"),))
    assert access.allows(url) is allowed


def test_https_is_required_unless_the_entry_says_http() -> None:
    https_only = fhir_access_for(Config(fhir_servers=("https://ehr.example/fhir",)), None)
    assert https_only.allows("https://ehr.example/fhir") and not https_only.allows("http://ehr.example/fhir")
    explicit_http = fhir_access_for(Config(fhir_servers=("http://ehr.example/fhir",)), None)
    assert explicit_http.allows("http://ehr.example/fhir") and not explicit_http.allows("https://ehr.example/fhir")


def test_development_mode_allows_loopback_only() -> None:
    access = fhir_access_for(Config(), None)
    for url in ("http://127.0.0.1:8090/fhir", "http://localhost/fhir", "https://[::1]:9/x", "http://127.1.2.3/"):
        assert access.allows(url), url
    for url in ("http://10.0.0.5/fhir", "https://ehr.example/fhir", "http://169.254.169.254/latest"):
        assert not access.allows(url), url


def test_issuers_get_their_own_servers_and_no_issuer_gets_none() -> None:
    config = Config(trusted_issuers={**_issuers(a=["https://a.example/fhir"]), "https://old.example": jwks(KEY_A)},
                    public_base_url=PUBLIC)
    assert fhir_access_for(config, ISSUER_A).allows("https://a.example/fhir/R4")
    assert not fhir_access_for(config, ISSUER_B).allows("https://a.example/fhir")
    assert not fhir_access_for(config, "https://old.example").allows("https://a.example/fhir")
    assert not fhir_access_for(config, None).allows("http://127.0.0.1/fhir")  # no loopback pass with issuers


@pytest.mark.parametrize("value", [
    {"jwks": "https://a.example/jwks.json", "fhirServers": "https://a.example/fhir"},
    {"jwks": "https://a.example/jwks.json", "fhirServers": ["ftp://a.example/fhir"]},
    {"jwks": "https://a.example/jwks.json", "fhirServers": ["https://a.example/fhir?x=1"]},
    {"jwks": 5, "fhirServers": []},
])
def test_bad_issuer_entries_refuse_to_start(value: Any) -> None:
    env = {"CDS_TRUSTED_ISSUERS": json.dumps({ISSUER_A: value}), "CDS_PUBLIC_BASE_URL": PUBLIC}
    with pytest.raises(ConfigError):
        Config.from_env(env)


def test_issuer_entry_with_fhir_servers_from_the_environment() -> None:
    value = {"jwks": "https://a.example/jwks.json", "fhirServers": ["https://a.example/fhir"]}
    config = Config.from_env({"CDS_TRUSTED_ISSUERS": json.dumps({ISSUER_A: value}), "CDS_PUBLIC_BASE_URL": PUBLIC,
                              "CDS_FHIR_SERVERS": "https://x.example/fhir, http://10.0.0.7:8080/fhir",
                              "CDS_HTTP_PROXY": "http://proxy.internal:3128"})
    assert fhir_access_for(config, ISSUER_A).allows("https://a.example/fhir")
    assert config.fhir_servers == ("https://x.example/fhir", "http://10.0.0.7:8080/fhir")
    assert config.http_proxy == "http://proxy.internal:3128"


# ----------------------------------------------------------------------------- no connection to a disallowed server


def test_disallowed_server_gets_no_connection(recorder: Recorder) -> None:
    config = Config(trusted_issuers=_issuers(a=["https://ehr.example/fhir"]), public_base_url=PUBLIC)
    outcome = _gather(recorder.base, config, fhir_access_for(config, ISSUER_A))
    assert outcome.failed == {"patient": "fhir-server-not-allowed"}
    assert recorder.requests == []


def test_allowed_loopback_entry_is_fetched_with_the_token(recorder: Recorder) -> None:
    config = Config(trusted_issuers=_issuers(a=[recorder.base]), public_base_url=PUBLIC)
    outcome = _gather(recorder.base + "/R4", config, fhir_access_for(config, ISSUER_A))
    assert outcome.origin == {"patient": "fetched"} and outcome.resources["patient"][0]["id"] == "ava"
    assert [h.get("authorization") for _, h in recorder.requests] == [f"Bearer {TOKEN}"]


def test_fallback_follows_the_verified_issuer(make_client: Any, recorder: Recorder) -> None:
    client = make_client(trusted_issuers=_issuers(a=[recorder.base]), public_base_url=PUBLIC)
    refused = client.post(SIGN, json=_fallback_request(recorder.base), headers=_signed(KEY_B, ISSUER_B))
    assert refused.status_code == 412 and recorder.requests == []
    client.post(SIGN, json=_fallback_request(recorder.base), headers=_signed(KEY_A, ISSUER_A))
    assert recorder.requests and all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in recorder.requests)


def test_development_mode_refuses_other_hosts_without_connecting(make_client: Any, monkeypatch: Any) -> None:
    """A non-loopback fhirServer in development mode is not called (not even resolved)."""
    looked_up: list[Any] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: looked_up.append(a[0]) or real(*a, **k))
    response = make_client().post(SIGN, json=_fallback_request("https://ehr.example/fhir"))
    assert response.status_code == 412 and looked_up == []


# ----------------------------------------------------------------------------- DNS rebinding


def _resolve_to_loopback(monkeypatch: Any, name: str) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == name else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_allowed_name_resolving_to_loopback_is_refused(recorder: Recorder, monkeypatch: Any) -> None:
    base = f"http://ehr.example:{recorder.port}/fhir"
    _resolve_to_loopback(monkeypatch, "ehr.example")
    config = Config(trusted_issuers=_issuers(a=[base]), public_base_url=PUBLIC)
    outcome = _gather(base, config, fhir_access_for(config, ISSUER_A))
    assert outcome.failed == {"patient": "address-not-allowed"}
    dev = Config(fhir_servers=(base,))
    assert _gather(base, dev).failed == {"patient": "address-not-allowed"}
    assert recorder.requests == []


def test_loopback_is_reached_when_the_entry_names_it(recorder: Recorder, monkeypatch: Any) -> None:
    _resolve_to_loopback(monkeypatch, "localhost")
    base = f"http://localhost:{recorder.port}/fhir"
    config = Config(trusted_issuers=_issuers(a=[base]), public_base_url=PUBLIC)
    assert _gather(base, config, fhir_access_for(config, ISSUER_A)).origin == {"patient": "fetched"}
    assert _gather(base, Config()).origin == {"patient": "fetched"}  # development mode, loopback name
    assert len(recorder.requests) == 2


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "172.16.5.5", "169.254.169.254",
                                  "100.64.0.1", "224.0.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1",
                                  "::ffff:127.0.0.1", "::"])
def test_peer_checks_refuse_special_addresses_for_a_public_name(peer: str) -> None:
    access = FhirAccess(rules=(ServerRule.parse("https://ehr.example/fhir"),))
    assert not access.peer_allowed("https", "ehr.example", 443, peer)
    assert access.peer_allowed("https", "ehr.example", 443, "93.184.216.34")
    assert not access.peer_allowed("https", "other.example", 443, "93.184.216.34")


def test_private_address_entry_allows_itself() -> None:
    access = fhir_access_for(Config(fhir_servers=("http://10.0.0.7:8080/fhir",)), None)
    assert access.peer_allowed("http", "10.0.0.7", 8080, "10.0.0.7")
    assert not access.peer_allowed("http", "10.0.0.8", 8080, "10.0.0.8")


# ----------------------------------------------------------------------------- ambient credentials and proxies


def test_netrc_is_ignored(recorder: Recorder, tmp_path: Path, monkeypatch: Any) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login leaked password hunter2\ndefault login leaked password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    assert _gather(recorder.base, Config(), token=TOKEN).origin == {"patient": "fetched"}
    assert _gather(recorder.base, Config(), token=None).origin == {"patient": "fetched"}
    assert [h.get("authorization") for _, h in recorder.requests] == [f"Bearer {TOKEN}", None]


def test_environment_proxies_are_ignored(recorder: Recorder, monkeypatch: Any) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _gather(recorder.base, Config()).origin == {"patient": "fetched"}
    assert len(recorder.requests) == 1


def test_explicit_proxy_is_used(recorder: Recorder) -> None:
    """CDS_HTTP_PROXY: the request goes to the proxy (here the recorder), in absolute form."""
    base = "http://127.0.0.1:9/fhir"
    outcome = _gather(base, Config(http_proxy=recorder.origin))
    assert outcome.origin == {"patient": "fetched"}
    assert recorder.requests[0][0] == f"{base}/Patient/ava"


def test_jwks_client_ignores_the_environment() -> None:
    verifier = JwtVerifier(Config(trusted_issuers={ISSUER_A: "https://a.example/jwks.json"}, public_base_url=PUBLIC,
                                  http_proxy="http://proxy.internal:3128"), InMemoryReplayGuard())
    assert verifier._session.trust_env is False
    assert verifier._session.proxies == {"http": "http://proxy.internal:3128", "https": "http://proxy.internal:3128"}


# ----------------------------------------------------------------------------- the 412


def test_412_has_one_generic_reason_without_ports(make_client: Any) -> None:
    port = _closed_port()
    response = make_client().post(SIGN, json=_fallback_request(f"http://127.0.0.1:{port}/fhir"))
    assert response.status_code == 412
    body = response.get_json()
    assert body == {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "incomplete", "diagnostics": GENERIC_412}]}
    assert str(port) not in response.get_data(as_text=True)


def test_412_is_the_same_for_refused_and_disallowed_servers(make_client: Any, recorder: Recorder) -> None:
    client = make_client(trusted_issuers=_issuers(a=[]), public_base_url=PUBLIC)
    refused = client.post(SIGN, json=_fallback_request(f"http://127.0.0.1:{_closed_port()}/fhir"),
                          headers=_signed(KEY_A, ISSUER_A))
    disallowed = client.post(SIGN, json=_fallback_request(recorder.base), headers=_signed(KEY_A, ISSUER_A))
    assert refused.status_code == disallowed.status_code == 412
    assert refused.get_json() == disallowed.get_json()
    assert recorder.requests == []


# ----------------------------------------------------------------------------- audience, typ, jku


def test_issuers_without_public_base_url_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CDS_PUBLIC_BASE_URL"):
        Config.from_env({"CDS_TRUSTED_ISSUERS": json.dumps({ISSUER_A: "https://a.example/jwks.json"})})
    with pytest.raises(ConfigError, match="CDS_PUBLIC_BASE_URL"):
        create_app(Config(database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}", trusted_issuers=_issuers()))


def test_serve_exits_2_without_public_base_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(CDS_TRUSTED_ISSUERS=json.dumps({ISSUER_A: "https://a.example/jwks.json"}),
               DATABASE_URL=f"sqlite:///{tmp_path / 's.sqlite3'}")
    done = subprocess.run([sys.executable, "-m", "cds_service", "serve", "--port", str(_closed_port())], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "CDS_PUBLIC_BASE_URL" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("priorauth-cds: ")


def test_audience_never_comes_from_the_host_header(make_client: Any) -> None:
    client = make_client(trusted_issuers=_issuers(), public_base_url=PUBLIC)
    forged = _signed(KEY_A, ISSUER_A, audience_base="http://attacker.example")
    assert client.post(SIGN, json=_sample(), headers=forged,
                       environ_overrides={"HTTP_HOST": "attacker.example"}).status_code == 401
    local = _signed(KEY_A, ISSUER_A, audience_base="http://localhost")
    assert client.post(SIGN, json=_sample(), headers=local).status_code == 401
    good = _signed(KEY_A, ISSUER_A)
    assert client.post(SIGN, json=_sample(), headers=good,
                       environ_overrides={"HTTP_HOST": "attacker.example"}).status_code == 200


@pytest.mark.parametrize(("typ", "status"), [("JWT", 200), ("jwt", 200), ("at+jwt", 401), ("JWE", 401), (7, 401)])
def test_typ_must_be_jwt(make_client: Any, typ: Any, status: int) -> None:
    client = make_client(trusted_issuers=_issuers(), public_base_url=PUBLIC)
    assert client.post(SIGN, json=_sample(), headers=_signed(KEY_A, ISSUER_A, typ=typ)).status_code == status


def test_pinned_jwks_accepts_a_jku_without_fetching_it(make_client: Any, recorder: Recorder) -> None:
    recorder.jwks = jwks(KEY_A)
    client = make_client(trusted_issuers=_issuers(), public_base_url=PUBLIC)
    headers = _signed(KEY_A, ISSUER_A, jku=f"{recorder.origin}/.well-known/jwks.json")
    assert client.post(SIGN, json=_sample(), headers=headers).status_code == 200
    assert recorder.requests == []


def test_jwks_url_issuer_fetches_only_its_url(make_client: Any, recorder: Recorder) -> None:
    recorder.jwks = jwks(KEY_A)
    jwks_url = f"{recorder.origin}/.well-known/jwks.json"
    client = make_client(trusted_issuers={ISSUER_A: {"jwks": jwks_url, "fhirServers": []}}, public_base_url=PUBLIC)
    elsewhere = _signed(KEY_A, ISSUER_A, jku=f"{recorder.origin}/other/jwks.json")
    assert client.post(SIGN, json=_sample(), headers=elsewhere).status_code == 401
    assert recorder.requests == []
    assert client.post(SIGN, json=_sample(), headers=_signed(KEY_A, ISSUER_A, jku=jwks_url)).status_code == 200
    assert client.post(SIGN, json=_sample(), headers=_signed(KEY_A, ISSUER_A)).status_code == 200
    assert [path for path, _ in recorder.requests] == ["/.well-known/jwks.json"]


# ----------------------------------------------------------------------------- development mode


@pytest.mark.parametrize("path", [SIGN, FEEDBACK])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_development_mode_needs_a_json_content_type(make_client: Any, path: str, content_type: str | None) -> None:
    body = json.dumps(_sample() if path == SIGN else {"feedback": []}).encode()
    kwargs = {"content_type": content_type} if content_type else {}
    response = make_client().post(path, data=body, **kwargs)
    assert response.status_code == 415
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:9", "[::1]", "[::1]:8080"])
def test_development_mode_answers_loopback_hosts(make_client: Any, host: str) -> None:
    client = make_client()
    assert client.get("/cds-services", environ_overrides={"HTTP_HOST": host}).status_code == 200
    assert client.post(SIGN, json=_sample(), environ_overrides={"HTTP_HOST": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "localhost.attacker.example",
                                  "10.0.0.5:8080", "127.0.0.1.nip.io", "[::1]x", ""])
def test_development_mode_refuses_other_hosts_with_421(make_client: Any, host: str) -> None:
    client = make_client()
    for response in (client.post(SIGN, json=_sample(), environ_overrides={"HTTP_HOST": host}),
                     client.get("/cds-services", environ_overrides={"HTTP_HOST": host}),
                     client.options(SIGN, environ_overrides={"HTTP_HOST": host})):
        assert response.status_code == 421
        body = response.get_json(force=True)
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "security"


def test_host_check_is_off_with_issuers(make_client: Any) -> None:
    client = make_client(trusted_issuers=_issuers(), public_base_url=PUBLIC)
    assert client.get("/cds-services", environ_overrides={"HTTP_HOST": "cds.payer.example"}).status_code == 200


def test_unauthenticated_network_mode_answers_its_public_host(make_client: Any) -> None:
    client = make_client(host="0.0.0.0", allow_unauthenticated=True, public_base_url="http://cds.lan:8080")
    assert client.get("/cds-services", environ_overrides={"HTTP_HOST": "cds.lan:8080"}).status_code == 200
    assert client.get("/cds-services", environ_overrides={"HTTP_HOST": "other.lan"}).status_code == 421


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost:3000", True), ("http://localhost", True), ("http://127.0.0.1:8080", True),
    ("http://[::1]:3000", True), ("https://sandbox.cds-hooks.org", False), ("http://localhost.evil.example", False),
    ("http://127.0.0.1.evil.example:3000", False), ("null", False),
])
def test_development_cors_default_is_loopback(make_client: Any, origin: str, allowed: bool) -> None:
    response = make_client().options(SIGN, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert response.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
    assert response.headers.get("Access-Control-Allow-Origin") != "*"


def test_development_cors_configured_origins_and_never_star(make_client: Any) -> None:
    client = make_client(cors_origins=("http://sandbox.lan:3000",))
    assert client.get("/cds-services", headers={"Origin": "http://sandbox.lan:3000"}).headers[
        "Access-Control-Allow-Origin"] == "http://sandbox.lan:3000"
    assert "Access-Control-Allow-Origin" not in client.get("/cds-services",
                                                           headers={"Origin": "http://localhost:3000"}).headers
    with pytest.raises(ConfigError):
        Config.from_env({"CDS_CORS_ORIGINS": "*"})


def test_cors_with_issuers_is_star_without_credentials_by_default(make_client: Any) -> None:
    client = make_client(trusted_issuers=_issuers(), public_base_url=PUBLIC)
    response = client.get("/cds-services", headers={"Origin": "https://ehr.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("url", ["cds.payer.example", "ftp://cds.payer.example", "https://cds.payer.example/?x=1"])
def test_public_base_url_must_be_an_http_base_url(url: str) -> None:
    with pytest.raises(ConfigError, match="CDS_PUBLIC_BASE_URL"):
        Config.from_env({"CDS_PUBLIC_BASE_URL": url})


def _jwks_verifier(config: Config) -> JwtVerifier:
    return JwtVerifier(config, InMemoryReplayGuard())


def _jwks_token(key: Any, issuer: str) -> str:
    return bearer(key.sign(cds_claims(issuer, f"{PUBLIC}{SIGN}", time.time())))


def test_jwks_fetch_ignores_environment_proxies_and_netrc(recorder: Recorder, tmp_path: Path, monkeypatch: Any) -> None:
    """JWKS keys come through our session (a PyJWKClient subclass), not urllib: no HTTP(S)_PROXY, no .netrc."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".netrc").write_text("default login leaked password hunter2\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    recorder.jwks = jwks(KEY_A)
    verifier = _jwks_verifier(Config(trusted_issuers={ISSUER_A: f"{recorder.origin}/.well-known/jwks.json"},
                                     public_base_url=PUBLIC))
    assert verifier.verify(_jwks_token(KEY_A, ISSUER_A), f"{PUBLIC}{SIGN}")["iss"] == ISSUER_A
    assert [(path, headers.get("authorization")) for path, headers in recorder.requests] == [
        ("/.well-known/jwks.json", None)]
    assert recorder.requests[0][1]["accept"] == "application/json"


def test_jwks_fetch_uses_the_explicit_proxy(recorder: Recorder) -> None:
    recorder.jwks = jwks(KEY_A)
    jwks_url = "http://127.0.0.1:9/.well-known/jwks.json"
    verifier = _jwks_verifier(Config(trusted_issuers={ISSUER_A: jwks_url}, public_base_url=PUBLIC,
                                     http_proxy=recorder.origin))
    assert verifier.verify(_jwks_token(KEY_A, ISSUER_A), f"{PUBLIC}{SIGN}")["iss"] == ISSUER_A
    assert [path for path, _ in recorder.requests] == [jwks_url]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://a.example/jwks.json", "jwks.json", "https://"])
def test_jwks_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="JWKS URL"):
        Config.from_env({"CDS_TRUSTED_ISSUERS": json.dumps({ISSUER_A: url}), "CDS_PUBLIC_BASE_URL": PUBLIC})
    with pytest.raises(ConfigError, match="JWKS URL"):
        _jwks_verifier(Config(trusted_issuers={ISSUER_A: "file:///etc/passwd"}, public_base_url=PUBLIC))
