"""The evaluate stage's shortcuts give exactly the answers of the straightforward computation (issue 18).

* ``select_pathway`` scores only the contenders of the strongest evidence, stops at the first met and reuses the
  winner's outcomes; here the earlier way (score every ranked indication pathway, then run the winner again) is
  compared with it on hypothesis-drawn charts of CP.PHAR.63 tags, missing data included;
* the DTR prefill reads the chart outcomes the evaluation remembered (``questions.remembered_outcomes``): the offer
  is the same as the one that runs every leaf test again;
* a label note's ``all_of`` stops at its first part not met (``engine.notes_for``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.dtr.offer import offer
from cds_service.policy import questions
from cds_service.policy.engine import (
    _RANK,
    GENERIC,
    INDICATION,
    UNSEEN,
    Policy,
    Selection,
    _label_outcome,
    evaluate,
    evidence_rank,
    load_policy,
    run_pathway,
    select_pathway,
)
from cds_service.policy.predicates import CONDITION_KEYS
from cds_service.policy.questions import remembered_outcomes
from cds_service.policy.results import Status
from fhir_mappings.answers import ReadAnswers
from fhir_mappings.codes import load_code_tables
from fhir_mappings.model import Facts, LineOfBusiness
from fhir_mappings.record import PatientRecord

from .test_policy_cp_phar_63 import (
    BRANDS,
    DIAGNOSIS_TAGS,
    DISPERZ_GENERIC_5,
    GENERIC_10,
    INGREDIENT_TAGS,
    RECEPTOR_TAGS,
    SPECIALTY_TAGS,
    UNKNOWN_PRODUCT,
    VOCAB,
    ZORTRESS_GENERIC_075,
    make_facts,
)

POLICY: Policy = load_policy(vocabulary=VOCAB)
BASE = "https://payer.example"
KEYS = ("conditions", "medicationRequests", "medicationStatements", "observations", "procedures", "coverage")


def reference_selection(policy: Policy, facts: Facts) -> Selection | None:
    """Among indication pathways, the one the earlier selection picked: every pathway with diagnosis evidence
    scored, the best (evidence, decision, policy order) run again on the facts. None when no indication is ranked."""
    ranking = replace(facts, unavailable=frozenset())
    unseen = not facts.unavailable.isdisjoint(CONDITION_KEYS)
    ranks = [evidence_rank(p, ranking) for p in policy.of_kind(INDICATION)]
    candidates = [
        (UNSEEN if rank is None else rank, _RANK[run_pathway(p, ranking).decision], index, p)
        for index, (p, rank) in enumerate(zip(policy.of_kind(INDICATION), ranks))
        if rank is not None or unseen
    ]
    if not candidates:
        return None
    best = min(candidates, key=lambda c: c[:3])
    options = tuple(c[3] for c in candidates if c[0] == GENERIC) if best[0] == GENERIC else ()
    return Selection(run_pathway(best[3], facts), options)


def _tags(pool: list[str], most: int) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(pool), max_size=most, unique=True)


charts = st.fixed_dictionaries(
    {
        "diagnoses": _tags(DIAGNOSIS_TAGS, 5),
        "possible": _tags(DIAGNOSIS_TAGS, 3),
        "receptors": _tags(RECEPTOR_TAGS, 3),
        "specialties": _tags(SPECIALTY_TAGS, 2),
        "co": _tags(INGREDIENT_TAGS, 4),
        "history": _tags(INGREDIENT_TAGS, 5),
        "product": st.sampled_from(
            [GENERIC_10, DISPERZ_GENERIC_5, ZORTRESS_GENERIC_075, UNKNOWN_PRODUCT, *BRANDS.values()]
        ),
        "age": st.sampled_from([None, 2, 8, 30, 70]),
        "days": st.sampled_from([0, 30, 120]),
        "lob": st.sampled_from([None, *LineOfBusiness]),
        "unavailable": _tags(list(KEYS), 2),
    }
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts)
def test_selection_matches_scoring_every_candidate(chart: dict[str, Any]) -> None:
    facts = make_facts(**chart)
    selected = select_pathway(POLICY, facts)
    if selected.result is not None and selected.result.pathway.kind == INDICATION:
        assert selected == reference_selection(POLICY, facts)


TABLES = load_code_tables()
PACKAGED = load_policy(vocabulary=TABLES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts)
def test_prefill_from_remembered_outcomes_is_the_same(chart: dict[str, Any]) -> None:
    """The DTR offer built from the leaf outcomes the evaluation remembered equals the one that runs every test."""
    facts, record, heard = make_facts(**chart), PatientRecord(patient_id="p1"), ReadAnswers()
    with remembered_outcomes():
        evaluation = evaluate(PACKAGED, facts)
        remembered = offer(PACKAGED, TABLES, evaluation, facts, record, heard, base=BASE, hook="order-sign")
        assert evaluation.pathway is None or questions._REMEMBERED.get()  # the evaluation did remember outcomes
    assert remembered == offer(PACKAGED, TABLES, evaluation, facts, record, heard, base=BASE, hook="order-sign")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts)
def test_label_note_stops_at_a_part_not_met(chart: dict[str, Any]) -> None:
    """A label note's all_of stops at its first part not met (None) and is otherwise its full outcome."""
    facts = make_facts(**chart)
    assert POLICY.label_notes and all(note.all_of for note in POLICY.label_notes)
    for note in POLICY.label_notes:
        full = note.when(facts, ())
        assert _label_outcome(note, facts) == (None if full.status is Status.NOT_MET else full)
