"""benchmarks/bench.py: the floor and the service measured in paired rounds, the ratio a median of same-moment ratios
(issue 18 "CPU per call for the service and for the floor under the same worker model and load")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench


class FakeServer:
    """CPU seconds that grow by the CPU per call of the route just loaded, which drifts by round (the machine)."""

    def __init__(self, per_call_ms: dict[str, list[float]]) -> None:
        self.per_call_ms = per_call_ms
        self.cpu = 0.0
        self.order: list[str] = []

    def run_load(self, url: str, path: Path, **spec: Any) -> dict[str, Any]:
        name = "floor" if url.endswith("floor") else "service"
        self.order.append(name)
        round_index = sum(1 for n in self.order if n == name) - 1
        self.cpu += 100 * self.per_call_ms[name][round_index] / 1000
        return {
            "sent": 100,
            "latencies_ms": [1.0] * 100,
            "statuses": {"200": 100},
            "errors": {},
            "elapsed_s": spec["time_limit"],
            "client_cpu_s": 0.1,
            "connections_opened": 8,
        }


def test_rounds_alternate_and_the_ratio_is_the_median_of_paired_ratios(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The machine slows down 2x in round 3 for both routes: paired, the ratio does not move.
    floor = [0.6, 0.6, 1.2, 0.6, 0.6]
    service = [2.4, 2.5, 4.8, 2.3, 2.4]
    fake = FakeServer({"floor": floor, "service": service})
    monkeypatch.setattr(bench, "run_load", fake.run_load)
    monkeypatch.setattr(bench, "cpu_seconds", lambda pids: fake.cpu)
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    urls = {"floor": "http://x/benchmark/floor", "service": "http://x/cds-services/s"}
    out = bench.cpu_rounds(urls, body, "instance", "acceptance request", [1], duration=6.0)
    assert fake.order == ["floor", "service", "service", "floor", "floor", "service", "service", "floor"] + [
        "floor",
        "service",
    ]
    got = out["acceptance request@service"]
    assert got["ratios"] == pytest.approx(sorted(s / f for s, f in zip(service, floor, strict=True)))
    assert got["ratio"] == pytest.approx(4.0)  # median of 4.0, 4.17, 4.0, 3.83, 4.0
    assert got["server_cpu_ms"] == pytest.approx(2.4)  # the median round
    assert out["acceptance request@floor"]["server_cpu_ms"] == pytest.approx(0.6)
    assert got["rounds_cpu_ms"] == pytest.approx(service)
    assert got["body_bytes"] == 2
