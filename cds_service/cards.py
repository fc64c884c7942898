"""Evaluation -> CDS Hooks cards, one-click suggestions and Da Vinci CRD coverage-information.

Per evaluated order: exactly one evaluation card (carrying ``extension["priorauth-cds.evaluation"]``),
one suggestions card when the evaluation has fixes, and one ``systemActions`` update echoing the draft
unchanged except for the CRD ``ext-coverage-information`` extension (on order-select without doc-needed).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping

from fhir_mappings.normalize import deep_copy_json

from .policy.results import CriterionResult, Decision, Fix, OrderEvaluation, Status
from .protocol import MAX_SUMMARY_CHARS, Action, Card, Coding, Source, Suggestion

EVALUATION_KEY = "priorauth-cds.evaluation"
CRD_COVERAGE_INFO = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TOPIC_COVERAGE = Coding(system=CRD_TEMP, code="coverage-info", display="Coverage Information")
TOPIC_ALTERNATIVES = Coding(system=CRD_TEMP, code="therapy-alternatives-req", display="Required Therapy Alternatives")

LINE_OF_BUSINESS_LABEL = {"medicaid": "Medicaid", "him": "Health Insurance Marketplace", "commercial": "Commercial"}


@dataclass(frozen=True)
class EvaluatedOrder:
    """An evaluation with what the card builder needs beside it."""

    evaluation: OrderEvaluation
    draft: Mapping[str, Any]  # the draft order exactly as received
    coverage_ref: str | None = None
    patient_ref: str | None = None
    #: Data the service could not obtain (prefetch key -> reason); shown so "unknown" is explained.
    unavailable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CoverageDecision:
    """The CRD coverage assertion made for one order (also what the audit stores)."""

    assertion_id: str
    order_ref: str
    covered: str
    pa_needed: str
    doc_needed: str | None
    reason: str


@dataclass
class Rendered:
    cards: list[Card] = field(default_factory=list)
    system_actions: list[Action] = field(default_factory=list)
    assertions: list[CoverageDecision] = field(default_factory=list)


# ----------------------------------------------------------------------------- text


def _clip(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _not_ok(evaluation: OrderEvaluation, status: Status) -> list[CriterionResult]:
    return [c for c in evaluation.criteria if c.status is status]


def _action_words(criterion: CriterionResult) -> str:
    """What to do about a not-met criterion, in a few words: its one-click fixes, else its id."""
    words = []
    for fix in (f for c in criterion.walk() if c.status is Status.NOT_MET for f in c.fixes):
        if fix.kind == "switch-to-generic":
            words.append("use generic everolimus")
        elif fix.kind == "add-companion" and fix.display:
            words.append(f"add {fix.display.split()[0]}")
    return ", ".join(dict.fromkeys(words)) or f"{criterion.id} not met ({_short(criterion.text)})"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split()).rstrip(";.: ")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summary_for(evaluation: OrderEvaluation) -> str:
    """One actionable line under 140 characters."""
    pathway = evaluation.pathway
    if evaluation.decision is Decision.MET:
        months = f", approvable for {evaluation.approval_months} months" if evaluation.approval_months else ""
        return _clip(f"Everolimus meets {evaluation.policy} {pathway}{months}: submit PA with chart notes")
    if evaluation.decision is Decision.REFER:
        where = evaluation.refer_to or "the plan's off-label policy"
        return _clip(f"Everolimus is not covered by {evaluation.policy} criteria here: request PA under {where}")
    if evaluation.decision is Decision.NOT_MET:
        actions = [_action_words(c) for c in _not_ok(evaluation, Status.NOT_MET)]
        return _clip(f"Everolimus PA would be denied as ordered ({pathway}): " + "; ".join(actions))
    unknown = _not_ok(evaluation, Status.UNKNOWN)
    if len(unknown) == 1:
        return _clip(f"Everolimus PA ({pathway}): document {unknown[0].id} ({_short(unknown[0].text)}) to approve")
    ids = ", ".join(c.id for c in unknown)
    return _clip(f"Everolimus PA ({pathway}) needs documentation for {ids} before it can be approved")


def _criterion_lines(criterion: CriterionResult, depth: int = 0) -> list[str]:
    indent = "  " * depth
    line = f"{indent}- **{criterion.id}** {criterion.text}"
    if criterion.status is not Status.MET and criterion.remedy:
        line += f" — *To satisfy:* {criterion.remedy}"
    lines = [line]
    for child in criterion.children:
        if child.status is not Status.MET:
            lines += _criterion_lines(child, depth + 1)
    return lines


def detail_for(item: EvaluatedOrder) -> str:
    """Markdown: the decision, then each not-met and undocumented criterion with what would satisfy it."""
    ev = item.evaluation
    missing_coverage = "could not be read" if "coverage" in item.unavailable else "no Coverage found"
    lob = LINE_OF_BUSINESS_LABEL.get(ev.line_of_business or "", f"unknown ({missing_coverage})")
    parts = [f"**{ev.policy}** (everolimus), pathway **{ev.pathway}** — {ev.pathway_title}. Line of business: {lob}."]
    if ev.approval_months:
        parts.append(f"Approval duration if criteria are met: {ev.approval_months} months.")
    if ev.refer_to:
        parts.append(f"Refer the request to policy **{ev.refer_to}**.")
    parts.extend(ev.notes)
    for status, heading in ((Status.NOT_MET, "Not met"), (Status.UNKNOWN, "Not documented in the chart")):
        failing = _not_ok(ev, status)
        if failing:
            parts.append(f"\n**{heading}:**")
            for criterion in failing:
                parts.extend(_criterion_lines(criterion))
    met = [c.id for c in ev.criteria if c.status is Status.MET]
    if met:
        parts.append(f"\n**Met:** {', '.join(met)}.")
    if item.unavailable:
        keys = ", ".join(sorted(item.unavailable))
        parts.append(f"\nThe EHR's FHIR server did not return: {keys}; criteria that depend on them show as undocumented.")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- evaluation extension


def evaluation_extension(ev: OrderEvaluation) -> dict[str, Any]:
    """The ``priorauth-cds.evaluation`` object (members omitted rather than null)."""
    body: dict[str, Any] = {
        "order": ev.order_ref,
        "policy": ev.policy,
        "policyVersion": ev.policy_version,
        "pathway": ev.pathway,
        "decision": ev.decision.value,
    }
    if ev.refer_to:
        body["referTo"] = ev.refer_to
    if ev.line_of_business:
        body["lineOfBusiness"] = ev.line_of_business
    if ev.approval_months is not None:
        body["approvalMonths"] = ev.approval_months
    if ev.evaluation_date:
        body["evaluationDate"] = ev.evaluation_date
    criteria = []
    for criterion in ev.all_criteria():
        entry: dict[str, Any] = {"id": criterion.id, "status": criterion.status.value, "text": criterion.text}
        if criterion.evidence:
            entry["evidence"] = list(criterion.evidence)
        criteria.append(entry)
    if criteria:
        body["criteria"] = criteria
    return body


# ----------------------------------------------------------------------------- suggestions


def _medication_concept(rxcui: str | None, display: str) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": display}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": display}]
    return concept


def switch_to_generic(draft: Mapping[str, Any], fix: Fix) -> Suggestion:
    """Replace the draft's medication with the generic of the same strength and form; sig and dispense kept."""
    order: dict[str, Any] = deep_copy_json(dict(draft))  # JSON-only copy: a third of deepcopy's cost
    old_ref = (order.get("medicationReference") or {}).get("reference") if isinstance(order.get("medicationReference"), dict) else None
    order.pop("medicationReference", None)
    if old_ref and old_ref.startswith("#") and isinstance(order.get("contained"), list):
        order["contained"] = [r for r in order["contained"] if not (isinstance(r, dict) and f"#{r.get('id')}" == old_ref)]
        if not order["contained"]:
            order.pop("contained")
    display = fix.display or "everolimus (generic)"
    order["medicationCodeableConcept"] = _medication_concept(fix.rxcui, display)
    ref = f"{order.get('resourceType', 'MedicationRequest')}/{order.get('id')}"
    return Suggestion(
        label=_clip(f"Switch to generic: {display}", 80),
        isRecommended=True,
        actions=[Action(type="update", description=f"Replace {ref} with generic {display}, same sig and dispense", resource=order)],
    )


def add_companion(draft: Mapping[str, Any], fix: Fix) -> Suggestion:
    """Create the companion order the policy requires (e.g. exemestane 25 mg daily for breast cancer)."""
    display = fix.display or "companion medication"
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": str(uuid.uuid4()),
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": _medication_concept(fix.rxcui, display),
    }
    for member in ("subject", "encounter", "requester", "authoredOn", "insurance"):
        if draft.get(member):
            order[member] = copy.deepcopy(draft[member])
    dosage: dict[str, Any] = {}
    if fix.sig:
        dosage["text"] = fix.sig
    if fix.frequency_per_day:
        dosage["timing"] = {"repeat": {"frequency": fix.frequency_per_day, "period": 1, "periodUnit": "d"}}
    if fix.dose_mg:
        dosage["doseAndRate"] = [
            {"doseQuantity": {"value": fix.dose_mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
        ]
    if dosage:
        order["dosageInstruction"] = [dosage]
    return Suggestion(
        label=_clip(f"Add {display}" + (f" ({fix.sig})" if fix.sig else ""), 80),
        isRecommended=True,
        actions=[Action(type="create", description=f"Order {display} with the everolimus order", resource=order)],
    )


def suggestions_for(item: EvaluatedOrder) -> list[Suggestion]:
    out = []
    for fix in item.evaluation.fixes():
        if fix.kind == "switch-to-generic" and fix.rxcui:
            out.append(switch_to_generic(item.draft, fix))
        elif fix.kind == "add-companion" and (fix.rxcui or fix.display):
            out.append(add_companion(item.draft, fix))
    return out


# ----------------------------------------------------------------------------- coverage information


def coverage_decision(ev: OrderEvaluation, hook: str) -> CoverageDecision:
    """CRD values for a decision: PA is always needed under CP.PHAR.63; coverage depends on the criteria."""
    covered = "covered" if ev.decision is Decision.MET else "conditional"
    reasons = {
        Decision.MET: f"{ev.policy} {ev.pathway} criteria met; submit prior authorization with supporting documentation",
        Decision.NOT_MET: f"{ev.policy} {ev.pathway} criteria not met as ordered",
        Decision.INCOMPLETE: f"{ev.policy} {ev.pathway} criteria not documented in the chart",
        Decision.REFER: f"Not addressed by {ev.policy}; refer to {ev.refer_to or 'the off-label use policy'}",
    }
    return CoverageDecision(
        assertion_id=str(uuid.uuid4()),
        order_ref=ev.order_ref,
        covered=covered,
        pa_needed="auth-needed",
        # CRD: order-select happens before the order is final, so it must not ask for documentation.
        doc_needed="clinical" if hook == "order-sign" else None,
        reason=reasons[ev.decision],
    )


def coverage_extension(
    decision: CoverageDecision, coverage_ref: str | None, today: date, coverage_unavailable: bool = False
) -> dict[str, Any]:
    if coverage_ref:
        coverage: dict[str, Any] = {"reference": coverage_ref}
    elif coverage_unavailable:
        coverage = {"display": "Coverage could not be read from the EHR"}
    else:
        coverage = {"display": "No active Coverage found"}
    parts: list[dict[str, Any]] = [
        {"url": "coverage", "valueReference": coverage},
        {"url": "covered", "valueCode": decision.covered},
        {"url": "pa-needed", "valueCode": decision.pa_needed},
    ]
    if decision.doc_needed:
        parts.append({"url": "doc-needed", "valueCode": decision.doc_needed})
    parts += [
        {"url": "reason", "valueCodeableConcept": {"text": decision.reason}},
        {"url": "date", "valueDate": today.isoformat()},
        {"url": "coverage-assertion-id", "valueString": decision.assertion_id},
    ]
    return {"url": CRD_COVERAGE_INFO, "extension": parts}


def annotated_order(draft: Mapping[str, Any], extension: dict[str, Any]) -> dict[str, Any]:
    """The draft unchanged except that its coverage-information extension is (re)placed."""
    order: dict[str, Any] = deep_copy_json(dict(draft))  # JSON-only copy: a third of deepcopy's cost
    kept = [e for e in order.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == CRD_COVERAGE_INFO)]
    order["extension"] = kept + [extension]
    return order


# ----------------------------------------------------------------------------- assembly


def render(
    items: list[EvaluatedOrder],
    *,
    hook: str,
    insurer: str,
    crd_configuration: Mapping[str, Any],
    today: date,
) -> Rendered:
    """All cards and system actions for the evaluated orders, honouring the CRD configuration."""
    show_coverage = crd_configuration.get("coverage-info") is not False
    show_alternatives = crd_configuration.get("therapy-alternatives-req") is not False
    out = Rendered()
    fix_cards: list[Card] = []
    for item in items:
        ev = item.evaluation
        decision = coverage_decision(ev, hook)
        out.assertions.append(decision)
        if show_coverage:
            out.cards.append(
                Card(
                    summary=summary_for(ev),
                    indicator="info" if ev.decision is Decision.MET else "warning",
                    source=Source(label=insurer, topic=TOPIC_COVERAGE),
                    detail=detail_for(item),
                    extension={EVALUATION_KEY: evaluation_extension(ev)},
                )
            )
            extension = coverage_extension(decision, item.coverage_ref, today, "coverage" in item.unavailable)
            ref = ev.order_ref
            out.system_actions.append(
                Action(type="update", description=f"Coverage information for {ref}", resource=annotated_order(item.draft, extension))
            )
        suggestions = suggestions_for(item) if show_alternatives else []
        if suggestions:
            fix_cards.append(
                Card(
                    summary=_clip(f"Fix the everolimus order for {ev.policy} in one click ({len(suggestions)} change(s))"),
                    indicator="warning",
                    source=Source(label=insurer, topic=TOPIC_ALTERNATIVES),
                    detail="Each suggestion resolves a criterion that is not met as ordered: "
                    + ", ".join(c.id for c in ev.all_criteria() if c.status is Status.NOT_MET and c.fixes),
                    suggestions=suggestions,
                    selectionBehavior="any",
                )
            )
    out.cards.extend(fix_cards)
    max_cards = crd_configuration.get("max-cards")
    if isinstance(max_cards, int) and not isinstance(max_cards, bool) and max_cards >= 0:
        out.cards = out.cards[:max_cards]
    return out
