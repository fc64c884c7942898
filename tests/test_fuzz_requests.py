"""Property-based fuzzing of real hook requests: mutated drafts and prefetch never give a 5xx.

Every example starts from a sample bundle (``sample_bundles/*.json``, so this runs on a plain clone) and applies
one to three mutations: a random leaf or subtree under ``context.draftOrders`` or ``prefetch`` replaced by a
random JSON value (objects where strings belong, 1e308 and 10**400, nulls, lists, lone surrogates, NUL, bidi
marks, deep nesting), a key deleted, a key duplicated in the JSON text (with another value), or a subtree
wrapped in deeply nested arrays. The answer must be 200 with a CDS Hooks body, or 400/412 with an
OperationOutcome. When only irrelevant parts change (unknown members, resource ``meta``/``text``), the
evaluation must be the same as for the untouched request.

CI time is bounded: ``max_examples`` below, no deadline, and the ``ci`` profile (derandomized) under ``CI``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.app import create_app
from cds_service.config import Config
from tests.scenarios import SAMPLE_DIR

SERVICE_FOR_HOOK = {"order-sign": "everolimus-order-sign", "order-select": "everolimus-order-select"}
ALLOWED = {200, 400, 412}

settings.register_profile(
    "fuzz-ci",
    derandomize=True,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-dev",
    deadline=None,
    max_examples=int(os.environ.get("PRIORAUTH_FUZZ_EXAMPLES") or 300),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz-ci" if os.environ.get("CI") else "fuzz-dev")


def _samples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(SAMPLE_DIR.glob("*.json")):
        body = json.loads(path.read_text())
        if isinstance(body, dict) and body.get("hook") in SERVICE_FOR_HOOK:
            found.append((path.stem, body))
    return found


SAMPLES = _samples()

VALID_ODD_STRINGS = st.sampled_from(
    ["", " ", "\x00", "\u202e\u2066evil", "e\u0301\u0301\u0301", "\U0001f600" * 3, "a" * 5000,
     "MedicationRequest/", "Patient/", "/", "#", "urn:uuid:", "0", "-1", "1e308", "NaN", "2025-13-45",
     "2025-02-29T25:61:00Z", "\ufeff", "\u0085", "10 mg", "x" * 70]
)
#: Numbers any JSON parser reads (as int, or as a float for big ones).
VALID_ODD_NUMBERS = st.sampled_from([0, -1, 1e308, -1e308, 2**63, 2**64, -(2**63) - 1, 10**30, 5e-324, 1e-320, -0.0,
                                     0.5, 1.7976931348623157e308])
#: Text our parser refuses as a whole (a 400 for the body): lone surrogates, numbers beyond a double.
UNPARSABLE = st.sampled_from(["\ud800", "x\udfff", 10**400, -(10**400)])


def _json_values(*extra: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12), VALID_ODD_STRINGS, VALID_ODD_NUMBERS, *extra,
    )
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8) | VALID_ODD_STRINGS, children, max_size=3),
        max_leaves=8,
    )


json_values = _json_values(UNPARSABLE)
parsable_values = _json_values()


class Dup(dict):  # type: ignore[type-arg]
    """A dict serialised with one key written twice (the second value wins in orjson, like most parsers)."""

    def __init__(self, items: dict[str, Any], key: str, first: Any) -> None:
        super().__init__(items)
        self.key = key
        self.first = first


def _dumps(value: Any) -> str:
    """JSON text; huge ints as digits, lone surrogates escaped, Dup keys written twice."""
    if isinstance(value, Dup):
        parts = [f"{json.dumps(value.key)}: {_dumps(value.first)}"]
        parts += [f"{json.dumps(k)}: {_dumps(v)}" for k, v in value.items()]
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member path below ``value`` (dict keys and list indexes)."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield (*prefix, key)
            yield from _paths(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield (*prefix, index)
            yield from _paths(member, (*prefix, index))


def _fuzzable(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Paths under the draft orders and the prefetch, plus the context members around them."""
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    inner = [("context", "draftOrders", *p) for p in _paths(context.get("draftOrders"))]
    inner += [("prefetch", *p) for p in _paths(body.get("prefetch"))]
    return [("context", "draftOrders"), ("prefetch",), ("context", "selections"), *inner]


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    target = body
    for part in path[:-1]:
        target = target[part]
    return target


def _dicts(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        yield prefix
        for key, member in value.items():
            yield from _dicts(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield from _dicts(member, (*prefix, index))


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        body = body[part]
    return body


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, str, str]:
    """(sample name, service id, JSON text) of a sample with 1-3 random mutations."""
    name, base = draw(st.sampled_from(SAMPLES))
    body: Any = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _fuzzable(body) if _exists(body, p)]
        if not paths:
            break
        drafts = [p for p in paths if p[:2] == ("context", "draftOrders")]
        path = draw(st.sampled_from(drafts if drafts and draw(st.booleans()) else paths))
        parent = _parent(body, path)
        kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "duplicate", "nest", "wrap-list"]))
        key = path[-1]
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "delete":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif kind == "duplicate" and isinstance(parent, dict) and len(path) > 1:
            _parent(body, path[:-1])[path[-2]] = Dup(parent, key, draw(json_values))
        elif kind == "nest":
            depth = draw(st.sampled_from([20, 99, 101, 300]))
            value = parent[key]
            for _level in range(depth):
                value = [value]
            parent[key] = value
            break  # walking a 300-deep tree again would cost more than it finds
        else:
            parent[key] = [parent[key], parent[key]]
    return name, SERVICE_FOR_HOOK[base["hook"]], _dumps(body)


def _exists(body: Any, path: tuple[Any, ...]) -> bool:
    try:
        _get(body, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    config = Config(database_url=f"sqlite:///{folder / 'fuzz.sqlite3'}", fhir_budget_seconds=0.5,
                    fhir_connect_timeout_seconds=0.2, rate_limit_per_minute=0)
    app = create_app(config)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["priorauth_cds"].store.dispose()


def _check_shape(response: Any) -> dict[str, Any]:
    assert response.status_code in ALLOWED, (response.status_code, response.get_data(as_text=True)[:500])
    body = json.loads(response.get_data())
    if response.status_code == 200:
        assert isinstance(body.get("cards"), list)
        for card in body["cards"]:
            assert isinstance(card["summary"], str) and card["indicator"] in ("info", "warning", "critical")
            assert isinstance(card["source"]["label"], str) and isinstance(card["uuid"], str)
        assert isinstance(body.get("systemActions", []), list)
    else:
        assert body["resourceType"] == "OperationOutcome" and body["issue"]
    return body


def _evaluations(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    found = []
    for card in body.get("cards", []):
        evaluation = (card.get("extension") or {}).get("priorauth-cds.evaluation")
        if evaluation:
            found.append((evaluation["order"], evaluation["decision"], evaluation.get("pathway")))
    return sorted(found)


_BASELINES: dict[str, list[tuple[Any, ...]]] = {}


def _baseline(client: Any, name: str, service: str) -> list[tuple[Any, ...]]:
    """The evaluations of the untouched sample (computed once per sample)."""
    if name not in _BASELINES:
        response = client.post(f"/cds-services/{service}", data=json.dumps(dict(SAMPLES)[name]),
                               content_type="application/json")
        _BASELINES[name] = _evaluations(_check_shape(response))
    return _BASELINES[name]


@FUZZ
@given(case=mutated_requests())
def test_mutated_drafts_and_prefetch_never_5xx(fuzz_client: Any, case: tuple[str, str, str]) -> None:
    _name, service, text = case
    response = fuzz_client.post(f"/cds-services/{service}", data=text.encode("utf-8", "surrogatepass"),
                                content_type="application/json")
    _check_shape(response)


@FUZZ
@given(data=st.data())
def test_irrelevant_mutations_keep_the_evaluation(fuzz_client: Any, data: st.DataObject) -> None:
    name, base = data.draw(st.sampled_from(SAMPLES))
    service = SERVICE_FOR_HOOK[base["hook"]]
    expected = _baseline(fuzz_client, name, service)
    body: Any = json.loads(json.dumps(base))
    for _ in range(data.draw(st.integers(1, 3))):
        holders = list(_dicts(body))
        holder_path = data.draw(st.sampled_from(holders))
        holder = _get(body, holder_path)
        if "resourceType" in holder and data.draw(st.booleans()):
            holder[data.draw(st.sampled_from(["meta", "text", "implicitRules", "language"]))] = data.draw(
                parsable_values
            )
        else:
            holder["zzFuzz" + data.draw(st.text(max_size=6))] = data.draw(parsable_values)
    response = fuzz_client.post(f"/cds-services/{service}", data=_dumps(body).encode("utf-8", "surrogatepass"),
                                content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert _evaluations(_check_shape(response)) == expected


@pytest.mark.parametrize("depth", [150, 400, 900])
def test_deeply_nested_prefetch_resource_is_dropped_not_a_500(tmp_path: Path, depth: int) -> None:
    """Prefetch is not depth-checked at the door (a 5,000-resource chart would pay for it); a resource nested past
    what Python can copy is dropped as invalid and the order is still evaluated."""
    client = create_app(Config(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}")).test_client()
    request = json.loads((SAMPLE_DIR / "I.A-brand-without-exemestane.json").read_text(encoding="utf-8"))
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    condition = request["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["code"]["coding"][0]["extension"] = [deep]
    response = client.post(
        "/cds-services/everolimus-order-sign", data=json.dumps(request), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.get_json()["cards"]
