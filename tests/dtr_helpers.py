"""Helpers for the DTR tests: sign an order, fetch its questionnaire package, answer it like a clinician."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from tests.scenarios import SAMPLE_DIR

SIGN = "/cds-services/everolimus-order-sign"
PACKAGE = "/fhir/Questionnaire/$questionnaire-package"
ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
POSITIVE = {"valueCoding": {"system": SNOMED, "code": "10828004", "display": "Positive"}}
NEGATIVE = {"valueCoding": {"system": SNOMED, "code": "260385009", "display": "Negative"}}


def sample(name: str) -> dict[str, Any]:
    request: dict[str, Any] = json.loads((SAMPLE_DIR / f"{name}.json").read_text())
    request["hookInstance"] = str(uuid.uuid4())
    return request


def drug_order(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request's first draft of the pack's drug."""
    from cds_service.registry import default_registry
    from fhir_mappings.facts import find_drug_orders

    drafts = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    (first, *_) = find_drug_orders(drafts, default_registry().default.tables)
    return dict(next(d for d in drafts if d.get("id") == first))


def coverage_of(request: Mapping[str, Any]) -> dict[str, Any]:
    return dict(request["prefetch"]["coverage"]["entry"][0]["resource"])


def without(request: dict[str, Any], *resource_types: str, ids: Iterable[str] = ()) -> dict[str, Any]:
    """The request with the prefetched resources of these types (or ids) taken out."""
    out = copy.deepcopy(request)
    drop = set(ids)
    for value in out["prefetch"].values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            value["entry"] = [
                e
                for e in value.get("entry", [])
                if e["resource"]["resourceType"] not in resource_types and e["resource"]["id"] not in drop
            ]
    return out


def sign(client: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    response = client.post(SIGN, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def evaluation(body: Mapping[str, Any]) -> dict[str, Any]:
    return next(c["extension"]["priorauth-cds.evaluation"] for c in body["cards"] if c.get("extension"))


def statuses(body: Mapping[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in evaluation(body)["criteria"]}


def coverage_information(body: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The first systemAction's coverage-information, sub-extension url -> values."""
    order = body["systemActions"][0]["resource"]
    ext = next(e for e in order["extension"] if e["url"].endswith("ext-coverage-information"))
    out: dict[str, list[Any]] = {}
    for part in ext["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        out.setdefault(part["url"], []).append(value)
    return out


def package_parameters(
    request: Mapping[str, Any], *, context: str | None = None, questionnaire: str | None = None, order: bool = True
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"name": "coverage", "resource": coverage_of(request)}]
    if order:
        parameters.append({"name": "order", "resource": drug_order(request)})
    if questionnaire:
        parameters.append({"name": "questionnaire", "valueCanonical": questionnaire})
    if context:
        parameters.append({"name": "context", "valueString": context})
    return {"resourceType": "Parameters", "parameter": parameters}


def package_for(client: Any, request: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """Sign -> coverage-assertion-id -> $questionnaire-package; the first package Bundle's resources by type."""
    context = coverage_information(body)["coverage-assertion-id"][0]
    response = client.post(PACKAGE, json=package_parameters(request, context=context))
    assert response.status_code == 200, response.get_data(as_text=True)
    bundle = response.get_json()["parameter"][0]["resource"]
    return bundle  # type: ignore[no-any-return]


def answered(
    draft: Mapping[str, Any],
    answers: Mapping[str, list[dict[str, Any]]],
    *,
    origin: str = "manual",
    status: str = "completed",
    response_id: str = "qr-clinician",
) -> dict[str, Any]:
    """The package's draft QuestionnaireResponse completed by a clinician: ``answers`` (linkId -> values) are added
    with ``origin`` (manual answers name their author, as DTR dtrx-1 requires)."""
    response = copy.deepcopy(dict(draft))
    response["id"] = response_id
    response["status"] = status
    origin_ext: dict[str, Any] = {"url": ORIGIN, "extension": [{"url": "source", "valueCode": origin}]}
    if origin in ("manual", "override"):
        origin_ext["extension"].append(
            {
                "url": "author",
                "extension": [{"url": "practitioner", "valueReference": {"reference": "Practitioner/dr"}}],
            }
        )
    items = response.setdefault("item", [])
    for link_id, values in answers.items():
        items.append({"linkId": link_id, "answer": [{**value, "extension": [origin_ext]} for value in values]})
    return response


def with_responses(request: Mapping[str, Any], *responses: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(request))
    out["hookInstance"] = str(uuid.uuid4())
    out["prefetch"]["questionnaireResponses"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": dict(r)} for r in responses],
    }
    return out


def resources(bundle: Mapping[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def items(node: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    for item in node.get("item") or []:
        yield item
        yield from items(item)
