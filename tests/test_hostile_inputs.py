"""Inputs the model library or the HTTP framing fails on in ways other than a validation error (issue 15, item 10).

Any exception validating one resource makes that resource invalid (dropped, and named on the card when it is the
order), never a 500: an unknown or empty ``resourceType`` in ``contained`` (the library raises ``KeyError``), a
primitive's extension given as a string (``"_status": "null"``, ``AttributeError``). A chunked body whose framing
cannot be decoded is the client's mistake: 400, never 500. ``priorauth-cds evaluate`` prints no traceback.
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from cds_service.cli import main
from tests.conftest import LiveServer
from tests.dtr_helpers import PACKAGE, coverage_of, package_parameters, sample, with_responses
from tests.scenarios import SAMPLE_DIR

SIGN = "/cds-services/everolimus-order-sign"
BASE = json.loads((SAMPLE_DIR / "I.A-brand-without-exemestane.json").read_text())
BAD_CONTAINED = [[{"resourceType": "Nope", "id": "x"}], [{"resourceType": "", "id": "x"}]]


def _order(body: dict[str, Any]) -> dict[str, Any]:
    return body["context"]["draftOrders"]["entry"][0]["resource"]  # type: ignore[no-any-return]


def _prefetched(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body["prefetch"][key]["entry"][0]["resource"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("contained", BAD_CONTAINED, ids=["unknown", "empty"])
def test_odd_contained_resource_type_makes_the_order_unreadable_not_a_500(client: Any, contained: Any) -> None:
    body = copy.deepcopy(BASE)
    _order(body)["contained"] = contained
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    summaries = [card["summary"] for card in response.get_json()["cards"]]
    assert any("could not be read" in s for s in summaries), summaries


@pytest.mark.parametrize("key", ["conditions", "coverage", "medicationStatements"])
def test_odd_contained_in_a_chart_resource_drops_that_resource_only(client: Any, key: str) -> None:
    body = copy.deepcopy(BASE)
    _prefetched(body, key)["contained"] = [{"resourceType": "Nope", "id": "x"}]
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["cards"]


@pytest.mark.parametrize("where", ["order", "conditions", "coverage", "patient"])
def test_primitive_extension_given_as_a_string_is_invalid_not_a_500(client: Any, where: str) -> None:
    body = copy.deepcopy(BASE)
    if where == "order":
        resource = _order(body)
    elif where == "patient":
        resource = body["prefetch"]["patient"]
    else:
        resource = _prefetched(body, where)
    resource["_status"] = "null"
    resource["_id"] = "null"
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]


def test_questionnaire_response_with_odd_contained_is_ignored_not_a_500(client: Any) -> None:
    request = sample("I.A-brand-without-exemestane")
    response_resource = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-odd",
        "status": "completed",
        "questionnaire": "http://localhost/fhir/Questionnaire/cp-phar-63-i-a|01.26",
        "subject": {"reference": f"Patient/{request['context']['patientId']}"},
        "contained": [{"resourceType": "Nope"}],
        "_status": "null",
    }
    answer = client.post(SIGN, json=with_responses(request, response_resource))
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]


def test_package_call_with_odd_coverage_is_400_not_500(client: Any) -> None:
    request = sample("I.A-brand-without-exemestane")
    for oddity in ({"contained": [{"resourceType": "Nope"}]}, {"_status": "null"}):
        parameters = package_parameters(request)
        parameters["parameter"][0]["resource"] = {**coverage_of(request), **oddity}
        response = client.post(PACKAGE, json=parameters)
        assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_evaluate_prints_no_traceback_for_an_odd_contained_resource(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    body = copy.deepcopy(BASE)
    _order(body)["contained"] = [{"resourceType": "Nope", "id": "x"}]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(body))
    assert main(["evaluate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "could not be read" in captured.out


# ----------------------------------------------------------------------------- chunked framing

BAD_FRAMINGS = [
    b"zz\r\n{}\r\n0\r\n\r\n",  # not a hex size
    b"2\r\n{}XX0\r\n\r\n",  # chunk without its CRLF terminator
    b"5\r\n{}\r\n0\r\n\r\n",  # size longer than the data: the terminator is missing later
    b"-1\r\n{}\r\n0\r\n\r\n",  # negative size
    b"2;\x00\r\n{}\r\n0\r\n\r\n",  # control character in a chunk extension
]


def _status_of_raw_post(port: int, framing: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + framing
        )
        answer = b""
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
        return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("framing", BAD_FRAMINGS, ids=["size", "terminator", "short", "negative", "extension"])
def test_malformed_chunk_framing_is_400(live_server: LiveServer, framing: bytes) -> None:
    status_line = _status_of_raw_post(live_server.port, framing)
    assert status_line.split(b" ")[1:2] == [b"400"], status_line
