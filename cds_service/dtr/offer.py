"""What CRD offers DTR for one evaluated order: which questionnaires, prefilled how, and which answers counted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from fhir_mappings.answers import ReadAnswers, diagnosis_notes
from fhir_mappings.codes import CodeTables
from fhir_mappings.model import Facts
from fhir_mappings.record import PatientRecord

from ..policy.loader import Pathway, Policy
from ..policy.results import Decision, OrderEvaluation, Status
from .prefill import Prefill, prefill
from .questionnaire import (
    ASKED_KINDS,
    applies_link_id,
    asked_pathways,
    memoised,
    product_specific,
    questionnaire_canonical,
    questionnaire_id,
    questions_of,
)


@dataclass(frozen=True)
class DtrOffer:
    evaluation: OrderEvaluation  # with a note naming the clinician answers it used
    #: Version-specific Questionnaire canonicals for coverage-information (order-sign only).
    questionnaires: tuple[str, ...] = ()
    #: Some criterion a clinician can document is still unknown (or no diagnosis is documented at all).
    documentable: bool = False
    #: Questionnaire id -> the payer's prefilled answers, stored with the coverage assertion.
    prefill: Mapping[str, Prefill] = field(default_factory=dict)
    #: QuestionnaireResponse reference -> the linkIds whose answers this decision used.
    answers_used: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: One line per QuestionnaireResponse (or part of one) about this order that was not used, and why.
    answers_not_used: tuple[str, ...] = ()


#: Bases ``answerable`` keeps per policy: a deployment has one (``public_base_url``) or a few host names; one a
#: client names in a Host header is never kept beside more than this many others.
ANSWERABLE_BASES = 8


def answerable(policy: Policy, base: str) -> Mapping[str, frozenset[str]]:
    """This service's full version-specific Questionnaire canonicals (``base``) -> the linkIds each asks: only
    answers to a questionnaire's own items, in a response naming that exact canonical, count.

    A pure function of the policy and the base, asked on every call: worked out once per base (read-only)."""
    by_base: dict[str, Mapping[str, frozenset[str]]] = memoised("answerable", policy, dict)
    known = by_base.get(base)
    if known is None:
        link_ids: dict[str, frozenset[str]] = memoised(
            "link-ids",
            policy,
            lambda: {
                p.id: frozenset(q.link_id for q in questions_of(p))
                | frozenset(applies_link_id(c.id) for c in product_specific(p))
                for p in asked_pathways(policy)
            },
        )
        if len(by_base) >= ANSWERABLE_BASES:
            by_base.clear()
        known = by_base[base] = MappingProxyType(
            {questionnaire_canonical(base, policy, pid): ids for pid, ids in link_ids.items()}
        )
    return known


def suggested_diagnoses(policy: Policy, facts: Facts) -> frozenset[str]:
    """Diagnosis tags the chart suggests under the policy (TSC suggests each manifestation's pathway): an answer
    naming one documents what the chart left open rather than contradicting it."""
    if not facts.diagnoses and not facts.possible_diagnoses:
        return frozenset()
    found = facts.diagnoses.keys() | facts.possible_diagnoses.keys()
    suggesters: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = memoised(
        "suggesters",
        policy,
        lambda: tuple((frozenset(p.suggested_by), tuple(p.diagnoses)) for p in policy.pathways if p.suggested_by),
    )
    return frozenset(tag for by, diagnoses in suggesters if not found.isdisjoint(by) for tag in diagnoses)


def _pathways(policy: Policy, evaluation: OrderEvaluation) -> list[Pathway]:
    if evaluation.decision is Decision.REFER:
        return []
    ids = [evaluation.pathway] if evaluation.pathway else [option[0] for option in evaluation.diagnosis_options]
    if evaluation.pathway and evaluation.diagnosis_options:  # TSC alone: any of its manifestations may be the one
        ids += [option[0] for option in evaluation.diagnosis_options if option[0] != evaluation.pathway]
    pathways = [policy.pathway(pid) for pid in ids]
    return [p for p in pathways if p.kind in ASKED_KINDS]


def _documentable(evaluation: OrderEvaluation, pathways: list[Pathway]) -> bool:
    if evaluation.pathway is None:
        return bool(pathways)
    asked = {cid for p in pathways for cid in _criteria_with_questions(p)}
    # Top-level criteria decide: an open "or submit literature" under a dose that is within limits is not a gap.
    return any(
        c.status is Status.UNKNOWN and c.applicable and c.review is None and c.id in asked for c in evaluation.criteria
    )


def _criteria_with_questions(pathway: Pathway) -> frozenset[str]:
    """Ids of the criteria (at any depth) with a question somewhere in them; once per pathway, as the policy is
    fixed once loaded."""
    ids: frozenset[str] = memoised(
        "criteria-with-questions",
        pathway,
        lambda: frozenset(
            node.id
            for criterion in pathway.criteria
            for node in criterion.walk()
            if any(leaf.questions for child in node.walk() for leaf in child.leaves)
        ),
    )
    return ids


def offer(
    policy: Policy,
    tables: CodeTables,
    evaluation: OrderEvaluation,
    chart_facts: Facts,
    record: PatientRecord,
    answers: ReadAnswers,
    *,
    base: str,
    hook: str,
) -> DtrOffer:
    """The DTR side of one evaluation (``chart_facts``: the facts before any clinician answer)."""
    pathways = _pathways(policy, evaluation)
    used: dict[str, list[str]] = {}
    notes: list[str] = []
    if answers.answers:  # without answers none is used and ``diagnosis_notes`` has nothing to say
        asked_ids = {q.link_id for p in pathways for q in questions_of(p)}
        for link_id, answer in answers.answers.items():
            if link_id in asked_ids:
                used.setdefault(answer.source, []).append(link_id)
        notes += diagnosis_notes(chart_facts, answers, suggested_diagnoses(policy, chart_facts))
    if used:
        words = "; ".join(f"{ref}: {', '.join(ids)}" for ref, ids in used.items())
        notes.append(f"Clinician answers used ({words}).")
    if notes:
        evaluation = replace(evaluation, notes=(*evaluation.notes, *notes))
    not_used = tuple(n.line() for n in answers.not_used)
    if hook != "order-sign" or not pathways:
        return DtrOffer(evaluation, answers_used={k: tuple(v) for k, v in used.items()}, answers_not_used=not_used)
    canonicals = {p.id: questionnaire_canonical(base, policy, p.id) for p in pathways}
    return DtrOffer(
        evaluation,
        tuple(canonicals.values()),
        _documentable(evaluation, pathways),
        {questionnaire_id(policy, p.id): prefill(p, chart_facts, record, tables) for p in pathways},
        {k: tuple(v) for k, v in used.items()},
        not_used,
    )
