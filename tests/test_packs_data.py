"""Packs extend shared tables, lab predicates with units, and loader messages that help (issue #17 items 2, 4, 6).

Each test copies the synthetic pack (tests/packs/zentorimab) to a temporary folder and edits one table or one
criterion, so what is checked is the loader's and the predicates' behaviour, not the pack's content.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest
from fhir.resources.R4B.observation import Observation

from cds_service.policy.labs import LAB_LEAVES
from cds_service.policy.predicates import CompileEnv, PolicyError, compile_predicate
from cds_service.policy.questions import leaf
from cds_service.policy.results import Status
from cds_service.registry import load_pack
from fhir_mappings.codes import CodeTableError, CodeTables, load_code_tables
from fhir_mappings.labs import read_lab_results
from fhir_mappings.model import Dose, Facts, LabResult, Product

PACK = Path(__file__).parent / "packs" / "zentorimab"
SOURCE = '"synthetic test data (tests/packs/zentorimab, fictional)"'
LAB_TESTS = (
    "loinc,tag,display,source\n"
    f"ZL-1,zeta-marker,zeta marker,{SOURCE}\n"
    f"ZL-2,zeta-marker,zeta marker (second method),{SOURCE}\n"
)
MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN


def copy_pack(tmp_path: Path) -> Path:
    folder = tmp_path / "zentorimab"
    shutil.copytree(PACK, folder)
    return folder


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def tables_with_labs(tmp_path: Path) -> CodeTables:
    folder = copy_pack(tmp_path)
    (folder / "tables" / "lab_tests.csv").write_text(LAB_TESTS, encoding="utf-8")
    return CodeTables((folder / "tables", Path("fhir_mappings/tables").resolve()))


# ----------------------------------------------------------------------------- item 6: messages, BOM


def test_a_table_saved_by_excel_with_a_bom_loads(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    systems = folder / "tables" / "systems.csv"
    systems.write_bytes(b"\xef\xbb\xbf" + systems.read_bytes())
    assert "zentorimab-test-dx" in load_pack(folder).tables.system_names


def test_an_unknown_system_names_the_known_ones(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    append(folder / "tables" / "conditions.csv", f"icd-11,XX,x,exact,fictional-disease-a,confirmed,{SOURCE},\n")
    with pytest.raises(PolicyError, match=r"unknown system 'icd-11' \(known: .*icd-10-cm.*systems\.csv"):
        load_pack(folder)


def test_a_mistyped_tag_says_where_tags_are_declared(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    append(folder / "tables" / "conditions.csv", f"zentorimab-test-dx,ZDX-C,x,exact,disease-c,confirmed,{SOURCE},\n")
    with pytest.raises(PolicyError, match=r"unknown tag\(s\) \['disease-c'\]: declare them in the pack's tags.csv"):
        load_pack(folder)


# ----------------------------------------------------------------------------- item 4: shared tables extended


def test_a_pack_specialty_row_adds_to_the_shared_table(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    tables = folder / "tables"
    append(tables / "tags.csv", f"specialty,urology,urology (fictional pack test),{SOURCE}\n")
    (tables / "specialties.csv").write_text(
        "system,code,display,tags,source\n"
        'nucc,208800000X,"Allopathic & Osteopathic Physicians; Urology",urology,'
        '"NUCC Health Care Provider Taxonomy code set (https://taxonomy.nucc.org): 208800000X Urology"\n',
        encoding="utf-8",
    )
    loaded = load_pack(folder).tables
    assert loaded.specialty_tags_for("nucc", "208800000X") == {"urology"}
    # the shared rows are still there: nothing had to be copied
    assert loaded.specialty_tags_for("nucc", "207RX0202X") == {"oncology"}


def test_a_pack_row_that_changes_a_shared_row_is_refused_naming_both_files(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    tables = folder / "tables"
    append(tables / "tags.csv", f"specialty,urology,urology (fictional pack test),{SOURCE}\n")
    (tables / "specialties.csv").write_text(
        f"system,code,display,tags,source\nnucc,207RX0202X,Medical Oncology,urology,{SOURCE}\n", encoding="utf-8"
    )
    with pytest.raises(PolicyError) as caught:
        load_pack(folder)
    message = str(caught.value)
    assert str(tables / "specialties.csv") in message
    assert str(Path("fhir_mappings/tables/specialties.csv").resolve()) in message
    assert "may not change one" in message


def test_a_repeated_shared_row_is_harmless(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    shutil.copy("fhir_mappings/tables/routes.csv", folder / "tables" / "routes.csv")
    assert load_pack(folder).tables.route_codes == load_code_tables().route_codes


def test_an_ingredient_without_an_rxnorm_code_is_a_start_up_warning(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    tables = folder / "tables"
    append(tables / "tags.csv", f"ingredient,orvastin,a fictional drug,{SOURCE}\n")
    append(tables / "ingredients.csv", f"orvastin,,orvastin,,{SOURCE}\n")
    warnings = load_pack(folder).tables.warnings
    assert any("orvastin has no RxNorm code" in w and "DTR" in w for w in warnings)
    assert not load_pack(PACK).tables.warnings


def test_a_companion_rxcui_no_table_defines_is_refused(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    policy = folder / "policy.yaml"
    policy.write_text(policy.read_text(encoding="utf-8").replace("rxcui: Z2001", "rxcui: '999999'"), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"I\.A\.6: combined_with_any: companion: rxcui '999999' is in no code table"):
        load_pack(folder)


def test_a_generic_rxcui_no_table_defines_is_refused(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    products = folder / "tables" / "products.csv"
    products.write_text(products.read_text(encoding="utf-8").replace(",Z1003,true", ",Z9999,true"), encoding="utf-8")
    with pytest.raises(PolicyError, match="names generic Z9999 that is not in the table"):
        load_pack(folder)


# ----------------------------------------------------------------------------- item 2: units and lab values


def test_units_convert_within_a_dimension_only(tmp_path: Path) -> None:
    tables = load_code_tables()
    assert tables.convert(0.3, "ug/L", "ng/mL") == 0.3
    assert tables.convert(1.0, "mg/dL", "ng/mL") == 10000
    assert tables.convert(0.2, "ng/ml", "ng/mL") == 0.2  # the human spelling of the unit
    assert tables.convert(1.0, "nmol/L", "ng/mL") is None  # another dimension: needs a molar mass, never guessed
    assert tables.convert(1.0, "furlongs", "ng/mL") is None


def observation(
    oid: str, code: str, value: float | None, unit: str, day: str, status: str = "final", **extra: object
) -> Observation:
    quantity: dict[str, object] = {"unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if value is not None:
        quantity["value"] = value
    quantity.update(extra)
    return Observation.model_validate(
        {
            "resourceType": "Observation",
            "id": oid,
            "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/p"},
            "effectiveDateTime": day,
            "valueQuantity": quantity,
        }
    )


def test_only_final_dated_numeric_values_of_named_tests_are_read(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    read = read_lab_results(
        [
            observation("o3", "ZL-2", 0.4, "ug/L", "2026-03-01"),
            observation("o1", "ZL-1", 0.2, "ng/mL", "2026-01-01"),
            observation("prelim", "ZL-1", 9.0, "ng/mL", "2026-02-01", status="preliminary"),
            observation("future", "ZL-1", 9.0, "ng/mL", "2026-12-01"),
            observation("other", "1234-5", 9.0, "ng/mL", "2026-02-01"),
            observation("novalue", "ZL-1", None, "ng/mL", "2026-02-01"),
            observation("bound", "ZL-1", 0.1, "ng/mL", "2026-02-02", comparator="<"),
        ],
        tables,
        date(2026, 6, 1),
    )
    assert [(r.ref, r.value, r.unit, r.comparator) for r in read["zeta-marker"]] == [
        ("Observation/o1", 0.2, "ng/mL", None),
        ("Observation/bound", 0.1, "ng/mL", "<"),
        ("Observation/o3", 0.4, "ug/L", None),
    ]


def facts_with(
    values: Sequence[tuple[str, float, str, str] | LabResult], unavailable: frozenset[str] = frozenset()
) -> Facts:
    results = tuple(
        v if isinstance(v, LabResult) else LabResult(f"Observation/{v[0]}", date.fromisoformat(v[3]), v[1], v[2])
        for v in values
    )
    product = Product(None, "x", None, None, None, None, None, None, False)
    return Facts(
        order_ref="MedicationRequest/o",
        evaluation_date=date(2026, 6, 1),
        product=product,
        dose=Dose(None, None),
        age_years=None,
        lab_results={"zeta-marker": results} if results else {},
        unavailable=unavailable,
    )


def compiled(tables: CodeTables, spec: object) -> object:
    return compile_predicate(spec, "I.A.9", CompileEnv(tables)).fn


def test_latest_value_is_compared_in_the_criterion_unit(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    fn = compiled(tables, {"lab_value": {"tests": ["zeta-marker"], "latest": {"above": 0.1, "unit": "ng/mL"}}})
    old_high_new_low = facts_with([("a", 5.0, "ng/mL", "2026-01-01"), ("b", 0.05, "ug/L", "2026-05-01")])
    outcome = fn(old_high_new_low, ())  # type: ignore[operator]
    assert (outcome.status, outcome.evidence) == (NOT_MET, ("Observation/b",))
    assert "0.05 ug/L" in outcome.note
    assert fn(facts_with([("b", 0.3, "ug/L", "2026-05-01")]), ()).status is MET  # type: ignore[operator]
    none = fn(facts_with([]), ())  # type: ignore[operator]
    assert none.status is UNKNOWN and none.gaps
    missing = fn(facts_with([], frozenset({"observations"})), ())  # type: ignore[operator]
    assert missing.status is UNKNOWN and "could not be obtained" in (missing.note or "")
    odd_unit = fn(facts_with([("c", 3.0, "nmol/L", "2026-05-01")]), ())  # type: ignore[operator]
    assert odd_unit.status is UNKNOWN and "cannot compare with ng/mL" in (odd_unit.note or "")


def test_a_window_and_a_reported_bound(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    spec = {"tests": ["zeta-marker"], "latest": {"above": 0.1, "unit": "ng/mL"}, "within_days": 90}
    fn = compiled(tables, {"lab_value": spec})
    assert fn(facts_with([("old", 5.0, "ng/mL", "2025-01-01")]), ()).status is UNKNOWN  # type: ignore[operator]
    below = LabResult("Observation/lt", date(2026, 5, 1), 0.1, "ng/mL", "<")
    assert fn(facts_with([below]), ()).status is NOT_MET  # type: ignore[operator]
    open_bound = LabResult("Observation/lt", date(2026, 5, 1), 0.5, "ng/mL", "<")
    assert fn(facts_with([open_bound]), ()).status is UNKNOWN  # type: ignore[operator]


def test_at_least_n_values_is_met_or_unknown_never_not_met(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    spec = {"tests": ["zeta-marker"], "at_least": 2, "each": {"at_least": 1, "unit": "ng/mL"}}
    fn = compiled(tables, {"lab_value": spec})
    two = facts_with([("a", 1.0, "ng/mL", "2026-01-01"), ("b", 1000.0, "ng/L", "2026-02-01")])
    assert fn(two, ()).status is MET  # type: ignore[operator]
    one = fn(facts_with([("a", 1.0, "ng/mL", "2026-01-01"), ("b", 0.2, "ng/mL", "2026-02-01")]), ())  # type: ignore[operator]
    assert one.status is UNKNOWN and "(1 on record)" in one.gaps[0]


def test_rising_over_the_latest_values(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    fn = compiled(tables, {"lab_trend": {"tests": ["zeta-marker"], "rising": 2, "above": 0.1, "unit": "ng/mL"}})
    rising = [("a", 0.05, "ng/mL", "2026-01-01"), ("b", 0.15, "ng/mL", "2026-02-01"), ("c", 0.3, "ug/L", "2026-03-01")]
    met = fn(facts_with(rising), ())  # type: ignore[operator]
    assert met.status is MET and met.evidence == ("Observation/a", "Observation/b", "Observation/c")
    falling = [*rising, ("d", 0.2, "ng/mL", "2026-04-01")]
    assert fn(facts_with(falling), ()).status is NOT_MET  # type: ignore[operator]
    low = [("a", 0.01, "ng/mL", "2026-01-01"), ("b", 0.05, "ng/mL", "2026-02-01"), ("c", 0.3, "ng/mL", "2026-03-01")]
    assert "not each > 0.1 ng/mL" in (fn(facts_with(low), ()).note or "")  # type: ignore[operator]
    too_few = fn(facts_with(rising[1:]), ())  # type: ignore[operator]
    assert too_few.status is UNKNOWN and "3 zeta marker results" in too_few.gaps[0]
    same_day = [*rising, ("c2", 0.9, "ng/mL", "2026-03-01")]
    disagree = fn(facts_with(same_day), ())  # type: ignore[operator]
    assert disagree.status is UNKNOWN and "disagree" in (disagree.note or "")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"tests": ["psa"], "rising": 2, "unit": "ng/mL"},
            r"unknown lab test\(s\) \['psa'\] \(lab_tests.csv defines: zeta-marker\)",
        ),
        (
            {"tests": ["zeta-marker"], "rising": 2, "unit": "ng/ml/d"},
            r"unknown unit 'ng/ml/d' \(units.csv knows: .*ng/mL",
        ),
        ({"tests": ["zeta-marker"], "rising": 0, "unit": "ng/mL"}, "whole number >= 1"),
        ({"tests": ["zeta-marker"], "rising": 2}, "missing parameter 'unit'"),
        ({"tests": ["zeta-marker"], "rising": 2, "unit": "ng/mL", "above": 1, "below": 2}, "exactly one of"),
    ],
)
def test_lab_trend_mistakes_are_refused_with_the_accepted_values(
    tmp_path: Path, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        compiled(tables_with_labs(tmp_path), {"lab_trend": spec})


def test_each_lab_predicate_asks_a_dtr_question_and_a_yes_decides_an_unknown(tmp_path: Path) -> None:
    tables = tables_with_labs(tmp_path)
    env = CompileEnv(tables)
    spec = {"tests": ["zeta-marker"], "rising": 2, "above": 0.1, "unit": "ng/mL", "within_days": 365}
    trend = leaf("lab_trend", spec, "I.A.9", env, LAB_LEAVES["lab_trend"])  # type: ignore[arg-type]
    assert [q.kind for q in trend.questions] == ["boolean"]
    assert trend.questions[0].text == (
        "Has zeta marker risen over the latest 2 results within the last 365 days, each above 0.1 ng/mL?"
    )
    latest = {"tests": ["zeta-marker"], "latest": {"at_most": 4, "unit": "ng/mL"}}
    value = leaf("lab_value", latest, "I.A.9", env, LAB_LEAVES["lab_value"])  # type: ignore[arg-type]
    assert value.questions[0].text == "Is the latest zeta marker result at most 4 ng/mL?"


def test_a_lab_test_table_row_that_changes_a_shared_meaning_is_refused(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    (folder / "tables" / "lab_tests.csv").write_text(LAB_TESTS + f"ZL-1,other-marker,x,{SOURCE}\n", encoding="utf-8")
    with pytest.raises((PolicyError, CodeTableError), match="'ZL-1'.*means 'other-marker'"):
        load_pack(folder)


# ----------------------------------------------------------------------------- item 6: the JSON Schema


def _schema_validator() -> object:
    import jsonschema_rs

    from cds_service.policy.schema import json_schema

    return jsonschema_rs.Draft202012Validator(json_schema())


def test_the_schema_describes_exactly_the_predicates_the_loader_knows() -> None:
    from cds_service.policy.predicates import COMBINATORS, LEAVES
    from cds_service.policy.schema import COMBINATOR_SCHEMAS, PREDICATES

    assert set(PREDICATES) == set(LEAVES)
    assert set(COMBINATOR_SCHEMAS) == set(COMBINATORS)


@pytest.mark.parametrize("folder", [Path("cds_service/policies/cp-phar-63"), PACK])
def test_every_pack_in_the_repository_validates_against_the_schema(folder: Path) -> None:
    import yaml

    document = yaml.safe_load((folder / "policy.yaml").read_text(encoding="utf-8"))
    errors = [e.message for e in _schema_validator().iter_errors(document)]  # type: ignore[attr-defined]
    assert errors == []


@pytest.mark.parametrize(
    "predicate",
    [
        {"lab_trnd": {"tests": ["psa"], "rising": 2, "unit": "ng/mL"}},  # a misspelt name
        {"lab_trend": {"tests": ["psa"], "rising": 2, "unit": "ng/mL", "abvoe": 0.1}},  # a misspelt parameter
        {"lab_trend": {"tests": ["psa"], "unit": "ng/mL"}},  # a missing parameter
        {"all_of": [{"procedure_in": {"tag": ["x"]}}]},  # inside a combinator
        "diagnosis_in",  # a bare name that needs parameters
    ],
)
def test_the_schema_catches_a_wrong_predicate(predicate: object) -> None:
    document = {
        "pathways": [
            {
                "id": "I.A",
                "kind": "indication",
                "criteria": [{"id": "I.A.1", "text": "t", "remedy": "r", "predicate": predicate}],
            }
        ]
    }
    messages = [e.message for e in _schema_validator().iter_errors(document)]  # type: ignore[attr-defined]
    paths = [list(e.instance_path) for e in _schema_validator().iter_errors(document)]  # type: ignore[attr-defined]
    assert ["pathways", 0, "criteria", 0, "predicate"] in [p[:5] for p in paths], messages


def test_the_published_schema_file_is_current() -> None:
    import json

    from cds_service.policy.schema import json_schema

    published = json.loads(Path("docs/policy-pack.schema.json").read_text(encoding="utf-8"))
    assert published == json_schema(), "run: python -m cds_service.policy.schema"


def test_a_unit_limit_without_a_family_names_the_packs_families(tmp_path: Path) -> None:
    """An mg limit may name a family (issue 17 item 3); a unit (tablet, capsule, mL) limit must, and the message
    says which families the pack declares."""
    folder = copy_pack(tmp_path)
    policy = folder / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    assert "dose_within: {max_mg_per_day: 8}" in text
    policy.write_text(text.replace("dose_within: {max_mg_per_day: 8}", "dose_within: {max_units_per_day: 2}"), "utf-8")
    with pytest.raises(PolicyError, match=r"max_units_per_day needs a family .*declared families: \['zentocap'"):
        load_pack(folder)


def test_an_unknown_key_names_the_accepted_ones(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    policy = folder / "policy.yaml"
    policy.write_text(
        policy.read_text(encoding="utf-8").replace("  tag: zentorimab\n", "  tag: zentorimab\n  colour: blue\n"),
        encoding="utf-8",
    )
    with pytest.raises(PolicyError, match=r"drug\.colour: .*\(accepted: families, max_gap_days, name"):
        load_pack(folder)
