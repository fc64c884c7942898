"""The record builder's one-pass preparation gives exactly what prune -> repair -> intern gave (issue 18).

``_prepared`` prunes, checks for repairs and interns a raw resource in one pass, and declines (None) whenever
``repair`` could change something; the builder then takes the general path. Hypothesis draws resources from the
sample bundles with the mutations of ``test_fast_validation`` and ones aimed at the repairs (lone objects where
R4 has arrays, STU3 doses, a lone ``doseAndRate``, an R5 ``medication``, Condition extensions, a lean
``dispenseRequest``); for each, both as a lean and as a full resource:

- when ``_prepared`` gives a dict, it equals ``_interned(repair(_prune(raw))[0])`` and ``repair`` noted nothing;
- the builder's outcome (the model or None, and what it adds to ``dropped`` and ``repaired``) is the same as the
  general path's alone.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fhir_mappings.codes import load_code_tables
from fhir_mappings.normalize import ARRAY_ELEMENTS, STU3_DOSE_KEYS, repair, repairs
from fhir_mappings.record import MODELS, _Builder, _interned, _prepared, _prune, _slots
from tests.test_fast_validation import RESOURCES, _mutate, _mutate_more

TABLES = load_code_tables()
CONCEPT = {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}], "text": "Oral route"}
HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"


def _mutate_repairs(data: dict[str, Any], draw: Any) -> None:
    """One mutation aimed at what ``repair`` and ``_prune`` change (in place)."""
    rtype = data.get("resourceType")
    kind = draw(st.sampled_from(["lone-array", "dosage", "r5", "extension", "dispense"]))
    if kind == "lone-array" and ARRAY_ELEMENTS.get(rtype):
        data[draw(st.sampled_from(ARRAY_ELEMENTS[rtype]))] = copy.deepcopy(draw(st.sampled_from([CONCEPT, {}])))
    elif kind == "dosage":
        dose: dict[str, Any] = {"value": 10, "unit": "mg"}
        dosage = draw(
            st.sampled_from(
                [
                    {"text": "daily", "doseAndRate": {"doseQuantity": dose}},
                    {"text": "daily", draw(st.sampled_from(STU3_DOSE_KEYS)): dose},
                    {"text": "daily", "doseAndRate": [{"doseQuantity": dose}], "route": CONCEPT, "method": CONCEPT},
                    {"sequence": 1},
                ]
            )
        )
        key = draw(st.sampled_from(["dosageInstruction", "dosage"]))
        data[key] = copy.deepcopy(draw(st.sampled_from([[dosage], dosage, [dosage, None]])))
    elif kind == "r5":
        data["medication"] = copy.deepcopy(
            draw(st.sampled_from([{"concept": CONCEPT}, {"reference": {"reference": "Medication/m"}}, {}, "x"]))
        )
        if draw(st.booleans()):
            data.pop("medicationCodeableConcept", None)
    elif kind == "extension":
        extension = {"url": draw(st.sampled_from([HISTOLOGY, "http://example.org/x"])), "valueCodeableConcept": CONCEPT}
        data["extension"] = copy.deepcopy(draw(st.sampled_from([[extension], extension, []])))
    else:
        data["dispenseRequest"] = copy.deepcopy(
            draw(
                st.sampled_from(
                    [
                        {"validityPeriod": {"start": "2026-01-01"}, "numberOfRepeatsAllowed": 2},
                        {"expectedSupplyDuration": {"value": 30, "unit": "days"}},
                        [{"validityPeriod": {}}],
                    ]
                )
            )
        )


def _drawn_resource(data: st.DataObject) -> dict[str, Any]:
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    for _ in range(data.draw(st.integers(1, 3))):
        data.draw(st.sampled_from([_mutate, _mutate_more, _mutate_repairs, _mutate_repairs]))(resource, data.draw)
    return resource


def _general(raw: dict[str, Any], lean: bool, model_cls: type[BaseModel]) -> tuple[str, Any]:
    try:
        data, notes = repair(_prune(raw, lean))
        return "data", (_interned(data, _slots(model_cls), {}), notes)
    except Exception as exc:  # noqa: BLE001 - then the one-pass path must not have given a dict
        return "raised", type(exc).__name__


def _builder_outcome(raw: dict[str, Any], lean: bool, model_cls: type[BaseModel], general: bool) -> tuple[Any, ...]:
    """The model (or None) ``_Builder._validate`` gives, and what it noted; ``general``: without ``_prepared``."""
    builder = _Builder(TABLES, "p1")
    if general:  # the general path alone, inside _validate's own exception handling
        builder._validate_once = lambda r, m, le=False: builder._validate_repaired(r, m, _slots(m), le)  # type: ignore[method-assign]
    model = builder._validate(raw, model_cls, lean)
    return model, builder.dropped, builder.repaired


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_prepared_is_the_general_path_when_nothing_is_repaired(data: st.DataObject) -> None:
    raw = _drawn_resource(data)
    model_cls = MODELS.get(raw.get("resourceType"))  # type: ignore[arg-type]
    if model_cls is None:
        return
    lean = data.draw(st.booleans())
    before = copy.deepcopy(raw)
    try:
        prepared = _prepared(raw, lean, model_cls, {})
    except Exception:  # noqa: BLE001 - the builder then runs the general path alone (the next test)
        prepared = None
    assert raw == before  # never mutated
    if prepared is not None:
        assert _general(raw, lean, model_cls) == ("data", (prepared, []))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_builder_outcome_is_the_general_paths(data: st.DataObject) -> None:
    raw = _drawn_resource(data)
    model_cls = MODELS.get(raw.get("resourceType"))  # type: ignore[arg-type]
    if model_cls is None:
        return
    lean = data.draw(st.booleans())
    assert _builder_outcome(raw, lean, model_cls, general=False) == _builder_outcome(raw, lean, model_cls, general=True)


def test_repairs_flags_each_repair() -> None:
    assert repairs("MedicationRequest", "category", {})
    assert not repairs("MedicationRequest", "category", [{}])
    assert repairs("MedicationRequest", "medication", {"concept": {}})
    assert repairs("MedicationRequest", "dosageInstruction", [{"doseQuantity": {}}])
    assert repairs("MedicationStatement", "dosage", [{"doseAndRate": {}}])
    assert not repairs("MedicationStatement", "dosage", [{"doseAndRate": [{}]}, None, "x"])
    assert not repairs("MedicationDispense", "dosageInstruction", [{"doseQuantity": {}}])
    assert not repairs("Observation", "medication", {})
