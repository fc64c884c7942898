"""The policy packs this service serves, and their CDS Hooks services.

A pack is a folder with ``policy.yaml`` and ``tables/`` (docs/policy-format.md). Packs come from the package
(``cds_service/policies/*/policy.yaml``) and from ``CDS_POLICY_DIRS`` (each folder is a pack folder or a folder of
pack folders). Every pack is loaded once at start-up: its code tables over the shared ones, then its policy
compiled against them. Each pack gives exactly two services, one per hook (``order-sign``, ``order-select``), with
the ids, titles and descriptions of its ``services`` block; discovery lists every pack's services with the shared
prefetch templates.

Start-up refuses to run (``PolicyError`` / ``ConfigError``, with the file and line where the loader knows it) on a
pack that fails validation, a pack without a ``services`` block, or any name two packs share, naming both packs'
``policy.yaml``: a folder name (a ``cp-phar-63`` folder elsewhere would shadow the packaged one wherever packs are
found by name), a policy id (also compared as the lower-case slug that DTR ids are made of), a service id, or a
DTR Questionnaire id. A pack never silently replaces another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fhir_mappings.codes import CodeTableError, CodeTables, load_code_tables

from .config import ConfigError
from .policy.loader import DEFAULT_PACK, POLICY_FILE, Policy, PolicyError, ServiceInfo, load_policy

__all__ = ["Pack", "Registry", "default_registry", "load_registry", "pack_folders"]

TABLES = "tables"


@dataclass(frozen=True)
class Pack:
    """One loaded policy pack: its folder name, code tables, compiled policy and services (order-sign first)."""

    name: str
    folder: Path
    tables: CodeTables = field(repr=False, compare=False)
    policy: Policy = field(repr=False, compare=False)

    @property
    def services(self) -> tuple[ServiceInfo, ...]:
        return self.policy.services

    def service_for(self, hook: str) -> ServiceInfo:
        """The pack's service answering ``hook``."""
        return next(service for service in self.services if service.hook == hook)


@dataclass(frozen=True, eq=False)
class Registry:
    """Every loaded pack (the packaged default first) and an index of their services by id."""

    packs: tuple[Pack, ...]
    _by_service: Mapping[str, tuple[ServiceInfo, Pack]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _refuse_shared_names(self.packs)
        by_service = {service.id: (service, pack) for pack in self.packs for service in pack.services}
        object.__setattr__(self, "_by_service", by_service)

    @property
    def default(self) -> Pack:
        """The packaged default pack (CP.PHAR.63), else the first one."""
        return next((pack for pack in self.packs if pack.name == DEFAULT_PACK), self.packs[0])

    @property
    def services(self) -> tuple[ServiceInfo, ...]:
        """Every service, pack by pack, order-sign before order-select."""
        return tuple(service for service, _ in self._by_service.values())

    def service(self, service_id: str) -> ServiceInfo | None:
        entry = self._by_service.get(service_id)
        return entry[0] if entry else None

    def pack_of(self, service_id: str) -> Pack | None:
        entry = self._by_service.get(service_id)
        return entry[1] if entry else None

    def hook_of(self, service_id: str) -> str | None:
        """The hook a service answers, or None for an unknown id."""
        service = self.service(service_id)
        return service.hook if service else None

    def pack(self, name: str) -> Pack:
        return next(pack for pack in self.packs if pack.name == name)


def _names(pack: Pack) -> Iterator[tuple[str, str]]:
    """(kind, name) of everything of ``pack`` that must be unique across packs."""
    from .dtr.questionnaire import asked_pathways, questionnaire_id, slug  # late: dtr imports the registry's users

    yield "folder name", pack.name
    yield "policy id", pack.policy.id
    yield "policy id slug", slug(pack.policy.id)
    for service in pack.services:
        yield "service id", service.id
    for pathway in asked_pathways(pack.policy):
        yield "questionnaire id", questionnaire_id(pack.policy, pathway.id)


def _refuse_shared_names(packs: Iterable[Pack]) -> None:
    """``ConfigError`` naming both packs' files when two packs (or two pathways of one) share a name."""
    owners: dict[tuple[str, str], Pack] = {}
    for pack in packs:
        for key in dict.fromkeys(_names(pack)):  # a pack's own repeats (id == its slug) are not a clash
            other = owners.setdefault(key, pack)
            if other is not pack:
                kind, name = key
                raise ConfigError(
                    f"{kind} {name!r} is used by two policy packs: {other.folder / POLICY_FILE} and "
                    f"{pack.folder / POLICY_FILE}; {kind}s must be unique (a pack never replaces another)"
                )


def _packaged_folders() -> list[Path]:
    return sorted(p for p in _packaged_root().iterdir() if (p / POLICY_FILE).is_file())


def pack_folders(policy_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """The pack folders to load: the packaged ones, then each ``CDS_POLICY_DIRS`` entry (a pack, or a folder of
    packs, taken in name order); a folder listed twice is loaded once."""
    folders = _packaged_folders()
    for entry in policy_dirs:
        folder = Path(entry).expanduser()
        if (folder / POLICY_FILE).is_file():
            folders.append(folder)
        elif folder.is_dir():
            found = sorted(p for p in folder.iterdir() if (p / POLICY_FILE).is_file())
            if not found:
                raise ConfigError(
                    f"CDS_POLICY_DIRS: {folder} holds no policy pack (no {POLICY_FILE}, no */{POLICY_FILE})"
                )
            folders.extend(found)
        else:
            raise ConfigError(f"CDS_POLICY_DIRS: {folder} is not a folder")
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


def load_pack(folder: Path) -> Pack:
    """Load one pack folder: its tables over the shared ones, then its policy against them."""
    policy_file = folder / POLICY_FILE
    tables_folder = folder / TABLES
    if not tables_folder.is_dir():
        raise PolicyError(f"{policy_file}:1: the pack has no {TABLES}/ folder beside {POLICY_FILE}")
    try:
        tables = load_code_tables(pack=tables_folder)
    except CodeTableError as exc:
        raise PolicyError(f"{tables_folder}: {exc}") from exc
    packaged_default = folder.resolve() == (_packaged_root() / DEFAULT_PACK).resolve()
    # The packaged default keeps its package-relative source name (card texts and logs name it so).
    policy = load_policy(None if packaged_default else folder, vocabulary=tables)
    if not policy.services:
        raise PolicyError(f"{policy.source}:1: services: a pack must declare its order-sign and order-select services")
    return Pack(folder.name, folder, tables, policy)


def _packaged_root() -> Path:
    return Path(str(resources.files("cds_service").joinpath("policies")))


@lru_cache(maxsize=8)
def _load(folders: tuple[Path, ...]) -> Registry:
    return Registry(tuple(load_pack(folder) for folder in folders))


def load_registry(policy_dirs: Sequence[str | Path] = ()) -> Registry:
    """Every pack (packaged + ``policy_dirs``), loaded and checked once per process for a given list of folders."""
    return _load(tuple(pack_folders(policy_dirs)))


def default_registry() -> Registry:
    """The packaged packs only (no ``CDS_POLICY_DIRS``)."""
    return load_registry(())
