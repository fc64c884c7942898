"""Compressed FHIR answers count by what they decode to (issue 15, item 7).

The fallback asks for ``gzip`` (or identity) and decodes the body itself, a chunk at a time, never past the bytes
still allowed: the per-response cap and the call's byte budget count decoded bytes, not the compressed
``Content-Length``. Any other coding, or a corrupt or unfinished gzip stream, is ``bad-encoding``. The gzip bombs
here come from a loopback FHIR stub (``tests/bad_fhir_server.py``).
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from collections.abc import Callable

import orjson
import pytest

from cds_service.config import Config
from cds_service.prefetch import PrefetchOutcome, gather
from tests.bad_fhir_server import BadFhirServer, Exchange

MB = 1024 * 1024
PATIENT = {"resourceType": "Patient", "id": "p"}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/p"},
}


def gzipped(document: bytes, padding: int = 0) -> bytes:
    """``document`` gzip-compressed, with ``padding`` spaces before its last byte (valid JSON, compresses ~1000:1),
    built a megabyte at a time so the test itself never holds the decoded size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(document[:-1])]
    block = b" " * MB
    for _ in range(padding // MB):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(b" " * (padding % MB) + document[-1:]))
    parts.append(compressor.flush())
    return b"".join(parts)


def bundle_bytes(*resources: dict[str, object]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]})


def answering(body: bytes, coding: str = "gzip", seen: list[str] | None = None) -> Callable[[Exchange], None]:
    """Every search answered with ``body`` under ``Content-Encoding: coding``; reads as usual."""

    def behaviour(ex: Exchange) -> None:
        if seen is not None:
            seen.append(str(ex.handler.headers.get("Accept-Encoding")))
        if ex.is_read:
            ex.behave()
            return
        ex.send(200, body, headers={"Content-Encoding": coding})

    return behaviour


def fetch(fhir: BadFhirServer, keys: int = 1, **settings: float | int) -> PrefetchOutcome:
    templates = {f"k{i}": "Observation?patient={{context.patientId}}" for i in range(keys)}
    return gather(
        templates=templates,
        context={"patientId": "p"},
        prefetch=None,
        fhir_server=fhir.base_url,
        access_token=None,
        config=Config(fhir_budget_seconds=10.0, **settings),
    )  # type: ignore[arg-type]


def test_gzip_answer_is_asked_for_and_decoded() -> None:
    seen: list[str] = []
    with BadFhirServer([PATIENT, OBSERVATION]) as fhir:
        fhir.behaviour = answering(gzipped(bundle_bytes(OBSERVATION), padding=1000), seen=seen)
        outcome = fetch(fhir)
    assert outcome.failed == {}, outcome.failed
    assert outcome.resources["k0"] == [OBSERVATION]
    assert seen == ["gzip"]  # not requests' default "gzip, deflate" (nor br, zstd)


def test_gzip_bomb_is_cut_at_the_response_cap_without_decoding_it() -> None:
    """200 MB of JSON in ~200 KB of gzip, against a 2 MB cap: refused after ~2 MB, memory stays near the cap."""
    bomb = gzipped(bundle_bytes(OBSERVATION), padding=200 * MB)
    assert len(bomb) < 1 * MB
    with BadFhirServer([PATIENT]) as fhir:
        fhir.behaviour = answering(bomb)
        tracemalloc.start()
        started = time.monotonic()
        try:
            outcome = fetch(fhir, fhir_max_response_bytes=2 * MB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert outcome.failed == {"k0": "too-large"}, outcome.failed
    assert peak < 12 * MB, f"peak {peak / MB:.1f} MB"
    assert time.monotonic() - started < 5


def test_call_budget_is_charged_with_decoded_bytes() -> None:
    """Four keys, each a 3 MB page sent as a few KB of gzip: the call's 4 MB budget stops them as if uncompressed."""
    page = gzipped(bundle_bytes(OBSERVATION), padding=3 * MB)
    with BadFhirServer([PATIENT]) as fhir:
        fhir.behaviour = answering(page)
        outcome = fetch(fhir, keys=4, fhir_max_call_bytes=4 * MB, fhir_max_response_bytes=20 * MB)
    assert sum(1 for reason in outcome.failed.values() if reason == "call-budget") >= 3, outcome.failed


@pytest.mark.parametrize("coding", ["deflate", "br", "gzip, gzip", "compress"])
def test_codings_not_asked_for_are_refused(coding: str) -> None:
    with BadFhirServer([PATIENT]) as fhir:
        fhir.behaviour = answering(zlib.compress(bundle_bytes(OBSERVATION)), coding=coding)
        assert fetch(fhir).failed == {"k0": "bad-encoding"}


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_broken_gzip_is_bad_encoding(damage: str) -> None:
    body = gzipped(bundle_bytes(OBSERVATION), padding=100_000)
    body = body[: len(body) // 2] if damage == "truncated" else body[:10] + b"\xff" * 20 + body[30:]
    with BadFhirServer([PATIENT]) as fhir:
        fhir.behaviour = answering(body)
        assert fetch(fhir).failed == {"k0": "bad-encoding"}
