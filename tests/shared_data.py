"""Where tests find the shared material: acceptance scenarios, external requests and reference codes.

That material is not in this repository (the external requests come from public repositories under their own
terms; the scenarios belong to the acceptance suite). CI and the team's machines have it beside the clone, in
``../shared``; ``PRIORAUTH_SHARED_DIR`` points elsewhere. A plain clone has nothing beside it, and its first
``./scripts/test.sh`` must still pass: tests that need the material skip, naming the path they looked for.
``PRIORAUTH_REQUIRE_SHARED=1`` (set by ``.ci/run``) turns a missing path into a failure, so CI can never pass by
silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIR_VARIABLE = "PRIORAUTH_SHARED_DIR"
REQUIRE_VARIABLE = "PRIORAUTH_REQUIRE_SHARED"


def shared_dir() -> Path:
    """``$PRIORAUTH_SHARED_DIR``, else ``shared`` beside the repository."""
    configured = os.environ.get(DIR_VARIABLE, "").strip()
    return Path(configured).expanduser() if configured else ROOT.parent / "shared"


def required() -> bool:
    """Whether a missing shared path fails the run instead of skipping (CI)."""
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def _message(path: Path) -> str:
    return (
        f"shared test material not found: {path} (clone the shared folder beside this repository or set {DIR_VARIABLE})"
    )


def find(*parts: str) -> Path | None:
    """The shared path, or None when it is absent; fails instead when it is required.

    For collection time (parametrize lists), where a skip would skip the whole module.
    """
    path = shared_dir().joinpath(*parts)
    if path.exists():
        return path
    if required():
        pytest.fail(f"{REQUIRE_VARIABLE}=1, so this is a failure: {_message(path)}", pytrace=False)
    return None


def shared_path(*parts: str) -> Path:
    """The shared path; skips the calling test (or the module, when called at import) when it is absent."""
    path = find(*parts)
    if path is None:
        pytest.skip(_message(shared_dir().joinpath(*parts)), allow_module_level=True)
    return path


def missing_param(*parts: str) -> Any:
    """A single skipped parameter standing in for a parametrize list that needs an absent shared path."""
    return pytest.param(
        None, id="shared-missing", marks=pytest.mark.skip(reason=_message(shared_dir().joinpath(*parts)))
    )
