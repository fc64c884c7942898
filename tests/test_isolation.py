"""Isolation under concurrency: 200 simultaneous calls for 200 different patients, each answer only about its own.

Every request is an acceptance scenario whose ids (patient, orders, chart resources, user) and names carry
a tag unique to that request (every fifth one goes to the order-select service). 32 threads post them to
the real gunicorn server at once; each answer must name no other request's tag anywhere, every
reference, order and evidence item in its cards, suggestions and systemActions must be the request's
own, the evaluation must be the scenario's expected one, and the audit row behind each coverage
assertion must be about the request's own patient and order.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from cds_service.store import Store
from tests.conftest import LiveServer
from tests.scenarios import evaluations, load_scenarios, request_for

pytestmark = pytest.mark.server

REQUESTS = 200
THREADS = 32
BOUND_SECONDS = 60.0
#: A tag is "iso" + request number + random hex; anything matching it in a body belongs to some request.
TAG_PATTERN = re.compile(r"iso\d{3}[0-9a-f]{8}")
NAMED_TYPES = ("Patient", "Practitioner")
#: Policy criterion ids ("I.A.9.a.i", "II.A.1") are the only other ids an answer holds besides uuids.
CRITERION_ID = re.compile(r"[IV]+\.[A-Z]\S*")


@dataclass(frozen=True)
class Tagged:
    """One request and what its answer may mention."""

    tag: str
    service: str
    body: dict[str, Any]
    patient_ref: str
    #: order ref -> (pathway, decision) the scenario expects.
    expected: dict[str, tuple[str, str | None]]


def _retag(value: Any, ids: dict[str, str], tag: str) -> Any:
    """A copy with every known id (as ``id`` or in a ``reference``) and every person's name tagged."""
    if isinstance(value, list):
        return [_retag(v, ids, tag) for v in value]
    if not isinstance(value, dict):
        return value
    copy = {k: _retag(v, ids, tag) for k, v in value.items()}
    if isinstance(copy.get("id"), str) and copy["id"] in ids:
        copy["id"] = ids[copy["id"]]
    if isinstance(copy.get("reference"), str):
        copy["reference"] = _retag_reference(copy["reference"], ids)
    if copy.get("resourceType") in NAMED_TYPES:
        copy["name"] = [_tag_name(n, tag) for n in copy.get("name") or []]
    return copy


def _retag_reference(reference: str, ids: dict[str, str]) -> str:
    head, _, last = reference.rpartition("/")
    return f"{head}/{ids[last]}" if head and last in ids else reference


def _tag_name(name: dict[str, Any], tag: str) -> dict[str, Any]:
    tagged = dict(name)
    if "family" in name:
        tagged["family"] = f"{name['family']}-{tag}"
    if "given" in name:
        tagged["given"] = [f"{g}-{tag}" for g in name["given"]]
    return tagged


def tagged_scenario(sc: dict[str, Any], tag: str) -> dict[str, Any]:
    """The scenario with every id it defines (and its patient) renamed ``<id>-<tag>``."""
    defined = {r["id"] for r in [*sc["resources"], *sc["draftOrders"]]} | {sc["patientId"]}
    ids = {old: f"{old}-{tag}" for old in defined}
    tagged = dict(sc)
    tagged["resources"] = _retag(sc["resources"], ids, tag)
    tagged["draftOrders"] = _retag(sc["draftOrders"], ids, tag)
    tagged["patientId"] = ids[sc["patientId"]]
    tagged["userId"] = _retag_reference(sc["userId"], ids)
    tagged["expect"] = {"evaluations": [dict(e, order=_retag_reference(e["order"], ids))
                                        for e in sc["expect"]["evaluations"]]}
    return tagged


def build_requests() -> list[Tagged]:
    """200 tagged requests, round-robin over the scenarios that expect an evaluation; every fifth is order-select."""
    chosen = [sc for sc in load_scenarios() if sc["expect"].get("evaluations")]
    built = []
    for n in range(REQUESTS):
        tag = f"iso{n:03d}{secrets.token_hex(4)}"
        sc = tagged_scenario(chosen[n % len(chosen)], tag)
        if n % 5 == 4:
            sc["hook"] = "order-select"
        expected = {e["order"]: (e["pathway"], e.get("decision")) for e in sc["expect"]["evaluations"]}
        service = "everolimus-order-select" if sc["hook"] == "order-select" else "everolimus-order-sign"
        built.append(Tagged(tag, service, request_for(sc), f"Patient/{sc['patientId']}", expected))
    return built


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(key, leaf) for every leaf; list items keep their list's key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def foreign_mentions(answer: dict[str, Any], request: Tagged) -> list[str]:
    """Everything in the answer that is not about the request's own patient and orders."""
    problems = [f"tag {t}" for t in set(TAG_PATTERN.findall(str(answer))) if t != request.tag]
    for key, leaf in _walk(answer):
        if not isinstance(leaf, str):
            continue
        if key in ("reference", "evidence", "order") and request.tag not in leaf:
            problems.append(f"{key} {leaf}")
        elif key == "id" and request.tag not in leaf and not _is_uuid(leaf) and not CRITERION_ID.fullmatch(leaf):
            problems.append(f"id {leaf}")
    return problems


def assertion_ids(answer: dict[str, Any]) -> list[str]:
    return [
        sub["valueString"]
        for action in answer.get("systemActions", [])
        for ext in action["resource"].get("extension", [])
        for sub in ext.get("extension", [])
        if sub.get("url") == "coverage-assertion-id"
    ]


def post(live: LiveServer, request: Tagged) -> tuple[int, dict[str, Any]]:
    response = requests.post(f"{live.url}/cds-services/{request.service}", json=request.body, timeout=30)
    return response.status_code, response.json()


def test_tagging_leaves_no_untagged_id() -> None:
    """The harness: a tagged request holds no id or reference that another request could share."""
    for request in build_requests()[:20]:
        for key, leaf in _walk(request.body):
            if key in ("id", "reference", "patientId", "userId", "selections") and isinstance(leaf, str):
                assert request.tag in leaf, (key, leaf)
        assert TAG_PATTERN.findall(str(request.body)) and set(TAG_PATTERN.findall(str(request.body))) == {request.tag}


def test_concurrent_calls_for_different_patients_stay_apart(live_server: LiveServer) -> None:
    requests_ = build_requests()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = list(pool.map(lambda r: post(live_server, r), requests_))
    elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS

    assert foreign_mentions(answers[0][1], requests_[1]), "the checker must notice another request's answer"
    store = Store(live_server.database_url)
    try:
        for request, (status, answer) in zip(requests_, answers, strict=True):
            assert status == 200, (request.tag, answer)
            assert foreign_mentions(answer, request) == [], request.tag
            got = {order: (ev["pathway"], ev["decision"]) for order, ev in evaluations(answer).items()}
            assert got.keys() == request.expected.keys(), request.tag
            for order, (pathway, decision) in request.expected.items():
                assert got[order][0] == pathway and (decision is None or got[order][1] == decision), (order, got)
            ids = assertion_ids(answer)
            assert len(ids) == len(request.expected)
            for assertion_id in ids:
                row = store.get_assertion(assertion_id)
                assert row is not None and row["patient_ref"] == request.patient_ref
                assert row["order_ref"] in request.expected and row["hook_instance"] == request.body["hookInstance"]
    finally:
        store.dispose()
