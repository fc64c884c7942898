"""One DTR standard Questionnaire per pathway of a policy pack, generated from the policy file.

Every criterion a chart can decide becomes an item whose linkId is the criterion id (I.A.5); a criterion with
several tests becomes a group of questions (I.A.2/1 diagnosis, I.A.2/2 extent), one with sub-items a group of
its sub-items. The policy text is the item text, the remedy its help text, and the answer type fits the fact:
boolean, a choice from a value set of the pack's code tables, a date, a quantity. ``enableWhen`` mirrors the
policy: the "then" of a conditional is asked when its "if" is answered yes, and an alternative of an "any of"
only while no earlier alternative is met (a yes/no answered yes, or every dose limit filled in yes from the order).
Only the open questions: what the order decides is read-only and filled in (``prefill.py``), the items that decide
a criterion are ``required`` (an ungated alternative is not), distinct codes get distinct option labels, help is
an SDC ``flyover`` display item, and each Questionnaire carries ``date``, ``publisher``, ``contact`` and a
generated narrative. Canonicals carry the policy's own version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from fhir_mappings.codes import CodeRow, CodeTables

from ..policy.loader import CONTINUED, INDICATION, Criterion, Pathway, Policy
from ..policy.questions import Leaf, Question

DTR_STD_QUESTIONNAIRE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-std-questionnaire"
ITEM_CONTROL = "http://hl7.org/fhir/StructureDefinition/questionnaire-itemControl"
ITEM_CONTROL_SYSTEM = "http://hl7.org/fhir/questionnaire-item-control"
UNIT_OPTION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unitOption"
#: Pathway kinds a clinician documents for; referral sections send the request to another policy instead.
ASKED_KINDS = (INDICATION, CONTINUED)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def questionnaire_id(policy: Policy, pathway_id: str) -> str:
    """ "cp-phar-63-i-a" for CP.PHAR.63 pathway I.A: a FHIR id (letters, digits, '-', at most 64).

    Worked out once per policy (every hook call names its canonicals): the slug's regex is not free."""
    ids: dict[str, str] = memoised(
        "questionnaire-ids", policy, lambda: {p.id: _slug_id(policy, p.id) for p in policy.pathways}
    )
    return ids.get(pathway_id) or _slug_id(policy, pathway_id)


def _slug_id(policy: Policy, pathway_id: str) -> str:
    return slug(f"{policy.id}-{pathway_id}")[:64]


def value_set_id(policy: Policy, link_id: str) -> str:
    return slug(f"{policy.id}-{link_id}")[:64]


def canonical(base: str, kind: str, resource_id: str) -> str:
    return f"{base.rstrip('/')}/fhir/{kind}/{resource_id}"


def questionnaire_canonical(base: str, policy: Policy, pathway_id: str) -> str:
    """The version-specific canonical ``{base}/fhir/Questionnaire/{id}|{policy version}``."""
    return f"{canonical(base, 'Questionnaire', questionnaire_id(policy, pathway_id))}|{policy.version}"


def asked_pathways(policy: Policy) -> list[Pathway]:
    return [p for p in policy.pathways if p.kind in ASKED_KINDS]


def leaves_of(pathway: Pathway) -> Iterator[Leaf]:
    for criterion in pathway.criteria:
        for node in criterion.walk():
            yield from node.leaves


#: Per-object memos for what never changes after loading (policies and tables are immutable once loaded); the
#: object is kept beside its result so a recycled id() can never return another object's answer.
_MEMOS: dict[tuple[str, int], tuple[object, Any]] = {}


def memoised(kind: str, owner: object, compute: Callable[[], Any]) -> Any:
    key = (kind, id(owner))
    hit = _MEMOS.get(key)
    if hit is not None and hit[0] is owner:
        return hit[1]
    value = compute()
    _MEMOS[key] = (owner, value)
    return value


def applies_link_id(criterion_id: str) -> str:
    """The read-only item saying whether the order is for the products a criterion is written for (``applies_to``)."""
    return f"{criterion_id}/applies"


def product_specific(pathway: Pathway) -> tuple[Criterion, ...]:
    """The pathway's criteria (at any depth) written for some products only, in policy order (once per pathway)."""
    result: tuple[Criterion, ...] = memoised("product-specific", pathway, lambda: _product_specific(pathway))
    return result


def _product_specific(pathway: Pathway) -> tuple[Criterion, ...]:

    def walk(criteria: Iterable[Criterion]) -> Iterator[Criterion]:
        for criterion in criteria:
            if criterion.applies_to is not None:
                yield criterion
            yield from walk(criterion.children)

    return tuple(walk(pathway.criteria))


def asked_leaves(pathway: Pathway) -> tuple[Leaf, ...]:
    """The pathway's leaf tests that ask something, in policy order (once per pathway)."""
    result: tuple[Leaf, ...] = memoised(
        "asked-leaves", pathway, lambda: tuple(leaf for leaf in leaves_of(pathway) if leaf.questions)
    )
    return result


def questions_of(pathway: Pathway) -> tuple[Question, ...]:
    result: tuple[Question, ...] = memoised(
        "questions", pathway, lambda: tuple(q for leaf in leaves_of(pathway) for q in leaf.questions)
    )
    return result


# ----------------------------------------------------------------------------- value sets


@dataclass(frozen=True)
class ValueSetRef:
    id: str
    url: str
    rows: tuple[CodeRow, ...]


def value_set_rows(question: Question, tables: CodeTables) -> tuple[CodeRow, ...]:
    if question.value_set is None:
        return ()
    kind, tags = question.value_set
    by_set: dict[tuple[str, tuple[str, ...]], tuple[CodeRow, ...]] = memoised("value-sets", tables, dict)
    rows = by_set.get((kind, tags))
    if rows is None:
        rows = by_set[(kind, tags)] = tuple(tables.codes_for(kind, tags))
    return rows


def value_set_for(question: Question, policy: Policy, tables: CodeTables, base: str) -> ValueSetRef | None:
    if question.value_set is None:
        return None
    vs_id = value_set_id(policy, question.link_id)
    return ValueSetRef(vs_id, canonical(base, "ValueSet", vs_id), value_set_rows(question, tables))


def coding(row: CodeRow, tables: CodeTables) -> dict[str, str]:
    return {"system": tables.system_uri(row.system) or row.system, "code": row.code, "display": row.display}


def option_coding(option: tuple[str, str, str], tables: CodeTables) -> dict[str, str]:
    system, code, display = option
    return {"system": tables.system_uri(system) or system, "code": code, "display": display}


def labelled(codings: list[dict[str, str]], tables: CodeTables) -> list[dict[str, str]]:
    """Distinct labels for distinct codes: where two codes of a list share a display (SNOMED CT 733607005 and
    733608000 are both "Papillary renal cell carcinoma"), each such label names its code system and code."""
    counts: dict[str, int] = {}
    for c in codings:
        counts[c["display"].casefold()] = counts.get(c["display"].casefold(), 0) + 1
    return [
        {**c, "display": f"{c['display']} ({_system_label(c['system'], tables)} {c['code']})"}
        if counts[c["display"].casefold()] > 1
        else c
        for c in codings
    ]


def _system_label(uri: str, tables: CodeTables) -> str:
    name = tables.system_name(uri) or uri
    return SYSTEM_LABELS.get(name, name)


#: How an option label names a code system (the tables' system names, fhir_mappings/tables/systems.csv).
SYSTEM_LABELS = {"snomed": "SNOMED CT", "icd-10-cm": "ICD-10-CM", "rxnorm": "RxNorm"}


def value_set_resource(
    ref: ValueSetRef, question: Question, policy: Policy, tables: CodeTables, timestamp: str
) -> dict[str, Any]:
    """A ValueSet with its compose (the table rows) and a full expansion as of ``timestamp``."""
    by_system: dict[str, list[dict[str, str]]] = {}
    for row in ref.rows:
        by_system.setdefault(tables.system_uri(row.system) or row.system, []).append(
            {"code": row.code, "display": row.display}
        )
    kind = question.value_set[0] if question.value_set else "codes"
    return {
        "resourceType": "ValueSet",
        "id": ref.id,
        "url": ref.url,
        "version": policy.version,
        "name": re.sub(r"[^A-Za-z0-9]", "", f"{policy.id}{question.link_id}") + "Answers",
        "title": f"{policy.id} {question.link_id}: {question.text}",
        "status": "active",
        "description": f"The {kind} codes of the {policy.id} code tables that item {question.link_id} accepts.",
        "compose": {"include": [{"system": system, "concept": concepts} for system, concepts in by_system.items()]},
        "expansion": {
            "identifier": f"urn:uuid:{_stable_uuid(ref.url + '|' + policy.version)}",
            "timestamp": timestamp,
            "total": len(ref.rows),
            "contains": labelled([coding(row, tables) for row in ref.rows], tables),
        },
    }


def _stable_uuid(text: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, text))


# ----------------------------------------------------------------------------- items


def _help(link_id: str, text: str) -> dict[str, Any]:
    """The remedy as SDC ``flyover`` help: Smart Forms shows a flyover child as a tooltip on its parent's label, and
    LHC-Forms shows any display child with an item control other than unit or legal as its help button."""
    return {
        "linkId": f"{link_id}/help",
        "type": "display",
        "text": text,
        "extension": [
            {
                "url": ITEM_CONTROL,
                "valueCodeableConcept": {
                    "coding": [{"system": ITEM_CONTROL_SYSTEM, "code": "flyover", "display": "Fly-over"}]
                },
            }
        ],
    }


class _ItemBuilder:
    def __init__(self, policy: Policy, tables: CodeTables, base: str) -> None:
        self.policy, self.tables, self.base = policy, tables, base
        self.value_sets: dict[str, tuple[ValueSetRef, Question]] = {}
        self.kinds: dict[str, str] = {}  # linkId -> item type, for enableWhen
        self.asked: dict[str, Question] = {}

    def question(self, q: Question, leaf: Leaf) -> dict[str, Any]:
        """The item: required unless the order fills it in (read-only) or it is one alternative of several; an
        item that only matters for some answers of another (``Question.enabled_by``) is enabled by them."""
        item: dict[str, Any] = {"linkId": q.link_id, "text": q.text, "type": q.kind}
        self.kinds[q.link_id] = q.kind
        self.asked[q.link_id] = q
        if q.read_only:
            item["readOnly"] = True
        elif not leaf.alternative:
            item["required"] = True
        if q.repeats:
            item["repeats"] = True
        if q.options:
            item["answerOption"] = [
                {"valueCoding": c} for c in labelled([option_coding(o, self.tables) for o in q.options], self.tables)
            ]
        ref = value_set_for(q, self.policy, self.tables, self.base)
        if ref is not None:
            self.value_sets[ref.url] = (ref, q)
            item["answerValueSet"] = f"#{ref.id}"  # contained, expanded: renderers need no terminology server
        if q.unit is not None:
            system, code, display = q.unit
            item["extension"] = [
                {"url": UNIT_OPTION, "valueCoding": {"system": system, "code": code, "display": display}}
            ]
        return item

    def own_condition(self, q: Question) -> list[dict[str, Any]]:
        """``Question.enabled_by``: the other question answered yes (a yes/no) or with one of the listed codes."""
        if q.enabled_by is None:
            return []
        link_id, codes = q.enabled_by
        other = self.asked[link_id]
        if other.kind == "boolean":
            return [{"question": link_id, "operator": "=", "answerBoolean": True}]
        return [
            {"question": link_id, "operator": "=", "answerCoding": option_coding(option, self.tables)}
            for option in other.options
            if option[1] in codes
        ]

    def enable_when(self, leaf: Leaf) -> list[dict[str, Any]]:
        """The conditions under which a "then" question is asked: its "if" answered yes, or with one of the codes
        that count as yes (any of them)."""
        conditions: list[dict[str, Any]] = []
        for link_id in leaf.enabled_by:
            question = self.asked.get(link_id)
            if question is None or question.kind == "boolean":
                conditions.append({"question": link_id, "operator": "=", "answerBoolean": True})
            elif question.yes_tags:
                conditions += [
                    {"question": link_id, "operator": "=", "answerCoding": coding(row, self.tables)}
                    for row in self.tables.codes_for("diagnosis", question.yes_tags)
                ]
            else:
                conditions.append({"question": link_id, "operator": "exists", "answerBoolean": True})
        return conditions

    def criterion(self, criterion: Criterion) -> list[dict[str, Any]]:
        """The criterion's items, behind a read-only "is the order for <product>?" item when the criterion is for
        some products only (``applies_to``): on another product's order they are never enabled, so never asked."""
        items = self.criterion_items(criterion)
        if criterion.applies_to is None or not items:
            return items
        gate = applies_link_id(criterion.id)
        return [
            {
                "linkId": gate,
                "prefix": criterion.id,
                "text": f"Is the order for {criterion.applies_to.words or 'the products this criterion names'}? "
                "(from the order)",
                "type": "boolean",
                "readOnly": True,
            },
            {
                "linkId": f"{criterion.id}/for",
                "text": criterion.text,
                "type": "group",
                "enableWhen": [{"question": gate, "operator": "=", "answerBoolean": True}],
                "item": items,
            },
        ]

    def criterion_items(self, criterion: Criterion) -> list[dict[str, Any]]:
        """The criterion's items: one question carrying the criterion id (with the questions that qualify its
        answer beside it), or a group of its questions and sub-items; none when nothing is asked."""
        children = [item for child in criterion.children for item in self.criterion(child)]
        questions: list[dict[str, Any]] = []
        for leaf in criterion.leaves:
            for q in leaf.questions:
                item = self.question(q, leaf)
                conditions = self.own_condition(q) or self.enable_when(leaf)
                if conditions:
                    item["enableWhen"] = conditions
                    if len(conditions) > 1:
                        item["enableBehavior"] = "any"
                questions.append(item)
        if not children and not questions:
            return []
        if children:
            _mirror_any_of(children, criterion)
        main = next((q for q in questions if q["linkId"] == criterion.id), None)
        if main is not None and not children:
            own = main["text"]
            plain = main["type"] == "boolean" and not main.get("readOnly")
            main["text"] = criterion.text if plain else f"{criterion.text} {own}"
            main["prefix"] = criterion.id
            main["item"] = [_help(criterion.id, criterion.remedy)]
            for beside in questions:
                beside.setdefault("prefix", criterion.id)
            return questions
        return [
            {
                "linkId": criterion.id,
                "prefix": criterion.id,
                "text": criterion.text,
                "type": "group",
                "item": [*questions, *children, _help(criterion.id, criterion.remedy)],
            }
        ]


def _mirror_any_of(children: list[dict[str, Any]], criterion: Criterion) -> None:
    """Sub-items "(a or b)": an alternative is asked only while no earlier alternative is met: a yes/no answered
    yes, or a group of read-only limits all filled in yes (the dose within i, ii and iii makes the literature of b
    unnecessary). Only an alternative so gated is required; the others may be left blank."""
    if not _is_any_of(criterion):
        return
    earlier: list[str] = []
    limits: list[str] | None = None  # the read-only yes/no items of the one earlier "all of" group
    for index, item in enumerate(children):
        if earlier and "enableWhen" not in item:
            item["enableWhen"] = [{"question": q, "operator": "!=", "answerBoolean": True} for q in earlier]
            if len(earlier) > 1:
                item["enableBehavior"] = "all"
        elif limits and index == 1 and "enableWhen" not in item:
            item["enableWhen"] = [{"question": q, "operator": "!=", "answerBoolean": True} for q in limits]
            if len(limits) > 1:
                item["enableBehavior"] = "any"  # asked when any limit is not (known to be) kept
        else:
            _not_required(item)
        if item.get("type") == "boolean" and not item.get("readOnly"):
            earlier.append(item["linkId"])
        elif index == 0 and item.get("type") == "group":
            limits = _read_only_yes_no(item)


def _read_only_yes_no(group: Mapping[str, Any]) -> list[str] | None:
    """The linkIds of a group made only of read-only yes/no items (and help), else None."""
    asked = [i for i in group.get("item") or () if i.get("type") != "display"]
    if asked and all(i.get("type") == "boolean" and i.get("readOnly") for i in asked):
        return [i["linkId"] for i in asked]
    return None


def _not_required(item: dict[str, Any]) -> None:
    item.pop("required", None)
    for child in item.get("item") or ():
        _not_required(child)


def _is_any_of(criterion: Criterion) -> bool:
    return criterion.sub_items == "any"


def build_questionnaire(
    policy: Policy, pathway: Pathway, tables: CodeTables, base: str, publisher: str, timestamp: str | None = None
) -> tuple[dict[str, Any], list[tuple[ValueSetRef, Question]]]:
    """The pathway's Questionnaire and the value sets it references (ref, question).

    Self-contained: each value set is also in ``contained``, expanded as of ``timestamp`` (default now), with its
    canonical ``url`` and ``version``, and items reference it as ``#id``; LHC-Forms and Smart Forms render the form
    as delivered, without resolving canonicals. The package Bundle still carries the same ValueSets for clients that
    resolve canonicals (DTR oper-14), and ``$expand`` answers for their ``url|version``.
    """
    builder = _ItemBuilder(policy, tables, base)
    items = [item for c in pathway.criteria for item in builder.criterion(c)]
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="seconds")
    contained = [value_set_resource(ref, q, policy, tables, stamp) for ref, q in builder.value_sets.values()]
    qid = questionnaire_id(policy, pathway.id)
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": qid,
        "meta": {"profile": [DTR_STD_QUESTIONNAIRE]},
        "url": canonical(base, "Questionnaire", qid),
        "version": policy.version,
        "name": re.sub(r"[^A-Za-z0-9]", "", f"{policy.id}{pathway.id}") + "Documentation",
        "title": f"{policy.id} {pathway.id} {pathway.title}: prior authorization documentation",
        "status": "active",
        "subjectType": ["Patient"],
        "date": stamp,
        "publisher": publisher,
        "contact": [{"name": publisher, "telecom": [{"system": "url", "value": base.rstrip("/")}]}],
        "description": (
            f"What {policy.id} ({policy.title}, version {policy.version}) asks for {pathway.title}, generated from "
            "the policy file that decides the coverage check. Each item's linkId is the policy's criterion id. "
            "The product is fixed on the order, not asked here; whether a brand with a generic is ordered and "
            "whether the dose is within each limit are filled in from the order (read-only), and the items they "
            "make unnecessary are disabled."
        ),
        **({"contained": contained} if contained else {}),
        "item": items,
    }
    questionnaire["text"] = {"status": "generated", "div": narrative(questionnaire)}
    return {k: questionnaire[k] for k in ORDER if k in questionnaire}, list(builder.value_sets.values())


#: Element order of the Questionnaire as FHIR JSON lists it (text before contained and the rest).
ORDER: tuple[str, ...] = ("resourceType", "id", "meta", "text", "contained", "url", "version", "name", "title")
ORDER += ("status", "subjectType", "date", "publisher", "contact", "description", "item")


def narrative(questionnaire: Mapping[str, Any]) -> str:
    """The human-readable summary (``text``, status generated): the title, who publishes it, and each item as
    the renderers show it (prefix, text), indented by level."""
    lines = [
        f"<p><b>{escape(questionnaire['title'])}</b></p>",
        f"<p>{escape(questionnaire['publisher'])}, version {escape(questionnaire['version'])}.</p>",
        f"<p>{escape(questionnaire['description'])}</p>",
        "<ul>",
        *_narrative_items(questionnaire.get("item") or ()),
        "</ul>",
    ]
    return '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(lines) + "</div>"


def _narrative_items(items: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for item in items:
        if item.get("type") == "display":
            continue
        prefix = f"{escape(item['prefix'])} " if item.get("prefix") else ""
        marks = " (from the order)" if item.get("readOnly") else " (required)" if item.get("required") else ""
        inner = list(_narrative_items(item.get("item") or ()))
        nested = f"<ul>{''.join(inner)}</ul>" if inner else ""
        yield f"<li>{prefix}{escape(item.get('text') or '')}{marks}{nested}</li>"


def all_value_sets(policy: Policy, tables: CodeTables, base: str) -> Iterable[tuple[ValueSetRef, Question]]:
    seen: set[str] = set()
    for pathway in asked_pathways(policy):
        for q in questions_of(pathway):
            ref = value_set_for(q, policy, tables, base)
            if ref is not None and ref.url not in seen:
                seen.add(ref.url)
                yield ref, q
