"""The facts, evaluation and DTR offer's per-call shortcuts give exactly the answers of the full computation (issue 18).

* ``build_facts`` reads each medication resource's concept and tags once per call (``facts._Medications``): here the
  same facts as reading them every time a reader asks, on hypothesis-drawn charts cut from the sample bundles
  (any subset of their resources, medication statuses redrawn);
* a receptor axis with one sighting takes it without the latest-date and agreement tests (``facts._latest_per_axis``);
* ``engine._result`` builds each ``CriterionResult`` in one ``__dict__`` update (``results.criterion_result``): the
  same object as the dataclass constructor;
* ``facts.finding`` builds a ``Finding`` without the frozen dataclass's ``__init__``: the same object;
* ``read.codings`` / ``read.status_code`` build codings without the named tuple's ``__new__``: the same codings;
* ``offer.answerable`` keeps the canonicals per policy and base, ``offer.suggested_diagnoses`` the policy's
  suggesting pathways: the same answers as working them out on each call;
* selection ranks only the indications whose diagnosis tags the facts show at all (``engine._rank_if_shown``);
* the DTR prefill finds a chart code's value-set row through an index made once per value set (``prefill._row_for``);
* ``diagnoses._combine`` works out a reading's tags again only after a rule adds to them;
* ``predicates._merge`` drops repeats in one ``dict.fromkeys`` over the chained groups;
* ``OrderEvaluation.fixes`` walks the criteria with a list instead of a generator per level;
* without clinician answers ``read_answers`` reads nothing and ``offer`` skips ``diagnosis_notes``, which has
  nothing to say then.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from fhir.resources.R4B.codeableconcept import CodeableConcept
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.dtr import offer
from cds_service.dtr.prefill import _row_for
from cds_service.dtr.questionnaire import (
    applies_link_id,
    asked_pathways,
    product_specific,
    questionnaire_canonical,
    questions_of,
)
from cds_service.policy.engine import _rank_if_shown, _shown_diagnoses, evidence_rank, load_policy, run_pathway
from cds_service.policy.predicates import _merge
from cds_service.policy.results import CriterionResult, Fix, OrderEvaluation, Status, criterion_result
from fhir_mappings import facts as facts_module
from fhir_mappings.answers import ReadAnswers, diagnosis_notes, read_answers
from fhir_mappings.codes import CodeRow, load_code_tables, normalize_icd10cm
from fhir_mappings.diagnoses import ConditionReading, _combine
from fhir_mappings.facts import (
    _latest_per_axis,
    _ReceptorSighting,
    build_facts,
    find_drug_orders,
    finding,
    medication_tags,
)
from fhir_mappings.model import Facts, Finding
from fhir_mappings.normalize import Code
from fhir_mappings.read import codings, medication_concept, status_code
from fhir_mappings.record import build_record

from .test_evaluate_shortcuts import charts
from .test_policy_cp_phar_63 import DIAGNOSIS_TAGS, make_facts

TABLES = load_code_tables()
POLICY = load_policy(vocabulary=TABLES)
SAMPLES = sorted((Path(__file__).resolve().parent.parent / "sample_bundles").glob("*.json"))
BUNDLES = [orjson.loads(p.read_bytes()) for p in SAMPLES if p.name != "expected.json"]
TODAY = date(2026, 11, 27)
MEDICATION_STATUSES = ["active", "completed", "stopped", "on-hold", "intended", "draft", "entered-in-error", "unknown"]


class _ReadEveryTime(facts_module._Medications):
    """The full computation: every reader reads the resource again."""

    def concept(self, resource: Any) -> Any:
        return medication_concept(resource, self.medications)

    def tags(self, resource: Any) -> frozenset[str]:
        return medication_tags(medication_concept(resource, self.medications), self.tables)


def _entries(value: Any) -> list[Any]:
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        return [e.get("resource") for e in value.get("entry") or [] if isinstance(e, dict)]
    return [value] if isinstance(value, dict) else list(value or [])


@st.composite
def sample_charts(draw: st.DrawFn) -> dict[str, Any]:
    """A sample bundle with a drawn subset of each prefetch key's resources, medication statuses redrawn."""
    request = copy.deepcopy(draw(st.sampled_from(BUNDLES)))
    prefetch: dict[str, Any] = {}
    for key, value in request["prefetch"].items():
        resources = _entries(value)
        if key == "patient" or not resources:
            prefetch[key] = value
            continue
        kept = [r for r in resources if draw(st.booleans())]
        for resource in kept:
            medication = isinstance(resource, dict) and resource.get("resourceType", "").startswith("Medication")
            if medication and draw(st.booleans()):
                resource["status"] = draw(st.sampled_from(MEDICATION_STATUSES))
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in kept]}
    request["prefetch"] = prefetch
    return request


def _facts_of(request: dict[str, Any]) -> list[Facts]:
    context = request["context"]
    drafts = _entries(context["draftOrders"])
    record = build_record(
        request["prefetch"], drafts, TABLES, patient_id=context["patientId"], user_ref=context.get("userId")
    )
    return [
        build_facts(record, order_id, TABLES, plan_prefixes={}, user_ref=context.get("userId"), today=TODAY)
        for order_id in find_drug_orders(drafts, TABLES)
        if record.draft(order_id) is not None
    ]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample_charts())
def test_medications_read_once_per_call_give_the_same_facts(request: dict[str, Any]) -> None:
    once = _facts_of(request)
    with mock.patch.object(facts_module, "_Medications", _ReadEveryTime):
        assert _facts_of(request) == once


texts = st.none() | st.sampled_from(["x", "everolimus", "active"])
codings_json = st.lists(
    st.fixed_dictionaries({}, optional={"system": texts, "code": texts, "display": texts}),
    max_size=3,
)


@given(st.none() | st.fixed_dictionaries({}, optional={"coding": codings_json, "text": texts}))
def test_codings_and_status_code_read_as_before(raw: dict[str, Any] | None) -> None:
    concept = CodeableConcept.model_validate(raw) if raw is not None else None
    full = (
        [Code(c.system, c.code, c.display) for c in concept.coding if c is not None]
        if concept and concept.coding
        else []
    )
    assert codings(concept) == full and all(type(c) is Code for c in codings(concept))
    assert status_code(concept) == next((c.code for c in full if c.code), None)


optional_text = st.none() | st.text(max_size=5)
refs = st.lists(st.text(max_size=5), max_size=3).map(tuple)


@given(
    st.text(max_size=5),
    st.sampled_from(list(Status)),
    refs,
    optional_text,
    st.lists(st.builds(Fix, kind=st.text(max_size=3)), max_size=2).map(tuple),
    optional_text,
    st.booleans(),
    refs,
    optional_text,
    st.booleans(),
)
def test_criterion_result_is_the_dataclass(
    text: str,
    status: Status,
    evidence: tuple[str, ...],
    remedy: str | None,
    fixes: tuple[Fix, ...],
    note: str | None,
    applicable: bool,
    gaps: tuple[str, ...],
    review: str | None,
    quoted: bool,
) -> None:
    child = CriterionResult("I.A.1.a", "child", status)
    values = (
        "I.A.1",
        text,
        status,
        evidence,
        remedy,
        fixes,
        (child,),
        note,
        applicable,
        gaps,
        review,
        quoted,
    )
    fast, full = criterion_result(*values), CriterionResult(*values)
    assert fast == full and hash(fast) == hash(full) and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())
    assert [f.name for f in fields(CriterionResult)] == list(vars(fast))


def test_answerable_is_the_full_computation_for_each_base() -> None:
    bases = [f"https://payer{i}.example" for i in range(offer.ANSWERABLE_BASES + 3)]
    for base in bases + bases[:2]:
        full = {
            questionnaire_canonical(base, POLICY, p.id): frozenset(q.link_id for q in questions_of(p))
            | frozenset(applies_link_id(c.id) for c in product_specific(p))
            for p in asked_pathways(POLICY)
        }
        assert dict(offer.answerable(POLICY, base)) == full


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts)
def test_suggested_diagnoses_and_no_answers_shortcuts(chart: dict[str, Any]) -> None:
    facts = make_facts(**chart)
    found = set(facts.diagnoses) | set(facts.possible_diagnoses)
    full = frozenset(tag for p in POLICY.pathways if found.intersection(p.suggested_by) for tag in p.diagnoses)
    assert offer.suggested_diagnoses(POLICY, facts) == full
    # What ``offer`` skips when no clinician answer was read: no notes, whatever the chart suggests.
    assert diagnosis_notes(facts, ReadAnswers(), full) == ()


def test_no_responses_read_as_nothing() -> None:
    assert (
        read_answers([], TABLES, patient_id="p1", order_ref="MedicationRequest/o", questionnaires={}) == ReadAnswers()
    )
    empty_bundle = [{"resourceType": "Bundle", "type": "searchset"}]  # not the shortcut: the full path, same answer
    assert read_answers(empty_bundle, TABLES, patient_id="p1", order_ref="o", questionnaires={}) == ReadAnswers()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    charts, st.lists(st.sampled_from(DIAGNOSIS_TAGS), max_size=2), st.lists(st.sampled_from(DIAGNOSIS_TAGS), max_size=2)
)
def test_rank_if_shown_is_evidence_rank(chart: dict[str, Any], received: list[str], scheduled: list[str]) -> None:
    """Selection skips ``evidence_rank`` for a pathway none of whose tags the facts show: it would be None."""
    finding = Finding(evidence=("Procedure/p",), start=None)
    facts = replace(
        make_facts(**chart),
        procedures={t: finding for t in received},
        scheduled_procedures={t: finding for t in scheduled},
    )
    shown = _shown_diagnoses(facts)
    for pathway in POLICY.pathways:
        assert _rank_if_shown(pathway, facts, shown) == evidence_rank(pathway, facts)


def _row_for_every_row(system: str | None, code: str | None, rows: Sequence[CodeRow]) -> CodeRow | None:
    """The full computation ``prefill._row_for`` replaced: every row's code normalised on every call."""
    if not system or not code:
        return None
    wanted = normalize_icd10cm(code) if system == "icd-10-cm" else code
    best: CodeRow | None = None
    for row in rows:
        if row.system != system:
            continue
        row_code = normalize_icd10cm(row.code) if system == "icd-10-cm" else row.code
        if row_code == wanted:
            return row
        if system == "icd-10-cm" and wanted.startswith(row_code) and (best is None or len(row.code) > len(best.code)):
            best = row
    return best


CONDITION_ROWS = TABLES.condition_codes
value_set_tags = st.lists(st.sampled_from(sorted({t for row in CONDITION_ROWS for t in row.tags})), max_size=4)
chart_codes = st.sampled_from([row.code for row in CONDITION_ROWS]).flatmap(
    lambda code: st.sampled_from([code, code.lower(), code.replace(".", ""), code[:3], code + "1", code[:-1]])
)


@settings(max_examples=400, deadline=None)
@given(
    value_set_tags, st.sampled_from(["icd-10-cm", "snomed", "icd-o-3", None]), st.none() | chart_codes, st.booleans()
)
def test_row_for_is_every_row_read(tags: list[str], system: str | None, code: str | None, as_list: bool) -> None:
    rows = tuple(TABLES.codes_for("diagnosis", tags))
    given_rows = list(rows) if as_list else rows
    assert _row_for(system, code, given_rows) == _row_for_every_row(system, code, rows)


def _combine_reading_tags_per_rule(reading: ConditionReading, tables: Any) -> None:
    """The full computation ``diagnoses._combine`` replaced: the reading's tags worked out for every rule."""
    changed = True
    while changed:
        changed = False
        for rule in tables.combinations:
            if not rule.if_all <= reading.tags:
                continue
            possible = bool(rule.if_all & reading.possible - reading.confirmed)
            words = [w for tag in sorted(rule.if_all) for w in reading.sources.get(tag, ())]
            for tag in rule.then:
                before = (tag in reading.confirmed, tag in reading.possible)
                reading.add(tag, possible, words)
                changed |= before != (tag in reading.confirmed, tag in reading.possible)


COMBINED_TAGS = sorted({t for rule in TABLES.combinations for t in rule.if_all | rule.then})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(COMBINED_TAGS), st.booleans(), st.sampled_from(["a", "b"])), max_size=6))
def test_combine_reads_tags_once_per_change(added: list[tuple[str, bool, str]]) -> None:
    fast, full = ConditionReading(), ConditionReading()
    for tag, possible, word in added:
        fast.add(tag, possible, (word,))
        full.add(tag, possible, (word,))
    _combine(fast, TABLES)
    _combine_reading_tags_per_rule(full, TABLES)
    assert fast == full


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts)
def test_fixes_in_all_criteria_order(chart: dict[str, Any]) -> None:
    """``OrderEvaluation.fixes`` walks the criteria with a list, in ``all_criteria``'s order."""
    facts = make_facts(**chart)
    for pathway in POLICY.pathways:
        result = run_pathway(pathway, facts)
        evaluation = OrderEvaluation(
            "o", "p", "v", pathway.id, pathway.title, result.decision, criteria=result.criteria
        )
        full: list[Fix] = []
        for criterion in evaluation.all_criteria():
            if criterion.status is Status.NOT_MET:
                full += [fix for fix in criterion.fixes if fix not in full]
        assert evaluation.fixes() == tuple(full)


@given(st.lists(st.text(max_size=4), max_size=3).map(tuple), st.none() | st.dates())
def test_finding_is_the_dataclass(evidence: tuple[str, ...], start: date | None) -> None:
    fast, full = finding(evidence, start), Finding(evidence=evidence, start=start)
    assert fast == full and hash(fast) == hash(full) and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())


def _merge_group_by_group(groups: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The full computation ``predicates._merge`` replaced: one ``dict.fromkeys`` per group."""
    seen: dict[str, None] = {}
    for group in groups:
        if group:
            seen.update(dict.fromkeys(group))
    return tuple(seen)


@given(st.lists(st.lists(st.sampled_from("abcde"), max_size=3).map(tuple), max_size=4))
def test_merge_is_group_by_group(groups: list[tuple[str, ...]]) -> None:
    assert _merge(groups) == _merge_group_by_group(groups) == _merge(iter(groups))


def _latest_per_axis_in_full(sightings: list[_ReceptorSighting]) -> dict[str, Finding]:
    """The full computation ``facts._latest_per_axis`` replaced: a lone sighting goes through max and the tie test."""
    by_axis: dict[str, list[_ReceptorSighting]] = {}
    for sighting in sightings:
        by_axis.setdefault(sighting.tag.rsplit("-", 1)[0], []).append(sighting)
    out: dict[str, Finding] = {}
    for axis in sorted(by_axis):
        on_axis = by_axis[axis]
        latest = max((s.on for s in on_axis if s.on is not None), default=None)
        winners = [s for s in on_axis if s.on == latest]
        if len({s.tag for s in winners}) == 1:
            out[winners[0].tag] = Finding(evidence=tuple(dict.fromkeys(s.ref for s in winners)), start=latest)
    return out


sightings = st.lists(
    st.builds(
        _ReceptorSighting,
        st.sampled_from([None, date(2026, 1, 1), date(2026, 6, 1)]),
        st.sampled_from(["er-positive", "er-negative", "her2-positive", "her2-negative", "hr-positive", "pr-negative"]),
        st.sampled_from(["Observation/a", "Observation/b", "Condition/c"]),
    ),
    max_size=6,
)


@given(sightings)
def test_latest_per_axis_with_a_lone_sighting_shortcut(drawn: list[_ReceptorSighting]) -> None:
    fast = _latest_per_axis(drawn)
    assert fast == _latest_per_axis_in_full(drawn) and list(fast) == list(_latest_per_axis_in_full(drawn))
