"""The questionnaire package on every pathway: structure against the DTR 2.2 profiles' required elements and
the official examples' shapes (../shared/external/dtr-pas), prefill against the evaluation's evidence, and the
payer-side operations' errors (always an OperationOutcome, never a 5xx)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.valueset import ValueSet
from sqlalchemy import create_engine, text

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.dtr import package
from cds_service.dtr.questionnaire import asked_pathways, build_questionnaire, questionnaire_id
from cds_service.registry import default_registry
from cds_service.store import normalize_database_url
from tests.dtr_helpers import (
    ORIGIN,
    PACKAGE,
    SIGN,
    coverage_information,
    coverage_of,
    drug_order,
    evaluation,
    items,
    package_parameters,
    resources,
    sample,
    sign,
)
from tests.jwt_helpers import bearer, cds_claims, ec_key, jwks
from tests.scenarios import SAMPLE_DIR
from tests.shared_data import shared_path

PACK = default_registry().default
POLICY, TABLES = PACK.policy, PACK.tables
PATHWAYS = [p.id for p in asked_pathways(POLICY)]
DTR_STD = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-std-questionnaire"


def _questionnaire(pathway_id: str) -> dict[str, Any]:
    return build_questionnaire(POLICY, POLICY.pathway(pathway_id), TABLES, "https://payer.example", "Payer")[0]


# ----------------------------------------------------------------------------- the questionnaires


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_every_pathway_questionnaire_has_what_the_dtr_standard_profile_requires(pathway_id: str) -> None:
    q = _questionnaire(pathway_id)
    Questionnaire.model_validate(q)  # FHIR R4 structure
    assert q["meta"]["profile"] == [DTR_STD]
    assert q["url"] == f"https://payer.example/fhir/Questionnaire/{questionnaire_id(POLICY, pathway_id)}"
    assert q["version"] == POLICY.version and q["status"] == "active" and q["subjectType"] == ["Patient"]
    assert q["item"], "dtr-std-questionnaire: item 1..*"
    link_ids = [i["linkId"] for i in items(q)]
    assert len(link_ids) == len(set(link_ids)), "linkIds are unique"
    criterion_ids = {c.id for pathway in POLICY.pathways for top in pathway.criteria for c in top.walk()}
    for item in items(q):
        assert item.get("text"), f"{item['linkId']}: dtr-base-questionnaire item.text 1..1"
        assert item["linkId"].split("/")[0] in criterion_ids, "every linkId starts with the policy's criterion id"
        if item["type"] in ("choice", "open-choice"):  # dtrq-2
            assert item.get("answerOption") or item.get("answerValueSet")
            if item.get("answerValueSet"):  # contained (self-contained form), itself version-specific (oper-16)
                contained = {f"#{r['id']}": r for r in q.get("contained", [])}
                value_set = contained[item["answerValueSet"]]
                assert value_set["resourceType"] == "ValueSet" and value_set["version"] == POLICY.version
                assert value_set["url"].startswith("https://payer.example/fhir/ValueSet/")
                assert value_set["expansion"]["contains"], "expanded: renderers need no terminology server"
        if item["type"] == "quantity":  # dtrq-3
            assert any(e["url"].endswith("questionnaire-unitOption") for e in item.get("extension", []))
        for condition in item.get("enableWhen", []):
            assert condition["question"] in link_ids


@pytest.mark.parametrize("pathway_id", PATHWAYS)
def test_every_criterion_a_chart_can_decide_is_asked_with_the_policy_text_and_remedy(pathway_id: str) -> None:
    q = _questionnaire(pathway_id)
    by_id = {i["linkId"]: i for i in items(q)}
    pathway = POLICY.pathway(pathway_id)
    for top in pathway.criteria:
        for criterion in top.walk():
            asked = [question for leaf in criterion.leaves for question in leaf.questions]
            if not asked:
                continue
            item = by_id[criterion.id]
            assert item["text"].startswith(criterion.text)
            assert by_id[f"{criterion.id}/help"]["text"] == criterion.remedy


def test_answer_types_fit_the_facts() -> None:
    by_id = {i["linkId"]: i for i in items(_questionnaire("I.A"))}
    assert by_id["I.A.3"]["type"] == "boolean"  # prescriber specialty (or consultation)
    assert by_id["I.A.4"]["type"] == "date"  # birth date -> age on the order date
    assert by_id["I.A.2/1"]["type"] == "choice" and "answerValueSet" in by_id["I.A.2/1"]  # diagnosis codes
    assert by_id["I.A.6"]["type"] == "choice" and by_id["I.A.6"]["repeats"] is True  # prior endocrine therapies
    assert {o["valueCoding"]["code"] for o in by_id["I.A.5/her2"]["answerOption"]} == {"10828004", "260385009"}
    assert "I.A.1" not in by_id  # the product: fixed on the order, not asked
    assert by_id["I.A.9.a.i"]["readOnly"] is True  # a dose limit: filled in from the order, never asked
    continued = {i["linkId"]: i for i in items(_questionnaire("II.A"))}
    assert any(i["type"] == "quantity" for i in continued.values())  # previous daily dose (dose increase)


def test_enable_when_mirrors_the_policy() -> None:
    rcc = {i["linkId"]: i for i in items(_questionnaire("I.C"))}
    then = rcc["I.C.6/then"]  # failure of prior therapy is asked only for clear cell histology
    assert {c["question"] for c in then["enableWhen"]} == {"I.C.6/if"}
    assert all(c["operator"] == "=" and "answerCoding" in c for c in then["enableWhen"])
    assert then["enableBehavior"] == "any"
    transplant = {i["linkId"]: i for i in items(_questionnaire("I.G"))}
    # "for kidney transplant": a kidney transplant code, or the date of a kidney transplant procedure
    conditions = transplant["I.G.5/then"]["enableWhen"]
    assert {c["question"] for c in conditions} == {"I.G.5/if/1", "I.G.5/if/2"}
    assert {"question": "I.G.5/if/2", "operator": "exists", "answerBoolean": True} in conditions


def test_value_sets_come_from_the_code_tables() -> None:
    _, value_sets = build_questionnaire(POLICY, POLICY.pathway("I.A"), TABLES, "https://payer.example", "P")
    refs = {ref.url: ref for ref, _ in value_sets}
    endocrine = refs["https://payer.example/fhir/ValueSet/cp-phar-63-i-a-6"]
    codes = {row.code for row in endocrine.rows}
    assert {"72965", "10324", "258494", "282357"} <= codes  # letrozole, tamoxifen, exemestane, fulvestrant
    assert all(row.system == "rxnorm" for row in endocrine.rows)


def test_the_synthetic_pack_gets_questionnaires_with_no_python_of_its_own() -> None:
    from cds_service.registry import load_registry
    from tests.test_synthetic_pack import PACKS

    registry = load_registry([PACKS / "zentorimab"])
    pack = next(p for p in registry.packs if p.name != PACK.name)
    for pathway in asked_pathways(pack.policy):
        q = build_questionnaire(pack.policy, pathway, pack.tables, "https://payer.example", "P")[0]
        Questionnaire.model_validate(q)
        assert q["item"]


# ----------------------------------------------------------------------------- the package


def _samples_with_questionnaires() -> Iterator[str]:
    for path in sorted(SAMPLE_DIR.glob("*.json")):
        if path.name == "expected.json":
            continue
        request = json.loads(path.read_text())
        if request.get("hook") == "order-sign":
            yield path.stem


SAMPLES = list(_samples_with_questionnaires())


def _package(client: Any, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    request = sample(name)
    body = sign(client, request)
    if not body.get("systemActions"):
        return request, body, None
    info = coverage_information(body)
    if "questionnaire" not in info:
        return request, body, None
    response = client.post(PACKAGE, json=package_parameters(request, context=info["coverage-assertion-id"][0]))
    assert response.status_code == 200, response.get_data(as_text=True)
    return request, body, response.get_json()


@pytest.mark.parametrize("name", SAMPLES)
def test_package_shape_and_prefill_match_the_evaluation(client: Any, name: str) -> None:
    request, body, output = _package(client, name)
    if not body["cards"]:
        assert output is None  # nothing of the drug ordered: nothing to document
        return
    ev = evaluation(body)
    if output is None:
        assert ev["decision"] == "refer" or not body.get("systemActions") or ev.get("pathway") in (None, "I.I", "II.B")
        return
    Parameters.model_validate(output)
    bundles = [p for p in output["parameter"] if p["name"] != "outcome"]
    assert [p["name"] for p in output["parameter"]] == ["packagebundle"] * len(bundles) + ["outcome"]
    assert _log_errors_offered(output["parameter"][-1]["resource"])
    evidence = {c["id"]: set(c.get("evidence") or []) for c in ev.get("criteria", [])}
    on_record = {
        f"{r['resourceType']}/{r['id']}"
        for value in request["prefetch"].values()
        for r in ([e["resource"] for e in value.get("entry", [])] if value.get("resourceType") == "Bundle" else [value])
    } | {f"MedicationRequest/{e['resource']['id']}" for e in request["context"]["draftOrders"]["entry"]}
    prefilled = 0
    for parameter in bundles:
        bundle = parameter["resource"]
        Bundle.model_validate(bundle)
        assert bundle["type"] == "collection"
        assert bundle["entry"][0]["resource"]["resourceType"] == "Questionnaire"  # dtrb-1
        questionnaire = bundle["entry"][0]["resource"]
        (draft,) = resources(bundle, "QuestionnaireResponse")  # exactly one (DTR-QPackageBundle)
        QuestionnaireResponse.model_validate(draft)
        assert draft["questionnaire"] == f"{questionnaire['url']}|{questionnaire['version']}"
        assert draft["subject"]["reference"] == f"Patient/{request['context']['patientId']}"
        urls = {e["url"]: e for e in draft["extension"]}
        assert any(u.endswith("qr-coverage") for u in urls) and any(u.endswith("intendedUse") for u in urls)
        context = next(e for u, e in urls.items() if u.endswith("qr-context"))
        assert context["valueReference"]["reference"] == f"MedicationRequest/{drug_order(request)['id']}"
        value_sets = {v["url"] + "|" + v["version"]: v for v in resources(bundle, "ValueSet")}
        for item in items(questionnaire):
            if "answerValueSet" in item:
                inside = next(r for r in questionnaire["contained"] if f"#{r['id']}" == item["answerValueSet"])
                vs = value_sets[f"{inside['url']}|{inside['version']}"]  # oper-14: each ValueSet is in the Bundle too
                assert vs["expansion"]["contains"] == inside["expansion"]["contains"]
                ValueSet.model_validate(vs)
                assert vs["expansion"]["total"] == len(vs["expansion"]["contains"])  # oper-15: expanded
        for answered in items(draft):
            for answer in answered.get("answer", []):
                origin = next(e for e in answer["extension"] if e["url"] == ORIGIN)
                assert origin["extension"] == [{"url": "source", "valueCode": "auto-server"}]  # dtrx-1: no author
                refs = {e["valueReference"]["reference"] for e in answer["extension"] if e["url"] != ORIGIN}
                assert refs, f"{name} {answered['linkId']}: a prefilled answer cites its evidence"
                assert refs <= on_record, f"{name} {answered['linkId']}: cites {refs - on_record}, not in the chart"
                criterion = answered["linkId"]  # a single-test criterion: the criterion's own evidence
                if criterion in evidence and questionnaire["id"] == questionnaire_id(POLICY, ev["pathway"] or ""):
                    assert refs <= evidence[criterion] | {f"Patient/{request['context']['patientId']}"}, (
                        f"{name} {answered['linkId']}: prefill evidence {refs} not in the evaluation's {evidence[criterion]}"
                    )
        prefilled += sum(1 for i in items(draft) if i.get("answer"))
    if ev.get("pathway") and any(c["status"] != "unknown" and c.get("evidence") for c in ev.get("criteria", [])):
        assert prefilled, f"{name}: the chart decides criteria, yet nothing is prefilled"


def _log_errors_offered(outcome: dict[str, Any]) -> bool:
    """The package's instructions: an informational issue naming $log-questionnaire-errors at this service."""
    return any(
        issue["severity"] == "information"
        and "http://localhost/fhir/Questionnaire/$log-questionnaire-errors" in issue["diagnostics"]
        for issue in outcome["issue"]
    )


def test_unknown_criteria_are_left_open_in_the_prefill(client: Any) -> None:
    _, _, output = _package(client, "I.A-specialty-undocumented")
    assert output is not None
    draft = resources(output["parameter"][0]["resource"], "QuestionnaireResponse")[0]
    answered = {i["linkId"] for i in items(draft) if i.get("answer")}
    assert "I.A.3" not in answered  # the specialty the chart does not show
    assert {"I.A.2/1", "I.A.2/2", "I.A.4", "I.A.5/hormone-receptor", "I.A.5/her2", "I.A.6"} <= answered


def test_the_package_output_has_the_shape_of_the_official_example(client: Any) -> None:
    official = json.loads(
        (
            shared_path("external", "dtr-pas") / "dtr201-Parameters-QuestionnairePackageOutputParamsExample.json"
        ).read_text()
    )
    _, _, ours = _package(client, "I.A-specialty-undocumented")
    assert ours is not None
    for output in (official, ours):
        assert output["resourceType"] == "Parameters"
        bundle = output["parameter"][0]["resource"]
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        assert bundle["entry"][0]["resource"]["resourceType"] == "Questionnaire"
    # The official 2.0.1 example names its output "PackageBundle": a client that declares 2.0.1 gets that name.
    request = sample("I.A-specialty-undocumented")
    body = sign(client, request)
    parameters = package_parameters(request, context=coverage_information(body)["coverage-assertion-id"][0])
    parameters["meta"] = {
        "profile": ["http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-qpackage-input-parameters|2.0.1"]
    }
    legacy = client.post(PACKAGE, json=parameters).get_json()
    assert legacy["parameter"][0]["name"] == official["parameter"][0]["name"] == "PackageBundle"
    # Its outcome (here: a questionnaire not published here) is "operationOutcome", as 2.0.1 and 2.1.0 name it.
    parameters["parameter"].append({"name": "questionnaire", "valueCanonical": "http://x.example/Questionnaire/q"})
    named = [p["name"] for p in client.post(PACKAGE, json=parameters).get_json()["parameter"]]
    assert named == ["PackageBundle", "operationOutcome"]


def test_the_answered_response_has_the_shape_of_the_official_example(client: Any) -> None:
    official = json.loads(
        (
            shared_path("external", "dtr-pas") / "dtr201-QuestionnaireResponse-home-o2-questionnaireresponse.json"
        ).read_text()
    )
    answers = [a for i in items(official) for a in i.get("answer", [])]
    origins = [e for a in answers for e in a.get("extension", []) if e["url"] == ORIGIN]
    assert origins and all(any(p["url"] == "source" for p in e["extension"]) for e in origins)
    _, _, ours = _package(client, "I.A-specialty-undocumented")
    assert ours is not None
    draft = resources(ours["parameter"][0]["resource"], "QuestionnaireResponse")[0]
    ours_origins = [e for i in items(draft) for a in i.get("answer", []) for e in a["extension"] if e["url"] == ORIGIN]
    assert ours_origins and all(e["extension"][0]["url"] == "source" for e in ours_origins)


# ----------------------------------------------------------------------------- the operations' errors


def _signed_context(client: Any, name: str = "I.A-specialty-undocumented") -> tuple[dict[str, Any], str]:
    request = sample(name)
    return request, coverage_information(sign(client, request))["coverage-assertion-id"][0]


def _outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def test_unknown_context_is_404(client: Any) -> None:
    request, _ = _signed_context(client)
    _outcome(client.post(PACKAGE, json=package_parameters(request, context="no-such-assertion")), 404)


def test_a_coverage_other_than_the_assertions_is_422(client: Any) -> None:
    request, context = _signed_context(client)
    parameters = package_parameters(request, context=context)
    parameters["parameter"][0]["resource"] = {**parameters["parameter"][0]["resource"], "id": "another-coverage"}
    _outcome(client.post(PACKAGE, json=parameters), 422)


def test_an_order_other_than_the_assertions_is_422(client: Any) -> None:
    request, context = _signed_context(client)
    parameters = package_parameters(request, context=context)
    parameters["parameter"][1]["resource"] = {**parameters["parameter"][1]["resource"], "id": "another-order"}
    _outcome(client.post(PACKAGE, json=parameters), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle"},
        {"resourceType": "Parameters", "parameter": "no"},
        {"resourceType": "Parameters", "parameter": [{"name": "context", "valueString": "x"}]},  # no coverage
        {"resourceType": "Parameters", "parameter": [{"name": "coverage", "resource": {"resourceType": "Coverage"}}]},
        [],
    ],
)
def test_malformed_input_is_400(client: Any, body: Any) -> None:
    _outcome(client.post(PACKAGE, json=body), 400)


def test_no_context_finds_the_latest_assertion_for_the_order(client: Any) -> None:
    request, _ = _signed_context(client)
    response = client.post(PACKAGE, json=package_parameters(request))
    assert response.status_code == 200
    assert response.get_json()["parameter"][0]["resource"]["entry"][0]["resource"]["id"] == "cp-phar-63-i-a"


def test_an_explicit_questionnaire_and_an_unknown_one(client: Any) -> None:
    request, context = _signed_context(client)
    known = "http://localhost/fhir/Questionnaire/cp-phar-63-i-b|02.25"
    parameters = package_parameters(request, context=context, questionnaire=known)
    parameters["parameter"].append(
        {"name": "questionnaire", "valueCanonical": "https://elsewhere.example/Questionnaire/x"}
    )
    body = client.post(PACKAGE, json=parameters).get_json()
    names = [p["name"] for p in body["parameter"]]
    assert names == ["packagebundle", "outcome"]  # oper-9: a warning for the one not found
    assert body["parameter"][1]["resource"]["issue"][0]["severity"] == "warning"
    assert _log_errors_offered(body["parameter"][1]["resource"])


def _nothing_applies(response: Any, outcome_name: str = "outcome") -> dict[str, Any]:
    """A 200 Parameters (DTR 2.1+: no package Bundle) whose one outcome warns that no questionnaire applies."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["resourceType"] == "Parameters" and [p["name"] for p in body["parameter"]] == [outcome_name]
    issue = body["parameter"][0]["resource"]["issue"][0]
    assert issue["severity"] == "warning" and "no questionnaire applies" in issue["diagnostics"]
    return body


def test_the_official_dtr_input_example_gets_a_usable_answer(client: Any) -> None:
    official = json.loads(
        (
            shared_path("external", "dtr-pas") / "dtr201-Parameters-QuestionnairePackageInputParamsExample.json"
        ).read_text()
    )
    # A home-oxygen ServiceRequest this payer never checked, with no context and no version in its profile: the
    # newest output profile (2.2.0), no package and a warning in "outcome" that says why (oper-9), not an error.
    body = _nothing_applies(client.post(PACKAGE, json=official))
    assert body["meta"]["profile"] == [package.OUTPUT_PROFILE]
    declared = {**official, "meta": {"profile": [official["meta"]["profile"][0] + "|2.1.0"]}}
    _nothing_applies(client.post(PACKAGE, json=declared), "operationOutcome")  # DTR 2.1.0's name for it
    # DTR 2.0.1's output needs at least one PackageBundle: a 2.0.1 client gets the error OperationOutcome instead.
    declared = {**official, "meta": {"profile": [official["meta"]["profile"][0] + "|2.0.1"]}}
    _outcome(client.post(PACKAGE, json=declared), 404)
    next_question = json.loads(
        (
            shared_path("external", "dtr-pas") / "inferno-dtr-next_question_initial_input_params_conformant.json"
        ).read_text()
    )
    _outcome(client.post(PACKAGE, json=next_question), 400)


def test_system_level_operation_url_works_too(client: Any) -> None:
    request, context = _signed_context(client)
    assert (
        client.post("/fhir/$questionnaire-package", json=package_parameters(request, context=context)).status_code
        == 200
    )


def test_metadata_names_the_operations(client: Any) -> None:
    body = client.get("/fhir/metadata").get_json()
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    operations = {op["name"] for r in body["rest"][0]["resource"] for op in r.get("operation", [])}
    assert {"questionnaire-package", "log-questionnaire-errors", "expand"} <= operations


def test_expand_by_url_and_version(client: Any) -> None:
    url = "http://localhost/fhir/ValueSet/cp-phar-63-i-a-6"
    body = client.get(f"/fhir/ValueSet/$expand?url={url}|{POLICY.version}").get_json()
    assert body["resourceType"] == "ValueSet" and body["expansion"]["contains"]
    assert client.get(f"/fhir/ValueSet/$expand?url={url}&valueSetVersion=01.01").status_code == 404
    posted = client.post(
        "/fhir/ValueSet/$expand",
        json={"resourceType": "Parameters", "parameter": [{"name": "url", "valueUri": url}]},
    ).get_json()
    assert posted["id"] == "cp-phar-63-i-a-6"
    _outcome(client.get("/fhir/ValueSet/$expand"), 400)
    _outcome(client.get("/fhir/ValueSet/$expand?url=http://x/ValueSet/nope"), 404)


def test_questionnaire_errors_are_stored(client: Any, app: Any) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire", "valueCanonical": "http://localhost/fhir/Questionnaire/cp-phar-63-i-a|02.25"},
            {"name": "operationOutcome", "resource": outcome},
        ],
    }
    response = client.post("/fhir/Questionnaire/$log-questionnaire-errors", json=parameters)
    assert response.status_code == 200
    stored = app.extensions["priorauth_cds"].store.questionnaire_errors()
    assert stored[-1]["questionnaire"].endswith("cp-phar-63-i-a|02.25") and stored[-1]["outcome"] == outcome
    _outcome(
        client.post(
            "/fhir/Questionnaire/$log-questionnaire-errors", json={"resourceType": "Parameters", "parameter": []}
        ),
        400,
    )


def test_read_questionnaire_and_unknown_ones(client: Any) -> None:
    assert client.get("/fhir/Questionnaire/cp-phar-63-i-a").get_json()["id"] == "cp-phar-63-i-a"
    _outcome(client.get("/fhir/Questionnaire/nope"), 404)


# ----------------------------------------------------------------------------- bounded calls and storage (issue 15)

ERRORS = "/fhir/Questionnaire/$log-questionnaire-errors"
EHR_A, EHR_B = "https://ehr-a.example", "https://ehr-b.example"


def _error_report(*outcomes: dict[str, Any]) -> dict[str, Any]:
    canonical = {"name": "questionnaire", "valueCanonical": "http://localhost/fhir/Questionnaire/cp-phar-63-i-a"}
    return {
        "resourceType": "Parameters",
        "parameter": [canonical, *({"name": "operationOutcome", "resource": o} for o in outcomes)],
    }


def _rows(database_url: str, table: str) -> list[dict[str, Any]]:
    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
    finally:
        engine.dispose()


class _Issuers:
    """An app trusting two EHRs (JWT checks on) over one database; ``post`` signs for the path it calls."""

    def __init__(self, database_url: str, **settings: Any) -> None:
        self.keys = {EHR_A: ec_key(), EHR_B: ec_key()}
        issuers = {issuer: jwks(key) for issuer, key in self.keys.items()}
        self.app = create_app(
            Config(
                database_url=database_url,
                trusted_issuers=issuers,
                public_base_url="http://localhost",
                rate_limit_per_minute=0,
                **settings,
            )
        )
        self.client = self.app.test_client()

    def post(self, issuer: str, path: str, body: Any) -> Any:
        token = self.keys[issuer].sign(cds_claims(issuer, f"http://localhost{path}", time.time()))
        return self.client.post(path, json=body, headers={"Authorization": bearer(token)})

    def close(self) -> None:
        self.app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture
def issuers(config: Config) -> Iterator[_Issuers]:
    both = _Issuers(config.database_url)
    yield both
    both.close()


@pytest.mark.parametrize("name", ["order", "questionnaire"])
def test_more_than_ten_orders_or_questionnaires_is_a_400_naming_the_limit(
    client: Any, config: Config, name: str
) -> None:
    request, context = _signed_context(client)
    parameters = package_parameters(request, context=context)
    extra = ({"name": "order", "resource": {**drug_order(request), "id": f"o-{n}"}} for n in range(10))
    if name == "questionnaire":
        extra = (
            {"name": "questionnaire", "valueCanonical": f"http://localhost/fhir/Questionnaire/q{n}"} for n in range(11)
        )
    parameters["parameter"].extend(extra)
    issue = _outcome(client.post(PACKAGE, json=parameters), 400)["issue"][0]
    assert issue["diagnostics"] == f"at most 10 '{name}' parameters per call (got 11)"
    assert issue["expression"] == [name]
    assert _rows(config.database_url, "dtr_package_requests") == []  # refused before any lookup or write


class _CountingStore:
    """A PrefillStore that counts lookups and knows one prefill, for the last order only."""

    def __init__(self, prefill: dict[str, Any]) -> None:
        self.prefill = prefill
        self.lookups: list[tuple[tuple[str, ...], str | None]] = []

    def dtr_prefill(self, assertion_id: str) -> dict[str, Any] | None:
        raise AssertionError("no context was given")

    def latest_dtr_prefill(
        self, order_refs: Any, patient_ref: str | None, *, issuer: str | None = None, own: bool = False
    ) -> dict[str, Any] | None:
        self.lookups.append((tuple(order_refs), issuer))
        return self.prefill if self.prefill["order_ref"] in order_refs else None


def test_the_orders_of_a_package_call_are_looked_up_in_one_query() -> None:
    request = sample("I.A-specialty-undocumented")
    orders = [{**drug_order(request), "id": f"o-{n}"} for n in range(10)]
    parameters = package_parameters(request, order=False)
    parameters["parameter"].extend({"name": "order", "resource": o} for o in orders)
    beneficiary = coverage_of(request)["beneficiary"]["reference"]
    prefill = {
        "assertion_id": "a-1",
        "order_ref": "MedicationRequest/o-9",
        "patient_ref": beneficiary,
        "coverage_ref": None,
        "questionnaires": ["cp-phar-63-i-a"],
        "answers": {},
        "issuer": EHR_A,
    }
    store = _CountingStore(prefill)
    result = package.questionnaire_package(
        package.parse_package_request(parameters),
        default_registry(),
        store,
        base="http://localhost",
        publisher="Payer",
        issuer=EHR_A,
        issuers_configured=True,
    )
    assert store.lookups == [(tuple(f"MedicationRequest/o-{n}" for n in range(10)), EHR_A)]
    assert (result.assertion_id, result.order_ref) == ("a-1", "MedicationRequest/o-9")


def test_a_failed_package_call_stores_a_short_context_and_the_issuer(issuers: _Issuers, config: Config) -> None:
    request = sample("I.A-specialty-undocumented")
    huge = "x" * 4_800_000
    _outcome(issuers.post(EHR_A, PACKAGE, package_parameters(request, context=huge)), 404)
    (row,) = _rows(config.database_url, "dtr_package_requests")
    assert row["assertion_id"] == huge[:64] and row["issuer"] == EHR_A and row["outcome"] == "UnknownContext"
    assert sum(len(str(value)) for value in row.values()) < 1000


def test_error_reports_are_cut_short_counted_and_carry_the_issuer(issuers: _Issuers, config: Config) -> None:
    big = {
        "resourceType": "OperationOutcome",
        "text": {"div": "<div>" + "y" * 100_000 + "</div>"},
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": "z" * 2_000,
                "expression": [f"item[{n}]" for n in range(50)],
                "extension": [{"url": "u" * 1_000}],
            }
            for _ in range(1_000)
        ],
    }
    response = issuers.post(EHR_A, ERRORS, _error_report(big))
    assert response.status_code == 200, response.get_data(as_text=True)
    (row,) = _rows(config.database_url, "questionnaire_errors")
    stored = json.loads(row["outcome"]) if isinstance(row["outcome"], str) else row["outcome"]
    assert row["issuer"] == EHR_A and len(json.dumps(stored)) <= 4096
    kept = stored["issue"][:-1]
    assert kept and all(len(i["diagnostics"]) == 500 and len(i["expression"]) == 3 for i in kept)
    assert stored["issue"][-1]["diagnostics"] == f"{1_000 - len(kept)} more issue(s) not stored"
    small = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
    issue = _outcome(issuers.post(EHR_A, ERRORS, _error_report(*[small] * 11)), 400)["issue"][0]
    assert issue["diagnostics"] == "at most 10 'operationOutcome' parameters per call (got 11)"
    assert len(_rows(config.database_url, "questionnaire_errors")) == 1


def test_dtr_rows_are_limited_per_issuer_per_day(config: Config) -> None:
    both = _Issuers(config.database_url, dtr_rows_per_issuer_per_day=3)
    try:
        small = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        request = sample("I.A-specialty-undocumented")
        assert both.post(EHR_A, ERRORS, _error_report(small, small)).status_code == 200
        _outcome(both.post(EHR_A, PACKAGE, package_parameters(request, context="nope")), 404)  # a stored failure
        limited = both.post(EHR_A, ERRORS, _error_report(small))
        assert _outcome(limited, 429)["issue"][0]["code"] == "throttled"
        assert 1 <= int(limited.headers["Retry-After"]) <= 86_400
        _outcome(both.post(EHR_A, PACKAGE, package_parameters(request, context="nope")), 429)
        assert both.post(EHR_B, ERRORS, _error_report(small)).status_code == 200  # another EHR's own quota
    finally:
        both.close()
    assert Config.from_env({"CDS_DTR_ROWS_PER_ISSUER_PER_DAY": "0"}).dtr_rows_per_issuer_per_day == 0
    assert Config.from_env({}).dtr_rows_per_issuer_per_day == 2000


def test_a_prefill_stored_without_an_issuer_is_nobodys_once_issuers_are_configured(config: Config) -> None:
    # Signed while JWT checks were off: the prefill has no issuer.
    open_app = create_app(config)
    try:
        request, context = _signed_context(open_app.test_client())
    finally:
        open_app.extensions["priorauth_cds"].store.dispose()
    both = _Issuers(config.database_url)
    try:
        for issuer in (EHR_A, EHR_B):
            _outcome(both.post(issuer, PACKAGE, package_parameters(request, context=context)), 404)
            _nothing_applies(both.post(issuer, PACKAGE, package_parameters(request)))  # by order: none either
        # Signed by EHR A: A reads it, by context and by order; B does not.
        signed = both.post(EHR_A, SIGN, {**request, "hookInstance": str(uuid.uuid4())})
        own = coverage_information(signed.get_json())["coverage-assertion-id"][0]
        assert both.post(EHR_A, PACKAGE, package_parameters(request, context=own)).status_code == 200
        assert both.post(EHR_A, PACKAGE, package_parameters(request)).get_json()["parameter"]
        _outcome(both.post(EHR_B, PACKAGE, package_parameters(request, context=own)), 404)
        _nothing_applies(both.post(EHR_B, PACKAGE, package_parameters(request)))  # as for an unknown order
    finally:
        both.close()


def test_more_draft_orders_than_the_cap_is_a_400_naming_it(client: Any) -> None:
    request = sample("I.A-specialty-undocumented")
    entries = request["context"]["draftOrders"]["entry"]
    request["context"]["draftOrders"]["entry"] = (entries * 51)[:51]
    issue = _outcome(client.post(SIGN, json=request), 400)["issue"][0]
    assert "at most 50 items" in issue["diagnostics"] and issue["expression"] == ["context.draftOrders.entry"]
    request["context"]["draftOrders"]["entry"] = (entries * 50)[:50]
    assert client.post(SIGN, json=request).status_code == 200
