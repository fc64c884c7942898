"""The policy engine in general: Kleene logic, loader rejections, conditional semantics, evidence and fixes.

These tests use a small policy of their own, so they hold for any policy file, not only CP.PHAR.63.
"""

from __future__ import annotations

import copy
import itertools
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_service.policy.engine import PolicyError, PolicyVocabulary, evaluate, evaluate_pathway, load_policy
from cds_service.policy.loader import Policy, parse_policy
from cds_service.policy.predicates import (
    CompileEnv,
    Outcome,
    all_of_status,
    any_of_status,
    combine_all,
    combine_any,
    compile_predicate,
    implies,
    not_status,
)
from cds_service.policy.results import Decision, Fix, Status
from fhir_mappings.model import Dose, Facts, Finding, LineOfBusiness, Product

MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN
STATUSES = (MET, NOT_MET, UNKNOWN)
#: Kleene order used as an independent reference: AND is the minimum, OR the maximum.
ORDER = {NOT_MET: 0, UNKNOWN: 1, MET: 2}

VOCAB = PolicyVocabulary(
    diagnosis_tags=frozenset({"breast-cancer", "rcc", "secondary-malignancy", "metastatic-stage"}),
    ingredient_tags=frozenset({"exemestane", "letrozole", "endocrine-therapy"}),
    specialty_tags=frozenset({"oncology"}),
    receptor_tags=frozenset(
        {"er-positive", "er-negative", "pr-positive", "pr-negative", "her2-positive", "her2-negative", "hr-positive"}
    ),
)
FAMILIES = {"afinitor": "Afinitor", "afinitor-disperz": "Afinitor Disperz", "zortress": "Zortress"}
ENV = CompileEnv(VOCAB, families=FAMILIES)

PRODUCTS = {
    MET: Product(
        "845507",
        "everolimus 10 MG Oral Tablet",
        "afinitor",
        False,
        10.0,
        "tablet",
        "845507",
        "everolimus 10 MG Oral Tablet",
        True,
    ),
    NOT_MET: Product(
        "977438",
        "everolimus 0.75 MG Oral Tablet",
        "zortress",
        False,
        0.75,
        "tablet",
        "977438",
        "everolimus 0.75 MG Oral Tablet",
        True,
    ),
    UNKNOWN: Product(None, "everolimus", None, None, None, None, None, None, False),
}
AGES = {MET: 40, NOT_MET: 12, UNKNOWN: None}
DOSES = {MET: 10.0, NOT_MET: 30.0, UNKNOWN: None}

#: Three independent leaves whose status each fact controls (product family, age, daily dose).
LEAF_P = {"product_in": {"families": ["afinitor"]}}
LEAF_Q = {"age_at_least": {"years": 18}}
LEAF_R = {"dose_within": {"max_mg_per_day": 20}}


def facts(p: Status = MET, q: Status = MET, r: Status = MET, **kw: Any) -> Facts:
    """Facts where LEAF_P, LEAF_Q and LEAF_R evaluate to p, q and r."""
    values: dict[str, Any] = {
        "order_ref": "MedicationRequest/o1",
        "evaluation_date": date(2026, 11, 20),
        "product": PRODUCTS[p],
        "dose": Dose(DOSES[r], 1.0),
        "age_years": AGES[q],
        "age_evidence": ("Patient/p1",),
    }
    values.update(kw)
    return Facts(**values)


def run(spec: Any, f: Facts, subs: tuple[Outcome, ...] = ()) -> Outcome:
    return compile_predicate(spec, "test", ENV).fn(f, subs)


# ----------------------------------------------------------------------------- Kleene truth tables


@pytest.mark.parametrize(
    "values", list(itertools.product(STATUSES, repeat=2)) + list(itertools.product(STATUSES, repeat=3))
)
def test_all_of_and_any_of_status_are_kleene(values: tuple[Status, ...]) -> None:
    assert all_of_status(values) is min(values, key=ORDER.__getitem__)
    assert any_of_status(values) is max(values, key=ORDER.__getitem__)


@pytest.mark.parametrize("p,q,r", list(itertools.product(STATUSES, repeat=3)))
def test_compiled_all_of_and_any_of_over_three_leaves(p: Status, q: Status, r: Status) -> None:
    f = facts(p, q, r)
    assert [run(leaf, f).status for leaf in (LEAF_P, LEAF_Q, LEAF_R)] == [p, q, r]
    assert run({"all_of": [LEAF_P, LEAF_Q, LEAF_R]}, f).status is min((p, q, r), key=ORDER.__getitem__)
    assert run({"any_of": [LEAF_P, LEAF_Q, LEAF_R]}, f).status is max((p, q, r), key=ORDER.__getitem__)


def test_empty_combinations_are_identity_elements() -> None:
    assert all_of_status([]) is MET
    assert any_of_status([]) is NOT_MET


@pytest.mark.parametrize("status,expected", [(MET, NOT_MET), (NOT_MET, MET), (UNKNOWN, UNKNOWN)])
def test_not(status: Status, expected: Status) -> None:
    assert not_status(status) is expected
    assert run({"not": LEAF_P}, facts(p=status)).status is expected


# ----------------------------------------------------------------------------- conditional


CONDITIONAL_TABLE = [
    # (if, then, expected): a condition that does not hold makes the criterion met; one that holds defers to
    # "then"; an unknown condition is met only when "then" is met anyway.
    (NOT_MET, MET, MET),
    (NOT_MET, NOT_MET, MET),
    (NOT_MET, UNKNOWN, MET),
    (MET, MET, MET),
    (MET, NOT_MET, NOT_MET),
    (MET, UNKNOWN, UNKNOWN),
    (UNKNOWN, MET, MET),
    (UNKNOWN, NOT_MET, UNKNOWN),
    (UNKNOWN, UNKNOWN, UNKNOWN),
]


@pytest.mark.parametrize("cond,then,expected", CONDITIONAL_TABLE)
def test_conditional_semantics(cond: Status, then: Status, expected: Status) -> None:
    assert implies(Outcome(cond), Outcome(then)).status is expected
    spec = {"conditional": {"if": LEAF_P, "then": LEAF_Q}}
    assert run(spec, facts(p=cond, q=then)).status is expected


def test_conditional_offers_then_fixes_only_when_it_decides() -> None:
    fix = Fix(kind="add-companion", display="x")
    assert implies(Outcome(MET), Outcome(NOT_MET, (), (fix,))).fixes == (fix,)
    assert implies(Outcome(NOT_MET), Outcome(NOT_MET, (), (fix,))).fixes == ()


# ----------------------------------------------------------------------------- evidence and fixes


def test_evidence_comes_from_the_children_that_decided() -> None:
    a, b, c = Outcome(MET, ("A/1",)), Outcome(NOT_MET, ("B/1",)), Outcome(UNKNOWN, ("C/1",))
    assert combine_all([a, Outcome(MET, ("A/2", "A/1"))]).evidence == ("A/1", "A/2")
    assert combine_all([a, b, c]).evidence == ("B/1",)
    assert combine_all([a, c]).evidence == ("C/1",)
    assert combine_any([a, b, c]).evidence == ("A/1",)
    assert combine_any([b, c]).evidence == ("C/1",)
    assert combine_any([b, Outcome(NOT_MET, ("B/2",))]).evidence == ("B/1", "B/2")


def test_fixes_travel_only_where_they_could_satisfy_the_whole() -> None:
    fix = Fix(kind="add-companion", rxcui="1", display="x")
    fixable = Outcome(NOT_MET, (), (fix,))
    structural = Outcome(NOT_MET)  # e.g. a diagnosis the record does not show
    assert combine_all([Outcome(MET), fixable]).fixes == (fix,)
    assert combine_all([structural, fixable]).fixes == ()
    assert combine_all([Outcome(UNKNOWN), fixable]).fixes == (fix,)
    assert combine_any([structural, fixable]).fixes == (fix,)
    assert combine_any([Outcome(MET), fixable]).fixes == ()


def test_leaf_evidence_is_the_resources_behind_the_fact() -> None:
    f = facts(
        diagnoses={"breast-cancer": Finding(("Condition/c1",))},
        possible_diagnoses={"rcc": Finding(("Condition/c2",))},
        specialties={"oncology": Finding(("PractitionerRole/r1",))},
        co_medications={"exemestane": Finding(("MedicationRequest/m2",))},
        medication_history={"letrozole": Finding(("MedicationStatement/s1",), date(2025, 1, 1))},
        receptors={"er-positive": Finding(("Observation/er",)), "her2-negative": Finding(("Observation/her2",))},
    )
    assert run({"diagnosis_in": {"tags": ["breast-cancer"]}}, f) == Outcome(MET, ("Condition/c1",))
    assert run({"diagnosis_in": {"tags": ["rcc"]}}, f) == Outcome(UNKNOWN, ("Condition/c2",))
    assert run(LEAF_Q, f) == Outcome(MET, ("Patient/p1",))
    assert run(LEAF_P, f).evidence == ("MedicationRequest/o1",)
    assert run(LEAF_R, f).evidence == ("MedicationRequest/o1",)
    assert run({"prescriber_specialty_in": {"specialties": ["oncology"]}}, f).evidence == ("PractitionerRole/r1",)
    assert run({"combined_with_any": {"tags": ["exemestane"]}}, f).evidence == ("MedicationRequest/m2",)
    assert run({"history_of_any": {"tags": ["letrozole"]}}, f).evidence == ("MedicationStatement/s1",)
    assert run({"receptor_status": {"hormone_receptor": "positive", "her2": "negative"}}, f).evidence == (
        "Observation/er",
        "Observation/her2",
    )
    both = run({"all_of": [{"diagnosis_in": {"tags": ["breast-cancer"]}}, LEAF_Q]}, f)
    assert both == Outcome(MET, ("Condition/c1", "Patient/p1"))


def test_history_counts_only_before_the_evaluation_date() -> None:
    spec = {"history_of_any": {"tags": ["letrozole"]}}
    before = facts(medication_history={"letrozole": Finding(("MedicationStatement/s1",), date(2026, 11, 19))})
    same_day = facts(medication_history={"letrozole": Finding(("MedicationStatement/s1",), date(2026, 11, 20))})
    undated = facts(medication_history={"letrozole": Finding(("MedicationStatement/s1",))})
    assert run(spec, before).status is MET
    assert run(spec, same_day).status is UNKNOWN
    assert run(spec, undated).status is MET  # the builder only lists therapy started before the order


def test_generic_exception_evidence_and_fix_on_unknown() -> None:
    brand = Product(
        "845512",
        "everolimus 10 MG Oral Tablet [Afinitor]",
        "afinitor",
        True,
        10.0,
        "tablet",
        "845507",
        "everolimus 10 MG Oral Tablet",
        True,
    )
    plain = run("generic_if_available", facts(product=brand))
    assert plain.status is NOT_MET
    assert plain.fixes == (Fix(kind="switch-to-generic", rxcui="845507", display="everolimus 10 MG Oral Tablet"),)
    excused = run("generic_if_available", facts(product=brand, generic_exception=Finding(("AllergyIntolerance/a1",))))
    assert excused.status is UNKNOWN
    assert excused.evidence == ("MedicationRequest/o1", "AllergyIntolerance/a1")
    assert excused.fixes == plain.fixes


# ----------------------------------------------------------------------------- a small policy for the loader


def base_policy() -> dict[str, Any]:
    """A minimal valid policy: one indication pathway with a sub-item tree, and the referral section."""
    return {
        "policy": {
            "id": "TEST.1",
            "version": "01.01",
            "title": "Test policy",
            "lines_of_business": ["commercial", "him", "medicaid"],
        },
        "drug": {"tag": "everolimus", "name": "everolimus", "families": dict(FAMILIES)},
        "referrals": {"off-label": {"text": "Off-label", "commercial": "C.1", "him": "H.1", "medicaid": "M.1"}},
        "pathways": [
            {
                "id": "I.A",
                "title": "Breast",
                "kind": "indication",
                "applies_when": {"diagnoses": ["breast-cancer"]},
                "approval_months": {"medicaid": 6, "him": 6, "commercial": {"up_to": 12}},
                "criteria": [
                    {"id": "I.A.1", "text": "Afinitor;", "remedy": "Order Afinitor.", "predicate": LEAF_P},
                    {"id": "I.A.2", "text": "Adult;", "remedy": "Be adult.", "predicate": LEAF_Q},
                    {
                        "id": "I.A.3",
                        "text": "One of (a or b):",
                        "remedy": "Dose.",
                        "predicate": {"sub_items": "any"},
                        "criteria": [
                            {
                                "id": "I.A.3.a",
                                "text": "Limits (i):",
                                "remedy": "Lower.",
                                "predicate": {"sub_items": "all"},
                                "criteria": [
                                    {"id": "I.A.3.a.i", "text": "20 mg;", "remedy": "Lower.", "predicate": LEAF_R}
                                ],
                            },
                            {
                                "id": "I.A.3.b",
                                "text": "Literature.",
                                "remedy": "Submit.",
                                "predicate": {"documented": {"what": "literature"}},
                            },
                        ],
                    },
                ],
            },
            {
                "id": "I.B",
                "title": "Other",
                "kind": "initial-other",
                "refer_to": "off-label",
                "criteria": [
                    {
                        "id": "I.B.1",
                        "text": "Refer.",
                        "remedy": "Refer.",
                        "predicate": {"not": {"indication_of": {"pathways": ["I.A"]}}},
                    },
                ],
            },
        ],
    }


def parse(doc: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), VOCAB, "test.yaml")


def crit(doc: dict[str, Any], *path: int) -> dict[str, Any]:
    """The criterion dict at pathway 0, then child indexes."""
    node: dict[str, Any] = doc["pathways"][0]
    for index in path:
        node = node["criteria"][index]
    return node


def test_the_base_policy_loads_and_evaluates() -> None:
    policy = parse(base_policy())
    assert policy.criterion_ids() == ("I.A.1", "I.A.2", "I.A.3", "I.A.3.a", "I.A.3.a.i", "I.A.3.b", "I.B.1")
    f = facts(diagnoses={"breast-cancer": Finding(("Condition/c1",))}, line_of_business=LineOfBusiness.MEDICAID)
    ev = evaluate(policy, f)
    assert (ev.pathway, ev.decision, ev.approval_months) == ("I.A", Decision.MET, 6)
    over = evaluate(policy, facts(r=NOT_MET, diagnoses={"breast-cancer": Finding(("Condition/c1",))}))
    statuses = {c.id: c.status for c in over.all_criteria()}
    assert statuses["I.A.3.a.i"] is NOT_MET and statuses["I.A.3.a"] is NOT_MET
    assert statuses["I.A.3"] is UNKNOWN and over.decision is Decision.INCOMPLETE
    assert evaluate(policy, facts()).decision is Decision.REFER


def _mutate(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base_policy())
    change(doc)
    return doc


def _set(target: Any, key: str, value: Any) -> None:
    target[key] = value


BAD_POLICIES = {
    "unknown predicate": lambda d: _set(crit(d, 0), "predicate", {"product_is": {"families": ["afinitor"]}}),
    "unknown predicate inside a combinator": lambda d: _set(crit(d, 0), "predicate", {"all_of": [LEAF_P, "magic"]}),
    "unknown diagnosis tag": lambda d: _set(crit(d, 0), "predicate", {"diagnosis_in": {"tags": ["breast-cancr"]}}),
    "unknown ingredient tag": lambda d: _set(crit(d, 0), "predicate", {"combined_with_any": {"tags": ["exemestan"]}}),
    "unknown specialty tag": lambda d: _set(
        crit(d, 0), "predicate", {"prescriber_specialty_in": {"specialties": ["oncologist"]}}
    ),
    "unknown tag in applies_when": lambda d: _set(d["pathways"][0]["applies_when"], "diagnoses", ["brest"]),
    "unknown parameter": lambda d: _set(crit(d, 1), "predicate", {"age_at_least": {"years": 18, "months": 2}}),
    "missing parameter": lambda d: _set(crit(d, 1), "predicate", {"age_at_least": {}}),
    "bad parameter type": lambda d: _set(crit(d, 1), "predicate", {"age_at_least": {"years": "eighteen"}}),
    "bad product family": lambda d: _set(crit(d, 0), "predicate", {"product_in": {"families": ["votrient"]}}),
    "two dose limits at once": lambda d: _set(
        crit(d, 2, 0, 0),
        "predicate",
        {"dose_within": {"max_mg_per_day": 20, "max_tablets_per_day": 2, "family": "afinitor"}},
    ),
    "companion without a frequency": lambda d: _set(
        crit(d, 0),
        "predicate",
        {
            "combined_with_any": {
                "tags": ["exemestane"],
                "companion": {"rxcui": "1", "display": "x", "sig": "daily", "dose_mg": 5},
            }
        },
    ),
    "indication_of an unknown pathway": lambda d: _set(
        d["pathways"][1]["criteria"][0], "predicate", {"indication_of": {"pathways": ["I.Z"]}}
    ),
    "conditional without then": lambda d: _set(crit(d, 0), "predicate", {"conditional": {"if": LEAF_P}}),
    "predicate with two names": lambda d: _set(
        crit(d, 0), "predicate", {"product_in": {"families": ["afinitor"]}, "age_at_least": {"years": 1}}
    ),
    "malformed criterion id": lambda d: _set(crit(d, 0), "id", "I.A.one"),
    "criterion id not text": lambda d: _set(crit(d, 0), "id", 1),
    "duplicate criterion id": lambda d: _set(crit(d, 1), "id", "I.A.1"),
    "id that does not fit its parent": lambda d: _set(crit(d, 2, 0), "id", "I.A.2.a"),
    "sub-item numbered like an item": lambda d: _set(crit(d, 2, 0), "id", "I.A.3.1"),
    "roman level numbered with letters": lambda d: _set(crit(d, 2, 0, 0), "id", "I.A.3.a.a"),
    "out of sequence": lambda d: _set(crit(d, 1), "id", "I.A.4"),
    "missing text": lambda d: crit(d, 1).pop("text"),
    "blank text": lambda d: _set(crit(d, 2, 1), "text", "   "),
    "missing remedy": lambda d: crit(d, 0).pop("remedy"),
    "missing predicate": lambda d: crit(d, 0).pop("predicate"),
    "unknown criterion key": lambda d: _set(crit(d, 0), "note", "x"),
    "sub-items never read": lambda d: _set(crit(d, 2), "predicate", LEAF_R),
    "sub_items without sub-items": lambda d: _set(crit(d, 1), "predicate", {"sub_items": "any"}),
    "sub_items with a bad mode": lambda d: _set(crit(d, 2), "predicate", {"sub_items": "some"}),
    "nesting deeper than the numbering": lambda d: crit(d, 2, 0, 0).update(
        predicate={"sub_items": "any"},
        criteria=[{"id": "I.A.3.a.i.1", "text": "t", "remedy": "r", "predicate": LEAF_R}],
    ),
    "malformed pathway id": lambda d: _set(d["pathways"][0], "id", "IA"),
    "duplicate pathway id": lambda d: _set(d["pathways"][1], "id", "I.A"),
    "unknown pathway kind": lambda d: _set(d["pathways"][0], "kind", "initial"),
    "no referral pathway": lambda d: d["pathways"].pop(1),
    "approval table missing a line of business": lambda d: d["pathways"][0]["approval_months"].pop("him"),
    "approval of zero months": lambda d: _set(d["pathways"][0]["approval_months"], "medicaid", 0),
    "refer_to an unknown referral table": lambda d: _set(d["pathways"][1], "refer_to", "elsewhere"),
    "version as a number": lambda d: _set(d["policy"], "version", 2.25),
    "unknown line of business": lambda d: _set(d["policy"], "lines_of_business", ["commercial", "medicare"]),
    "unknown top-level key": lambda d: _set(d, "pathway", []),
    "missing referrals": lambda d: d.pop("referrals"),
    "referral table missing a line": lambda d: d["referrals"]["off-label"].pop("him"),
}

#: What each rejection must say (so a test cannot pass on an unrelated error).
REASONS = {
    "unknown predicate": "unknown predicate 'product_is'",
    "unknown predicate inside a combinator": "unknown predicate 'magic'",
    "unknown diagnosis tag": "unknown diagnosis tag",
    "unknown ingredient tag": "unknown ingredient tag",
    "unknown specialty tag": "unknown specialty tag",
    "unknown tag in applies_when": "unknown diagnosis tag",
    "unknown parameter": "unknown parameter",
    "missing parameter": "missing parameter 'years'",
    "bad parameter type": "'years' must be",
    "bad product family": "votrient",
    "two dose limits at once": "exactly one of",
    "companion without a frequency": "frequency_per_day",
    "indication_of an unknown pathway": "I.Z",
    "conditional without then": "'if' and 'then'",
    "predicate with two names": "exactly one predicate name",
    "malformed criterion id": "I.A.one: malformed id",
    "criterion id not text": "criteria.0.id: Input should be a valid string",
    "duplicate criterion id": "duplicate criterion id",
    "id that does not fit its parent": "does not fit its parent I.A.3",
    "sub-item numbered like an item": "does not fit its parent I.A.3",
    "roman level numbered with letters": "does not fit its parent I.A.3.a",
    "out of sequence": "out of sequence",
    "missing text": "criteria.1.text: Field required",
    "blank text": "text must be",
    "missing remedy": "criteria.0.remedy: Field required",
    "missing predicate": "criteria.0.predicate: Field required",
    "unknown criterion key": "criteria.0.note: Extra inputs are not permitted",
    "sub-items never read": "never reads them",
    "sub_items without sub-items": "has none",
    "sub_items with a bad mode": "sub_items must be",
    "nesting deeper than the numbering": "nest deeper",
    "malformed pathway id": "malformed pathway id",
    "duplicate pathway id": "duplicate pathway id",
    "unknown pathway kind": "kind: Input should be",
    "no referral pathway": "initial-other",
    "approval table missing a line of business": "missing ['him']",
    "approval of zero months": "expected months",
    "refer_to an unknown referral table": "refer_to must name",
    "version as a number": "policy.version: Input should be a valid string",
    "unknown line of business": "lines_of_business.1: Input should be",
    "unknown top-level key": "pathway: Extra inputs are not permitted",
    "missing referrals": "test.yaml:1: referrals: Field required",
    "referral table missing a line": "referrals.off-label: missing",
}


def test_every_rejection_has_its_reason() -> None:
    assert set(REASONS) == set(BAD_POLICIES)


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_loader_rejects(name: str) -> None:
    doc = _mutate(BAD_POLICIES[name])
    with pytest.raises(PolicyError) as raised:
        parse(doc)
    assert REASONS[name] in str(raised.value)


def test_loader_rejects_receptor_status_when_the_tables_lack_its_tags() -> None:
    doc = base_policy()
    crit(doc, 0)["predicate"] = {"receptor_status": {"hormone_receptor": "positive", "her2": "negative"}}
    assert parse(doc).criterion_ids()[0] == "I.A.1"
    thin = PolicyVocabulary(
        VOCAB.diagnosis_tags, VOCAB.ingredient_tags, VOCAB.specialty_tags, frozenset({"er-positive", "her2-negative"})
    )
    with pytest.raises(PolicyError):
        parse_policy(yaml.safe_dump(doc, sort_keys=False), thin, "bad.yaml")


TEXT_PROBLEMS = {
    "not YAML": "policy: [unclosed\n",
    "not a mapping": "- just\n- a list\n",
    "empty file": "",
    "duplicate key": yaml.safe_dump(base_policy(), sort_keys=False).replace(
        "  title: Test policy\n", "  title: Test policy\n  title: Test policy again\n", 1
    ),
}


@pytest.mark.parametrize("name", sorted(TEXT_PROBLEMS))
def test_loader_rejects_bad_text(name: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(TEXT_PROBLEMS[name], VOCAB, "bad.yaml")


def test_duplicate_key_text_really_differs_from_the_valid_one() -> None:
    assert TEXT_PROBLEMS["duplicate key"] != yaml.safe_dump(base_policy(), sort_keys=False)


def test_load_policy_from_a_path_and_a_missing_path(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base_policy(), sort_keys=False), encoding="utf-8")
    assert load_policy(good, vocabulary=VOCAB).id == "TEST.1"
    assert load_policy(str(good), vocabulary=VOCAB).source == str(good)
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.yaml", vocabulary=VOCAB)


def test_provisional_tags_are_accepted_only_when_declared() -> None:
    doc = base_policy()
    crit(doc, 0)["predicate"] = {"diagnosis_in": {"tags": ["rcc-clear-cell"]}}
    with pytest.raises(PolicyError):
        parse(doc)
    doc["provisional_tags"] = {"diagnoses": ["rcc-clear-cell"]}
    policy = parse(doc)
    assert evaluate_pathway(policy, "I.A", facts()).criteria[0].status is UNKNOWN


def test_criterion_results_carry_text_remedy_and_children_in_order() -> None:
    policy = parse(base_policy())
    result = evaluate_pathway(policy, "I.A", facts(r=NOT_MET))
    dose = result.criteria[2]
    assert (dose.id, dose.text, dose.remedy) == ("I.A.3", "One of (a or b):", "Dose.")
    assert [c.id for c in dose.walk()] == ["I.A.3", "I.A.3.a", "I.A.3.a.i", "I.A.3.b"]
    assert dose.children[0].children[0].evidence == ("MedicationRequest/o1",)
    assert dose.children[0].evidence == ("MedicationRequest/o1",)  # sub-item evidence reaches the parent


def test_medication_group_tags_kept_apart_by_the_code_tables_count_as_ingredients() -> None:
    class Tables:
        """Shaped like fhir_mappings.codes.CodeTables, which lists groups apart from ingredients."""

        diagnosis_tags = VOCAB.diagnosis_tags
        ingredient_tags = frozenset({"letrozole"})
        medication_group_tags = frozenset({"endocrine-therapy"})
        specialty_tags = VOCAB.specialty_tags
        receptor_tags = VOCAB.receptor_tags

    doc = base_policy()
    crit(doc, 0)["predicate"] = {"history_of_any": {"tags": ["endocrine-therapy", "letrozole"]}}
    text = yaml.safe_dump(doc, sort_keys=False)
    assert parse_policy(text, Tables(), "t.yaml").criterion_ids()[0] == "I.A.1"
    Tables.medication_group_tags = frozenset()
    with pytest.raises(PolicyError, match="endocrine-therapy"):
        parse_policy(text, Tables(), "t.yaml")


def test_loader_errors_name_file_and_line() -> None:
    """A pack author sees where: shape errors by YAML path, compile errors by the criterion's own line."""
    doc = base_policy()
    crit(doc, 1)["predicate"] = {"age_at_least": {"years": "eighteen"}}
    text = yaml.safe_dump(doc, sort_keys=False)
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, VOCAB, "pack/policy.yaml")
    message = str(raised.value)
    cid = crit(doc, 1)["id"]
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if row.strip().endswith(f"id: {cid}"))
    assert message.startswith(f"pack/policy.yaml:{line}: {cid}")


def test_published_schema_is_the_models_schema() -> None:
    import json

    from cds_service.policy.schema import json_schema

    published = Path(__file__).resolve().parent.parent / "docs" / "policy-pack.schema.json"
    assert json.loads(published.read_text(encoding="utf-8")) == json_schema(), (
        "run: python -m cds_service.policy.schema"
    )
