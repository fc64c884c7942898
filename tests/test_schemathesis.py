"""Schemathesis against the served OpenAPI document: generated and mutated requests, in process, bounded.

Every documented operation gets explicit examples, boundary (coverage) cases and up to ``MAX_EXAMPLES``
generated cases, positive and negative. Each response must not be a server error, must have a documented
status and media type, and its body must match the documented schema. The app's FHIR session cannot
reach the network, so a generated ``fhirServer`` is never contacted.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service.app import create_app
from cds_service.config import Config

#: Per operation: 200 take ~1 min for every route on 2 cores (76 s measured under load); PRIORAUTH_FUZZ_EXAMPLES=1000
#: explores further by hand (8 min, no 5xx found).
MAX_EXAMPLES = int(os.environ.get("PRIORAUTH_FUZZ_EXAMPLES", "200"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class _NoNetwork(requests.adapters.BaseAdapter):
    """A transport that refuses every request, as an unreachable FHIR server would."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        raise requests.ConnectionError("network disabled in this test")

    def close(self) -> None:
        return None


def offline_session() -> requests.Session:
    """A requests session that never leaves the process (generated fhirServer URLs point anywhere)."""
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _NoNetwork())
    return session


def offline_app(folder: Path) -> Flask:
    """The app on a SQLite file in ``folder``, its FHIR session offline."""
    config = Config(
        database_url=f"sqlite:///{folder / 'api.sqlite3'}", fhir_budget_seconds=1.0, rate_limit_per_minute=0
    )  # generated calls by the hundred: no 429 to hide their answers
    app = create_app(config, session_factory=offline_session)
    app.config["TESTING"] = True
    return app


def load_schema(app: Flask) -> Any:
    """The document as the app serves it, with bounded, deterministic generation."""
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True
    )
    return loaded


# Loaded at collection: schemathesis parametrizes per operation from a schema it has in hand (its fixture-based
# loader, schemathesis.pytest.from_fixture, fails under pytest 9), so the app lives as long as the process.
_FOLDER = Path(tempfile.mkdtemp(prefix="priorauth-schemathesis-"))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
APP = offline_app(_FOLDER)
schema = load_schema(APP)


@pytest.fixture(scope="module", autouse=True)
def _dispose_store() -> Iterator[None]:
    yield
    APP.extensions["priorauth_cds"].store.dispose()


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_response_matches_the_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


def test_every_route_is_in_the_document() -> None:
    """The fuzz covers what the app serves: every URL rule and method of the app is a documented operation."""
    paths = APP.test_client().get("/openapi.json").get_json()["paths"]
    for rule in APP.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        assert path in paths, path
        for method in sorted((rule.methods or set()) - {"HEAD"}):
            assert method.lower() in paths[path], f"{method} {path}"
