"""Property tests: no request body, however odd, produces a 5xx or a non-OperationOutcome error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scenarios import SAMPLE_DIR

SIGN = "/cds-services/everolimus-order-sign"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

#: A complete request from the repository (brand without its combination partner), so these run on a plain clone.
BASE = json.loads((SAMPLE_DIR / "I.A-brand-without-exemestane.json").read_text())
PATHS = [
    ("hook",), ("hookInstance",), ("fhirServer",), ("fhirAuthorization",), ("context",), ("context", "userId"),
    ("context", "patientId"), ("context", "draftOrders"), ("context", "draftOrders", "entry"),
    ("context", "draftOrders", "entry", 0, "resource"),
    ("context", "draftOrders", "entry", 0, "resource", "medicationCodeableConcept"),
    ("context", "draftOrders", "entry", 0, "resource", "dosageInstruction"),
    ("context", "draftOrders", "entry", 0, "resource", "authoredOn"),
    ("context", "draftOrders", "entry", 0, "resource", "dispenseRequest"),
    ("prefetch",), ("prefetch", "patient"), ("prefetch", "conditions"), ("prefetch", "coverage"),
    ("prefetch", "observations"), ("prefetch", "medicationStatements"), ("extension",),
]


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


def _check(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code != 200:
        assert response.get_json(force=True)["resourceType"] == "OperationOutcome"
    else:
        assert isinstance(response.get_json()["cards"], list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_arbitrary_json_never_5xx(client: Any, body: Any) -> None:
    _check(client.post(SIGN, data=json.dumps(body), content_type="application/json"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=json_values)
def test_mutated_valid_request_never_5xx(client: Any, path: tuple[Any, ...], value: Any) -> None:
    body = _set(json.loads(json.dumps(BASE)), path, value)
    _check(client.post(SIGN, json=body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_never_5xx(client: Any, data: bytes) -> None:
    _check(client.post(SIGN, data=data, content_type="application/json"))
