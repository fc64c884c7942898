"""fhir_mappings.fast_validation accepts and rejects exactly what fhir_core does, with the same models and errors.

Every resource of every sample bundle (prefetch and draft orders), as is and with hypothesis-drawn mutations (a
null anywhere, a null inside a list, an element removed, a choice element given twice, a wrong type, an unknown
element), is validated with fhir_core's own validators and with the shim; the outcomes must be equal: the same
model (``==``: same class, same values) or the same ``ValidationError`` (every error's type, location, message and
input).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from fhir_mappings import fast_validation
from fhir_mappings.record import MODELS

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_bundles"
Path_ = tuple[str | int, ...]


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    """Every FHIR resource of a known type nested anywhere in a sample request."""
    if isinstance(value, dict):
        if value.get("resourceType") in MODELS:
            yield value
        for item in value.values():
            yield from _resources(item)
    elif isinstance(value, list):
        for item in value:
            yield from _resources(item)


def _sample_resources() -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(SAMPLE_DIR.glob("*.json")):
        if path.name == "expected.json":
            continue
        for resource in _resources(json.loads(path.read_text(encoding="utf-8"))):
            found.setdefault(json.dumps(resource, sort_keys=True), resource)
    return list(found.values())


#: The samples reference no Medication resource; this one has the elements a chart's Medication carries.
MEDICATION = {
    "resourceType": "Medication",
    "id": "med-1",
    "status": "active",
    "code": {"text": "everolimus 10 MG Oral Tablet"},
    "form": {"text": "tablet"},
    "ingredient": [{"itemCodeableConcept": {"text": "everolimus"}, "isActive": True}],
}
RESOURCES = [*_sample_resources(), MEDICATION]
CHOICES = (
    ("valueString", "x"),
    ("valueBoolean", True),
    ("effectiveDateTime", "2026-01-01"),
    ("onsetString", "x"),
    ("abatementBoolean", True),
    ("medicationCodeableConcept", {"text": "x"}),
    ("medicationReference", {"reference": "Medication/x"}),
    ("performedString", "x"),
    ("asNeededBoolean", True),
    ("deceasedBoolean", False),
)
WRONG = (None, 12, "text", [], {}, [None], [{}], {"bogus": 1}, True)


def _paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from _paths(item, (*prefix, index))


def _parent(data: Any, path: Path_) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _mutate(data: dict[str, Any], draw: Any) -> None:
    """One mutation somewhere in ``data`` (in place)."""
    kind = draw(st.sampled_from(["set", "drop", "drop-top", "null-in-list", "choice", "unknown"]))
    if kind == "drop-top":
        keys = [k for k in data if k != "resourceType"]
        if keys:
            del data[draw(st.sampled_from(keys))]
        return
    paths = [p for p in _paths(data) if p[-1] not in ("resourceType",)]
    if kind == "choice":
        containers = [()] + [p for p in paths if isinstance(_parent(data, (*p, 0)), dict)]
        target = _parent(data, (*draw(st.sampled_from(containers)), "x"))
        key, value = draw(st.sampled_from(CHOICES))
        target[key] = copy.deepcopy(value)
        return
    if kind == "unknown" or not paths:
        # a copy: a later mutation of this resource (a None put into a list) must not change WRONG for later examples
        data[draw(st.sampled_from(["bogus", "_status", "status__ext"]))] = copy.deepcopy(draw(st.sampled_from(WRONG)))
        return
    if kind == "null-in-list":
        lists = [p for p in paths if isinstance(_parent(data, (*p, 0)), list)]
        if lists:
            target = _parent(data, (*draw(st.sampled_from(lists)), 0))
            target.insert(draw(st.integers(0, len(target))), None)
            return
    path = draw(st.sampled_from(paths))
    parent = _parent(data, path)
    if kind == "drop":
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(WRONG)))


def _outcome(model_cls: type[BaseModel], data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "model", model_cls.model_validate(copy.deepcopy(data))
    except ValidationError as exc:
        return "invalid", repr(exc.errors(include_url=False))
    except Exception as exc:  # noqa: BLE001 - the library's own failures must be the same too
        return "raised", f"{type(exc).__name__}: {exc}"


def _both(data: dict[str, Any]) -> tuple[tuple[str, Any], tuple[str, Any]]:
    model_cls = MODELS[data["resourceType"]]
    fast_validation.uninstall()
    try:
        upstream = _outcome(model_cls, data)
    finally:
        fast_validation.install()
    return upstream, _outcome(model_cls, data)


def test_installed_by_the_record_builder() -> None:
    assert fast_validation.installed()


def test_the_samples_hold_every_model() -> None:
    assert {r["resourceType"] for r in RESOURCES} == set(MODELS)


@pytest.mark.parametrize("index", range(len(RESOURCES)))
def test_sample_resource_same_model(index: int) -> None:
    upstream, fast = _both(RESOURCES[index])
    assert fast == upstream


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_resource_same_outcome(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(resource, data.draw)
    if not isinstance(resource.get("resourceType"), str) or resource["resourceType"] not in MODELS:
        return
    upstream, fast = _both(resource)
    assert fast == upstream


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Observation", "id": "a", "code": {"text": "x"}}, "model_field_validation.missing"),
        (
            {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"}, "category": [None]},
            "list_type",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "a",
                "status": "final",
                "code": {"text": "x"},
                "valueString": "v",
                "valueBoolean": True,
            },
            "value_error",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "a",
                "_status": {
                    "extension": [
                        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
                    ]
                },
                "code": {"text": "x"},
            },
            None,
        ),
    ],
)
def test_each_check_still_rejects(resource: dict[str, Any], expected: str | None) -> None:
    """The shim's fall-backs to fhir_core (null in a complex list, missing required, choice twice, required choice
    missing) and a missing required value a ``_field`` extension stands in for; equal outcomes too."""
    upstream, fast = _both(resource)
    assert fast == upstream
    if expected is None:
        assert fast[0] == "model"
    else:
        assert fast[0] == "invalid" and f"'type': '{expected}'" in fast[1]
