"""cds_service/policies/cp-phar-63/tables/drug_products.csv: RxNorm SCD/SBD concepts for companion and history drugs, with form."""

from __future__ import annotations

import csv

from fhir_mappings.codes import table_file

HEADER = ["rxcui", "tty", "display", "ingredient", "strength", "dose_form", "route", "release", "source"]
ROUTES = {"oral", "intramuscular", "subcutaneous", "intravenous", "injection"}
RELEASES = {"long-acting", "short-acting", ""}


def _read(name: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(table_file(name), newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_header_is_exact():
    header, _ = _read("drug_products.csv")
    assert header == HEADER


def test_rows_are_sourced_and_well_formed():
    _, rows = _read("drug_products.csv")
    _, ingredients = _read("ingredients.csv")
    tags = {row["tag"] for row in ingredients}
    assert rows
    seen = set()
    for row in rows:
        assert row["source"].strip(), row
        assert row["rxcui"].isdigit(), row
        assert row["rxcui"] not in seen, row
        seen.add(row["rxcui"])
        assert row["display"].strip(), row
        assert row["tty"].split()[0] in {"SCD", "SBD", "SCDF", "SBDF", "BN"}, row
        assert row["ingredient"] in tags, row
        assert row["release"] in RELEASES, row
        assert row["route"] in ROUTES, row


def test_octreotide_has_long_and_short_acting_forms():
    _, rows = _read("drug_products.csv")
    releases = {row["release"] for row in rows if row["ingredient"] == "octreotide"}
    assert {"long-acting", "short-acting"} <= releases


def test_release_is_only_used_for_octreotide_forms():
    _, rows = _read("drug_products.csv")
    assert all(row["ingredient"] == "octreotide" for row in rows if row["release"])


def test_exemestane_25_mg_oral_tablet_is_present():
    _, rows = _read("drug_products.csv")
    assert any(
        row["display"] == "exemestane 25 MG Oral Tablet" and row["ingredient"] == "exemestane" and row["route"] == "oral"
        for row in rows
    )


def test_routes_table_is_sourced_snomed():
    header, rows = _read("routes.csv")
    assert header == ["system", "code", "display", "route", "source"]
    by_route = {row["route"]: row for row in rows if row["system"] == "snomed"}
    assert {"oral", "intramuscular", "subcutaneous", "intravenous"} <= set(by_route)
    for row in rows:
        assert row["system"] in {"snomed", "text"}, row
        assert row["route"] in ROUTES - {"injection"}, row
        assert row["source"].strip(), row
    assert by_route["intramuscular"]["code"] == "78421000"
