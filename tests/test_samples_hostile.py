"""``priorauth-cds samples load`` against a FHIR server that misbehaves (issue 15, item 13).

The server's answer is not trusted: what is printed of it has no control characters (no terminal escapes, no bidi
overrides), its body is read up to a cap (not 1 GB), the whole load has one deadline (a server trickling bytes does
not hang it), no answer shape gives a traceback, and the bearer token comes from ``PRIORAUTH_FHIR_TOKEN`` (``--token``
still works, with a deprecation line on stderr).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cds_service.cli import main
from cds_service.samples import DEFAULT_DIR, MAX_ANSWER_BYTES, printable

SAMPLE = DEFAULT_DIR / "I.A-brand-without-exemestane.json"
Answer = Callable[[BaseHTTPRequestHandler], None]


class _Stub:
    """A loopback HTTP server answering every POST with ``answer``; records the Authorization headers."""

    def __init__(self, answer: Answer) -> None:
        stub = self
        self.answer = answer
        self.authorizations: list[str | None] = []
        self.written = 0
        self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stub.authorizations.append(self.headers.get("Authorization"))
                try:
                    stub.answer(self)
                except OSError:
                    pass  # the client gave up: expected

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[[Answer], _Stub]]:
    started: list[_Stub] = []

    def start(answer: Answer) -> _Stub:
        started.append(_Stub(answer))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PRIORAUTH_FHIR_TOKEN", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _refusal(body: bytes, status: int = 400) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _load(url: str, *extra: str) -> int:
    return main(["samples", "load", url, "--only", SAMPLE.name, *extra])


ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202egnp.exe\x9b1m\u200b"


def test_printable_drops_controls_and_format_characters() -> None:
    assert printable(ESCAPES) == "]0;owned [2J [31mred gnp.exe 1m"
    for bad in ("\x1b", "\x07", "\u202e", "\x9b", "\u200b"):
        assert bad not in printable(ESCAPES)
    assert printable("a\r\n\tb") == "a b"


@pytest.mark.parametrize("as_outcome", [True, False], ids=["operation-outcome", "plain-body"])
def test_terminal_escapes_in_the_answer_are_not_printed(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str], as_outcome: bool
) -> None:
    text = f"bad resource {ESCAPES}"
    body = (
        json.dumps({"resourceType": "OperationOutcome", "issue": [{"diagnostics": text}]}).encode()
        if as_outcome
        else text.encode()
    )
    server = stub(_refusal(body))
    assert _load(server.url) == 1
    err = capsys.readouterr().err
    assert "bad resource" in err and "red" in err
    for bad in ("\x1b", "\x07", "\u202e", "\x9b", "\u200b"):
        assert bad not in err


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "OperationOutcome", "issue": [{"details": "not an object"}, 5, {"code": 7}]}',
        b'{"resourceType": "OperationOutcome", "issue": "nope"}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe\x00 not utf-8",
        b"",
    ],
    ids=["details-string", "issue-string", "deep-nesting", "not-utf8", "empty"],
)
def test_no_answer_shape_gives_a_traceback(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    server = stub(_refusal(body, status=422))
    assert _load(server.url) == 1
    err = capsys.readouterr().err
    assert "refused the transaction (HTTP 422)" in err and "Traceback" not in err


def test_a_huge_answer_is_read_up_to_the_cap(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    """The server announces 1 GB and sends as fast as it can: the client stops after the cap and moves on."""

    def flood(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Content-Length", str(1024**3))
        handler.end_headers()
        block = b"x" * 65536
        while not server.stopping.is_set():
            handler.wfile.write(block)
            server.written += len(block)

    server = stub(flood)
    started = time.monotonic()
    assert _load(server.url) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "(HTTP 500)" in err and len(err) < 2000
    time.sleep(0.2)
    assert server.written < 64 * 1024 * 1024, server.written  # far from 1 GB: the client closed the connection
    assert MAX_ANSWER_BYTES <= 1024 * 1024


def test_a_trickling_server_cannot_hang_the_load(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    """A header byte every 0.2 s resets every per-read timeout; the load's deadline still ends it."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not server.stopping.wait(0.2):
            handler.wfile.write(b"X")
            handler.wfile.flush()

    server = stub(trickle)
    started = time.monotonic()
    assert _load(server.url, "--deadline", "1.5") == 1
    assert time.monotonic() - started < 5
    assert "before the deadline" in capsys.readouterr().err


def test_token_comes_from_the_environment(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stub(_refusal(b"{}", status=200))
    monkeypatch.setenv("PRIORAUTH_FHIR_TOKEN", "env-token")
    assert _load(server.url) == 0
    assert server.authorizations == ["Bearer env-token"]
    assert "deprecated" not in capsys.readouterr().err


def test_token_option_still_works_with_a_deprecation_line(
    stub: Callable[[Answer], _Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    server = stub(_refusal(b"{}", status=200))
    assert _load(server.url, "--token", "cli-token") == 0
    assert server.authorizations == ["Bearer cli-token"]
    err = capsys.readouterr().err
    assert "--token is deprecated" in err and "PRIORAUTH_FHIR_TOKEN" in err and "cli-token" not in err
