"""Prometheus metrics (``GET /metrics``), multiprocess-safe under gunicorn.

``prometheus_client`` is the reference Python client of the Prometheus text format and the only one that
aggregates the counters of several gunicorn worker processes (its multiprocess mode: each process writes
its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, the scrape sums them). ``priorauth-cds
serve`` points that variable at a private directory it creates (0700, empty) before anything imports the
client, removes it on exit, and marks each exited worker dead (``child_exit``).

Labels carry only fixed vocabularies: the URL rule (``/cds-services/<service_id>``, never the raw path),
the method and status, the service id of a known service, the decision, the prefetch key (a template name),
where the key's data came from and a failure class. Never a patient id, a token, a URL or PHI.

The method label is one of ``GET``, ``POST``, ``OPTIONS``, ``HEAD`` or ``other``: any token is a valid HTTP
method, and one series per invented name would grow the scrape (and every worker's files) without bound. With
``CDS_METRICS`` off nothing is recorded at all (the call sites check ``config.metrics``).

Access (``api.py``): the route answers 404 unless ``CDS_METRICS`` is on; then, with ``CDS_METRICS_TOKEN``
set, only to ``Authorization: Bearer <token>`` (401 otherwise), and without it only to a loopback client
whose request carries no proxy header (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``), so a reverse proxy
on the same host does not expose it (404 otherwise). A proxy that adds none of those headers would make every
client loopback, so with JWT issuers configured (an exposed deployment) start-up refuses ``CDS_METRICS``
without ``CDS_METRICS_TOKEN`` (``Config.validate``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OWNER_PID: dict[str, int] = {}


def private_multiprocess_dir() -> str:
    """Create an empty 0700 directory for the workers' metric files and point ``PROMETHEUS_MULTIPROC_DIR`` at it.

    Always a fresh one (an inherited value is replaced): files left by an earlier run would be summed in.
    """
    path = tempfile.mkdtemp(prefix="priorauth-cds-metrics-")  # mode 0700, owned by us
    os.chmod(path, 0o700)
    os.environ[ENV] = path
    _OWNER_PID[path] = os.getpid()
    return path


def remove_multiprocess_dir(path: str) -> None:
    """Remove the directory, in the process that created it only (forked workers unwind through the caller)."""
    if _OWNER_PID.get(path) == os.getpid():
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(ENV) == path:
            del os.environ[ENV]


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit``: drop the dead worker's live gauges (counters and histograms are kept)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Metrics:
    """The metric objects, created on first use: after ``PROMETHEUS_MULTIPROC_DIR`` is set, which the client
    reads when it is first imported."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter(
            "priorauth_cds_http_requests_total",
            "HTTP requests answered, by URL rule (never the raw path), method and status.",
            ["route", "method", "status"],
        )
        self.hook_seconds = Histogram(
            "priorauth_cds_hook_duration_seconds",
            "Time to answer a hook call (parse, FHIR fallback, evaluation, storage), by service.",
            ["service"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.decisions = Counter(
            "priorauth_cds_decisions_total",
            "Orders evaluated, by decision (met, not-met, incomplete, refer).",
            ["decision"],
        )
        self.prefetch_keys = Counter(
            "priorauth_cds_prefetch_keys_total",
            "Prefetch keys of hook calls, by key, origin (prefetch, fetched, not-applicable, failed) and failure "
            "class.",
            ["key", "origin", "reason"],
        )


_metrics: _Metrics | None = None
_lock = threading.Lock()


def _m() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


_DECISIONS = frozenset({"met", "not-met", "incomplete", "refer"})
METHODS = frozenset({"GET", "POST", "OPTIONS", "HEAD"})


def failure_class(reason: str | None) -> str:
    """A bounded label for a fetch failure code: HTTP statuses by class (``http-404`` -> ``http-4xx``)."""
    if not reason:
        return "none"
    if reason.startswith("http-") and len(reason) == 8:
        return f"http-{reason[5]}xx"
    return reason[:40] if reason.replace("-", "").isalnum() else "other"


def record_request(route: str, method: str, status: int) -> None:
    _m().requests.labels(route=route, method=method_label(method), status=str(status)).inc()


def method_label(method: str) -> str:
    """One of the fixed method labels: the methods this API serves, else ``other``."""
    return method if method in METHODS else "other"


def record_hook(service: str, seconds: float, decisions: Iterable[str]) -> None:
    _m().hook_seconds.labels(service=service).observe(seconds)
    for decision in decisions:
        _m().decisions.labels(decision=decision if decision in _DECISIONS else "other").inc()


def record_prefetch(origin: Mapping[str, str], failed: Mapping[str, str]) -> None:
    """Per key of a hook call over HTTP (the start-up warm-up and ``priorauth-cds evaluate`` are not counted)."""
    from flask import has_request_context

    if not has_request_context():
        return
    for key, where in origin.items():
        _m().prefetch_keys.labels(key=key, origin=where, reason=failure_class(failed.get(key))).inc()


def exposition() -> bytes:
    """The metrics in the Prometheus text format: summed over every worker when in multiprocess mode."""
    from prometheus_client import CollectorRegistry, generate_latest

    _m()
    directory = os.environ.get(ENV)
    if directory and Path(directory).is_dir():
        from prometheus_client import multiprocess

        registry: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return bytes(generate_latest(registry))
    from prometheus_client import REGISTRY

    return bytes(generate_latest(REGISTRY))
