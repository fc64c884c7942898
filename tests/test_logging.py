"""Logs are JSON lines with hookInstance and timings, and never carry tokens, JWTs or patient data."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.logs import JsonFormatter
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks
from tests.scenarios import request_for, scenario


#: Fixed ids the logs may carry: random hex ids (uuid4, key ids) held "bea" now and then, failing the PHI check by chance.
FIXED_HOOK_INSTANCE = "00000000-0000-4000-8000-00000000f001"
FIXED_KID = "ec-logtest"


def _capture() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("priorauth_cds").addHandler(handler)
    return stream, handler


def test_request_log_has_hook_instance_and_no_secrets(tmp_path: Path) -> None:
    key = ec_key(kid=FIXED_KID)
    issuer = "https://ehr.example"
    app = create_app(
        Config(
            database_url=f"sqlite:///{tmp_path / 'l.sqlite3'}",
            trusted_issuers={issuer: jwks(key)},
            public_base_url="http://localhost",
        )
    )
    client = app.test_client()
    stream, handler = _capture()
    try:
        request: dict[str, Any] = request_for(scenario("A-brand-without-combination"), token="SECRET-ACCESS-TOKEN-123")
        request["hookInstance"] = FIXED_HOOK_INSTANCE
        token = key.sign(cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign", time.time()))
        assert (
            client.post(
                "/cds-services/everolimus-order-sign", json=request, headers={"Authorization": bearer(token)}
            ).status_code
            == 200
        )
        client.post("/cds-services/everolimus-order-sign", json=request, headers={"Authorization": bearer(token)})
    finally:
        logging.getLogger("priorauth_cds").removeHandler(handler)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    served = [line for line in lines if line.get("event") == "request" and line.get("status") == 200]
    assert served and served[0]["hookInstance"] == request["hookInstance"]
    assert "stages_ms" in served[0] and served[0]["decisions"] == ["not-met"]
    assert any(line.get("status") == 401 for line in lines if line.get("event") == "request")
    for secret in ("SECRET-ACCESS-TOKEN-123", token, token.split(".")[1], "bea", "Bea", "1968-11-20", "C50.912"):
        assert secret not in text, secret


def test_a_routine_prefetch_summary_rides_on_the_request_line(tmp_path: Path) -> None:
    """Complete prefetch (only the optional DTR responses missing, no FHIR server): one record per call, the
    request line, carrying the summary's fields; anything else still gets its own ``prefetch.summary`` record."""
    app = create_app(Config(database_url=f"sqlite:///{tmp_path / 'r.sqlite3'}"))
    client = app.test_client()
    stream, handler = _capture()
    request: dict[str, Any] = request_for(scenario("A-brand-without-combination"))
    request["hookInstance"] = FIXED_HOOK_INSTANCE
    try:
        assert client.post("/cds-services/everolimus-order-sign", json=request).status_code == 200
        del request["prefetch"]["conditions"]
        assert client.post("/cds-services/everolimus-order-sign", json=request).status_code == 200
    finally:
        logging.getLogger("priorauth_cds").removeHandler(handler)
        app.extensions["priorauth_cds"].store.dispose()
    lines = _lines(stream.getvalue())
    routine, missing = [line for line in lines if line["event"] == "request"]
    assert routine["prefetch"]["failed"] == {"questionnaireResponses": "no-fhir-server"}
    assert routine["prefetch"]["origins"]["conditions"] == "prefetch"
    assert set(routine["prefetch"]) == {"origins", "failed", "notes", "fetch_s"}
    summaries = [line for line in lines if line["event"] == "prefetch.summary"]
    assert len(summaries) == 1 and "prefetch" not in missing
    assert summaries[0]["failed"]["conditions"] == "no-fhir-server"
    assert set(summaries[0]) >= {"origins", "failed", "notes", "fetch_s"}


# ----------------------------------------------------------------------------- one log stream (issue 8)

PACKAGE = Path(__file__).resolve().parent.parent


def test_every_module_logs_through_the_service_logger() -> None:
    """No module logger outside ``priorauth_cds.*`` (which carries the JSON handler), no print outside the CLI's
    own output, no warnings.warn, no %-style log calls (fields go in ``log_event``)."""
    import re

    for folder in ("cds_service", "fhir_mappings"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            source = path.read_text()
            for name in re.findall(r"logging\.getLogger\(([^)]*)\)", source):
                if path.name == "logs.py" and name == '"werkzeug"':  # where the handlers are configured
                    continue
                assert name.startswith('"priorauth_cds'), f"{path.name}: logging.getLogger({name})"
            assert "warnings.warn" not in source, path.name
            assert not re.search(r"\blog(ger)?\.(debug|info|warning|error|exception)\(\s*\"[^\"]*%", source), path.name
            if path.name != "cli.py":
                assert not re.search(r"^\s*print\(", source, re.MULTILINE), path.name


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_new_events_name_routes_and_hold_no_phi_or_secrets(tmp_path: Path) -> None:
    key = ec_key(kid=FIXED_KID)
    issuer = "https://ehr.example"
    app = create_app(
        Config(
            database_url=f"sqlite:///{tmp_path / 'l2.sqlite3'}",
            trusted_issuers={issuer: jwks(key)},
            public_base_url="http://localhost",
            rate_limit_per_minute=2,
        )
    )
    client = app.test_client()
    stream, handler = _capture()
    request: dict[str, Any] = request_for(scenario("A-brand-without-combination"), token="SECRET-ACCESS-TOKEN-123")
    request["hookInstance"] = FIXED_HOOK_INSTANCE
    del request["prefetch"]["conditions"]  # a key the service must report as unavailable (no fhirServer)
    try:
        good = key.sign(cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign", time.time()))
        expired = key.sign(
            cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign", time.time() - 7200)
        )
        client.post("/cds-services/everolimus-order-sign", json=request, headers={"Authorization": bearer(good)})
        client.post("/cds-services/everolimus-order-sign", json=request, headers={"Authorization": bearer(expired)})
        client.post(
            "/cds-services/everolimus-order-sign/feedback?patient=bea-1968",
            json={
                "feedback": [
                    {"card": "unknown-card", "outcome": "accepted", "outcomeTimestamp": "2026-11-27T10:00:00Z"}
                ]
            },
            headers={
                "Authorization": bearer(
                    key.sign(
                        cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign/feedback", time.time())
                    )
                )
            },
        )
        third = key.sign(cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign", time.time()))
        assert (
            client.post(
                "/cds-services/everolimus-order-sign", json=request, headers={"Authorization": bearer(third)}
            ).status_code
            == 429
        )
    finally:
        logging.getLogger("priorauth_cds").removeHandler(handler)
        app.extensions["priorauth_cds"].store.dispose()
    text = stream.getvalue()
    lines = _lines(text)
    requests_logged = [line for line in lines if line["event"] == "request"]
    assert requests_logged and all("path" not in line for line in requests_logged)
    assert {line["route"] for line in requests_logged} == {
        "/cds-services/<service_id>",
        "/cds-services/<service_id>/feedback",
    }
    assert [line["status"] for line in requests_logged] == [200, 401, 404, 429]
    rejected = [line for line in lines if line["event"] == "auth.jwt_rejected"]
    assert rejected and rejected[0]["reason"].startswith("jwt.") and rejected[0]["logger"] == "priorauth_cds.auth"
    summary = [line for line in lines if line["event"] == "prefetch.summary"]
    assert summary and summary[0]["logger"] == "priorauth_cds.prefetch" and "conditions" in summary[0]["origins"]
    assert any(line.get("rate_limited") for line in requests_logged)
    for secret in (
        "SECRET-ACCESS-TOKEN-123",
        good,
        good.split(".")[1],
        expired.split(".")[1],
        "bea",
        "Bea",
        "1968",
        "C50.912",
        "unknown-card",
    ):
        assert secret not in text, secret


def test_gunicorn_and_werkzeug_lines_are_json_without_uris() -> None:
    from cds_service.gunicorn_logging import GunicornJsonLogger
    from cds_service.logs import ThirdPartyJsonFormatter, configure_logging

    record = logging.LogRecord(
        "gunicorn.error",
        logging.ERROR,
        __file__,
        1,
        "Error handling request %s",
        ("/cds-services/x?patient=bea-1968",),
        None,
    )
    line = json.loads(ThirdPartyJsonFormatter().format(record))
    assert line["event"] == "Error handling request %s" and line["args_withheld"] == 1
    booted = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "Booting worker with pid: %s", (42,), None)
    assert json.loads(ThirdPartyJsonFormatter().format(booted))["event"] == "Booting worker with pid: 42"
    assert GunicornJsonLogger.access(None, None, None, None, None) is None  # type: ignore[arg-type]
    configure_logging("INFO")
    werkzeug = logging.getLogger("werkzeug")
    assert not werkzeug.propagate and any(isinstance(h.formatter, ThirdPartyJsonFormatter) for h in werkzeug.handlers)


def test_served_logs_are_json_lines(live_server: Any) -> None:
    """Everything the real gunicorn server wrote so far (gunicorn's own lines included: they go through
    ``GunicornJsonLogger``, which the server would not start without) is one JSON object per line."""
    import requests as http

    http.post(
        f"{live_server.url}/cds-services/everolimus-order-sign?patientId=bea-1968",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    time.sleep(0.2)
    assert live_server.log_path is not None
    text = live_server.log_path.read_text()
    # The one plain line is serve's own, on stdout, for the person who started it (the log file holds both streams).
    plain = [line for line in text.splitlines() if line.startswith("priorauth-cds: serving on ")]
    assert len(plain) == 1
    lines = _lines("\n".join(line for line in text.splitlines() if line not in plain))
    assert lines and all(line["logger"].startswith(("priorauth_cds", "gunicorn")) for line in lines)
    assert "bea-1968" not in text
