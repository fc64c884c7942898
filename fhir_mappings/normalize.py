"""Raw FHIR JSON before validation: cheap readers, value conversions, and input repairs.

The ``raw_*`` readers work on the dicts of a request as received: the record builder reads them to decide
which resources are worth validating (relevance routing, the patient a resource is about), and the service
reads the draft orders with them to find the orders of the drug. They accept any JSON shape (a lone object
where R4 has an array, an integer code) and never raise. Everything after validation reads typed models
through ``fhir_mappings.read``; both flatten codings into ``Code`` and medications into ``MedicationConcept``.

The value conversions (``to_date``, ``to_float`` ...) serve both sides: the models keep partial dates as
strings and decimals as ``Decimal``. The repairs fix the real-world shapes listed in
``shared/external/SOURCES.md`` (single objects where R4 has arrays, STU3 ``Dosage.doseQuantity``, R5
``medication`` CodeableReference) without mutating the caller's data.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

#: Elements whose R4 cardinality is 0..* but that clients send as one object, per resource type.
ARRAY_ELEMENTS: dict[str, tuple[str, ...]] = {
    "MedicationRequest": (
        "category",
        "reasonCode",
        "reasonReference",
        "insurance",
        "dosageInstruction",
        "identifier",
        "note",
    ),
    "MedicationStatement": ("category", "reasonCode", "reasonReference", "dosage", "identifier", "note"),
    "Condition": ("category", "stage", "identifier", "note", "bodySite"),
    "Observation": ("category", "interpretation", "component", "identifier", "note", "performer"),
    "Coverage": ("class", "payor", "identifier"),
    "PractitionerRole": ("specialty", "code", "identifier"),
    "Practitioner": ("qualification", "identifier", "name"),
    "AllergyIntolerance": ("category", "reaction", "identifier", "note"),
    "Patient": ("identifier", "name"),
}
DOSAGE_ELEMENTS: dict[str, str] = {"MedicationRequest": "dosageInstruction", "MedicationStatement": "dosage"}
#: Dose and rate elements that STU3 put directly on Dosage and R4 moved into Dosage.doseAndRate.
STU3_DOSE_KEYS = ("doseQuantity", "doseRange", "rateQuantity", "rateRange", "rateRatio")

#: What validating one raw resource with the model library can raise: its ``ValidationError`` (a ``ValueError``),
#: and, on input it does not expect, ``KeyError`` (an unknown or empty ``resourceType`` in ``contained``),
#: ``AttributeError`` (a primitive's ``_status`` given as a string), ``TypeError``, or ``RecursionError`` (deep
#: nesting). Each makes that one resource invalid, never the request a 500.
INVALID_RESOURCE_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, AttributeError, TypeError, RecursionError)

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


# ----------------------------------------------------------------------------- raw JSON readers


def raw_get(obj: object, name: str) -> Any:
    """``obj[name]`` of a raw JSON object; None when ``obj`` is not an object or lacks the member."""
    return obj.get(name) if isinstance(obj, dict) else None


def raw_items(obj: object, name: str) -> list[Any]:
    """A member of a raw JSON object as a list: [] when absent, [x] when a client sent one object for an array
    (None entries left out)."""
    value = raw_get(obj, name)
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


# ----------------------------------------------------------------------------- values


#: Largest magnitude read as a number: beyond it a value is no plausible dose, count or duration, and arithmetic
#: on it could overflow to infinity (1e308 x 3), so it counts as unreadable.
MAX_NUMBER = 1e12


def to_float(value: object) -> float | None:
    """A FHIR decimal/integer (Decimal, int, float or numeric string) as a finite float within ``MAX_NUMBER``;
    None otherwise (including 1e308, 10**400, NaN and infinities)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal, str)):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return None
        return number if math.isfinite(number) and abs(number) <= MAX_NUMBER else None
    return None


def add_days(day: date | None, days: float) -> date | None:
    """``day`` plus whole ``days``; None past the calendar's range (year 9999) or for an unreadable count."""
    if day is None or not math.isfinite(days):
        return None
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return None


def to_date(value: object, *, end: bool = False) -> date | None:
    """The calendar date of a FHIR date/dateTime; partial dates give their first day (last with ``end``).

    Typed models hold full dates as ``date``/``datetime`` and partial ones ("1968", "2026-11") as strings."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    match = _DATE.match(value.strip())
    if not match:
        return None
    year = int(match.group(1))
    month = int(match.group(2)) if match.group(2) else (12 if end else 1)
    if match.group(3):
        day = int(match.group(3))
    else:
        day = calendar.monthrange(year, month)[1] if end else 1
    try:
        return date(year, month, day)
    except ValueError:
        return None


def is_partial_date(value: object) -> bool:
    """True for a year or year-month FHIR date (a string the models keep unparsed)."""
    return isinstance(value, str) and bool(re.fullmatch(r"\d{4}(-\d{2})?", value.strip()))


# ----------------------------------------------------------------------------- codes


class Code(NamedTuple):
    """One coding, flattened (a named tuple: thousands are built per large chart, construction cost counts)."""

    system: str | None
    code: str | None
    display: str | None


def raw_codings(concept: object) -> list[Code]:
    """The codings of a raw CodeableConcept (tolerating a lone Coding where a concept was expected); members of
    the wrong JSON type are read as absent."""
    out = []
    for coding in _raw_coding_entries(concept):
        if isinstance(coding, dict):
            system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
            out.append(Code(_text(system), _code_text(code), _text(display)))
        else:
            out.append(Code(None, None, None))
    return out


def raw_system_codes(concept: object) -> list[tuple[str | None, str | None]]:
    """``[(c.system, c.code) for c in raw_codings(concept)]`` without building Codes: the raw-dict filters of
    a large chart call this for every resource (so it is written out rather than built from the helpers)."""
    if not isinstance(concept, dict):
        return []
    entries = concept.get("coding")
    if entries is None:
        entries = ()
    elif not isinstance(entries, list):
        entries = (entries,)
    out: list[tuple[str | None, str | None]] = []
    for coding in entries:
        if isinstance(coding, dict):
            out.append((_text(coding.get("system")), _code_text(coding.get("code"))))
        elif coding is not None:
            out.append((None, None))
    if not out and concept.get("code") is not None:
        out.append((_text(concept.get("system")), _code_text(concept.get("code"))))
    return out


def _raw_coding_entries(concept: object) -> list[Any]:
    if not isinstance(concept, dict):
        return []
    entries = concept.get("coding")
    if entries is None:
        entries = []
    elif isinstance(entries, list):
        entries = [e for e in entries if e is not None]
    else:
        entries = [entries]
    if not entries and concept.get("code") is not None:
        return [concept]
    return entries


def raw_concept_texts(concept: object) -> list[str]:
    """The human-readable words of a raw CodeableConcept: its text and its codings' displays."""
    return _concept_words(concept, raw_codings(concept))


def _concept_words(concept: object, codings: list[Code]) -> list[str]:
    """``raw_concept_texts`` of a concept whose ``raw_codings`` are at hand (read once, used twice)."""
    texts = [raw_get(concept, "text")] + [c.display for c in codings]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _text(value: object) -> str | None:
    """A string member, or None for anything else (an object where a string belongs is ignored)."""
    return value if isinstance(value, str) else None


def _code_text(value: object) -> str | None:
    """A code as text: strings, and integers some systems send unquoted; anything else is ignored."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# ----------------------------------------------------------------------------- references


def raw_reference(obj: object) -> str | None:
    """Reference.reference of a raw Reference as a string (None for display-only or identifier-only ones)."""
    ref = raw_get(obj, "reference")
    return ref if isinstance(ref, str) and ref.strip() else None


def split_reference(ref: str | None) -> tuple[str | None, str | None]:
    """("Type", "id") of a relative or absolute literal reference; (None, None) when not one."""
    if not ref or ref.startswith(("#", "urn:")):
        return None, None
    parts = [p for p in ref.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return None, None
    return parts[-2], parts[-1]


# ----------------------------------------------------------------------------- medication


@dataclass(frozen=True)
class MedicationConcept:
    """What names a medication: its codings and its words, wherever the resource put them."""

    codes: tuple[Code, ...]
    texts: tuple[str, ...]

    @property
    def text(self) -> str:
        return " | ".join(self.texts)


def raw_medication_concept(
    resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]] | None = None
) -> MedicationConcept:
    """The medication of a raw MedicationRequest / MedicationStatement.

    ``medicationCodeableConcept`` (or an R5 ``medication.concept``), or the Medication a ``medicationReference``
    (or R5 ``medication.reference``) points at -- contained, or found by "Medication/id" in ``medications`` --
    plus the reference's display text.
    """
    codes: list[Code] = []
    texts: list[str] = []
    concept = resource.get("medicationCodeableConcept")
    reference = resource.get("medicationReference")
    r5 = resource.get("medication")
    if concept is None and reference is None and isinstance(r5, dict):
        concept, reference = r5.get("concept"), r5.get("reference")
    if concept is not None:
        codings = raw_codings(concept)
        codes += codings
        texts += _concept_words(concept, codings)
    if reference is not None:
        display = raw_get(reference, "display")
        if isinstance(display, str) and display.strip():
            texts.append(display)
        medication = _raw_resolve_medication(resource, raw_reference(reference), medications or {})
        if medication is not None:
            code = medication.get("code")
            codings = raw_codings(code)
            codes += codings
            texts += _concept_words(code, codings)
    return MedicationConcept(tuple(codes), tuple(dict.fromkeys(texts)))


def _raw_resolve_medication(
    resource: Mapping[str, Any], ref: str | None, medications: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    if not ref:
        return None
    if ref.startswith("#"):
        for contained in raw_items(resource, "contained"):
            if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                return contained
        return None
    rtype, rid = split_reference(ref)
    return medications.get(f"{rtype}/{rid}") if rtype == "Medication" else None


# ----------------------------------------------------------------------------- repairs


def repair(resource: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of a raw resource with known client oddities fixed, and what was fixed (element names only)."""
    rtype = resource.get("resourceType", "")
    out = dict(resource)
    notes: list[str] = []
    for name in ARRAY_ELEMENTS.get(rtype, ()):
        if isinstance(out.get(name), dict):
            out[name] = [out[name]]
            notes.append(f"{name} wrapped in a list")
    if rtype in DOSAGE_ELEMENTS:
        key = DOSAGE_ELEMENTS[rtype]
        if isinstance(out.get(key), list):
            fixed = [_repair_dosage(d, notes) if isinstance(d, dict) else d for d in out[key]]
            out[key] = fixed
        medication = out.get("medication")
        if isinstance(medication, dict) and not any(k.startswith("medication") and k != "medication" for k in out):
            out.pop("medication")
            if isinstance(medication.get("concept"), dict):
                out["medicationCodeableConcept"] = medication["concept"]
            elif isinstance(medication.get("reference"), dict):
                out["medicationReference"] = medication["reference"]
            notes.append("R5 medication CodeableReference converted")
    return out, notes


#: Per resource type, the element names ``repair`` may change (``repairs`` says whether it does).
REPAIRABLE: dict[str, frozenset[str]] = {
    rtype: frozenset(ARRAY_ELEMENTS.get(rtype, ()))
    | ({DOSAGE_ELEMENTS[rtype], "medication"} if rtype in DOSAGE_ELEMENTS else set())
    for rtype in ARRAY_ELEMENTS.keys() | DOSAGE_ELEMENTS.keys()
}


def repairs(rtype: str, name: str, value: Any) -> bool:
    """Whether ``repair`` may change element ``name`` (holding ``value``) of a resource of type ``rtype``: True
    whenever it would (a lone object for an array, a dosage with a lone ``doseAndRate`` or an STU3 dose, an R5
    ``medication``), so False means the element comes out of ``repair`` as it went in."""
    if name in ARRAY_ELEMENTS.get(rtype, ()) and isinstance(value, dict):
        return True
    if rtype not in DOSAGE_ELEMENTS:
        return False
    if name == "medication":
        return isinstance(value, dict)
    if name == DOSAGE_ELEMENTS[rtype] and isinstance(value, list):
        return any(isinstance(d, dict) and _dosage_repairs(d) for d in value)
    return False


def _dosage_repairs(dosage: dict[str, Any]) -> bool:
    """Whether ``_repair_dosage`` changes ``dosage`` (beyond copying it)."""
    return isinstance(dosage.get("doseAndRate"), dict) or any(key in dosage for key in STU3_DOSE_KEYS)


def _repair_dosage(dosage: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out = dict(dosage)
    if isinstance(out.get("doseAndRate"), dict):
        out["doseAndRate"] = [out["doseAndRate"]]
        notes.append("doseAndRate wrapped in a list")
    moved = {k: out.pop(k) for k in STU3_DOSE_KEYS if k in out}
    if moved:
        out["doseAndRate"] = list(out.get("doseAndRate") or []) + [moved]
        notes.append("STU3 Dosage dose moved into doseAndRate")
    return out


def _parent(resource: dict[str, Any], steps: list[str | int]) -> Any:
    """The container holding the element at ``steps`` (a validation-error location), or None."""
    node: Any = resource
    for step in steps[:-1]:
        node = _child(node, step)
        if node is None:
            return None
    return node


def _child(node: Any, step: str | int) -> Any:
    if isinstance(node, dict) and isinstance(step, str):
        return node.get(step)
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return node[step]
    return None


def drop_path(resource: dict[str, Any], path: Iterable[str | int]) -> bool:
    """Remove the element at a validation-error location from a raw copy; False when it is not there."""
    steps = list(path)
    parent = _parent(resource, steps)
    last = steps[-1] if steps else None
    if isinstance(parent, dict) and isinstance(last, str) and last in parent:
        del parent[last]
        return True
    return False


def wrap_path(resource: dict[str, Any], path: Iterable[str | int]) -> bool:
    """Wrap the single object at a validation-error location in a list; False when that is not the fix."""
    steps = list(path)
    parent = _parent(resource, steps)
    last = steps[-1] if steps else None
    if isinstance(parent, dict) and isinstance(last, str) and isinstance(parent.get(last), dict):
        parent[last] = [parent[last]]
        return True
    return False


def deep_copy_json(value: Any) -> Any:
    """A copy of JSON-shaped data (dicts, lists, scalars) cheap enough to run before a repair."""
    if isinstance(value, dict):
        return {k: deep_copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy_json(v) for v in value]
    return value


def iter_bundle(value: Any) -> Iterator[dict[str, Any]]:
    """Resources in a value that may be a resource, a list, or a Bundle (entries, nested Bundles too)."""
    if isinstance(value, list):
        for item in value:
            yield from iter_bundle(item)
        return
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or []:
            if isinstance(entry, dict):
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") not in (None, "Bundle"):
                    if isinstance(resource.get("resourceType"), str):
                        yield resource  # the common case, without a nested generator
                else:
                    yield from iter_bundle(resource)
        return
    if isinstance(value.get("resourceType"), str):
        yield value
