"""Lab predicates: ``lab_value`` (the latest value, or at least N values, against a bound) and ``lab_trend``
(rising over the latest N values), over the pack's lab tests (``lab_tests.csv``) with units converted.

A pack writes, for "PSA persistence or recurrence (>= 2 rising values > 0.1 ng/mL)":

    lab_trend: {tests: [psa], rising: 2, above: 0.1, unit: ng/mL, within_days: 365}

Values are compared in the criterion's unit: a value in another unit of the same dimension is converted with the
factors of ``units.csv`` (UCUM prefixes: 0.3 ug/L is 0.3 ng/mL); a unit the tables do not know, or of another
dimension, is never guessed at (unknown, and the note names it). A value the laboratory reports as a bound
("< 0.1") decides only when the bound does. No value is unknown, never not-met.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from itertools import pairwise
from typing import Any, NamedTuple

from fhir_mappings.model import Facts, LabResult

from .predicates import CompileEnv, Outcome, Params, PolicyError, Predicate
from .results import Status

MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN
#: The prefetch key lab Observations come from (category laboratory).
LAB_KEYS = frozenset({"observations"})
#: Bound name -> its words on a card.
BOUNDS = {"above": ">", "at_least": ">=", "below": "<", "at_most": "<="}


class Bound(NamedTuple):
    """A comparison of a criterion: ``op`` (a BOUNDS key) ``threshold`` in ``unit``."""

    op: str
    threshold: float
    unit: str

    def words(self) -> str:
        return f"{BOUNDS[self.op]} {self.threshold:g} {self.unit}"


def _units(env: CompileEnv) -> Collection[str] | None:
    units = getattr(env.vocabulary, "units", None)
    return units if isinstance(units, Collection) else None


def _unit(p: Params, env: CompileEnv) -> str:
    unit = p.string("unit")
    assert unit is not None
    return _checked(unit, p, env)


def _bound(raw: Any, where: str, env: CompileEnv, name: str, *, required: bool = True) -> Bound | None:
    """``{above|at_least|below|at_most: number, unit: U}`` (exactly one bound)."""
    p = Params(raw, where, name)
    given = [(op, p.number(op, required=False)) for op in BOUNDS]
    bounds = [(op, value) for op, value in given if value is not None]
    if not bounds and not required:
        unit = p.string("unit", required=False)
        p.done()
        return None if unit is None else Bound("above", -math.inf, _checked(unit, p, env))
    if len(bounds) != 1:
        raise PolicyError(f"{p.where}: give exactly one of {', '.join(BOUNDS)} (with a unit)")
    unit = _unit(p, env)
    p.done()
    return Bound(bounds[0][0], bounds[0][1], unit)


def _checked(unit: str, p: Params, env: CompileEnv) -> str:
    known = _units(env)
    if known is not None and unit not in known:
        raise PolicyError(f"{p.where}: unknown unit {unit!r} (units.csv knows: {', '.join(sorted(known))})")
    return unit


def _tests(p: Params, env: CompileEnv) -> tuple[str, ...]:
    tests = p.strings("tests")
    assert tests is not None
    known = frozenset(getattr(env.vocabulary, "lab_test_tags", ()))
    unknown = [t for t in tests if t not in known]
    if unknown:
        listed = ", ".join(sorted(known)) or "none: add the pack's tables/lab_tests.csv (loinc,tag,display,source)"
        raise PolicyError(f"{p.where}: unknown lab test(s) {unknown} (lab_tests.csv defines: {listed})")
    return tests


def _window(p: Params) -> int | None:
    days = p.number("within_days", required=False)
    if days is not None and (days != int(days) or days < 1):
        raise PolicyError(f"{p.where}: 'within_days' must be a whole number of days >= 1")
    return int(days) if days is not None else None


def _interval(result: LabResult, value: float) -> tuple[float, bool, float, bool]:
    """(low, low open, high, high open) of the true value a result allows: a bound reports a half-line."""
    if result.comparator in ("<", "<="):
        return -math.inf, True, value, result.comparator == "<"
    if result.comparator in (">", ">="):
        return value, result.comparator == ">", math.inf, True
    return value, False, value, False


def compare(result: LabResult, value: float, bound: Bound) -> Status:
    """Whether a result (already in the bound's unit: ``value``) satisfies the bound; unknown when a reported bound
    ("< 0.5") leaves it open."""
    low, low_open, high, high_open = _interval(result, value)
    t = bound.threshold
    if bound.op == "above":
        met, not_met = low > t or (low == t and low_open), high <= t
    elif bound.op == "at_least":
        met, not_met = low >= t, high < t or (high == t and high_open)
    elif bound.op == "below":
        met, not_met = high < t or (high == t and high_open), low >= t
    else:  # at_most
        met, not_met = high <= t, low > t or (low == t and low_open)
    return MET if met else NOT_MET if not_met else UNKNOWN


def _converter(env: CompileEnv) -> Callable[[float, str | None, str], float | None]:
    convert = getattr(env.vocabulary, "convert", None)
    if callable(convert):
        return convert  # type: ignore[no-any-return]
    return lambda value, unit, to: value if unit == to else None


def _in_window(facts: Facts, tests: Sequence[str], days: int | None) -> list[LabResult]:
    """Every value of the tests, oldest first, within ``days`` before the evaluation date when a window is given."""
    since = facts.evaluation_date - timedelta(days=days) if days is not None else None
    values = [r for t in tests for r in facts.lab_results.get(t, ()) if since is None or r.on >= since]
    return sorted(values, key=lambda r: (r.on, r.ref))


def _name(env: CompileEnv, tests: Sequence[str]) -> str:
    shown = getattr(env.vocabulary, "lab_test_display", {})
    return " or ".join(shown.get(t, t) if isinstance(shown, dict) else t for t in tests)


def _none(facts: Facts, what: str) -> Outcome:
    note = "the laboratory results could not be obtained" if not facts.unavailable.isdisjoint(LAB_KEYS) else None
    return Outcome(UNKNOWN, gaps=(what,), note=note)


def _refs(results: Sequence[LabResult]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.ref for r in results))


def _unconvertible(results: Sequence[LabResult], unit: str) -> Outcome:
    said = ", ".join(f"{r.ref} ({r.words()})" for r in results)
    return Outcome(UNKNOWN, _refs(results), note=f"cannot compare with {unit}: {said}")


def _lab_value(p: Params, env: CompileEnv) -> Predicate:
    """The latest value within the window satisfies the bound (``latest``), or at least ``at_least`` values each do
    (``each``: never not-met, a history may be incomplete); no value is unknown."""
    tests = _tests(p, env)
    days = _window(p)
    latest_raw, each_raw = p.mapping("latest"), p.mapping("each")
    count = p.number("at_least", required=False)
    if (latest_raw is None) == (each_raw is None) or (each_raw is None) != (count is None):
        raise PolicyError(
            f"{p.where}: give either 'latest' {{bound, unit}} or 'at_least' N with 'each' {{bound, unit}}"
        )
    if count is not None and (count != int(count) or count < 1):
        raise PolicyError(f"{p.where}: 'at_least' must be a whole number >= 1")
    bound = _bound(
        latest_raw if latest_raw is not None else each_raw,
        f"{p.where}.{'latest' if latest_raw else 'each'}",
        env,
        "bound",
    )
    assert bound is not None
    convert = _converter(env)
    name = _name(env, tests)
    window = f" within {days} days" if days else ""

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        values = _in_window(facts, tests, days)
        if not values:
            return _none(facts, f"a {name} result{window}")
        if count is None:
            latest = [r for r in values if r.on == values[-1].on]
            converted = [(r, convert(r.value, r.unit, bound.unit)) for r in latest]
            if any(v is None for _, v in converted):
                return _unconvertible([r for r, v in converted if v is None], bound.unit)
            statuses = {compare(r, v, bound) for r, v in converted if v is not None}
            said = "; ".join(r.words() for r in latest)
            note = f"latest {name}: {said} (criterion {bound.words()})"
            if len(statuses) > 1:
                return Outcome(UNKNOWN, _refs(latest), note=f"{note}: results of that day disagree")
            return Outcome(statuses.pop(), _refs(latest), note=note)
        meeting = [
            r for r in values if (v := convert(r.value, r.unit, bound.unit)) is not None and compare(r, v, bound) is MET
        ]
        if len(meeting) >= count:
            return Outcome(MET, _refs(meeting))
        gap = f"{int(count)} {name} results {bound.words()}{window} ({len(meeting)} on record)"
        return Outcome(UNKNOWN, _refs(meeting), gaps=(gap,))

    return fn


def _daily(
    values: Sequence[LabResult], unit: str, convert: Callable[[float, str | None, str], float | None]
) -> tuple[list[tuple[LabResult, float]], str | None]:
    """One value per day in ``unit``, oldest first; a note instead when a value cannot be compared or a day's values
    disagree (two different results of one day cannot be ordered)."""
    days: dict[object, list[tuple[LabResult, float]]] = {}
    for r in values:
        v = convert(r.value, r.unit, unit)
        if v is None or r.comparator is not None:
            return [], f"cannot be ordered in {unit}: {r.ref} ({r.words()})"
        days.setdefault(r.on, []).append((r, v))
    out: list[tuple[LabResult, float]] = []
    for day_values in days.values():
        if len({v for _, v in day_values}) > 1:
            said = ", ".join(f"{r.ref} ({r.words()})" for r, _ in day_values)
            return [], f"results of one day disagree: {said}"
        out.append(day_values[0])
    return out, None


def _lab_trend(p: Params, env: CompileEnv) -> Predicate:
    """The latest ``rising`` values each exceed the value before them (so ``rising`` + 1 values are read), and each of
    them satisfies the optional bound; fewer values on record is unknown; values that do not rise are not-met."""
    tests = _tests(p, env)
    days = _window(p)
    rising = p.number("rising")
    assert rising is not None
    if rising != int(rising) or rising < 1:
        raise PolicyError(f"{p.where}: 'rising' must be a whole number >= 1 (rises over the value before)")
    n = int(rising)
    raw = {k: p.raw[k] for k in (*BOUNDS, "unit") if k in p.raw}
    for key in raw:
        p.read.add(key)
    bound = _bound(raw, p.where, env, "bound", required=False)
    if bound is None:
        raise PolicyError(f"{p.where}: missing parameter 'unit' (values are ordered in one unit)")
    convert = _converter(env)
    name = _name(env, tests)
    window = f" within {days} days" if days else ""
    wanted = f"{n + 1} {name} results{window} (to see {n} rise(s)" + (
        f", each {bound.words()})" if bound.threshold != -math.inf else ")"
    )

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        values = _in_window(facts, tests, days)
        daily, problem = _daily(values, bound.unit, convert)
        if problem is not None:
            return Outcome(UNKNOWN, _refs(values), note=problem)
        if len(daily) < n + 1:
            outcome = _none(facts, wanted)
            return outcome._replace(evidence=_refs(values)) if values else outcome
        last = daily[-(n + 1) :]
        said = ", ".join(f"{v:g}" for _, v in last)
        note = f"latest {name} ({bound.unit}): {said}"
        rises = all(v > prev for (_, prev), (_, v) in pairwise(last))
        bounded = all(compare(r, v, bound) is MET for r, v in last[1:])
        evidence = _refs([r for r, _ in last])
        if rises and bounded:
            return Outcome(MET, evidence, note=note)
        why = "not rising" if not rises else f"not each {bound.words()}"
        return Outcome(NOT_MET, evidence, note=f"{note}: {why}")

    return fn


LAB_LEAVES: dict[str, Callable[[Params, CompileEnv], Predicate]] = {
    "lab_value": _lab_value,
    "lab_trend": _lab_trend,
}

__all__ = ["LAB_LEAVES", "Bound", "compare"]
