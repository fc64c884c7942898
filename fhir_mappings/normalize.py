"""Small readers that work on raw FHIR dicts and on fhir.resources models alike, plus input repairs.

Raw dicts are read before validation (to decide what is worth validating, cheaply) and typed models
after it; one set of readers for both keeps the two paths from drifting apart. The repairs fix the
real-world shapes listed in ``shared/external/SOURCES.md`` (single objects where R4 has arrays, STU3
``Dosage.doseQuantity``, R5 ``medication`` CodeableReference) without mutating the caller's data.
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

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def get(obj: Any, name: str) -> Any:
    """``obj[name]`` for a dict, ``obj.name`` for a model (``class`` is ``class_fhir`` there); None if absent."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None and name in ("class", "for", "import"):
        value = getattr(obj, f"{name}_fhir", None)
    return value


def items(obj: Any, name: str) -> list[Any]:
    """An element as a list: [] when absent, [x] when a client sent one object for an array."""
    value = get(obj, name)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def choice(obj: Any, prefix: str) -> tuple[str | None, Any]:
    """The populated variant of a FHIR choice element (``effective[x]`` -> ("Period", {...}))."""
    if obj is None:
        return None, None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper() and value is not None:
                return key[len(prefix) :], value
        return None, None
    for key in _choice_fields(type(obj), prefix):
        value = getattr(obj, key, None)
        if value is not None:
            return key[len(prefix) :], value
    return None, None


_CHOICE_FIELDS: dict[tuple[type, str], tuple[str, ...]] = {}


def _choice_fields(model: type, prefix: str) -> tuple[str, ...]:
    """The fields of a model class that are variants of ``prefix[x]``, in declaration order (computed once)."""
    fields = _CHOICE_FIELDS.get((model, prefix))
    if fields is None:
        fields = tuple(
            key
            for key in model.model_fields  # type: ignore[attr-defined]
            if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper()
        )
        _CHOICE_FIELDS[(model, prefix)] = fields
    return fields


#: Largest magnitude read as a number: beyond it a value is no plausible dose, count or duration, and arithmetic
#: on it could overflow to infinity (1e308 x 3), so it counts as unreadable.
MAX_NUMBER = 1e12


def to_float(value: Any) -> float | None:
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


def to_date(value: Any, *, end: bool = False) -> date | None:
    """The calendar date of a FHIR date/dateTime; partial dates give their first day (last with ``end``)."""
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


def is_partial_date(value: Any) -> bool:
    """True for a year or year-month FHIR date (a string the models keep unparsed)."""
    return isinstance(value, str) and bool(re.fullmatch(r"\d{4}(-\d{2})?", value.strip()))


# ----------------------------------------------------------------------------- codes


class Code(NamedTuple):
    """One coding, flattened (a named tuple: thousands are built per large chart, construction cost counts)."""

    system: str | None
    code: str | None
    display: str | None


def codings(concept: Any) -> list[Code]:
    """The codings of a CodeableConcept (tolerating a lone Coding where a concept was expected)."""
    if concept is None:
        return []
    out = []
    entries = items(concept, "coding")
    if not entries and get(concept, "code") is not None:
        entries = [concept]
    for coding in entries:
        if isinstance(coding, dict):
            code, system, display = coding.get("code"), coding.get("system"), coding.get("display")
        else:  # a model (``get`` on a non-dict is getattr)
            code, system, display = (
                getattr(coding, "code", None),
                getattr(coding, "system", None),
                getattr(coding, "display", None),
            )
        out.append(Code(_text(system), _code_text(code), _text(display)))
    return out


def _text(value: Any) -> str | None:
    """A string member, or None for anything else (an object where a string belongs is ignored)."""
    return value if isinstance(value, str) else None


def _code_text(value: Any) -> str | None:
    """A code as text: strings, and integers some systems send unquoted; anything else is ignored."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def system_codes(concept: Any) -> list[tuple[Any, str | None]]:
    """``[(c.system, c.code) for c in codings(concept)]`` without building Codes: the raw-dict filters of
    a large chart call this for every resource."""
    if not isinstance(concept, dict):
        return [(c.system, c.code) for c in codings(concept)]
    entries = concept.get("coding")
    if entries is None:
        entries = []
    elif isinstance(entries, (list, tuple)):
        entries = [e for e in entries if e is not None]
    else:
        entries = [entries]
    if not entries and concept.get("code") is not None:
        entries = [concept]
    out: list[tuple[Any, str | None]] = []
    for coding in entries:
        if isinstance(coding, dict):
            code, system = coding.get("code"), coding.get("system")
        else:
            code, system = get(coding, "code"), get(coding, "system")
        out.append((_text(system), _code_text(code)))
    return out


def concept_texts(concept: Any) -> list[str]:
    """The human-readable words of a CodeableConcept: its text and its codings' displays."""
    texts = [get(concept, "text")] + [c.display for c in codings(concept)]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def status_code(concept: Any) -> str | None:
    """The first code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    for coding in codings(concept):
        if coding.code:
            return coding.code
    return None


# ----------------------------------------------------------------------------- references


def reference_of(obj: Any) -> str | None:
    """Reference.reference as a string (None for display-only or identifier-only references)."""
    ref = get(obj, "reference")
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


def local_ref(resource_type: str, resource_id: str | None) -> str:
    return f"{resource_type}/{resource_id}"


# ----------------------------------------------------------------------------- medication


@dataclass(frozen=True)
class MedicationConcept:
    """What names a medication: its codings and its words, wherever the resource put them."""

    codes: tuple[Code, ...]
    texts: tuple[str, ...]

    @property
    def text(self) -> str:
        return " | ".join(self.texts)


def medication_concept(resource: Any, medications: Mapping[str, Any] | None = None) -> MedicationConcept:
    """The medication of a MedicationRequest / MedicationStatement.

    ``medicationCodeableConcept``, or the Medication a ``medicationReference`` points at (contained,
    or found by "Medication/id" in ``medications``), plus the reference's display text.
    """
    codes: list[Code] = []
    texts: list[str] = []
    concept = get(resource, "medicationCodeableConcept")
    reference = get(resource, "medicationReference")
    r5 = resource.get("medication") if isinstance(resource, dict) else None
    if concept is None and reference is None and isinstance(r5, dict):
        concept, reference = r5.get("concept"), r5.get("reference")
    if concept is not None:
        codes += codings(concept)
        texts += concept_texts(concept)
    if reference is not None:
        display = get(reference, "display")
        if isinstance(display, str) and display.strip():
            texts.append(display)
        medication = _resolve_medication(resource, reference_of(reference), medications or {})
        if medication is not None:
            codes += codings(get(medication, "code"))
            texts += concept_texts(get(medication, "code"))
    return MedicationConcept(tuple(codes), tuple(dict.fromkeys(texts)))


def _resolve_medication(resource: Any, ref: str | None, medications: Mapping[str, Any]) -> Any:
    if not ref:
        return None
    if ref.startswith("#"):
        for contained in items(resource, "contained"):
            if get(contained, "id") == ref[1:]:
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
