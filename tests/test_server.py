"""The real thing: ``priorauth-cds serve`` under gunicorn, over HTTP, including restarts and kill -9."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import LiveServer, free_port
from tests.issued import issue_cards
from tests.scenarios import evaluations, request_for, scenario

pytestmark = pytest.mark.server


def test_discovery_and_hook_through_gunicorn(live_server: LiveServer) -> None:
    services = requests.get(f"{live_server.url}/cds-services", timeout=5).json()["services"]
    assert {s["id"] for s in services} == {"everolimus-order-sign", "everolimus-order-select"}
    response = requests.post(f"{live_server.url}/cds-services/everolimus-order-sign",
                             json=request_for(scenario("A-brand-without-combination")), timeout=10)
    assert response.status_code == 200
    ev = evaluations(response.json())["MedicationRequest/bea-order-7"]
    assert ev["decision"] == "not-met"


def test_bad_input_through_gunicorn(live_server: LiveServer) -> None:
    response = requests.post(f"{live_server.url}/cds-services/everolimus-order-sign", data=b"{nope",
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"


def _feedback_item() -> dict[str, Any]:
    return {"card": str(uuid.uuid4()), "outcome": "overridden",
            "overrideReason": {"reason": {"code": "patient-preference", "system": "http://example.org/override",
                                          "display": "Patient preference"}, "userComment": "brand tolerated"},
            "outcomeTimestamp": "2026-11-27T12:00:00Z"}


def _database_urls(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'restart.sqlite3'}"]
    if os.environ.get("PRIORAUTH_TEST_POSTGRES_URL"):
        urls.append(os.environ["PRIORAUTH_TEST_POSTGRES_URL"])
    return urls


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
def test_feedback_and_assertions_survive_restart(tmp_path: Path, kill: bool) -> None:
    from cds_service.store import Store

    for database_url in _database_urls(tmp_path):
        server = LiveServer(database_url)
        server.start(tmp_path / "server.log")
        try:
            item = _feedback_item()
            issue_cards(database_url, item["card"])
            response = requests.post(f"{server.url}/cds-services/everolimus-order-sign/feedback",
                                     json={"feedback": [item]}, timeout=5)
            assert response.status_code == 200 and response.json()["stored"] == 1
            signed = requests.post(f"{server.url}/cds-services/everolimus-order-sign",
                                   json=request_for(scenario("A-met-generic-with-exemestane")), timeout=10).json()
            assertion_ids = [
                sub["valueString"]
                for action in signed["systemActions"]
                for ext in action["resource"]["extension"]
                for sub in ext.get("extension", [])
                if sub["url"] == "coverage-assertion-id"
            ]
            assert assertion_ids
        finally:
            server.stop(kill=kill)
        server.start(tmp_path / "server.log")
        try:
            again = requests.post(f"{server.url}/cds-services/everolimus-order-sign/feedback",
                                  json={"feedback": [item]}, timeout=5)
            assert again.json()["stored"] == 0, database_url.split("://")[0]
        finally:
            server.stop()
        store = Store(database_url)
        try:
            assert any(row["card"] == item["card"] for row in store.list_feedback("everolimus-order-sign"))
            for assertion_id in assertion_ids:
                assert store.get_assertion(assertion_id)["decision"] == "met"
        finally:
            store.dispose()


def test_refuses_public_bind_without_issuers(tmp_path: Path) -> None:
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    env.pop("CDS_ALLOW_UNAUTHENTICATED", None)
    env.pop("CDS_TRUSTED_ISSUERS", None)
    result = subprocess.run([sys.executable, "-m", "cds_service", "serve", "--host", "0.0.0.0", "--port",
                             str(free_port())], env=env, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"refusing to start" in result.stderr


# ----------------------------------------------------------------------------- a newcomer's first start (issue 17)


def test_serve_prints_one_plain_line_with_its_url(tmp_path: Path) -> None:

    server = LiveServer(f"sqlite:///{tmp_path / 'first.sqlite3'}")
    log = tmp_path / "server.log"
    server.start(log)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "serving on" not in log.read_text():
            time.sleep(0.05)
        plain = [line for line in log.read_text().splitlines() if line.startswith("priorauth-cds:")]
        assert plain == [f"priorauth-cds: serving on {server.url} (2 workers); Ctrl-C stops"]
    finally:
        server.stop()


def test_a_port_in_use_is_one_plain_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'busy.sqlite3'}"}
        done = subprocess.run(
            [sys.executable, "-m", "cds_service", "serve", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"priorauth-cds: cannot listen on http://127.0.0.1:{port}: "), lines
    assert "in use" in lines[0]
