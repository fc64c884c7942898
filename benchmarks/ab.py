"""A/B of whole code revisions, measured alternately on the same machine in the same minutes.

    .venv/bin/python benchmarks/ab.py 3e9b4fe              # that commit against the working tree
    .venv/bin/python benchmarks/ab.py 3e9b4fe HEAD~2 HEAD  # each revision against the one before it
    .venv/bin/python benchmarks/ab.py 3e9b4fe --http       # also server CPU per call under gunicorn

Why: absolute times on a shared VM drift 2-3x between days and by tens of percent within a run, so a change is
only shown by measuring before and after alternately (A, B, A, B ...) and taking the median of the paired
differences. ``bench.py`` does that inside one process for the changes that can be switched at run time (the
validator shim, the audit-store encoding); this script does it for any change, by revision: each revision is
exported with ``git archive`` to a temporary folder and imported from there (``PYTHONPATH``) by a fresh
process, with this checkout's virtualenv and this checkout's workload (``workload.py``), so every arm answers the
same requests. Revisions that need other dependencies than the virtualenv has cannot be compared this way.

Per round and revision: one process calls ``HookHandler.handle`` on the acceptance request with a SQLite audit
store on disk (fresh ``hookInstance`` each call, as EHRs send) and reports CPU per call and stage medians; with
``--http`` a gunicorn server of that revision is started and its workers' CPU per answer is measured for the
hook and for the parse-only floor route under 8 keep-alive connections, closed loop. Output: Markdown on stdout
and JSON (``--json``), which ``bench.py --ab`` puts into latest.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Run in a fresh interpreter whose ``PYTHONPATH`` starts with the revision's tree: the handler's CPU per call.
PROBE = r"""
import json, os, sys
sys.path.insert(0, os.environ["AB_WORKLOAD"])
import inprocess
from workload import acceptance_size, hook_request

calls = int(os.environ["AB_CALLS"])
handler, cleanup = inprocess.make_handler(with_store=True)
payload = hook_request(acceptance_size())
try:
    series = inprocess.measure(handler, payload, "ab", iterations=calls, warmup=50)
finally:
    cleanup()
print(json.dumps({"cpu_ms": series.cpu_ms, "p50_ms": series.pct(50), "stages": series.stage_medians()}))
"""


@dataclass
class Arm:
    """One revision: where its code was exported, and what each round measured."""

    rev: str
    label: str
    tree: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        values = [r[key] for r in self.rounds if key in r]
        return statistics.median(values) if values else float("nan")

    def stage(self, name: str) -> float:
        values = [r["stages"][name] for r in self.rounds if name in r.get("stages", {})]
        return statistics.median(values) if values else float("nan")


def export(rev: str, into: Path) -> Path:
    """The revision's files (``git archive``), beside a link to the shared material the code looks for."""
    tree = into / rev.replace("/", "_").replace("~", "-").replace("^", "-")
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True, capture_output=True)
    tar_path = into / "rev.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(tree, filter="data")
    tar_path.unlink()
    return tree


def label_of(rev: str) -> str:
    if rev == "WORKTREE":
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=True
        )
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return f"{head.stdout.strip()}{'+changes' if dirty.stdout.strip() else ''} (working tree)"
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() or rev


def env_for(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree), AB_WORKLOAD=str(HERE))


def probe(arm: Arm, calls: int) -> dict[str, Any]:
    env = dict(env_for(arm.tree), AB_CALLS=str(calls))
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=arm.tree, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{arm.label}: the in-process probe failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def http_round(arm: Arm, seconds: float) -> dict[str, Any]:
    """Server CPU per answer for the hook and the floor, gunicorn started from the revision's tree."""
    for folder in (str(HERE), str(ROOT)):  # workload.py reads tests/scenarios.py
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import orjson
    from http_bench import FLOOR_PATH, HOOK_PATH, cpu_seconds, run_load, start_server
    from workload import acceptance_size, hook_request

    body_dir = Path(tempfile.mkdtemp(prefix="priorauth-ab-"))
    body = body_dir / "acceptance.json"
    request = hook_request(acceptance_size())
    body.write_bytes(orjson.dumps(request))
    server = start_server({"PYTHONPATH": str(arm.tree)})  # the server imports the revision's code
    out: dict[str, Any] = {}
    try:
        for name, path in (("floor", FLOOR_PATH), ("service", HOOK_PATH)):
            url = server.url + path
            spec = {"concurrency": 8, "fresh_uuid": request["hookInstance"]}
            run_load(url, body, mode="closed", requests=300, time_limit=30, **spec)
            pids = [server.process.pid, *server.worker_pids()]
            before = cpu_seconds(pids)
            result = run_load(url, body, mode="closed", requests=1_000_000, time_limit=seconds, **spec)
            answered = int(result["statuses"].get("200", 0))
            if answered == 0 or len(result["statuses"]) != 1:
                raise SystemExit(f"{arm.label}: {name} answered {result['statuses']}")
            out[f"{name}_cpu_ms"] = (cpu_seconds(pids) - before) * 1000 / answered
        out["ratio"] = out["service_cpu_ms"] / out["floor_cpu_ms"]
    finally:
        server.stop()
        shutil.rmtree(body_dir, ignore_errors=True)
    return out


def paired(a: Arm, b: Arm, key: str) -> float:
    """Median of the per-round differences A - B (positive: B is cheaper)."""
    pairs = [ra[key] - rb[key] for ra, rb in zip(a.rounds, b.rounds, strict=False) if key in ra and key in rb]
    return statistics.median(pairs) if pairs else float("nan")


def measure(
    revs: list[str], rounds: int, calls: int, http_seconds: float | None, *, http_ends: bool = False
) -> dict[str, Any]:
    """Every revision in-process; with ``http_seconds`` also under gunicorn -- only the first and the last one
    when ``http_ends`` (a chain of many changes: each step in-process, the whole change over HTTP)."""
    workdir = Path(tempfile.mkdtemp(prefix="priorauth-ab-"))
    try:
        arms = [Arm(rev, label_of(rev), ROOT if rev == "WORKTREE" else export(rev, workdir / "trees")) for rev in revs]
        for number in range(rounds):
            order = arms if number % 2 == 0 else list(reversed(arms))  # neither arm always runs first
            for arm in order:
                result = probe(arm, calls)
                if http_seconds and (not http_ends or arm is arms[0] or arm is arms[-1]):
                    result.update(http_round(arm, http_seconds))
                arm.rounds.append(result)
                print(f"round {number + 1}/{rounds} {arm.label}: " + json.dumps(result), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    steps = []
    for before, after in itertools.pairwise(arms):
        step = {
            "before": before.label,
            "after": after.label,
            "cpu_saved_ms": paired(before, after, "cpu_ms"),
            "p50_saved_ms": paired(before, after, "p50_ms"),
        }
        if http_seconds and not http_ends:
            step["service_cpu_saved_ms"] = paired(before, after, "service_cpu_ms")
            step["floor_cpu_saved_ms"] = paired(before, after, "floor_cpu_ms")
        steps.append(step)
    if len(arms) > 2 or http_ends:
        first, last = arms[0], arms[-1]
        whole = {
            "before": first.label,
            "after": last.label,
            "cpu_saved_ms": paired(first, last, "cpu_ms"),
            "p50_saved_ms": paired(first, last, "p50_ms"),
            "whole": True,
        }
        if http_seconds:
            whole["service_cpu_saved_ms"] = paired(first, last, "service_cpu_ms")
            whole["floor_cpu_saved_ms"] = paired(first, last, "floor_cpu_ms")
        steps.append(whole)
    return {
        "rounds": rounds,
        "calls": calls,
        "http_seconds": http_seconds,
        "http_ends": http_ends,
        "arms": [
            {
                "rev": arm.rev,
                "label": arm.label,
                "cpu_ms": arm.median("cpu_ms"),
                "p50_ms": arm.median("p50_ms"),
                "stages": {s: arm.stage(s) for s in ("parse", "prefetch", "record", "evaluate", "render")},
                **({k: arm.median(k) for k in ("service_cpu_ms", "floor_cpu_ms", "ratio")} if http_seconds else {}),
                "rounds": arm.rounds,
            }
            for arm in arms
        ],
        "steps": steps,
    }


def markdown(data: dict[str, Any]) -> list[str]:
    http = bool(data["http_seconds"])
    head = "| revision | handler CPU per call | p50 | parse | prefetch | record | evaluate | render + audit write |"
    rule = "|---|---|---|---|---|---|---|---|"
    if http:
        head += " server CPU per call: service | floor | ratio |"
        rule += "---|---|---|"
    lines = [
        f"Each revision exported with `git archive` and run by a fresh process with this checkout's virtualenv and "
        f"workload, alternately ({data['rounds']} rounds; in-process: {data['calls']} acceptance calls per round "
        f"with a SQLite audit store, fresh `hookInstance` each"
        + (
            f"; HTTP: {data['http_seconds']:.0f} s per route, 8 connections, closed loop"
            + (", first and last revision only" if data.get("http_ends") else "")
            if http
            else ""
        )
        + "). Medians over rounds; *saved* is the median of the paired per-round differences.",
        "",
        head,
        rule,
    ]
    for arm in data["arms"]:
        s = arm["stages"]
        row = (
            f"| {arm['label']} | {arm['cpu_ms']:.3f} ms | {arm['p50_ms']:.3f} ms | {s['parse']:.2f} | "
            f"{s['prefetch']:.2f} | {s['record']:.2f} | {s['evaluate']:.2f} | {s['render']:.2f} |"
        )
        if http:
            measured = arm["service_cpu_ms"] == arm["service_cpu_ms"]  # NaN: this revision ran in-process only
            row += (
                f" {arm['service_cpu_ms']:.2f} ms | {arm['floor_cpu_ms']:.2f} ms | {arm['ratio']:.2f} |"
                if measured
                else " — | — | — |"
            )
        lines.append(row)
    lines.append("")
    for step in data["steps"]:
        text = (
            f"- {'whole change: ' if step.get('whole') else ''}{step['before']} → {step['after']}: handler CPU saved "
            f"{step['cpu_saved_ms']:.3f} ms per call (p50 {step['p50_saved_ms']:.3f} ms)"
        )
        if http and "service_cpu_saved_ms" in step:
            text += (
                f"; server CPU per call saved {step['service_cpu_saved_ms']:.3f} ms on the hook, "
                f"{step['floor_cpu_saved_ms']:.3f} ms on the floor"
            )
        lines.append(text + ".")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="+", help="git revisions, oldest first; the working tree is added last")
    parser.add_argument("--no-worktree", action="store_true", help="compare only the revisions given")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=400, help="in-process calls per round and revision")
    parser.add_argument("--http", type=float, nargs="?", const=8.0, default=None, help="seconds per route (8)")
    parser.add_argument("--http-ends", action="store_true", help="HTTP only for the first and the last revision")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    revs = list(args.revs) + ([] if args.no_worktree else ["WORKTREE"])
    if len(revs) < 2:
        parser.error("give two revisions, or one and the working tree")
    data = measure(revs, args.rounds, args.calls, args.http, http_ends=args.http_ends)
    print("\n".join(markdown(data)))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
