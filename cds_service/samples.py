"""``priorauth-cds samples``: put the sample bundles' patients on a FHIR server, for sandbox testing.

Each file in ``sample_bundles/`` is a complete CDS Hooks request whose ``prefetch`` holds the patient's chart.
A tester pointing the CDS Hooks sandbox (or any EHR simulator) at a FHIR server needs those charts *on* the
server, because the sandbox sends no prefetch and the service then reads the chart from ``fhirServer``. The
draft orders are left out on purpose: they are what the prescriber is about to sign, not yet in the EHR.

One FHIR ``transaction`` per patient, every entry a ``PUT Type/id``: a patient's chart is stored completely or
not at all, ids stay those the sample's draft orders point at, and loading twice changes nothing.

``sample_bundles/`` ships with the source repository, not inside the wheel (it is test and demo material, and
``tools/make_samples.py`` regenerates it in place): it is found beside the installed package, which is where it
is in a clone or an editable install; otherwise ``--dir`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

#: Where a clone or editable install keeps the samples (the package's parent folder).
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "sample_bundles"
#: Files in the folder that are not hook requests.
NOT_SAMPLES = frozenset({"expected.json"})
CONNECT_TIMEOUT_SECONDS = 5.0
#: A transaction of a dozen resources; generous for a server validating each one.
READ_TIMEOUT_SECONDS = 60.0
FHIR_JSON = "application/fhir+json"


class SamplesError(Exception):
    """The samples cannot be read (folder missing, a file that is not a hook request); a usage problem."""


@dataclass(frozen=True)
class PatientChart:
    """One patient's resources from the prefetch of every sample about them, keyed by ``Type/id``."""

    patient_id: str
    samples: tuple[str, ...]
    resources: tuple[dict[str, Any], ...]

    def transaction(self) -> dict[str, Any]:
        """A FHIR R4 transaction Bundle of ``PUT Type/id`` entries (idempotent: same ids, same content)."""
        entries = [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
            for resource in self.resources
        ]
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@dataclass(frozen=True)
class LoadResult:
    """What the server said about one patient's transaction."""

    chart: PatientChart
    status: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def sample_files(directory: Path = DEFAULT_DIR) -> list[Path]:
    """The hook request files of the samples folder, sorted by name."""
    if not directory.is_dir():
        raise SamplesError(
            f"sample bundles not found at {directory}: they ship with the source repository, not with the "
            "installed package; run from a clone or pass --dir"
        )
    return sorted(p for p in directory.glob("*.json") if p.name not in NOT_SAMPLES)


def select(files: list[Path], only: Iterable[str] | None) -> list[Path]:
    """The files named by ``--only`` (file name, with or without ``.json``); all of them without it."""
    wanted = list(only or [])
    if not wanted:
        return files
    by_name = {p.name: p for p in files} | {p.stem: p for p in files}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise SamplesError(f"no sample named {', '.join(unknown)} (see `priorauth-cds samples list`)")
    return sorted({by_name[name] for name in wanted})


def read_sample(path: Path) -> dict[str, Any]:
    """One sample hook request, checked for what loading needs (a patient id and a prefetch object)."""
    try:
        request = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SamplesError(f"cannot read {path}: {exc}") from None
    context = request.get("context") if isinstance(request, dict) else None
    if not isinstance(context, dict) or not isinstance(context.get("patientId"), str):
        raise SamplesError(f"{path.name} is not a hook request with context.patientId")
    if not isinstance(request.get("prefetch"), dict):
        raise SamplesError(f"{path.name} has no prefetch to load")
    return dict(request)


def _prefetched(prefetch: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every resource of a prefetch: single resources, and the entries of Bundles (searchsets)."""
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    yield resource
        elif isinstance(value.get("resourceType"), str):
            yield value


def charts(paths: Iterable[Path]) -> list[PatientChart]:
    """One chart per patient id, merging the samples about the same patient; resources without an id (which
    cannot be PUT) are skipped, duplicates (same ``Type/id``) kept once."""
    grouped: dict[str, tuple[list[str], dict[tuple[str, str], dict[str, Any]]]] = {}
    for path in paths:
        request = read_sample(path)
        names, resources = grouped.setdefault(request["context"]["patientId"], ([], {}))
        names.append(path.name)
        for resource in _prefetched(request["prefetch"]):
            rid = resource.get("id")
            if isinstance(rid, str) and rid:
                resources.setdefault((resource["resourceType"], rid), resource)
    return [
        PatientChart(patient_id, tuple(names), tuple(resources.values()))
        for patient_id, (names, resources) in sorted(grouped.items())
    ]


def _diagnostics(response: requests.Response) -> str:
    """The server's OperationOutcome in plain words (or the start of whatever it sent instead)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        words = [
            str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code") or "")
            for issue in body.get("issue") or []
            if isinstance(issue, dict)
        ]
        if any(words):
            return "; ".join(w for w in words if w)
    text = " ".join(response.text.split())
    return text[:300] or response.reason or "no explanation given"


def load(base_url: str, patient_charts: Iterable[PatientChart], token: str | None = None) -> Iterator[LoadResult]:
    """POST each chart's transaction to ``base_url``, yielding as each answer arrives.

    No proxy, ``.netrc`` or environment certificate settings apply (``trust_env`` off): a tester's loopback
    server must not be reached through a corporate proxy, nor a token leak to one.
    """
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with requests.Session() as session:
        session.trust_env = False
        for chart in patient_charts:
            try:
                response = session.post(
                    base_url,
                    data=json.dumps(chart.transaction()),
                    headers=headers,
                    timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                yield LoadResult(chart, None, f"cannot reach the FHIR server at {base_url}: {_reason(exc)}")
                continue
            if response.status_code >= 300:
                problem = (
                    f"the FHIR server refused the transaction (HTTP {response.status_code}): {_diagnostics(response)}"
                )
                yield LoadResult(chart, response.status_code, problem)
            else:
                yield LoadResult(chart, response.status_code, None)


def _reason(exc: requests.RequestException) -> str:
    """A short reason for a connection failure, without requests' nested exception reprs."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (is it running, and is the URL right?)"
    return type(exc).__name__
