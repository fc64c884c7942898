"""A clinician's DTR QuestionnaireResponse answers, read as facts about one order.

Which responses count: completed or amended, about this patient, for one of the pack's questionnaires at the
policy's current version (``questionnaire`` = ``.../Questionnaire/{id}|{version}``), and naming this order in
a DTR ``qr-context`` extension. Each is validated with fhir.resources like every other resource; an invalid one
is reported and dropped. Within them only answers a person gave (DTR ``information-origin`` source ``manual``
or ``override``; an answer with no origin when the response's ``author`` is a practitioner) are evidence: ``auto-server`` answers are the payer's own prefill and ``auto-client`` ones the
EHR's, both restating chart data the service reads directly. When several responses answer the same item the
latest ``authored`` wins.

A coded diagnosis a clinician answers is a documented diagnosis: ``with_answers`` adds its tags to the facts'
diagnoses (evidence: the response) so that pathway selection hears it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse, QuestionnaireResponseItem

from .codes import CodeTables
from .model import Answer, AnswerValue, Facts, Finding
from .normalize import INVALID_RESOURCE_ERRORS, iter_bundle

INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
CLINICIAN_ORIGINS = frozenset({"manual", "override"})
USED_STATUSES = frozenset({"completed", "amended"})


@dataclass(frozen=True)
class ReadAnswers:
    """Answers by linkId, and what was set aside (for the log and the card's notes)."""

    answers: Mapping[str, Answer] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # QuestionnaireResponse references used
    ignored: tuple[str, ...] = ()  # "QuestionnaireResponse/x: why"


def _questionnaire_key(canonical: str | None) -> tuple[str, str | None]:
    """("cp-phar-63-i-a", "02.25") from ".../Questionnaire/cp-phar-63-i-a|02.25"."""
    url, _, version = (canonical or "").partition("|")
    return url.rstrip("/").rsplit("/", 1)[-1], version or None


def _origin(extensions: Iterable[Any] | None) -> tuple[str | None, str | None]:
    for ext in extensions or ():
        if ext.url != INFORMATION_ORIGIN:
            continue
        source = author = None
        for part in ext.extension or ():
            if part.url == "source":
                source = part.valueCode
            elif part.url == "author":
                for sub in part.extension or ():
                    if sub.url == "practitioner" and sub.valueReference is not None:
                        author = sub.valueReference.reference
        return source, author
    return None, None


def _clinician_author(response: QuestionnaireResponse) -> str | None:
    reference = response.author.reference if response.author is not None else None
    if reference and reference.split("/")[0] in ("Practitioner", "PractitionerRole"):
        return reference
    return None


def _value(answer: Any, tables: CodeTables) -> AnswerValue | None:
    if answer.valueBoolean is not None:
        return AnswerValue(boolean=answer.valueBoolean)
    if answer.valueDate is not None:
        return AnswerValue(date=answer.valueDate)
    if answer.valueDateTime is not None:
        moment = answer.valueDateTime
        return AnswerValue(date=moment.date() if isinstance(moment, datetime) else moment)
    if answer.valueQuantity is not None and answer.valueQuantity.value is not None:
        quantity = answer.valueQuantity
        return AnswerValue(number=float(quantity.value), unit=quantity.code or quantity.unit)
    if answer.valueDecimal is not None or answer.valueInteger is not None:
        return AnswerValue(
            number=float(answer.valueDecimal if answer.valueDecimal is not None else answer.valueInteger)
        )
    if answer.valueCoding is not None:
        coding = answer.valueCoding
        system = tables.system_name(coding.system)
        return AnswerValue(
            system=system, code=coding.code, display=coding.display, tags=_tags(system, coding.code, tables)
        )
    return None


def _tags(system: str | None, code: str | None, tables: CodeTables) -> frozenset[str]:
    if system == "rxnorm":
        return tables.with_groups(tables.ingredient_tags_for_code(code))
    tags: set[str] = set()
    for match in tables.condition_matches(system, code):
        if not match.possible:
            tags |= match.tags
    return frozenset(tags)


def _items(items: Iterable[QuestionnaireResponseItem] | None) -> Iterable[QuestionnaireResponseItem]:
    for item in items or ():
        yield item
        yield from _items(item.item)
        for answer in item.answer or ():
            yield from _items(answer.item)


def read_answers(
    resources: Iterable[Mapping[str, Any]],
    tables: CodeTables,
    *,
    patient_id: str | None,
    order_ref: str,
    questionnaires: Mapping[str, str],
) -> ReadAnswers:
    """Clinician answers about ``order_ref`` from the QuestionnaireResponses among ``resources``.

    ``questionnaires`` maps the pack's questionnaire ids to the policy version they must be answered at.
    """
    ignored: list[str] = []
    chosen: list[QuestionnaireResponse] = []
    for raw in iter_bundle(list(resources)):
        if raw.get("resourceType") != "QuestionnaireResponse":
            continue
        label = f"QuestionnaireResponse/{raw.get('id')}"
        qid, version = _questionnaire_key(
            raw.get("questionnaire") if isinstance(raw.get("questionnaire"), str) else None
        )
        if qid not in questionnaires:
            continue  # another payer's or another policy's form
        try:
            response = QuestionnaireResponse.model_validate(raw)
        except INVALID_RESOURCE_ERRORS as exc:
            ignored.append(f"{label}: not a valid QuestionnaireResponse ({type(exc).__name__})")
            continue
        if response.status not in USED_STATUSES:
            ignored.append(f"{label}: status {response.status} (only completed or amended answers count)")
        elif version != questionnaires[qid]:
            ignored.append(
                f"{label}: answers version {version} of the questionnaire, the policy is {questionnaires[qid]}"
            )
        elif patient_id and (response.subject is None or response.subject.reference != f"Patient/{patient_id}"):
            ignored.append(f"{label}: about another patient")
        elif order_ref not in {
            ext.valueReference.reference
            for ext in response.extension or ()
            if ext.url == QR_CONTEXT and ext.valueReference is not None
        }:
            ignored.append(f"{label}: its qr-context does not name this order")
        else:
            chosen.append(response)
    chosen.sort(key=lambda r: str(r.authored or ""))
    answers: dict[str, Answer] = {}
    for response in chosen:  # later responses overwrite earlier ones, item by item
        source = f"QuestionnaireResponse/{response.id}"
        clinician = _clinician_author(response)
        for item in _items(response.item):
            values: list[AnswerValue] = []
            origins: set[str] = set()
            author = None
            for answer in item.answer or ():
                origin, who = _origin(answer.extension)
                if origin is None and clinician is not None:
                    # No information-origin (DTR requires one; some form fillers drop answer extensions): the
                    # response's practitioner author stands behind it. An answer that only repeats the payer's
                    # prefill agrees with the chart and changes nothing.
                    origin, who = "manual", clinician
                if origin not in CLINICIAN_ORIGINS:
                    continue
                value = _value(answer, tables)
                if value is not None:
                    values.append(value)
                    origins.add(origin or "manual")
                    author = author or who
            if values and item.linkId:
                answers[item.linkId] = Answer(
                    item.linkId, source, "override" if "override" in origins else "manual", tuple(values), author
                )
    sources = tuple(dict.fromkeys(a.source for a in answers.values()))
    return ReadAnswers(answers, sources, tuple(ignored))


def with_answers(facts: Facts, read: ReadAnswers) -> Facts:
    """The facts with the clinician's answers, and the diagnoses they code added to the documented ones."""
    if not read.answers:
        return facts
    diagnoses = dict(facts.diagnoses)
    for answer in read.answers.values():
        for value in answer.values:
            if value.system in ("icd-10-cm", "snomed"):
                for tag in value.tags:
                    known = diagnoses.get(tag)
                    evidence = (*known.evidence, answer.source) if known else (answer.source,)
                    diagnoses[tag] = Finding(tuple(dict.fromkeys(evidence)), known.start if known else None)
    return replace(facts, answers=dict(read.answers), diagnoses=diagnoses, diagnosis_documented=True)
