"""The sample requests in sample_bundles/ against the evaluations expected.json says CP.PHAR.63 calls for.

Each sample is a complete CDS Hooks request (prefetch filled, no fhirServer). Its expectation was reasoned from
the policy text and cds_service/policies/cp-phar-63/policy.yaml, not recorded from the service, so a failure here is
either a service regression or a sample whose reasoning needs another look. Besides the evaluation, every
response is held to the CDS Hooks / CRD shape rules a user of these files relies on, and the CLI must print the
same evaluations as the handler.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cds_service.config import Config
from cds_service.discovery import SERVICES
from cds_service.policy.engine import load_policy
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables, table_file
from tests.scenarios import ROOT, SAMPLE_DIR, evaluations
from tests.shared_data import shared_path

EXPECTED_FILE = SAMPLE_DIR / "expected.json"
README_FILE = SAMPLE_DIR / "README.md"
GENERATOR = ROOT / "tools" / "make_samples.py"
TODAY = date(2026, 11, 27)

EVALUATION_KEY = "priorauth-cds.evaluation"
CRD_COVERAGE_INFO = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OPTIONAL_KEYS = ("lineOfBusiness", "approvalMonths", "referTo")
#: codes.csv "system" column -> the short names of fhir_mappings/tables/systems.csv.
REFERENCE_SYSTEMS = {"RxNorm": "rxnorm", "ICD-10-CM": "icd-10-cm", "SNOMED CT": "snomed", "LOINC": "loinc",
                     "NUCC HCPT": "nucc"}


def sample_paths() -> list[Path]:
    return sorted(p for p in SAMPLE_DIR.glob("*.json") if p != EXPECTED_FILE)


SAMPLES = sample_paths()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def handler() -> HookHandler:
    """Built as cds_service/app.py builds it, without a store, on a fixed day a week after the orders."""
    tables = load_code_tables()
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None, today=lambda: TODAY)


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, Any]]:
    return load(EXPECTED_FILE)


def service_for(request: dict[str, Any]) -> str:
    return next(sid for sid, service in SERVICES.items() if service["hook"] == request["hook"])


def respond(handler: HookHandler, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    request = load(path)
    return request, handler.handle(service_for(request), copy.deepcopy(request)).body


def drafts_of(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in request["context"]["draftOrders"]["entry"]
    }


def suggested_orders(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for card in body.get("cards", []):
        for suggestion in card.get("suggestions", []):
            for action in suggestion.get("actions", []):
                resource = action.get("resource") or {}
                if resource.get("resourceType") == "MedicationRequest":
                    yield action["type"], resource


def suggested_codes(body: dict[str, Any]) -> set[str]:
    return {
        coding["code"]
        for _, order in suggested_orders(body)
        for coding in (order.get("medicationCodeableConcept") or {}).get("coding", [])
        if coding.get("system") == RXNORM
    }


def suggested_names(body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for _, order in suggested_orders(body):
        medication = order.get("medicationCodeableConcept") or {}
        names.add((medication.get("text") or "").lower())
        names |= {(c.get("display") or "").lower() for c in medication.get("coding", [])}
    return names


def empty_members(value: Any, path: str = "$") -> list[str]:
    """CDS Hooks: no JSON member may be null or empty (the top-level ``cards: []`` excepted)."""
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    found: list[str] = []
    if isinstance(value, dict):
        for key, member in value.items():
            if not (path == "$" and key == "cards" and member == []):
                found += empty_members(member, f"{path}.{key}")
    elif isinstance(value, list):
        for index, member in enumerate(value):
            found += empty_members(member, f"{path}[{index}]")
    return found


def coverage_information(resource: dict[str, Any]) -> dict[str, list[Any]]:
    for extension in resource.get("extension") or []:
        if extension.get("url") == CRD_COVERAGE_INFO:
            parts: dict[str, list[Any]] = {}
            for part in extension.get("extension", []):
                value = next(v for k, v in part.items() if k.startswith("value"))
                parts.setdefault(part["url"], []).append(value)
            return parts
    return {}


def without_extension(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "extension"}


# ----------------------------------------------------------------------------- the folder itself


def test_every_sample_has_an_expectation_and_a_readme_line(expected: dict[str, dict[str, Any]]) -> None:
    names = {p.name for p in SAMPLES}
    assert len(names) >= 25
    assert names == set(expected)
    readme = README_FILE.read_text(encoding="utf-8")
    missing = [name for name in names if f"`{name}`" not in readme]
    assert missing == []


def test_every_pathway_is_covered(expected: dict[str, dict[str, Any]]) -> None:
    pathways = {want["pathway"] for want in expected.values() if "pathway" in want}
    wanted = {f"I.{letter}" for letter in "ABCDEFGHI"} | {"II.A", "II.B"}
    assert wanted <= pathways
    assert {want.get("decision") for want in expected.values()} >= {"met", "not-met", "incomplete", "refer"}
    assert any(want.get("noEvaluations") for want in expected.values())


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_samples"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_samples_are_what_the_generator_writes() -> None:
    generator = _load_generator()
    files = generator.render(generator.build_all())
    assert generator.stale_files(files, SAMPLE_DIR) == []


def test_requests_are_complete_and_self_contained() -> None:
    for path in SAMPLES:
        request = load(path)
        assert request["hook"] in ("order-sign", "order-select"), path.name
        assert "fhirServer" not in request and "fhirAuthorization" not in request, path.name
        context = request["context"]
        assert context["userId"].startswith("PractitionerRole/"), path.name
        bundle = context["draftOrders"]
        assert bundle["type"] == "collection" and all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
        prefetch = request["prefetch"]
        assert set(prefetch) == {"patient", "coverage", "conditions", "medicationStatements", "medicationRequests",
                                 "medicationDispenses", "observations", "diseaseStatus", "practitionerRole",
                                 "allergies", "procedures"}, path.name
        assert prefetch["patient"]["id"] == context["patientId"]
        role = prefetch["practitionerRole"]
        modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in role["entry"]]
        assert modes == [("PractitionerRole", "match"), ("Practitioner", "include")], path.name
        authored = {e["resource"].get("authoredOn") for e in bundle["entry"]}
        assert authored == {"2026-11-20"}, path.name
        if request["hook"] == "order-select":
            assert set(context["selections"]) <= set(drafts_of(request)), path.name


def _resources(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (e["resource"] for e in request["context"]["draftOrders"]["entry"])
    for value in request["prefetch"].values():
        if value["resourceType"] == "Bundle":
            yield from (e["resource"] for e in value.get("entry", []))
        else:
            yield value


def test_resources_are_valid_fhir_r4() -> None:
    """The service drops an invalid resource quietly; a sample must not depend on that."""
    from fhir.resources.R4B import get_fhir_model_class

    for path in SAMPLES:
        request = load(path)
        get_fhir_model_class("Bundle").model_validate(request["context"]["draftOrders"])
        for resource in _resources(request):
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _reference_index() -> tuple[set[tuple[str, str]], dict[tuple[str, str], set[str]]]:
    """(system short name, code) known to our tables or shared/reference/codes.csv, and their displays."""
    known: set[tuple[str, str]] = set()
    displays: dict[tuple[str, str], set[str]] = {}

    def add(system: str, code: str, display: str | None = None) -> None:
        if code:
            known.add((system, code))
            if display:
                displays.setdefault((system, code), set()).add(display)

    for name in ("conditions", "condition_status", "receptor_status", "receptor_values", "specialties",
                 "therapy_response"):
        with table_file(f"{name}.csv").open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                add(row["system"], row["code"], row.get("display"))
    with table_file("coverage.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            add(row["system"], row["prefix"])
    with table_file("procedures.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            add(row["system"], row["code"], row.get("display"))
    for name, code_column, display_column in (("products", "rxcui", "display"), ("ingredients", "rxcui", "name"),
                                              ("drug_products", "rxcui", "display"),
                                              ("receptor_tests", "loinc", "display")):
        system = "loinc" if name == "receptor_tests" else "rxnorm"
        with table_file(f"{name}.csv").open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                add(system, row[code_column], row[display_column])
    with shared_path("reference", "codes.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            system = REFERENCE_SYSTEMS.get(row["system"])
            if system:
                display = row["display"].replace(" [non-billable header]", "").split(" (brand token")[0]
                add(system, row["code"], display)
    return known, displays


def _codings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and "code" in value:
            yield value
        for member in value.values():
            yield from _codings(member)
    elif isinstance(value, list):
        for member in value:
            yield from _codings(member)


def test_clinical_codes_come_from_our_tables_or_the_shared_reference() -> None:
    with table_file("systems.csv").open(encoding="utf-8") as handle:
        short_names = {row["uri"]: row["name"] for row in csv.DictReader(handle)}
    known, displays = _reference_index()
    problems = []
    for path in SAMPLES:
        for coding in _codings(load(path)):
            system = short_names.get(coding["system"])
            if system is None or system == "condition-clinical":
                continue  # FHIR structural code systems (categories, statuses), not terminology
            key = (system, coding["code"])
            if key not in known:
                problems.append(f"{path.name}: {key} not in the code tables or codes.csv")
            elif key in displays and coding.get("display") not in displays[key]:
                problems.append(f"{path.name}: {key} display {coding.get('display')!r} not {displays[key]}")
    assert problems == []


# ----------------------------------------------------------------------------- evaluations


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_gives_the_expected_evaluation(
    path: Path, handler: HookHandler, expected: dict[str, dict[str, Any]]
) -> None:
    _, body = respond(handler, path)
    want = expected[path.name]
    found = evaluations(body)
    if want.get("noEvaluations"):
        assert found == {} and body["cards"] == [] and not body.get("systemActions")
        return
    also = want.get("alsoOrders", {})  # several drafts of the drug in one request: each is evaluated
    assert list(found) == [want["order"], *also]
    for ref, criteria in also.items():
        assert {c["id"]: c["status"] for c in found[ref]["criteria"] if c["id"] in criteria} == criteria
    got = found[want["order"]]
    assert (got["policy"], got["policyVersion"]) == ("CP.PHAR.63", "02.25")
    assert (got.get("pathway"), got["decision"]) == (want["pathway"], want["decision"])
    for key in OPTIONAL_KEYS:
        assert got.get(key) == want.get(key), key
    assert got["evaluationDate"] == "2026-11-20"
    assert {c["id"]: c["status"] for c in got.get("criteria", [])} == want["criteria"]
    assert suggested_codes(body) == set(want.get("suggestCodes", []))
    names = suggested_names(body)
    for name in want.get("suggestMedication", []):
        assert any(name.lower() in n for n in names), (name, names)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_response_shape(path: Path, handler: HookHandler) -> None:
    request, body = respond(handler, path)
    drafts = drafts_of(request)
    assert empty_members(body) == []
    found = evaluations(body)
    for card in body["cards"]:
        assert 0 < len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning")
        assert isinstance(card["uuid"], str) and card["uuid"]
        assert card["source"]["label"] and card["source"]["topic"]["code"]
        evaluation = (card.get("extension") or {}).get(EVALUATION_KEY)
        if evaluation is not None:
            assert (card["indicator"] == "info") == (evaluation["decision"] == "met")
        if card.get("suggestions"):
            assert card["selectionBehavior"] in ("any", "at-most-one")
        for suggestion in card.get("suggestions", []):
            assert isinstance(suggestion["uuid"], str) and suggestion["uuid"] and suggestion["label"]
            assert suggestion["actions"]
            for action in suggestion["actions"]:
                if action["type"] == "update":
                    assert f"{action['resource']['resourceType']}/{action['resource']['id']}" in drafts
    actions = body.get("systemActions", [])
    detail_of = {
        card["extension"]["priorauth-cds.evaluation"]["order"]: card["detail"]
        for card in body["cards"]
        if "priorauth-cds.evaluation" in (card.get("extension") or {})
    }
    # Without an active Coverage no coverage is asserted (no systemAction), and the card says why.
    asserted = [order for order in found if "no coverage determination" not in detail_of[order]]
    if request["hook"] == "order-sign":
        assert len(actions) == len(asserted)
    for order in asserted:
        echoed = [a for a in actions if f"{a['resource']['resourceType']}/{a['resource']['id']}" == order]
        assert len(echoed) == 1 and echoed[0]["type"] == "update"
        resource = echoed[0]["resource"]
        assert without_extension(resource) == without_extension(drafts[order])
        info = coverage_information(resource)
        assert info["covered"][0] in ("covered", "not-covered", "conditional", "indeterminate")
        assert info["pa-needed"] == ["auth-needed"]
        assert ("doc-needed" in info) == (request["hook"] == "order-sign")


# ----------------------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``priorauth-cds evaluate`` as a user runs it, on the default configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "evaluate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", ["I.A-brand-without-exemestane.json", "order-select-preview.json"])
def test_cli_prints_the_same_evaluations(name: str, handler: HookHandler, expected: dict[str, dict[str, Any]]) -> None:
    path = SAMPLE_DIR / name
    _, body = respond(handler, path)
    raw = _cli(str(path), "--json")
    assert raw.returncode == 0, raw.stderr
    assert evaluations(json.loads(raw.stdout)) == evaluations(body)

    pretty = _cli(str(path))
    assert pretty.returncode == 0, pretty.stderr
    want = expected[name]
    assert f"pathway {want['pathway']}" in pretty.stdout and "**" not in pretty.stdout  # plain text, no Markdown
    assert "-> suggestion:" in pretty.stdout
