"""Test helper: a real FHIR R4 server (PyPI ``sekmet-fhir``) on 127.0.0.1, bearer-token only, seeded with resources.

Used by tests of the FHIR fallback path so that paging, ``_include``, 401s and 404s come from a real
server rather than from our own idea of one. Usage::

    from tests.fhir_server import start_fhir_server

    server = start_fhir_server(resources, token="t0ken")
    try:
        ... server.base_url ...   # e.g. http://127.0.0.1:40123/fhir
    finally:
        server.stop()

or ``with start_fhir_server(resources, token) as server: ...``. Each server runs in its own process
with its own temporary directory (settings, SQLite store), so tests never share state. Start-up takes
about 2 s: use a module- or session-scoped fixture.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable

import requests

__all__ = ["FhirServerError", "RunningFhirServer", "start_fhir_server"]

_STARTUP_ATTEMPTS = 3
_FHIR_JSON = "application/fhir+json"


class FhirServerError(RuntimeError):
    """The test FHIR server could not be started or seeded."""


@dataclass
class RunningFhirServer:
    """A started server; ``stop()`` ends its process and removes its files (safe to call twice)."""

    base_url: str
    token: str
    _process: subprocess.Popen[bytes] = field(repr=False)
    _workdir: Path = field(repr=False)

    def headers(self) -> dict[str, str]:
        """Headers an authorised FHIR client sends to this server."""
        return {"Authorization": f"Bearer {self.token}", "Accept": _FHIR_JSON, "Content-Type": _FHIR_JSON}

    def seed(self, resources: Iterable[dict[str, Any]]) -> None:
        """Store resources: PUT ``Type/id`` when they have an id (so ids are kept), else POST ``Type``."""
        with requests.Session() as session:
            for resource in resources:
                rtype = resource["resourceType"]
                rid = resource.get("id")
                url = f"{self.base_url}/{rtype}/{rid}" if rid else f"{self.base_url}/{rtype}"
                method = "PUT" if rid else "POST"
                answer = session.request(method, url, data=json.dumps(resource), headers=self.headers(), timeout=10)
                if answer.status_code not in (200, 201):
                    raise FhirServerError(
                        f"seeding {rtype}/{rid or '(new)'} failed: HTTP {answer.status_code}: {answer.text[:500]}"
                    )

    def stop(self) -> None:
        """Terminate the server process (kill after 5 s) and delete its directory."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RunningFhirServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_fhir_server(
    resources: Iterable[dict[str, Any]],
    token: str,
    *,
    validation: str = "strict",
    startup_timeout: float = 30.0,
) -> RunningFhirServer:
    """Start a sekmet FHIR server on a free loopback port that accepts only ``Bearer <token>``, then seed it.

    ``validation`` is sekmet's inbound validation mode ("strict", "warn" or "off") for seeded resources.
    """
    if not token:
        raise ValueError("a bearer token is required")
    resources = list(resources)
    last_error = ""
    for _ in range(_STARTUP_ATTEMPTS):  # a port picked as free can be taken before the server binds it
        workdir = Path(tempfile.mkdtemp(prefix="sekmet-"))
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}/fhir"
        settings = _settings(base_url, port, workdir, token, validation)
        (workdir / "settings.yaml").write_text(json.dumps(settings))  # JSON is valid YAML
        process = _launch(workdir)
        server = RunningFhirServer(base_url=base_url, token=token, _process=process, _workdir=workdir)
        if _wait_until_up(base_url, process, startup_timeout):
            try:
                server.seed(resources)
            except BaseException:
                server.stop()
                raise
            return server
        last_error = _log_tail(workdir)
        server.stop()
    raise FhirServerError(f"sekmet did not start after {_STARTUP_ATTEMPTS} attempts; last log:\n{last_error}")


def _settings(base_url: str, port: int, workdir: Path, token: str, validation: str) -> dict[str, Any]:
    """sekmet settings: loopback only, static bearer token only, no simulator reacting to writes."""
    return {
        "base_url": base_url,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(workdir / "data"),
        "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
        "server_auth": {"types": ["bearer"], "tokens": [token]},
        "validation": {"inbound": validation},
        "simulator": {"enabled": False},
        "log_inbound": False,
    }


def _launch(workdir: Path) -> subprocess.Popen[bytes]:
    """Run ``sekmet serve`` from the interpreter's environment, logging to a file in ``workdir``."""
    script = Path(sys.executable).with_name("sekmet")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from sekmet.cli import app; sys.argv[0] = 'sekmet'; app()"]
    )
    log_file = (workdir / "server.log").open("wb")
    try:
        return subprocess.Popen(
            [*command, "serve", "--config", str(workdir / "settings.yaml")],
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log_file.close()  # the child holds its own descriptor


def _wait_until_up(base_url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll ``/metadata`` (served without auth) until it answers 200 or the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if requests.get(f"{base_url}/metadata", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(workdir: Path) -> str:
    try:
        return (workdir / "server.log").read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"
