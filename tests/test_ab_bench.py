"""benchmarks/ab.py: revisions measured alternately, differences paired by round (issue 18 "the A/B of each change")."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import ab


def arm(label: str, cpu: list[float]) -> ab.Arm:
    stages = {"parse": 0.1, "prefetch": 0.1, "record": 0.5, "evaluate": 0.6, "render": 0.3}
    return ab.Arm(label, label, ROOT, [{"cpu_ms": c, "p50_ms": c, "stages": stages} for c in cpu])


def test_saving_is_the_median_of_paired_round_differences() -> None:
    # Round 3 ran while the machine was busy for both arms: pairing cancels it, comparing medians would not.
    before, after = arm("A", [2.0, 2.1, 9.0]), arm("B", [1.5, 1.7, 8.0])
    assert ab.paired(before, after, "cpu_ms") == pytest.approx(0.5)
    assert before.median("cpu_ms") == pytest.approx(2.1)
    assert math.isnan(ab.paired(before, after, "service_cpu_ms"))  # not measured: no number, not zero


def test_markdown_names_each_revision_and_each_step() -> None:
    data = {
        "rounds": 3,
        "calls": 10,
        "http_seconds": None,
        "arms": [
            {
                "label": a.label,
                "cpu_ms": a.median("cpu_ms"),
                "p50_ms": a.median("p50_ms"),
                "stages": a.rounds[0]["stages"],
            }
            for a in (arm("old", [2.0]), arm("new", [1.5]))
        ],
        "steps": [{"before": "old", "after": "new", "cpu_saved_ms": 0.5, "p50_saved_ms": 0.5}],
    }
    text = "\n".join(ab.markdown(data))
    assert "| old | 2.000 ms |" in text and "| new | 1.500 ms |" in text
    assert "old → new: handler CPU saved 0.500 ms per call" in text


def test_a_committed_revision_is_measured_beside_the_working_tree() -> None:
    shared_path("acceptance", "scenarios")
    inside = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, check=False)
    if inside.returncode != 0:
        pytest.skip("not a git checkout")
    data = ab.measure(["HEAD", "WORKTREE"], rounds=1, calls=5, http_seconds=None)
    labels = [a["label"] for a in data["arms"]]
    assert labels[1].endswith("(working tree)") and not labels[0].endswith("(working tree)")
    for measured in data["arms"]:
        assert measured["cpu_ms"] > 0 and measured["stages"]["evaluate"] > 0
    assert len(data["steps"]) == 1 and math.isfinite(data["steps"][0]["cpu_saved_ms"])
