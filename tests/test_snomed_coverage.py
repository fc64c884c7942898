"""SNOMED CT coverage of the indication value sets (cds_service/policies/cp-phar-63/tables/conditions.csv).

Every indication value set covers the SNOMED concepts EHRs commonly send (metastasis by site, stage-bearing
concepts, transplant status); each row keeps a public source; a Condition coded in SNOMED CT, ICD-10-CM or
both is decided the same way. Resources are built inline: no dependency on /work/shared.
"""

from __future__ import annotations

import csv
import re
from datetime import date
from typing import Any

import pytest

from cds_service.policy.engine import Policy, evaluate, load_policy
from cds_service.policy.results import OrderEvaluation, Status
from fhir_mappings.codes import CodeTables, load_code_tables, table_file
from fhir_mappings.facts import build_facts
from fhir_mappings.model import Facts
from fhir_mappings.record import build_record

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
PLAN_PREFIXES = {"MCD-": "medicaid", "HIM-": "him", "COM-": "commercial"}
TODAY = date(2026, 11, 27)

#: Tags beyond the pathway diagnoses that must have SNOMED CT coverage.
EXTRA_TAGS = frozenset({"secondary-malignancy", "metastatic-stage", "kidney-transplant", "liver-transplant", "tsc"})

#: Tags for which no public source pairing a SNOMED CT code with its display was found yet. A row for one of
#: them makes ``test_unverified_tags_are_still_uncovered`` fail: then drop the tag from this set.
UNVERIFIED = frozenset({"sega", "angiomyolipoma", "liver-transplant"})

#: Metastasis by site: the SNOMED CT concepts added for each site (all must map to secondary-malignancy).
METASTASIS_BY_SITE = {
    "liver": ["94381002", "285613005"],
    "bone": ["94222008", "285618001", "285619009"],
    "lung": ["94391008", "285604008"],
    "brain": ["94225005", "188462001", "285641009"],
    "lymph node": ["94392001", "94396003", "94181007", "94351005", "94347008", "94397007", "285644001", "303201005"],
    "pleura": ["94493005", "285605009"],
    "adrenal gland": ["94161006", "285643007"],
    "peritoneum": ["94627008", "285616002"],
    "skin": ["94579000", "285631006"],
}
SITE_CASES = [(site, code) for site, codes in METASTASIS_BY_SITE.items() for code in codes]

# A source must name a repository file ("owner/repo path/to/file.ext") or a URL.
_REPO_PATH = re.compile(r"\b[\w.-]+/[\w.-]+ [\w./-]+\.\w+\b")
_URL = re.compile(r"https?://\S+")


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


@pytest.fixture(scope="module")
def policy(tables: CodeTables) -> Policy:
    return load_policy(vocabulary=tables)


def snomed_rows() -> list[dict[str, str]]:
    with table_file("conditions.csv").open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["system"] == "snomed"]


def snomed_tags() -> set[str]:
    return {tag.strip() for row in snomed_rows() for tag in row["tags"].split(";") if tag.strip()}


def required_tags(policy: Policy) -> set[str]:
    pathway_tags = {tag for pathway in policy.pathways if pathway.kind == "indication" for tag in pathway.diagnoses}
    return pathway_tags | EXTRA_TAGS


# ----------------------------------------------------------------------------- coverage and provenance


def test_every_indication_tag_has_a_snomed_row(policy: Policy) -> None:
    missing = required_tags(policy) - snomed_tags() - UNVERIFIED
    assert not missing, f"no SNOMED CT row for {sorted(missing)}"


def test_unverified_tags_are_still_uncovered(policy: Policy) -> None:
    assert UNVERIFIED <= required_tags(policy)
    assert not UNVERIFIED & snomed_tags(), "a SNOMED row now exists: remove the tag from UNVERIFIED"


def test_snomed_rows_are_matched_through_the_loaded_tables(tables: CodeTables) -> None:
    for row in snomed_rows():
        found = set().union(*(m.tags for m in tables.condition_matches("snomed", row["code"])))
        assert set(row["tags"].split(";")) <= found, row["code"]


@pytest.mark.parametrize("site,code", SITE_CASES, ids=[f"{s}:{c}" for s, c in SITE_CASES])
def test_metastasis_by_site_maps_to_secondary_malignancy(tables: CodeTables, site: str, code: str) -> None:
    matches = tables.condition_matches("snomed", code)
    assert matches, f"{site}: SNOMED {code} is not in conditions.csv"
    assert any("secondary-malignancy" in m.tags and not m.possible for m in matches)


#: Rows whose source predates this check and names no repository file (the search index did not return the
#: path). Known gap, kept visible: find the file and cite it, then drop the code from here.
SOURCE_WITHOUT_PATH = frozenset({"7199000"})


def test_every_snomed_row_names_a_public_source() -> None:
    rows = snomed_rows()
    assert len(rows) > 150
    for row in rows:
        source = row["source"].strip()
        assert source, f"SNOMED {row['code']} has no source"
        names_file = bool(_REPO_PATH.search(source) or _URL.search(source))
        if row["code"] in SOURCE_WITHOUT_PATH:
            assert not names_file, f"SNOMED {row['code']} now cites a file: drop it from SOURCE_WITHOUT_PATH"
            assert source.startswith("shared/reference/codes.csv")
            continue
        assert names_file, f"SNOMED {row['code']}: source names no file or URL"
        assert row["match"] == "exact" and row["code"].isdigit(), row["code"]


# ----------------------------------------------------------------------------- end to end: either coding decides


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01", "gender": "female"}


def condition(cid: str, *codings: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]},
    }


def draft(rxcui: str = "845507", display: str = "everolimus 10 MG Oral Tablet") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "o1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-20",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui, "display": display}]},
    }


def facts_for(tables: CodeTables, chart: list[dict[str, Any]]) -> Facts:
    record = build_record({"chart": chart}, [draft()], tables, patient_id="p1", user_ref=None)
    return build_facts(record, "o1", tables, plan_prefixes=PLAN_PREFIXES, user_ref=None, today=TODAY)


def statuses(ev: OrderEvaluation) -> dict[str, Status]:
    return {c.id: c.status for c in ev.all_criteria()}


SCT_BREAST_METASTASIS = (SNOMED, "315004001", "Metastasis from malignant tumor of breast")
SCT_BREAST = (SNOMED, "254837009", "Malignant tumor of breast")
SCT_LIVER_METASTASIS = (SNOMED, "94381002", "Secondary malignant neoplasm of liver")
ICD_BREAST = (ICD10CM, "C50.919", "Malignant neoplasm of unspecified site of unspecified female breast")
ICD_LIVER_METASTASIS = (ICD10CM, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")

BREAST_TO_LIVER = {
    "snomed-metastasis-from-breast": (SCT_BREAST_METASTASIS,),
    "snomed-breast-and-liver-site": (SCT_BREAST, SCT_LIVER_METASTASIS),
    "icd-10-cm-only": (ICD_BREAST, ICD_LIVER_METASTASIS),
    "both": (SCT_BREAST_METASTASIS, SCT_LIVER_METASTASIS, ICD_BREAST, ICD_LIVER_METASTASIS),
}


@pytest.mark.parametrize("codings", BREAST_TO_LIVER.values(), ids=BREAST_TO_LIVER.keys())
def test_breast_cancer_metastatic_to_liver_either_coding_decides(
    tables: CodeTables, policy: Policy, codings: tuple[tuple[str, str, str], ...]
) -> None:
    facts = facts_for(tables, [patient(), condition("c1", *codings)])
    assert {"breast-cancer", "secondary-malignancy"} <= set(facts.diagnoses)
    assert facts.diagnoses["breast-cancer"].evidence == ("Condition/c1",)
    ev = evaluate(policy, facts)
    assert ev.pathway == "I.A"
    assert statuses(ev)["I.A.2"] is Status.MET


def test_snomed_stage_summary_marks_metastatic_stage(tables: CodeTables, policy: Policy) -> None:
    cond = condition("c1", SCT_BREAST)
    cond["stage"] = [{"summary": {"coding": [{"system": SNOMED, "code": "2640006", "display": "Clinical stage 4"}]}}]
    facts = facts_for(tables, [patient(), cond])
    assert {"breast-cancer", "metastatic-stage"} <= set(facts.diagnoses)
    ev = evaluate(policy, facts)
    assert (ev.pathway, statuses(ev)["I.A.2"]) == ("I.A", Status.MET)


def _transplant_codes(tag: str) -> list[tuple[str, str]]:
    return [
        (row["code"], row["display"]) for row in snomed_rows() if row["tags"] == tag and row["certainty"] == "confirmed"
    ]


TRANSPLANT_CASES = [("kidney-transplant", *c) for c in _transplant_codes("kidney-transplant")] + [
    ("liver-transplant", *c) for c in _transplant_codes("liver-transplant")
]


@pytest.mark.parametrize("tag,code,display", TRANSPLANT_CASES, ids=[f"{t}:{c}" for t, c, _ in TRANSPLANT_CASES])
def test_snomed_only_transplant_selects_i_g(
    tables: CodeTables, policy: Policy, tag: str, code: str, display: str
) -> None:
    facts = facts_for(tables, [patient(), condition("c1", (SNOMED, code, display))])
    assert tag in facts.diagnoses
    ev = evaluate(policy, facts)
    assert ev.pathway == "I.G"
    assert statuses(ev)["I.G.2"] is Status.MET


def test_kidney_transplant_cases_exist() -> None:
    assert len([t for t, _, _ in TRANSPLANT_CASES if t == "kidney-transplant"]) >= 5


@pytest.mark.skipif(
    "liver-transplant" not in UNVERIFIED, reason="liver-transplant SNOMED rows exist and are exercised above"
)
def test_liver_transplant_snomed_is_pending_a_source() -> None:
    pytest.skip("no public source pairing a SNOMED CT liver transplant concept with its display was found yet")
