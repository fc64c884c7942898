"""GET /metrics (issue 8): Prometheus text, off by default, loopback-only or bearer token, no PHI in labels,
summed over gunicorn workers (prometheus_client multiprocess mode in a private directory)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.metrics import failure_class
from tests.conftest import LiveServer

HOOK = "/cds-services/everolimus-order-sign"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_bundles" / "I.A-brand-without-exemestane.json"
TOKEN = "metrics-secret-token-123"


def _client(tmp_path: Path, **settings: Any) -> Any:
    app = create_app(Config(database_url=f"sqlite:///{tmp_path / 'm.sqlite3'}", **settings))
    app.config["TESTING"] = True
    return app.test_client()


def test_off_by_default(tmp_path: Path) -> None:
    assert _client(tmp_path).get("/metrics").status_code == 404


def test_loopback_only_without_token(tmp_path: Path) -> None:
    client = _client(tmp_path, metrics=True)
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 404
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    # Through a reverse proxy on the same host the peer is loopback, but the proxy says who really asked.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        assert client.get("/metrics", headers={header: "203.0.113.9"}).status_code == 404


def test_token_required_when_set(tmp_path: Path) -> None:
    client = _client(tmp_path, metrics=True, metrics_token=TOKEN)
    assert client.get("/metrics").status_code == 401  # loopback is not enough once a token is set
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 200
    assert ok.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert TOKEN not in ok.get_data(as_text=True)


def test_counts_by_route_and_decision_without_phi(tmp_path: Path) -> None:
    client = _client(tmp_path, metrics=True)
    body = SAMPLE.read_bytes()
    patient = __import__("json").loads(body)["context"]["patientId"]
    assert client.post(HOOK, data=body, content_type="application/json").status_code == 200
    assert client.get(f"/no/{patient}-nope").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert 'route="/cds-services/<service_id>"' in text
    assert 'priorauth_cds_decisions_total{decision="not-met"}' in text
    assert "priorauth_cds_hook_duration_seconds_bucket" in text
    assert 'priorauth_cds_prefetch_keys_total{key="conditions",origin="prefetch",reason="none"}' in text
    assert patient not in text and "MedicationRequest/" not in text and "nope" not in text


def test_failure_classes_are_bounded() -> None:
    assert failure_class("http-503") == "http-5xx"
    assert failure_class("http-404") == "http-4xx"
    assert failure_class(None) == "none"
    assert failure_class("call-budget") == "call-budget"
    assert failure_class("weird value/with?stuff") == "other"


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    folder = tmp_path_factory.mktemp("metrics")
    tmpdir = folder / "tmp"
    tmpdir.mkdir()
    server = LiveServer(
        f"sqlite:///{folder / 'm.sqlite3'}",
        extra_env={"CDS_METRICS": "1", "TMPDIR": str(tmpdir), "PROMETHEUS_MULTIPROC_DIR": str(folder)},
    )
    server.start(folder / "server.log")
    yield server, tmpdir
    server.stop()


@pytest.mark.server
def test_multiprocess_sum_and_private_dir(metrics_server: tuple[LiveServer, Path]) -> None:
    server, tmpdir = metrics_server
    body = SAMPLE.read_bytes()
    for _ in range(12):  # fresh connections: both workers answer some
        assert requests.post(
            server.url + HOOK,
            data=body,
            headers={"Content-Type": "application/json", "Connection": "close"},
            timeout=10,
        ).ok
    text = requests.get(server.url + "/metrics", timeout=10).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("priorauth_cds_http_requests_total") and 'route="/cds-services/<service_id>"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) == 12.0
    # The inherited PROMETHEUS_MULTIPROC_DIR is not used: a fresh private one (0700) under TMPDIR is.
    dirs = list(tmpdir.glob("priorauth-cds-metrics-*"))
    assert len(dirs) == 1 and stat.S_IMODE(dirs[0].stat().st_mode) == 0o700
    assert any(dirs[0].glob("*.db"))
    assert requests.get(server.url + "/metrics", headers={"X-Forwarded-For": "1.2.3.4"}, timeout=10).status_code == 404


@pytest.mark.server
def test_private_dir_removed_at_exit(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    server = LiveServer(f"sqlite:///{tmp_path / 'm.sqlite3'}", extra_env={"CDS_METRICS": "1", "TMPDIR": str(tmpdir)})
    server.start(tmp_path / "server.log")
    try:
        assert len(list(tmpdir.glob("priorauth-cds-metrics-*"))) == 1
    finally:
        server.stop()
    assert list(tmpdir.glob("priorauth-cds-metrics-*")) == []
    assert (
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None
        or "priorauth-cds-metrics-" not in os.environ["PROMETHEUS_MULTIPROC_DIR"]
    )


# ----------------------------------------------------------------------------- issue 15: items 8 and 17


def test_method_label_is_one_of_a_fixed_set(tmp_path: Path) -> None:
    """Any token is an HTTP method: invented ones (any length, any case) are all counted as ``other``."""
    client = _client(tmp_path, metrics=True)
    for method in ("QWERTYUIOP", "PROPFIND", "X"):
        assert client.open("/healthz", method=method).status_code in (404, 405)
    assert client.head("/healthz").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("priorauth_cds_http_requests_total{")
    }
    assert methods <= {"GET", "POST", "OPTIONS", "HEAD", "other"}, methods
    assert "other" in methods and "HEAD" in methods


def _ours() -> list[str]:
    """This service's series and values (the client's own process and GC series change by themselves)."""
    from cds_service.metrics import exposition

    return [line for line in exposition().decode().splitlines() if line.startswith("priorauth_cds_")]


def test_nothing_is_recorded_when_metrics_are_off(tmp_path: Path) -> None:
    before = _ours()
    client = _client(tmp_path)
    assert client.post(HOOK, data=SAMPLE.read_bytes(), content_type="application/json").status_code == 200
    for method in ("ABCDEFGHIJ", "GET"):
        client.open("/healthz", method=method)
    assert _ours() == before


ISSUER_ENV = {
    "CDS_TRUSTED_ISSUERS": '{"https://ehr.example": "https://ehr.example/jwks.json"}',
    "CDS_PUBLIC_BASE_URL": "https://cds.payer.example",
    "CDS_METRICS": "1",
}


def test_metrics_with_issuers_need_a_token() -> None:
    from cds_service.config import ConfigError

    with pytest.raises(ConfigError, match="CDS_METRICS_TOKEN"):
        Config.from_env(ISSUER_ENV)
    assert Config.from_env({**ISSUER_ENV, "CDS_METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
    assert Config.from_env({**ISSUER_ENV, "CDS_METRICS": "0"}).metrics is False
    assert Config.from_env({"CDS_METRICS": "1"}).metrics is True  # development (no issuers): loopback-only


def test_serve_refuses_metrics_with_issuers_without_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import free_port

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", **ISSUER_ENV}
    env.pop("CDS_METRICS_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "cds_service", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"refusing to start" in result.stderr and b"CDS_METRICS_TOKEN" in result.stderr
