"""Active AllergyIntolerance records -> the ingredient tags a suggestion must never name.

Safe suggestions: the service never proposes a drug the chart records an allergy OR an intolerance to, whatever
its criticality. An entry counts unless its clinicalStatus is inactive or resolved, or its verificationStatus is
refuted or entered-in-error (an unconfirmed one counts: a suggestion is no place to test it). The tags are the
ones the entry names (an ingredient, or a medication group such as a drug class), not expanded to groups: an
allergy to tamoxifen says nothing about exemestane, an allergy to a class covers its members (the suggestion's
side is expanded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance

from .codes import CodeTables
from .model import Finding
from .normalize import MedicationConcept
from .read import codings, concept_texts, status_code

INACTIVE_ALLERGY = frozenset({"inactive", "resolved"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
KIND_WORDS = {"allergy": "an allergy", "intolerance": "an intolerance"}


@dataclass(frozen=True)
class AllergyFindings:
    """Tag -> the active entries naming it, and how each entry reads on a card ("an intolerance")."""

    tags: Mapping[str, Finding]
    kinds: Mapping[str, str]


def is_active(allergy: AllergyIntolerance) -> bool:
    if status_code(allergy.clinicalStatus) in INACTIVE_ALLERGY:
        return False
    return status_code(allergy.verificationStatus) not in EXCLUDED_VERIFICATION


def class_tags_in_text(text: str, groups: Iterable[str]) -> frozenset[str]:
    """Drug classes an entry names in words ("Corticosteroids", "calcineurin inhibitor"), by the tables' own
    medication-group tags: an allergy to a class covers every member a suggestion could name."""
    words = re.sub(r"[^a-z]+", " ", text.lower())
    return frozenset(g for g in groups if re.search(rf"\b{re.escape(g.replace('-', ' '))}s?\b", words))


def read_allergies(allergies: tuple[AllergyIntolerance, ...], tables: CodeTables) -> AllergyFindings:
    found: dict[str, dict[str, None]] = {}
    kinds: dict[str, str] = {}
    for allergy in allergies:
        if not is_active(allergy):
            continue
        concept = MedicationConcept(tuple(codings(allergy.code)), tuple(concept_texts(allergy.code)))
        tags: set[str] = set()
        for coding in concept.codes:
            if tables.system_name(coding.system) == "rxnorm":
                tags |= tables.ingredient_tags_for_code(coding.code)
        tags |= tables.ingredient_tags_in_text(concept.text)
        tags |= class_tags_in_text(concept.text, tables.medication_group_tags)
        ref = f"AllergyIntolerance/{allergy.id}"
        for tag in tags:
            found.setdefault(tag, {})[ref] = None
        if tags:
            kinds[ref] = KIND_WORDS.get(allergy.type or "", "an allergy or intolerance")
    return AllergyFindings({tag: Finding(tuple(refs)) for tag, refs in sorted(found.items())}, kinds)


__all__ = ["AllergyFindings", "is_active", "read_allergies"]
