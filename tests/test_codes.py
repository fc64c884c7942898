"""Code tables: they load, every row is sourced, reference codes are copied faithfully, lookups behave."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from fhir_mappings.codes import (
    DEFAULT_PACK_TABLES,
    TABLES_DIR,
    CodeTableError,
    CodeTables,
    load_code_tables,
    normalize_icd10cm,
    table_file,
    table_names,
)
from fhir_mappings.model import LineOfBusiness
from tests.shared_data import shared_path

REFERENCE_SYSTEM = {
    "rxnorm": "RxNorm",
    "icd-10-cm": "ICD-10-CM",
    "snomed": "SNOMED CT",
    "loinc": "LOINC",
    "nucc": "NUCC HCPT",
}


def read(name: str) -> list[dict[str, str]]:
    with table_file(name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def merge_tables(directory: Path) -> None:
    """The default pack's tables and the shared ones in one folder (tags.csv rows added up), to edit in a test."""
    shutil.copytree(TABLES_DIR, directory)
    for path in DEFAULT_PACK_TABLES.glob("*.csv"):
        target = directory / path.name
        if target.exists():  # tags.csv: both declare tags
            rows = path.read_text(encoding="utf-8").splitlines()[1:]
            target.write_text(target.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
        else:
            shutil.copy(path, target)


def reference_rows() -> dict[tuple[str, str], dict[str, str]]:
    with shared_path("reference", "codes.csv").open(encoding="utf-8", newline="") as handle:
        return {(r["system"], r["code"]): r for r in csv.DictReader(handle)}


def clean(display: str) -> str:
    display = display.replace(" [non-billable header]", "")
    return re.sub(r" \((brand token|mCODE comment|LOINC long name)[^)]*\)$", "", display)


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


# ----------------------------------------------------------------------------- loading and provenance


def test_tables_load_once_and_are_cached() -> None:
    assert load_code_tables() is load_code_tables()
    assert load_code_tables(TABLES_DIR) is load_code_tables()
    assert load_code_tables(pack=DEFAULT_PACK_TABLES) is load_code_tables()


@pytest.mark.parametrize("name", table_names())
def test_every_row_names_a_source(name: str) -> None:
    rows = read(name)
    assert rows, f"{name} is empty"
    for line, row in enumerate(rows, start=2):
        assert row["source"].strip(), f"{name}:{line} has no source"


def _reference_backed(
    name: str, system_column: str | None, fixed_system: str | None, code_column: str, display_column: str
) -> list[tuple[str, str, str]]:
    out = []
    for row in read(name):
        if not row["source"].startswith("shared/reference/codes.csv"):
            continue
        system = fixed_system or REFERENCE_SYSTEM[row[system_column or "system"]]
        out.append((system, row[code_column], row[display_column]))
    return out


REFERENCE_BACKED = (
    _reference_backed("products.csv", None, "RxNorm", "rxcui", "display")
    + [(s, c, d) for s, c, d in _reference_backed("ingredients.csv", None, "RxNorm", "rxcui", "name") if c]
    + _reference_backed("conditions.csv", "system", None, "code", "display")
    + _reference_backed("receptor_status.csv", "system", None, "code", "display")
    + _reference_backed("receptor_tests.csv", None, "LOINC", "loinc", "display")
    + _reference_backed("specialties.csv", "system", None, "code", "display")
)


def test_reference_backed_rows_exist() -> None:
    assert len(REFERENCE_BACKED) > 150


@pytest.mark.parametrize("system,code,display", REFERENCE_BACKED, ids=[f"{s}:{c}" for s, c, _ in REFERENCE_BACKED])
def test_reference_codes_are_copied_faithfully(system: str, code: str, display: str) -> None:
    reference = reference_rows()
    assert (system, code) in reference, f"{system} {code} is not in shared/reference/codes.csv"
    row = reference[(system, code)]
    assert row["verified"] == "yes"
    assert clean(row["display"]).lower() == display.lower()


def test_no_unverified_reference_code_is_used() -> None:
    unverified = {(s, c) for (s, c), r in reference_rows().items() if r["verified"] != "yes"}
    used = {(s, c) for s, c, _ in REFERENCE_BACKED}
    assert not used & unverified
    ripretinib = [r for r in read("ingredients.csv") if r["tag"] == "ripretinib"]
    assert ripretinib and all(not r["rxcui"] for r in ripretinib)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda rows: rows.__setitem__(1, rows[1].replace("breast-cancer", "breast-cancr")), "unknown tag"),
        (lambda rows: rows.__setitem__(1, rows[1].replace(",prefix,", ",fuzzy,")), "match must be"),
        (lambda rows: rows.__setitem__(1, rows[1].replace("icd-10-cm,", "icd-9,", 1)), "unknown system"),
    ],
)
def test_bad_condition_rows_fail_at_load(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "tables"
    merge_tables(directory)
    path = directory / "conditions.csv"
    rows = path.read_text(encoding="utf-8").splitlines()
    mutate(rows)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(CodeTableError, match=message):
        CodeTables(directory)


def test_bad_family_and_missing_source_fail_at_load(tmp_path: Path) -> None:
    directory = tmp_path / "tables"
    merge_tables(directory)
    products = directory / "products.csv"
    text = products.read_text(encoding="utf-8")
    products.write_text(text.replace(",afinitor,", ",Afinitor Tabs,", 1), encoding="utf-8")
    with pytest.raises(CodeTableError, match="malformed product family"):
        CodeTables(directory)
    # A well-formed family the policy file does not declare is refused when the policy is loaded over the tables.
    products.write_text(text.replace(",afinitor,", ",afinitr,", 1), encoding="utf-8")
    from cds_service.policy.engine import PolicyError, load_policy

    with pytest.raises(PolicyError, match="differ from products.csv families"):
        load_policy(vocabulary=CodeTables(directory))
    products.write_text(text, encoding="utf-8")
    coverage = directory / "coverage.csv"
    lines = coverage.read_text(encoding="utf-8").splitlines()
    coverage.write_text("\n".join([lines[0], "sopt,2,medicaid,"]) + "\n", encoding="utf-8")
    with pytest.raises(CodeTableError, match="no source"):
        CodeTables(directory)


def test_missing_table_fails_at_load(tmp_path: Path) -> None:
    directory = tmp_path / "tables"
    merge_tables(directory)
    (directory / "possible.csv").unlink()
    with pytest.raises(CodeTableError, match="missing code table possible.csv"):
        CodeTables(directory)


# ----------------------------------------------------------------------------- vocabularies


BRIEF_DIAGNOSIS_TAGS = {
    "breast-cancer",
    "secondary-malignancy",
    "metastatic-stage",
    "net-pancreas",
    "net-gi",
    "net-lung",
    "net-thymus",
    "net-unspecified-origin",
    "rcc",
    "tsc",
    "renal-angiomyolipoma",
    "sega",
    "partial-onset-seizures",
    "kidney-transplant",
    "liver-transplant",
    "heart-transplant",
    "hodgkin-lymphoma",
    "wm-lpl",
    "thymoma",
    "thymic-carcinoma",
    "pecoma",
    "angiomyolipoma",
    "lam",
    "histiocytic-neoplasm",
    "endometrial-carcinoma",
    "gist",
    "dtc",
    "osteosarcoma",
    "meningioma",
    "functional-carcinoid",
}
BRIEF_INGREDIENT_TAGS = {
    "exemestane",
    "fulvestrant",
    "tamoxifen",
    "toremifene",
    "anastrozole",
    "letrozole",
    "megestrol",
    "fluoxymesterone",
    "ethinyl-estradiol",
    "tacrolimus",
    "cyclosporine",
    "basiliximab",
    "prednisone",
    "prednisolone",
    "methylprednisolone",
    "imatinib",
    "sunitinib",
    "regorafenib",
    "ripretinib",
    "sorafenib",
    "bevacizumab",
    "octreotide",
    "pazopanib",
    "nivolumab",
    "ipilimumab",
    "aldesleukin",
    "cabozantinib",
    "temsirolimus",
    "axitinib",
    "lenvatinib",
    "erlotinib",
    "sirolimus",
    "everolimus",
    "levetiracetam",
    "valproate",
    "lamotrigine",
    "carbamazepine",
    "oxcarbazepine",
    "topiramate",
    "lacosamide",
    "vigabatrin",
    "clobazam",
    "phenobarbital",
}


def test_vocabularies_hold_the_brief_tags(tables: CodeTables) -> None:
    assert BRIEF_DIAGNOSIS_TAGS <= tables.diagnosis_tags
    assert BRIEF_INGREDIENT_TAGS <= tables.ingredient_tags
    assert {
        "endocrine-therapy",
        "rcc-prior-therapy",
        "corticosteroid",
        "anti-seizure",
        "calcineurin-inhibitor",
        "antineoplastic",
    } == tables.medication_group_tags
    assert tables.medication_tags == tables.ingredient_tags | tables.medication_group_tags
    assert {
        "er-positive",
        "er-negative",
        "pr-positive",
        "pr-negative",
        "her2-positive",
        "her2-negative",
        "hr-positive",
    } <= tables.receptor_tags
    assert {"oncology", "neurology", "nephrology", "hepatology", "transplant"} <= tables.specialty_tags
    assert set(tables.vocabulary) == {"diagnosis", "ingredient", "medication-group", "receptor", "specialty"}


# ----------------------------------------------------------------------------- products


PRODUCT_ROWS = [r for r in read("products.csv") if r["tty"] in ("SCD", "SBD")]


@pytest.mark.parametrize("row", PRODUCT_ROWS, ids=[r["rxcui"] for r in PRODUCT_ROWS])
def test_product_family_rules(row: dict[str, str], tables: CodeTables) -> None:
    product = tables.product(row["rxcui"])
    assert product is not None and product.strength_mg is not None
    if product.dose_form == "tablet-for-suspension":
        expected = "afinitor-disperz"
    elif product.strength_mg in (2.5, 5.0, 7.5, 10.0):
        expected = "afinitor"
    else:
        assert product.strength_mg in (0.25, 0.5, 0.75, 1.0)
        expected = "zortress"
    assert product.family == expected
    assert product.is_brand is (product.tty == "SBD")
    generic = tables.product(product.generic_rxcui)
    assert generic is not None and generic.tty == "SCD"
    assert (generic.strength_mg, generic.dose_form, generic.family) == (
        product.strength_mg,
        product.dose_form,
        product.family,
    )
    assert product.generic_available  # codes.md: generics exist for every Afinitor, Disperz and Zortress strength


def test_disperz_sbds_named_afinitor_are_disperz(tables: CodeTables) -> None:
    for rxcui in ("1310138", "1310144", "1310147"):
        product = tables.product(rxcui)
        assert product is not None
        assert product.display.endswith("[Afinitor]")
        assert product.family == "afinitor-disperz" and product.is_brand


def test_form_only_and_ingredient_concepts(tables: CodeTables) -> None:
    assert tables.product("141704").family is None  # type: ignore[union-attr]
    assert tables.product("845506").family is None  # type: ignore[union-attr]  # oral tablet: Afinitor or Zortress
    assert tables.product("1869513").family == "afinitor-disperz"  # type: ignore[union-attr]
    assert tables.product("977430").family == "zortress"  # type: ignore[union-attr]
    assert tables.product("123") is None


@pytest.mark.parametrize(
    "text,is_brand,family,strength,form",
    [
        ("everolimus 10 MG Oral Tablet [Afinitor]", True, "afinitor", 10.0, "tablet"),
        (
            "everolimus 2 MG Tablet for Oral Suspension [Afinitor]",
            True,
            "afinitor-disperz",
            2.0,
            "tablet-for-suspension",
        ),
        ("Afinitor Disperz 3 mg", True, "afinitor-disperz", 3.0, "tablet-for-suspension"),
        ("AFINITOR", True, "afinitor", None, None),
        ("Zortress 0.75mg tab", True, "zortress", 0.75, "tablet"),
        ("Torpenz 7.5 mg tablets", True, "afinitor", 7.5, "tablet"),
        ("everolimus 0.5 MG Oral Tablet", False, "zortress", 0.5, "tablet"),
        ("everolimus 5 mg", False, None, 5.0, None),  # Afinitor 5 mg tablet or Disperz 5 mg: undecidable
        ("everolimus tablet", False, None, None, "tablet"),
    ],
)
def test_text_product(
    tables: CodeTables,
    text: str,
    is_brand: bool,
    family: str | None,
    strength: float | None,
    form: str | None,
) -> None:
    found = tables.text_product(text)
    assert found.is_drug
    assert (found.is_brand, found.family, found.strength_mg, found.dose_form) == (is_brand, family, strength, form)


@pytest.mark.parametrize("text", ["temsirolimus 25 MG", "sirolimus 1 MG Oral Tablet", "everolimusX", ""])
def test_text_product_not_everolimus(tables: CodeTables, text: str) -> None:
    assert not tables.text_product(text).is_drug


# ----------------------------------------------------------------------------- ingredients


@pytest.mark.parametrize(
    "text,expected",
    [
        ("exemestane 25 MG Oral Tablet", {"exemestane"}),
        ("EXEMESTANE", {"exemestane"}),
        ("megestrol acetate 40 MG/ML", {"megestrol"}),
        ("ethinyl  estradiol 0.02 MG", {"ethinyl-estradiol"}),
        ("methylprednisolone 4 MG", {"methylprednisolone"}),
        ("prednisolone 5 MG", {"prednisolone"}),
        ("temsirolimus 25 MG/ML", {"temsirolimus"}),
        ("Gleevec 400 mg", {"imatinib"}),
        ("Sandimmune", {"cyclosporine"}),
        ("Qinlock 50 MG", {"ripretinib"}),
        ("Sodium valproate 200 mg", {"valproate"}),
        ("everolimus 10 MG Oral Tablet", {"everolimus"}),
        ("Zortress 1 mg", {"everolimus"}),
        ("amlodipine 5 MG", set()),
        ("prednisonex", set()),
    ],
)
def test_ingredient_text_matching(tables: CodeTables, text: str, expected: set[str]) -> None:
    assert set(tables.ingredient_tags_in_text(text)) == expected


def test_ingredient_codes_and_groups(tables: CodeTables) -> None:
    assert tables.ingredient_tags_for_code("72965") == {"letrozole"}
    assert tables.ingredient_tags_for_code("845512") == {"everolimus"}  # an everolimus product code
    assert tables.ingredient_tags_for_code("999999") == frozenset()
    assert tables.with_groups({"letrozole"}) == {"letrozole", "endocrine-therapy"}
    assert tables.with_groups({"tacrolimus"}) == {"tacrolimus", "calcineurin-inhibitor"}
    assert tables.with_groups({"everolimus"}) == {"everolimus"}  # listed in Appendix B, never its own prior therapy
    rcc = {t for t, groups in tables.ingredient_groups.items() if "rcc-prior-therapy" in groups}
    assert {
        "sorafenib",
        "sunitinib",
        "pazopanib",
        "nivolumab",
        "ipilimumab",
        "aldesleukin",
        "cabozantinib",
        "temsirolimus",
        "axitinib",
        "lenvatinib",
        "erlotinib",
    } == rcc


def test_name_matching_is_data(tmp_path: Path) -> None:
    directory = tmp_path / "tables"
    merge_tables(directory)
    with (directory / "ingredient_synonyms.csv").open("a", encoding="utf-8") as handle:
        handle.write("Examplex,letrozole,test synonym\n")
    assert CodeTables(directory).ingredient_tags_in_text("Examplex 2.5 mg") == {"letrozole"}
    assert load_code_tables().ingredient_tags_in_text("Examplex 2.5 mg") == frozenset()


# ----------------------------------------------------------------------------- conditions and receptors


@pytest.mark.parametrize(
    "system,code,tags,possible",
    [
        ("icd-10-cm", "C50.912", {"breast-cancer"}, False),
        ("icd-10-cm", "C50912", {"breast-cancer"}, False),
        ("icd-10-cm", "C78.7", {"secondary-malignancy"}, False),
        ("icd-10-cm", "C7B.02", {"secondary-malignancy"}, False),
        ("icd-10-cm", "C25.4", {"net-pancreas"}, False),
        ("icd-10-cm", "C7A.090", {"net-lung"}, False),
        ("icd-10-cm", "C7A.091", {"net-thymus"}, False),
        ("icd-10-cm", "C7A.012", {"net-gi"}, False),
        ("icd-10-cm", "C7A.00", {"net-unspecified-origin"}, False),
        ("icd-10-cm", "C64.2", {"rcc"}, False),
        ("icd-10-cm", "C65.1", {"rcc"}, True),
        ("icd-10-cm", "Q85.1", {"tsc"}, False),
        ("icd-10-cm", "G40.109", {"partial-onset-seizures", "seizure-disorder"}, False),
        ("icd-10-cm", "Z94.0", {"kidney-transplant"}, False),
        ("icd-10-cm", "C88.00", {"wm-lpl"}, False),
        ("icd-10-cm", "C81.1A", {"hodgkin-lymphoma"}, False),
        ("icd-10-cm", "E34.00", {"functional-carcinoid"}, False),
        ("snomed", "254921004", {"renal-angiomyolipoma"}, False),
        ("snomed", "258228008", {"metastatic-stage"}, False),
    ],
)
def test_condition_matches(tables: CodeTables, system: str, code: str, tags: set[str], possible: bool) -> None:
    matches = tables.condition_matches(system, code)
    assert set().union(*(m.tags for m in matches)) == tags
    assert all(m.possible is possible for m in matches)


@pytest.mark.parametrize("code", ["Q85.83", "Q85.81", "I10", "C7A.093", "Z17.0"])
def test_codes_that_are_not_policy_diagnoses(tables: CodeTables, code: str) -> None:
    # Q85.83 is Von Hippel-Lindau, not TSC (codes.md finding 1); a kidney carcinoid is no policy NET origin.
    assert tables.condition_matches("icd-10-cm", code) == []


@pytest.mark.parametrize(
    "code,tags",
    [
        ("Z17.0", {"er-positive"}),
        ("Z17.22", {"pr-negative"}),
        ("Z17.32", {"her2-negative"}),
        ("Z17.411", {"hr-positive", "her2-negative"}),
        ("Z17.421", {"er-negative", "pr-negative", "hr-negative", "her2-negative"}),
        ("Z17.4", set()),
    ],
)
def test_receptor_status_codes(tables: CodeTables, code: str, tags: set[str]) -> None:
    assert set(tables.receptor_status_tags("icd-10-cm", code)) == tags
    assert tables.condition_code_relevant("icd-10-cm", code) is bool(tags)


def test_receptor_tests_and_values(tables: CodeTables) -> None:
    assert tables.receptor_tests["16112-5"].receptor == "er"
    assert tables.receptor_tests["85329-1"].kind == "percent"
    assert tables.receptor_tests["85329-1"].positive_at_least == 1.0
    assert tables.receptor_tests["48676-1"].receptor == "her2"
    assert tables.result_of_code("snomed", "10828004") == "positive"
    assert tables.result_of_code("snomed", "260385009") == "negative"
    assert tables.result_of_code("v3-interpretation", "POS") == "positive"
    assert tables.result_of_text("ER Low Positive (5%)") == "positive"
    assert tables.result_of_text("Negative (1+)") == "negative"
    assert tables.result_of_text("positive? negative?") is None
    assert tables.her2_ihc_result("2+") == "equivocal"


def test_icd10cm_normalization() -> None:
    assert normalize_icd10cm(" c50912 ") == "C50.912"
    assert normalize_icd10cm("C50") == "C50"
    assert normalize_icd10cm("Z17.411") == "Z17.411"


# ----------------------------------------------------------------------------- specialties and coverage


@pytest.mark.parametrize(
    "code,tags",
    [
        ("207RX0202X", {"oncology"}),
        ("207VX0201X", {"oncology"}),
        ("2084N0402X", {"neurology"}),
        ("207RN0300X", {"nephrology"}),
        ("207RI0008X", {"hepatology"}),
        ("207RT0003X", {"hepatology", "transplant"}),
        ("204F00000X", {"transplant"}),
        ("207RG0100X", {"gastroenterology"}),  # hepatology-adjacent, but not a hepatologist
        ("207rx0202x", {"oncology"}),
        ("208D00000X", set()),
    ],
)
def test_specialty_codes(tables: CodeTables, code: str, tags: set[str]) -> None:
    assert set(tables.specialty_tags_for("nucc", code)) == tags


@pytest.mark.parametrize(
    "code,lob",
    [
        ("2", LineOfBusiness.MEDICAID),
        ("21", LineOfBusiness.MEDICAID),
        ("213", LineOfBusiness.MEDICAID),
        ("5", LineOfBusiness.COMMERCIAL),
        ("51", LineOfBusiness.COMMERCIAL),
        ("1", None),
        ("14", None),
        ("3", None),
    ],
)
def test_sopt_line_of_business(tables: CodeTables, code: str, lob: LineOfBusiness | None) -> None:
    assert tables.line_of_business_for("sopt", code) is lob


def test_system_names(tables: CodeTables) -> None:
    assert tables.system_name("http://hl7.org/fhir/sid/icd-10-cm") == "icd-10-cm"
    assert tables.system_name("urn:oid:2.16.840.1.113883.3.221.5") == "sopt"
    assert tables.system_name("http://example.org/local") is None
    assert tables.system_name(None) is None
