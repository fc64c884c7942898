"""Procedures of the chart -> the diagnosis tags they show, received or scheduled.

A transplant (or a resection, an orchiectomy ...) is often recorded as a Procedure rather than a problem-list
Condition. The pack's ``procedures.csv`` says which codes show which diagnosis tag; this module says how a
Procedure's status and date count (FHIR R4 Procedure.status, event-status):

* ``completed`` with a ``performed`` date on or before the evaluation date (or none): **received**;
* ``preparation`` or ``in-progress``, or any counted status with a ``performed`` date after the evaluation date:
  **scheduled** (a criterion counts it only when it says it accepts scheduled procedures);
* ``not-done``, ``entered-in-error``, ``stopped``, ``on-hold`` and ``unknown`` never count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from fhir.resources.R4B.procedure import Procedure

from .codes import CodeTables, PossibleRule
from .model import Finding
from .normalize import to_date
from .read import codings, concept_texts

RECEIVED_STATUS = frozenset({"completed"})
SCHEDULED_STATUS = frozenset({"preparation", "in-progress"})


@dataclass(frozen=True)
class ProcedureFindings:
    """Diagnosis tag -> the Procedures that show it, by whether it was received or is scheduled; ``possible``: ones
    only named in words (a Procedure without a code the table knows, "Living donor kidney transplant"), which
    suggest the diagnosis as a text-only Condition does."""

    received: Mapping[str, Finding]
    scheduled: Mapping[str, Finding]
    possible: Mapping[str, Finding] = field(default_factory=dict)


def performed_on(procedure: Procedure) -> date | None:
    """performedDateTime, else performedPeriod.start (else end); None for an age, a range or words."""
    if procedure.performedDateTime is not None:
        return to_date(procedure.performedDateTime)
    period = procedure.performedPeriod
    if period is not None:
        return to_date(period.start) or to_date(period.end)
    return None


def procedure_state(procedure: Procedure, evaluation_date: date) -> str | None:
    """ "received", "scheduled" or None (does not count)."""
    status = procedure.status
    when = performed_on(procedure)
    if status not in RECEIVED_STATUS | SCHEDULED_STATUS:
        return None
    if when is not None and when > evaluation_date:
        return "scheduled"
    return "received" if status in RECEIVED_STATUS else "scheduled"


def read_procedures(procedures: tuple[Procedure, ...], evaluation_date: date, tables: CodeTables) -> ProcedureFindings:
    """Each counted Procedure's tags, with its date (a received one's date is when it was performed)."""
    received: dict[str, dict[str, date | None]] = {}
    scheduled: dict[str, dict[str, date | None]] = {}
    named: dict[str, dict[str, date | None]] = {}
    for procedure in procedures:
        state = procedure_state(procedure, evaluation_date)
        if state is None:
            continue
        tags = {
            tag
            for coding in codings(procedure.code)
            for tag in tables.procedure_tags(tables.system_name(coding.system), coding.code)
        }
        target = received if state == "received" else scheduled
        if not tags:  # words only: a suggestion, never a received or scheduled procedure
            tags = {t for text in concept_texts(procedure.code) for t in tables.condition_tags_in_text(text)}
            target = named
        for tag in tags:
            target.setdefault(tag, {})[f"Procedure/{procedure.id}"] = performed_on(procedure)
    return ProcedureFindings(
        _freeze(received, latest=True), _freeze(scheduled, latest=False), _freeze(named, latest=True)
    )


def resolve_possible(
    possible: Mapping[str, Finding],
    confirmed: Mapping[str, Finding],
    found: ProcedureFindings,
    rules: Sequence[PossibleRule],
) -> dict[str, Finding]:
    """Possible diagnoses a Procedure settles: "awaiting organ transplant" suggests a kidney or a liver transplant
    (possible.csv); a kidney transplant Procedure (received or scheduled) says which, so the other organ is no longer
    suggested by that status. A tag suggested by anything else (its own words, a code) stays possible. Procedures
    that only name a diagnosis in words add it as possible."""
    shown = set(found.received) | set(found.scheduled)
    drop: set[str] = set()
    for rule in rules:
        if not rule.then & shown:
            continue
        for tag in rule.then - shown:
            finding = possible.get(tag)
            sources = [f for source in rule.if_all for f in (confirmed.get(source), possible.get(source)) if f]
            from_rule = {ref for f in sources for ref in f.evidence}
            if finding is not None and set(finding.evidence) <= from_rule:
                drop.add(tag)
    out = {tag: finding for tag, finding in possible.items() if tag not in drop}
    for tag, finding in found.possible.items():
        if tag not in confirmed and tag not in shown:
            known = out.get(tag)
            refs = (*known.evidence, *finding.evidence) if known is not None else finding.evidence
            out[tag] = Finding(tuple(dict.fromkeys(refs)), known.start if known is not None else finding.start)
    return out


def _freeze(found: dict[str, dict[str, date | None]], *, latest: bool) -> dict[str, Finding]:
    """A received transplant dates from its latest performance (a re-transplant restarts the clock); a scheduled
    one from its soonest date."""
    out: dict[str, Finding] = {}
    for tag, refs in sorted(found.items()):
        dates = [d for d in refs.values() if d is not None]
        start = (max(dates) if latest else min(dates)) if dates else None
        out[tag] = Finding(tuple(refs), start)
    return out


__all__ = ["ProcedureFindings", "performed_on", "procedure_state", "read_procedures", "resolve_possible"]
