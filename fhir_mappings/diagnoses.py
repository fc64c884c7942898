"""How one Condition becomes diagnosis tags, and where Conditions disagree or their notes qualify them.

Read per Condition, through the code tables only (issue #14 items 5, 7 and 9):

* the codings of ``Condition.code`` (ICD-10-CM, SNOMED CT, ICD-O-3 morphology), of the mCODE
  histology-morphology-behavior extension and the site tags of ``Condition.bodySite``; the pack's
  ``combinations.csv`` joins them on the same Condition (ICD-O-3 8310/3 alone is a histology, not RCC:
  with a kidney site or an RCC code it is clear-cell RCC);
* conflicts: two tags ``exclusive_tags.csv`` says exclude each other, on one Condition or (scope ``record``) on two
  counted Conditions. Neither is then decided: the facts demote both to possible and name the codings;
* qualifiers only text carries ("not requiring immediate surgery"), from ``Condition.note[].text`` and
  ``Condition.code.text``, by the phrases of ``qualifier_phrases.csv`` only. Negation rule: a phrase does not count
  when a negation word (``NEGATION``) stands before it in the same clause (text up to the previous sentence end,
  ``;`` ``:`` ``,`` or line break); a contrary phrase ("requires immediate surgery") that is not itself negated makes
  the qualifier disputed. The sentence holding the phrase is quoted as the evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition

from .codes import CodeTables
from .model import Conflict, QualifierFinding
from .normalize import Code
from .read import codings, present

#: mCODE Primary/Secondary Cancer Condition: the histology, morphology and behaviour of the tumour.
HISTOLOGY_EXTENSION = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
#: Words that, before a phrase in the same clause, mean the phrase is not asserted.
NEGATION = re.compile(
    r"\b(?:no|not|non|never|without|denies|denied|negative\s+for|ruled\s+out|rule\s+out|r/o|excluded|free\s+of)\b",
    re.IGNORECASE,
)
#: A clause ends at a sentence end or at ``;`` ``:`` ``,`` or a line break; a sentence at ``.`` ``!`` ``?`` followed by
#: white space (not the point of "4.2 cm") or at a line break.
_CLAUSE_END = re.compile(r"[.!?](?=\s|$)|[;:,\n]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
SYSTEM_LABELS = {"icd-10-cm": "ICD-10-CM", "snomed": "SNOMED CT", "icd-o-3": "ICD-O-3"}


@dataclass
class ConditionReading:
    """The tags one Condition's codes carry (confirmed or only suggested) and the codings behind each."""

    confirmed: set[str] = field(default_factory=set)
    possible: set[str] = field(default_factory=set)
    #: tag -> words naming the codings that gave it ("Carcinoid tumor of lung (SNOMED CT 254627002)").
    sources: dict[str, list[str]] = field(default_factory=dict)

    def add(self, tag: str, possible: bool, words: Iterable[str]) -> None:
        (self.possible if possible else self.confirmed).add(tag)
        known = self.sources.setdefault(tag, [])
        known.extend(w for w in words if w not in known)

    @property
    def tags(self) -> set[str]:
        return self.confirmed | self.possible


def histology_concepts(condition: Condition) -> list[CodeableConcept]:
    """valueCodeableConcept of the mCODE histology-morphology-behavior extension(s)."""
    return [
        ext.valueCodeableConcept
        for ext in present(condition.extension)
        if ext.url == HISTOLOGY_EXTENSION and ext.valueCodeableConcept is not None
    ]


def _words(coding: Code, tables: CodeTables) -> str:
    system = tables.system_name(coding.system) or ""
    display = coding.display or tables.condition_display.get((system, coding.code or "")) or "a code"
    return f"{display} ({SYSTEM_LABELS.get(system, system)} {coding.code})"


def read_condition(condition: Condition, tables: CodeTables) -> ConditionReading:
    """Tags of a Condition's code and histology codings, its body sites, and the combinations they make."""
    reading = ConditionReading()
    for concept in [condition.code, *histology_concepts(condition)]:
        for coding in codings(concept):
            matches = tables.condition_matches(tables.system_name(coding.system), coding.code)
            words = (_words(coding, tables),) if matches else ()  # once per coding, not per tag it gives
            for match in matches:
                for tag in match.tags:
                    reading.add(tag, match.possible, words)
    for site in present(condition.bodySite):
        for coding in codings(site):
            site_tags = tables.body_site_tags(tables.system_name(coding.system), coding.code)
            words = (_words(coding, tables),) if site_tags else ()
            for tag in site_tags:
                reading.add(tag, False, words)
    _combine(reading, tables)
    return reading


def _combine(reading: ConditionReading, tables: CodeTables) -> None:
    """Apply combinations.csv until nothing new follows; a result is confirmed only if all its inputs are."""
    changed = True
    while changed:
        changed = False
        tags = reading.tags  # worked out again only after a rule adds to it, not once per rule
        for rule in tables.combinations:
            if not rule.if_all <= tags:
                continue
            possible = bool(rule.if_all & reading.possible - reading.confirmed)
            words = [w for tag in sorted(rule.if_all) for w in reading.sources.get(tag, ())]
            for tag in rule.then:
                before = (tag in reading.confirmed, tag in reading.possible)
                reading.add(tag, possible, words)
                changed |= before != (tag in reading.confirmed, tag in reading.possible)
            tags = reading.tags


def find_conflicts(
    readings: Sequence[tuple[str, ConditionReading]], tables: CodeTables
) -> dict[str, tuple[Conflict, ...]]:
    """Tag -> the conflicts it is part of: pairs of exclusive tags both carried by the counted Conditions.

    ``readings`` are (reference, reading) of the Conditions that count (active, not refuted or entered in error).
    """
    if not tables.exclusive:
        return {}
    holders: dict[str, list[tuple[str, ConditionReading]]] = {}
    for ref, reading in readings:
        for tag in reading.tags:
            holders.setdefault(tag, []).append((ref, reading))
    found: dict[str, list[Conflict]] = {}
    for tag_a in sorted(holders):
        excluded = tables.exclusive.get(tag_a, {})
        for tag_b in sorted(excluded.keys() & holders.keys()):
            if tag_b < tag_a:
                continue
            side_a, side_b = holders[tag_a], holders[tag_b]
            if excluded[tag_b] == "condition":  # only a Condition coding both contradicts itself
                both = {ref for ref, _ in side_a} & {ref for ref, _ in side_b}
                side_a = [(ref, r) for ref, r in side_a if ref in both]
                side_b = [(ref, r) for ref, r in side_b if ref in both]
                if not both:
                    continue
            conflict = _conflict(tag_a, tag_b, side_a, side_b)
            found.setdefault(tag_a, []).append(conflict)
            found.setdefault(tag_b, []).append(conflict)
    return {tag: tuple(conflicts) for tag, conflicts in found.items()}


def _conflict(
    tag_a: str, tag_b: str, side_a: list[tuple[str, ConditionReading]], side_b: list[tuple[str, ConditionReading]]
) -> Conflict:
    refs = tuple(dict.fromkeys(ref for ref, _ in [*side_a, *side_b]))

    def named(side: list[tuple[str, ConditionReading]], tag: str) -> str:
        return " and ".join(dict.fromkeys(w for _, reading in side for w in reading.sources.get(tag, ()) or (tag,)))

    same = [ref for ref, _ in side_a if ref in {r for r, _ in side_b}]
    if same:
        note = f"{same[0]} codes both {named(side_a, tag_a)} and {named(side_b, tag_b)}: the codes disagree"
    else:
        first_a = ", ".join(dict.fromkeys(ref for ref, _ in side_a))
        first_b = ", ".join(dict.fromkeys(ref for ref, _ in side_b))
        note = (
            f"{first_a} codes {named(side_a, tag_a)} but {first_b} codes {named(side_b, tag_b)}: "
            "the Conditions disagree"
        )
    return Conflict(tags=(tag_a, tag_b), evidence=refs, note=note)


def read_qualifiers(condition: Condition, ref: str, tags: Iterable[str], tables: CodeTables) -> list[QualifierFinding]:
    """Qualifier phrases in a Condition's notes and code text, negation-aware, each with its quoted clause."""
    texts = [("note", n.text) for n in present(condition.note) if n.text]
    if condition.code is not None and condition.code.text:
        texts.append(("code text", condition.code.text))
    found: list[QualifierFinding] = []
    condition_tags = frozenset(tags)
    for where, text in texts:
        for phrase, start, end in tables.qualifier_matches(text):
            clause_start = _clause_start(text, start)
            if NEGATION.search(text[clause_start:start]):
                continue
            quote = _quote(text, start, end)
            found.append(
                QualifierFinding(phrase.qualifier, ref, f"{ref} {where}: '{quote}'", phrase.contrary, condition_tags)
            )
    return found


def _clause_start(text: str, position: int, ends: re.Pattern[str] = _CLAUSE_END) -> int:
    found = [m.end() for m in ends.finditer(text, 0, position)]
    return found[-1] if found else 0


def _quote(text: str, start: int, end: int) -> str:
    """The sentence holding the phrase, white space collapsed, at most about 200 characters around the phrase."""
    first = _clause_start(text, start, _SENTENCE_END)
    tail = _SENTENCE_END.search(text, end)
    before, phrase = text[first:start], text[start:end]
    after = text[end : tail.end() if tail else len(text)]
    words = [" ".join(part.split()) for part in (before, phrase, after)]
    if len(words[0]) > 90:
        words[0] = "..." + words[0][-87:]
    if len(words[2]) > 90:
        words[2] = words[2][:87] + "..."
    return " ".join(w for w in words if w).replace(" .", ".")


__all__ = [
    "HISTOLOGY_EXTENSION",
    "NEGATION",
    "ConditionReading",
    "find_conflicts",
    "histology_concepts",
    "read_condition",
    "read_qualifiers",
]
