"""The predicate vocabulary of declarative drug policies: three-valued tests over ``Facts``.

A policy file names each criterion's test as ``{predicate_name: {parameter: value}}``. This module turns
one such spec into a plain callable once, at start-up (``compile_predicate``), checking every parameter
and every tag against the code tables' vocabularies; evaluation is then a pure function of the facts.

Three values, never guesses: a fact the record does not show is ``unknown``; only facts the request
itself fixes (product, dose, companion orders, age) or that the record states are decided. Combinators
follow Kleene logic. docs/policy-format.md is the reader's guide to every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, NamedTuple, Protocol

from fhir_mappings.codes import dose_forms
from fhir_mappings.model import Dose, Facts, Finding, Product

from .results import Fix, Status

MET, NOT_MET, UNKNOWN, NOT_APPLICABLE = Status.MET, Status.NOT_MET, Status.UNKNOWN, Status.NOT_APPLICABLE


class PolicyError(Exception):
    """The policy file cannot be used (bad YAML, unknown predicate or tag, malformed ids): refuse to start."""


class Outcome(NamedTuple):
    """A predicate's answer: its status, the resources that decided it, and remedies the card can apply.

    A named tuple rather than a dataclass: one is built per predicate per pathway, so construction cost counts.
    """

    status: Status
    evidence: tuple[str, ...] = ()
    fixes: tuple[Fix, ...] = ()
    #: Words for the card beside the status ("30 mg/day exceeds 20 mg/day", "exception documented ...").
    note: str | None = None
    #: Not-met only because a diagnosis this branch is for is not on record: the branch does not apply.
    gate: bool = False
    #: What is missing, in a few words a prescriber can act on ("prior ripretinib (Qinlock)").
    gaps: tuple[str, ...] = ()
    #: "payer" when only the payer can settle it (a label change, a documented exception), not the chart.
    review: str | None = None
    #: The note quotes the chart text that met the test: the card shows it even when the criterion is met.
    quoted: bool = False


#: A compiled predicate: the facts and the outcomes of the criterion's own sub-items (policy order).
Predicate = Callable[[Facts, tuple[Outcome, ...]], Outcome]


class Vocabulary(Protocol):
    """The tag vocabularies of the code tables (``fhir_mappings.codes.CodeTables`` satisfies this)."""

    @property
    def diagnosis_tags(self) -> Collection[str]: ...

    @property
    def ingredient_tags(self) -> Collection[str]: ...

    @property
    def specialty_tags(self) -> Collection[str]: ...

    @property
    def receptor_tags(self) -> Collection[str]: ...


@dataclass(frozen=True)
class CompileEnv:
    """What compiling a predicate may consult: tag vocabularies and the pathways' diagnosis anchors."""

    vocabulary: Vocabulary
    #: Tags the policy may name although the code tables do not emit them yet (always absent until they do).
    provisional: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Pathway id -> (diagnosis tags that make it apply, tags that only suggest it), for ``indication_of``.
    anchors: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    #: The pack's product families -> their names (policy file ``drug.families``).
    families: Mapping[str, str] = field(default_factory=dict)
    #: The drug as questionnaires name it (policy file ``drug.name``).
    drug_name: str = "the drug"
    #: Pathway id -> diagnoses that must be on record too for that indication (``applies_when.also_requires``).
    requirements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Compiled:
    """A compiled predicate and whether it reads the criterion's sub-items."""

    fn: Predicate
    uses_sub_items: bool = False
    #: The leaf tests inside, in order, with what a DTR questionnaire asks about each (``questions.Leaf``).
    leaves: tuple[Any, ...] = ()
    #: "any" or "all" for ``{sub_items: ...}``: how the criterion's sub-items combine.
    sub_items: str | None = None
    #: The parts of an ``all_of`` (``fn`` is ``combine_all`` of theirs): one not met decides it, for a caller that
    #: only needs to know whether it can hold (``engine.notes_for``).
    all_of: tuple[Predicate, ...] = ()


# ----------------------------------------------------------------------------- Kleene combination


def _merge(groups: Iterable[Iterable[Any]]) -> tuple[Any, ...]:
    """Concatenate in order, dropping repeats (evidence and fixes keep policy order); one ``dict.fromkeys`` over the
    chained groups rather than one per group."""
    return tuple(dict.fromkeys(_chain(groups)))


_chain = chain.from_iterable


def all_of_status(statuses: Iterable[Status]) -> Status:
    """Kleene AND: not-met if any is not-met, else unknown if any is unknown, else met (met when empty).
    Not-applicable parts are left out; all of them not-applicable is not-applicable."""
    result, seen, skipped = MET, False, False
    for status in statuses:
        if status is NOT_APPLICABLE:
            skipped = True
            continue
        seen = True
        if status is NOT_MET:
            return NOT_MET
        if status is UNKNOWN:
            result = UNKNOWN
    return NOT_APPLICABLE if skipped and not seen else result


def any_of_status(statuses: Iterable[Status]) -> Status:
    """Kleene OR: met if any is met, else unknown if any is unknown, else not-met (not-met when empty).
    Not-applicable parts are left out; all of them not-applicable is not-applicable."""
    result, seen, skipped = NOT_MET, False, False
    for status in statuses:
        if status is NOT_APPLICABLE:
            skipped = True
            continue
        seen = True
        if status is MET:
            return MET
        if status is UNKNOWN:
            result = UNKNOWN
    return NOT_APPLICABLE if skipped and not seen else result


def not_status(status: Status) -> Status:
    """Kleene NOT: unknown stays unknown (and not-applicable stays not-applicable)."""
    return {MET: NOT_MET, NOT_MET: MET, UNKNOWN: UNKNOWN, NOT_APPLICABLE: NOT_APPLICABLE}[status]


def _deciding(outcomes: Sequence[Outcome], all_: bool) -> tuple[Status, list[Outcome]]:
    """The Kleene result and the children whose status equals it, in one pass."""
    met: list[Outcome] = []
    not_met: list[Outcome] = []
    unknown: list[Outcome] = []
    skipped: list[Outcome] = []
    for o in outcomes:
        (
            met
            if o.status is MET
            else not_met
            if o.status is NOT_MET
            else skipped
            if o.status is NOT_APPLICABLE
            else unknown
        ).append(o)
    if skipped and not (met or not_met or unknown):
        return NOT_APPLICABLE, skipped
    if all_:
        if not_met:
            return NOT_MET, not_met
        return (UNKNOWN, unknown) if unknown else (MET, met)
    if met:
        return MET, met
    return (UNKNOWN, unknown) if unknown else (NOT_MET, not_met)


def combine_all(outcomes: Sequence[Outcome]) -> Outcome:
    """AND of outcomes; evidence from the children that decided it.

    Fixes travel up only when applying them could satisfy the whole: a not-met child without a fix
    (say, an absent diagnosis) means no one-click remedy exists for the combination.
    """
    status, deciding = _deciding(outcomes, True)
    evidence = _merge([o.evidence for o in deciding])
    if status is MET:
        return Outcome(status, evidence, (), *_quoted(deciding))
    extra = _carried(status, deciding, all_=True)
    if status is NOT_MET and any(not o.fixes for o in deciding):
        return Outcome(status, evidence, (), *extra)
    return Outcome(status, evidence, _merge([o.fixes for o in deciding]), *extra)


def _quoted(deciding: Sequence[Outcome]) -> tuple[str | None, bool, tuple[str, ...], str | None, bool]:
    """A met combination keeps the chart quotes its met children were decided by (and nothing else)."""
    quotes = [o.note for o in deciding if o.quoted and o.note]
    if not quotes:  # the usual case: nothing quoted, nothing to join
        return _UNQUOTED
    return ("; ".join(dict.fromkeys(quotes)) or None), False, (), None, True


_UNQUOTED: tuple[str | None, bool, tuple[str, ...], str | None, bool] = (None, False, (), None, False)


def _carried(
    status: Status, deciding: Sequence[Outcome], all_: bool = False
) -> tuple[str | None, bool, tuple[str, ...], str | None]:
    """(note, gate, gaps, review) a combination inherits from the children that decided it.

    A branch is inapplicable (gate) when, for "all", one of its conditions is an absent diagnosis; for "any",
    when every alternative is.
    """
    gated = [o.gate for o in deciding]
    gate = status is NOT_MET and bool(deciding) and (any(gated) if all_ else all(gated))
    gaps = _merge([o.gaps for o in deciding]) if status is UNKNOWN else ()
    review = "payer" if status is UNKNOWN and deciding and all(o.review == "payer" for o in deciding) else None
    notes = [o.note for o in deciding if o.note and not o.gate] if status is not MET else []
    return ("; ".join(dict.fromkeys(notes)) or None), gate, gaps, review


def combine_any(outcomes: Sequence[Outcome]) -> Outcome:
    """OR of outcomes; evidence from the children that decided it, fixes from each way still open."""
    status, deciding = _deciding(outcomes, False)
    evidence = _merge([o.evidence for o in deciding])
    if status is MET:
        return Outcome(status, evidence, (), *_quoted(deciding))
    return Outcome(status, evidence, _merge([o.fixes for o in deciding]), *_carried(status, deciding))


def negate(outcome: Outcome) -> Outcome:
    """NOT; a remedy for the inner test is no remedy for its negation (its note still explains it)."""
    return Outcome(not_status(outcome.status), outcome.evidence, note=outcome.note)


def implies(condition: Outcome, then: Outcome) -> Outcome:
    """``if condition then then``: Kleene implication, i.e. ``any_of(not condition, then)``."""
    return combine_any((negate(condition), then))


# ----------------------------------------------------------------------------- parameter checking


class Params:
    """Typed access to one predicate's parameters; anything left unread is an error (catches typos)."""

    def __init__(self, raw: Any, where: str, name: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{where}: parameters of {name!r} must be a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.where = f"{where}: {name}"
        self.read: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.read.add(key)
        if key not in self.raw:
            if required:
                raise PolicyError(f"{self.where}: missing parameter {key!r}")
            return None
        return self.raw[key]

    def strings(self, key: str, required: bool = True) -> tuple[str, ...] | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise PolicyError(f"{self.where}: {key!r} must be a non-empty list of strings")
        return tuple(value)

    def string(self, key: str, required: bool = True, choices: Collection[str] | None = None) -> str | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise PolicyError(f"{self.where}: {key!r} must be a non-empty string")
        if choices is not None and value not in choices:
            raise PolicyError(f"{self.where}: {key!r} must be one of {sorted(choices)}, got {value!r}")
        return value

    def number(self, key: str, required: bool = True) -> float | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise PolicyError(f"{self.where}: {key!r} must be a non-negative number")
        return float(value)

    def boolean(self, key: str) -> bool:
        """An optional true/false flag (false when absent)."""
        value = self._get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise PolicyError(f"{self.where}: {key!r} must be true or false")
        return value

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise PolicyError(f"{self.where}: {key!r} must be a mapping")
        return value

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.read)
        if extra:
            raise PolicyError(f"{self.where}: unknown parameter(s) {extra}")


def _known_tags(vocabulary: Vocabulary, kind: str) -> frozenset[str]:
    """One vocabulary; medication group tags count as ingredient tags wherever the tables keep them apart."""
    if kind == "ingredient":
        groups: Collection[str] = getattr(vocabulary, "medication_group_tags", ())
        return frozenset(vocabulary.ingredient_tags) | frozenset(groups)
    return frozenset(getattr(vocabulary, f"{kind}_tags"))


def check_tags(tags: Iterable[str], kind: str, env: CompileEnv, where: str) -> None:
    """Refuse a tag the code tables do not define (unless the policy declared it provisional)."""
    known = _known_tags(env.vocabulary, kind)
    allowed = env.provisional.get(kind, frozenset())
    unknown = [t for t in tags if t not in known and t not in allowed]
    if unknown:
        raise PolicyError(f"{where}: unknown {kind} tag(s) {unknown}")


# ----------------------------------------------------------------------------- leaf predicates


def _findings(found: Mapping[str, Finding], tags: Iterable[str]) -> list[Finding]:
    return [found[t] for t in tags if t in found]


def _evidence(findings: Iterable[Finding]) -> tuple[str, ...]:
    return _merge(f.evidence for f in findings)


CONDITION_KEYS = frozenset({"conditions"})
MEDICATION_KEYS = frozenset({"medicationRequests", "medicationStatements", "medicationDispenses"})
ALLERGY_KEYS = frozenset({"allergies"})
PROCEDURE_KEYS = frozenset({"procedures"})


def _missing(facts: Facts, keys: frozenset[str]) -> bool:
    """True when data that could decide a criterion by its absence could not be obtained."""
    return not facts.unavailable.isdisjoint(keys)


def _product_in(p: Params, env: CompileEnv) -> Predicate:
    """Met when the ordered product's family is listed; unknown when the family cannot be told."""
    names = p.strings("families")
    assert names is not None
    try:
        families = frozenset(_family(env, n, p.where) for n in names)
    except ValueError as exc:
        raise PolicyError(f"{p.where}: {exc}") from exc

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        family = facts.product.family
        if family is None:
            return Outcome(UNKNOWN, (facts.order_ref,))
        return Outcome(MET if family in families else NOT_MET, (facts.order_ref,))

    return fn


def _diagnosis_in(p: Params, env: CompileEnv) -> Predicate:
    """Met when a tag is a diagnosis; unknown when only possible; ``absent`` says what absence means."""
    tags = p.strings("tags")
    ruled_out_by = p.strings("ruled_out_by", required=False) or ()
    absent = Status(p.string("absent", required=False, choices=("unknown", "not-met")) or "unknown")
    assert tags is not None
    check_tags((*tags, *ruled_out_by), "diagnosis", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        confirmed = _findings(facts.diagnoses, tags)
        if confirmed:
            return Outcome(MET, _evidence(confirmed))
        disputed = conflict_outcome(facts, tags)
        if disputed is not None:
            return disputed
        ruling_out = _findings(facts.diagnoses, ruled_out_by)
        if ruling_out:
            return Outcome(NOT_MET, _evidence(ruling_out))
        possible = _findings(facts.possible_diagnoses, tags)
        if possible:
            return Outcome(UNKNOWN, _evidence(possible))
        if _missing(facts, CONDITION_KEYS):
            return Outcome(UNKNOWN)
        return Outcome(absent, gate=absent is NOT_MET)

    return fn


def conflict_outcome(facts: Facts, tags: Iterable[str]) -> Outcome | None:
    """Unknown, naming the codings that disagree, when a tag asked about is in conflict (exclusive_tags.csv)."""
    if not facts.diagnosis_conflicts:
        return None
    conflicts = _merge(facts.diagnosis_conflicts.get(t, ()) for t in tags)
    if not conflicts:
        return None
    return Outcome(
        UNKNOWN,
        _merge(c.evidence for c in conflicts),
        note="; ".join(dict.fromkeys(c.note for c in conflicts)),
        gaps=("a diagnosis the codes agree on",),
    )


def _qualifier_documented(p: Params, env: CompileEnv) -> Predicate:
    """Met when a listed phrase documents the qualifier on a Condition of the named diagnoses (its sentence is
    quoted); unknown otherwise, and unknown with both quoted when a contrary phrase disputes it. Never not-met:
    text does not rule a criterion out."""
    qualifier = p.string("qualifier")
    on = frozenset(p.strings("about", required=False) or ())
    what = p.string("what")
    check_tags(on, "diagnosis", env, p.where)
    # Code tables declare their qualifiers; a bare tag vocabulary (tests, tools) does not check them.
    known: Collection[str] | None = getattr(env.vocabulary, "qualifier_tags", None)
    if known is not None and qualifier not in known:
        raise PolicyError(f"{p.where}: unknown qualifier {qualifier!r} (qualifier_phrases.csv lists {sorted(known)})")

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = [q for q in facts.qualifiers if q.qualifier == qualifier and (not on or q.condition_tags & on)]
        affirmed = [q for q in found if not q.contrary]
        contrary = [q for q in found if q.contrary]
        refs = tuple(dict.fromkeys(q.ref for q in found))
        if contrary:
            quotes = "; ".join(dict.fromkeys(q.quote for q in [*affirmed, *contrary]))
            return Outcome(UNKNOWN, refs, note=f"the notes disagree or deny it: {quotes}", gaps=(str(what),))
        if affirmed:
            return Outcome(MET, refs, note="; ".join(dict.fromkeys(q.quote for q in affirmed)), quoted=True)
        return Outcome(UNKNOWN, gaps=(str(what),))

    return fn


def _diagnosis_within_days(p: Params, env: CompileEnv) -> Predicate:
    """Met when a listed diagnosis started fewer than ``days`` days before the evaluation date (for label notes)."""
    tags = p.strings("tags")
    days = p.number("days")
    assert tags is not None and days is not None
    check_tags(tags, "diagnosis", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        # A received procedure's date is when it happened: it wins over a Condition's onset or recorded date.
        dated = {t: f for t in tags if (f := facts.procedures.get(t)) is not None and f.start is not None}
        findings = list(dated.values()) + [f for t in tags if t not in dated for f in _findings(facts.diagnoses, (t,))]
        recent = [f for f in findings if f.start is not None and 0 <= (facts.evaluation_date - f.start).days < days]
        return Outcome(MET, _evidence(recent)) if recent else Outcome(NOT_MET)

    return fn


def _procedure_in(p: Params, env: CompileEnv) -> Predicate:
    """Met when a Procedure showing a listed tag was received (completed, performed by the evaluation date) or,
    with ``scheduled: true``, is scheduled (preparation / in-progress / a future performed date); ``absent`` says
    what no such Procedure means (unknown by default: the chart may record it as a Condition or in notes)."""
    tags = p.strings("tags")
    absent = Status(p.string("absent", required=False, choices=("unknown", "not-met")) or "unknown")
    accepts_scheduled = p.boolean("scheduled")
    assert tags is not None
    check_tags(tags, "diagnosis", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        received = _findings(facts.procedures, tags)
        if received:
            return Outcome(MET, _evidence(received))
        planned = _findings(facts.scheduled_procedures, tags)
        if planned and accepts_scheduled:
            dates = sorted(f.start.isoformat() for f in planned if f.start is not None)
            when = f" for {dates[0]}" if dates else ""
            return Outcome(MET, _evidence(planned), note=f"scheduled{when} ({', '.join(_evidence(planned))})")
        if _missing(facts, PROCEDURE_KEYS):
            return Outcome(UNKNOWN)
        if planned:  # scheduled, but this criterion asks for one received: not yet
            return Outcome(UNKNOWN, _evidence(planned), note="scheduled, not yet performed")
        return Outcome(absent, gate=absent is NOT_MET)

    return fn


def diagnosis_link(facts: Facts, diagnoses: Sequence[str], suggested_by: Sequence[str] = ()) -> Outcome:
    """How firmly the record ties the member to a pathway: met (has a diagnosis), unknown (may have), not-met.

    "May have" is a possible diagnosis, or a tag that only suggests one (TSC suggests its manifestations).
    The engine selects pathways with this; ``indication_of`` reports it as a criterion.
    """
    confirmed = _findings(facts.diagnoses, diagnoses)
    confirmed += _findings(facts.procedures, diagnoses) + _findings(facts.scheduled_procedures, diagnoses)
    if confirmed:
        return Outcome(MET, _evidence(confirmed))
    possible = _findings(facts.possible_diagnoses, diagnoses)
    possible += _findings(facts.diagnoses, suggested_by) + _findings(facts.possible_diagnoses, suggested_by)
    if possible or _missing(facts, CONDITION_KEYS):
        disputed = conflict_outcome(facts, diagnoses)
        return Outcome(UNKNOWN, _evidence(possible), note=disputed.note if disputed is not None else None)
    return Outcome(NOT_MET)


def _indication_of(p: Params, env: CompileEnv) -> Predicate:
    """The member's link to any of these pathways (see ``diagnosis_link``), each pathway's ``also_requires``
    diagnoses included: partial-onset seizures without TSC on record are no section I indication (not-met, with a
    note naming what to record); with TSC only suggested, unknown.

    Absence is not-met, unlike ``diagnosis_in``: it is the selection rule itself (no such diagnosis ->
    the referral pathway), not a gap in the record of a diagnosis the pathway was chosen for.
    """
    pathways = p.strings("pathways")
    assert pathways is not None
    missing = [pid for pid in pathways if pid not in env.anchors]
    if missing:
        raise PolicyError(f"{p.where}: unknown or diagnosis-less pathway(s) {missing}")
    plain = [pid for pid in pathways if not env.requirements.get(pid)]
    diagnoses = tuple(dict.fromkeys(t for pid in plain for t in env.anchors[pid][0]))
    suggested = tuple(dict.fromkeys(t for pid in plain for t in env.anchors[pid][1]))
    qualified = [(pid, *env.anchors[pid], env.requirements[pid]) for pid in pathways if env.requirements.get(pid)]
    wanted = tuple(dict.fromkeys(t for pid in pathways for t in env.anchors[pid][0]))

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        links = [diagnosis_link(facts, diagnoses, suggested)]
        links += [_qualified_link(facts, pid, d, s, r) for pid, d, s, r in qualified]
        outcome = combine_any(links)
        if outcome.status is UNKNOWN and not outcome.gaps:
            named = " or ".join(_tag_words(t) for t in wanted if t in facts.possible_diagnoses) or "section I"
            outcome = outcome._replace(gaps=(f"the {named} diagnosis being treated, coded in the problem list",))
        return outcome

    return fn


def _qualified_link(
    facts: Facts, pathway: str, diagnoses: Sequence[str], suggested: Sequence[str], required: Sequence[str]
) -> Outcome:
    """A pathway's link when its diagnosis needs another on record too (``also_requires``)."""
    link = diagnosis_link(facts, diagnoses, suggested)
    if link.status is NOT_MET:
        return link
    need = diagnosis_link(facts, required)
    if need.status is NOT_MET:
        names = " and ".join(_tag_words(t) for t in required)
        shown = [_tag_words(t) for t in diagnoses if t in facts.diagnoses or t in facts.possible_diagnoses]
        note = (
            f"{', '.join(shown) or 'the diagnosis'} on record ({', '.join(link.evidence)}) is a covered indication "
            f"({pathway}) only with {names}: record the {names} diagnosis if the member has it, to continue therapy "
            "under this policy"
        )
        return Outcome(NOT_MET, link.evidence, note=note)
    return combine_all((link, need))


def _tag_words(tag: str) -> str:
    """A tag as words for a card: "partial-onset-seizures" -> "partial-onset seizures", "tsc" -> "TSC"."""
    if len(tag) <= 4:
        return tag.upper()
    head, _, tail = tag.rpartition("-")
    return f"{head} {tail}" if head else tag


DEFAULT_EXTENT_TAGS = ("secondary-malignancy", "metastatic-stage")


def _disease_extent(p: Params, env: CompileEnv) -> Predicate:
    """Met when metastatic / advanced disease is coded; otherwise unknown (extent is often only in notes)."""
    tags = p.strings("tags", required=False) or DEFAULT_EXTENT_TAGS
    check_tags(tags, "diagnosis", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = _findings(facts.diagnoses, tags)
        if found:
            return Outcome(MET, _evidence(found))
        return Outcome(UNKNOWN, _evidence(_findings(facts.possible_diagnoses, tags)))

    return fn


HR_POSITIVE = ("er-positive", "pr-positive", "hr-positive")
HR_NEGATIVE = ("er-negative", "pr-negative")
#: A combined "hormone receptor negative" result: read when present, not required of the code tables.
HR_NEGATIVE_COMBINED = "hr-negative"


def hormone_receptor_positive(receptors: Mapping[str, Finding]) -> tuple[Status, tuple[str, ...]]:
    """HR status as "is positive": positive on any ER/PR/HR positive; negative only when ER and PR are both negative.

    One negative receptor is not enough: HR-positive means ER- or PR-positive.
    """
    positive = _findings(receptors, HR_POSITIVE)
    if positive:
        return MET, _evidence(positive)
    if HR_NEGATIVE_COMBINED in receptors:
        return NOT_MET, receptors[HR_NEGATIVE_COMBINED].evidence
    if all(t in receptors for t in HR_NEGATIVE):
        return NOT_MET, _evidence(_findings(receptors, HR_NEGATIVE))
    return UNKNOWN, ()


def her2_positive(receptors: Mapping[str, Finding]) -> tuple[Status, tuple[str, ...]]:
    """HER2 status as "is positive": a positive result wins over a negative one (a re-test finds HER2, not loses it)."""
    if "her2-positive" in receptors:
        return MET, receptors["her2-positive"].evidence
    if "her2-negative" in receptors:
        return NOT_MET, receptors["her2-negative"].evidence
    return UNKNOWN, ()


def _receptor_status(p: Params, env: CompileEnv) -> Predicate:
    """Met when each named receptor has the required result; not-met on a contrary result; else unknown."""
    hormone = p.string("hormone_receptor", required=False, choices=("positive", "negative"))
    her2 = p.string("her2", required=False, choices=("positive", "negative"))
    if hormone is None and her2 is None:
        raise PolicyError(f"{p.where}: name hormone_receptor and/or her2")
    check_tags((*HR_POSITIVE, *HR_NEGATIVE, "her2-positive", "her2-negative"), "receptor", env, p.where)
    wanted: list[tuple[Callable[[Mapping[str, Finding]], tuple[Status, tuple[str, ...]]], bool]] = []
    if hormone:
        wanted.append((hormone_receptor_positive, hormone == "positive"))
    if her2:
        wanted.append((her2_positive, her2 == "positive"))

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        parts = []
        for read, positive in wanted:
            status, evidence = read(facts.receptors)
            parts.append(Outcome(status if positive else not_status(status), evidence))
        return combine_all(parts)

    return fn


def _prescriber_specialty_in(p: Params, env: CompileEnv) -> Predicate:
    """Met when the requester has a listed specialty; otherwise unknown ("or in consultation with" may apply)."""
    tags = p.strings("specialties")
    assert tags is not None
    check_tags(tags, "specialty", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = _findings(facts.specialties, tags)
        return Outcome(MET, _evidence(found)) if found else Outcome(UNKNOWN)

    return fn


def _age_at_least(p: Params, env: CompileEnv) -> Predicate:
    """Decided whenever the age is known."""
    years = p.number("years")
    assert years is not None

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        if facts.age_years is None:
            return Outcome(UNKNOWN)
        return Outcome(MET if facts.age_years >= years else NOT_MET, facts.age_evidence)

    return fn


def _generic_if_available(p: Params, env: CompileEnv) -> Predicate:
    """Generic or brand-only: met. Brand with a generic: not-met with a switch (unknown given a documented reason)."""

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        product = facts.product
        order = (facts.order_ref,)
        if product.family is None or product.is_brand is None:
            return Outcome(UNKNOWN, order)
        if not product.is_brand or not product.generic_available:
            return Outcome(MET, order)
        switch = Fix(kind="switch-to-generic", rxcui=product.generic_rxcui, display=product.generic_display)
        if facts.generic_exception is not None:
            return Outcome(
                UNKNOWN,
                _merge((order, facts.generic_exception.evidence)),
                (switch,),
                note="Exception to the generic documented ("
                + ", ".join(facts.generic_exception.evidence)
                + "); the payer reviews it.",
                review="payer",
            )
        if _missing(facts, ALLERGY_KEYS):  # a recorded intolerance to the generic could not be checked
            return Outcome(UNKNOWN, order, (switch,))
        return Outcome(NOT_MET, order, (switch,))

    return fn


def _check_rxcui(env: CompileEnv, rxcui: str | None, where: str) -> None:
    """Refuse an order a suggestion would place with an RxNorm code no table defines: it would be ordered as given
    (a typo such as 999999 becomes a real order line) and no check could know what it is."""
    tables = [getattr(env.vocabulary, name, None) for name in ("products", "drug_products", "ingredient_by_rxcui")]
    if not all(isinstance(t, Mapping) for t in tables) or rxcui is None:
        return  # a bare vocabulary (unit tests) has no product tables to check against
    if not any(rxcui in t for t in tables if isinstance(t, Mapping)):
        raise PolicyError(
            f"{where}: rxcui {rxcui!r} is in no code table: add it to the pack's drug_products.csv (companions), "
            "ingredients.csv or products.csv (the drug), with its source"
        )


def _companion_fix(
    raw: Mapping[str, Any] | None, where: str, env: CompileEnv, listed: Sequence[str] = ()
) -> tuple[Fix, ...]:
    """The companion order a criterion offers; its ingredient tags come from the code tables (RxNorm code), else
    from the listed tags its name spells (so a safe-suggestion check knows what it orders)."""
    if raw is None:
        return ()
    p = Params(raw, where, "companion")
    display = p.string("display")
    rxcui = p.string("rxcui")
    sig = p.string("sig")
    dose = p.number("dose_mg", required=False)
    per_day = p.number("frequency_per_day")
    before = p.strings("given_before", required=False) or ()
    p.done()
    assert per_day is not None and display is not None
    if per_day != int(per_day) or per_day < 1:
        raise PolicyError(f"{where}: companion frequency_per_day must be a whole number >= 1")
    check_tags(before, "diagnosis", env, where)
    _check_rxcui(env, rxcui, f"{where}: companion")
    resolve = getattr(env.vocabulary, "ingredient_tags_for_code", None)
    groups = getattr(env.vocabulary, "with_groups", None)
    found = frozenset(resolve(rxcui)) if callable(resolve) else frozenset()
    if not found:
        words = display.lower()
        found = frozenset(t for t in listed if t.replace("-", " ") in words)
    tags = tuple(sorted(groups(found) if callable(groups) else found))
    return (
        Fix(
            kind="add-companion",
            rxcui=rxcui,
            display=display,
            sig=sig,
            dose_mg=dose,
            frequency_per_day=int(per_day),
            tags=tags,
            given_before=tuple(before),
        ),
    )


def _preferred_alternative(p: Params, env: CompileEnv) -> Predicate:
    """ "For <product> requests, member must use <alternative>": met on other families; on the named family not-met
    with a one-click switch to the alternative at the mapped daily dose (``dose_mapping.factor`` x the ordered
    mg/day, once daily) and its companion change (``companion_change``: ``add`` a companion order, ``remove`` the
    ingredient tags the alternative replaces). Unknown when the product cannot be told, or with a documented
    reason to stay (the payer reviews it, as for generics)."""
    source = Params(p.mapping("from"), p.where, "from")
    from_family = _family(env, source.string("family") or "", source.where)
    source.done()
    target = Params(p.mapping("to"), p.where, "to")
    rxcui = target.string("rxcui") or ""
    products = getattr(env.vocabulary, "products", {})
    row = products.get(rxcui)
    if row is None or row.family is None or row.family == from_family:
        raise PolicyError(
            f"{target.where}: rxcui {rxcui!r} must be a product of the pack's products.csv of another family than"
            f" {from_family!r} (families: {sorted(env.families)})"
        )
    mapping = Params(target.mapping("dose_mapping"), target.where, "dose_mapping")
    factor = mapping.number("factor")
    mapping.done()
    assert factor is not None
    if factor <= 0:
        raise PolicyError(f"{mapping.where}: factor must be above 0, got {factor:g}")
    change = target.mapping("companion_change")
    removed: tuple[str, ...] = ()
    companion: Fix | None = None
    if change is not None:
        changes = Params(change, target.where, "companion_change")
        removed = changes.strings("remove", required=False) or ()
        check_tags(removed, "ingredient", env, changes.where)
        added = _companion_fix(changes.mapping("add"), changes.where, env)
        changes.done()
        companion = added[0] if added else None
    target.done()
    p.done()
    name, label = row.display, env.families.get(from_family, from_family)
    drug = (getattr(env.vocabulary, "drug_tag", env.drug_name),)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        order = (facts.order_ref,)
        if facts.product.family is None:
            return Outcome(UNKNOWN, order)
        if facts.product.family != from_family:
            return Outcome(MET, order)
        old = facts.dose.mg_per_day
        if old is None:
            note = f"{label}: the dose cannot be read, so the {name} dose cannot be proposed"
            return Outcome(NOT_MET, order, note=note)
        mapped = round(old * factor, 6)
        stops = _evidence(_findings(facts.co_medications, removed))
        fix = Fix(
            kind="switch-product",
            rxcui=rxcui,
            display=name,
            sig=f"{mapped:g} mg by mouth once daily",
            dose_mg=mapped,
            frequency_per_day=1,
            tags=drug,
            family=row.family,
            companion=companion,
            stops=stops,
        )
        note = f"{label} {old:g} mg/day -> {name} {mapped:g} mg/day"
        if facts.generic_exception is not None:
            evidence = _merge((order, facts.generic_exception.evidence))
            return Outcome(UNKNOWN, evidence, (fix,), note=f"{note}; a reason to stay is documented", review="payer")
        return Outcome(NOT_MET, order, (fix,), note=note)

    return fn


def _form_parents(env: CompileEnv, tags: Iterable[str]) -> tuple[str, ...]:
    """The ingredients of the form-specific tags among ``tags`` (octreotide for octreotide-lar)."""
    parents: Mapping[str, str] = getattr(env.vocabulary, "form_parents", {})
    return tuple(dict.fromkeys(parents[t] for t in tags if t in parents))


def _combined_with_any(p: Params, env: CompileEnv) -> Predicate:
    """Met when a listed drug is co-ordered or active; otherwise not-met (the order set decides), with the companion.

    A listed form (octreotide LAR) is met only by that form: an order of the ingredient whose form it does not
    show is unknown, another form is not-met.
    """
    tags = p.strings("tags")
    assert tags is not None
    check_tags(tags, "ingredient", env, p.where)
    fixes = _companion_fix(p.mapping("companion"), p.where, env, tags)
    form_parents = _form_parents(env, tags)
    parents: Mapping[str, str] = getattr(env.vocabulary, "form_parents", {})
    forms: Mapping[str, Any] = getattr(env.vocabulary, "ingredient_forms", {})
    releases = {f.tag: f"{f.ingredient} ({f.release})" for fs in forms.values() for f in fs}
    wanted = " or ".join(releases.get(t, t) for t in tags if t in parents)
    sibling_forms = [f.tag for p in _form_parents(env, tags) for f in forms.get(p, ()) if f.tag not in tags]

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = _findings(facts.co_medications, tags)
        if found:
            return Outcome(MET, _evidence(found))
        undetermined = _findings(facts.co_medications_form_unknown, form_parents)
        if undetermined:
            note = "the form of " + ", ".join(form_parents) + " on record is not stated (only " + wanted + " counts)"
            return Outcome(UNKNOWN, _evidence(undetermined), fixes, note=note)
        other_form = _findings(facts.co_medications, form_parents)
        if other_form and not _missing(facts, MEDICATION_KEYS):
            shown = [releases[t] for t in sibling_forms if t in facts.co_medications]
            note = f"{', '.join(shown) or ', '.join(form_parents)} on record is not {wanted}"
            return Outcome(NOT_MET, _evidence(other_form), fixes, note=note)
        return Outcome(UNKNOWN if _missing(facts, MEDICATION_KEYS) else NOT_MET, (), fixes)

    return fn


def _combined_with_all(p: Params, env: CompileEnv) -> Predicate:
    """Met when every group (a tag, a list of interchangeable tags, or ``{tags, companion}``) is co-ordered or
    active; else not-met, with a companion order for each missing group that names one."""
    p.read.add("groups")
    raw = p.raw.get("groups")
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"{p.where}: 'groups' must be a non-empty list")
    groups: list[tuple[tuple[str, ...], tuple[Fix, ...]]] = []
    for index, item in enumerate(raw):
        fixes: tuple[Fix, ...] = ()
        if isinstance(item, Mapping):
            inner = Params(item, f"{p.where}.groups[{index}]", "group")
            group = inner.strings("tags") or ()
            fixes = _companion_fix(inner.mapping("companion"), inner.where, env, group)
            inner.done()
        else:
            group = (item,) if isinstance(item, str) else item
        if not isinstance(group, list | tuple) or not group or not all(isinstance(t, str) and t for t in group):
            raise PolicyError(f"{p.where}: each group must be a tag, a non-empty list of tags or {{tags, companion}}")
        check_tags(group, "ingredient", env, p.where)
        groups.append((tuple(group), fixes))

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        per_group = [_findings(facts.co_medications, g) for g, _ in groups]
        if all(per_group):
            return Outcome(MET, _evidence(f for found in per_group for f in found))
        if _missing(facts, MEDICATION_KEYS):
            return Outcome(UNKNOWN)
        fixes = _merge(fx for (_, fx), found in zip(groups, per_group) if not found)
        return Outcome(NOT_MET, _evidence(f for found in per_group for f in found), fixes)

    return fn


def _combined_with_none(p: Params, env: CompileEnv) -> Predicate:
    """Single-agent therapy: not-met when a listed drug is co-ordered or active, met otherwise."""
    tags = p.strings("tags")
    assert tags is not None
    check_tags(tags, "ingredient", env, p.where)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = _findings(facts.co_medications, tags)
        if found:
            return Outcome(NOT_MET, _evidence(found))
        return Outcome(UNKNOWN if _missing(facts, MEDICATION_KEYS) else MET)

    return fn


def _history(facts: Facts, tag: str) -> Finding | None:
    finding = facts.medication_history.get(tag)
    if finding is None or (finding.start is not None and finding.start >= facts.evaluation_date):
        return None
    return finding


#: ``history_of_*``: what the prior therapy must have come to (``outcome``) and the exceptions the policy allows
#: instead (``unless``). The chart cannot tell them apart (the reason for stopping is only in notes); the DTR
#: questionnaire asks for them (``questions.py``).
THERAPY_OUTCOMES = ("received", "failure")
THERAPY_EXCEPTIONS = ("contraindicated", "not-tolerated")


def _therapy_outcome(p: Params) -> None:
    p.string("outcome", required=False, choices=THERAPY_OUTCOMES)
    unknown = sorted(set(p.strings("unless", required=False) or ()) - set(THERAPY_EXCEPTIONS))
    if unknown:
        raise PolicyError(f"{p.where}: 'unless' must name only {list(THERAPY_EXCEPTIONS)}, got {unknown}")


def _history_of_any(p: Params, env: CompileEnv) -> Predicate:
    """Met on any listed prior therapy before the evaluation date; otherwise unknown (history is often incomplete)."""
    tags = p.strings("tags")
    assert tags is not None
    _therapy_outcome(p)
    check_tags(tags, "ingredient", env, p.where)

    form_parents = _form_parents(env, tags)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = [f for f in (_history(facts, t) for t in tags) if f is not None]
        if found:
            return Outcome(MET, _evidence(found))
        return Outcome(UNKNOWN, _evidence(_findings(facts.history_form_unknown, form_parents)))

    return fn


def _history_of_all(p: Params, env: CompileEnv) -> Predicate:
    """Met when every listed prior therapy is on record before the evaluation date; otherwise unknown."""
    tags = p.strings("tags")
    assert tags is not None
    _therapy_outcome(p)
    check_tags(tags, "ingredient", env, p.where)

    names = _tag_names(env, tags)

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        found = [_history(facts, t) for t in tags]
        if all(f is not None for f in found):
            return Outcome(MET, _evidence(f for f in found if f is not None))
        missing = tuple(f"prior {names[t]}" for t, f in zip(tags, found) if f is None)
        return Outcome(UNKNOWN, _evidence(f for f in found if f is not None), gaps=missing)

    return fn


def _tag_names(env: CompileEnv, tags: Iterable[str]) -> dict[str, str]:
    """Readable drug names for tags: "ripretinib (Qinlock)" from the code tables when they know it."""
    namer = getattr(env.vocabulary, "ingredient_label", None)
    return {t: (namer(t) if callable(namer) else t) for t in tags}


def _continued_therapy_days(p: Params, env: CompileEnv) -> Predicate:
    """Met with at least ``days`` of the drug on record; fewer is unknown (the benefit's claims may show more)."""
    days = p.number("days")
    assert days is not None

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        if facts.days_on_drug >= days:
            return Outcome(MET, facts.drug_evidence)
        return Outcome(UNKNOWN, facts.drug_evidence)

    return fn


#: What the latest response assessment means for "responding positively to therapy".
RESPONSE_STATUS = {"responding": MET, "progressing": NOT_MET, "undetermined": UNKNOWN}
OBSERVATION_KEYS = frozenset({"diseaseStatus"})


def _responding_to_therapy(p: Params, env: CompileEnv) -> Predicate:
    """Met when the latest disease-status / response assessment after the current course began says improved,
    stable or no evidence of disease; not-met when it says worsened; unknown when undetermined, when assessments
    of that day disagree, or when there is none (the response may be in notes)."""

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        meaning = facts.therapy_response
        if meaning is None:
            gap = "the response to therapy since the course began (e.g. a disease-status assessment)"
            note = "the disease-status records could not be obtained" if _missing(facts, OBSERVATION_KEYS) else None
            return Outcome(UNKNOWN, facts.drug_evidence, gaps=(gap,), note=note)
        note = f"{meaning}: {facts.therapy_response_note}" if facts.therapy_response_note else meaning
        return Outcome(RESPONSE_STATUS[meaning], facts.therapy_response_evidence, note=note)

    return fn


def _family(env: CompileEnv, name: str, where: str) -> str:
    """A product family the pack declares (policy file ``drug.families``)."""
    if name not in env.families:
        raise PolicyError(f"{where}: unknown product family {name!r} (declared: {sorted(env.families)})")
    return name


def _strengths(env: CompileEnv, family: str) -> list[tuple[float, str, str]]:
    """(strength, generic RxCUI, display) of each generic strength of a family, largest first."""
    products = getattr(env.vocabulary, "products", {})
    rows = [
        (p.strength_mg, p.rxcui, p.display)
        for p in products.values()
        if p.tty == "SCD" and p.family == family and p.strength_mg is not None and p.generic_available
    ]
    return sorted(rows, reverse=True)


def _fewer_tablets(mg_per_day: float | None, limit: float, strengths: list[tuple[float, str, str]]) -> Fix | None:
    """The same daily mg in at most ``limit`` tablets of one strength, fewest tablets first."""
    if mg_per_day is None or mg_per_day <= 0 or limit < 1:
        return None
    for strength, rxcui, display in strengths:
        count = mg_per_day / strength
        if abs(count - round(count)) < 1e-9 and 1 <= round(count) <= limit:
            return Fix(
                kind="change-strength",
                rxcui=rxcui,
                display=display,
                dose_mg=strength,
                frequency_per_day=round(count),
                sig=f"{mg_per_day:g} mg a day as {round(count)} x {strength:g} mg tablet(s)",
            )
    return None


class _DayTotal(NamedTuple):
    """The member's daily amount over every draft of the drug a limit counts (this order first); a named tuple, as
    each dose test builds one."""

    amount: float | None
    evidence: tuple[str, ...]
    #: Orders whose dose cannot be read (the total is then unknown).
    unreadable: tuple[str, ...]
    #: "10 mg twice daily + 5 mg daily": set only when more than one order adds up.
    words: str | None
    #: The other orders' share (tablet budgets for a one-order fix).
    others: float


def _day_total(facts: Facts, family: str | None, units: bool = False) -> _DayTotal:
    """Sum this order and the request's other drafts of the drug (one family's for a family limit): mg, or units of
    the dose form (``units``)."""

    def read(dose: Dose) -> float | None:
        return dose.units_per_day if units else dose.mg_per_day

    parts = [(facts.order_ref, facts.dose)] + [
        (o.order_ref, o.dose) for o in facts.other_doses if family is None or o.family in (family, None)
    ]
    unreadable = tuple(ref for ref, dose in parts if read(dose) is None)
    unclear_family = tuple(o.order_ref for o in facts.other_doses if family is not None and o.family is None)
    evidence = tuple(ref for ref, _ in parts)
    others = sum(read(dose) or 0.0 for _, dose in parts[1:])
    if unreadable or unclear_family:
        return _DayTotal(None, evidence, unreadable + unclear_family, None, others)
    total = round(sum(read(dose) or 0.0 for _, dose in parts), 6)
    if len(parts) == 1:  # this order alone (the usual request): no sum to put in words
        return _DayTotal(total, evidence, (), None, others)
    if not units:  # "10 mg twice daily + 5 mg daily"
        joined = " + ".join(dose.words or f"{read(dose):g} mg/day" for _, dose in parts)
    else:  # "2 + 1"
        joined = " + ".join(f"{read(dose):g}" for _, dose in parts)
    return _DayTotal(total, evidence, (), joined, others)


def member_mg_per_day(facts: Facts) -> float | None:
    """The member's new daily mg: this order and every other draft of the drug in the request (None if unreadable)."""
    return _day_total(facts, None).amount


#: ``dose_within`` parameters: the limits (exactly one) and the optional product family.
DOSE_LIMITS = ("max_mg_per_day", "max_units_per_day", "max_tablets_per_day")


def _unit_name(env: CompileEnv, family: str) -> str:
    """What one unit of a family's products is ("tablet", "capsule", "mL"); "unit" when its forms differ."""
    products = getattr(env.vocabulary, "products", {})
    forms = {p.dose_form for p in products.values() if p.family == family and p.dose_form is not None}
    units = {dose_forms()[form].unit for form in forms if form in dose_forms()}
    return units.pop() if len(units) == 1 else "unit"


def _plural(unit: str) -> str:
    return unit if unit.lower() == "ml" else f"{unit}s"


def _dose_within(p: Params, env: CompileEnv) -> Predicate:
    """One limit: mg per day, or units of the dose form per day (tablets, capsules, mL) for one product family;
    an mg limit may also name a family. A family limit is met for other families.

    The limit is per member and day: every draft of the drug in the request adds up (a family limit, the family's
    drafts), and a draft whose dose cannot be read leaves the total unknown. Over the limit it says so with the
    numbers, and a tablet overrun offers the same daily mg in fewer tablets when that brings the total within.
    ``max_tablets_per_day`` is the older name of ``max_units_per_day``.
    """
    given = {name: p.number(name, required=False) for name in DOSE_LIMITS}
    limits = {name: value for name, value in given.items() if value is not None}
    family_name = p.string("family", required=False, choices=list(env.families))
    if len(limits) != 1:
        raise PolicyError(
            f"{p.where}: give exactly one of {', '.join(DOSE_LIMITS)} (max_tablets_per_day is max_units_per_day's"
            f" older name), got {sorted(limits) or 'none'}"
        )
    ((kind, limit),) = limits.items()
    units = kind != "max_mg_per_day"
    if units and not family_name:
        raise PolicyError(
            f"{p.where}: {kind} needs a family (a unit is a tablet, capsule or mL of one family's products);"
            f" declared families: {sorted(env.families)}"
        )
    family = family_name or None
    label = env.families.get(family, family) if family else None
    unit = _plural(_unit_name(env, family)) if family and units else "mg"
    strengths = _strengths(env, family) if family is not None and unit == "tablets" else []

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        order = (facts.order_ref,)
        if family is not None and facts.product.family is None:
            return Outcome(UNKNOWN, order)
        if family is not None and facts.product.family != family:
            return Outcome(MET, order)
        total = _day_total(facts, family, units)
        if total.amount is None:
            if total.unreadable == order:
                what = f"{unit} and times a day" if units else "mg and times a day"
                return Outcome(UNKNOWN, order, gaps=(f"a dose that can be read ({what})",))
            others = ", ".join(ref for ref in total.unreadable if ref != facts.order_ref)
            note = f"the dose of {others} cannot be read, so the member's daily total is unknown"
            return Outcome(UNKNOWN, total.evidence, note=note, gaps=(f"a dose that can be read for {others}",))
        if total.amount <= limit:
            return Outcome(MET, total.evidence)
        sum_words = f"{total.words} = " if total.words else ""
        if not units:
            per = f" for {label}" if label else ""
            return Outcome(
                NOT_MET, total.evidence, note=f"{sum_words}{total.amount:g} mg/day exceeds {limit:g} mg/day{per}"
            )
        fix = _fewer_tablets(facts.dose.mg_per_day, limit - total.others, strengths) if strengths else None
        note = f"{sum_words}{total.amount:g} {label} {unit}/day exceeds {limit:g} {unit}/day"
        return Outcome(NOT_MET, total.evidence, (fix,) if fix else (), note=note)

    return fn


def _dose_compare(increase: bool) -> Callable[[Params, CompileEnv], Predicate]:
    def build(p: Params, env: CompileEnv) -> Predicate:
        def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
            total = _day_total(facts, None)  # the member's new day: every draft of the drug in the request
            new, old = total.amount, facts.previous_mg_per_day
            evidence = _merge((total.evidence, facts.drug_evidence))
            if new is None or old is None:
                return Outcome(UNKNOWN, evidence)
            return Outcome(MET if (new > old) == increase else NOT_MET, evidence)

        return fn

    build.__doc__ = (
        "Met when the new daily dose (all drafts of the drug) exceeds the previous one; unknown when either is unknown."
        if increase
        else "Met when the new daily dose (all drafts) is at most the previous one; unknown when either is unknown."
    )
    return build


def _documented(p: Params, env: CompileEnv) -> Predicate:
    """Something only chart notes can show: always unknown, for the pharmacist to read."""
    what = p.string("what")

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        return Outcome(UNKNOWN, gaps=(str(what),))

    return fn


def _payer_review(p: Params, env: CompileEnv) -> Predicate:
    """Something the payer checks, not the chart (a label change in the last 6 months): unknown, payer review."""
    what = p.string("what")

    def fn(facts: Facts, _: tuple[Outcome, ...]) -> Outcome:
        return Outcome(UNKNOWN, note=f"Payer review: {what}.", review="payer")

    return fn


LEAVES: dict[str, Callable[[Params, CompileEnv], Predicate]] = {
    "product_in": _product_in,
    "diagnosis_in": _diagnosis_in,
    "indication_of": _indication_of,
    "disease_extent": _disease_extent,
    "receptor_status": _receptor_status,
    "prescriber_specialty_in": _prescriber_specialty_in,
    "age_at_least": _age_at_least,
    "generic_if_available": _generic_if_available,
    "combined_with_any": _combined_with_any,
    "combined_with_all": _combined_with_all,
    "combined_with_none": _combined_with_none,
    "history_of_any": _history_of_any,
    "history_of_all": _history_of_all,
    "continued_therapy_days": _continued_therapy_days,
    "responding_to_therapy": _responding_to_therapy,
    "dose_within": _dose_within,
    "preferred_alternative": _preferred_alternative,
    "dose_increase": _dose_compare(increase=True),
    "not_dose_increase": _dose_compare(increase=False),
    "documented": _documented,
    "qualifier_documented": _qualifier_documented,
    "payer_review": _payer_review,
    "diagnosis_within_days": _diagnosis_within_days,
    "procedure_in": _procedure_in,
}
from .labs import LAB_LEAVES  # labs builds on the helpers above

LEAVES.update(LAB_LEAVES)
COMBINATORS = ("all_of", "any_of", "not", "conditional", "sub_items")
PREDICATE_NAMES = frozenset(LEAVES) | frozenset(COMBINATORS)


# ----------------------------------------------------------------------------- compilation


def _split(spec: Any, where: str) -> tuple[str, Any]:
    """``name`` or ``{name: params}`` -> (name, params)."""
    if isinstance(spec, str):
        return spec, None
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((name, params),) = spec.items()
        if isinstance(name, str):
            return name, params
    raise PolicyError(f"{where}: a predicate is a name or a mapping with exactly one predicate name, got {spec!r}")


def _compile_list(params: Any, where: str, name: str, env: CompileEnv) -> list[Compiled]:
    if not isinstance(params, list) or not params:
        raise PolicyError(f"{where}: {name} needs a non-empty list of predicates")
    return [compile_predicate(item, f"{where}.{name}[{i}]", env) for i, item in enumerate(params)]


def _sub_items(params: Any, where: str) -> Compiled:
    if params not in ("any", "all"):
        raise PolicyError(f"{where}: sub_items must be 'any' (a or b) or 'all' (i, ii, and iii), got {params!r}")
    combine = combine_any if params == "any" else combine_all
    # Sub-items show their own notes; the parent criterion does not repeat them.
    return Compiled(lambda facts, subs: _without_note(combine(subs)), uses_sub_items=True, sub_items=params)


def _without_note(outcome: Outcome) -> Outcome:
    """The outcome with no note (the named tuple's ``_replace`` only when there is one to drop)."""
    return outcome if outcome.note is None else outcome._replace(note=None)


def compile_predicate(spec: Any, where: str, env: CompileEnv) -> Compiled:
    """Check one predicate spec (recursively) and return its callable; raise PolicyError on any mistake.

    ``where`` names each leaf test uniquely ("I.A.2.all_of[1]"): it is the linkId of the questionnaire items
    that ask about it, and the leaf reads the clinician's answers to them (``questions.answerable``).
    """
    from . import questions  # late: questions builds on this module

    name, params = _split(spec, where)
    if name == "sub_items":
        return _sub_items(params, where)
    if name in ("all_of", "any_of"):
        parts = _compile_list(params, where, name, env)
        fns = tuple(c.fn for c in parts)
        combine = combine_all if name == "all_of" else combine_any
        return Compiled(
            lambda facts, subs: combine([f(facts, subs) for f in fns]),
            any(c.uses_sub_items for c in parts),
            tuple(leaf for c in parts for leaf in c.leaves),
            all_of=fns if name == "all_of" else (),
        )
    if name == "not":
        inner = compile_predicate(params, f"{where}.not", env)
        return Compiled(lambda facts, subs: negate(inner.fn(facts, subs)), inner.uses_sub_items, inner.leaves)
    if name == "conditional":
        if not isinstance(params, Mapping) or set(params) != {"if", "then"}:
            raise PolicyError(f"{where}: conditional needs exactly 'if' and 'then'")
        cond = compile_predicate(params["if"], f"{where}.if", env)
        then = compile_predicate(params["then"], f"{where}.then", env)
        asked_if = tuple(q.link_id for leaf in cond.leaves for q in leaf.questions)
        then_leaves = tuple(replace(leaf, enabled_by=leaf.enabled_by or asked_if) for leaf in then.leaves)
        return Compiled(
            lambda facts, subs: implies(cond.fn(facts, subs), then.fn(facts, subs)),
            cond.uses_sub_items or then.uses_sub_items,
            cond.leaves + then_leaves,
        )
    builder = LEAVES.get(name)
    if builder is None:
        raise PolicyError(f"{where}: unknown predicate {name!r} (known: {', '.join(sorted(PREDICATE_NAMES))})")
    p = Params(params, where, name)
    fn = builder(p, env)
    p.done()
    leaf = questions.leaf(name, params, where, env, fn)
    return Compiled(questions.answerable(leaf), leaves=(leaf,))


# ----------------------------------------------------------------------------- per-product applicability


@dataclass(frozen=True)
class Applicability:
    """``applies_to`` of a criterion: the product families and / or RxNorm products it is written for ("For Yonsa
    requests ..."). On any other product the criterion is not-applicable; when the product cannot be told it is
    evaluated (never skipped on a guess)."""

    families: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    #: "Yonsa" / "Yonsa or Zytiga": how the card names what it applies to.
    words: str = ""

    def applies(self, product: Product) -> bool:
        """False only when the order's product is known and is none of the listed ones."""
        if product.family is None or product.family in self.families:
            return True  # a listed family, or the product cannot be told: evaluate the criterion
        return product.rxcui is not None and bool(self.products & {product.rxcui, product.generic_rxcui or ""})


def not_applicable_note(facts: Facts) -> str:
    """ "not applicable to Zentora Sprinkle" (the order's product as ordered)."""
    product = facts.product.display or "this product"
    return f"not applicable to {product}"


def compile_applies_to(raw: Any, where: str, env: CompileEnv) -> Applicability:
    """``applies_to: {families: [...]}`` and / or ``{products: [rxcui, ...]}`` (products.csv rows of the drug)."""
    if not isinstance(raw, Mapping) or not raw or set(raw) - {"families", "products"}:
        raise PolicyError(
            f"{where}: applies_to: expected a mapping with families and / or products, got {raw!r}"
            f" (families: {sorted(env.families)})"
        )
    params = Params(raw, where, "applies_to")
    families = params.strings("families", required=False) or ()
    for family in families:
        _family(env, family, f"{where}: applies_to")
    products = params.strings("products", required=False) or ()
    table = getattr(env.vocabulary, "products", None)
    unknown = [rxcui for rxcui in products if table is not None and rxcui not in table]
    if unknown:
        raise PolicyError(f"{where}: applies_to: product(s) {unknown} are not rows of the pack's products.csv")
    names = [env.families.get(f, f) for f in families] + [
        getattr(table.get(rxcui), "display", rxcui) if table is not None else rxcui for rxcui in products
    ]
    return Applicability(frozenset(families), frozenset(products), " or ".join(names))
