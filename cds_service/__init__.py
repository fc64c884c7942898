"""priorauth-cds: a CDS Hooks 2.0 / Da Vinci CRD service for payer prior-authorization drug policies."""

from importlib.metadata import PackageNotFoundError, version

try:  # one version source: pyproject.toml's [project] version, as installed
    __version__ = version("priorauth-cds")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"
