"""Data the service could not obtain is missing, not absent: it never turns a criterion not-met or reroutes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cds_service.policy.engine import Policy, evaluate, load_policy
from cds_service.policy.results import Decision, Status
from tests.test_policy_cp_phar_63 import BRAND_10, facts_for, find, make_facts


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def test_missing_conditions_do_not_send_the_order_to_off_label(policy: Policy) -> None:
    facts = make_facts(diagnoses=(), co=("exemestane",), receptors=("er-positive", "her2-negative"),
                       history=("letrozole", "endocrine-therapy"))
    assert evaluate(policy, facts).pathway == "I.I"
    degraded = evaluate(policy, replace(facts, unavailable=frozenset({"conditions"})))
    assert degraded.pathway == "I.A" and degraded.decision is Decision.INCOMPLETE
    assert find(degraded.criteria, "I.A.2").status is Status.UNKNOWN


def test_missing_medications_make_combinations_unknown(policy: Policy) -> None:
    facts = facts_for("I.A", co=())
    assert find(evaluate(policy, facts).criteria, "I.A.8").status is Status.NOT_MET
    degraded = evaluate(policy, replace(facts, unavailable=frozenset({"medicationRequests"})))
    assert find(degraded.criteria, "I.A.8").status is Status.UNKNOWN
    assert not degraded.fixes()


def test_missing_allergies_make_a_brand_request_unknown(policy: Policy) -> None:
    facts = facts_for("I.A", product=BRAND_10)
    assert find(evaluate(policy, facts).criteria, "I.A.7").status is Status.NOT_MET
    degraded = evaluate(policy, replace(facts, unavailable=frozenset({"allergies"})))
    assert find(degraded.criteria, "I.A.7").status is Status.UNKNOWN


def test_unrelated_missing_data_changes_nothing(policy: Policy) -> None:
    facts = facts_for("I.A")
    assert evaluate(policy, replace(facts, unavailable=frozenset({"observations", "coverage"}))) == evaluate(policy, facts)
