"""A clinician's DTR QuestionnaireResponse answers, read as facts about one order.

Which responses count (each refusal is a ``NotUsed`` line the evaluation card shows, never silence):

* a valid QuestionnaireResponse (fhir.resources, like every other resource) about this patient, naming this order
  in a DTR ``qr-context`` extension;
* for one of this service's questionnaires by its FULL version-specific canonical
  (``{base}/fhir/Questionnaire/{id}|{policy version}``): another host, a bare ``id|version`` or another version
  does not count;
* ``completed`` or ``amended``, and ``authored`` no later than now plus ``CLOCK_SKEW`` (a response dated in the
  future would otherwise outrank every later one).

Within them an answer counts only when a clinician gave it: DTR ``information-origin`` source ``manual`` or
``override`` (or no origin at all: form fillers such as LHC-Forms drop answer extensions), and its author -- the
origin's ``author.practitioner`` when given, else the response's ``author`` -- is a Practitioner or
PractitionerRole. A response whose own author is a Patient, RelatedPerson, Device or Organization counts for
nothing, whatever its answers' origins say. ``auto-server`` answers are the payer's own prefill and
``auto-client`` ones the EHR's, both restating chart data the service reads directly. Only the linkIds of the
answered questionnaire count: a form for one pathway never settles another pathway's items. When several
responses answer the same item the latest ``authored`` wins.

A coded diagnosis a clinician answers becomes a documented diagnosis (``with_answers``, evidence: the response)
only when it agrees with the chart or the chart codes no diagnosis the policy names; otherwise the chart's coded
diagnosis decides and ``diagnosis_notes`` says so on the card. Answer text (displays, codes, units) comes from the
client: ``card_text`` strips control characters and escapes Markdown before it reaches any note.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse, QuestionnaireResponseItem

from .codes import CodeTables
from .model import Answer, AnswerValue, Facts, Finding
from .normalize import INVALID_RESOURCE_ERRORS, iter_bundle

INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
CLINICIAN_ORIGINS = frozenset({"manual", "override"})
USED_STATUSES = frozenset({"completed", "amended"})
#: Who may stand behind an answer: a clinician, never the patient, a relative, a device or an organisation.
CLINICIAN_TYPES = frozenset({"Practitioner", "PractitionerRole"})
#: How far ahead of this service's clock an ``authored`` may be (the EHR's clock may run a little fast).
CLOCK_SKEW = timedelta(minutes=5)
#: Longest answer text (a coding's display) a card note repeats.
MAX_ANSWER_TEXT = 120
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Characters with a meaning in Markdown inline text; each is escaped with a backslash (CommonMark: any ASCII
#: punctuation may be). Parentheses stay: without ``[`` a link cannot start.
_MARKDOWN = re.compile(r"[\\`*_{}\[\]#!|<>~]")


@dataclass(frozen=True)
class NotUsed:
    """A QuestionnaireResponse (or part of one) about this patient the decision did not use, and why."""

    ref: str  # "QuestionnaireResponse/<id>"
    why: str  # "no clinician author", "not completed", "for another order" ...

    def line(self) -> str:
        return f"{self.ref} not used: {self.why}"


@dataclass(frozen=True)
class ReadAnswers:
    """Answers by linkId, and what was set aside (for the log and the card)."""

    answers: Mapping[str, Answer] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # QuestionnaireResponse references used
    not_used: tuple[NotUsed, ...] = ()


def card_text(text: str | None, limit: int = MAX_ANSWER_TEXT) -> str:
    """Client text fit for a card note: control and format characters (bidi overrides, newlines) become spaces,
    one line, at most ``limit`` characters, Markdown escaped."""
    printable = "".join(ch if unicodedata.category(ch)[0] not in "CZ" else " " for ch in text or "")
    words = " ".join(printable.split())
    if len(words) > limit:
        words = words[: limit - 1].rstrip() + "…"
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), words)


def _label(raw: Mapping[str, Any]) -> str:
    rid = raw.get("id")
    valid = isinstance(rid, str) and _FHIR_ID.fullmatch(rid)
    return f"QuestionnaireResponse/{rid}" if valid else "A QuestionnaireResponse without a valid id"


def reference_type(reference: str | None) -> str | None:
    """ "Practitioner" from "Practitioner/1", ".../fhir/PractitionerRole/2/_history/3"; None for "#x" or nothing."""
    path = (reference or "").split("/_history/")[0].split("/")
    return path[-2] if len(path) >= 2 and path[-1] else None


def _author_type(response: QuestionnaireResponse) -> str | None:
    author = response.author
    if author is None:
        return None
    return reference_type(author.reference) or (str(author.type) if author.type else None)


def _questionnaire_problem(canonical: str, questionnaires: Mapping[str, frozenset[str]]) -> str | None:
    """Why ``canonical`` is not one of ``questionnaires`` (full version-specific canonicals): None when it is,
    "" when it is nobody's form here at all."""
    if canonical in questionnaires:
        return None
    url = canonical.partition("|")[0]
    ours = {c.partition("|")[0] for c in questionnaires}
    if url in ours:
        return "for another questionnaire version"
    if url.rstrip("/").rsplit("/", 1)[-1] in {u.rsplit("/", 1)[-1] for u in ours}:
        return "questionnaire of another service"
    return ""


def _raw_orders(raw: Mapping[str, Any]) -> set[str]:
    """The orders a (not yet validated) response's qr-context names."""
    found: set[str] = set()
    for ext in raw.get("extension") or () if isinstance(raw.get("extension"), list) else ():
        value = ext.get("valueReference") if isinstance(ext, Mapping) and ext.get("url") == QR_CONTEXT else None
        if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
            found.add(value["reference"])
    return found


def _moment(value: Any) -> datetime | None:
    """``authored`` as an aware datetime (a date is its first instant, UTC); None when absent or partial."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _refusal(
    response: QuestionnaireResponse, *, patient_id: str | None, order_ref: str, problem: str | None, now: datetime
) -> str | None:
    """Why a whole response does not count, in the card's words; None when it may."""
    if patient_id and (response.subject is None or response.subject.reference != f"Patient/{patient_id}"):
        return "about another patient"
    orders = {
        ext.valueReference.reference
        for ext in response.extension or ()
        if ext.url == QR_CONTEXT and ext.valueReference is not None
    }
    if order_ref not in orders:
        return "for another order" if orders else "names no order (no DTR qr-context)"
    if problem:
        return problem
    if response.status not in USED_STATUSES:
        return "not completed"
    authored = _moment(response.authored)
    if authored is not None and authored > now + CLOCK_SKEW:
        return "authored in the future"
    kind = _author_type(response)
    if kind is not None and kind not in CLINICIAN_TYPES:
        return "no clinician author"
    return None


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
        return AnswerValue(number=float(quantity.value), unit=card_text(quantity.code or quantity.unit, 20) or None)
    if answer.valueDecimal is not None or answer.valueInteger is not None:
        return AnswerValue(
            number=float(answer.valueDecimal if answer.valueDecimal is not None else answer.valueInteger)
        )
    if answer.valueString is not None and answer.valueString.strip():
        return AnswerValue(text=card_text(answer.valueString) or None)
    if answer.valueCoding is not None:
        coding = answer.valueCoding
        system = tables.system_name(coding.system)
        return AnswerValue(
            system=system,
            code=card_text(coding.code, 64) or None,
            display=card_text(coding.display) or None,
            tags=_tags(system, coding.code, tables),
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


@dataclass
class _Tally:
    """What one response's answers came to: counted by linkId, and why the others were not."""

    answers: dict[str, Answer] = field(default_factory=dict)
    other_items: int = 0  # answers to linkIds its questionnaire does not have
    not_clinician: int = 0  # a person's answers without a clinician behind them
    prefill: int = 0  # auto-server / auto-client answers


def _tally(response: QuestionnaireResponse, link_ids: frozenset[str], tables: CodeTables) -> _Tally:
    tally = _Tally()
    source = f"QuestionnaireResponse/{response.id}"
    author = response.author.reference if response.author is not None else None
    for item in _items(response.item):
        if not item.linkId or not item.answer:
            continue
        if item.linkId not in link_ids:
            tally.other_items += 1
            continue
        values: list[AnswerValue] = []
        origins: set[str] = set()
        by: str | None = None
        for answer in item.answer:
            origin, who = _origin(answer.extension)
            # No origin (DTR requires one; some form fillers drop answer extensions): the response's author
            # stands behind it. An answer that only repeats the payer's prefill agrees with the chart anyway.
            origin = origin or "manual"
            if origin not in CLINICIAN_ORIGINS:
                tally.prefill += 1
                continue
            who = who or author
            if reference_type(who) not in CLINICIAN_TYPES:
                tally.not_clinician += 1
                continue
            value = _value(answer, tables)
            if value is not None:
                values.append(value)
                origins.add(origin)
                by = by or who
        if values:
            origin = "override" if "override" in origins else "manual"
            tally.answers[item.linkId] = Answer(item.linkId, source, origin, tuple(values), by)
    return tally


def _nothing_counted(tally: _Tally) -> str:
    if tally.not_clinician:
        return "no clinician author"
    if tally.other_items and not tally.prefill:
        return "its answers are to items of another questionnaire"
    if tally.prefill:
        return "only prefilled answers (auto-server or auto-client), none a clinician gave"
    return "no answers"


def read_answers(
    resources: Iterable[Mapping[str, Any]],
    tables: CodeTables,
    *,
    patient_id: str | None,
    order_ref: str,
    questionnaires: Mapping[str, frozenset[str]],
    now: datetime | None = None,
) -> ReadAnswers:
    """Clinician answers about ``order_ref`` from the QuestionnaireResponses among ``resources``.

    ``questionnaires`` maps this service's full version-specific Questionnaire canonicals to their linkIds.
    """
    given = list(resources)
    if not given:  # the usual call: no QuestionnaireResponse in the request, nothing to read
        return ReadAnswers({}, (), ())
    now = now or datetime.now(UTC)
    not_used: list[NotUsed] = []
    chosen: list[tuple[QuestionnaireResponse, frozenset[str]]] = []
    for raw in iter_bundle(given):
        if raw.get("resourceType") != "QuestionnaireResponse":
            continue
        label = _label(raw)
        canonical = raw["questionnaire"] if isinstance(raw.get("questionnaire"), str) else ""
        problem = _questionnaire_problem(canonical, questionnaires)
        if problem == "":
            if order_ref not in _raw_orders(raw):
                continue  # another payer's or another policy's form about something else
            problem = "questionnaire of another service" if canonical else "names no questionnaire"
        try:
            response = QuestionnaireResponse.model_validate(raw)
        except INVALID_RESOURCE_ERRORS as exc:
            not_used.append(NotUsed(label, f"not a valid QuestionnaireResponse ({type(exc).__name__})"))
            continue
        why = _refusal(response, patient_id=patient_id, order_ref=order_ref, problem=problem, now=now)
        if why:
            not_used.append(NotUsed(label, why))
        else:
            chosen.append((response, questionnaires[canonical]))
    earliest = datetime.min.replace(tzinfo=UTC)
    chosen.sort(key=lambda pair: _moment(pair[0].authored) or earliest)
    answers: dict[str, Answer] = {}
    counted: list[str] = []
    for response, link_ids in chosen:  # later responses overwrite earlier ones, item by item
        label = f"QuestionnaireResponse/{response.id}"
        tally = _tally(response, link_ids, tables)
        if not tally.answers:
            not_used.append(NotUsed(label, _nothing_counted(tally)))
            continue
        if tally.other_items:
            not_used.append(NotUsed(label, f"its answers to {tally.other_items} item(s) of another questionnaire"))
        if tally.not_clinician:
            not_used.append(NotUsed(label, f"{tally.not_clinician} answer(s) without a clinician author"))
        answers.update(tally.answers)
        counted.append(label)
    sources = tuple(dict.fromkeys(a.source for a in answers.values()))
    not_used += [
        NotUsed(ref, "every answer in it is superseded by a later response") for ref in counted if ref not in sources
    ]
    return ReadAnswers(answers, sources, tuple(not_used))


# ----------------------------------------------------------------------------- diagnoses


def _answered_diagnoses(
    facts: Facts, read: ReadAnswers, suggested: frozenset[str]
) -> tuple[dict[str, list[Answer]], dict[str, list[Answer]]]:
    """Diagnosis tags the answers code: (heard, set aside). An answered diagnosis is heard when the chart shows
    it or suggests it (``suggested``: the policy's reading, TSC for each of its manifestations) or codes no
    diagnosis the policy names; otherwise the chart's coded diagnosis stands."""
    known = set(facts.diagnoses) | set(facts.possible_diagnoses) | set(facts.generic_suggestions) | suggested
    heard: dict[str, list[Answer]] = {}
    aside: dict[str, list[Answer]] = {}
    for answer in read.answers.values():
        for value in answer.values:
            if value.system not in ("icd-10-cm", "snomed"):
                continue
            # One coding, one diagnosis: it agrees with the chart when any of its tags does (G40.1 is both
            # partial-onset seizures, which TSC suggests, and a seizure disorder).
            target = heard if known.intersection(value.tags) or not facts.diagnoses else aside
            for tag in value.tags:
                target.setdefault(tag, []).append(answer)
    return heard, aside


def with_answers(facts: Facts, read: ReadAnswers, suggested: frozenset[str] = frozenset()) -> Facts:
    """The facts with the clinician's answers, and the diagnoses they code added where the chart allows it
    (``suggested``: diagnosis tags the chart's findings suggest under the policy)."""
    if not read.answers:
        return facts
    heard, _ = _answered_diagnoses(facts, read, suggested)
    diagnoses = dict(facts.diagnoses)
    for tag, answers in heard.items():
        known = diagnoses.get(tag)
        evidence = (*known.evidence, *(a.source for a in answers)) if known else tuple(a.source for a in answers)
        diagnoses[tag] = Finding(tuple(dict.fromkeys(evidence)), known.start if known else None)
    return replace(
        facts,
        answers=dict(read.answers),
        diagnoses=diagnoses,
        diagnosis_documented=facts.diagnosis_documented or bool(heard),
    )


def diagnosis_notes(facts: Facts, read: ReadAnswers, suggested: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """What the card says about diagnoses answered in a questionnaire (``facts``: the chart's, before answers)."""
    heard, aside = _answered_diagnoses(facts, read, suggested)
    notes: list[str] = []
    chart = ", ".join(dict.fromkeys(ref for finding in facts.diagnoses.values() for ref in finding.evidence))
    for answer in dict.fromkeys(a for answers in aside.values() for a in answers):
        notes.append(
            f"The diagnosis answered in {answer.source} ({answer.words()}) is not the one the chart codes "
            f"({chart or 'the order'}): the chart's coded diagnosis decides the pathway; record the diagnosis on the "
            "problem list or correct the answer, and sign again."
        )
    if not facts.diagnoses:
        for answer in dict.fromkeys(a for answers in heard.values() for a in answers):
            notes.append(
                f"No diagnosis the policy names is coded on the chart: the pathway follows the diagnosis answered in "
                f"{answer.source} ({answer.words()})."
            )
    return tuple(notes)
