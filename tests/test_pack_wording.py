"""Everything user-facing comes from the pack (issue #17 item 5): discovery, OpenAPI, cards, CLI, pa-needed, links.

One test loads every pack found (the packaged ones and tests/packs) and checks that no user-facing string of one
pack names another pack's drug or policy id; the others check the CLI's choice of pack and the per-pack CRD values.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service.app import create_app
from cds_service.cli import main
from cds_service.config import Config
from cds_service.discovery import discovery_document
from cds_service.openapi import hook_request_example, openapi_document
from cds_service.registry import Pack, Registry, load_registry
from cds_service.samples import DEFAULT_DIR

PACKS = Path(__file__).parent / "packs"
EVEROLIMUS_SAMPLE = DEFAULT_DIR / "I.A-brand-without-exemestane.json"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry([PACKS])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    database = tmp_path_factory.mktemp("wording") / "audit.sqlite3"
    return create_app(Config(database_url=f"sqlite:///{database}", policy_dirs=(str(PACKS),)))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def foreign_words(pack: Pack, registry: Registry) -> list[str]:
    """The drug names and policy ids of every other pack (whole words, case-insensitive)."""
    words: set[str] = set()
    for other in registry.packs:
        if other.policy.id != pack.policy.id:
            words |= {other.policy.id, other.policy.drug.name, *other.policy.drug.families.values()}
    return sorted(words)


def assert_speaks_only_for(pack: Pack, registry: Registry, texts: Any, where: str) -> None:
    for word in foreign_words(pack, registry):
        pattern = re.compile(rf"(?<![\w.]){re.escape(word)}(?![\w])", re.IGNORECASE)
        found = [text for text in strings(texts) if pattern.search(text)]
        assert not found, f"{where} of {pack.name} names {word!r}: {found[:3]}"


def test_the_repository_holds_more_than_one_pack(registry: Registry) -> None:
    assert len(registry.packs) >= 2  # otherwise the test below checks nothing


def test_no_pack_speaks_for_another(registry: Registry, app: Flask) -> None:
    discovery = {s["id"]: s for s in discovery_document(registry)["services"]}
    operation = openapi_document(registry)["paths"]["/cds-services/{service_id}"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    client = app.test_client()
    for pack in registry.packs:
        for service in pack.services:
            assert_speaks_only_for(pack, registry, discovery[service.id], f"discovery entry {service.id}")
            example = examples[service.id]["value"]
            assert_speaks_only_for(pack, registry, example, f"OpenAPI example {service.id}")
            response = client.post(f"/cds-services/{service.id}", json=example)
            assert response.status_code == 200
            body = response.get_json()
            assert body["cards"], f"the example of {service.id} orders no drug of its pack"
            assert_speaks_only_for(pack, registry, body, f"answer to the example of {service.id}")


def test_configuration_options_name_the_packs_policy_and_drug(registry: Registry) -> None:
    for entry in discovery_document(registry)["services"]:
        pack = registry.pack_of(entry["id"])
        assert pack is not None
        options = {o["code"]: o["description"] for o in entry["extension"]["davinci-crd.configuration-options"]}
        assert pack.policy.id in options["coverage-info"]
        assert pack.policy.drug.name in options["therapy-alternatives-req"]


def test_openapi_summary_lists_every_pack_once(registry: Registry) -> None:
    summary = openapi_document(registry)["info"]["summary"]
    for pack in registry.packs:
        assert summary.count(pack.policy.id) == 1


# ----------------------------------------------------------------------------- the CLI picks the pack


def zentorimab_request() -> dict[str, Any]:
    return hook_request_example("zentorimab-order-sign", registry=load_registry([PACKS]))


@pytest.fixture
def packs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CDS_POLICY_DIRS", str(PACKS))


def test_evaluate_picks_the_pack_whose_drug_is_ordered_and_says_so(
    packs_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--json", str(EVEROLIMUS_SAMPLE)]) == 0
    captured = capsys.readouterr()
    assert "evaluating with everolimus-order-sign (CP.PHAR.63): the request orders everolimus" in captured.err
    assert json.loads(captured.out)["cards"][0]["extension"]["priorauth-cds.evaluation"]["policy"] == "CP.PHAR.63"
    path = tmp_path / "zentorimab.json"
    path.write_text(json.dumps(zentorimab_request()))
    assert main(["evaluate", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "evaluating with zentorimab-order-sign (ZP.TEST.01)" in captured.err
    assert json.loads(captured.out)["cards"][0]["extension"]["priorauth-cds.evaluation"]["policy"] == "ZP.TEST.01"


def test_evaluate_refuses_when_no_pack_or_several_packs_match(
    packs_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = zentorimab_request()
    everolimus = json.loads(EVEROLIMUS_SAMPLE.read_text())
    both["context"]["draftOrders"]["entry"] += everolimus["context"]["draftOrders"]["entry"]
    path = tmp_path / "both.json"
    path.write_text(json.dumps(both))
    assert main(["evaluate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "orders the drugs of several packs" in captured.err and "--service" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    none = zentorimab_request()
    none["context"]["draftOrders"]["entry"] = []
    path.write_text(json.dumps(none))
    assert main(["evaluate", str(path)]) == 2
    assert (
        "orders no drug of a loaded pack (everolimus (CP.PHAR.63), zentorimab (ZP.TEST.01))" in capsys.readouterr().err
    )
    # --service still decides when given
    assert main(["evaluate", "--json", str(path), "--service", "zentorimab-order-sign"]) == 0


# ----------------------------------------------------------------------------- pa-needed and the link, per pack


def test_pa_needed_and_the_policy_link_are_the_packs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "packs" / "zentorimab"
    shutil.copytree(PACKS / "zentorimab", folder)
    policy = folder / "policy.yaml"
    text = policy.read_text(encoding="utf-8").replace(
        "  document_url: https://example.org/policies/zp-test-01\n",
        "  document_url: https://example.org/policies/zp-test-01\n  pa_needed: conditional\n",
    )
    policy.write_text(text, encoding="utf-8")
    config = Config(
        database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}",
        policy_dirs=(str(folder.parent),),
        policy_url="https://payer.example/cp-phar-63.pdf",
    )
    client = create_app(config).test_client()
    registry = load_registry([folder.parent])
    body = client.post("/cds-services/zentorimab-order-sign", json=zentorimab_request()).get_json()
    coverage = body["systemActions"][0]["resource"]["extension"][-1]["extension"]
    assert {e["url"]: e.get("valueCode") for e in coverage}["pa-needed"] == "conditional"
    links = [link["url"] for card in body["cards"] for link in card.get("links", [])]
    assert "https://example.org/policies/zp-test-01" in links and "https://payer.example/cp-phar-63.pdf" not in links
    example = hook_request_example("everolimus-order-sign", registry=registry)
    everolimus = client.post("/cds-services/everolimus-order-sign", json=example).get_json()
    coverage = everolimus["systemActions"][0]["resource"]["extension"][-1]["extension"]
    assert {e["url"]: e.get("valueCode") for e in coverage}["pa-needed"] == "auth-needed"
    assert "https://payer.example/cp-phar-63.pdf" in [
        link["url"] for c in everolimus["cards"] for link in c.get("links", [])
    ]


def test_an_unknown_pa_needed_names_the_crd_codes(tmp_path: Path) -> None:
    from cds_service.policy.predicates import PolicyError
    from cds_service.registry import load_pack

    folder = tmp_path / "zentorimab"
    shutil.copytree(PACKS / "zentorimab", folder)
    policy = folder / "policy.yaml"
    policy.write_text(
        policy.read_text(encoding="utf-8").replace('  version: "01.26"\n', '  version: "01.26"\n  pa_needed: always\n')
    )
    with pytest.raises(PolicyError, match="pa_needed"):
        load_pack(folder)
