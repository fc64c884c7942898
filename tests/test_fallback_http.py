"""Fallback end to end through the HTTP layer: no prefetch, a real FHIR server with a bearer token, and 412s."""

from __future__ import annotations

import secrets
import socket
from typing import Any, Iterator

import pytest

from tests.fhir_server import RunningFhirServer, start_fhir_server
from tests.scenarios import evaluations, load_scenarios, request_for, scenario, scenario_params

SIGN = "/cds-services/everolimus-order-sign"
TOKEN = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def fhir() -> Iterator[RunningFhirServer]:
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for sc in load_scenarios():
        for resource in sc["resources"]:
            resources[(resource["resourceType"], resource["id"])] = resource
    with start_fhir_server(resources.values(), TOKEN) as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("sc", scenario_params(lambda s: bool(s["expect"].get("evaluations"))))
def test_fallback_with_bearer_token_matches_prefetch(client: Any, fhir: RunningFhirServer, sc: dict[str, Any]) -> None:
    with_prefetch = client.post(SIGN, json=request_for(sc)).get_json()
    fallback = client.post(SIGN, json=request_for(sc, prefetch=False, fhir_server=fhir.base_url, token=TOKEN))
    assert fallback.status_code == 200, fallback.get_data(as_text=True)[:300]
    got = evaluations(fallback.get_json())
    want = evaluations(with_prefetch)
    assert got.keys() == want.keys()
    for order, ev in want.items():
        assert got[order]["pathway"] == ev["pathway"] and got[order]["decision"] == ev["decision"]
        assert {c["id"]: c["status"] for c in got[order]["criteria"]} == {c["id"]: c["status"] for c in ev["criteria"]}


def test_wrong_token_is_412(client: Any, fhir: RunningFhirServer) -> None:
    request = request_for(scenario("B-pnet-met"), prefetch=False, fhir_server=fhir.base_url, token="wrong")
    response = client.post(SIGN, json=request)
    assert response.status_code == 412
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and "wrong" not in response.get_data(as_text=True)


def test_unreachable_fhir_server_is_412(client: Any) -> None:
    request = request_for(scenario("B-pnet-met"), prefetch=False,
                          fhir_server=f"http://127.0.0.1:{_closed_port()}/fhir", token=TOKEN)
    response = client.post(SIGN, json=request)
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["code"] == "incomplete"


def test_no_prefetch_and_no_fhir_server_is_412(client: Any) -> None:
    response = client.post(SIGN, json=request_for(scenario("B-pnet-met"), prefetch=False))
    assert response.status_code == 412


def test_no_everolimus_order_never_queries(client: Any) -> None:
    request = request_for(scenario("none-no-everolimus-order"), prefetch=False,
                          fhir_server=f"http://127.0.0.1:{_closed_port()}/fhir", token=TOKEN)
    response = client.post(SIGN, json=request)
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_partial_failure_degrades_without_412(client: Any) -> None:
    """Patient prefetched, everything else unobtainable: an evaluation with undocumented criteria, not a 412."""
    sc = scenario("A-met-generic-with-exemestane")
    request = request_for(sc, fhir_server=f"http://127.0.0.1:{_closed_port()}/fhir", token=TOKEN)
    request["prefetch"] = {"patient": request["prefetch"]["patient"]}
    response = client.post(SIGN, json=request)
    assert response.status_code == 200
    body = response.get_json()
    ev = evaluations(body)["MedicationRequest/ava-order-7"]
    assert ev["decision"] in ("incomplete", "refer")
    assert "not-met" not in {c["status"] for c in ev["criteria"] if c["id"] in ("I.A.2", "I.A.5", "I.A.6")}
    card = next(c for c in body["cards"] if "extension" in c)
    assert "did not return" in card["detail"]
