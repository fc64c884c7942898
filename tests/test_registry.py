"""The pack registry: packaged packs, CDS_POLICY_DIRS, and what makes start-up refuse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds_service.config import Config, ConfigError
from cds_service.discovery import SERVICES, discovery_document
from cds_service.policy.loader import PolicyError
from cds_service.registry import default_registry, load_registry

PACKAGED = Path(__file__).resolve().parents[1] / "cds_service" / "policies" / "cp-phar-63"


def test_the_default_registry_serves_the_packaged_pack() -> None:
    registry = default_registry()
    assert [pack.name for pack in registry.packs] == ["cp-phar-63"]
    assert [s.id for s in registry.services] == ["everolimus-order-sign", "everolimus-order-select"]
    assert registry.hook_of("everolimus-order-select") == "order-select" and registry.hook_of("nope") is None
    assert dict(SERVICES)["everolimus-order-sign"]["hook"] == "order-sign"
    assert [s["id"] for s in discovery_document()["services"]] == list(SERVICES)


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(PACKAGED, target)
    return target


def test_a_service_id_used_twice_refuses_to_start(tmp_path: Path) -> None:
    _copy(tmp_path, "again")
    with pytest.raises(ConfigError, match="'everolimus-order-sign' is declared by two policy packs"):
        load_registry([str(tmp_path)])


def test_a_broken_pack_is_reported_with_file_and_line(tmp_path: Path) -> None:
    pack = _copy(tmp_path, "broken")
    policy = pack / "policy.yaml"
    text = policy.read_text(encoding="utf-8").replace("id: everolimus-order-sign", "id: other-order-sign")
    text = text.replace("specialties: [oncology]}", "specialties: [oncolgy]}", 1)
    policy.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=rf"^{policy}:\d+: .*oncolgy"):
        load_registry([str(pack)])


def test_a_pack_without_services_or_tables_is_refused(tmp_path: Path) -> None:
    pack = _copy(tmp_path, "quiet")
    policy = pack / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    start, end = text.index("services:\n"), text.index("# Tags this file may read")
    policy.write_text(text[:start] + text[end:], encoding="utf-8")
    with pytest.raises(PolicyError, match=r"policy.yaml:1: services: a pack must declare"):
        load_registry([str(pack)])
    shutil.rmtree(pack / "tables")
    with pytest.raises(PolicyError, match="has no tables/ folder"):
        load_registry([str(pack)])


def test_policy_dirs_must_name_folders_with_packs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_registry([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="holds no policy pack"):
        load_registry([str(tmp_path)])


def test_cds_policy_dirs_is_a_comma_separated_setting() -> None:
    config = Config.from_env({"CDS_POLICY_DIRS": " /a/packs , /b/pack ,", "HOME": "/tmp"})
    assert config.policy_dirs == ("/a/packs", "/b/pack")
    assert Config.from_env({"HOME": "/tmp"}).policy_dirs == ()
