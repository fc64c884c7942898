"""One DTR standard Questionnaire per pathway of a policy pack, generated from the policy file.

Every criterion a chart can decide becomes an item whose linkId is the criterion id (I.A.5); a criterion with
several tests becomes a group of questions (I.A.2/1 diagnosis, I.A.2/2 extent), one with sub-items a group of
its sub-items. The policy text is the item text, the remedy its help text, and the answer type fits the fact:
boolean, a choice from a value set of the pack's code tables, a date, a quantity. ``enableWhen`` mirrors the
policy: the "then" of a conditional is asked when its "if" is answered yes, and an alternative of an "any of"
only while no earlier yes/no alternative is answered yes. Canonicals carry the policy's own version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
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
    """ "cp-phar-63-i-a" for CP.PHAR.63 pathway I.A: a FHIR id (letters, digits, '-', at most 64)."""
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
            "contains": [coding(row, tables) for row in ref.rows],
        },
    }


def _stable_uuid(text: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, text))


# ----------------------------------------------------------------------------- items


def _help(link_id: str, text: str) -> dict[str, Any]:
    return {
        "linkId": f"{link_id}/help",
        "type": "display",
        "text": text,
        "extension": [
            {
                "url": ITEM_CONTROL,
                "valueCodeableConcept": {
                    "coding": [{"system": ITEM_CONTROL_SYSTEM, "code": "help", "display": "Help-Button"}]
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

    def question(self, q: Question, text: str | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {"linkId": q.link_id, "text": text or q.text, "type": q.kind}
        self.kinds[q.link_id] = q.kind
        self.asked[q.link_id] = q
        if q.repeats:
            item["repeats"] = True
        if q.options:
            item["answerOption"] = [
                {"valueCoding": {"system": self.tables.system_uri(s) or s, "code": c, "display": d}}
                for s, c, d in q.options
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

    def criterion(self, criterion: Criterion) -> dict[str, Any] | None:
        children = [item for child in criterion.children if (item := self.criterion(child))]
        questions: list[dict[str, Any]] = []
        for leaf in criterion.leaves:
            for q in leaf.questions:
                item = self.question(q)
                conditions = self.enable_when(leaf)
                if conditions:
                    item["enableWhen"] = conditions
                    if len(conditions) > 1:
                        item["enableBehavior"] = "any"
                questions.append(item)
        if not children and not questions:
            return None
        if children:
            _mirror_any_of(children, criterion, self.kinds)
        if len(questions) == 1 and not children and questions[0]["linkId"] == criterion.id:
            single = questions[0]
            own = single["text"]
            single["text"] = criterion.text if single["type"] == "boolean" else f"{criterion.text} {own}"
            single["prefix"] = criterion.id
            single["item"] = [_help(criterion.id, criterion.remedy)]
            return single
        return {
            "linkId": criterion.id,
            "prefix": criterion.id,
            "text": criterion.text,
            "type": "group",
            "item": [*questions, *children, _help(criterion.id, criterion.remedy)],
        }


def _mirror_any_of(children: list[dict[str, Any]], criterion: Criterion, kinds: dict[str, str]) -> None:
    """Sub-items "(a or b)": an alternative is asked only while no earlier yes/no alternative is answered yes."""
    if not _is_any_of(criterion):
        return
    earlier: list[str] = []
    for item in children:
        if earlier and "enableWhen" not in item:
            item["enableWhen"] = [{"question": q, "operator": "!=", "answerBoolean": True} for q in earlier]
            if len(earlier) > 1:
                item["enableBehavior"] = "all"
        if item.get("type") == "boolean":
            earlier.append(item["linkId"])


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
    items = [item for c in pathway.criteria if (item := builder.criterion(c))]
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
        "publisher": publisher,
        "description": (
            f"What {policy.id} ({policy.title}, version {policy.version}) asks for {pathway.title}, generated from "
            "the policy file that decides the coverage check. Each item's linkId is the policy's criterion id; "
            "criteria decided by the order itself (product, dose) are fixed on the order, not asked here."
        ),
        **({"contained": contained} if contained else {}),
        "item": items,
    }
    return questionnaire, list(builder.value_sets.values())


def all_value_sets(policy: Policy, tables: CodeTables, base: str) -> Iterable[tuple[ValueSetRef, Question]]:
    seen: set[str] = set()
    for pathway in asked_pathways(policy):
        for q in questions_of(pathway):
            ref = value_set_for(q, policy, tables, base)
            if ref is not None and ref.url not in seen:
                seen.add(ref.url)
                yield ref, q
