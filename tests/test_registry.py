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
    pack = _edited(_copy(tmp_path, "again"), ("id: CP.PHAR.63", "id: CP.PHAR.99"))
    with pytest.raises(ConfigError, match="service id 'everolimus-order-sign' is used by two policy packs") as err:
        load_registry([str(tmp_path)])
    assert str(PACKAGED / "policy.yaml") in str(err.value) and str(pack / "policy.yaml") in str(err.value)


# ----------------------------------------------------------------------------- issue 15 item 9: no silent shadowing

ZENTORIMAB = Path(__file__).resolve().parent / "packs" / "zentorimab"


def _zentorimab(parent: Path, name: str = "zentorimab") -> Path:
    target = parent / name
    shutil.copytree(ZENTORIMAB, target)
    return target


def _edited(pack: Path, *replacements: tuple[str, str]) -> Path:
    policy = pack / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    policy.write_text(text, encoding="utf-8")
    return pack


def _other_services(pack: Path, prefix: str) -> Path:
    return _edited(
        pack,
        ("id: zentorimab-order-sign", f"id: {prefix}-order-sign"),
        ("id: zentorimab-order-select", f"id: {prefix}-order-select"),
    )


def _refused(folders: list[Path], *named: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_registry([str(folder) for folder in folders])
    message = str(err.value)
    for text in named:
        assert text in message, message
    return message


def test_a_pack_folder_named_like_the_packaged_one_refuses_to_start(tmp_path: Path) -> None:
    """A folder ``cp-phar-63`` in CDS_POLICY_DIRS (another policy in it) would shadow the packaged pack by name."""
    shadow = _other_services(_zentorimab(tmp_path, "cp-phar-63"), "shadow")
    _refused([shadow], "folder name 'cp-phar-63'", str(PACKAGED / "policy.yaml"), str(shadow / "policy.yaml"))


def test_two_pack_folders_with_one_name_refuse_to_start(tmp_path: Path) -> None:
    first = _zentorimab(tmp_path / "a")
    second = _edited(_other_services(_zentorimab(tmp_path / "b"), "other"), ("id: ZP.TEST.01", "id: ZP.TEST.02"))
    _refused([first, second], "folder name 'zentorimab'", str(first / "policy.yaml"), str(second / "policy.yaml"))


def test_a_policy_id_used_twice_refuses_to_start(tmp_path: Path) -> None:
    first = _zentorimab(tmp_path, "zentorimab")
    second = _other_services(_zentorimab(tmp_path, "zentorimab-copy"), "copy")
    _refused([tmp_path], "policy id 'ZP.TEST.01'", str(first / "policy.yaml"), str(second / "policy.yaml"))
    # the same id in another spelling makes the same DTR ids: refused too
    _edited(second, ("id: ZP.TEST.01", "id: zp-test-01"))
    _refused([tmp_path], "policy id slug 'zp-test-01'", str(first / "policy.yaml"), str(second / "policy.yaml"))


def test_a_questionnaire_id_used_twice_refuses_to_start(tmp_path: Path) -> None:
    """Questionnaire ids are cut at 64 characters: two long policy ids differing after that would share them."""
    long_id = "ZP." + "X" * 70
    first = _edited(_zentorimab(tmp_path, "first"), ("id: ZP.TEST.01", f"id: {long_id}.A"))
    second = _edited(_other_services(_zentorimab(tmp_path, "second"), "second"), ("id: ZP.TEST.01", f"id: {long_id}.B"))
    _refused([tmp_path], "questionnaire id", str(first / "policy.yaml"), str(second / "policy.yaml"))


def test_distinct_packs_load_side_by_side(tmp_path: Path) -> None:
    pack = _zentorimab(tmp_path)
    registry = load_registry([str(pack)])
    assert [p.name for p in registry.packs] == ["cp-phar-63", "zentorimab"]
    assert registry.pack_of("zentorimab-order-sign") is registry.pack("zentorimab")


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
