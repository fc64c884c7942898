"""fhir_mappings.fast_validation accepts and rejects exactly what fhir_core does, with the same models and errors.

Every resource of every sample bundle (prefetch and draft orders), as is and with hypothesis-drawn mutations (a
null anywhere, a null inside a list, an element removed, a choice element given twice, a wrong type, an unknown
element), is validated with fhir_core's own validators and with the shim; the outcomes must be equal: the same
model (``==``: same class, same values) or the same ``ValidationError`` (every error's type, location, message and
input), or the same other exception. Further mutations aim at what the shim decides itself: nested objects with or
without a ``resourceType`` (or with a non-string key), contained resources, primitive extensions (``_x``),
decimals, dates and bad dates, nulls in lists; every complex element of the samples is also validated on its own.
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
    return _both_outcomes(MODELS[data["resourceType"]], data)


def _both_outcomes(model_cls: type[BaseModel], data: dict[str, Any]) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """(upstream, shim) outcomes of validating ``data`` as ``model_cls``."""
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


# ----------------------------------------------------------------------------- the element path, primitives, install
# The shim also replaces the element wrap validator (every nested complex element), FHIRAbstractModel.__init__ and
# Date._validate. These tests aim mutations at what those decide: nested objects with or without a resourceType,
# contained resources, primitive extensions, decimals, dates, nulls in lists, non-string keys.

DATES = (
    "2024",
    "2024-02",
    "2024-13",
    "2024-02-29",
    "2023-02-29",
    "2024-02-30",
    "2024-01-01T10:00:00Z",
    "2024-01-01T10:00:00.123+05:30",
    "2024-01-01T10:00:00",
    "2024-01-01T24:00:00Z",
    "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:60",
    "2024-01-01T10:00Z",
    "0000",
    " 2024",
    "2024-01-01\n",
    "",
    20240101,
    None,
)
DECIMALS = (
    0,
    -0.0,
    1,
    10,
    2.5,
    1.0,
    1e3,
    1e-7,
    float("inf"),
    float("nan"),
    "1.50",
    "01",
    "1e3",
    "-0",
    True,
    None,
    "x",
    [],
)
NESTED = (
    {"text": "x"},
    {"resourceType": "CodeableConcept", "text": "x"},
    {"resourceType": "Patient", "text": "x"},
    {"resource_type": "CodeableConcept", "text": "x"},
    {"coding": [None, {"code": "a"}]},
    {"coding": [{"code": "a", "_code": {"extension": [{"url": "http://x", "valueString": "y"}]}}]},
    {"_text": {"extension": [{"url": "http://x", "valueCode": "unknown"}]}},
    {"_text": {}},
    {"_text": "string"},
    {"extension": [{"url": "http://x", "valueCodeableConcept": {"text": "x"}, "valueString": "y"}]},
    {"extension": [{"url": "http://x", "extension": [{"url": "http://y", "valueDecimal": "01"}]}]},
    {"reference": "Patient/x", "identifier": {"value": "1", "period": {"start": "2024-13"}}},
    {1: "x"},
    {"text": "x", 1: "y"},
    {},
    [],
    "text",
)
CONTAINED = (
    {"resourceType": "Medication", "id": "m", "code": {"text": "x"}},
    {"resourceType": "Medication", "id": "m", "code": {"coding": [None]}},
    {"resourceType": "Medication", "id": "m", "amount": {"numerator": {"value": "01"}}},
    {"resourceType": "Patient", "id": "p", "birthDate": "2024-02-30"},
    {"resourceType": "NoSuchType", "id": "x"},
    {"resourceType": "CodeableConcept", "text": "x"},
    {"id": "no-type"},
    None,
)
PRIMITIVE_EXTENSIONS = (
    {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]},
    {"extension": []},
    {"id": "a"},
    {},
    {"extension": [None]},
    "text",
)


def _dicts(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Paths of every object nested in ``value`` (not the top level)."""
    for path in _paths(value, prefix):
        if isinstance(_parent(value, (*path, "x")), dict):
            yield path


def _keys_with(data: dict[str, Any], wanted: Any) -> list[Path_]:
    return [p for p in _paths(data) if isinstance(p[-1], str) and wanted(p[-1], _parent(data, (*p, "x")))]


def _mutate_more(data: dict[str, Any], draw: Any) -> None:
    """One mutation aimed at the shim's own decisions (in place)."""
    kind = draw(st.sampled_from(["nested", "contained", "primitive-ext", "decimal", "date", "resource-type"]))
    if kind == "nested":
        objects = list(_dicts(data))
        if objects:
            path = draw(st.sampled_from(objects))
            _parent(data, path)[path[-1]] = copy.deepcopy(draw(st.sampled_from(NESTED)))
    elif kind == "contained":
        data["contained"] = copy.deepcopy(draw(st.lists(st.sampled_from(CONTAINED), max_size=2)))
    elif kind == "primitive-ext":
        strings = [
            p
            for p in _paths(data)
            if isinstance(p[-1], str) and p != ("resourceType",) and isinstance(_parent(data, (*p, "x")), str)
        ]
        if strings:
            path = draw(st.sampled_from(strings))
            _parent(data, path)[f"_{path[-1]}"] = copy.deepcopy(draw(st.sampled_from(PRIMITIVE_EXTENSIONS)))
            if draw(st.booleans()):
                del _parent(data, path)[path[-1]]
    elif kind == "decimal":
        numbers = _keys_with(data, lambda _k, v: isinstance(v, (int, float)) and not isinstance(v, bool))
        numbers += _keys_with(data, lambda k, _v: k == "value")
        if numbers:
            path = draw(st.sampled_from(numbers))
            _parent(data, path)[path[-1]] = copy.deepcopy(draw(st.sampled_from(DECIMALS)))
    elif kind == "date":
        dates = _keys_with(data, lambda _k, v: isinstance(v, str) and v[:4].isdigit())
        if dates:
            path = draw(st.sampled_from(dates))
            _parent(data, path)[path[-1]] = draw(st.sampled_from(DATES))
    else:
        data["resourceType"] = draw(st.sampled_from([data["resourceType"], "Patient", "Bundle", None, 1]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_nested_primitive_and_contained_mutations_same_outcome(data: st.DataObject) -> None:
    """Nested objects (with and without resourceType, nulls in lists, non-string keys), contained resources,
    primitive extensions, decimals, dates and a wrong resourceType: the same model or the same errors."""
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    model_cls = MODELS[resource["resourceType"]]
    for _ in range(data.draw(st.integers(1, 3))):
        data.draw(st.sampled_from([_mutate_more, _mutate]))(resource, data.draw)
    upstream, fast = _both_outcomes(model_cls, resource)
    assert fast == upstream


def _elements(value: Any) -> Iterator[tuple[type[BaseModel], dict[str, Any]]]:
    """(model class, raw object) of every complex element of the sample resources, by the field that holds it."""
    if not isinstance(value, dict) or value.get("resourceType") not in MODELS:
        return
    model_cls = MODELS[value["resourceType"]]
    for key, item in value.items():
        field = next((f for n, f in model_cls.model_fields.items() if (f.alias or n) == key), None)
        element_type = _element_model(field.annotation) if field is not None else None
        for raw in item if isinstance(item, list) else [item]:
            if element_type is not None and isinstance(raw, dict):
                yield element_type, raw


def _element_model(annotation: Any) -> type[BaseModel] | None:
    from fhir_mappings.record import _element_type, _model_of

    return _model_of(_element_type(annotation)[0])


ELEMENTS = [pair for resource in RESOURCES for pair in _elements(resource)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_element_validated_on_its_own_same_outcome(data: st.DataObject) -> None:
    """A complex element validated at the top level (the record builder's concept and reference cache does this):
    FHIRAbstractModel.__init__ without a resourceType, or with a right or wrong one."""
    model_cls, raw = data.draw(st.sampled_from(ELEMENTS))
    element = {"resourceType": "x", **copy.deepcopy(raw)}  # the mutations expect a resource
    for _ in range(data.draw(st.integers(0, 2))):
        data.draw(st.sampled_from([_mutate_more, _mutate]))(element, data.draw)
    element.pop("resourceType", None)
    if data.draw(st.booleans()):
        element["resourceType"] = data.draw(st.sampled_from([model_cls.__name__, "Patient", None]))
    upstream, fast = _both_outcomes(model_cls, element)
    assert fast == upstream


@pytest.mark.parametrize("value", DATES)
@pytest.mark.parametrize(("rtype", "key"), [("Patient", "birthDate"), ("Observation", "effectiveDateTime")])
def test_each_date_same_outcome(rtype: str, key: str, value: Any) -> None:
    """Date (birthDate) and DateTime (effectiveDateTime): partial dates, bad months and days, time zones, leap
    seconds, whitespace."""
    resource = {"resourceType": rtype, "id": "a", key: value}
    if rtype == "Observation":
        resource.update(status="final", code={"text": "x"})
    upstream, fast = _both(resource)
    assert fast == upstream


@pytest.mark.parametrize("value", DECIMALS)
def test_each_decimal_same_outcome(value: Any) -> None:
    resource = {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"}}
    resource["valueQuantity"] = {"value": value, "unit": "mg"}
    upstream, fast = _both(resource)
    assert fast == upstream


def test_non_string_key_fails_as_upstream() -> None:
    """fhir_core builds each element with ``klass(**data)``: a non-string key is a TypeError there, not an error."""
    resource = {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x", 1: "y"}}
    upstream, fast = _both(resource)
    assert fast == upstream
    assert fast[0] == "raised" and fast[1].startswith("TypeError")


def test_uninstall_restores_every_function() -> None:
    """After uninstall no fhir_core function (element validators of classes built since, too) runs the shim's code."""
    from fhir.resources.R4B.careplan import CarePlan  # not imported by the record builder: built after install

    assert fast_validation.installed()
    CarePlan.model_validate(
        {"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/a"}}
    )
    fast_validation.uninstall()
    try:
        shim_code = {code for _f, _o, code in fast_validation._SWAPS} | set(fast_validation._CLOSURES.values())
        assert not any(f.__code__ in shim_code for f, _o, _c in fast_validation._SWAPS)
        closures = fast_validation._closures()
        assert {f.__code__ for f in closures} == set(fast_validation._CLOSURES)
        assert {CarePlan} <= fast_validation._classes_seen
    finally:
        fast_validation.install()
    assert {f.__code__ for f in fast_validation._closures()} == set(fast_validation._CLOSURES.values())


def _called(model_cls: type[BaseModel], data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "model", model_cls(**copy.deepcopy(data))
    except ValidationError as exc:
        return "invalid", repr(exc.errors(include_url=False))
    except Exception as exc:  # noqa: BLE001 - the library's own failures must be the same too
        return "raised", type(exc).__name__


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_calling_the_class_same_as_model_validate(data: st.DataObject) -> None:
    """The record builder builds models with ``Model(**data)``: the same models and errors as fhir_core's own
    ``Model.model_validate(data)`` (which calls it, then runs the after-validator once more)."""
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    model_cls = MODELS[resource["resourceType"]]
    for _ in range(data.draw(st.integers(0, 3))):
        data.draw(st.sampled_from([_mutate_more, _mutate]))(resource, data.draw)
    fast_validation.uninstall()
    try:
        upstream = _outcome(model_cls, resource)
    finally:
        fast_validation.install()
    if upstream[0] == "raised":
        upstream = ("raised", upstream[1].split(":")[0])
    assert _called(model_cls, resource) == upstream
