"""Shared fixtures: config on a temporary SQLite file, the Flask app and client, and one real gunicorn server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from cds_service.app import create_app
from cds_service.config import Config
from cds_service.store import normalize_database_url

POSTGRES_ENV = "PRIORAUTH_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True, scope="session")
def private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default database lives under XDG_DATA_HOME: no test (nor a server it starts) may touch the real one."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data-home"))
    yield Path(os.environ["XDG_DATA_HOME"])
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture
def service_log() -> Iterator[Callable[[], str]]:
    """The service's log lines (JSON, as configured) written during the test, as one text: ``service_log()``.

    Every module logs under the ``priorauth_cds`` logger, which does not propagate to the root logger (so
    pytest's ``caplog`` does not see it); this attaches a JSON handler to it for the test.
    """
    import io
    import logging

    from cds_service.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger("priorauth_cds")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream.getvalue
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{tmp_path / 'test.sqlite3'}", fhir_budget_seconds=2.0)


@pytest.fixture
def app(config: Config):  # type: ignore[no-untyped-def]
    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.extensions["priorauth_cds"].store.dispose()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``priorauth-cds serve`` in a subprocess; restartable on the same database."""

    def __init__(self, database_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> None:
        env = {**os.environ, "DATABASE_URL": self.database_url, "CDS_WORKERS": "2", **self.extra_env}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cds_service", "serve", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy in 30 s")

    def stop(self, kill: bool = False) -> None:
        """Graceful stop, or SIGKILL to the master and every worker at once (a crash: nothing flushes)."""
        if self.process and self.process.poll() is None:
            if kill:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.terminate()
            self.process.wait(timeout=20)
        if self.process and kill:
            _wait_for_group_exit(self.process.pid)
        self.process = None


def _wait_for_group_exit(pgid: int, timeout: float = 10.0) -> None:
    """Orphaned workers of a killed master must be gone before a new server binds the same port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real gunicorn server for the whole test run."""
    folder = tmp_path_factory.mktemp("live")
    server = LiveServer(f"sqlite:///{folder / 'live.sqlite3'}")
    server.start(folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a private schema on the test PostgreSQL (storage tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set; export it from `bash .ci/postgres.sh` to run PostgreSQL tests")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(normalize_database_url(base))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = normalize_database_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
