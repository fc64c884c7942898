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


def _capture() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("priorauth_cds").addHandler(handler)
    return stream, handler


def test_request_log_has_hook_instance_and_no_secrets(tmp_path: Path) -> None:
    key = ec_key()
    issuer = "https://ehr.example"
    app = create_app(Config(database_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", trusted_issuers={issuer: jwks(key)},
                            public_base_url="http://localhost"))
    client = app.test_client()
    stream, handler = _capture()
    try:
        request: dict[str, Any] = request_for(scenario("A-brand-without-combination"), token="SECRET-ACCESS-TOKEN-123")
        token = key.sign(cds_claims(issuer, "http://localhost/cds-services/everolimus-order-sign", time.time()))
        assert client.post("/cds-services/everolimus-order-sign", json=request,
                           headers={"Authorization": bearer(token)}).status_code == 200
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
