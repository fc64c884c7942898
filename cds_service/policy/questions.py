"""What a questionnaire asks for each test of the policy file, and how a clinician's answer decides that test.

One table (``ASKS``) serves both directions of Da Vinci DTR, so the questionnaire and the decision can never
drift apart: ``cds_service.dtr.questionnaire`` turns a criterion's leaf tests into Questionnaire items, and the
compiled predicate of each leaf test (``compile_predicate``) reads the answers to those items from
``Facts.answers``.

Only what a chart can decide is asked. What the order itself fixes (the product, the dose) is not: the card's
suggestions fix the order instead. Neither is what only the payer can settle (a label change). Two facts of the
order are shown read-only, filled in from it, because they decide whether another item is asked at all: whether a
brand with a marketed generic is ordered (the generic exception) and whether the dose is within each limit (the
literature alternative). A prior-therapy test whose policy words name an outcome ("failure of") or exceptions
("unless contraindicated or ...") asks which therapies, what they came to and why (``_therapy_outcome``).

How an answer counts (``settle``):

* the chart leaves the test unknown -> the answer decides it;
* the chart agrees -> unchanged, with the answer added to the evidence;
* the chart decided it without evidence (nothing on record, e.g. no companion order) -> the answer decides it,
  and the note says so;
* the chart decided it from coded data (a birth date, a receptor result) and the answer contradicts it -> the
  chart's data stands and the note says that the answer contradicts it, so the prescriber corrects one or the
  other. A questionnaire answer never silently overrides coded chart data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhir_mappings.model import Answer, Facts

from .predicates import (
    CompileEnv,
    Outcome,
    Predicate,
    combine_all,
    her2_positive,
    hormone_receptor_positive,
    member_mg_per_day,
    not_status,
)
from .results import Status

MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN

#: SNOMED CT qualifier values for a receptor result (fhir_mappings/tables/receptor_values.csv, sourced there).
POSITIVE = ("snomed", "10828004", "Positive")
NEGATIVE = ("snomed", "260385009", "Negative")
#: UCUM milligram per day, for the previous-dose question.
MG_PER_DAY = ("http://unitsofmeasure.org", "mg/d", "mg/day")


@dataclass(frozen=True)
class Question:
    """One questionnaire item for a leaf test.

    ``kind`` is the FHIR item type (boolean, choice, date, quantity). A choice lists ``options`` (system name,
    code, display) or draws from a value set of the code tables' ``value_set`` = (kind, tags).
    """

    link_id: str
    kind: str
    text: str
    repeats: bool = False
    options: tuple[tuple[str, str, str], ...] = ()
    value_set: tuple[str, tuple[str, ...]] | None = None
    unit: tuple[str, str, str] | None = None
    #: For a choice that a "then" depends on: the tags whose codes count as "yes" (clear cell histology).
    yes_tags: tuple[str, ...] = ()
    #: What the order decides, shown filled in from the order (``auto-server``): never the clinician's to change.
    read_only: bool = False
    #: This question is asked only when the question ``enabled_by[0]`` has one of the answers ``enabled_by[1]``
    #: (option codes): the reason of a prior-therapy outcome, the exception of a brand order.
    enabled_by: tuple[str, tuple[str, ...]] | None = None


#: How answers (by linkId) decide a leaf, given the chart's outcome and the facts.
Decide = Callable[[Mapping[str, Answer], Outcome, Facts], Outcome]


@dataclass(frozen=True)
class Leaf:
    """A leaf test of a criterion: its predicate, the items that ask about it and how their answers count."""

    link_id: str
    name: str
    fn: Predicate = field(repr=False, compare=False)
    questions: tuple[Question, ...] = ()
    decide: Decide | None = field(default=None, repr=False, compare=False)
    #: linkIds of the questions whose "yes" (or any answer) makes this one relevant (``conditional``'s then).
    enabled_by: tuple[str, ...] = ()
    #: One alternative of an ``any_of``: the criterion is met without it, so its items are not required.
    alternative: bool = False


# ----------------------------------------------------------------------------- settling an answer


def _refs(answers: Mapping[str, Answer]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.source for a in answers.values()))


def _words(answers: Mapping[str, Answer]) -> str:
    return "; ".join(f"{link_id}: {a.words()}" for link_id, a in answers.items())


def settle(
    chart: Outcome, status: Status | None, answers: Mapping[str, Answer], *, not_met_is_absence: bool = False
) -> Outcome:
    """The leaf's outcome once the clinician's answers are heard (see the module docstring).

    ``not_met_is_absence``: the test fails only for want of something on record (a companion or prior therapy
    not found), so the records it cites show what is there, not the opposite of the answer.
    """
    if status is None or not answers:
        return chart
    refs = _refs(answers)
    evidence = tuple(dict.fromkeys((*chart.evidence, *refs)))
    if chart.status is status:
        return chart._replace(evidence=evidence)
    if chart.status is UNKNOWN or not chart.evidence or (not_met_is_absence and chart.status is NOT_MET):
        origin = "/".join(sorted({a.origin for a in answers.values()}))
        note = f"answered by the clinician ({origin}) in {', '.join(refs)}: {_words(answers)}"
        fixes = chart.fixes if status is NOT_MET else ()
        return Outcome(status, evidence, fixes, note=note)
    note = (
        f"the answer in {', '.join(refs)} ({_words(answers)}) contradicts {', '.join(chart.evidence)}; "
        "the chart's coded data decides: correct the record or the answer"
    )
    return chart._replace(note="; ".join(n for n in (chart.note, note) if n))


def _yes_no(answer: Answer | None) -> bool | None:
    if answer is None:
        return None
    values = [v.boolean for v in answer.values if v.boolean is not None]
    return values[0] if values else None


def _tags(answer: Answer | None) -> frozenset[str]:
    if answer is None:
        return frozenset()
    out: set[str] = set()
    for value in answer.values:
        out |= value.tags
    return frozenset(out)


def _first_date(answer: Answer | None) -> date | None:
    return next((v.date for v in answer.values if v.date is not None), None) if answer else None


def _coded(answer: Answer | None) -> bool:
    return answer is not None and any(v.code for v in answer.values)


# ----------------------------------------------------------------------------- per predicate


def _boolean(link_id: str, text: str) -> tuple[tuple[Question, ...], Decide]:
    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        said = _yes_no(answers.get(link_id))
        return settle(chart, None if said is None else (MET if said else NOT_MET), answers)

    return (Question(link_id, "boolean", text),), decide


def _has_codes(env: CompileEnv, kind: str, tags: Sequence[str]) -> bool:
    codes_for = getattr(env.vocabulary, "codes_for", None)
    return bool(codes_for(kind, tags)) if callable(codes_for) else True


def _diagnosis(link_id: str, p: Mapping[str, Any], env: CompileEnv) -> tuple[tuple[Question, ...], Decide]:
    tags = tuple(p.get("tags") or ())
    ruled_out = tuple(p.get("ruled_out_by") or ())
    if not _has_codes(env, "diagnosis", tags):
        # No sourced code for it in the tables (yet): ask yes/no rather than offer an empty list.
        return _boolean(link_id, f"Diagnosis on record: {', '.join(t.replace('-', ' ') for t in tags)}?")
    question = Question(
        link_id, "choice", "Diagnosis on record", value_set=("diagnosis", tags + ruled_out), yes_tags=tags
    )

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        answer = answers.get(link_id)
        if not _coded(answer):
            return chart
        said = _tags(answer)
        status = MET if said & set(tags) and not said & set(ruled_out) else NOT_MET
        return settle(chart, status, answers)

    return (question,), decide


def _indication(link_id: str, p: Mapping[str, Any], env: CompileEnv) -> tuple[tuple[Question, ...], Decide]:
    pathways = tuple(p.get("pathways") or ())
    tags = tuple(dict.fromkeys(t for pid in pathways for t in env.anchors.get(pid, ((), ()))[0]))
    question = Question(link_id, "choice", "Diagnosis treated", value_set=("diagnosis", tags), yes_tags=tags)

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        answer = answers.get(link_id)
        if not _coded(answer):
            return chart
        return settle(chart, MET if _tags(answer) & set(tags) else NOT_MET, answers)

    return (question,), decide


def _receptors(link_id: str, p: Mapping[str, Any], env: CompileEnv) -> tuple[tuple[Question, ...], Decide]:
    wanted: list[tuple[str, str, bool]] = []  # (linkId, receptor, required positive)
    questions: list[Question] = []
    if p.get("hormone_receptor"):
        wanted.append((f"{link_id}/hormone-receptor", "hr", p["hormone_receptor"] == "positive"))
        questions.append(
            Question(
                f"{link_id}/hormone-receptor", "choice", "Hormone receptor (ER/PR) status", options=(POSITIVE, NEGATIVE)
            )
        )
    if p.get("her2"):
        wanted.append((f"{link_id}/her2", "her2", p["her2"] == "positive"))
        questions.append(Question(f"{link_id}/her2", "choice", "HER2 status", options=(POSITIVE, NEGATIVE)))

    readers = {"hr": hormone_receptor_positive, "her2": her2_positive}

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        parts = []
        for part_id, receptor, positive in wanted:
            answer = answers.get(part_id)
            said = {v.code for v in answer.values} if answer is not None else set()
            is_positive = MET if POSITIVE[1] in said else NOT_MET if NEGATIVE[1] in said else None
            # What the answers say, the chart filling in a part not answered; settle() below keeps a coded result
            # the answers contradict, and says so.
            part = readers[receptor](facts.receptors)[0] if is_positive is None else is_positive
            parts.append(Outcome(part if positive else not_status(part)))
        heard = {k: v for k, v in answers.items() if any(k == w[0] for w in wanted)}
        return settle(chart, combine_all(parts).status if heard else None, heard)

    return tuple(questions), decide


def _age(link_id: str, p: Mapping[str, Any], env: CompileEnv) -> tuple[tuple[Question, ...], Decide]:
    years = float(p.get("years") or 0)

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        born = _first_date(answers.get(link_id))
        if born is None:
            return chart
        return settle(chart, MET if completed_years(born, facts.evaluation_date) >= years else NOT_MET, answers)

    return (Question(link_id, "date", "Date of birth"),), decide


def completed_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _medications(
    link_id: str, tags: Sequence[str], text: str, every: bool = False
) -> tuple[tuple[Question, ...], Decide]:
    question = Question(link_id, "choice", text, repeats=True, value_set=("ingredient", tuple(tags)))

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        return _named(answers, link_id, tags, every, chart)

    return (question,), decide


def _named(answers: Mapping[str, Answer], link_id: str, tags: Sequence[str], every: bool, chart: Outcome) -> Outcome:
    """The drugs answered at ``link_id``: any (every) listed one named meets the test; a drug the chart does not
    show is no contradiction (the chart's not-met is only the absence of a record)."""
    answer = answers.get(link_id)
    if not _coded(answer):
        return chart
    said = _tags(answer)
    met = all(t in said for t in tags) if every else bool(said & set(tags))
    return settle(chart, MET if met else NOT_MET, answers, not_met_is_absence=True)


#: What a prior therapy came to, in the policy's words ("failure of ... unless contraindicated or clinically
#: significant adverse effects are experienced"): this project's own code system (no public terminology has
#: these answers as one list); documented in docs/policy-format.md.
THERAPY_OUTCOME_SYSTEM = "https://priorauth-cds.org/fhir/CodeSystem/prior-therapy-outcome"
RECEIVED = (THERAPY_OUTCOME_SYSTEM, "received", "Received")
FAILED = (THERAPY_OUTCOME_SYSTEM, "failed", "Failed (disease progressed or did not respond)")
NOT_FAILED = (THERAPY_OUTCOME_SYSTEM, "not-failed", "Received, did not fail")
EXCEPTIONS = {
    "not-tolerated": (
        THERAPY_OUTCOME_SYSTEM,
        "not-tolerated",
        "Not tolerated (clinically significant adverse effects experienced)",
    ),
    "contraindicated": (THERAPY_OUTCOME_SYSTEM, "contraindicated", "Contraindicated"),
}


def _code(answer: Answer | None) -> str | None:
    return next((v.code for v in answer.values if v.code), None) if answer else None


def _text(answer: Answer | None) -> str | None:
    return next((v.text for v in answer.values if v.text and v.text.strip()), None) if answer else None


def _therapy_outcome(link_id: str, p: Mapping[str, Any], every: bool, text: str) -> tuple[tuple[Question, ...], Decide]:
    """A prior-therapy test whose policy words name an outcome (failure) or exceptions (contraindicated, not
    tolerated): which therapies, what they came to, and the reason. The answers decide it as the policy reads:

    * failed (or, for a "history of" test, received) with a listed therapy named -> met;
    * an exception the policy allows (``unless``) with its reason written -> met, no therapy needed; without a
      reason the answer is not heard (the note says the reason is missing);
    * received without failure, for a "failure of" test -> not met, whatever the chart's history suggests (the
      chart counts a prior therapy as its failure only for want of the reason it stopped);
    * a therapy named without an outcome -> as the chart would read it (a prior therapy stands for its failure).
    """
    tags = tuple(p.get("tags") or ())
    failure = p.get("outcome") == "failure"
    exceptions = tuple(EXCEPTIONS[e] for e in (p.get("unless") or ()) if e in EXCEPTIONS)
    options = ((FAILED, NOT_FAILED) if failure else (RECEIVED,)) + exceptions
    outcome_id, reason_id = f"{link_id}/outcome", f"{link_id}/reason"
    explained = tuple(code for _, code, _ in options if code not in (RECEIVED[1], NOT_FAILED[1]))
    questions = (
        Question(link_id, "choice", text, repeats=True, value_set=("ingredient", tags)),
        Question(outcome_id, "choice", "Outcome of the prior therapy", options=options),
        Question(
            reason_id,
            "string",
            "Reason: how it failed, the adverse effect, or the contraindication",
            enabled_by=(outcome_id, explained),
        ),
    )
    exception_codes = {code for _, code, _ in exceptions}

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        outcome, reason = _code(answers.get(outcome_id)), _text(answers.get(reason_id))
        if outcome in exception_codes:
            if reason is None:
                missing = f"{outcome} answered in {', '.join(_refs(answers))} without a reason: write the reason"
                return chart._replace(note="; ".join(n for n in (chart.note, missing) if n))
            return settle(chart, MET, answers, not_met_is_absence=True)
        if failure and outcome == NOT_FAILED[1]:
            refs = _refs(answers)
            note = f"answered by the clinician in {', '.join(refs)}: {_words(answers)} (the policy requires failure)"
            return Outcome(NOT_MET, tuple(dict.fromkeys((*chart.evidence, *refs))), chart.fixes, note=note)
        return _named(answers, link_id, tags, every, chart)

    return questions, decide


def _groups(p: Mapping[str, Any]) -> list[tuple[str, ...]]:
    groups = []
    for item in p.get("groups") or ():
        if isinstance(item, Mapping):
            groups.append(tuple(item.get("tags") or ()))
        elif isinstance(item, str):
            groups.append((item,))
        else:
            groups.append(tuple(item))
    return groups


def _combined_all(link_id: str, p: Mapping[str, Any], env: CompileEnv) -> tuple[tuple[Question, ...], Decide]:
    groups = _groups(p)
    tags = tuple(dict.fromkeys(t for g in groups for t in g))
    question = Question(
        link_id,
        "choice",
        "Given in combination with (select all that apply)",
        repeats=True,
        value_set=("ingredient", tags),
    )

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        answer = answers.get(link_id)
        if not _coded(answer):
            return chart
        said = _tags(answer) | set(facts.co_medications)
        met = all(said & set(g) for g in groups)
        return settle(chart, MET if met else NOT_MET, answers, not_met_is_absence=True)

    return (question,), decide


def _generic(link_id: str, p: Mapping[str, Any], env: CompileEnv, drug: str) -> tuple[tuple[Question, ...], Decide]:
    text = (
        f"For a brand request: has the member had a contraindication or a clinically significant adverse effect "
        f"with generic {drug}?"
    )

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        said = _yes_no(answers.get(link_id))
        if said is not True or chart.status is not NOT_MET:
            return settle(chart, chart.status if said is not None else None, answers)
        refs = _refs(answers)
        return Outcome(
            UNKNOWN,
            tuple(dict.fromkeys((*chart.evidence, *refs))),
            chart.fixes,
            note=f"Exception to the generic attested in {', '.join(refs)}; the payer reviews it.",
            review="payer",
        )

    brand = Question(
        f"{link_id}/brand",
        "boolean",
        f"Brand {drug} requested while a generic of the same strength and form is marketed (from the order)",
        read_only=True,
    )
    exception = Question(link_id, "boolean", text, enabled_by=(brand.link_id, ()))
    return (brand, exception), decide


def _from_order(link_id: str) -> tuple[tuple[Question, ...], Decide]:
    """A limit the order decides (the dose): shown filled in from the order, never the clinician's to answer."""

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        return chart

    return (Question(link_id, "boolean", "Within this limit (from the order)", read_only=True),), decide


def _started(link_id: str, p: Mapping[str, Any], env: CompileEnv, drug: str) -> tuple[tuple[Question, ...], Decide]:
    days = float(p.get("days") or 0)

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        began = _first_date(answers.get(link_id))
        if began is None:
            return chart
        return settle(chart, MET if (facts.evaluation_date - began).days >= days else NOT_MET, answers)

    return (Question(link_id, "date", f"Date {drug} therapy started"),), decide


def _previous_dose(link_id: str, increase: bool) -> tuple[tuple[Question, ...], Decide]:
    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        answer = answers.get(link_id)
        old = next((v.number for v in answer.values if v.number is not None), None) if answer else None
        new = member_mg_per_day(facts)
        if old is None or new is None:
            return chart
        return settle(chart, MET if (new > old) == increase else NOT_MET, answers)

    question = Question(link_id, "quantity", "Previous daily dose", unit=MG_PER_DAY)
    return (question,), decide


def _procedure(link_id: str, p: Mapping[str, Any]) -> tuple[tuple[Question, ...], Decide]:
    """A date: on or before the order date the procedure was received (met); after it, it is scheduled (met only
    where the criterion accepts scheduled procedures, else the chart's answer stands)."""
    tags = tuple(p.get("tags") or ())
    scheduled = p.get("scheduled") is True
    names = " or ".join(t.replace("-", " ") for t in tags)
    text = f"Date the {names} was performed" + (" or is scheduled" if scheduled else "")

    def decide(answers: Mapping[str, Answer], chart: Outcome, facts: Facts) -> Outcome:
        when = _first_date(answers.get(link_id))
        if when is None or (when > facts.evaluation_date and not scheduled):
            return chart
        return settle(chart, MET, answers, not_met_is_absence=True)

    return (Question(link_id, "date", text),), decide


def _documented(link_id: str, p: Mapping[str, Any]) -> tuple[tuple[Question, ...], Decide]:
    what = str(p.get("what") or "this")
    return _boolean(link_id, f"Documented in the record (and sent with the request): {what}?")


_STEP = re.compile(r"\.(?:all_of|any_of)\[(\d+)\]|\.(if|then|not)\b")


def _lab_bound(raw: Any) -> str:
    """ "above 0.1 ng/mL" from a bound mapping (empty when it has none)."""
    if not isinstance(raw, Mapping):
        return ""
    ops = [(op, raw[op]) for op in ("above", "at_least", "below", "at_most") if op in raw]
    return f"{ops[0][0].replace('_', ' ')} {ops[0][1]} {raw.get('unit', '')}".strip() if ops else ""


def _lab_text(name: str, p: Mapping[str, Any], env: CompileEnv) -> str:
    """The yes/no question of a lab test, in the criterion's own numbers ("Latest PSA within 365 days above 0.1
    ng/mL?")."""
    shown = getattr(env.vocabulary, "lab_test_display", {})
    tests = " or ".join(str(shown.get(t, t)) if isinstance(shown, Mapping) else str(t) for t in p.get("tests") or ())
    window = f" within the last {p['within_days']} days" if p.get("within_days") else ""
    if name == "lab_trend":
        bound = _lab_bound(p)
        each = f", each {bound}" if bound else ""
        return f"Has {tests} risen over the latest {p.get('rising')} results{window}{each}?"
    if p.get("latest") is not None:
        return f"Is the latest {tests} result{window} {_lab_bound(p.get('latest'))}?"
    return f"Are at least {p.get('at_least')} {tests} results{window} {_lab_bound(p.get('each'))}?"


def link_id_of(where: str) -> str:
    """A leaf's questionnaire linkId from its place in the policy file: the criterion id, then one step per
    combinator ("I.A.2.all_of[1]" -> "I.A.2/2", "I.C.6.then" -> "I.C.6/then")."""
    return _STEP.sub(lambda m: f"/{int(m.group(1)) + 1}" if m.group(1) else f"/{m.group(2)}", where)


def leaf(name: str, params: Any, where: str, env: CompileEnv, fn: Predicate) -> Leaf:
    """The leaf test at ``where`` with what a questionnaire asks about it (linkIds from ``link_id_of``); none
    for tests the order itself decides about the product or only the payer can (a label change). A dose limit is
    shown read-only, filled in from the order, so that the alternative it makes unnecessary can be disabled."""
    p: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
    raw_where, where = where, link_id_of(where)
    drug = getattr(env, "drug_name", None) or "the drug"
    asks: tuple[tuple[Question, ...], Decide] | None
    if name == "diagnosis_in":
        asks = _diagnosis(where, p, env)
    elif name == "indication_of":
        asks = _indication(where, p, env)
    elif name == "disease_extent":
        asks = _boolean(
            where, "Is the disease at the extent this criterion requires (e.g. metastatic, advanced or recurrent)?"
        )
    elif name == "receptor_status":
        asks = _receptors(where, p, env)
    elif name == "prescriber_specialty_in":
        specialties = " or ".join(p.get("specialties") or ())
        asks = _boolean(where, f"Prescribed by or in consultation with a specialist in {specialties}?")
    elif name == "age_at_least":
        asks = _age(where, p, env)
    elif name in ("history_of_any", "history_of_all") and (p.get("unless") or p.get("outcome") == "failure"):
        what = "failed or could not be used" if p.get("outcome") == "failure" else "received or could not be used"
        asks = _therapy_outcome(where, p, name == "history_of_all", f"Prior therapies {what} (select all that apply)")
    elif name in ("history_of_any", "history_of_all"):
        asks = _medications(
            where,
            tuple(p.get("tags") or ()),
            "Prior therapies received (select all that apply)",
            name == "history_of_all",
        )
    elif name == "combined_with_any":
        asks = _medications(where, tuple(p.get("tags") or ()), "Given in combination with (select all that apply)")
    elif name == "combined_with_all":
        asks = _combined_all(where, p, env)
    elif name == "combined_with_none":
        asks = _boolean(where, "Prescribed as single-agent therapy (no other anticancer drug given with it)?")
    elif name == "generic_if_available":
        asks = _generic(where, p, env, drug)
    elif name == "continued_therapy_days":
        asks = _started(where, p, env, drug)
    elif name == "responding_to_therapy":
        asks = _boolean(where, f"Is the member responding positively to {drug} (e.g. stable or improved disease)?")
    elif name in ("dose_increase", "not_dose_increase"):
        asks = _previous_dose(where, name == "dose_increase")
    elif name in ("documented", "qualifier_documented"):
        asks = _documented(where, p)
    elif name == "procedure_in":
        asks = _procedure(where, p)
    elif name in ("lab_value", "lab_trend"):
        asks = _boolean(where, _lab_text(name, p, env))
    elif name == "dose_within":
        asks = _from_order(where)
    else:  # product_in, preferred_alternative, payer_review, diagnosis_within_days: not a question for the chart
        asks = None
    alternative = ".any_of[" in raw_where
    if asks is None:
        return Leaf(where, name, fn, alternative=alternative)
    return Leaf(where, name, fn, asks[0], asks[1], alternative=alternative)


#: The chart outcomes of the asked leaf tests one hook call's evaluation computed, for the DTR prefill to read
#: instead of running each test again: (leaf predicate, id of the facts) -> (those facts, outcome). Set only inside
#: ``remembered_outcomes`` (one order of one call), never shared between calls.
_REMEMBERED: ContextVar[dict[tuple[Predicate, int], tuple[Facts, Outcome]] | None] = ContextVar(
    "priorauth_cds_leaf_outcomes", default=None
)


@contextmanager
def remembered_outcomes() -> Iterator[None]:
    """Remember the asked leaf tests' chart outcomes while one order is evaluated and offered DTR."""
    token = _REMEMBERED.set({})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def chart_outcome(leaf: Leaf, facts: Facts) -> Outcome:
    """``leaf.fn(facts, ())``: remembered when this call's evaluation ran the test on these very facts (a leaf test
    never reads sub-item outcomes, so the evaluation's call is the same call)."""
    remembered = _REMEMBERED.get()
    hit = remembered.get((leaf.fn, id(facts))) if remembered is not None else None
    if hit is not None and hit[0] is facts:
        return hit[1]
    return leaf.fn(facts, ())


def answerable(leaf: Leaf) -> Predicate:
    """The leaf's predicate, reading the clinician's answers to its items when there are any."""
    fn, decide = leaf.fn, leaf.decide
    if decide is None:
        return fn
    link_ids = tuple(q.link_id for q in leaf.questions)

    def answered(facts: Facts, subs: tuple[Outcome, ...]) -> Outcome:
        chart = fn(facts, subs)
        remembered = _REMEMBERED.get()
        if remembered is not None:
            remembered[fn, id(facts)] = (facts, chart)
        if not facts.answers:
            return chart
        heard = {link_id: facts.answers[link_id] for link_id in link_ids if link_id in facts.answers}
        return decide(heard, chart, facts) if heard else chart

    return answered
