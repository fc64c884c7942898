"""Issue 17 items 1, 3, 7: dose forms as data, per-product applicability and the preferred-alternative switch.

The fictional zentorimab pack (tests/packs/zentorimab, synthetic data) grew with no Python change: Zentocap capsules
(capsule and family mg limits), a generic oral solution (1 mg/mL), and a Zentocap-only item (I.A.8, ``applies_to``)
whose ``preferred_alternative`` switches to Zentora tablets at half the mg with quelvastin in place of morvalide.
Expected outcomes are reasoned from the pack's text, not read from the service.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.policy.engine import PolicyError, load_policy
from cds_service.policy.predicates import NOT_APPLICABLE, all_of_status, any_of_status, not_status
from cds_service.policy.results import Status
from fhir_mappings.codes import TABLES_DIR, CodeTableError, CodeTables, dose_forms, form_in_text, load_code_tables
from tests.test_synthetic_pack import GENERIC_10, PACKS, PATIENT, RXNORM, chart, criterion, evaluate, statuses

ZENTOCAP_20 = ("Z1021", "zentorimab 20 MG Oral Capsule")
SOLUTION_1_PER_ML = ("Z1031", "zentorimab 1 MG/ML Oral Solution")
UCUM = "http://unitsofmeasure.org"
MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    """A service with CP.PHAR.63 and the grown zentorimab pack."""
    database = tmp_path_factory.mktemp("pack-products") / "audit.sqlite3"
    return create_app(Config(database_url=f"sqlite:///{database}", policy_dirs=(str(PACKS),))).test_client()


def order_in(code: str, display: str, value: float, unit: str, *, ucum: str | None = None) -> dict[str, Any]:
    """A draft order of ``value`` ``unit`` once a day (a count of capsules, mL ...)."""
    quantity: dict[str, Any] = {"value": value, "unit": unit}
    if ucum is not None:
        quantity |= {"system": UCUM, "code": ucum}
    return {
        "resourceType": "MedicationRequest",
        "id": "zp-order",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "dosageInstruction": [
            {
                "text": f"{value:g} {unit} by mouth once daily",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": quantity}],
            }
        ],
    }


def morvalide() -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": "zp-morvalide",
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "Z3001", "display": "morvalide 5 MG Oral Tablet"}]
        },
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectivePeriod": {"start": "2026-01-01"},
    }


def cards_of(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = evaluation["_body"]["cards"]
    return cards


# ----------------------------------------------------------------------------- 1. dose forms as data


def test_the_dose_form_table_names_codes_and_sources() -> None:
    forms = dose_forms()
    assert {"tablet", "tablet-for-suspension", "capsule", "oral-solution", "oral-suspension"} <= set(forms)
    assert forms["capsule"].rxnorm_df == "Oral Capsule" and forms["capsule"].snomed == "385049006"
    assert forms["oral-solution"].liquid and not forms["tablet"].liquid
    with (TABLES_DIR / "dose_forms.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            assert row["source"].strip() and row["snomed"].isdigit(), row["form"]


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("everolimus 2 MG Tablet for Oral Suspension", "tablet-for-suspension"),
        ("Afinitor Disperz dispersible", "tablet-for-suspension"),
        ("everolimus 10 MG Oral Tablet", "tablet"),
        ("zentorimab 20 MG Oral Capsule", "capsule"),
        ("zentorimab 1 MG/ML Oral  Solution", "oral-solution"),
        ("zentorimab", None),
    ],
)
def test_a_name_is_read_for_its_dose_form(text: str, form: str | None) -> None:
    assert form_in_text(text) == form


def _pack_tables(tmp_path: Path) -> Path:
    directory = tmp_path / "zentorimab"
    shutil.copytree(PACKS / "zentorimab", directory)
    return directory


def test_an_unknown_dose_form_names_the_accepted_ones(tmp_path: Path) -> None:
    directory = _pack_tables(tmp_path)
    products = directory / "tables" / "products.csv"
    products.write_text(products.read_text(encoding="utf-8").replace(",capsule,", ",caplet,"), encoding="utf-8")
    with pytest.raises(CodeTableError, match=r"products.csv:\d+: unknown dose form 'caplet' \(accepted: .*capsule"):
        CodeTables((directory / "tables", TABLES_DIR))


def test_a_per_ml_strength_needs_a_liquid_form(tmp_path: Path) -> None:
    directory = _pack_tables(tmp_path)
    products = directory / "tables" / "products.csv"
    text = products.read_text(encoding="utf-8").replace("1 MG/ML,oral-solution", "1 MG/ML,capsule")
    products.write_text(text, encoding="utf-8")
    with pytest.raises(CodeTableError, match="is per mL but dose form 'capsule' is not a liquid"):
        CodeTables((directory / "tables", TABLES_DIR))


def test_capsules_count_against_a_capsule_limit(client: FlaskClient) -> None:
    within = statuses(evaluate(client, order_in(*ZENTOCAP_20, 2, "capsule", ucum="{capsule}"), chart()))
    assert (within["I.A.7.c"], within["I.A.7.d"]) == ("met", "met")  # 40 mg, 2 capsules
    over = evaluate(client, order_in(*ZENTOCAP_20, 3, "capsules"), chart())
    assert (statuses(over)["I.A.7.c"], statuses(over)["I.A.7.d"]) == ("not-met", "not-met")
    assert criterion(over, "I.A.7.d")["note"] == "3 Zentocap capsules/day exceeds 2 capsules/day"
    assert criterion(over, "I.A.7.c")["note"] == "60 mg/day exceeds 40 mg/day for Zentocap"
    # The Zentora limits are for another family: met on a Zentocap order (as a tablet limit always was).
    assert (statuses(over)["I.A.7.a"], statuses(over)["I.A.7.b"]) == ("met", "met")


def test_a_unit_of_another_form_is_unreadable(client: FlaskClient) -> None:
    found = evaluate(client, order_in(*ZENTOCAP_20, 2, "tablets"), chart())
    assert statuses(found)["I.A.7.d"] == "unknown"  # "2 tablets" of a capsule product: never converted


def test_ml_of_an_oral_solution_converts_through_mg_per_ml(client: FlaskClient) -> None:
    disease_b = chart(birth="2015-01-01", disease="ZDX-B", companion=False)
    within = evaluate(client, order_in(*SOLUTION_1_PER_ML, 8, "mL", ucum="mL"), disease_b)
    assert statuses(within)["I.B.1"] == "met" and statuses(within)["I.B.4"] == "met"  # 8 mL x 1 mg/mL = 8 mg
    over = evaluate(client, order_in(*SOLUTION_1_PER_ML, 10, "mL", ucum="mL"), disease_b)
    assert statuses(over)["I.B.4"] == "not-met"
    assert criterion(over, "I.B.4")["note"] == "10 mg/day exceeds 8 mg/day"


def _zentorimab_policy(tmp_path: Path, edit: Any) -> Path:
    directory = _pack_tables(tmp_path)
    path = directory / "policy.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return directory


def _item(document: dict[str, Any], *path: int) -> dict[str, Any]:
    node: dict[str, Any] = document["pathways"][path[0]]
    for index in path[1:]:
        node = node["criteria"][index]
    return node


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ({"dose_within": {"max_units_per_day": 2}}, r"max_units_per_day needs a family .* declared families"),
        ({"dose_within": {"max_mg_per_day": 5, "max_units_per_day": 2, "family": "zentora"}}, "give exactly one"),
        ({"dose_within": {"max_mg_per_day": 5, "family": "zentoral"}}, "zentoral"),
    ],
)
def test_dose_limit_mistakes_name_what_is_accepted(tmp_path: Path, predicate: Any, message: str) -> None:
    directory = _zentorimab_policy(tmp_path, lambda d: _item(d, 0, 6, 0).update(predicate=predicate))
    with pytest.raises(PolicyError, match=message):
        load_policy(directory / "policy.yaml", CodeTables((directory / "tables", TABLES_DIR)))


# ----------------------------------------------------------------------------- 3. per-product applicability


def test_kleene_leaves_not_applicable_out() -> None:
    assert all_of_status([NOT_APPLICABLE, MET]) is MET
    assert all_of_status([NOT_APPLICABLE, UNKNOWN]) is UNKNOWN
    assert any_of_status([NOT_APPLICABLE, NOT_MET]) is NOT_MET
    assert all_of_status([NOT_APPLICABLE]) is NOT_APPLICABLE and any_of_status([NOT_APPLICABLE]) is NOT_APPLICABLE
    assert not_status(NOT_APPLICABLE) is NOT_APPLICABLE


def test_a_product_specific_item_is_not_applicable_on_another_product(client: FlaskClient) -> None:
    evaluation = evaluate(client, order_in(*GENERIC_10, 10, "mg", ucum="mg"), chart())
    assert evaluation["decision"] == "met", statuses(evaluation)  # neutral in the decision
    item = criterion(evaluation, "I.A.8")
    assert item["status"] == "not-applicable"
    assert item["note"] == "not applicable to zentorimab 10 MG Oral Tablet"
    (card,) = cards_of(evaluation)
    assert "**Not applicable to zentorimab 10 MG Oral Tablet:**" in card["detail"]
    assert "- **I.A.8** For Zentocap requests" in card["detail"]


def test_applies_to_names_only_declared_families_and_pack_products(tmp_path: Path) -> None:
    directory = _zentorimab_policy(tmp_path, lambda d: _item(d, 0, 7).update(applies_to={"families": ["zentocaps"]}))
    with pytest.raises(PolicyError, match=r"I.A.8: applies_to: unknown product family 'zentocaps'"):
        load_policy(directory / "policy.yaml", CodeTables((directory / "tables", TABLES_DIR)))
    directory = _zentorimab_policy(tmp_path / "b", lambda d: _item(d, 0, 7).update(applies_to={"products": ["Z9999"]}))
    with pytest.raises(PolicyError, match=r"product\(s\) \['Z9999'\] are not rows of the pack's products.csv"):
        load_policy(directory / "policy.yaml", CodeTables((directory / "tables", TABLES_DIR)))


def test_applies_to_a_product_code(tmp_path: Path) -> None:
    directory = _zentorimab_policy(tmp_path, lambda d: _item(d, 0, 7).update(applies_to={"products": ["Z1022"]}))
    policy = load_policy(directory / "policy.yaml", CodeTables((directory / "tables", TABLES_DIR)))
    spec = next(c for c in policy.pathway("I.A").all_criteria() if c.id == "I.A.8").applies_to
    assert spec is not None and spec.products == frozenset({"Z1022"}) and "Zentocap" in spec.words


# ----------------------------------------------------------------------------- 3. the preferred alternative


def test_the_preferred_alternative_switch_carries_dose_and_companion_change(client: FlaskClient) -> None:
    resources = [*chart(companion=False), morvalide()]
    evaluation = evaluate(client, order_in(*ZENTOCAP_20, 1, "capsule"), resources)  # 20 mg/day
    assert statuses(evaluation)["I.A.8"] == "not-met"
    assert criterion(evaluation, "I.A.8")["note"] == "Zentocap 20 mg/day -> zentorimab 10 MG Oral Tablet 10 mg/day"
    suggestions = [s for card in cards_of(evaluation) for s in card.get("suggestions", [])]
    switch = next(s for s in suggestions if s["label"].startswith("Switch to zentorimab 10 MG Oral Tablet"))
    update, create = switch["actions"]
    assert update["type"] == "update" and update["resource"]["id"] == "zp-order"
    assert update["resource"]["medicationCodeableConcept"]["coding"][0]["code"] == "Z1003"
    dose = update["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert (dose["value"], dose["code"]) == (10, "mg")
    assert "stop MedicationStatement/zp-morvalide" in update["description"]
    assert create["type"] == "create"
    assert create["resource"]["medicationCodeableConcept"]["coding"][0]["code"] == "Z2001"


def test_a_preferred_alternative_must_be_another_familys_product(tmp_path: Path) -> None:
    def edit(document: dict[str, Any]) -> None:
        _item(document, 0, 7)["predicate"]["preferred_alternative"]["to"]["rxcui"] = "Z1022"

    directory = _zentorimab_policy(tmp_path, edit)
    with pytest.raises(PolicyError, match=r"rxcui 'Z1022' must be a product of the pack's products.csv of another"):
        load_policy(directory / "policy.yaml", CodeTables((directory / "tables", TABLES_DIR)))


def test_the_brand_only_criteria_of_cp_phar_63_are_unchanged() -> None:
    policy = load_policy(vocabulary=load_code_tables())
    assert all(c.applies_to is None for p in policy.pathways for c in p.all_criteria())
