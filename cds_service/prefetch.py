"""Prefetch: use what the CDS client sent and fetch only what is missing from its FHIR server.

CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/#prefetch-template) lets a client send each prefetch key
with data, send ``null`` (queried, nothing found), send an OperationOutcome (could not query), or leave
the key out. Keys that are missing, or that came back as an OperationOutcome or a value of the wrong
shape, are fetched from ``fhirServer`` with the client's bearer token: in parallel, inside one time
budget, with a byte cap per response and one shared by the whole call (``CDS_FHIR_MAX_CALL_BYTES``),
following same-origin ``next`` links only — and only when ``fhirServer`` is on the call's allow-list
(``egress.FhirAccess``: checked on the URL before any connection, and on the address actually connected to,
so DNS cannot redirect a fetch to loopback or a private network). Bodies are asked for as ``gzip`` (or
identity) and decoded here, a chunk at a time, never past the bytes still allowed: the per-response cap and the
call's budget count decoded bytes, so a small compressed answer cannot expand past either. Nothing here raises for bad data or a bad
server: every key ends with an origin and, when it failed, a short reason code (no token, no PHI) that is safe
to log. Whether a failure means 412 or a degraded answer is the caller's decision.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import quote, urljoin, urlsplit

import orjson
import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from cds_service.config import Config
from cds_service.egress import FhirAccess, configure_session, fhir_access_for
from cds_service.gate import stepped_aside
from cds_service.logs import log_event

log = logging.getLogger("priorauth_cds.prefetch")

ORIGIN_PREFETCH = "prefetch"
ORIGIN_FETCHED = "fetched"
ORIGIN_NOT_APPLICABLE = "not-applicable"
ORIGIN_FAILED = "failed"

#: ``{{ token }}`` in a template; the inner text is matched against the tokens CDS Hooks 2.0 defines.
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_CONTEXT_TOKEN = re.compile(r"context\.([A-Za-z][A-Za-z0-9_]*)")
#: resource type of ``context.userId`` -> the prefetch token it fills.
_USER_TOKENS: dict[str, str] = {
    "Practitioner": "userPractitionerId",
    "PractitionerRole": "userPractitionerRoleId",
    "Patient": "userPatientId",
    "RelatedPerson": "userRelatedPersonId",
}
#: Characters that would end a path segment or a query value, start a new parameter, OR two values
#: (FHIR's comma), escape, or smuggle a header: a value holding any of them is never substituted.
_UNSAFE_VALUE = re.compile(r"[&/?#,;=%\\\s\x00-\x1f\x7f]")
_MAX_VALUE_LENGTH = 256
_READ_QUERY = re.compile(r"([A-Z][A-Za-z]{1,63})/([^/?#]+)")
#: Where a search query's resource type ends.
_QUERY_TYPE_END = re.compile(r"[/?]")
_REFERENCE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")

_READ_CHUNK = 64 * 1024
#: Concurrent requests to one EHR FHIR server per hook call: enough to overlap the round trips of the few keys a
#: call fetches, few enough not to overrun a small server's accept backlog (Python's http.server queues 5) or
#: an EHR's per-client concurrency limit; the connections are kept alive and reused for the remaining keys.
_MAX_WORKERS = 4
#: Extra wait past the budget for a worker that is handing back a finished result.
_GRACE_SECONDS = 0.1
_FHIR_JSON = "application/fhir+json"
#: The one content coding asked for (besides identity); ``_BoundedDecoder`` decodes it.
_ACCEPTED_CODING = "gzip"


@dataclass(frozen=True)
class PrefetchOutcome:
    """Per prefetch key: the resources obtained, where they came from, and why a key failed."""

    resources: dict[str, list[dict[str, Any]]]
    origin: dict[str, str]
    failed: dict[str, str]
    fetch_seconds: float
    #: key -> why the client's prefetch value was not used (e.g. "prefetch-wrong-type"); informational.
    notes: dict[str, str] = field(default_factory=dict)

    def missing_required(self, required: frozenset[str]) -> list[str]:
        """Required keys that ended with no data at all, whatever the reason: the caller's 412 test."""
        return sorted(key for key in required if not self.resources.get(key))


@dataclass(frozen=True)
class FetchResult:
    """One fetch: the resources read (flattened) or the reason code it failed with."""

    resources: list[dict[str, Any]]
    failure: str | None = None


@dataclass(frozen=True)
class _Target:
    """A filled query and what a good answer to it looks like."""

    url: str
    expected_type: str
    is_read: bool


class _FetchFailure(Exception):
    """Ends one key's fetch; ``reason`` is a short code that never holds a token or PHI."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- templates


def fill_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The query with every token filled and URL-encoded, or None when the request cannot fill it.

    None ("not applicable") covers unknown tokens, absent or non-string context fields, and values
    that could change the query's shape (``&``, ``/``, ``?``, ``#``, ``,``, whitespace, ``..``).
    """
    literals, tokens = _template_parts(template)
    user_ids = _user_ids(context.get("userId")) if any(kind is _USER for kind, _ in tokens) else {}
    filled = [literals[0]]
    for (kind, name), literal in zip(tokens, literals[1:], strict=True):
        value: Any = user_ids.get(name) if kind is _USER else context.get(name) if kind is _CONTEXT else None
        if not _safe_value(value):
            return None
        filled += (quote(value, safe=""), literal)
    query = "".join(filled)
    if "{{" in query or "}}" in query:
        return None
    return query


#: Kinds of template token: a ``user*Id`` token, a ``context.field``, or one the request cannot fill.
_USER, _CONTEXT, _UNKNOWN = "user", "context", "unknown"


@functools.lru_cache(maxsize=256)
def _template_parts(template: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A template's text around its ``{{ token }}`` s and each token's (kind, name): a pure function of the
    service's (few, fixed) templates, parsed once instead of by a regex substitution per key per call. The
    context values themselves (patient ids) are filled in per call, never kept."""
    pieces = _TOKEN.split(template)  # text, token, text, token, ..., text
    tokens = []
    for inner in pieces[1::2]:
        token = inner.strip()
        match = _CONTEXT_TOKEN.fullmatch(token)
        if token in _USER_TOKENS.values():
            tokens.append((_USER, token))
        elif match:
            tokens.append((_CONTEXT, match.group(1)))
        else:
            tokens.append((_UNKNOWN, token))
    return tuple(pieces[::2]), tuple(tokens)


def _user_ids(user_id: Any) -> dict[str, str]:
    """The ``user*Id`` tokens ``context.userId`` fills ("PractitionerRole/abc" -> userPractitionerRoleId)."""
    if not isinstance(user_id, str):
        return {}
    parts = user_id.split("/")
    if len(parts) < 2 or (len(parts) > 2 and not user_id.startswith(("http://", "https://"))):
        return {}
    token = _USER_TOKENS.get(parts[-2])
    return {token: parts[-1]} if token and parts[-1] else {}


def _safe_value(value: Any) -> TypeGuard[str]:
    """Only plain strings that stay one path segment / one query value once substituted."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_VALUE_LENGTH
        and value not in (".", "..")
        and not _UNSAFE_VALUE.search(value)
    )


def _target_for(query: str) -> _Target:
    """What the query asks for: ``Type/id`` is a read of one Type, anything else a search returning a Bundle."""
    read = _READ_QUERY.fullmatch(query)
    if read:
        return _Target(url=query, expected_type=read.group(1), is_read=True)
    return _Target(url=query, expected_type=_QUERY_TYPE_END.split(query, maxsplit=1)[0], is_read=False)


@functools.lru_cache(maxsize=256)
def _template_type(template: str) -> str:
    """The resource type a prefetch template asks for: a pure function of the service's (few, fixed) templates,
    worked out once instead of twice per key per call (a regex match and a split)."""
    return _target_for(template).expected_type


# ---------------------------------------------------------------- prefetched values


def _classify_prefetch(value: Any, expected_type: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(resources, note): resources None means "treat the key as missing"; note says why."""
    if value is None:
        return [], None
    if not isinstance(value, dict):
        return None, "prefetch-wrong-type"
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        return None, "prefetch-not-a-resource"
    if resource_type == "OperationOutcome":
        return None, "prefetch-operation-outcome"
    if resource_type == "Bundle":
        try:
            return _flatten(value), None
        except _FetchFailure as failure:
            return None, f"prefetch-{failure.reason}"
    if resource_type != expected_type:
        return None, "prefetch-wrong-resource-type"
    return [value], None


def _flatten(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entry resources of a Bundle, skipping entries without one.

    An OperationOutcome entry with an error (or no issues) means the query failed; one that only
    carries warnings (a server's ``search.mode = outcome`` note, e.g. "parameter ignored") is dropped.
    """
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise _FetchFailure("bad-bundle")
    resources: list[dict[str, Any]] = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        if resource["resourceType"] == "OperationOutcome":
            if _is_error_outcome(resource):
                raise _FetchFailure("operation-outcome")
            continue
        resources.append(resource)
    return resources


def _is_error_outcome(outcome: Mapping[str, Any]) -> bool:
    issues = outcome.get("issue")
    if not isinstance(issues, list) or not issues:
        return True
    return any(not isinstance(i, dict) or i.get("severity") not in ("warning", "information") for i in issues)


# ---------------------------------------------------------------- gather


def gather(
    *,
    templates: Mapping[str, str],
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any] | None,
    fhir_server: str | None,
    access_token: str | None,
    config: Config,
    session: requests.Session | None = None,
    keys: Iterable[str] | None = None,
    fhir_access: FhirAccess | None = None,
    session_factory: Callable[[], requests.Session] | None = None,
    log_fields: MutableMapping[str, Any] | None = None,
    routine_failures: Collection[str] = (),
) -> PrefetchOutcome:
    """Resources for each template key (all, or ``keys``): prefetched when usable, else fetched.

    ``fhir_access`` is the call's FHIR allow-list (``egress.fhir_access_for`` with the verified JWT issuer);
    by default the one of a call without a verified issuer. ``log_fields``, ``routine_failures``: see
    ``_log_outcome``.
    """
    wanted = list(templates) if keys is None else list(keys)
    unknown = [key for key in wanted if key not in templates]
    if unknown:
        raise ValueError(f"no prefetch template for keys {unknown}")
    sent: Mapping[str, Any] = prefetch if isinstance(prefetch, Mapping) else {}
    resources, origin, notes, to_fetch = _plan(wanted, templates, context, sent)
    failed: dict[str, str] = {}

    started = time.monotonic()
    results: dict[str, FetchResult] = {}
    if to_fetch and not fhir_server:
        results = {key: FetchResult([], "no-fhir-server") for key in to_fetch}
    elif to_fetch:
        # A session (and its connection pools) only when something must be fetched: complete prefetch costs none.
        own = session is None and session_factory is not None
        http = session_factory() if own and session_factory is not None else session
        try:
            targets = {key: _target_for(query) for key, query in to_fetch.items()}
            results = _fetch_keys(targets, fhir_server, access_token, config, http, fhir_access)
        finally:
            if own and http is not None:
                http.close()
    fetch_seconds = time.monotonic() - started if to_fetch else 0.0
    for key, result in results.items():
        resources[key] = result.resources
        origin[key] = ORIGIN_FAILED if result.failure else ORIGIN_FETCHED
        if result.failure:
            failed[key] = result.failure

    outcome = PrefetchOutcome(
        resources=resources, origin=origin, failed=failed, fetch_seconds=fetch_seconds, notes=notes
    )
    _log_outcome(outcome, log_fields, routine_failures)
    return outcome


def _plan(
    wanted: list[str], templates: Mapping[str, str], context: Mapping[str, Any], sent: Mapping[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, str], dict[str, str]]:
    """Settle each key from the prefetch or as not applicable; what remains is to be fetched (key -> filled query,
    read as a target only when there is a server to ask)."""
    resources: dict[str, list[dict[str, Any]]] = {}
    origin: dict[str, str] = {}
    notes: dict[str, str] = {}
    to_fetch: dict[str, str] = {}
    for key in wanted:
        if key in sent:
            usable, note = _classify_prefetch(sent[key], _template_type(templates[key]))
            if note:
                notes[key] = note
            if usable is not None:
                resources[key], origin[key] = usable, ORIGIN_PREFETCH
                continue
        query = fill_template(templates[key], context)
        if query is None:
            resources[key], origin[key] = [], ORIGIN_NOT_APPLICABLE
        else:
            to_fetch[key] = query
    return resources, origin, notes, to_fetch


def _log_outcome(
    outcome: PrefetchOutcome, log_fields: MutableMapping[str, Any] | None = None, routine_failures: Collection[str] = ()
) -> None:
    """Keys, origins and reason codes only: no URLs (they hold patient ids), no tokens.

    A routine outcome (no notes, no key failed but ``routine_failures``: the optional DTR responses a call without
    a FHIR server never has) goes into the caller's one log line per request (``log_fields``) as ``prefetch``
    instead of a ``prefetch.summary`` record of its own: the same fields, one record fewer per call.
    """
    fields: dict[str, Any] = {
        "origins": dict(sorted(outcome.origin.items())),
        "failed": dict(sorted(outcome.failed.items())),
        "notes": dict(sorted(outcome.notes.items())),
        "fetch_s": round(outcome.fetch_seconds, 3),
    }
    if log_fields is not None and not outcome.notes and all(key in routine_failures for key in outcome.failed):
        log_fields["prefetch"] = fields
    else:
        log_event(log, "prefetch.summary", **fields)


class AddressNotAllowed(urllib3.exceptions.NewConnectionError):
    """The name resolved to an address the call's allow-list does not permit; closed before sending."""


class _CallBudget:
    """FHIR bytes left for one hook call, shared by its parallel key fetches (``CDS_FHIR_MAX_CALL_BYTES``)."""

    def __init__(self, max_bytes: int) -> None:
        self._left = max_bytes
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        """Charge ``size`` bytes; once the call's budget is spent every key still reading fails."""
        with self._lock:
            self._left -= size
            if self._left < 0:
                raise _FetchFailure("call-budget")


class _SocketWatch(HTTPAdapter):
    """An adapter that checks the address each new socket reached and remembers it, so the deadline can cut it.

    A per-read timeout never fires while a server trickles its headers a byte at a time; shutting the
    socket down from the caller's thread ends the worker's blocked read at once. The address check runs
    on the connected socket (``getpeername``), before TLS or any request byte, so a DNS answer that changes
    between the allow-list check and the connection (rebinding) cannot reach a disallowed address. With an
    explicit proxy the socket goes to the proxy, which then resolves names: the check does not apply.
    """

    def __init__(self, max_connections: int, access: FhirAccess, proxied: bool = False) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._access = access
        self._proxied = proxied
        super().__init__(pool_connections=1, pool_maxsize=max_connections)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **kwargs)
        watch = self

        class Http(urllib3.connection.HTTPConnection):
            def _new_conn(self) -> socket.socket:
                return watch._checked(self, super()._new_conn(), "http")

            def connect(self) -> None:
                super().connect()
                watch._remember(self.sock)

        class Https(urllib3.connection.HTTPSConnection):
            def _new_conn(self) -> socket.socket:
                return watch._checked(self, super()._new_conn(), "https")

            def connect(self) -> None:
                super().connect()
                watch._remember(self.sock)

        class HttpPool(urllib3.connectionpool.HTTPConnectionPool):
            ConnectionCls = Http

        class HttpsPool(urllib3.connectionpool.HTTPSConnectionPool):
            ConnectionCls = Https

        self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}

    def _checked(
        self, connection: urllib3.connection.HTTPConnection, sock: socket.socket, scheme: str
    ) -> socket.socket:
        """The new socket if its peer address is allowed for ``connection.host``; otherwise closed, and refused."""
        if self._proxied:
            return sock
        try:
            peer = str(sock.getpeername()[0])
        except OSError:
            peer = ""
        if not self._access.peer_allowed(scheme, connection.host, int(connection.port or 0), peer):
            sock.close()
            raise AddressNotAllowed(connection, "connected address not allowed for this FHIR server")
        return sock

    def _remember(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.append(sock)

    def cut(self) -> None:
        """Shut every socket down: blocked reads in worker threads fail immediately."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _fetch_keys(
    targets: Mapping[str, _Target],
    fhir_server: str | None,
    access_token: str | None,
    config: Config,
    session: requests.Session | None,
    fhir_access: FhirAccess | None = None,
) -> dict[str, FetchResult]:
    """Fetch every target in parallel; whatever is unfinished when the budget ends is a timeout."""
    if not fhir_server:
        return {key: FetchResult([], "no-fhir-server") for key in targets}
    base = _base_url(fhir_server)
    if base is None:
        return {key: FetchResult([], "bad-fhir-server") for key in targets}
    access = fhir_access if fhir_access is not None else fhir_access_for(config, None)
    if not access.allows(base):
        return {key: FetchResult([], "fhir-server-not-allowed") for key in targets}
    deadline = time.monotonic() + config.fhir_budget_seconds
    headers = _headers(access_token)
    http = configure_session(session if session is not None else requests.Session(), config)
    workers = min(len(targets), _MAX_WORKERS)
    watch = _SocketWatch(workers, access, proxied=bool(http.proxies))
    http.mount("http://", watch)
    http.mount("https://", watch)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-prefetch")
    budget = _CallBudget(config.fhir_max_call_bytes)
    try:
        futures: dict[Future[FetchResult], str] = {
            pool.submit(
                _fetch_target, f"{base}/{target.url}", target, http, headers, config, deadline, access, budget
            ): key
            for key, target in targets.items()
        }
        with stepped_aside():  # the worker's other requests run while this one waits on the FHIR server (gate.py)
            done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()) + _GRACE_SECONDS)
    finally:
        # Never join: cutting the sockets ends any worker still blocked in a read, however slow the server.
        if len(done) < len(futures):
            watch.cut()
        pool.shutdown(wait=False, cancel_futures=True)
        if session is None:
            http.close()
    return {key: future.result() if future in done else FetchResult([], "timeout") for future, key in futures.items()}


def fetch_reference(
    reference: str,
    *,
    fhir_server: str | None,
    access_token: str | None,
    config: Config,
    session: requests.Session | None = None,
    fhir_access: FhirAccess | None = None,
) -> FetchResult:
    """Read one ``Type/id`` (e.g. an order's requester who is not the user) within the FHIR budget."""
    match = _REFERENCE.fullmatch(reference)
    if not match:
        return FetchResult([], "bad-reference")
    results = _fetch_keys(
        {"reference": _target_for(reference)}, fhir_server, access_token, config, session, fhir_access
    )
    return results["reference"]


def _base_url(fhir_server: str) -> str | None:
    """``fhirServer`` without a trailing slash, or None when it is not an absolute http(s) base URL."""
    parts = urlsplit(fhir_server.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    if parts.username or parts.password:
        return None
    return fhir_server.strip().rstrip("/")


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port


def _headers(access_token: str | None) -> dict[str, str]:
    headers = {"Accept": _FHIR_JSON, "Accept-Encoding": _ACCEPTED_CODING}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    return headers


def _fetch_target(
    url: str,
    target: _Target,
    session: requests.Session,
    headers: Mapping[str, str],
    config: Config,
    deadline: float,
    access: FhirAccess,
    budget: _CallBudget | None = None,
) -> FetchResult:
    """One key's fetch, all pages; every failure becomes a reason code (this runs in a worker thread)."""
    try:
        return FetchResult(_fetch_pages(url, target, session, headers, config, deadline, access, budget))
    except _FetchFailure as failure:
        return FetchResult([], failure.reason)
    except Exception as exc:  # noqa: BLE001 - a worker must hand back a result; the type is logged, not the URL
        log_event(log, "prefetch.fetch_failed", logging.WARNING, error_type=type(exc).__name__)
        return FetchResult([], "fetch-error")


def _fetch_pages(
    url: str,
    target: _Target,
    session: requests.Session,
    headers: Mapping[str, str],
    config: Config,
    deadline: float,
    access: FhirAccess,
    budget: _CallBudget | None = None,
) -> list[dict[str, Any]]:
    """A read's resource, or a search's entries across ``next`` pages (same origin and allowed, no loops, capped)."""
    home = _origin(url)
    seen: set[str] = set()
    resources: list[dict[str, Any]] = []
    for _ in range(max(1, config.fhir_max_pages)):
        if url in seen:
            raise _FetchFailure("page-loop")
        seen.add(url)
        status, body = _get(url, session, headers, config, deadline, absent_ok=target.is_read, budget=budget)
        if status in (404, 410):
            return []
        resource = _parse(body)
        if target.is_read:
            if resource["resourceType"] != target.expected_type:
                raise _FetchFailure("wrong-resource-type")
            return [resource]
        if resource["resourceType"] != "Bundle":
            raise _FetchFailure("wrong-resource-type")
        resources.extend(_flatten(resource))
        next_link = _next_link(resource)
        if next_link is None:
            return resources
        url = urljoin(url, next_link)
        if _origin(url) != home:
            raise _FetchFailure("cross-origin-next")
        if not access.allows(url):
            raise _FetchFailure("next-not-allowed")
    raise _FetchFailure("page-limit")


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"]) or None
    return None


def _parse(body: bytes) -> dict[str, Any]:
    """A FHIR resource from a JSON body; an OperationOutcome in a 2xx answer is still a failure."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _FetchFailure("not-json") from exc
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise _FetchFailure("not-fhir")
    if document["resourceType"] == "OperationOutcome":
        raise _FetchFailure("operation-outcome")
    return document


def _get(
    url: str,
    session: requests.Session,
    headers: Mapping[str, str],
    config: Config,
    deadline: float,
    *,
    absent_ok: bool,
    budget: _CallBudget | None = None,
) -> tuple[int, bytes]:
    """(status, body) of a GET that cannot outlive the deadline; 404/410 pass when ``absent_ok``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _FetchFailure("timeout")
    timeout = (min(config.fhir_connect_timeout_seconds, remaining), remaining)
    try:
        response = session.get(url, headers=dict(headers), timeout=timeout, stream=True, allow_redirects=False)
    except requests.exceptions.Timeout as exc:
        raise _FetchFailure("timeout") from exc
    except requests.exceptions.SSLError as exc:
        raise _FetchFailure("tls-error") from exc
    except requests.exceptions.ConnectionError as exc:
        if _caused_by(exc, AddressNotAllowed):
            raise _FetchFailure("address-not-allowed") from exc
        raise _FetchFailure("connection-error") from exc
    except requests.exceptions.RequestException as exc:
        raise _FetchFailure("request-error") from exc
    with response:
        status = response.status_code
        if absent_ok and status in (404, 410):
            return status, b""
        if 300 <= status < 400:
            raise _FetchFailure("redirect")
        if not 200 <= status < 300:
            raise _FetchFailure(f"http-{status}")
        return status, _read_body(response, config.fhir_max_response_bytes, deadline, budget)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is somewhere in the chain requests/urllib3 wrapped around a connection failure."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
        pending.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return False


def _read_body(
    response: requests.Response, max_bytes: int, deadline: float, budget: _CallBudget | None = None
) -> bytes:
    """The decoded body, read as it arrives so a server trickling bytes or sending too many is cut off.

    Both caps count decoded bytes: the per-response one and the call's budget, charged as each decoded chunk
    arrives (a ``Content-Length`` is the compressed size, so it is only checked against the cap up front).
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _FetchFailure("too-large")
    decoder = _BoundedDecoder(response.headers.get("Content-Encoding", ""))
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise _FetchFailure("timeout")
            data = response.raw.read1(_READ_CHUNK, decode_content=False)
            if not data:
                decoder.finish()
                return b"".join(chunks)
            chunk = decoder.decode(data, max_bytes - size)
            size += len(chunk)
            if size > max_bytes:
                raise _FetchFailure("too-large")
            if budget is not None:
                budget.take(len(chunk))
            chunks.append(chunk)
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
        raise _FetchFailure("timeout") from exc
    except urllib3.exceptions.DecodeError as exc:
        raise _FetchFailure("bad-encoding") from exc
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _FetchFailure("incomplete-body") from exc


class _BoundedDecoder:
    """A body's content coding undone chunk by chunk, never producing more than the bytes still allowed.

    urllib3 decodes each chunk whole (64 KB of a gzip bomb becomes 64 MB before any cap is looked at); here
    ``zlib``'s ``max_length`` stops at one byte past what the caps allow, which is enough to know the answer is
    too large. Only identity and ``gzip`` (what ``Accept-Encoding`` asked for) are accepted: any other coding is
    ``bad-encoding``, as is a gzip stream that is corrupt or does not end.
    """

    def __init__(self, content_encoding: str) -> None:
        coding = content_encoding.strip().lower()
        if coding in ("", "identity"):
            self._zlib: Any = None
        elif coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            raise _FetchFailure("bad-encoding")

    def decode(self, data: bytes, room: int) -> bytes:
        """The decoded bytes of ``data``, at most ``room + 1`` of them."""
        if self._zlib is None:
            return data
        try:
            return bytes(self._zlib.decompress(data, max(room, 0) + 1))
        except zlib.error as exc:
            raise _FetchFailure("bad-encoding") from exc

    def finish(self) -> None:
        """At the end of the body: a gzip stream must have ended too."""
        if self._zlib is not None and not self._zlib.eof:
            raise _FetchFailure("bad-encoding")
