"""fhir_core's per-element Python validation with its per-class work done once (same checks, same errors).

fhir.resources validates every nested complex element (a CodeableConcept, a Dosage, a Reference ...) through
Python, and the Python, not pydantic-core, is most of the cost. This shim replaces the code of five fhir_core
functions and of the two validator closures pydantic compiled into every schema (and of the two schema builders
that create those closures, for the classes fhir.resources imports later) with versions that do the same for less:

- the element wrap validator (``FhirBase.__get_pydantic_core_schema__.<locals>._validate``): upstream looks up
  the model class, calls ``fhir_model_validator`` (isinstance checks, an errors list, a resource-type check),
  ``model_validate`` -> pydantic-core -> ``FHIRAbstractModel.__init__`` -> ``BaseModel.__init__`` ->
  pydantic-core, running the class's after-validator twice (inside ``__init__`` and around it). For a plain JSON
  object without ``resourceType`` the shim validates it straight into a new instance of the class, exactly what
  ``BaseModel.__init__`` does, once;
- ``reject_null_complex_elements`` (before) walked *all* fields of the class asking whether each is a list of a
  complex type; the shim knows each class's few such lists;
- ``validate_after_model_construction`` (after) rebuilt the class's required-primitive and choice-element lists;
  the shim knows them per class, and that most classes have none;
- ``Date._validate`` ran three regular expressions per date; the shim decides the common cases from the type's
  own pattern and the length (a partial date is 4 or 7 characters; a leap second needs ``":60"``), and
  ``DateTime._validate`` does the same before its own time-zone checks, without the ``super()`` round trip;
- ``Decimal``'s validator ran a regular expression and built a ``decimal.Decimal`` per value; the shim remembers
  (bounded) what an int or a short string validated to;
- ``FHIRAbstractModel.__init__`` (a resource, or an element validated on its own) drops its own
  ``resourceType`` and validates, as before, in one frame with ``BaseModel.__init__``.

Exactness: each fast path only decides "nothing to report" or produces the very same outcome through the same
pydantic-core call; whenever it is unsure (another input type, a ``resourceType`` key, a ``null`` in a complex
list, a required primitive missing, a choice given twice or not at all, a leap second, a non-string key) it runs
fhir_core's own code, which raises exactly what it always did. ``tests/test_fast_validation.py`` checks with
hypothesis that models and errors (type, location, message, input) are the same with and without the shim.

How it is installed: pydantic compiled each model's schema with references to fhir_core's function objects, so
``install`` swaps those functions' code for this module's (their bodies run in fhir_core's module namespace, so
every global they name is a ``_priorauth_*`` name that ``install`` puts there); ``uninstall`` puts the original
code back, so benchmarks and tests compare both in one process. The upstream patch is the same precomputation
inside fhir_core, described in README.md ("Validation cost").
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import operator
import types
from typing import Any

from fhir_core import fhirabstractmodel as _model_module
from fhir_core import types as _types_module
from fhir_core.utils import is_list_type, is_primitive_type
from pydantic import BaseModel

_BASE = _model_module.FHIRAbstractModel
_FHIR_BASE = _types_module.FhirBase
_BEFORE: Any = _BASE.__dict__["reject_null_complex_elements"].__func__
_AFTER: Any = _BASE.__dict__["validate_after_model_construction"]
_DATE: Any = _types_module.Date.__dict__["_validate"].__func__
_DATETIME: Any = _types_module.DateTime.__dict__["_validate"].__func__
_SCHEMA: Any = _FHIR_BASE.__dict__["__get_pydantic_core_schema__"].__func__
_INIT: Any = _BASE.__dict__["__init__"]
_INIT_CODE = _INIT.__code__
_PLAIN_MODEL_VALIDATOR: Any = _FHIR_BASE.__dict__["fhir_model_validator"].__func__

_BEFORE_CODE = _BEFORE.__code__
_AFTER_CODE = _AFTER.__code__
_DATE_CODE = _DATE.__code__
_DATETIME_CODE = _DATETIME.__code__
_SCHEMA_CODE = _SCHEMA.__code__
_DECIMAL_SCHEMA: Any = _types_module.Decimal.__dict__["__get_pydantic_core_schema__"].__func__
_DECIMAL_SCHEMA_CODE = _DECIMAL_SCHEMA.__code__


def _nested_validate(code: types.CodeType) -> types.CodeType:
    """The code of the ``_validate`` closure a schema builder creates."""
    return next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == "_validate")


_ELEMENT_CODE = _nested_validate(_SCHEMA_CODE)
_DECIMAL_CODE = _nested_validate(_DECIMAL_SCHEMA_CODE)

#: The originals, callable while the shim is installed (same code and globals as fhir_core's).
_priorauth_original_before = types.FunctionType(_BEFORE_CODE, _BEFORE.__globals__, "reject_null_complex_elements")
_priorauth_original_after = types.FunctionType(_AFTER_CODE, _AFTER.__globals__, "validate_after_model_construction")
_priorauth_original_date = types.FunctionType(_DATE_CODE, _DATE.__globals__, "_validate")
_priorauth_original_datetime = types.FunctionType(
    _DATETIME_CODE, _DATETIME.__globals__, "_validate", None, _DATETIME.__closure__
)
_priorauth_datetime = datetime.datetime
_priorauth_original_decimal = types.FunctionType(
    _DECIMAL_CODE, _DECIMAL_SCHEMA.__globals__, "_validate", None, (types.CellType(_types_module.Decimal),)
)
_priorauth_decimal_class = _types_module.Decimal
#: Decimals by the int or short string they were validated from: a pure function of the value (the same
#: ``decimal.Decimal``, immutable), bounded; dose quantities and lab values repeat across requests.
_priorauth_decimals: dict[int | str, decimal.Decimal] = {}
DECIMALS_SIZE = 1024
_priorauth_decimals_size = DECIMALS_SIZE
_priorauth_original_init = types.FunctionType(_INIT.__code__, _INIT.__globals__, "__init__")
_priorauth_base_init = BaseModel.__init__
_priorauth_is_not = operator.is_not
#: None forever (``map`` pairs it with each value of a choice group; never exhausted, so one serves every call).
_priorauth_nones = itertools.repeat(None)

# ----------------------------------------------------------------------------- per-class plans

#: class -> its list-of-complex fields as (alias, name) pairs, by each JSON key that can name them (alias and name).
_priorauth_complex_lists: dict[type, dict[str, tuple[tuple[str | None, str], ...]]] = {}
#: class -> True (nothing to check), False (run the original) or (required primitive attributes, choice groups).
_priorauth_after_plans: dict[type, Any] = {}
#: class -> True when it has no ``resourceType`` field (then ``fast_init``'s fast path is exact).
_priorauth_plain_init: dict[type, bool] = {}
#: element type (``CodeableConceptType`` ...) -> its model class when the element fast path is exact for it, or
#: False (always fhir_core's path).
_priorauth_element_classes: dict[type, Any] = {}


def _priorauth_complex_lists_of(cls: type) -> dict[str, tuple[tuple[str | None, str], ...]]:
    """The fields ``reject_null_complex_elements`` inspects (lists of a complex type, ``__ext`` siblings excepted),
    by key: a field neither of whose keys is in the data holds nothing to check."""
    fields = cls.model_fields  # type: ignore[attr-defined]
    found: dict[str, tuple[tuple[str | None, str], ...]] = {}
    for name, field in fields.items():
        if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext"):
            for key in {field.alias or name, name}:
                found[key] = (*found.get(key, ()), (field.alias, name))
    _priorauth_complex_lists[cls] = found
    return found


def _priorauth_after_plan_of(model: Any) -> tuple[Any, ...] | bool:
    """What ``validate_after_model_construction`` checks for ``model``'s class: True for nothing, False to run the
    original, else (required primitive attribute names, choice groups as (a getter of the group's values from the
    instance dict, required))."""
    cls = model.__class__
    plan: tuple[Any, ...] | bool
    try:
        aliases = cls.get_alias_mapping()
        required = tuple(aliases[name] for name, _ext in model.get_required_fields())
        groups = []
        for prefix, fields in model.get_one_of_many_fields().items():
            extra = cls.model_fields[fields[0]].json_schema_extra
            if not isinstance(extra, dict) or extra["one_of_many"] != prefix or len(fields) < 2:
                raise LookupError(prefix)  # the original would fail its assert (or a one-field group): let it
            groups.append((operator.itemgetter(*fields), extra["one_of_many_required"] is True))
        plan = (required, tuple(groups)) if required or groups else True
    except (LookupError, TypeError, AttributeError):
        plan = False
    _priorauth_after_plans[cls] = plan
    return plan


def _priorauth_plain_init_of(cls: type) -> bool:
    """Whether ``FHIRAbstractModel.__init__`` drops a ``resourceType`` key for ``cls`` (it has no such field)."""
    plain = "resourceType" not in getattr(cls, "__pydantic_fields__", {})
    _priorauth_plain_init[cls] = plain
    return plain


def _priorauth_element_class_of(element_type: Any) -> Any:
    """The model class of ``element_type`` when validating a dict straight into it is what fhir_core does, else
    False: a plain ``FhirBase`` type (not the contained-resource one) of a FHIR model that keeps
    ``FHIRAbstractModel.__init__`` (pydantic-core calls it) and forbids unknown elements (so a non-string key fails
    in both paths)."""
    klass: Any = None
    try:
        klass = element_type.get_model_klass()
        exact = (
            element_type.fhir_model_validator.__func__ is _PLAIN_MODEL_VALIDATOR
            and isinstance(klass, type)
            and issubclass(klass, _BASE)
            and klass.__init__ is _INIT
            and klass.__pydantic_custom_init__ is True
            and klass.model_config.get("extra") == "forbid"
            and getattr(klass, "__resource_type__", None) is not Ellipsis
        )
    except Exception:  # noqa: BLE001 - whatever fails here fails the same way in fhir_core's path
        exact = False
    found = klass if exact else False
    _priorauth_element_classes[element_type] = found
    return found


# ----------------------------------------------------------------------------- the code swapped in
# These functions run with fhir_core's module globals once installed: they name only builtins, their own
# arguments (and closure cells) and ``_priorauth_*`` globals.


def fast_reject_null_complex_elements(cls: Any, data: Any) -> Any:
    """``reject_null_complex_elements`` over the precomputed fields present in the data; the original reports any
    error."""
    if not isinstance(data, dict):
        return data
    by_key = _priorauth_complex_lists.get(cls)
    if by_key is None:
        by_key = _priorauth_complex_lists_of(cls)
    for key in by_key.keys() & data.keys():
        for alias, name in by_key[key]:
            value = data.get(alias if alias and alias in data else name)
            # ``None in`` holds whenever an item is None (identity first); when it holds, the original decides
            if isinstance(value, list) and (type(value) is not list or None in value):
                return _priorauth_original_before(cls, data)
    return data


def fast_validate_after_model_construction(self: Any) -> Any:
    """``validate_after_model_construction`` over the precomputed fields; the original reports any error.

    The values are read from the instance dict, where pydantic keeps every field (one missing: the original).
    A required primitive counts as present when its value is set (the original then looks no further); when it
    is missing the original runs, since only it knows whether a ``_field`` extension stands in for the value.
    A choice group counts its values that are not None (``is not``, as the original).
    """
    plan = _priorauth_after_plans.get(self.__class__)
    if plan is None:
        plan = _priorauth_after_plan_of(self)
    if plan is True:
        return self
    if plan is False:
        return _priorauth_original_after(self)
    required, groups = plan
    values = self.__dict__
    try:
        for name in required:
            if values[name] is None:
                return _priorauth_original_after(self)
        for pick, must in groups:
            present = sum(map(_priorauth_is_not, pick(values), _priorauth_nones))
            if present > 1 or (must and not present):
                return _priorauth_original_after(self)
    except KeyError:
        return _priorauth_original_after(self)
    return self


def fast_init(self: Any, /, **data: Any) -> None:
    """``FHIRAbstractModel.__init__`` and ``BaseModel.__init__`` in one, without the per-call look-ups, when the
    data has no ``resourceType`` (an element validated on its own) or names the class's own resource type (a
    resource): drop it and validate into ``self``, as the originals do. Anything else (another ``resourceType``, a
    ``resource_type`` key, a class with a ``resourceType`` field or without a resource type): the original."""
    if "resource_type" not in data and self.__resource_type__ is not Ellipsis:
        resource_type = data.get("resourceType")
        plain: bool | None = resource_type is None and "resourceType" not in data
        if not plain and type(resource_type) is str and resource_type == self.__resource_type__:
            plain = _priorauth_plain_init.get(self.__class__)
            if plain is None:
                plain = _priorauth_plain_init_of(self.__class__)
            if plain:
                del data["resourceType"]
        if plain:
            if self.__pydantic_validator__.validate_python(data, self_instance=self) is not self:
                _priorauth_base_init(self, **data)  # its warning, and the same outcome (the validators are pure)
            return
    _priorauth_original_init(self, **data)


def fast_date_validate(cls: Any, input_value: Any, validator: Any, validation_info: Any) -> Any:
    """``Date._validate`` (also DateTime's first step): a string the type's pattern matches is a partial date kept
    as is (4 or 7 characters) or goes to pydantic's parser, unless it may hold a leap second (the original)."""
    if type(input_value) is str and cls.pattern.fullmatch(input_value) is not None:
        size = len(input_value)
        if size == 4 or size == 7:
            return input_value
        if ":60" not in input_value:
            return validator(input_value)
    return _priorauth_original_date(cls, input_value, validator, validation_info)


def _datetime_validator_code() -> types.CodeType:
    """The code of ``DateTime._validate`` made fast. Its original has one closure cell (``__class__``, for its
    ``super()`` call into ``Date._validate``), so this one has the same cell, unused."""
    __class__: Any = None

    def fast_datetime_validate(cls: Any, input_value: Any, validator: Any, validation_info: Any) -> Any:
        """``Date._validate``'s fast path, then DateTime's own checks of a parsed string; anything else (a
        ``datetime`` without a time zone after a time: the error) is the original's."""
        __class__  # noqa: B018 - keeps the cell
        if type(input_value) is str and cls.pattern.fullmatch(input_value) is not None:
            size = len(input_value)
            if size == 4 or size == 7:
                return input_value
            if ":60" not in input_value:
                value = validator(input_value)
                if type(value) is _priorauth_datetime:
                    if "T" in input_value and value.tzinfo is None:
                        return _priorauth_original_datetime(cls, input_value, validator, validation_info)
                    if "T" not in input_value and value.time():
                        value = value.date()
                    return value
        return _priorauth_original_datetime(cls, input_value, validator, validation_info)

    return fast_datetime_validate.__code__


def _element_validator_code() -> types.CodeType:
    """The code of fhir_core's element wrap validator, made fast: it needs the same closure cells (``cls``, the
    ``FhirBase`` subclass, and ``source_type``, the annotated element type)."""
    cls: Any = None
    source_type: Any = None

    def _validate(input_value: Any, validator: Any, validation_info: Any) -> Any:
        if source_type is cls:
            klass = _priorauth_element_classes.get(cls)
            if klass is None:
                klass = _priorauth_element_class_of(cls)
            if klass:
                if type(input_value) is dict:
                    if "resourceType" not in input_value and "resource_type" not in input_value:
                        # what model_validate -> FHIRAbstractModel.__init__ -> BaseModel.__init__ end up doing
                        model = klass.__new__(klass)
                        try:
                            validated = klass.__pydantic_validator__.validate_python(input_value, self_instance=model)
                        except Exception:
                            for key in input_value:
                                if not isinstance(key, str):  # upstream's klass(**data) fails on it at once
                                    return validator(cls.fhir_model_validator(input_value, klass))
                            raise
                        if validated is model:
                            return model
                elif type(input_value) is klass:
                    return validator(input_value)
        return validator(cls.fhir_model_validator(input_value, source_type.get_model_klass()))

    return _validate.__code__


def _decimal_validator_code() -> types.CodeType:
    """The code of ``Decimal``'s validator closure (cell: ``cls``), remembering what an int or a short string
    validated to; anything else, and every first time, is the original (its errors too)."""
    cls: Any = None

    def _validate(input_value: Any, validator: Any, validation_info: Any) -> Any:
        kind = type(input_value)
        if (kind is int or kind is str) and cls is _priorauth_decimal_class:
            found = _priorauth_decimals.get(input_value)
            if found is None:
                found = _priorauth_original_decimal(input_value, validator, validation_info)
                small = -1_000_000_000 < input_value < 1_000_000_000 if kind is int else len(input_value) <= 24
                if small and len(_priorauth_decimals) < _priorauth_decimals_size:
                    _priorauth_decimals[input_value] = found
            return found
        return _priorauth_original_decimal(input_value, validator, validation_info)

    return _validate.__code__


def _with_nested(builder_code: types.CodeType, original: types.CodeType, fast: types.CodeType) -> types.CodeType:
    """A schema builder's code creating the fast closure instead of the original (same closure cells)."""
    if fast.co_freevars != original.co_freevars:  # pragma: no cover - a fhir_core we do not know
        raise ImportError(f"fhir_core's {original.co_qualname} has closure cells {original.co_freevars}")
    return builder_code.replace(co_consts=tuple(fast if c is original else c for c in builder_code.co_consts))


_FAST_ELEMENT_CODE = _element_validator_code()
_FAST_DECIMAL_CODE = _decimal_validator_code()
_FAST_DATETIME_CODE = _datetime_validator_code()
#: Closure code (in compiled schemas) -> what replaces it while installed.
_CLOSURES = {_ELEMENT_CODE: _FAST_ELEMENT_CODE, _DECIMAL_CODE: _FAST_DECIMAL_CODE}

_SWAPS: tuple[tuple[Any, types.CodeType, types.CodeType], ...] = (
    (_BEFORE, _BEFORE_CODE, fast_reject_null_complex_elements.__code__),
    (_AFTER, _AFTER_CODE, fast_validate_after_model_construction.__code__),
    (_DATE, _DATE_CODE, fast_date_validate.__code__),
    (_DATETIME, _DATETIME_CODE, _FAST_DATETIME_CODE),
    (_INIT, _INIT_CODE, fast_init.__code__),
    (_SCHEMA, _SCHEMA_CODE, _with_nested(_SCHEMA_CODE, _ELEMENT_CODE, _FAST_ELEMENT_CODE)),
    (_DECIMAL_SCHEMA, _DECIMAL_SCHEMA_CODE, _with_nested(_DECIMAL_SCHEMA_CODE, _DECIMAL_CODE, _FAST_DECIMAL_CODE)),
)
_GLOBALS = {name: value for name, value in globals().items() if name.startswith("_priorauth_")}
#: Closures (element and decimal validators) of the model classes seen so far, and those classes (``_closures``).
_closures_found: list[types.FunctionType] = []
_classes_seen: set[type] = set()


def _closures() -> list[types.FunctionType]:
    """Every element and decimal validator closure in the compiled schemas of the model classes defined so far.

    fhir.resources imports element classes lazily (on first use), so new ones appear after ``install``: those
    get the fast code from the swapped schema builders, and are found here on the next (un)install. Found by
    walking each class's own core schema once (``gc`` cannot see objects ``gc.freeze`` moved out of its reach).
    """
    stack: list[type] = [_BASE]
    while stack:
        subclasses: list[type] = stack.pop().__subclasses__()
        for model_class in subclasses:
            stack.append(model_class)
            if model_class not in _classes_seen:
                _classes_seen.add(model_class)
                _closures_found.extend(_closures_in(model_class.__dict__.get("__pydantic_core_schema__")))
    return _closures_found


def _closures_in(schema: Any) -> list[types.FunctionType]:
    """The validator closures the shim swaps (either code) referenced anywhere in a core schema."""
    codes = {*_CLOSURES, *_CLOSURES.values()}
    found: list[types.FunctionType] = []
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, types.FunctionType) and item.__code__ in codes:
            found.append(item)
    return found


def forget_values() -> None:
    """Empty the decimal memo (benchmarks measure the cold path with this)."""
    _priorauth_decimals.clear()


def installed() -> bool:
    """True while fhir_core's validators run the shim."""
    return _BEFORE.__code__ is not _BEFORE_CODE


def install() -> None:
    """Route fhir_core's validators through the shim (idempotent; every model class at once)."""
    _model_module.__dict__.update(_GLOBALS)
    _types_module.__dict__.update(_GLOBALS)
    for function, _original, fast in _SWAPS:
        function.__code__ = fast
    for function in _closures():
        function.__code__ = _CLOSURES.get(function.__code__, function.__code__)


def uninstall() -> None:
    """fhir_core's own validators again (benchmarks and the equivalence test compare both)."""
    for function, original, _fast in _SWAPS:
        function.__code__ = original
    originals = {fast: original for original, fast in _CLOSURES.items()}
    for function in _closures():
        function.__code__ = originals.get(function.__code__, function.__code__)
