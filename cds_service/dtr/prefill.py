"""The payer's draft answers, from the chart the service saw at order-sign (DTR ``auto-server`` prefill).

An item is prefilled only when the chart decides its test from data on record, and each answer cites that data
(``answer-evidence`` extensions with the resource references). Everything else is left for the clinician. The
answers are computed at order-sign time, stored with the coverage assertion, and turned into the package's
QuestionnaireResponse when the DTR client asks for it: the payer never needs the chart again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_mappings.codes import CodeRow, CodeTables, normalize_icd10cm
from fhir_mappings.model import Facts, Finding
from fhir_mappings.record import PatientRecord

from ..policy.loader import Pathway
from ..policy.predicates import Outcome, her2_positive, hormone_receptor_positive
from ..policy.questions import NEGATIVE, POSITIVE, RECEIVED, Leaf, Question, chart_outcome
from ..policy.results import Status
from .questionnaire import applies_link_id, asked_leaves, coding, memoised, product_specific, value_set_rows
from .stored import answer as _answer

DTR_QR_PROFILE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-questionnaireresponse"
QR_COVERAGE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-coverage"
QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
INTENDED_USE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/intendedUse"
CRD_TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"

#: linkId -> answers (FHIR QuestionnaireResponse.item.answer JSON), per pathway id.
Prefill = dict[str, list[dict[str, Any]]]


def _decided(outcome: Outcome) -> bool:
    return outcome.status is not Status.UNKNOWN and bool(outcome.evidence)


def _row_for(system: str | None, code: str | None, rows: Sequence[CodeRow]) -> CodeRow | None:
    """The value-set row a chart code falls under: the same code, or the ICD-10-CM category above it."""
    if not system or not code:
        return None
    wanted = normalize_icd10cm(code) if system == "icd-10-cm" else code
    exact, categories = _row_index(rows)
    found = exact.get((system, wanted))
    if found is not None or system != "icd-10-cm":
        return found
    best: CodeRow | None = None
    for row_code, row in categories:
        if wanted.startswith(row_code) and (best is None or len(row.code) > len(best.code)):
            best = row
    return best


def _row_index(
    rows: Sequence[CodeRow],
) -> tuple[dict[tuple[str, str], CodeRow], tuple[tuple[str, CodeRow], ...]]:
    """A value set's rows by (system, code) (the first of equal codes, ICD-10-CM codes normalised) and its ICD-10-CM
    rows with their normalised codes, in table order: once per value set, as ``_row_for`` reads them on each call."""

    def index() -> tuple[dict[tuple[str, str], CodeRow], tuple[tuple[str, CodeRow], ...]]:
        exact: dict[tuple[str, str], CodeRow] = {}
        categories: list[tuple[str, CodeRow]] = []
        for row in rows:
            row_code = normalize_icd10cm(row.code) if row.system == "icd-10-cm" else row.code
            exact.setdefault((row.system, row_code), row)
            if row.system == "icd-10-cm":
                categories.append((row_code, row))
        return exact, tuple(categories)

    if not isinstance(rows, tuple):  # only an immutable value set is kept
        return index()
    found: tuple[dict[tuple[str, str], CodeRow], tuple[tuple[str, CodeRow], ...]] = memoised("row-index", rows, index)
    return found


def _condition_codings(
    refs: Iterable[str], record: PatientRecord, rows: Sequence[CodeRow], tables: CodeTables
) -> Iterator[tuple[CodeRow, str]]:
    conditions = {f"Condition/{c.id}": c for c in record.conditions}
    for ref in refs:
        condition = conditions.get(ref)
        if condition is None or condition.code is None:
            continue
        for c in condition.code.coding or ():
            row = _row_for(tables.system_name(c.system), c.code, rows)
            if row is not None:
                yield row, ref


def _medication_answers(
    found: Mapping[str, Finding], rows: Sequence[CodeRow], tables: CodeTables
) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        own = tables.ingredient_by_rxcui.get(row.code)
        finding = found.get(own) if own else None
        if finding is not None:
            out.append(_answer({"valueCoding": coding(row, tables)}, finding.evidence))
    return out


def _receptor_answer(part: str, facts: Facts) -> dict[str, Any] | None:
    """The receptor result the chart shows, read as the policy reads it (``receptor_status``)."""
    read = hormone_receptor_positive if part.endswith("/hormone-receptor") else her2_positive
    status, evidence = read(facts.receptors)
    if status is Status.UNKNOWN:
        return None
    _, code, display = POSITIVE if status is Status.MET else NEGATIVE  # SNOMED CT qualifier values
    value = {"valueCoding": {"system": "http://snomed.info/sct", "code": code, "display": display}}
    return _answer(value, evidence)


def _generic_answers(question: Question, facts: Facts) -> list[dict[str, Any]]:
    """The order says whether a brand with a marketed generic is asked for (read-only, evidence the order); the
    exception is prefilled only when the chart documents one."""
    if question.read_only:
        product = facts.product
        if product.family is None or product.is_brand is None:
            return []
        brand = product.is_brand and product.generic_available
        return [_answer({"valueBoolean": brand}, (facts.order_ref,))]
    exception = facts.generic_exception
    return [_answer({"valueBoolean": True}, exception.evidence)] if exception else []


def _outcome_answers(question: Question, chart: Outcome) -> list[dict[str, Any]]:
    """ "Received" when the chart shows a prior therapy and the policy asks only for its history; what a therapy
    came to (failed, not tolerated) is never read from the chart: it is the clinician's to say."""
    received = next((o for o in question.options if o[1] == RECEIVED[1]), None)
    if received is None or chart.status is not Status.MET or not chart.evidence:
        return []
    system, code, display = received
    return [_answer({"valueCoding": {"system": system, "code": code, "display": display}}, chart.evidence)]


def _question_answers(
    leaf: Leaf, question: Question, chart: Outcome, facts: Facts, record: PatientRecord, tables: CodeTables
) -> list[dict[str, Any]]:
    name = leaf.name
    if question.kind == "boolean":
        if name == "generic_if_available":
            return _generic_answers(question, facts)
        if name == "documented" or not _decided(chart):
            return []
        return [_answer({"valueBoolean": chart.status is Status.MET}, chart.evidence)]
    if question.kind == "string":
        return []  # a reason is the clinician's to write
    if question.link_id.endswith("/outcome"):
        return _outcome_answers(question, chart)
    if question.kind == "date":
        if name == "age_at_least" and record.patient is not None and record.patient.birthDate is not None:
            born = record.patient.birthDate
            return [_answer({"valueDate": born.isoformat()}, facts.age_evidence or (f"Patient/{record.patient.id}",))]
        if name == "continued_therapy_days" and chart.status is Status.MET and facts.days_on_drug:
            # The days on record end on the evaluation date at the latest: therapy began this many days before.
            began = facts.evaluation_date - timedelta(days=facts.days_on_drug)
            return [_answer({"valueDate": began.isoformat()}, facts.drug_evidence)]
        return []
    if question.kind == "quantity":
        if facts.previous_mg_per_day is None:
            return []
        system, code, unit = question.unit or ("http://unitsofmeasure.org", "mg/d", "mg/day")
        quantity = {"value": facts.previous_mg_per_day, "unit": unit, "system": system, "code": code}
        return [_answer({"valueQuantity": quantity}, facts.drug_evidence)]
    if question.options:
        answer = _receptor_answer(question.link_id, facts)
        return [answer] if answer else []
    rows = value_set_rows(question, tables)
    if question.value_set and question.value_set[0] == "diagnosis":
        if not _decided(chart):
            return []
        seen: dict[str, dict[str, Any]] = {}
        for row, ref in _condition_codings(chart.evidence, record, rows, tables):
            seen.setdefault(row.code, _answer({"valueCoding": coding(row, tables)}, [ref]))
        return list(seen.values())[: None if question.repeats else 1]
    found = facts.medication_history if name.startswith("history") else facts.co_medications
    answers = _medication_answers(found, rows, tables)
    return answers if question.repeats else answers[:1]


def prefill(pathway: Pathway, facts: Facts, record: PatientRecord, tables: CodeTables) -> Prefill:
    """What the chart answers for the pathway's questionnaire (facts read without any clinician answers)."""
    chart_facts = facts if not facts.answers else replace(facts, answers={})
    out: Prefill = {}
    for leaf in asked_leaves(pathway):
        chart = chart_outcome(leaf, chart_facts)
        for question in leaf.questions:
            answers = _question_answers(leaf, question, chart, chart_facts, record, tables)
            if answers:
                out[question.link_id] = answers
    if facts.product.family is not None:  # which product is ordered is the order's to say, read-only
        for criterion in product_specific(pathway):
            assert criterion.applies_to is not None
            answer = {"valueBoolean": criterion.applies_to.applies(facts.product)}
            out[applies_link_id(criterion.id)] = [_answer(answer, (facts.order_ref,))]
    return out


# ----------------------------------------------------------------------------- the draft response


def _response_items(
    items: Sequence[Mapping[str, Any]], answers: Mapping[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if item.get("type") == "display":
            continue
        link_id = item["linkId"]
        children = _response_items(item.get("item") or [], answers)
        entry: dict[str, Any] = {"linkId": link_id, "text": item.get("text")}
        if item.get("type") == "group":
            if children:
                out.append({**entry, "item": children})
            continue
        if link_id in answers:
            entry["answer"] = answers[link_id]
            out.append(entry)
    return out


def draft_response(
    questionnaire: Mapping[str, Any],
    answers: Mapping[str, list[dict[str, Any]]],
    *,
    patient_ref: str,
    order_ref: str,
    coverage_ref: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The package's one in-progress QuestionnaireResponse (DTR profile): prefilled answers, the rest open."""
    extensions: list[dict[str, Any]] = []
    if coverage_ref:
        extensions.append({"url": QR_COVERAGE, "valueReference": {"reference": coverage_ref}})
    extensions += [
        {"url": QR_CONTEXT, "valueReference": {"reference": order_ref}},
        {"url": INTENDED_USE, "valueCodeableConcept": {"coding": [{"system": CRD_TEMP, "code": "withpa"}]}},
    ]
    return {
        "resourceType": "QuestionnaireResponse",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [DTR_QR_PROFILE]},
        "extension": extensions,
        "questionnaire": f"{questionnaire['url']}|{questionnaire['version']}",
        "status": "in-progress",
        "subject": {"reference": patient_ref},
        "authored": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "item": _response_items(questionnaire.get("item") or [], answers),
    }
