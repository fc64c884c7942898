"""Performance work must not change a single answer: every sample bundle's response, byte for byte.

``tests/fixtures/sample_response_digests.json`` holds, per sample in sample_bundles/, the sha256 of the response the
in-process handler gives (no store, the day fixed as in test_sample_bundles.py, the sample's own hookInstance). The
random parts of a response (card uuids, coverage-assertion ids) are replaced by their order of first appearance
before hashing, so the digest covers everything else exactly: card text, suggestions, extensions, key order.

The fixture was generated from main before issue 18's performance changes. When a merge changes answers on
purpose (another branch's policy or card work), the lead regenerates it from the merged main and commits it:

    .venv/bin/python -m tests.test_sample_responses_unchanged --write
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from cds_service.config import Config
from cds_service.discovery import SERVICES
from cds_service.policy.engine import load_policy
from cds_service.service import HookHandler
from fhir_mappings.codes import load_code_tables

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample_bundles"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sample_response_digests.json"
TODAY = date(2026, 11, 27)
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _samples() -> list[Path]:
    return sorted(p for p in SAMPLE_DIR.glob("*.json") if p.name != "expected.json")


def _handler() -> HookHandler:
    tables = load_code_tables()
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None, today=lambda: TODAY)


def canonical(body: Any, request_uuids: frozenset[bytes]) -> bytes:
    """The response as bytes (key order kept), with each uuid the service made up named by first appearance."""
    raw = orjson.dumps(body)
    names: dict[bytes, bytes] = {}

    def name(match: re.Match[bytes]) -> bytes:
        found = match.group(0)
        if found in request_uuids:
            return found
        return names.setdefault(found, b"<uuid-%d>" % len(names))

    return _UUID.sub(name, raw)


def digest(handler: HookHandler, path: Path) -> str:
    request = json.loads(path.read_text(encoding="utf-8"))
    service = next(sid for sid, s in SERVICES.items() if s["hook"] == request["hook"])
    request_uuids = frozenset(_UUID.findall(path.read_bytes()))
    body = handler.handle(service, copy.deepcopy(request)).body
    return hashlib.sha256(canonical(body, request_uuids)).hexdigest()


def digests() -> dict[str, str]:
    handler = _handler()
    return {path.name: digest(handler, path) for path in _samples()}


def test_canonical_names_new_uuids_only() -> None:
    kept = b"00000000-0000-0000-0000-000000000001"
    made = "11111111-2222-3333-4444-555555555555"
    body = {"a": made, "b": kept.decode(), "c": [made]}
    assert canonical(body, frozenset({kept})) == b'{"a":"<uuid-0>","b":"' + kept + b'","c":["<uuid-0>"]}'


def test_sample_responses_unchanged() -> None:
    expected: dict[str, str] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    actual = digests()
    assert sorted(actual) == sorted(expected), "samples added or removed: regenerate the fixture (see docstring)"
    changed = sorted(name for name in expected if actual[name] != expected[name])
    assert not changed, f"responses changed for {changed}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the fixture from this checkout's answers")
    if parser.parse_args().write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(digests(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    else:
        pytest.main([__file__, "-q"])
