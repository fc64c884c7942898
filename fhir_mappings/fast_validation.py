"""fhir_core's per-instance validators with their per-class work done once (same checks, same errors).

Every fhir.resources model runs two Python validators on every instance, nested elements included:
``reject_null_complex_elements`` (before) walks *all* fields of the class, asking for each whether it is a list
of a complex type (two ``lru_cache`` look-ups per field), to find the few lists where a ``null`` is an error; and
``validate_after_model_construction`` (after) rebuilds the class's required-primitive and choice-element lists
and re-reads their schema metadata. What they compute from the class never changes, so this shim computes it
once per class and checks only those fields.

Exactness: the fast path decides only "nothing to report". Whenever it finds something (a ``null`` in a complex
list, a required primitive missing, a choice element given twice or not at all) it calls fhir_core's own
validator, which raises exactly the error it always did. A class whose metadata the shim does not understand
(for instance a choice whose schema metadata does not match) always runs the original. ``tests/test_fast_validation.py``
checks with hypothesis that models and errors are the same with and without the shim.

How it is installed: pydantic compiled each model's schema with references to fhir_core's two function objects,
so the shim swaps those functions' code for a two-line trampoline into this module (``install``); ``uninstall``
puts the original code back (benchmarks compare both in one process). The upstream patch is the same
precomputation inside fhir_core (a ``functools.cache``-d class method returning the complex-list fields, and
one returning the required and choice fields), described in README.md ("Validation cost").
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from fhir_core import fhirabstractmodel as _upstream
from fhir_core.utils import is_list_type, is_primitive_type

_BASE = _upstream.FHIRAbstractModel
_BEFORE: Any = _BASE.__dict__["reject_null_complex_elements"].__func__
_AFTER: Any = _BASE.__dict__["validate_after_model_construction"]
_BEFORE_CODE = _BEFORE.__code__
_AFTER_CODE = _AFTER.__code__
#: The originals, callable while the shim is installed (same code and globals as fhir_core's).
_ORIGINAL_BEFORE = types.FunctionType(_BEFORE_CODE, _BEFORE.__globals__, "reject_null_complex_elements")
_ORIGINAL_AFTER = types.FunctionType(_AFTER_CODE, _AFTER.__globals__, "validate_after_model_construction")
_BEFORE_HOOK = "_priorauth_fast_reject_null_complex_elements"
_AFTER_HOOK = "_priorauth_fast_validate_after_model_construction"

#: class -> (JSON key candidates) of its list-of-complex fields: (alias, name) pairs.
_COMPLEX_LISTS: dict[type, tuple[tuple[str | None, str], ...]] = {}
#: class -> (required primitive attribute names, choice groups) or None: run the original.
_AFTER_PLAN: dict[type, tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool], ...]] | None] = {}


def _complex_lists(cls: type) -> tuple[tuple[str | None, str], ...]:
    """The fields ``reject_null_complex_elements`` inspects: lists of a complex type, ``__ext`` siblings excepted."""
    found = _COMPLEX_LISTS.get(cls)
    if found is None:
        fields = cls.model_fields  # type: ignore[attr-defined]
        found = tuple(
            (field.alias, name)
            for name, field in fields.items()
            if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext")
        )
        _COMPLEX_LISTS[cls] = found
    return found


def fast_reject_null_complex_elements(cls: type, data: Any) -> Any:
    """``reject_null_complex_elements`` over the precomputed fields; the original reports any error."""
    if not isinstance(data, dict):
        return data
    for alias, name in _complex_lists(cls):
        value = data.get(alias if alias and alias in data else name)
        if isinstance(value, list) and any(item is None for item in value):
            return _ORIGINAL_BEFORE(cls, data)
    return data


def _after_plan(model: Any) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool], ...]] | None:
    """What ``validate_after_model_construction`` checks for ``model``'s class, or None to run the original."""
    cls = model.__class__
    if cls in _AFTER_PLAN:
        return _AFTER_PLAN[cls]
    plan: tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool], ...]] | None
    try:
        aliases = cls.get_alias_mapping()
        required = tuple(aliases[name] for name, _ext in model.get_required_fields())
        groups = []
        for prefix, fields in model.get_one_of_many_fields().items():
            extra = cls.model_fields[fields[0]].json_schema_extra
            if not isinstance(extra, dict) or extra["one_of_many"] != prefix:
                raise LookupError(prefix)  # the original would fail its assert: let it
            groups.append((tuple(fields), extra["one_of_many_required"] is True))
        plan = (required, tuple(groups))
    except (LookupError, TypeError, AttributeError):
        plan = None
    _AFTER_PLAN[cls] = plan
    return plan


def fast_validate_after_model_construction(model: Any) -> Any:
    """``validate_after_model_construction`` over the precomputed fields; the original reports any error.

    A required primitive counts as present when its value is set (the original then looks no further); when it
    is missing the original runs, since only it knows whether a ``_field`` extension stands in for the value.
    """
    plan = _after_plan(model)
    if plan is None:
        return _ORIGINAL_AFTER(model)
    required, groups = plan
    for name in required:
        if getattr(model, name, None) is None:
            return _ORIGINAL_AFTER(model)
    for fields, must in groups:
        present = 0
        for name in fields:
            if getattr(model, name, None) is not None:
                present += 1
        if present > 1 or (must and present == 0):
            return _ORIGINAL_AFTER(model)
    return model


def _trampoline_before(cls: Any, data: Any) -> Any:
    return _priorauth_fast_reject_null_complex_elements(cls, data)  # type: ignore[name-defined]  # noqa: F821


def _trampoline_after(self: Any) -> Any:
    return _priorauth_fast_validate_after_model_construction(self)  # type: ignore[name-defined]  # noqa: F821


def installed() -> bool:
    """True while fhir_core's validators run the shim."""
    return _BEFORE.__code__ is not _BEFORE_CODE


def install() -> None:
    """Route fhir_core's two validators through the shim (idempotent; every model class at once)."""
    namespace: dict[str, Callable[..., Any]] = {
        _BEFORE_HOOK: fast_reject_null_complex_elements,
        _AFTER_HOOK: fast_validate_after_model_construction,
    }
    _BEFORE.__globals__.update(namespace)
    _BEFORE.__code__ = _trampoline_before.__code__
    _AFTER.__code__ = _trampoline_after.__code__


def uninstall() -> None:
    """fhir_core's own validators again (benchmarks and the equivalence test compare both)."""
    _BEFORE.__code__ = _BEFORE_CODE
    _AFTER.__code__ = _AFTER_CODE
