"""The FHIR fallback path: no prefetch, a real FHIR R4 server on 127.0.0.1 (sekmet) seeded with the chart.

Each prefetch template's query is timed on its own (through the service's own ``gather`` with one
key, so paging, headers and parsing are the production ones), then the whole hook is timed. When the
queries run in parallel, the hook's prefetch stage costs about as much as the slowest query, not the
sum of them all.

sekmet is one Python process that answers one query at a time, so on loopback concurrent queries
queue inside it; "all queries at once from a plain client" measures that floor. A second round puts a
delaying proxy (on loopback too) in front of it, standing for the network distance to a real EHR's
FHIR server: there, waiting dominates and parallel fetching shows plainly.
"""

from __future__ import annotations

import http.client
import secrets
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests
from workload import chart, load_scenario

SERVICE_ID = "everolimus-order-sign"


@dataclass
class FallbackResult:
    """Medians in milliseconds over ``rounds`` repetitions."""

    chart_size: int
    rounds: int
    delay_ms: float
    per_query_ms: dict[str, float]
    query_counts: dict[str, int]
    plain_concurrent_ms: float
    hook_ms: float
    hook_prefetch_ms: float
    hook_p95_ms: float

    @property
    def slowest_query(self) -> tuple[str, float]:
        key = max(self.per_query_ms, key=lambda k: self.per_query_ms[k])
        return key, self.per_query_ms[key]

    @property
    def sum_of_queries_ms(self) -> float:
        return sum(self.per_query_ms.values())


def _seed(size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chart plus the resources it references that prefetch does not carry (the payer Organization)."""
    base = load_scenario()
    resources = chart(size, base)
    resources += [r for r in base["resources"] if r["resourceType"] == "Organization"]
    return resources, base


def _time_query(key: str, context: dict[str, Any], base_url: str, token: str, config: Any) -> tuple[float, int]:
    from cds_service.discovery import PREFETCH_TEMPLATES
    from cds_service.prefetch import gather

    with requests.Session() as session:
        started = time.perf_counter()
        outcome = gather(
            templates=PREFETCH_TEMPLATES,
            context=context,
            prefetch=None,
            fhir_server=base_url,
            access_token=token,
            config=config,
            session=session,
            keys=[key],
        )
        elapsed = (time.perf_counter() - started) * 1000
    if outcome.failed:
        raise RuntimeError(f"fallback query {key} failed: {outcome.failed}")
    return elapsed, len(outcome.resources.get(key, []))


class DelayProxy:
    """A loopback HTTP proxy that waits ``delay_ms`` before forwarding each GET (and rewrites the base URL)."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                time.sleep(delay_ms / 1000)
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")}
                    connection.request("GET", self.path, headers=headers)
                    answer = connection.getresponse()
                    body = answer.read().replace(proxy.upstream_origin.encode(), proxy.origin.encode())
                    status, content_type = answer.status, answer.getheader("Content-Type", "application/fhir+json")
                finally:
                    connection.close()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.upstream_origin = f"http://{self.upstream_host}:{self.upstream_port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = self.origin + parts.path
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _plain_concurrent(urls: list[str], token: str) -> float:
    """All template queries (first pages) at once from a bare thread pool: what the server itself allows."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

    def get(url: str) -> None:
        requests.get(url, headers=headers, timeout=30).raise_for_status()

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        started = time.perf_counter()
        list(pool.map(get, urls))
        return (time.perf_counter() - started) * 1000


def run(size: int = 50, rounds: int = 20, delays_ms: tuple[float, ...] = (0.0, 50.0)) -> list[FallbackResult]:
    """Start a seeded FHIR server; per delay, time each template query alone and the whole hook."""
    from tests.fhir_server import start_fhir_server

    token = secrets.token_urlsafe(16)
    resources, base = _seed(size)
    results = []
    with start_fhir_server(resources, token, validation="warn") as server:
        for delay in delays_ms:
            proxy = DelayProxy(server.base_url, delay) if delay > 0 else None
            try:
                results.append(_measure(proxy.base_url if proxy else server.base_url, token, base, size, rounds, delay))
            finally:
                if proxy is not None:
                    proxy.stop()
    return results


def _measure(base_url: str, token: str, base: dict[str, Any], size: int, rounds: int, delay: float) -> FallbackResult:
    """Per-query and whole-hook medians against one FHIR base URL."""
    from cds_service.config import Config
    from cds_service.discovery import PREFETCH_TEMPLATES
    from cds_service.policy.engine import load_policy
    from cds_service.prefetch import fill_template
    from cds_service.service import HookHandler
    from fhir_mappings.codes import load_code_tables
    from tests.scenarios import request_for

    config = Config.from_env()
    tables = load_code_tables()
    handler = HookHandler(config, tables, load_policy(vocabulary=tables), store=None)
    payload = request_for(base, prefetch=False, fhir_server=base_url, token=token)
    context = {"patientId": base["patientId"], "userId": base["userId"]}
    queries = {key: fill_template(template, context) for key, template in PREFETCH_TEMPLATES.items()}
    keys = [key for key, query in queries.items() if query is not None]
    urls = [f"{base_url}/{queries[key]}" for key in keys]
    for _ in range(3):  # warm up both sides (server caches, code paths)
        handler.handle(SERVICE_ID, payload)
        for key in keys:
            _time_query(key, context, base_url, token, config)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    counts: dict[str, int] = {}
    plain: list[float] = []
    hook: list[float] = []
    stage: list[float] = []
    for _ in range(rounds):
        for key in keys:
            elapsed, counts[key] = _time_query(key, context, base_url, token, config)
            samples[key].append(elapsed)
        plain.append(_plain_concurrent(urls, token))
        started = time.perf_counter()
        outcome = handler.handle(SERVICE_ID, payload)
        hook.append((time.perf_counter() - started) * 1000)
        stage.append(outcome.timings.stages["prefetch"])
        if outcome.evaluated != 1:
            raise RuntimeError("the fallback hook did not evaluate the everolimus order")
    return FallbackResult(
        chart_size=size,
        rounds=rounds,
        delay_ms=delay,
        per_query_ms={key: statistics.median(values) for key, values in samples.items()},
        query_counts=counts,
        plain_concurrent_ms=statistics.median(plain),
        hook_ms=statistics.median(hook),
        hook_prefetch_ms=statistics.median(stage),
        hook_p95_ms=sorted(hook)[max(0, round(0.95 * len(hook)) - 1)],
    )
