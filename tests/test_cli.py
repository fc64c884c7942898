"""The command line a newcomer meets first: usage, version, evaluate (file or stdin), exit codes, plain text,
no unstored coverage-assertion-id, and ``samples load`` against a real FHIR server on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.cli import main
from cds_service.config import Config, default_database_url
from cds_service.samples import DEFAULT_DIR, charts, sample_files
from cds_service.store import Store
from tests.fhir_server import RunningFhirServer, start_fhir_server

SAMPLE = DEFAULT_DIR / "I.A-brand-without-exemestane.json"
SELECT_SAMPLE = DEFAULT_DIR / "order-select-preview.json"
TOKEN = "cli-samples-token"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the user's real database: the default location points into tmp_path."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DATABASE_URL", raising=False)


def run(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console entry point, as a user runs it (stdin/stdout are pipes, not a terminal)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from cds_service.cli import main; sys.exit(main())", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def assertion_ids(value: Any) -> list[str]:
    """Every coverage-assertion-id value anywhere in a response."""
    found: list[str] = []
    if isinstance(value, dict):
        if value.get("url") == "coverage-assertion-id":
            found.append(value["valueString"])
        for member in value.values():
            found += assertion_ids(member)
    elif isinstance(value, list):
        for member in value:
            found += assertion_ids(member)
    return found


# ----------------------------------------------------------------------------- usage and version


def test_bare_command_prints_usage_on_stderr_and_exits_2() -> None:
    done = run()
    assert done.returncode == 2
    assert done.stdout == ""
    assert "usage: priorauth-cds" in done.stderr and "evaluate" in done.stderr and "samples" in done.stderr
    assert "exit codes" in done.stderr


def test_version_is_the_package_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"priorauth-cds {metadata.version('priorauth-cds')}"


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Service ids come from the loaded packs (CDS_POLICY_DIRS adds some), so they are checked after loading them.
    assert main(["evaluate", str(SAMPLE), "--service", "nope"]) == 2
    assert "unknown --service 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_reads_stdin_and_prints_plain_text() -> None:
    done = run("evaluate", "-", stdin=SAMPLE.read_bytes())
    assert done.returncode == 0, done.stderr
    assert "[WARNING] Everolimus PA would be denied" in done.stdout
    assert "I.A.7" in done.stdout and "-> suggestion: Switch to generic" in done.stdout
    for markup in ("**", "*To satisfy:*", "`"):
        assert markup not in done.stdout
    assert "    - I.A.7" in done.stdout  # bullets stay bullets
    # the only stderr line is the note about the left-out id, in plain words
    assert done.stderr.strip() == (
        "priorauth-cds: note: coverage-assertion-id left out: nothing was stored (--store records it)"
    )


def test_evaluate_file_and_stdin_give_the_same_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--json", str(SAMPLE)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    done = run("evaluate", "--json", "-", stdin=SAMPLE.read_bytes())
    assert done.returncode == 0 and done.stderr == ""
    from_stdin = json.loads(done.stdout)
    for body in (from_file, from_stdin):  # uuids differ per run; compare what the prescriber sees
        assert [c["summary"] for c in body["cards"]]
    assert [c["summary"] for c in from_file["cards"]] == [c["summary"] for c in from_stdin["cards"]]


def test_evaluate_picks_the_service_from_the_hook(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--json", str(SELECT_SAMPLE)]) == 0
    assert json.loads(capsys.readouterr().out)["cards"]


def test_no_assertion_id_without_store_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--json", str(SAMPLE)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["systemActions"] and assertion_ids(body) == []
    coverage = body["systemActions"][0]["resource"]["extension"][-1]
    assert {e["url"] for e in coverage["extension"]} >= {"covered", "pa-needed", "reason"}
    assert not (tmp_path / "xdg").exists()


def test_store_records_the_assertion_it_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--json", "--store", str(SAMPLE)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    (assertion_id,) = assertion_ids(json.loads(captured.out))
    database = tmp_path / "xdg" / "priorauth-cds" / "priorauth-cds.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    store = Store(f"sqlite:///{database}")
    try:
        stored = store.get_assertion(assertion_id)
    finally:
        store.dispose()
    assert stored is not None and stored["order_ref"] == "MedicationRequest/ia-brand-order-5"


def test_store_honours_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "nested" / "audit.sqlite3"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    assert main(["evaluate", "--store", str(SAMPLE)]) == 0
    assert "coverage-assertion-id" not in capsys.readouterr().err
    assert database.is_file() and not (tmp_path / "xdg").exists()


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"hook": "patient-view", "hookInstance": "x", "context": {}}', "HTTP 400"),
        (json.dumps({**json.loads(SAMPLE.read_text()), "hook": "order-select"}).encode(), "HTTP 400"),
    ],
    ids=["unknown-hook", "wrong-hook-for-service"],
)
def test_rejected_requests_exit_1_with_plain_words(body: bytes, words: str) -> None:
    done = run("evaluate", "-", "--service", "everolimus-order-sign", stdin=body)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("priorauth-cds: the service rejected standard input (HTTP ")
    assert words in done.stderr and "Traceback" not in done.stderr and "{" not in done.stderr.split(":", 1)[0]
    assert len(done.stderr.strip().splitlines()) == 1


def test_rejected_request_with_json_prints_the_operation_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parent / "nonexistent"
    assert main(["evaluate", "--json", str(path)]) == 2  # unreadable: nothing on stdout
    assert capsys.readouterr().out == ""
    done = run("evaluate", "--json", "-", stdin=b"[]")
    assert done.returncode == 1
    assert json.loads(done.stdout)["resourceType"] == "OperationOutcome"
    assert "the service rejected" in done.stderr


@pytest.mark.parametrize("body", [b"{", b"not json at all", b"<Bundle/>"], ids=["truncated", "text", "xml"])
def test_input_that_is_not_json_exits_2_with_a_plain_line(body: bytes) -> None:
    """Issue 17: a file that is not JSON is an unreadable input (exit 2), not a refusal by the service (exit 1)."""
    done = run("evaluate", "-", stdin=body)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("priorauth-cds: cannot read standard input: request body is not valid JSON")
    assert "HTTP" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "missing.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"priorauth-cds: cannot read {tmp_path / 'missing.json'}: No such file or directory\n"
    assert main(["evaluate", str(tmp_path)]) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err


def test_bad_configuration_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDS_PLAN_PREFIXES", "not json")
    assert main(["evaluate", str(SAMPLE)]) == 2
    assert capsys.readouterr().err.startswith("priorauth-cds: bad configuration: CDS_PLAN_PREFIXES")


def test_uncreatable_database_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{blocker / 'db.sqlite3'}")
    assert main(["evaluate", "--store", str(SAMPLE)]) == 2
    assert "cannot create the SQLite database" in capsys.readouterr().err


# ----------------------------------------------------------------------------- database default


def test_default_database_lives_outside_the_working_tree() -> None:
    assert default_database_url({"XDG_DATA_HOME": "/data"}) == "sqlite:////data/priorauth-cds/priorauth-cds.sqlite3"
    assert (
        default_database_url({"HOME": "/home/u"})
        == "sqlite:////home/u/.local/share/priorauth-cds/priorauth-cds.sqlite3"
    )
    assert default_database_url({"XDG_DATA_HOME": "relative", "HOME": "/h"}).startswith("sqlite:////h/.local/share/")
    assert Config.from_env({"XDG_DATA_HOME": "/x"}).database_url == "sqlite:////x/priorauth-cds/priorauth-cds.sqlite3"
    assert Config.from_env({"DATABASE_URL": "sqlite:///a.db"}).database_url == "sqlite:///a.db"


def test_sqlite_sidecar_files_are_private(tmp_path: Path) -> None:
    database = tmp_path / "deep" / "er" / "db.sqlite3"
    store = Store(f"sqlite:///{database}")
    try:
        assert store.ping()
        with store._engine.connect() as connection:  # hold a connection so -wal/-shm exist
            connection.exec_driver_sql("SELECT 1")
            for path in database.parent.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.dispose()


# ----------------------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def fhir() -> Iterator[RunningFhirServer]:
    with start_fhir_server([], TOKEN) as server:
        yield server


def _count(fhir: RunningFhirServer, resource_type: str) -> int:
    answer = requests.get(f"{fhir.base_url}/{resource_type}?_summary=count", headers=fhir.headers(), timeout=10)
    answer.raise_for_status()
    return int(answer.json()["total"])


def test_samples_list_names_every_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(sample_files())
    assert any(line.startswith(SAMPLE.name) and "Patient/ia-brand" in line for line in lines)


def test_charts_hold_the_prefetch_but_not_the_drafts() -> None:
    (chart,) = charts([SAMPLE])
    request = json.loads(SAMPLE.read_text())
    refs = {f"{r['resourceType']}/{r['id']}" for r in chart.resources}
    assert f"Patient/{request['context']['patientId']}" in refs
    drafts = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in request["context"]["draftOrders"]["entry"]
    }
    assert drafts and not drafts & refs
    assert len(refs) == len(chart.resources)  # deduplicated
    entries = chart.transaction()["entry"]
    assert {(e["request"]["method"], e["request"]["url"]) for e in entries} == {("PUT", ref) for ref in refs}


def test_samples_load_one_transaction_per_patient_idempotent(
    fhir: RunningFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIORAUTH_FHIR_TOKEN", TOKEN)
    patients = {c.patient_id for c in charts(sample_files())}
    assert main(["samples", "load", fhir.base_url + "/"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(patients)
    assert all(
        line.startswith("Patient/") and line.endswith(("stored (HTTP 200)", "stored (HTTP 201)")) for line in out
    )
    counts = {t: _count(fhir, t) for t in ("Patient", "Condition", "MedicationRequest", "Coverage")}
    assert counts["Patient"] == len(patients)
    assert main(["samples", "load", fhir.base_url]) == 0
    capsys.readouterr()
    assert {t: _count(fhir, t) for t in counts} == counts
    drafts = json.loads(SAMPLE.read_text())["context"]["draftOrders"]["entry"]
    draft = drafts[0]["resource"]
    missing = requests.get(f"{fhir.base_url}/MedicationRequest/{draft['id']}", headers=fhir.headers(), timeout=10)
    assert missing.status_code == 404  # drafts are not in the EHR yet


def test_samples_load_only_and_server_refusal(
    fhir: RunningFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIORAUTH_FHIR_TOKEN", TOKEN)
    assert main(["samples", "load", fhir.base_url, "--only", SAMPLE.stem]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    monkeypatch.setenv("PRIORAUTH_FHIR_TOKEN", "wrong")
    assert main(["samples", "load", fhir.base_url, "--only", SAMPLE.name]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Patient/ia-brand: the FHIR server refused the transaction (HTTP 401)" in captured.err
    assert "1 of 1 patients were not stored" in captured.err and "{" not in captured.err


def test_samples_load_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "load", "127.0.0.1:1/fhir"]) == 2
    assert "FHIR_BASE must be an http(s) URL" in capsys.readouterr().err
    assert main(["samples", "load", "http://127.0.0.1:1/fhir", "--only", "nope"]) == 2
    assert "no sample named nope" in capsys.readouterr().err
    assert main(["samples", "--dir", str(tmp_path / "none"), "list"]) == 2
    assert "sample bundles not found" in capsys.readouterr().err


def test_samples_load_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    assert main(["samples", "load", f"http://127.0.0.1:{free_port()}/fhir", "--only", SAMPLE.name]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the FHIR server" in err and "Traceback" not in err


def test_each_worker_forgets_the_masters_connections_and_checkpoints_in_the_background(tmp_path: Path) -> None:
    from cds_service import cli

    store = Store(f"sqlite:///{tmp_path / 'fork.sqlite3'}")
    try:
        cli._after_fork(store)  # gunicorn's post_fork
        assert store._checkpoints is not None and not store._checkpoints.is_set()
    finally:
        store.dispose()
