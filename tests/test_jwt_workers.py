"""A JWT used once is refused on every gunicorn worker, not only on the one that accepted it (issue 17 item 9).

The replay guard lives in the shared store, so a second use of a token is 401 even when the kernel hands the
connection to the other worker. Each call goes on a new connection; the ``request`` log line names the worker's pid,
which is how the test knows the replay reached another process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import LiveServer
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks
from tests.scenarios import request_for, scenario

ISSUER = "https://ehr.example.org"
SIGN = "/cds-services/everolimus-order-sign"
KEY = ec_key("ES384")
ATTEMPTS = 60


def _hook_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == "request" and line.get("route") == "/cds-services/<service_id>":
            lines.append(line)
    return lines


def _post(server: LiveServer, token: str, body: dict[str, Any]) -> int:
    headers = {"Authorization": bearer(token), "Connection": "close"}
    return requests.post(f"{server.url}{SIGN}", json=body, headers=headers, timeout=20).status_code


def test_a_token_replayed_on_another_worker_is_401(tmp_path: Path) -> None:
    server = LiveServer(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    server.extra_env.update(
        {
            "CDS_WORKERS": "2",
            "CDS_PUBLIC_BASE_URL": server.url,
            "CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: jwks(KEY)}),
            "CDS_RATE_LIMIT_PER_MINUTE": "0",
        }
    )
    log = tmp_path / "server.log"
    server.start(log)
    try:
        body = request_for(scenario("B-pnet-met"))
        token = KEY.sign(cds_claims(ISSUER, f"{server.url}{SIGN}", time.time()))
        assert _post(server, token, body) == 200
        time.sleep(0.2)  # the worker writes its log line after the answer
        (first,) = _hook_lines(log)
        assert first["status"] == 200
        replays: list[dict[str, Any]] = []
        for _ in range(ATTEMPTS):
            assert _post(server, token, body) == 401
            time.sleep(0.05)
            replays = _hook_lines(log)[1:]
            if any(line["pid"] != first["pid"] for line in replays):
                break
        assert all(line["status"] == 401 for line in replays)
        others = [line for line in replays if line["pid"] != first["pid"]]
        assert others, f"all {len(replays)} replays went to worker {first['pid']}: the kernel never spread them"
    finally:
        server.stop()
