"""The answer path shares nothing with the request it answers (issue 18: the echoed draft is copied shallowly).

``cards.annotated_order`` copies only the draft's top level (it replaces the ``extension`` member and nothing below);
the response body is serialised from new containers (``to_json``). So answering leaves the request exactly as
received, and nothing a caller does to the body reaches the request.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cds_service.config import Config
from cds_service.policy.engine import load_policy
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables
from tests.scenarios import request_for, scenario_params


def _containers(value: Any) -> list[Any]:
    """Every dict and list in a JSON value."""
    if isinstance(value, dict):
        return [value, *(c for member in value.values() for c in _containers(member))]
    if isinstance(value, list):
        return [value, *(c for member in value for c in _containers(member))]
    return []


@pytest.fixture(scope="module")
def handler() -> HookHandler:
    tables = load_code_tables()
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None)


@pytest.mark.parametrize("sc", scenario_params())
def test_answering_leaves_the_request_untouched_and_shares_no_container(handler: HookHandler, sc: Any) -> None:
    request = request_for(sc)
    received = orjson.dumps(request)
    body = handler.handle("everolimus-order-sign", request).body
    assert orjson.dumps(request) == received
    ids = {id(c) for c in _containers(request)}
    assert not [c for c in _containers(body) if id(c) in ids]
    for container in _containers(body):
        container.clear()
    assert orjson.dumps(request) == received
