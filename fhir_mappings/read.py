"""Readers of validated fhir.resources (R4B) models: what the fact layer uses to read a ``PatientRecord``.

Everything here takes typed models and reads them by attribute. Raw FHIR JSON is read only before
validation (relevance routing in ``record``, finding the drug's orders in a request) with the ``raw_*``
readers of ``normalize``; both sides flatten codings into the same ``Code`` and medications into the same
``MedicationConcept``, so the routing and the facts agree on what an element says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import TypeVar

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.reference import Reference

from .normalize import Code, MedicationConcept, split_reference, to_date

T = TypeVar("T")


def present(values: Sequence[T | None] | None) -> list[T]:
    """A repeating element as a list: [] when absent, without the None a primitive list may hold beside its
    extensions (``when: ["MORN", null]`` with ``_when``)."""
    if not values:
        return []
    return [value for value in values if value is not None]


#: ``Code(system, code, display)`` without the named tuple's Python-level ``__new__``: the same tuple, a third
#: cheaper; codings are read ~30 times per call (issue 18).
_new_code = tuple.__new__


def codings(concept: CodeableConcept | None) -> list[Code]:
    """The codings of a CodeableConcept, flattened; [] for None."""
    if concept is None:
        return []
    coding = concept.coding
    if not coding:
        return []
    return [_new_code(Code, (c.system, c.code, c.display)) for c in coding if c is not None]


def concept_texts(concept: CodeableConcept | None) -> list[str]:
    """The human-readable words of a CodeableConcept: its text and its codings' displays."""
    if concept is None:
        return []
    texts = [concept.text] + [c.display for c in present(concept.coding)]
    return [t for t in texts if t is not None and t.strip()]


def status_code(concept: CodeableConcept | None) -> str | None:
    """The first code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    if concept is None or not concept.coding:
        return None
    for coding in concept.coding:  # as ``codings`` reads them, without building them
        if coding is not None and coding.code:
            return coding.code
    return None


def reference_of(reference: Reference | None) -> str | None:
    """Reference.reference (None for display-only or identifier-only references)."""
    ref = reference.reference if reference is not None else None
    return ref if ref is not None and ref.strip() else None


def medication_concept(
    resource: MedicationRequest | MedicationStatement | MedicationDispense, medications: Mapping[str, Medication]
) -> MedicationConcept:
    """The medication of an order or statement: ``medicationCodeableConcept``, or the Medication its
    ``medicationReference`` points at (contained, or "Medication/id" in ``medications``) plus the reference's
    display text. (An R5 ``medication`` CodeableReference was converted before validation.)"""
    codes: list[Code] = []
    texts: list[str] = []
    concept = resource.medicationCodeableConcept
    if concept is not None:
        codes += codings(concept)
        texts += concept_texts(concept)
    reference = resource.medicationReference
    if reference is not None:
        if reference.display is not None and reference.display.strip():
            texts.append(reference.display)
        medication = _resolve_medication(resource, reference_of(reference), medications)
        if medication is not None:
            codes += codings(medication.code)
            texts += concept_texts(medication.code)
    return MedicationConcept(tuple(codes), tuple(dict.fromkeys(texts)))


def _resolve_medication(
    resource: MedicationRequest | MedicationStatement | MedicationDispense,
    ref: str | None,
    medications: Mapping[str, Medication],
) -> Medication | None:
    if not ref:
        return None
    if ref.startswith("#"):
        for contained in present(resource.contained):
            if isinstance(contained, Medication) and contained.id == ref[1:]:
                return contained
        return None
    rtype, rid = split_reference(ref)
    return medications.get(f"{rtype}/{rid}") if rtype == "Medication" else None


def observation_date(observation: Observation) -> date | None:
    """When an observation holds: effectiveDateTime / effectiveInstant, else effectivePeriod's end (or start), else
    issued. One reader for receptor results, disease status and lab values."""
    if observation.effectiveDateTime is not None:
        return to_date(observation.effectiveDateTime)
    if observation.effectiveInstant is not None:
        return to_date(observation.effectiveInstant)
    if observation.effectivePeriod is not None:
        period = observation.effectivePeriod
        return to_date(period.end) or to_date(period.start)
    return to_date(observation.issued)
