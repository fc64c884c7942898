"""Safe suggestions: every one-click fix is checked against the chart and against the criteria before it is offered.

A fix comes from the criterion that failed (a companion order, the generic, the same dose in fewer tablets). Before
a card offers it:

1. **Allergies.** A drug the chart records an active allergy OR intolerance to (any criticality; inactive, resolved,
   refuted or entered-in-error entries do not count) is never suggested; the card says why instead
   ("exemestane 25 MG Oral Tablet not suggested: AllergyIntolerance/x records an intolerance"). When the allergies
   could not be read at all, nothing is suggested (nothing could be checked).
2. **Induction after the fact.** A companion given before a procedure (policy ``given_before``: basiliximab within
   2 hours before the transplant) is not suggested once that procedure was performed (a received Procedure, or a
   Condition showing the transplant); the card asks for documentation of the induction instead.
3. **The organ.** When the chart does not document the organ (awaiting transplant, text only), the regimen drafted
   or on record decides it (policy ``regimen_markers``): only that regimen may be completed, and the other organ's
   regimen is never proposed.
4. **No duplicate therapy.** A drug of a ``duplicate_therapy_groups`` group (calcineurin inhibitors) is not
   suggested while another drug of that group is drafted or active (cyclosporine for a member on tacrolimus).
5. **Re-check.** The fixes a failed criterion offers are applied to the facts together (companions added to the
   co-medications, the product switched, the dose changed) and the criterion is evaluated again: unless it turns
   met, none of them is offered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from fhir_mappings.model import Dose, Facts, Finding

from .loader import Criterion, Policy
from .predicates import ALLERGY_KEYS, Outcome
from .results import CriterionResult, Fix, OrderEvaluation, Status

#: Evidence of a fix's drug in the re-check facts (never shown: re-check facts are thrown away).
SUGGESTED = "suggested"


def vet(policy: Policy, facts: Facts, evaluation: OrderEvaluation) -> OrderEvaluation:
    """The evaluation with only the fixes that are safe and work; the reasons for the others in ``withheld``."""
    if evaluation.pathway is None or not evaluation.fixes():
        return evaluation
    criteria = {c.id: c for c in policy.pathway(evaluation.pathway).all_criteria()}
    view = organ_view(policy, facts)
    keep: set[Fix] = set()
    withheld: list[str] = []
    for result in _carriers(evaluation.all_criteria()):
        safe, documented, reasons = _screen(policy, facts, result.fixes)
        withheld += reasons
        criterion = criteria.get(result.id)
        if not safe or criterion is None:
            continue
        if _outcome(criterion, apply(view, [*safe, *documented], policy)) is Status.MET:
            keep.update(safe)
        else:
            names = ", ".join(dict.fromkeys(_name(f) for f in safe))
            withheld.append(f"{names} not suggested: {result.id} would still not be met with it on this chart")
    withheld = [w for w in withheld if not _offered_anyway(w, keep)]
    return replace(
        evaluation,
        criteria=tuple(_pruned(c, keep) for c in evaluation.criteria),
        withheld=tuple(dict.fromkeys((*evaluation.withheld, *withheld))),
    )


def _carriers(results: Iterable[CriterionResult]) -> list[CriterionResult]:
    """Failed criteria offering fixes that no failed sub-item of theirs offers: where each fix comes from. A fix
    must satisfy the criterion it was made for (I.G.7.b), not merely some alternative of its parent (I.G.7)."""
    out = []
    for result in results:
        if result.status is not Status.NOT_MET or not result.fixes:
            continue
        below = {f for child in result.children if child.status is Status.NOT_MET for f in child.fixes}
        if any(f not in below for f in result.fixes):
            out.append(replace(result, fixes=tuple(f for f in result.fixes if f not in below)))
    return out


def _offered_anyway(reason: str, keep: set[Fix]) -> bool:
    """A "would still not be met" line about fixes another criterion offers after all is not shown."""
    if "would still not be met" not in reason:
        return False
    names = reason.split(" not suggested:", 1)[0].split(", ")
    return all(any(_name(f) == n for f in keep) for n in names)


def _screen(policy: Policy, facts: Facts, fixes: Iterable[Fix]) -> tuple[list[Fix], list[Fix], list[str]]:
    """(safe fixes, induction fixes to document instead, why each other one is withheld)."""
    safe: list[Fix] = []
    documented: list[Fix] = []
    reasons: list[str] = []
    allergies_unread = not facts.unavailable.isdisjoint(ALLERGY_KEYS)
    for fix in fixes:
        allergy = _allergy(facts, fix_tags(fix, policy))
        if allergies_unread:
            reasons.append(f"{_name(fix)} not suggested: the chart's allergies could not be read; check them first")
            continue
        if allergy is not None:
            reasons.append(f"{_name(fix)} not suggested: {allergy}")
            continue
        duplicate = _duplicate(facts, fix, policy)
        if duplicate is not None:
            reasons.append(f"{_name(fix)} not suggested: {duplicate}")
            continue
        performed = _performed(facts, fix.given_before)
        if performed is not None:
            documented.append(fix)
            reasons.append(
                f"{_name(fix)} not suggested: {performed}; document the induction given at the transplant instead"
            )
            continue
        safe.append(fix)
    return safe, documented, reasons


def fix_tags(fix: Fix, policy: Policy) -> tuple[str, ...]:
    """What a fix orders: its companion's ingredients, or the policy's drug for a switch or a new strength (and the
    companion a preferred alternative comes with)."""
    own = fix.tags or ((policy.drug.tag,) if fix.kind in ("switch-to-generic", "change-strength") else ())
    return own + (fix.companion.tags if fix.companion is not None else ())


def _allergy(facts: Facts, tags: Iterable[str]) -> str | None:
    refs = [ref for tag in tags if tag in facts.allergies for ref in facts.allergies[tag].evidence]
    if not refs:
        return None
    ref = refs[0]
    return f"{ref} records {facts.allergy_kinds.get(ref, 'an allergy or intolerance')}"


def _duplicate(facts: Facts, fix: Fix, policy: Policy) -> str | None:
    """Words for another drug of a no-duplicates group already drafted or active (the fix is only ever made for a
    missing ingredient, so a group member on record is another drug), or None."""
    for group in policy.duplicate_therapy_groups:
        found = facts.co_medications.get(group)
        if group in fix.tags and found is not None:
            return f"{', '.join(found.evidence)} already orders a {group.replace('-', ' ')} (not given two at a time)"
    return None


def _performed(facts: Facts, procedures: Iterable[str]) -> str | None:
    """Words for a procedure already performed (received, or a Condition showing it), or None."""
    for tag in procedures:
        found = facts.procedures.get(tag) or facts.diagnoses.get(tag)
        if found is None or (found.start is not None and found.start > facts.evaluation_date):
            continue
        when = f" on {found.start.isoformat()}" if found.start is not None else ""
        return f"the {tag.replace('-', ' ')} was already performed{when} ({', '.join(found.evidence)})"
    return None


def organ_view(policy: Policy, facts: Facts) -> Facts:
    """The facts with the organ the regimen on record shows, when the chart documents no organ and exactly one
    regimen is drafted or active (``regimen_markers``); otherwise the facts unchanged."""
    markers = policy.regimen_markers
    documented = [
        d for d in markers if d in facts.diagnoses or d in facts.procedures or d in facts.scheduled_procedures
    ]
    if documented:
        return facts
    shown = {
        organ: refs
        for organ, drugs in markers.items()
        if (refs := tuple(r for d in drugs if d in facts.co_medications for r in facts.co_medications[d].evidence))
    }
    if len(shown) != 1:
        return facts
    ((organ, refs),) = shown.items()
    return replace(facts, diagnoses={**facts.diagnoses, organ: Finding(tuple(dict.fromkeys(refs)))})


def apply(facts: Facts, fixes: Iterable[Fix], policy: Policy) -> Facts:
    """The facts as if the fixes were signed: companions co-ordered, the generic ordered, the dose consolidated."""
    co = dict(facts.co_medications)
    product, dose = facts.product, facts.dose
    for fix in fixes:
        if fix.kind == "add-companion":
            for tag in fix.tags:
                co.setdefault(tag, Finding((SUGGESTED,)))
        elif fix.kind == "switch-to-generic":
            product = replace(product, is_brand=False, rxcui=fix.rxcui, display=fix.display or product.display)
        elif fix.kind == "change-strength" and fix.frequency_per_day:
            product = replace(product, is_brand=False, rxcui=fix.rxcui, strength_mg=fix.dose_mg)
            dose = Dose(dose.mg_per_day, float(fix.frequency_per_day), dose.words)
        elif fix.kind == "switch-product":
            product = replace(product, family=fix.family, rxcui=fix.rxcui, display=fix.display or product.display)
            dose = Dose(fix.dose_mg, None, fix.sig)
            if fix.companion is not None:
                for tag in fix.companion.tags:
                    co.setdefault(tag, Finding((SUGGESTED,)))
    return replace(facts, co_medications=co, product=product, dose=dose)


def _outcome(criterion: Criterion, facts: Facts) -> Status:
    """A criterion evaluated on its own (sub-items first, as the engine does)."""
    return _node(criterion, facts).status


def _node(criterion: Criterion, facts: Facts) -> Outcome:
    return criterion.predicate(facts, tuple(_node(child, facts) for child in criterion.children))


def _pruned(result: CriterionResult, keep: set[Fix]) -> CriterionResult:
    fixes = tuple(f for f in result.fixes if f in keep)
    children = tuple(_pruned(c, keep) for c in result.children)
    if fixes == result.fixes and children == result.children:
        return result
    return replace(result, fixes=fixes, children=children)


def _name(fix: Fix) -> str:
    return fix.display or fix.rxcui or fix.kind


__all__ = ["apply", "fix_tags", "organ_view", "vet"]
