"""In-process latency of ``HookHandler.handle``: the typical request, and how cost grows with chart size.

Everything runs in this process on one thread, as one gunicorn worker would run it, with the handler
built the way ``create_app`` builds it. ``warm`` is the steady state of a worker (the concept and
lookup memos hold what earlier requests saw); ``cold`` empties them before every call, the worst case
of a chart whose every code is new to the worker.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload import CHART_SIZES, TYPICAL_SIZE, hook_request

SERVICE_ID = "everolimus-order-sign"


@dataclass
class Series:
    """Wall-clock milliseconds of repeated calls, with the handler's own stage timings."""

    label: str
    samples_ms: list[float]
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    #: Process CPU per call over the timed calls (``time.process_time``; warm-up and collection excluded).
    cpu_ms: float = 0.0

    def pct(self, q: float) -> float:
        return percentile(self.samples_ms, q)

    def stage_medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.stages_ms.items()}


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def make_handler(with_store: bool) -> tuple[Any, Callable[[], None]]:
    """A handler as the app builds it (optionally with a SQLite audit store on disk) and its cleanup.

    Startup objects are then frozen out of the garbage collector, as ``priorauth-cds serve`` does in the
    gunicorn master before forking, so the numbers are those of a worker.
    """
    from cds_service.config import Config
    from cds_service.policy.engine import load_policy
    from cds_service.service import HookHandler
    from fhir_mappings.codes import load_code_tables

    tables = load_code_tables()
    policy = load_policy(vocabulary=tables)
    gc.collect()
    gc.freeze()
    if not with_store:
        return HookHandler(Config.from_env(), tables, policy, store=None), lambda: None
    from cds_service.store import Store

    folder = tempfile.TemporaryDirectory(prefix="priorauth-bench-")
    store = Store(f"sqlite:///{Path(folder.name) / 'audit.sqlite3'}")

    def cleanup() -> None:
        store.dispose()
        folder.cleanup()

    return HookHandler(Config.from_env(), tables, policy, store=store), cleanup


def clear_memos() -> bool:
    """Empty the per-worker memos (False when this version of the code has none)."""
    from fhir_mappings import record
    from fhir_mappings.codes import load_code_tables

    clear = getattr(record, "clear_validation_caches", None)
    if clear is None:
        return False
    clear()
    tables = load_code_tables()
    for name in ("_text_products", "_text_ingredients", "_condition_rows"):
        getattr(tables, name).clear()
    return True


def measure(
    handler: Any, payload: dict[str, Any], label: str, *, iterations: int, warmup: int = 5, cold: bool = False
) -> Series:
    """Call ``handle`` repeatedly on the same request, each time with a fresh ``hookInstance`` (as an EHR sends it,
    so an audit store writes every call); wall time per call, CPU per call and stage medians."""
    requests = fresh_instances(payload)
    for _ in range(warmup):
        handler.handle(SERVICE_ID, next(requests))
    series = Series(label, [])
    gc.collect()
    cpu = time.process_time()
    for _ in range(iterations):
        if cold:
            clear_memos()
        request = next(requests)
        started = time.perf_counter()
        outcome = handler.handle(SERVICE_ID, request)
        series.samples_ms.append((time.perf_counter() - started) * 1000)
        for name, ms in outcome.timings.stages.items():
            series.stages_ms.setdefault(name, []).append(ms)
    series.cpu_ms = (time.process_time() - cpu) * 1000 / max(iterations, 1)
    return series


def iterations_for(size: int, budget_s: float) -> int:
    """Enough calls for stable percentiles within a time budget (assumes ~0.05 ms per resource)."""
    return max(7, min(400, int(budget_s * 1000 / (2 + 0.05 * size))))


@dataclass
class Growth:
    """Latency against chart size and a least-squares line through the medians."""

    sizes: list[int]
    p50_ms: list[float]
    p95_ms: list[float]
    slope_ms: float
    intercept_ms: float
    r_squared: float

    def per_resource_us(self) -> list[float]:
        return [p * 1000 / s for p, s in zip(self.p50_ms, self.sizes)]

    def marginal_us(self) -> list[float]:
        """Cost of each added resource between consecutive sizes (flat when growth is linear)."""
        pairs = zip(zip(self.sizes, self.p50_ms), zip(self.sizes[1:], self.p50_ms[1:]))
        return [(t2 - t1) * 1000 / (s2 - s1) for (s1, t1), (s2, t2) in pairs]


def fit(sizes: list[int], values: list[float]) -> tuple[float, float, float]:
    """(slope, intercept, R^2) of the least-squares line."""
    mean_x, mean_y = statistics.fmean(sizes), statistics.fmean(values)
    sxx = sum((x - mean_x) ** 2 for x in sizes)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, values)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in values)
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(sizes, values))
    return slope, intercept, 1 - residual / total if total else 1.0


def growth(handler: Any, budget_s: float, sizes: tuple[int, ...] = CHART_SIZES) -> tuple[Growth, list[Series]]:
    """p50/p95 per chart size (warm) and the linear fit."""
    runs = [
        measure(handler, hook_request(size), f"chart {size}", iterations=iterations_for(size, budget_s))
        for size in sizes
    ]
    p50 = [run.pct(50) for run in runs]
    slope, intercept, r2 = fit(list(sizes), p50)
    return Growth(list(sizes), p50, [run.pct(95) for run in runs], slope, intercept, r2), runs


def typical(handler: Any, iterations: int) -> dict[str, Series]:
    """The typical request: warm and cold, without the audit store."""
    payload = hook_request(TYPICAL_SIZE)
    out = {"warm": measure(handler, payload, "typical, warm", iterations=iterations)}
    if clear_memos():
        out["cold"] = measure(handler, payload, "typical, cold memos", iterations=iterations, cold=True)
    return out


# ----------------------------------------------------------------------------- issue 18: A/B and read resources


def fresh_instances(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The request again and again, each time with a new ``hookInstance``, as an EHR sends it."""
    while True:
        yield {**payload, "hookInstance": str(uuid.uuid4())}


def _median_call_ms(handler: Any, payload: dict[str, Any], calls: int) -> float:
    requests = fresh_instances(payload)
    samples = []
    for _ in range(calls):
        request = next(requests)
        started = time.perf_counter()
        handler.handle(SERVICE_ID, request)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


@dataclass
class AB:
    """Paired medians of two variants, measured alternately in one process (A = before the change, B = after)."""

    label: str
    a_ms: list[float]
    b_ms: list[float]

    @property
    def a(self) -> float:
        return statistics.median(self.a_ms)

    @property
    def b(self) -> float:
        return statistics.median(self.b_ms)

    @property
    def saved_ms(self) -> float:
        """Median of the per-round differences (pairs measured back to back share the machine's state)."""
        return statistics.median(a - b for a, b in zip(self.a_ms, self.b_ms))


def ab_validation(handler: Any, payloads: dict[str, dict[str, Any]], rounds: int, calls: int = 9) -> list[AB]:
    """fhir_core's own per-element Python validation (A: the shim uninstalled) against
    ``fhir_mappings.fast_validation`` (B), alternating every round."""
    from fhir_mappings import fast_validation

    results = {name: AB(name, [], []) for name in payloads}
    try:
        for round_ in range(rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for fast in order:
                (fast_validation.install if fast else fast_validation.uninstall)()
                for name, payload in payloads.items():
                    _median_call_ms(handler, payload, 2)  # settle caches after the switch
                    ms = _median_call_ms(handler, payload, calls)
                    (results[name].b_ms if fast else results[name].a_ms).append(ms)
    finally:
        fast_validation.install()
    return list(results.values())


def read_growth(handler: Any, sizes: tuple[int, ...], calls: int) -> tuple[list[float], float, float]:
    """p50 per read-chart size (every added resource one the policy reads), and the fitted ms per added resource."""
    p50 = [_median_call_ms(handler, hook_request(size, read=True), calls) for size in sizes]
    slope, _intercept, r2 = fit(list(sizes), p50)
    return p50, slope, r2


@dataclass
class StoreAB:
    """The audit write before (A: whole prefill, stdlib json) and after (B: compact prefill, orjson)."""

    ms: AB
    bytes_per_call_a: float
    bytes_per_call_b: float
    prefill_rows_per_call: float


def _database_bytes(store: Any) -> int:
    """Bytes the SQLite database takes once its WAL is folded in (pages in use times page size)."""
    store.checkpoint()
    with store._transaction("bench size", readonly=True) as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
        size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
    return int((pages - free) * size)


def ab_store(payload: dict[str, Any], rounds: int, calls: int) -> StoreAB:
    """Two handlers with their own SQLite files, called alternately with fresh hookInstances; A stores the prefill
    whole through ``json.dumps`` as before issue 18, B as the store does now. Time per call and database growth."""
    import json as stdlib_json

    from cds_service import store as store_module
    from cds_service.dtr import stored

    new_handler, new_cleanup = make_handler(with_store=True)
    real_text, real_compact = store_module._json_text, stored.compact
    store_module._json_text = stdlib_json.dumps  # type: ignore[assignment]  # the engine A is built with
    try:
        old_handler, old_cleanup = make_handler(with_store=True)
    finally:
        store_module._json_text = real_text

    def whole(answers: Any) -> Any:
        return {k: dict(v) for k, v in answers.items()}

    ab = AB("typical, with audit store", [], [])
    try:
        _median_call_ms(new_handler, payload, 5)
        stored.compact = whole  # type: ignore[assignment]
        _median_call_ms(old_handler, payload, 5)
        stored.compact = real_compact
        start = {"a": _database_bytes(old_handler.store), "b": _database_bytes(new_handler.store)}
        for round_ in range(rounds):
            for variant in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
                stored.compact = whole if variant == "a" else real_compact  # type: ignore[assignment]
                handler = old_handler if variant == "a" else new_handler
                (ab.a_ms if variant == "a" else ab.b_ms).append(_median_call_ms(handler, payload, calls))
        stored.compact = real_compact
        total = rounds * calls
        grown = {
            "a": (_database_bytes(old_handler.store) - start["a"]) / total,
            "b": (_database_bytes(new_handler.store) - start["b"]) / total,
        }
        with new_handler.store._transaction("bench rows", readonly=True) as connection:
            prefills = connection.exec_driver_sql(
                "SELECT count(*) FROM coverage_assertions WHERE dtr_prefill IS NOT NULL"
            ).scalar_one()
            assertions = connection.exec_driver_sql("SELECT count(*) FROM coverage_assertions").scalar_one()
    finally:
        stored.compact = real_compact
        new_cleanup()
        old_cleanup()
    return StoreAB(ab, grown["a"], grown["b"], prefills / max(1, assertions))
