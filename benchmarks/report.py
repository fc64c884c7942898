"""Machine description, the targets with pass/miss, and the Markdown and PNG outputs of the benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self


@dataclass(frozen=True)
class Target:
    """One line of the results table: what is measured, the bar, the number, and whether it passes."""

    name: str
    bar: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("pass" if self.passed else "**miss**")


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and library versions, load, and the code's git revision."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "libraries": _versions(("fhir.resources", "pydantic", "Flask", "gunicorn", "orjson", "SQLAlchemy")),
        "git": _git_revision(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def speed_index(repeats: int = 300) -> float:
    """Median ms of a fixed pure-Python loop: compares runs across machines, or one VM across time."""
    numbers = list(range(100_000))
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        sum(numbers), sum(numbers), sum(numbers)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return samples[len(samples) // 2]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of the machine's CPU in use over ``seconds`` (0..1), by anyone."""
    busy0, total0 = _cpu_jiffies()
    time.sleep(seconds)
    busy1, total1 = _cpu_jiffies()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_until_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit_s``) for other work on the machine to stop; the busy share last seen."""
    deadline = time.monotonic() + limit_s
    share = busy_fraction()
    while share > threshold and time.monotonic() < deadline:
        share = busy_fraction(2.0)
    return share


class Interference:
    """CPU used by other processes while a section ran: all CPU time minus this process and its children's.

    Children count once they have been waited for, so a section must stop its server before it ends.
    """

    def __enter__(self) -> Self:
        self.start = (_cpu_jiffies(), _own_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        (busy0, _), own0, t0 = self.start
        (busy1, _), own1 = _cpu_jiffies(), _own_seconds()
        ticks = os.sysconf("SC_CLK_TCK")
        elapsed = time.monotonic() - t0
        other = (busy1 - busy0) / ticks - (own1 - own0)
        self.share = max(0.0, other / max(1e-9, elapsed * (os.cpu_count() or 1)))


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def _git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cds_service", "fhir_mappings"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def describe_machine(info: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB; "
        f"{info['python']} on {info['os']}; {libs}"
    )


def fmt(value: float | None, unit: str = "ms", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}".strip()


def markdown(
    info: dict[str, Any],
    targets: list[Target],
    sections: list[tuple[str, list[str]]],
    command: str,
    loads: dict[str, Any],
) -> str:
    """The whole latest.md: machine, targets table, then each section's own table."""
    others = loads["interference"]
    busy = any(share > 0.05 for share in others.values())
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}` on {info['date']} (code {info['git']}).",
        "",
        f"**Machine:** {describe_machine(info)}.",
        "",
        (
            "**Speed index** (median of a fixed pure-Python loop, `report.speed_index`; lower is faster): "
            f"{loads['speed_start']:.2f} ms at start, {loads['speed_end']:.2f} ms at end."
        ),
        "",
        (
            f"**Load average** (1/5/15 min) at start {loads['start']}, at end {loads['end']}. CPU used by other "
            "processes while each section ran (share of the whole machine): "
            + ", ".join(f"{name} {share:.0%}" for name, share in others.items())
            + (
                ". Other work was running: expect noisier percentiles than on an idle machine."
                if busy
                else "; the machine was otherwise idle."
            )
        ),
        "",
        "## Targets",
        "",
        "| target | bar | measured | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t.name} | {t.bar} | {t.measured} | {t.verdict} |" for t in targets]
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def plot_growth(growth: Any, path: Path, machine_line: str) -> bool:
    """latency-vs-chart-size.png: p50/p95 per chart size with the fitted line, and the cost per resource."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("benchmark: matplotlib is not installed (the 'bench' extra); skipping the PNG", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    sizes = growth.sizes
    left.plot(sizes, growth.p50_ms, "o-", label="p50")
    left.plot(sizes, growth.p95_ms, "s--", label="p95", alpha=0.7)
    xs = [0, max(sizes)]
    left.plot(
        xs,
        [growth.intercept_ms + growth.slope_ms * x for x in xs],
        ":",
        color="grey",
        label=f"fit: {growth.intercept_ms:.1f} ms + {growth.slope_ms * 1000:.1f} us/resource (R² {growth.r_squared:.4f})",
    )
    left.plot([5000], [150], "rv", label="target at 5000 resources: ≤ 150 ms")
    left.set_xlabel("resources in the chart (prefetch)")
    left.set_ylabel("HookHandler.handle, ms")
    left.set_title("In-process latency vs chart size")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.semilogx(sizes, growth.per_resource_us(), "o-", label="p50 / resources")
    right.semilogx(sizes[1:], growth.marginal_us(), "s--", label="marginal: Δp50 / Δresources")
    right.set_xlabel("resources in the chart (log)")
    right.set_ylabel("µs per resource")
    right.set_title("Cost per resource (flat marginal cost = linear growth)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.suptitle(machine_line, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
