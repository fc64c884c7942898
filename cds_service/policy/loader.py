"""Load a declarative drug policy (YAML), check it completely, and compile it once into callables.

Start-up is the only time a policy file is read: any mistake (bad YAML, a duplicated key, an unknown
predicate or tag, a criterion id that is malformed, duplicated, out of sequence or does not fit its
parent, missing wording) raises ``PolicyError`` so the service refuses to start rather than answer
wrongly. The file format is described in docs/policy-format.md.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fhir_mappings.model import LineOfBusiness

from .predicates import (
    Applicability,
    CompileEnv,
    PolicyError,
    Predicate,
    Vocabulary,
    check_tags,
    compile_applies_to,
    compile_predicate,
)
from .schema import check_shape, line_of

__all__ = [
    "Approval",
    "Criterion",
    "NonFormularyRule",
    "Pathway",
    "Policy",
    "PolicyError",
    "PolicyVocabulary",
    "ReferTo",
    "Referral",
    "ServiceInfo",
    "UpTo",
    "load_policy",
    "parse_policy",
]

#: The package's default policy pack: a folder with policy.yaml and tables/ (docs/policy-format.md).
DEFAULT_PACK = "cp-phar-63"
POLICY_FILE = "policy.yaml"

#: Pathway kinds: how the engine selects a pathway and what its decision can be.
INDICATION = "indication"  # I.A ... I.H: applies when the member has or may have a diagnosis it names
INITIAL_OTHER = "initial-other"  # I.I: no indication pathway applies -> refer
CONTINUED = "continued"  # II.A: the drug for long enough and an indication pathway's diagnosis
CONTINUED_OTHER = "continued-other"  # II.B: the drug for long enough, no such diagnosis -> refer
NOT_AUTHORIZED = "not-authorized"  # III: listed for the reader; never selected
KINDS = (INDICATION, INITIAL_OTHER, CONTINUED, CONTINUED_OTHER, NOT_AUTHORIZED)
REFERRAL_KINDS = (INITIAL_OTHER, CONTINUED_OTHER, NOT_AUTHORIZED)

PATHWAY_ID = re.compile(r"[IVX]+\.[A-Z]")
SECTION_ID = re.compile(r"[IVX]+")
#: Numbering below a pathway (I.A -> 9 -> a -> i) and below a bare section (III -> A -> 1 -> a -> i).
PATHWAY_LEVELS = ("number", "letter", "roman")
SECTION_LEVELS = ("capital", "number", "letter", "roman")
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii")


@dataclass(frozen=True)
class PolicyVocabulary:
    """Tag vocabularies as plain sets, for callers (and tests) without the code tables."""

    diagnosis_tags: frozenset[str] = frozenset()
    ingredient_tags: frozenset[str] = frozenset()
    specialty_tags: frozenset[str] = frozenset()
    receptor_tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Criterion:
    """One numbered criterion, compiled: its wording, remedy, test and sub-items in policy order."""

    id: str
    text: str
    remedy: str
    predicate: Predicate = field(repr=False, compare=False)
    children: tuple[Criterion, ...] = ()
    #: The leaf tests of its own predicate (``questions.Leaf``): what a DTR questionnaire asks about it.
    leaves: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    #: "any" (a or b) or "all" (i, ii and iii) when the criterion is decided by its sub-items.
    sub_items: str | None = None
    #: The products it is written for (file ``applies_to``); on others it is not-applicable. None: every product.
    applies_to: Applicability | None = field(default=None, compare=False)

    def walk(self) -> Iterator[Criterion]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class UpTo:
    """``months`` or the duration of the request, whichever is less."""

    months: int


@dataclass(frozen=True)
class ReferTo:
    """This line of business is not approved here: the request goes to another policy."""

    policy: str


Approval = int | UpTo | ReferTo


@dataclass(frozen=True)
class Referral:
    """A named referral table: the policy to refer to for each line of business."""

    key: str
    text: str
    by_line: Mapping[LineOfBusiness, str]


@dataclass(frozen=True)
class NonFormularyRule:
    """A product not on one line of business's formulary: brand requests are referred, generics noted."""

    line_of_business: LineOfBusiness
    family: str
    refer_to: str
    text: str
    #: "refer": generics of the product are referred too; "evaluate": they are evaluated, with ``generic_note``.
    generics: str = "evaluate"
    generic_note: str = ""


@dataclass(frozen=True)
class DrugInfo:
    """The one drug a pack covers (policy file ``drug``): its ingredient tag, card word and product families."""

    tag: str
    name: str
    families: Mapping[str, str]
    non_formulary_words: str | None = None
    #: Longest break between records of the drug that keeps one course (``drug.max_gap_days``); a longer one ends
    #: it, and a course that ended longer ago than this is not current. None: the facts layer's default.
    max_gap_days: int | None = None


#: Da Vinci CRD coverage-information ``pa-needed`` codes (CodeSystem temp, CRD 2.x): what a pack may declare.
PA_NEEDED = ("auth-needed", "no-auth", "satisfied", "performpa", "conditional")

#: The hooks a pack answers, one service each (policy file ``services``).
HOOKS = ("order-sign", "order-select")


@dataclass(frozen=True)
class ServiceInfo:
    """One CDS Hooks service of a pack (policy file ``services``): its id, hook and discovery texts."""

    id: str
    hook: str
    title: str
    description: str


@dataclass(frozen=True)
class LabelNote:
    """A labeled limitation of use: shown as information when ``when`` is met (or may be); never a criterion."""

    id: str
    text: str
    when: Predicate = field(repr=False, compare=False)
    #: ``when``'s parts when it is an ``all_of`` (``Compiled.all_of``): the first one not met rules the note out.
    all_of: tuple[Predicate, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class Pathway:
    """One approval pathway (or referral section) of the policy."""

    id: str
    title: str
    kind: str
    criteria: tuple[Criterion, ...]
    #: Diagnosis tags that make an indication pathway apply (has -> confirmed link, may have -> possible).
    diagnoses: tuple[str, ...] = ()
    #: Diagnosis tags that only suggest the pathway (a parent code such as TSC): a possible link.
    suggested_by: tuple[str, ...] = ()
    #: Diagnoses that must be on record too (coded or suggested) for a continuation to be for this indication
    #: (partial-onset seizures are a section I indication only with TSC).
    also_requires: tuple[str, ...] = ()
    #: Continued-therapy pathways: days of the drug on record that make them apply.
    therapy_days: int | None = None
    approval: Mapping[LineOfBusiness, Approval] = field(default_factory=dict)
    referral: Referral | None = None
    #: A few words for summaries ("SEGA"); the title when the file gives none.
    short_title: str = ""

    def all_criteria(self) -> Iterator[Criterion]:
        for criterion in self.criteria:
            yield from criterion.walk()

    @cached_property
    def evidence_tags(self) -> frozenset[str]:
        """The diagnosis tags whose evidence links the pathway (``diagnoses`` and ``suggested_by``): worked out once,
        as pathway selection asks on every call (the fields never change once loaded)."""
        return frozenset(self.diagnoses) | frozenset(self.suggested_by)


@dataclass(frozen=True)
class Policy:
    """A loaded, checked and compiled policy; immutable and shared by every request."""

    id: str
    version: str
    title: str
    lines_of_business: tuple[LineOfBusiness, ...]
    pathways: tuple[Pathway, ...]
    referrals: Mapping[str, Referral]
    non_formulary: tuple[NonFormularyRule, ...] = ()
    source: str = ""
    label_notes: tuple[LabelNote, ...] = ()
    drug: DrugInfo = field(default_factory=lambda: DrugInfo("drug", "drug", {}))
    #: The pack's CDS Hooks services (file ``services``), order-sign first; empty when the file has none.
    services: tuple[ServiceInfo, ...] = ()
    #: Where a reader finds the policy document (card link), and the payer's page for this policy.
    document_url: str | None = None
    #: The Da Vinci CRD ``pa-needed`` code of every evaluated order (file ``policy.pa_needed``; a PA drug policy:
    #: auth-needed).
    pa_needed: str = "auth-needed"
    #: Safe suggestions (file ``regimen_markers``): diagnosis tag -> ingredients whose order shows that regimen.
    regimen_markers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Safe suggestions (file ``duplicate_therapy_groups``): medication groups whose members are not given together.
    duplicate_therapy_groups: tuple[str, ...] = ()

    def pathway(self, pathway_id: str) -> Pathway:
        for pathway in self.pathways:
            if pathway.id == pathway_id:
                return pathway
        raise KeyError(pathway_id)

    @cached_property
    def _by_kind(self) -> Mapping[str, tuple[Pathway, ...]]:
        return {kind: tuple(p for p in self.pathways if p.kind == kind) for kind in KINDS}

    def of_kind(self, kind: str) -> tuple[Pathway, ...]:
        """Pathways of one kind in policy order (computed once: selection asks on every request)."""
        return self._by_kind.get(kind, ())

    def criterion_ids(self) -> tuple[str, ...]:
        """Every criterion id in file order (pathways, then their sub-items depth first)."""
        return tuple(c.id for p in self.pathways for c in p.all_criteria())


# ----------------------------------------------------------------------------- YAML without silent surprises


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicated mapping keys (YAML would silently keep the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise PolicyError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc


# ----------------------------------------------------------------------------- small checks


def _mapping(raw: Any, where: str, allowed: Collection[str], required: Collection[str] = ()) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown} (accepted: {', '.join(sorted(allowed))})")
    missing = [k for k in required if k not in raw]
    if missing:
        raise PolicyError(f"{where}: missing {missing}")
    return raw


def _text(raw: Any, where: str, key: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise PolicyError(f"{where}: {key} must be non-empty text")
    return " ".join(raw.split())


def _tags(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, str) and t for t in raw):
        raise PolicyError(f"{where}: expected a list of tags")
    return tuple(raw)


def _line(raw: Any, where: str) -> LineOfBusiness:
    try:
        return LineOfBusiness(raw)
    except ValueError as exc:
        known = ", ".join(v.value for v in LineOfBusiness)
        raise PolicyError(f"{where}: unknown line of business {raw!r} (one of {known})") from exc


def _segment_ok(segment: str, level: str) -> bool:
    patterns = {"number": r"[1-9][0-9]*", "letter": r"[a-z]", "roman": r"[ivx]+", "capital": r"[A-Z]"}
    return re.fullmatch(patterns[level], segment) is not None and (level != "roman" or segment in _ROMAN)


def _expected_segment(level: str, index: int) -> str:
    if level == "number":
        return str(index + 1)
    if level == "roman":
        return _ROMAN[index] if index < len(_ROMAN) else "?"
    base = "a" if level == "letter" else "A"
    return chr(ord(base) + index) if index < 26 else "?"


# ----------------------------------------------------------------------------- criteria


@dataclass
class _Builder:
    env: CompileEnv
    seen_ids: set[str] = field(default_factory=set)

    def criteria(self, raw: Any, parent: str, levels: Sequence[str]) -> tuple[Criterion, ...]:
        if not isinstance(raw, list) or not raw:
            raise PolicyError(f"{parent}: criteria must be a non-empty list")
        if not levels:
            raise PolicyError(f"{parent}: criteria nest deeper than the policy's numbering allows")
        built = []
        for index, item in enumerate(raw):
            criterion = self.criterion(item, parent, levels)
            expected = f"{parent}.{_expected_segment(levels[0], index)}"
            if criterion.id != expected:
                raise PolicyError(f"{criterion.id}: out of sequence under {parent} (expected {expected})")
            built.append(criterion)
        return tuple(built)

    def criterion(self, raw: Any, parent: str, levels: Sequence[str]) -> Criterion:
        where = f"{parent} (a criterion)"
        item = _mapping(raw, where, ("id", "text", "remedy", "predicate", "criteria", "applies_to"), ("id",))
        cid = item["id"]
        if not isinstance(cid, str):
            raise PolicyError(f"{where}: id must be text, got {cid!r}")
        if not cid.startswith(parent + ".") or not _segment_ok(cid[len(parent) + 1 :], levels[0]):
            raise PolicyError(
                f"{cid}: malformed id, or it does not fit its parent {parent} (expected {parent}.<{levels[0]}>)"
            )
        if cid in self.seen_ids:
            raise PolicyError(f"{cid}: duplicate criterion id")
        self.seen_ids.add(cid)
        text = _text(item.get("text"), cid, "text")
        remedy = _text(item.get("remedy"), cid, "remedy")
        children = self.criteria(item["criteria"], cid, levels[1:]) if "criteria" in item else ()
        if "predicate" not in item:
            raise PolicyError(f"{cid}: missing predicate")
        compiled = compile_predicate(item["predicate"], cid, self.env)
        if compiled.uses_sub_items and not children:
            raise PolicyError(f"{cid}: predicate reads sub_items but the criterion has none")
        if children and not compiled.uses_sub_items:
            raise PolicyError(f"{cid}: has sub-items but its predicate never reads them (use sub_items)")
        applies_to = compile_applies_to(item["applies_to"], cid, self.env) if "applies_to" in item else None
        return Criterion(cid, text, remedy, compiled.fn, children, compiled.leaves, compiled.sub_items, applies_to)


# ----------------------------------------------------------------------------- pathways


def _approval(raw: Any, where: str, lines: Sequence[LineOfBusiness]) -> Mapping[LineOfBusiness, Approval]:
    table = _mapping(raw, where, [line.value for line in lines], [line.value for line in lines])
    out: dict[LineOfBusiness, Approval] = {}
    for key, value in table.items():
        line = _line(key, where)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[line] = value
        elif (
            isinstance(value, Mapping)
            and set(value) == {"up_to"}
            and isinstance(value["up_to"], int)
            and value["up_to"] > 0
        ):
            out[line] = UpTo(value["up_to"])
        elif isinstance(value, Mapping) and set(value) == {"refer_to"} and isinstance(value["refer_to"], str):
            out[line] = ReferTo(value["refer_to"])
        else:
            raise PolicyError(
                f"{where}.{key}: expected months, {{up_to: months}} or {{refer_to: policy}}, got {value!r}"
            )
    return out


def _requirements(raw: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``applies_when.also_requires`` of every indication pathway that has one, for ``indication_of``."""
    out: dict[str, tuple[str, ...]] = {}
    for item in raw.get("pathways") or []:
        if not (isinstance(item, Mapping) and item.get("kind") == INDICATION and isinstance(item.get("id"), str)):
            continue
        when = item.get("applies_when")
        required = when.get("also_requires") if isinstance(when, Mapping) else None
        if isinstance(required, list) and required:
            out[item["id"]] = tuple(t for t in required if isinstance(t, str))
    return out


def _anchors(raw: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Diagnosis tags of every indication pathway, read before any predicate is compiled (``indication_of``).

    Only well-formed entries are collected here; ``_pathway`` checks every entry fully afterwards.
    """
    anchors: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for item in raw.get("pathways") or []:
        if not (isinstance(item, Mapping) and item.get("kind") == INDICATION and isinstance(item.get("id"), str)):
            continue
        when = item.get("applies_when")
        if isinstance(when, Mapping):
            diagnoses, suggested = when.get("diagnoses") or [], when.get("suggested_by") or []
            if isinstance(diagnoses, list) and isinstance(suggested, list):
                anchors[item["id"]] = (
                    tuple(t for t in diagnoses if isinstance(t, str)),
                    tuple(t for t in suggested if isinstance(t, str)),
                )
    return anchors


def _pathway(
    raw: Any, builder: _Builder, lines: Sequence[LineOfBusiness], referrals: Mapping[str, Referral]
) -> Pathway:
    where = "pathway"
    item = _mapping(
        raw,
        where,
        ("id", "title", "short_title", "kind", "applies_when", "approval_months", "refer_to", "criteria"),
        ("id", "kind"),
    )
    pid = item["id"]
    if not isinstance(pid, str) or not (PATHWAY_ID.fullmatch(pid) or SECTION_ID.fullmatch(pid)):
        raise PolicyError(f"{where}: malformed pathway id {pid!r} (expected I.A, II.B or a section like III)")
    if pid in builder.seen_ids:
        raise PolicyError(f"{pid}: duplicate pathway id")
    builder.seen_ids.add(pid)
    kind = item["kind"]
    if kind not in KINDS:
        raise PolicyError(f"{pid}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    title = _text(item.get("title"), pid, "title")
    levels = PATHWAY_LEVELS if PATHWAY_ID.fullmatch(pid) else SECTION_LEVELS
    criteria = builder.criteria(item.get("criteria"), pid, levels)

    diagnoses: tuple[str, ...] = ()
    suggested: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    days: int | None = None
    when = item.get("applies_when")
    if kind == INDICATION:
        when = _mapping(when, f"{pid}.applies_when", ("diagnoses", "suggested_by", "also_requires"), ("diagnoses",))
        diagnoses = _tags(when["diagnoses"], f"{pid}.applies_when.diagnoses")
        suggested = _tags(when.get("suggested_by", []), f"{pid}.applies_when.suggested_by")
        required = _tags(when.get("also_requires", []), f"{pid}.applies_when.also_requires")
        if not diagnoses:
            raise PolicyError(f"{pid}: an indication pathway needs at least one diagnosis tag")
        check_tags((*diagnoses, *suggested, *required), "diagnosis", builder.env, f"{pid}.applies_when")
    elif kind in (CONTINUED, CONTINUED_OTHER):
        when = _mapping(when, f"{pid}.applies_when", ("therapy_days_at_least",), ("therapy_days_at_least",))
        days = when["therapy_days_at_least"]
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise PolicyError(f"{pid}.applies_when.therapy_days_at_least must be a whole number of days >= 1")
    elif when is not None:
        raise PolicyError(f"{pid}: a {kind} section has no applies_when")

    approval: Mapping[LineOfBusiness, Approval] = {}
    referral: Referral | None = None
    if kind in (INDICATION, CONTINUED):
        approval = _approval(item.get("approval_months"), f"{pid}.approval_months", lines)
        if "refer_to" in item:
            raise PolicyError(f"{pid}: an approval pathway refers per line of business in approval_months")
    else:
        if "approval_months" in item:
            raise PolicyError(f"{pid}: a {kind} section approves nothing (no approval_months)")
        key = item.get("refer_to")
        if not isinstance(key, str) or key not in referrals:
            raise PolicyError(f"{pid}: refer_to must name a referral table ({', '.join(referrals)}), got {key!r}")
        referral = referrals[key]
    short = _text(item["short_title"], pid, "short_title") if "short_title" in item else title
    return Pathway(
        pid,
        title,
        kind,
        criteria,
        diagnoses,
        suggested,
        also_requires=required,
        therapy_days=days,
        approval=approval,
        referral=referral,
        short_title=short,
    )


def _check_kinds(pathways: Sequence[Pathway]) -> None:
    count = {kind: sum(p.kind == kind for p in pathways) for kind in KINDS}
    if count[INDICATION] < 1:
        raise PolicyError("the policy needs at least one indication pathway")
    if count[INITIAL_OTHER] != 1:
        raise PolicyError("the policy needs exactly one initial-other pathway (where unmatched requests are referred)")
    if count[CONTINUED] > 1 or count[CONTINUED_OTHER] != count[CONTINUED]:
        raise PolicyError("continued therapy needs exactly one continued and one continued-other pathway, or neither")


# ----------------------------------------------------------------------------- top level


def _referrals(raw: Any, lines: Sequence[LineOfBusiness]) -> dict[str, Referral]:
    if not isinstance(raw, Mapping) or not raw:
        raise PolicyError("referrals: expected a mapping of referral tables")
    out = {}
    for key, table in raw.items():
        where = f"referrals.{key}"
        names = [line.value for line in lines]
        entry = _mapping(table, where, ["text", *names], ["text", *names])
        by_line = {_line(name, where): _text(entry[name], where, name) for name in names}
        out[str(key)] = Referral(str(key), _text(entry["text"], where, "text"), by_line)
    return out


def _non_formulary(raw: Any, families: Mapping[str, str]) -> tuple[NonFormularyRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError("non_formulary: expected a list")
    rules = []
    for index, item in enumerate(raw):
        where = f"non_formulary[{index}]"
        entry = _mapping(
            item,
            where,
            ("line_of_business", "family", "refer_to", "text", "generics", "generic_note"),
            ("line_of_business", "family", "refer_to", "text"),
        )
        generics = entry.get("generics", "evaluate")
        if generics not in ("refer", "evaluate"):
            raise PolicyError(f"{where}: generics must be refer or evaluate")
        if generics == "evaluate" and "generic_note" not in entry:
            raise PolicyError(f"{where}: generics: evaluate needs a generic_note")
        family = str(entry["family"])
        if family not in families:
            raise PolicyError(f"{where}: unknown product family {family!r} (declared: {sorted(families)})")
        rules.append(
            NonFormularyRule(
                _line(entry["line_of_business"], where),
                family,
                _text(entry["refer_to"], where, "refer_to"),
                _text(entry["text"], where, "text"),
                generics,
                _text(entry["generic_note"], where, "generic_note") if "generic_note" in entry else "",
            )
        )
    return tuple(rules)


def _provisional(raw: Any) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    kinds = {"diagnoses": "diagnosis", "ingredients": "ingredient", "specialties": "specialty", "receptors": "receptor"}
    entry = _mapping(raw, "provisional_tags", kinds)
    return {kinds[key]: frozenset(_tags(value, f"provisional_tags.{key}")) for key, value in entry.items()}


def parse_policy(text: str, vocabulary: Vocabulary, source: str = "<policy>") -> Policy:
    """Check and compile policy text against the tag vocabularies; PolicyError ("file:line: ...") on any mistake."""
    raw_document = _read_yaml(text, source)
    problem = check_shape(raw_document, text, source)
    if problem is not None:
        raise PolicyError(problem)
    try:
        return _parse(raw_document, vocabulary, source)
    except PolicyError as exc:
        message = str(exc)
        if message.startswith(f"{source}:"):
            raise
        raise PolicyError(f"{source}:{_line_for(text, message) or '?'}: {message}") from exc


_ID_AT_START = re.compile(r"^(?:line (\d+)|([IVX]+(?:\.[A-Za-z0-9]+)*|label_notes\[\d+\]|non_formulary\[\d+\]))")


def _line_for(text: str, message: str) -> int | None:
    """The line a loader message is about: its "line N", else the line declaring the id it starts with."""
    match = _ID_AT_START.match(message)
    if match is None:
        return None
    if match.group(1):
        return int(match.group(1))
    ident = match.group(2)
    section = re.match(r"(label_notes|non_formulary)\[(\d+)\]", ident)
    if section:
        return line_of(text, (section.group(1), int(section.group(2))))
    pattern = re.compile(rf"^\s*-?\s*id:\s*['\"]?{re.escape(ident)}['\"]?\s*(?:#.*)?$")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _parse(raw_document: Any, vocabulary: Vocabulary, source: str) -> Policy:
    raw = _mapping(
        raw_document,
        source,
        (
            "policy",
            "drug",
            "services",
            "provisional_tags",
            "referrals",
            "non_formulary",
            "label_notes",
            "regimen_markers",
            "duplicate_therapy_groups",
            "pathways",
        ),
        ("policy", "drug", "referrals", "pathways"),
    )
    header = _mapping(
        raw["policy"],
        "policy",
        ("id", "version", "title", "lines_of_business", "document_url", "pa_needed"),
        ("id", "version", "title", "lines_of_business"),
    )
    pa_needed = header.get("pa_needed", "auth-needed")
    if pa_needed not in PA_NEEDED:
        raise PolicyError(f"policy.pa_needed must be one of {', '.join(PA_NEEDED)} (Da Vinci CRD), got {pa_needed!r}")
    if not isinstance(header["version"], str):
        raise PolicyError('policy.version must be quoted text such as "02.25" (YAML reads 02.25 as a number)')
    lines_raw = header["lines_of_business"]
    if not isinstance(lines_raw, list) or not lines_raw:
        raise PolicyError("policy.lines_of_business: expected a non-empty list")
    lines = tuple(_line(v, "policy.lines_of_business") for v in lines_raw)
    if len(set(lines)) != len(lines):
        raise PolicyError("policy.lines_of_business: listed twice")

    drug = _drug(raw.get("drug"), vocabulary)
    env = CompileEnv(
        vocabulary,
        _provisional(raw.get("provisional_tags")),
        _anchors(raw),
        drug.families,
        drug_name=drug.name,
        requirements=_requirements(raw),
    )
    referrals = _referrals(raw["referrals"], lines)
    if not isinstance(raw["pathways"], list) or not raw["pathways"]:
        raise PolicyError("pathways: expected a non-empty list")
    builder = _Builder(env)
    pathways = tuple(_pathway(item, builder, lines, referrals) for item in raw["pathways"])
    _check_kinds(pathways)
    return Policy(
        id=_text(header["id"], "policy", "id"),
        version=header["version"],
        title=_text(header["title"], "policy", "title"),
        lines_of_business=lines,
        pathways=pathways,
        referrals=referrals,
        non_formulary=_non_formulary(raw.get("non_formulary"), drug.families),
        drug=drug,
        services=_services(raw["services"]) if "services" in raw else (),
        source=source,
        label_notes=_label_notes(raw.get("label_notes"), env),
        regimen_markers=_regimen_markers(raw.get("regimen_markers"), env),
        duplicate_therapy_groups=_duplicate_groups(raw.get("duplicate_therapy_groups"), env),
        document_url=_text(header["document_url"], "policy", "document_url") if "document_url" in header else None,
        pa_needed=pa_needed,
    )


def _services(raw: Any) -> tuple[ServiceInfo, ...]:
    """The ``services`` block: one service per hook, in hook order (order-sign, order-select)."""
    entry = _mapping(raw, "services", HOOKS, HOOKS)
    services = []
    for hook in HOOKS:
        item = _mapping(entry[hook], f"services.{hook}", ("id", "title", "description"), ("id", "title", "description"))
        services.append(
            ServiceInfo(
                _text(item["id"], f"services.{hook}", "id"),
                hook,
                _text(item["title"], f"services.{hook}", "title"),
                " ".join(_text(item["description"], f"services.{hook}", "description").split()),
            )
        )
    if services[0].id == services[1].id:
        raise PolicyError(f"services: order-sign and order-select share the id {services[0].id!r}")
    return tuple(services)


def _drug(raw: Any, vocabulary: Vocabulary) -> DrugInfo:
    """The ``drug`` block, checked against the code tables when they say which drug and families they hold."""
    entry = _mapping(
        raw, "drug", ("tag", "name", "families", "non_formulary_words", "max_gap_days"), ("tag", "name", "families")
    )
    tag = _text(entry["tag"], "drug", "tag")
    families = entry["families"]  # shape (a non-empty mapping of text) already checked by schema.check_shape
    if not isinstance(families, Mapping) or not families:
        raise PolicyError("drug.families: expected a non-empty mapping of family -> name")
    labels = {str(k): _text(v, "drug.families", str(k)) for k, v in families.items()}
    table_drug = getattr(vocabulary, "drug_tag", None)
    if table_drug is not None and table_drug != tag:
        raise PolicyError(f"drug.tag {tag!r} is not the drug of the pack's products.csv ({table_drug!r})")
    table_families = getattr(vocabulary, "families", None)
    if table_families is not None and set(labels) != set(table_families):
        raise PolicyError(f"drug.families {sorted(labels)} differ from products.csv families {sorted(table_families)}")
    words = entry.get("non_formulary_words")
    gap = entry.get("max_gap_days")
    if gap is not None and (not isinstance(gap, int) or isinstance(gap, bool) or gap < 0):
        raise PolicyError("drug.max_gap_days must be a whole number of days >= 0")
    return DrugInfo(
        tag,
        _text(entry["name"], "drug", "name"),
        labels,
        _text(words, "drug", "non_formulary_words") if words else None,
        gap,
    )


def _regimen_markers(raw: Any, env: CompileEnv) -> Mapping[str, tuple[str, ...]]:
    """``regimen_markers``: diagnosis tag -> ingredient tags whose order shows the member is on that regimen."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError("regimen_markers: expected a mapping of diagnosis tag -> ingredient tags")
    out: dict[str, tuple[str, ...]] = {}
    for diagnosis, drugs in raw.items():
        where = f"regimen_markers.{diagnosis}"
        if not isinstance(drugs, list) or not drugs or not all(isinstance(d, str) and d for d in drugs):
            raise PolicyError(f"{where}: expected a non-empty list of ingredient tags")
        check_tags((str(diagnosis),), "diagnosis", env, where)
        check_tags(drugs, "ingredient", env, where)
        out[str(diagnosis)] = tuple(drugs)
    return out


def _duplicate_groups(raw: Any, env: CompileEnv) -> tuple[str, ...]:
    """``duplicate_therapy_groups``: medication-group tags; no suggestion adds a second member of one."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(g, str) and g for g in raw):
        raise PolicyError("duplicate_therapy_groups: expected a list of medication-group tags")
    check_tags(raw, "ingredient", env, "duplicate_therapy_groups")
    return tuple(raw)


def _label_notes(raw: Any, env: CompileEnv) -> tuple[LabelNote, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError("label_notes: expected a list")
    notes = []
    for index, item in enumerate(raw):
        where = f"label_notes[{index}]"
        entry = _mapping(item, where, ("id", "when", "text"), ("id", "when", "text"))
        compiled = compile_predicate(entry["when"], f"{where}.when", env)
        notes.append(
            LabelNote(
                _text(entry["id"], where, "id"), _text(entry["text"], where, "text"), compiled.fn, compiled.all_of
            )
        )
    return tuple(notes)


def _default_vocabulary() -> Vocabulary:
    """The code tables' vocabularies (imported lazily: the engine does not otherwise depend on them)."""
    try:
        from fhir_mappings.codes import load_code_tables  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise PolicyError("no tag vocabulary given and fhir_mappings.codes cannot be imported") from exc
    tables: Vocabulary = load_code_tables()
    return tables


def load_policy(path: Path | str | None = None, vocabulary: Vocabulary | None = None) -> Policy:
    """Read, check and compile a policy file (default: the packaged CP.PHAR.63) against the tag vocabularies."""
    if path is None:
        resource = resources.files("cds_service").joinpath("policies", DEFAULT_PACK, POLICY_FILE)
        text, source = resource.read_text(encoding="utf-8"), f"cds_service/policies/{DEFAULT_PACK}/{POLICY_FILE}"
    else:
        target = Path(path)
        if target.is_dir():  # a policy pack folder
            target = target / POLICY_FILE
        try:
            text, source = target.read_text(encoding="utf-8"), str(target)
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: cannot read policy file: {exc}") from exc
    return parse_policy(text, vocabulary if vocabulary is not None else _default_vocabulary(), source)
