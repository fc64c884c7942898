"""Lab values of the tests a pack names (``lab_tests.csv``), read from the chart's Observations.

Only what a laboratory has released counts: final, amended or corrected results with a numeric value
(``valueQuantity``), dated (effective time, else issued) on or before the evaluation date. A preliminary,
cancelled or entered-in-error result, a value without a number, or an undated one says nothing; the policy then
reads the test as unknown, never as normal. Units stay as reported: comparing them with a criterion's unit is the
predicate's business (``CodeTables.convert`` with units.csv), so a unit the tables do not know stays visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

from fhir.resources.R4B.observation import Observation, ObservationComponent

from .codes import CodeTables
from .model import LabResult
from .normalize import to_float
from .read import codings, observation_date, present

FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
UCUM = "http://unitsofmeasure.org"
COMPARATORS = frozenset({"<", "<=", ">", ">="})


def _value(element: Observation | ObservationComponent, tables: CodeTables) -> tuple[float, str | None, str | None]:
    """(value, unit, comparator) of a valueQuantity; raises LookupError when there is no number."""
    quantity = element.valueQuantity
    value = to_float(quantity.value) if quantity is not None else None
    if quantity is None or value is None:
        raise LookupError
    said = quantity.code if quantity.system == UCUM and quantity.code else (quantity.unit or quantity.code)
    comparator = quantity.comparator if quantity.comparator in COMPARATORS else None
    return value, (tables.unit(said) or said), comparator


def read_lab_results(
    observations: Iterable[Observation], tables: CodeTables, evaluation_date: date
) -> Mapping[str, tuple[LabResult, ...]]:
    """Test tag -> its values, oldest first (ties in reference order, so the order never depends on the input)."""
    found: dict[str, list[LabResult]] = {}
    if not tables.lab_tests:
        return {}
    for observation in observations:
        if observation.status not in FINAL_OBSERVATION:
            continue
        on = observation_date(observation)
        if on is None or on > evaluation_date:
            continue
        ref = f"Observation/{observation.id}"
        elements: list[Observation | ObservationComponent] = [observation, *present(observation.component)]
        for element in elements:
            tags = {
                t for c in codings(element.code) if (t := tables.lab_test_tag(tables.system_name(c.system), c.code))
            }
            if len(tags) != 1:  # no test of ours, or codings that name two tests: not one value of one test
                continue
            try:
                value, unit, comparator = _value(element, tables)
            except LookupError:
                continue
            found.setdefault(tags.pop(), []).append(LabResult(ref, on, value, unit, comparator))
    return {tag: tuple(sorted(values, key=lambda r: (r.on, r.ref))) for tag, values in found.items()}


__all__ = ["read_lab_results"]
