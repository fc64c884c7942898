"""The official FHIR R4 examples (npm package ``hl7.fhir.r4.examples`` 4.0.1, CC0-1.0), fetched on first use.

Not committed: the first run packs the package with npm into ``.cache/fhir-examples/`` in the repository
root (gitignored), checks the tarball against the registry's sha512 integrity pinned below, extracts it
with tarfile's ``data`` filter and writes an index (file -> resourceType). Later runs reuse the folder.
When npm is missing or fails, ``ExamplesUnavailable`` says why; the tests decide whether that skips or
fails (it fails under CI=true).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import orjson

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"
#: ``npm view hl7.fhir.r4.examples@4.0.1 dist.integrity``: the tarball must be exactly the published one.
INTEGRITY = "sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/zLw=="
ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "fhir-examples"
NPM_TIMEOUT_SECONDS = 300
INDEX_NAME = "index.json"


class ExamplesUnavailable(RuntimeError):
    """The examples package could not be obtained (no npm, no registry, or a tarball that fails its check)."""


def integrity_of(tarball: Path) -> str:
    """The npm-style Subresource Integrity string of a file."""
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def npm_pack(destination: Path) -> Path:
    """``npm pack PACKAGE@VERSION`` into ``destination``; the tarball path."""
    npm = shutil.which("npm")
    if npm is None:
        raise ExamplesUnavailable(f"npm is not on PATH; it is needed to fetch {PACKAGE}@{VERSION}")
    destination.mkdir(parents=True, exist_ok=True)
    # One quick retry: with npm's defaults an unreachable registry costs over a minute before the tests can skip.
    command = [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(destination), "--silent",
               "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"]
    try:
        done = subprocess.run(
            command, check=False, cwd=destination, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExamplesUnavailable(f"npm pack {PACKAGE}@{VERSION} did not run: {exc}") from None
    tarball = destination / f"{PACKAGE}-{VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        raise ExamplesUnavailable(
            f"npm pack {PACKAGE}@{VERSION} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    return tarball


def extract(tarball: Path, target: Path) -> None:
    """Extract the package's ``package/`` folder to ``target``, atomically (a rename), refusing unsafe members."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            archive.extractall(scratch, filter="data")
        extracted = scratch / "package"
        if not (extracted / "package.json").is_file():
            raise ExamplesUnavailable(f"{tarball.name} has no package/package.json")
        write_index(extracted)
        if target.exists():  # another run finished first; keep its copy
            return
        os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_index(folder: Path) -> None:
    """file name -> resourceType for every example, so tests can choose files without parsing all 190 MB."""
    index = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "package.json":
            continue
        resource = orjson.loads(path.read_bytes())
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            index[path.name] = resource["resourceType"]
    (folder / INDEX_NAME).write_bytes(orjson.dumps(index, option=orjson.OPT_SORT_KEYS))


def ensure_examples(cache_dir: Path = CACHE_DIR) -> Path:
    """The folder holding the extracted examples and their index, fetching the package when needed."""
    target = cache_dir / f"{PACKAGE}-{VERSION}"
    if (target / INDEX_NAME).is_file():
        return target
    tarball = cache_dir / f"{PACKAGE}-{VERSION}.tgz"
    if not tarball.is_file() or integrity_of(tarball) != INTEGRITY:
        tarball = npm_pack(cache_dir)
    actual = integrity_of(tarball)
    if actual != INTEGRITY:
        raise ExamplesUnavailable(f"{tarball.name} integrity {actual[:24]}... is not the published {INTEGRITY[:24]}...")
    extract(tarball, target)
    return target


@cache
def examples_folder() -> Path:
    """``ensure_examples()`` once per process (raises ExamplesUnavailable every time it cannot)."""
    return ensure_examples()


def index(folder: Path) -> dict[str, str]:
    """file name -> resourceType."""
    loaded: dict[str, str] = orjson.loads((folder / INDEX_NAME).read_bytes())
    return loaded


def load(folder: Path, name: str) -> dict[str, Any]:
    """One example resource, freshly parsed (callers may change it)."""
    resource: dict[str, Any] = orjson.loads((folder / name).read_bytes())
    return resource


def by_type(folder: Path) -> dict[str, list[str]]:
    """resourceType -> its example file names, sorted."""
    grouped: dict[str, list[str]] = {}
    for name, resource_type in sorted(index(folder).items()):
        grouped.setdefault(resource_type, []).append(name)
    return grouped
