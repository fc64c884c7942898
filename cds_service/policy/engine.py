"""Evaluate a compiled drug policy over one order's ``Facts``: pick the pathway, decide, size the approval.

Pure and fast: no I/O, no shared state; the policy is compiled once by ``load_policy`` and every
request calls ``evaluate(policy, facts)``. Selection rules (documented in docs/policy-format.md):

* continued therapy (II.A) when the current course of the drug reaches its ``therapy_days_at_least``
  and the member has or may have a diagnosis of an indication pathway (with the diagnoses its
  ``also_requires`` names: partial-onset seizures count only with TSC on record); without one, II.B (refer);
* otherwise every indication pathway (I.A ... I.H) the member has or may have a diagnosis for is
  evaluated and the best decision wins (met > incomplete > not-met), ties going to the firmer diagnosis
  link (has > may have), then to policy order; no such pathway -> I.I (refer);
* a non-formulary rule (a product family for one line of business) refers whatever the pathway, and a pathway
  whose approval table refers for the member's line of business (I.F for HIM) refers too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from fhir_mappings.model import Facts, LineOfBusiness

from .loader import (
    CONTINUED,
    CONTINUED_OTHER,
    INDICATION,
    INITIAL_OTHER,
    REFERRAL_KINDS,
    Criterion,
    LabelNote,
    NonFormularyRule,
    Pathway,
    Policy,
    PolicyError,
    PolicyVocabulary,
    ReferTo,
    UpTo,
    load_policy,
)
from .predicates import CONDITION_KEYS, Outcome, all_of_status, combine_all, diagnosis_link, not_applicable_note
from .results import CriterionResult, Decision, OrderEvaluation, Status, UnreadableOrder, criterion_result

__all__ = [
    "PathwayResult",
    "Policy",
    "PolicyError",
    "PolicyVocabulary",
    "approval_months",
    "evaluate",
    "evaluate_pathway",
    "evidence_rank",
    "load_policy",
    "notes_for",
    "select",
    "select_pathway",
]

_RANK = {Decision.MET: 0, Decision.INCOMPLETE: 1, Decision.NOT_MET: 2, Decision.REFER: 3}


@dataclass(frozen=True)
class PathwayResult:
    """One pathway evaluated on its own criteria, before line-of-business referrals."""

    pathway: Pathway
    decision: Decision
    criteria: tuple[CriterionResult, ...]


#: A criterion's outcome with its sub-items' nodes, before it is turned into a ``CriterionResult``.
_Node = tuple[Outcome, tuple["_Node", ...]]


def _not_applicable(criterion: Criterion, facts: Facts) -> _Node:
    """A criterion for other products (``applies_to``), with its sub-items: never evaluated, never asked."""
    outcome = Outcome(Status.NOT_APPLICABLE, (facts.order_ref,), note=not_applicable_note(facts))
    return outcome, tuple(_not_applicable(child, facts) for child in criterion.children)


def _outcomes(criterion: Criterion, facts: Facts) -> _Node:
    """Sub-items first (policy order), then the criterion's own predicate over their outcomes; a criterion for
    other products than the order's is not-applicable."""
    if criterion.applies_to is not None and not criterion.applies_to.applies(facts.product):
        return _not_applicable(criterion, facts)
    if not criterion.children:
        return criterion.predicate(facts, ()), ()
    children = tuple([_outcomes(child, facts) for child in criterion.children])
    return criterion.predicate(facts, tuple([node[0] for node in children])), children


def _result(criterion: Criterion, node: _Node) -> CriterionResult:
    outcome, children = node
    return criterion_result(
        criterion.id,
        criterion.text,
        outcome.status,
        outcome.evidence,
        criterion.remedy,
        outcome.fixes,
        tuple([_result(c, n) for c, n in zip(criterion.children, children)]) if children else (),
        outcome.note,
        not outcome.gate,
        outcome.gaps,
        outcome.review,
        outcome.quoted,
    )


def _decision(pathway: Pathway, statuses: Iterable[Status]) -> Decision:
    """Referral sections refer; otherwise met when every top-level criterion is met, not-met when any is not."""
    if pathway.kind in REFERRAL_KINDS:
        return Decision.REFER
    status = all_of_status(statuses)
    return {
        Status.MET: Decision.MET,
        Status.NOT_MET: Decision.NOT_MET,
        Status.UNKNOWN: Decision.INCOMPLETE,
        Status.NOT_APPLICABLE: Decision.MET,  # every criterion is for other products: nothing stands against it
    }[status]


@dataclass(frozen=True)
class _Scored:
    """A pathway's outcomes, cheap to compute for every candidate; only the winner becomes results."""

    pathway: Pathway
    decision: Decision
    nodes: tuple[_Node, ...]

    def result(self) -> PathwayResult:
        criteria = tuple(_result(c, n) for c, n in zip(self.pathway.criteria, self.nodes))
        return PathwayResult(self.pathway, self.decision, criteria)


def _score(pathway: Pathway, facts: Facts) -> _Scored:
    nodes = tuple([_outcomes(c, facts) for c in pathway.criteria])
    return _Scored(pathway, _decision(pathway, [node[0].status for node in nodes]), nodes)


def run_pathway(pathway: Pathway, facts: Facts) -> PathwayResult:
    """A pathway's criteria over the facts; referral sections always decide ``refer``."""
    return _score(pathway, facts).result()


def evaluate_pathway(policy: Policy, pathway_id: str, facts: Facts) -> PathwayResult:
    """One named pathway, whatever selection would pick (for tests, audits and "what if" views)."""
    return run_pathway(policy.pathway(pathway_id), facts)


#: How firmly the record points at a pathway: a coded diagnosis, a specific suggestion, a generic one.
CODED, SPECIFIC, GENERIC = 0, 1, 2
#: Not seen because the problem list could not be obtained: a candidate all the same, after any evidence.
UNSEEN = 3


def evidence_rank(pathway: Pathway, facts: Facts) -> int | None:
    """The strength of the diagnosis evidence for an indication pathway; None when there is none.

    Coded: a Condition codes one of its diagnoses. Specific: the order's reason names one, a Condition's
    text names one, a broad or provisional code suggests one, or a site-specific finding implies one
    (TSC plus a brain tumour suggests SEGA). Generic: only a parent finding suggests it (TSC alone).
    """
    confirmed = [facts.diagnoses[t] for t in pathway.diagnoses if t in facts.diagnoses]
    if any(ref.startswith("Condition/") for finding in confirmed for ref in finding.evidence):
        return CODED
    if any(t in facts.procedures or t in facts.scheduled_procedures for t in pathway.diagnoses):
        return CODED  # a coded Procedure (received or scheduled) shows the diagnosis as firmly as a Condition
    if confirmed:
        return SPECIFIC
    possible = [t for t in pathway.diagnoses if t in facts.possible_diagnoses]
    if any(t not in facts.generic_suggestions for t in possible):
        return SPECIFIC
    if possible or any(t in facts.diagnoses or t in facts.possible_diagnoses for t in pathway.suggested_by):
        return GENERIC
    return None


def _shown_diagnoses(facts: Facts) -> set[str]:
    """Every tag ``evidence_rank`` can find evidence in: diagnoses coded, possible, or shown by a procedure."""
    return (
        facts.diagnoses.keys()
        | facts.possible_diagnoses.keys()
        | facts.procedures.keys()
        | facts.scheduled_procedures.keys()
    )


def _rank_if_shown(pathway: Pathway, facts: Facts, shown: set[str]) -> int | None:
    """``evidence_rank``, known to be None without reading it when none of the pathway's tags is shown at all (most
    indications of most orders): every link it looks for is one of those tags in one of those fact maps."""
    return None if shown.isdisjoint(pathway.evidence_tags) else evidence_rank(pathway, facts)


def covered_indication(pathway: Pathway, facts: Facts) -> bool:
    """Whether a ranked indication is one a continuation can be for: its ``also_requires`` diagnoses are on record
    (or may be). Focal epilepsy with no TSC on record is not the policy's "partial-onset seizures associated with
    TSC", so continuing it is a use the policy does not address (II.B)."""
    if not pathway.also_requires:
        return True
    return diagnosis_link(facts, pathway.also_requires).status is not Status.NOT_MET


def _or_unseen(rank: int | None) -> int:
    return UNSEEN if rank is None else rank


@dataclass(frozen=True)
class Selection:
    """The pathway an order is judged under (None: no diagnosis documented) and what else it might be."""

    result: PathwayResult | None
    #: Pathways the prescriber could document instead (same weak evidence, or every indication when none).
    options: tuple[Pathway, ...] = ()


def select_pathway(policy: Policy, facts: Facts) -> Selection:
    """Rank candidates by evidence strength, then decision (met > incomplete > not-met), then policy order.

    Ranking reads the facts as if every FHIR key had answered: data that could not be obtained may leave
    criteria unknown, but it never moves the order to another pathway.
    """
    indications = policy.of_kind(INDICATION)
    # When the problem list itself could not be obtained, every indication stays a candidate (weaker than any
    # evidence), as the full chart might have shown any of them; the card says the data is missing.
    conditions_missing = not facts.unavailable.isdisjoint(CONDITION_KEYS)
    if not facts.diagnosis_documented and not conditions_missing:
        return Selection(None, indications)
    ranking = replace(facts, unavailable=frozenset()) if facts.unavailable else facts
    shown = _shown_diagnoses(ranking)
    ranked = [
        (rank, index, p)
        for index, p in enumerate(indications)
        if (
            rank := _rank_if_shown(p, ranking, shown)
            if not conditions_missing
            else _or_unseen(_rank_if_shown(p, ranking, shown))
        )
        is not None
    ]
    for continued in policy.of_kind(CONTINUED):
        if continued.therapy_days is not None and facts.days_on_drug >= continued.therapy_days:
            if ranked and (conditions_missing or any(covered_indication(p, ranking) for _, _, p in ranked)):
                return Selection(run_pathway(continued, facts))
            return Selection(run_pathway(policy.of_kind(CONTINUED_OTHER)[0], facts))
    if not ranked:
        return Selection(run_pathway(policy.of_kind(INITIAL_OTHER)[0], facts))
    top = min(rank for rank, _, _ in ranked)
    pathway, scored = _best([p for rank, _, p in ranked if rank == top], ranking)
    options: tuple[Pathway, ...] = ()
    if top == GENERIC:
        options = tuple(p for rank, _, p in ranked if rank == GENERIC)
    result = scored.result() if scored is not None and ranking is facts else run_pathway(pathway, facts)
    return Selection(result, options)


def _best(contenders: list[Pathway], ranking: Facts) -> tuple[Pathway, _Scored | None]:
    """The contender (all of the strongest evidence, in policy order) with the best decision, the first on a tie.

    Only the decision is compared, so a lone contender is not scored (None) and scoring stops at the first met:
    no later pathway can beat it. The winner's outcomes are returned for reuse when they were computed.
    """
    if len(contenders) == 1:
        return contenders[0], None
    best: _Scored | None = None
    for pathway in contenders:
        scored = _score(pathway, ranking)
        if best is None or _RANK[scored.decision] < _RANK[best.decision]:
            best = scored
            if scored.decision is Decision.MET:
                break
    assert best is not None
    return best.pathway, best


def select(policy: Policy, facts: Facts) -> PathwayResult:
    """The pathway result this order is judged under (I.I when no diagnosis is documented at all)."""
    selection = select_pathway(policy, facts)
    if selection.result is None:
        return run_pathway(policy.of_kind(INITIAL_OTHER)[0], facts)
    return selection.result


def _non_formulary(policy: Policy, facts: Facts) -> NonFormularyRule | None:
    for rule in policy.non_formulary:
        if facts.line_of_business == rule.line_of_business and facts.product.family == rule.family:
            return rule
    return None


def notes_for(policy: Policy, facts: Facts) -> tuple[str, ...]:
    """Notes for the reader that change no status: a generic evaluated although its brand is non-formulary,
    and the labels' limitations of use that the record shows (or may show)."""
    notes: list[str] = []
    rule = _non_formulary(policy, facts)
    if rule is not None and facts.product.is_brand is False and rule.generics == "evaluate":
        notes.append(rule.generic_note)
    for note in policy.label_notes:
        outcome = _label_outcome(note, facts)
        if outcome is not None and (
            outcome.status is Status.MET or (outcome.status is Status.UNKNOWN and outcome.evidence)
        ):
            notes.append(note.text)
    return tuple(notes)


def _label_outcome(note: LabelNote, facts: Facts) -> Outcome | None:
    """The note's ``when`` over the facts; None as soon as a part of an ``all_of`` is not met (Kleene AND is then
    not met, whatever the other parts), so a note for another product stops at its product test."""
    if not note.all_of:
        return note.when(facts, ())
    outcomes = []
    for part in note.all_of:
        outcome = part(facts, ())
        if outcome.status is Status.NOT_MET:
            return None
        outcomes.append(outcome)
    return combine_all(outcomes)


def approval_months(pathway: Pathway, line: LineOfBusiness | None, requested_months: int | None) -> int | None:
    """Months from the pathway's table; ``up_to`` means that many or the request's duration, whichever is less."""
    rule = pathway.approval.get(line) if line is not None else None
    if rule is None or isinstance(rule, ReferTo):
        return None
    if isinstance(rule, UpTo):
        return min(rule.months, requested_months or rule.months)
    return rule


def _referral(policy: Policy, result: PathwayResult, facts: Facts) -> tuple[bool, str | None]:
    """Whether the order is referred, and where (None when the line of business is unknown)."""
    line = facts.line_of_business
    rule = _non_formulary(policy, facts)
    if rule is not None and (facts.product.is_brand is True or rule.generics == "refer"):
        return True, rule.refer_to
    approval = result.pathway.approval.get(line) if line is not None else None
    if isinstance(approval, ReferTo):
        return True, approval.policy
    if result.decision is Decision.REFER:
        referral = result.pathway.referral
        return True, referral.by_line.get(line) if referral is not None and line is not None else None
    return False, None


def unreadable(policy: Policy, order_ref: str, reason: str) -> UnreadableOrder:
    """The policy's answer for an order of its drug that could not be read: no evaluation, the pack's words."""
    return UnreadableOrder(
        order_ref=order_ref, reason=reason, policy=policy.id, policy_version=policy.version, drug=policy.drug.name
    )


def evaluate(policy: Policy, facts: Facts) -> OrderEvaluation:
    """The policy's answer for one order of the policy's drug."""
    selection = select_pathway(policy, facts)
    line = facts.line_of_business
    options = tuple((p.id, p.title, p.short_title) for p in selection.options)
    result = selection.result
    if result is None:
        return OrderEvaluation(
            order_ref=facts.order_ref,
            policy=policy.id,
            policy_version=policy.version,
            pathway=None,
            pathway_title="No diagnosis documented",
            decision=Decision.INCOMPLETE,
            line_of_business=LineOfBusiness(line).value if line is not None else None,
            evaluation_date=facts.evaluation_date.isoformat(),
            notes=notes_for(policy, facts),
            diagnosis_options=options,
            drug=policy.drug.name,
        )
    referred, refer_to = _referral(policy, result, facts)
    formulary = _non_formulary(policy, facts)
    reason = formulary.text if referred and formulary is not None and refer_to == formulary.refer_to else None
    from .suggestions import vet  # late: it re-evaluates criteria of the loaded policy

    evaluation = OrderEvaluation(
        order_ref=facts.order_ref,
        policy=policy.id,
        policy_version=policy.version,
        pathway=result.pathway.id,
        pathway_title=result.pathway.title,
        decision=Decision.REFER if referred else result.decision,
        refer_to=refer_to,
        line_of_business=LineOfBusiness(line).value if line is not None else None,
        approval_months=None if referred else approval_months(result.pathway, line, facts.requested_months),
        criteria=result.criteria,
        evaluation_date=facts.evaluation_date.isoformat(),
        notes=notes_for(policy, facts),
        diagnosis_options=options,
        referral_reason=reason,
        drug=policy.drug.name,
        product_words=(policy.drug.non_formulary_words if reason else None),
    )
    return vet(policy, facts, evaluation)
