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
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
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
#: Enough for any OperationOutcome explaining a refusal; the rest of a larger answer is never read.
MAX_ANSWER_BYTES = 64 * 1024
#: One deadline for the whole load (every patient), however the server trickles its answers.
DEADLINE_SECONDS = 300.0
#: Where ``samples load`` reads the FHIR server's bearer token (not a command-line argument: process lists and
#: shell histories show those).
TOKEN_ENV = "PRIORAUTH_FHIR_TOKEN"
#: Unicode categories never printed: controls (C0, DEL, C1: terminal escapes) and format characters (bidi).
_UNPRINTABLE = frozenset({"Cc", "Cf"})


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


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape sequences, bidi overrides,
    zero-width marks) dropped, whitespace runs collapsed to one space, cut at ``limit`` characters."""
    kept = "".join(c if unicodedata.category(c) not in _UNPRINTABLE else " " for c in text)
    return " ".join(kept.split())[:limit]


def _diagnostics(body: bytes, reason: str) -> str:
    """The server's OperationOutcome in plain words (or the start of whatever it sent instead), printable.

    The body is the server's, of any shape: nothing in it may raise (deep nesting, a ``details`` that is not an
    object, bytes that are not UTF-8) or reach the terminal unfiltered.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
        issues = document.get("issue")
        words = [_issue_text(issue) for issue in issues if isinstance(issue, dict)] if isinstance(issues, list) else []
        text = printable("; ".join(w for w in words if w))
        if text:
            return text
    return printable(body.decode("utf-8", errors="replace")) or printable(reason) or "no explanation given"


def _issue_text(issue: Mapping[str, Any]) -> str:
    details = issue.get("details")
    for value in (
        issue.get("diagnostics"),
        details.get("text") if isinstance(details, dict) else None,
        issue.get("code"),
    ):
        if isinstance(value, str) and value:
            return value
    return ""


def load(
    base_url: str,
    patient_charts: Iterable[PatientChart],
    token: str | None = None,
    deadline_seconds: float = DEADLINE_SECONDS,
) -> Iterator[LoadResult]:
    """POST each chart's transaction to ``base_url``, yielding as each answer arrives.

    No proxy, ``.netrc`` or environment certificate settings apply (``trust_env`` off): a tester's loopback
    server must not be reached through a corporate proxy, nor a token leak to one. The server is not trusted
    either: its answer is read up to ``MAX_ANSWER_BYTES``, what is printed of it is filtered (``printable``), and
    the whole load has one deadline (a server trickling bytes resets no per-read timeout past it): charts not
    answered by then are reported, not waited for.
    """
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + deadline_seconds
    with requests.Session() as session:
        session.trust_env = False
        for chart in patient_charts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield LoadResult(chart, None, f"not sent: the {deadline_seconds:g} s deadline of the load had passed")
                continue
            yield _within(remaining, chart, partial(_post, session, base_url, chart, headers, remaining))


def _within(seconds: float, chart: PatientChart, post: Callable[[], LoadResult]) -> LoadResult:
    """``post()`` run in a daemon thread, given up after ``seconds`` (the process exits without waiting for it)."""
    done: list[LoadResult] = []
    worker = threading.Thread(target=lambda: done.append(post()), name="samples-load", daemon=True)
    worker.start()
    worker.join(seconds)
    if done:
        return done[0]
    return LoadResult(chart, None, "no complete answer from the FHIR server before the deadline of the load")


def _post(
    session: requests.Session, base_url: str, chart: PatientChart, headers: Mapping[str, str], remaining: float
) -> LoadResult:
    try:
        with session.post(
            base_url,
            data=json.dumps(chart.transaction()),
            headers=dict(headers),
            timeout=(min(CONNECT_TIMEOUT_SECONDS, remaining), min(READ_TIMEOUT_SECONDS, remaining)),
            allow_redirects=False,
            stream=True,
        ) as response:
            if response.status_code < 300:
                return LoadResult(chart, response.status_code, None)
            body = _read_at_most(response, MAX_ANSWER_BYTES)
            problem = (
                f"the FHIR server refused the transaction (HTTP {response.status_code}): "
                f"{_diagnostics(body, response.reason or '')}"
            )
            return LoadResult(chart, response.status_code, problem)
    except requests.RequestException as exc:
        return LoadResult(chart, None, f"cannot reach the FHIR server at {printable(base_url)}: {_reason(exc)}")


def _read_at_most(response: requests.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the (decoded) answer; the rest is never read."""
    parts: list[bytes] = []
    size = 0
    for part in response.iter_content(chunk_size=16 * 1024):
        parts.append(part[: limit - size])
        size += len(parts[-1])
        if size >= limit:
            break
    return b"".join(parts)


def _reason(exc: requests.RequestException) -> str:
    """A short reason for a connection failure, without requests' nested exception reprs."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (is it running, and is the URL right?)"
    return type(exc).__name__
