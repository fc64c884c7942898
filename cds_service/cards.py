"""Evaluation -> CDS Hooks cards, one-click suggestions and Da Vinci CRD coverage-information.

Per evaluated order: exactly one evaluation card (carrying ``extension["priorauth-cds.evaluation"]``),
one suggestions card when the evaluation has fixes, and one ``systemActions`` update echoing the draft
unchanged except for the CRD ``ext-coverage-information`` extension (on order-select without doc-needed).
Per order of the drug that could not be read (``UnreadableOrder``): one warning card saying so and what to
correct, and nothing else -- no evaluation, no coverage assertion, no system action.
"""

from __future__ import annotations

import copy
import functools
import json
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhir_mappings.normalize import deep_copy_json

from .policy.results import CriterionResult, Decision, Fix, OrderEvaluation, Status, UnreadableOrder
from .protocol import MAX_SUMMARY_CHARS, Action, Card, Coding, Link, Source, Suggestion, json_form

EVALUATION_KEY = "priorauth-cds.evaluation"
CRD_COVERAGE_INFO = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: Cards, suggestions, links and actions are built in their JSON form (``protocol.json_form``: the response models'
#: members in field order, empty ones left out), never as pydantic models: the models stay the typed contract
#: (``tests/test_response_json.py``). These shared members are only read: the answer's bytes are written from them.
JsonObject = dict[str, Any]

TOPIC_COVERAGE = json_form(Coding, system=CRD_TEMP, code="coverage-info", display="Coverage Information")
TOPIC_ALTERNATIVES = json_form(
    Coding, system=CRD_TEMP, code="therapy-alternatives-req", display="Required Therapy Alternatives"
)

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
    #: DTR (cds_service.dtr.offer): questionnaire canonicals offered, whether a criterion a clinician can document
    #: is still open, the payer's prefill by questionnaire id, and the clinician answers used (response -> linkIds).
    questionnaires: tuple[str, ...] = ()
    documentable: bool = False
    dtr_prefill: Mapping[str, Any] = field(default_factory=dict)
    answers_used: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: One line per QuestionnaireResponse about this order the decision did not use ("... not used: why").
    answers_not_used: tuple[str, ...] = ()


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
    """JSON forms of ``protocol.Card`` and ``protocol.Action`` (``protocol.response_json`` writes them)."""

    cards: list[JsonObject] = field(default_factory=list)
    system_actions: list[JsonObject] = field(default_factory=list)
    assertions: list[CoverageDecision] = field(default_factory=list)


# ----------------------------------------------------------------------------- text

OVERRIDE_SYSTEM = "https://priorauth-cds.org/CodeSystem/override-reason"
#: CDS Hooks 2.0 overrideReasons offered on every evaluation card (stored with feedback).
OVERRIDE_REASONS = (
    json_form(
        Coding,
        system=OVERRIDE_SYSTEM,
        code="documented-elsewhere",
        display="The documentation is in notes the EHR did not send",
    ),
    json_form(
        Coding,
        system=OVERRIDE_SYSTEM,
        code="will-submit-documentation",
        display="I will submit documentation with the PA request",
    ),
    json_form(
        Coding,
        system=OVERRIDE_SYSTEM,
        code="clinical-judgment",
        display="Clinically appropriate despite the policy criteria",
    ),
    json_form(
        Coding,
        system=OVERRIDE_SYSTEM,
        code="exception-requested",
        display="Requesting an exception or review under another policy",
    ),
)


def _clip(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _phrases(head: str, phrases: list[str], tail: str = "", limit: int = MAX_SUMMARY_CHARS) -> str:
    """``head`` + as many whole phrases as fit (then "and N more") + ``tail``: never cut mid-phrase."""
    phrases = list(dict.fromkeys(p for p in phrases if p))
    for count in range(len(phrases), 0, -1):
        more = len(phrases) - count
        body = "; ".join(phrases[:count]) + (f" and {more} more" if more else "")
        text = f"{head}{body}{tail}"
        if len(text) < limit:
            return text
    if phrases:  # even one phrase is too long: cut it at a word boundary
        room = limit - 2 - len(head) - len(tail)
        first = phrases[0] if len(phrases[0]) <= room else phrases[0][:room].rsplit(" ", 1)[0].rstrip(",;:") + "…"
        return f"{head}{first}{tail}"
    return _clip(head.rstrip(": ") + tail, limit - 1)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _not_ok(evaluation: OrderEvaluation, status: Status) -> list[CriterionResult]:
    return [c for c in evaluation.criteria if c.status is status]


def _failing_leaves(criterion: CriterionResult) -> list[CriterionResult]:
    """Applicable not-met descendants (the dose limit under "a or b"): what makes the order fail as written."""
    return [c for c in criterion.walk() if c.status is Status.NOT_MET and c.applicable and c is not criterion]


def _not_met_as_ordered(ev: OrderEvaluation) -> list[CriterionResult]:
    """Not met, or undecided only because an "or submit evidence" alternative is open while the order fails."""
    return [
        c
        for c in ev.criteria
        if c.status is Status.NOT_MET
        or (c.status is Status.UNKNOWN and c.review is None and any(leaf.note for leaf in _failing_leaves(c)))
    ]


def _payer_review(ev: OrderEvaluation) -> list[CriterionResult]:
    return [c for c in ev.criteria if c.status is Status.UNKNOWN and c.review == "payer"]


def _undocumented(ev: OrderEvaluation) -> list[CriterionResult]:
    ordered = {c.id for c in _not_met_as_ordered(ev)}
    return [c for c in ev.criteria if c.status is Status.UNKNOWN and c.review is None and c.id not in ordered]


def _action_words(criterion: CriterionResult, drug: str) -> str:
    """What to do about a criterion not met as ordered, in a few words: its fixes, its numbers, else its text."""
    words = []
    for c in criterion.walk():
        if c.status is not Status.NOT_MET or not c.applicable:
            continue
        for fix in c.fixes:
            if fix.kind == "switch-to-generic":
                words.append(f"use generic {drug}")
            elif fix.kind == "add-companion" and fix.display:
                words.append(f"add {fix.display.split()[0].rstrip(',')}")
            elif fix.kind == "change-strength" and fix.display:
                words.append(f"use {fix.display}")
            elif fix.kind == "switch-product" and fix.display:
                words.append(f"switch to {fix.display}")
        if c.note and not c.fixes:
            words.append(c.note)
    if not words and criterion.children:
        deepest = [c for c in _failing_leaves(criterion) if not c.children]
        remedy = deepest[0].remedy if deepest else None
        if remedy:
            remedy = remedy.rstrip(".").replace(f" with {drug}", "")
            words.append(remedy[:1].lower() + remedy[1:])
    return ", ".join(dict.fromkeys(words)) or f"{criterion.id} not met ({_short_criterion(criterion.text, 60)})"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split()).rstrip(";.: ")
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


@functools.lru_cache(maxsize=1024)
def _short_criterion(text: str, limit: int) -> str:
    """``_short`` of a criterion's text: a pure function of the policy pack's (bounded) wording, shortened once
    per text and limit instead of on every card (12 % of render); never called with chart or request text."""
    return _short(text, limit)


def _gap_words(criterion: CriterionResult) -> list[str]:
    return list(criterion.gaps) or [f"{criterion.id} ({_short_criterion(criterion.text, 48)})"]


def summary_for(evaluation: OrderEvaluation) -> str:
    """One actionable line under 140 characters, naming the real gap."""
    pathway = evaluation.pathway
    drug = evaluation.drug[:1].upper() + evaluation.drug[1:]
    if pathway is None:
        return _clip(f"{drug} PA: no diagnosis on file; document the condition being treated (see covered indications)")
    if evaluation.decision is Decision.MET:
        months = f", approvable for {evaluation.approval_months} months" if evaluation.approval_months else ""
        return _clip(f"{drug} meets {evaluation.policy} {pathway}{months}: submit PA with chart notes")
    if evaluation.decision is Decision.REFER:
        where = evaluation.refer_to or "the plan's off-label policy"
        if evaluation.referral_reason:
            return _clip(
                f"{(evaluation.product_words or drug).capitalize()} is non-formulary for this plan: request PA under {where}"
            )
        return _clip(f"{drug} is not covered by {evaluation.policy} criteria here: request PA under {where}")
    failing = _not_met_as_ordered(evaluation)
    if evaluation.decision is Decision.NOT_MET or failing:
        head = f"{drug} PA would be denied as ordered ({pathway}): "
        if evaluation.decision is not Decision.NOT_MET:
            head = f"{drug} PA ({pathway}) as ordered: "
        return _phrases(head, [_action_words(c, evaluation.drug) for c in failing])
    if evaluation.diagnosis_options:
        names = [short for _, _, short in evaluation.diagnosis_options]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return _clip(f"{drug} PA: document which diagnosis is treated ({listed})")
    unknown = _undocumented(evaluation)
    if not unknown and _payer_review(evaluation):
        return _clip(f"{drug} PA ({pathway}): submit PA; the payer reviews the documented exception")
    gaps = [g for c in unknown for g in _gap_words(c)]
    return _phrases(f"{drug} PA ({pathway}): document ", gaps, " to approve")


def _criterion_lines(criterion: CriterionResult, depth: int = 0) -> list[str]:
    indent = "  " * depth
    line = f"{indent}- **{criterion.id}** {criterion.text}"
    if criterion.note:
        line += f" — {criterion.note}"
    if criterion.status is not Status.MET and criterion.remedy and criterion.review is None:
        line += f" — *To satisfy:* {criterion.remedy}"
    lines = [line]
    collapsed = [c.id for c in criterion.children if not c.applicable]
    other_products = [c for c in criterion.children if c.status is Status.NOT_APPLICABLE]
    for child in criterion.children:
        if child.status not in (Status.MET, Status.NOT_APPLICABLE) and child.applicable:
            lines += _criterion_lines(child, depth + 1)
    if collapsed:
        lines.append(f"{indent}  - Not applicable (diagnosis not on record): {', '.join(collapsed)}")
    if other_products:
        ids = ", ".join(c.id for c in other_products)
        lines.append(f"{indent}  - {_capitalised(other_products[0].note or 'not applicable')}: {ids}")
    return lines


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lob_label(item: EvaluatedOrder) -> str:
    ev = item.evaluation
    missing_coverage = "could not be read" if "coverage" in item.unavailable else "no Coverage found"
    return LINE_OF_BUSINESS_LABEL.get(ev.line_of_business or "", f"unknown ({missing_coverage})")


def detail_for(item: EvaluatedOrder) -> str:
    """Markdown: the decision, then what fails as ordered, what is undocumented, what the payer reviews, what is met."""
    ev = item.evaluation
    if ev.pathway is None:
        parts = [
            (
                f"**{ev.policy}** ({ev.drug}): no diagnosis is documented — no problem-list Condition and no reason on "
                f"the order. Line of business: {_lob_label(item)}."
            ),
            (
                f"\nDocument the condition {ev.drug} treats (a coded problem-list entry or the order's reason). "
                f"{ev.policy} covers:"
            ),
        ]
        parts += [f"- **{pid}** {title}" for pid, title, _ in ev.diagnosis_options]
        parts.append("Other uses are reviewed under the line of business's off-label use policy.")
    else:
        parts = [
            (
                f"**{ev.policy}** ({ev.drug}), pathway **{ev.pathway}** — {ev.pathway_title}. "
                f"Line of business: {_lob_label(item)}."
            )
        ]
        if ev.referral_reason:
            parts.append(
                f"{ev.referral_reason} Request it under **{ev.refer_to}**; the criteria below are for reference."
            )
        elif ev.refer_to:
            parts.append(f"Refer the request to policy **{ev.refer_to}**.")
        if ev.approval_months:
            parts.append(f"Approval duration if criteria are met: {ev.approval_months} months.")
        if ev.diagnosis_options:
            options = "; ".join(f"**{pid}** {title}" for pid, title, _ in ev.diagnosis_options)
            parts.append(
                f"Only a general finding (tuberous sclerosis) points at a pathway. Document which is treated: {options}. "
                f"Shown: {ev.pathway}."
            )
        sections = (
            ("Not met as ordered", _not_met_as_ordered(ev)),
            ("Not documented in the chart", _undocumented(ev)),
            ("Payer review (nothing to document)", _payer_review(ev)),
        )
        for heading, failing in sections:
            if failing:
                parts.append(f"\n**{heading}:**")
                for criterion in failing:
                    parts.extend(_criterion_lines(criterion))
        if ev.withheld:
            parts.append("\n**Not suggested (do this instead):**")
            parts += [f"- {reason}" for reason in ev.withheld]
        met = [c for c in ev.criteria if c.status is Status.MET]
        if met:
            parts.append("\n**Met:**")
            # A met criterion's note says what it rests on (the latest response assessment) or, for a referral,
            # what would change it (record TSC for partial-onset seizures to continue under II.A).
            parts += [f"- **{c.id}** {_short_criterion(c.text, 110)}" + (f" — {c.note}" if c.note else "") for c in met]
        other_products = [c for c in ev.criteria if c.status is Status.NOT_APPLICABLE]
        if other_products:  # "For Yonsa requests ..." on a Zytiga order: written for other products
            parts.append(f"\n**{_capitalised(other_products[0].note or 'not applicable')}:**")
            parts += [f"- **{c.id}** {_short_criterion(c.text, 110)}" for c in other_products]
    if ev.notes:
        parts.append("\n**Information (does not change the decision):**")
        parts += [f"- {note}" for note in ev.notes]
    parts += unused_answer_lines(item)
    if not item.coverage_ref:
        if "coverage" in item.unavailable:
            parts.append("\nThe member's Coverage could not be read from the EHR: no coverage determination is made.")
        else:
            parts.append(
                "\nNo active Coverage is on file: no coverage determination is made for this order. "
                "Record the member's coverage and sign again."
            )
    if item.unavailable:
        keys = ", ".join(sorted(item.unavailable))
        parts.append(
            f"\nThe EHR's FHIR server did not return: {keys}; criteria that depend on them show as undocumented."
        )
    return "\n".join(parts)


#: At most this many "not used" lines on a card; the rest are counted.
MAX_UNUSED_ANSWER_LINES = 5


def unused_answer_lines(item: EvaluatedOrder) -> list[str]:
    """Markdown lines naming each QuestionnaireResponse about this order that was not used, and why: answers are
    never ignored in silence (the lines come from ``fhir_mappings.answers``, with ids checked and text escaped)."""
    lines = list(item.answers_not_used)
    if not lines:
        return []
    shown = [f"- {line}" for line in lines[:MAX_UNUSED_ANSWER_LINES]]
    if len(lines) > MAX_UNUSED_ANSWER_LINES:
        shown.append(f"- and {len(lines) - MAX_UNUSED_ANSWER_LINES} more")
    return ["\n**Questionnaire answers not used:**", *shown]


# ----------------------------------------------------------------------------- unreadable orders

#: Longest validation reason shown on a card (it names an element path, which a client controls in part).
MAX_REASON_CHARS = 80
#: Fewest characters of the reason worth showing in a summary; with less room the summary leaves it out.
MIN_SUMMARY_REASON_CHARS = 16


def _reason_words(reason: str) -> str:
    """A validation reason fit for a card: printable characters only, one line, at most ``MAX_REASON_CHARS``."""
    printable = "".join(ch if unicodedata.category(ch)[0] not in "CZ" else " " for ch in reason)
    return _short(printable, MAX_REASON_CHARS) or "invalid resource"


def unreadable_summary(order: UnreadableOrder) -> str:
    """One line under 140 characters: which order, why, and that coverage was not evaluated. The order reference,
    then the reason, give way when they do not fit (the detail has both in full)."""
    drug = order.drug[:1].upper() + order.drug[1:]
    reason = _reason_words(order.reason)
    tail = ": coverage not evaluated; fix it and sign again"
    full = f"{drug} order {order.order_ref} could not be read ({reason}){tail}"
    if len(full) <= MAX_SUMMARY_CHARS:
        return full
    head = f"{drug} order could not be read ("
    room = MAX_SUMMARY_CHARS - len(head) - len(")") - len(tail)
    if room >= MIN_SUMMARY_REASON_CHARS:
        return f"{head}{_short(reason, room)}){tail}"
    return _clip(f"{drug} order could not be read{tail}")


def unreadable_detail(order: UnreadableOrder) -> str:
    """Markdown: what could not be read, why, what that means for coverage, and what to do."""
    return "\n".join(
        [
            (
                f"**{order.policy}** ({order.drug}): the draft order {order.order_ref} is not a valid FHIR "
                f"MedicationRequest ({_reason_words(order.reason)}), so it could not be read."
            ),
            (
                "\nCoverage was not evaluated: no coverage determination is made for this order and no coverage "
                "information is added to it."
            ),
            "\nCorrect the order in the EHR (the element named above) and sign again.",
        ]
    )


def _policy_links(policy: str, policy_url: str | None) -> list[JsonObject]:
    return [json_form(Link, label=f"{policy} policy document", url=policy_url, type="absolute")] if policy_url else []


def unreadable_card(order: UnreadableOrder, insurer: str, policy_url: str | None) -> JsonObject:
    return json_form(
        Card,
        summary=unreadable_summary(order),
        indicator="warning",
        source=json_form(Source, label=insurer, url=policy_url, topic=TOPIC_COVERAGE),
        detail=unreadable_detail(order),
        links=_policy_links(order.policy, policy_url),
    )


# ----------------------------------------------------------------------------- evaluation extension


#: ``Status.value`` by dict lookup (cards and audit rows): the enum property cost ~0.5 us per criterion per call.
STATUS_WORD: dict[Status, str] = {status: status.value for status in Status}


def evaluation_extension(ev: OrderEvaluation) -> dict[str, Any]:
    """The ``priorauth-cds.evaluation`` object (members omitted rather than null)."""
    body: dict[str, Any] = {
        "order": ev.order_ref,
        "policy": ev.policy,
        "policyVersion": ev.policy_version,
        "decision": ev.decision.value,
    }
    if ev.pathway is not None:
        body["pathway"] = ev.pathway
    if ev.refer_to:
        body["referTo"] = ev.refer_to
    if ev.line_of_business:
        body["lineOfBusiness"] = ev.line_of_business
    if ev.approval_months is not None:
        body["approvalMonths"] = ev.approval_months
    if ev.evaluation_date:
        body["evaluationDate"] = ev.evaluation_date
    if ev.diagnosis_options:
        body["diagnosisOptions"] = [pid for pid, _, _ in ev.diagnosis_options]
    if ev.notes:
        body["notes"] = list(ev.notes)
    if ev.withheld:
        body["withheldSuggestions"] = list(ev.withheld)
    criteria = []
    for criterion in ev.all_criteria():
        entry: dict[str, Any] = {"id": criterion.id, "status": STATUS_WORD[criterion.status], "text": criterion.text}
        if criterion.remedy:
            entry["remedy"] = criterion.remedy
        if criterion.note:
            entry["note"] = criterion.note
        if not criterion.applicable:
            entry["applicable"] = False
        if criterion.review:
            entry["review"] = criterion.review
        if criterion.evidence:
            entry["evidence"] = list(criterion.evidence)
        criteria.append(entry)
    if criteria:
        body["criteria"] = criteria
    return body


def _with_unused_answers(body: dict[str, Any], item: EvaluatedOrder) -> dict[str, Any]:
    if item.answers_not_used:
        body["answersNotUsed"] = list(item.answers_not_used)
    return body


# ----------------------------------------------------------------------------- suggestions


def _medication_concept(rxcui: str | None, display: str) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": display}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": display}]
    return concept


def switch_to_generic(draft: Mapping[str, Any], fix: Fix) -> JsonObject:
    """Replace the draft's medication with the generic of the same strength and form; sig and dispense kept."""
    order: dict[str, Any] = deep_copy_json(dict(draft))  # JSON-only copy: a third of deepcopy's cost
    old_ref = (
        (order.get("medicationReference") or {}).get("reference")
        if isinstance(order.get("medicationReference"), dict)
        else None
    )
    order.pop("medicationReference", None)
    if old_ref and old_ref.startswith("#") and isinstance(order.get("contained"), list):
        order["contained"] = [
            r for r in order["contained"] if not (isinstance(r, dict) and f"#{r.get('id')}" == old_ref)
        ]
        if not order["contained"]:
            order.pop("contained")
    display = fix.display or "generic of the same strength and form"
    order["medicationCodeableConcept"] = _medication_concept(fix.rxcui, display)
    ref = f"{order.get('resourceType', 'MedicationRequest')}/{order.get('id')}"
    return json_form(
        Suggestion,
        label=_clip(f"Switch to generic: {display}", 80),
        isRecommended=True,
        actions=[
            json_form(
                Action,
                type="update",
                description=f"Replace {ref} with generic {display}, same sig and dispense",
                resource=order,
            )
        ],
    )


def add_companion(draft: Mapping[str, Any], fix: Fix) -> JsonObject:
    """Create the companion order the policy requires (e.g. exemestane 25 mg daily for breast cancer)."""
    display = fix.display or "companion medication"
    return json_form(
        Suggestion,
        label=_clip(f"Add {display}" + (f" ({fix.sig})" if fix.sig else ""), 80),
        isRecommended=True,
        actions=[
            json_form(
                Action,
                type="create",
                description=f"Order {display} with the draft it completes",
                resource=_companion_order(draft, fix),
            )
        ],
    )


def _daily_dosage(mg: float, per_day: int, sig: str | None) -> dict[str, Any]:
    """A structured Dosage: ``mg`` per administration, ``per_day`` times a day (the dose limits read it)."""
    return {
        "text": sig or f"{mg:g} mg {per_day} time(s) a day",
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [
            {"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
        ],
    }


def switch_product(draft: Mapping[str, Any], fix: Fix) -> JsonObject:
    """The pack's preferred alternative: the draft with the other product at the mapped dose, plus the companion
    it is given with; the companions it replaces are named to stop."""
    order: dict[str, Any] = deep_copy_json(dict(draft))
    order.pop("medicationReference", None)
    order.pop("contained", None)
    display = fix.display or "the preferred alternative"
    order["medicationCodeableConcept"] = _medication_concept(fix.rxcui, display)
    order["dosageInstruction"] = [_daily_dosage(fix.dose_mg or 0, fix.frequency_per_day or 1, fix.sig)]
    if isinstance(order.get("dispenseRequest"), dict):
        order["dispenseRequest"].pop("quantity", None)  # the old product's count
    ref = f"{order.get('resourceType', 'MedicationRequest')}/{order.get('id')}"
    stop = f"; stop {', '.join(fix.stops)}" if fix.stops else ""
    actions = [
        json_form(Action, type="update", description=f"Replace {ref} with {display}, {fix.sig}{stop}", resource=order)
    ]
    label = f"Switch to {display}, {fix.sig}"
    if fix.companion is not None:
        companion = fix.companion.display or "companion medication"
        actions.append(
            json_form(
                Action,
                type="create",
                description=f"Order {companion} with {display}{stop}",
                resource=_companion_order(draft, fix.companion),
            )
        )
        label += f" + {companion}"
    return json_form(Suggestion, label=_clip(label, 80), isRecommended=True, actions=actions)


def _companion_order(draft: Mapping[str, Any], fix: Fix) -> dict[str, Any]:
    """A draft MedicationRequest for a companion, for the draft's patient, encounter and requester."""
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
    return order


def change_strength(draft: Mapping[str, Any], fix: Fix) -> JsonObject:
    """The same daily mg in fewer tablets: the draft with the generic of another strength and a new sig."""
    order: dict[str, Any] = deep_copy_json(dict(draft))
    order.pop("medicationReference", None)
    order.pop("contained", None)
    display = fix.display or "the same drug"
    order["medicationCodeableConcept"] = _medication_concept(fix.rxcui, display)
    count = fix.frequency_per_day or 1
    mg = fix.dose_mg or 0
    order["dosageInstruction"] = [
        {
            "text": f"{count * mg:g} mg by mouth once daily ({count} x {mg:g} mg tablet{'s' if count > 1 else ''})",
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [
                {
                    "doseQuantity": {
                        "value": count * mg,
                        "unit": "mg",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg",
                    }
                }
            ],
        }
    ]
    order.get("dispenseRequest", {}).pop("quantity", None) if isinstance(order.get("dispenseRequest"), dict) else None
    ref = f"{order.get('resourceType', 'MedicationRequest')}/{order.get('id')}"
    return json_form(
        Suggestion,
        label=_clip(f"Same dose in fewer tablets: {display}, {count} a day", 80),
        isRecommended=True,
        actions=[json_form(Action, type="update", description=f"Replace {ref}: {fix.sig or display}", resource=order)],
    )


def suggestions_for(item: EvaluatedOrder) -> list[JsonObject]:
    fixes = item.evaluation.fixes()
    if not fixes:  # most answers: no walk for over-limit notes nobody reads
        return []
    consolidates = any(f.kind == "change-strength" for f in fixes)
    mg_over = [
        c.note
        for c in item.evaluation.all_criteria()
        if c.status is Status.NOT_MET and c.applicable and c.note and "mg/day exceeds" in c.note
    ]
    out = []
    for fix in fixes:
        if fix.kind == "switch-to-generic" and item.evaluation.referral_reason:
            continue  # the product is non-formulary brand or generic: a generic swap would not change the referral
        if fix.kind == "switch-to-generic" and fix.rxcui and not consolidates:
            suggestion = switch_to_generic(item.draft, fix)
            if mg_over:  # never silently keep an over-limit regimen
                label = _clip(f"{suggestion['label']} (dose still over: {mg_over[0]})", 80)
                suggestion = {**suggestion, "label": label}
            out.append(suggestion)
        elif fix.kind == "change-strength" and fix.rxcui:
            suggestion = change_strength(item.draft, fix)
            if mg_over:  # fewer tablets, same mg: say the day's mg is still over
                label = _clip(f"{suggestion['label']} (dose still over: {mg_over[0]})", 80)
                suggestion = {**suggestion, "label": label}
            out.append(suggestion)
        elif fix.kind == "add-companion" and (fix.rxcui or fix.display):
            out.append(add_companion(item.draft, fix))
        elif fix.kind == "switch-product" and fix.rxcui and fix.dose_mg:
            out.append(switch_product(item.draft, fix))
    return out


# ----------------------------------------------------------------------------- coverage information


def coverage_decision(
    ev: OrderEvaluation, hook: str, assertion_id: str | None = None, pa_needed: str = "auth-needed"
) -> CoverageDecision:
    """CRD values for a decision: ``pa_needed`` is the pack's (``policy.pa_needed``); coverage depends on the
    criteria."""
    covered = "covered" if ev.decision is Decision.MET else "conditional"
    pathway = ev.pathway or "(no diagnosis documented)"
    reasons = {
        Decision.MET: f"{ev.policy} {pathway} criteria met; submit prior authorization with supporting documentation",
        Decision.NOT_MET: f"{ev.policy} {pathway} criteria not met as ordered",
        Decision.INCOMPLETE: f"{ev.policy} {pathway} criteria not documented in the chart",
        Decision.REFER: ev.referral_reason
        or f"Not addressed by {ev.policy}; refer to {ev.refer_to or 'the off-label use policy'}",
    }
    return CoverageDecision(
        assertion_id=assertion_id or str(uuid.uuid4()),
        order_ref=ev.order_ref,
        covered=covered,
        pa_needed=pa_needed,
        # CRD: order-select happens before the order is final, so it must not ask for documentation.
        doc_needed="clinical" if hook == "order-sign" else None,
        reason=reasons[ev.decision],
    )


def coverage_extension(
    decision: CoverageDecision,
    coverage_ref: str | None,
    today: date,
    coverage_unavailable: bool = False,
    questionnaires: Sequence[str] = (),
) -> dict[str, Any]:
    """CRD ``coverage-information``; with documentation needed it names the DTR questionnaires (version-specific
    canonicals) and says the documentation goes with the prior authorization (doc-purpose withpa)."""
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
        parts.append({"url": "doc-purpose", "valueCode": "withpa"})
    if decision.covered == "conditional":
        # CRD crd-ci-q3: conditional coverage says what information decides it; here the criteria (reason below).
        parts.append({"url": "info-needed", "valueCode": "OTH"})
    parts.append({"url": "reason", "valueCodeableConcept": {"text": decision.reason}})
    if decision.doc_needed:
        parts += [{"url": "questionnaire", "valueCanonical": canonical} for canonical in questionnaires]
    parts += [
        {"url": "date", "valueDate": today.isoformat()},
        {"url": "coverage-assertion-id", "valueString": decision.assertion_id},
    ]
    return {"url": CRD_COVERAGE_INFO, "extension": parts}


def dtr_link(
    launch_url: str, item: EvaluatedOrder, decision: CoverageDecision, payer_fhir_base: str | None = None
) -> JsonObject:
    """A SMART link that launches the EHR's DTR app on this order: appContext names the order, its coverage, the
    questionnaires, the coverage-assertion-id (the ``context`` of ``$questionnaire-package``) and the payer's FHIR
    base, where the app finds ``.well-known/smart-configuration`` and so its token endpoint (SMART Backend
    Services)."""
    context: dict[str, Any] = {
        "order": item.evaluation.order_ref,
        "coverage": item.coverage_ref,
        "questionnaire": list(item.questionnaires),
        "coverageAssertionId": decision.assertion_id,
    }
    if payer_fhir_base:
        context["payerFhirBase"] = payer_fhir_base
    return json_form(
        Link,
        label=_clip(f"Document the open {item.evaluation.policy} criteria (DTR questionnaire)", 80),
        url=launch_url,
        type="smart",
        appContext=json.dumps(context, separators=(",", ":")),
    )


def annotated_order(draft: Mapping[str, Any], extension: dict[str, Any]) -> dict[str, Any]:
    """The draft unchanged except that its coverage-information extension is (re)placed.

    A shallow copy: only the top-level ``extension`` member is replaced (by a new list), nothing below is written,
    and the response is serialised from new containers (``to_json``), so the draft as received stays untouched.
    """
    order: dict[str, Any] = dict(draft)
    kept = [e for e in order.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == CRD_COVERAGE_INFO)]
    order["extension"] = kept + [extension]
    return order


# ----------------------------------------------------------------------------- assembly


def render(
    items: Sequence[EvaluatedOrder | UnreadableOrder],
    *,
    hook: str,
    insurer: str,
    crd_configuration: Mapping[str, Any],
    today: date,
    policy_url: str | None = None,
    assertion_ids: Mapping[str, str] | None = None,
    dtr_launch_url: str | None = None,
    payer_fhir_base: str | None = None,
    pa_needed: str = "auth-needed",
) -> Rendered:
    """All cards and system actions for the orders in scope, in their order, honouring the CRD configuration.

    An ``UnreadableOrder`` gets its card only (a coverage-information card: shown unless the client turned those
    off). ``assertion_ids`` (order_ref -> id) are reused instead of new ids: a retried call cites what was stored.
    """
    show_coverage = crd_configuration.get("coverage-info") is not False
    show_alternatives = crd_configuration.get("therapy-alternatives-req") is not False
    out = Rendered()
    fix_cards: list[JsonObject] = []
    for item in items:
        if isinstance(item, UnreadableOrder):
            if show_coverage:
                out.cards.append(unreadable_card(item, insurer, policy_url))
            continue
        ev = item.evaluation
        # Without an active Coverage there is no plan to speak for: no coverage assertion at all (the card says why).
        reused = (assertion_ids or {}).get(ev.order_ref)
        decision = coverage_decision(ev, hook, reused, pa_needed) if item.coverage_ref else None
        if decision is not None:
            out.assertions.append(decision)
        if show_coverage:
            links = _policy_links(ev.policy, policy_url)
            if dtr_launch_url and decision is not None and decision.doc_needed and item.documentable:
                links.insert(0, dtr_link(dtr_launch_url, item, decision, payer_fhir_base))
            out.cards.append(
                json_form(
                    Card,
                    summary=summary_for(ev),
                    indicator="info" if ev.decision is Decision.MET else "warning",
                    source=json_form(Source, label=insurer, url=policy_url, topic=TOPIC_COVERAGE),
                    detail=detail_for(item),
                    overrideReasons=list(OVERRIDE_REASONS) if ev.decision is not Decision.MET else [],
                    links=links,
                    extension={EVALUATION_KEY: _with_unused_answers(evaluation_extension(ev), item)},
                )
            )
            if decision is not None:
                extension = coverage_extension(
                    decision, item.coverage_ref, today, "coverage" in item.unavailable, item.questionnaires
                )
                out.system_actions.append(
                    json_form(
                        Action,
                        type="update",
                        description=f"Coverage information for {ev.order_ref}",
                        resource=annotated_order(item.draft, extension),
                    )
                )
        suggestions = suggestions_for(item) if show_alternatives else []
        if suggestions:
            fix_cards.append(
                json_form(
                    Card,
                    summary=_clip(
                        f"Fix the {ev.drug} order for {ev.policy} in one click ({_plural(len(suggestions), 'change')})"
                    ),
                    indicator="warning",
                    source=json_form(Source, label=insurer, topic=TOPIC_ALTERNATIVES),
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
