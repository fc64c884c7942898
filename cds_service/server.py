"""The gunicorn worker ``priorauth-cds serve`` runs: gthread, with whole requests read before a thread sees them.

Why (README "Production topology", with the numbers that kept it over gunicorn's gevent worker): with sync
workers each connection holds a whole worker process from accept to answer; stock ``gthread`` hands a new
connection to a pool thread at once, which then waits for the client. This subclass keeps every connection in
the worker's event loop (a selector, no thread) until its whole request -- head, and a ``Content-Length`` or
chunked body -- is in memory, as nginx does. The loop reads the body's framing with gunicorn's own parser
(``body_framing``), answers what can never be served itself (413 over ``CDS_MAX_BODY_BYTES``, 431, 400 for bad
chunk framing, 503 past the per-client connection cap or the worker's buffer), counts buffered bytes as they
arrive, and closes connections whose head did not arrive within ``CDS_HEADER_TIMEOUT_SECONDS`` (1 s for the first
byte when the worker is near its connection limit) or whose body did not arrive within
``CDS_BODY_TIMEOUT_SECONDS`` with a 408. Only complete requests reach a thread, and the thread's parser has no
socket to read (``_NoSocket``): no client holds a thread, or the gate, by sending slowly (issue 15 items 1, 2, 11).

A worker with requests waiting for its gate answers with ``Connection: close`` and accepts no new connection
until its queue is worked off, so that callers move to a worker without a queue: clients reuse the connection
they used last, and kept-alive connections otherwise pinned most of the load on one worker.

A hook call is CPU-bound Python, so the threads of one process share one GIL: throughput comes from the
processes (one per core), the threads only keep a call that waits on the FHIR fallback from blocking the
worker. A request runs holding the process's ``Gate`` (``gate.py``), one at a time in arrival order, which a call
waiting on the FHIR fallback lets go meanwhile: interleaved through the GIL, calls slowed each other down far
beyond their share of the core (every SQLite statement waited out the other thread's 5 ms switch interval, with
the write lock held). Its answer is written before the gate is let go when the socket can take it at once, else
after (``_gated``). Thread safety of the shared state was checked: the code-table memos (``fhir_mappings/codes.py`` ``_remember``) and the concept cache
(``fhir_mappings/record.py`` ``_CONCEPTS``) are plain dicts whose readers use ``get`` and tolerate a miss, so a
concurrent ``clear()`` only costs a recomputation; the JWT replay guard and the JWKS cache take locks; the store's
engine pools connections per thread; Flask's request state is context-local. This worker speaks HTTP/1.1 only
and does no TLS itself (a TLS terminator sits in front).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import selectors
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import operation_outcome
from .gate import Gate, holding

#: Largest request head buffered (request line + headers); a longer one is answered 431 from the loop.
MAX_HEAD_BYTES = 64 * 1024
#: Longest chunk-size line (size, extensions) accepted while a chunked body is buffered.
MAX_CHUNK_LINE = 1024
#: Seconds a closed connection's late bytes are read and discarded (gunicorn's graceful close: 2 s).
LINGER_SECONDS = 2.0
#: At most this often the event loop sends the arbiter its heartbeat, checks that its parent lives and sweeps
#: connection deadlines; gunicorn did all three on every loop turn, several times per request under load.
HOUSEKEEPING_SECONDS = 1.0
_HEAD_END = b"\r\n\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _answer(status: str, code: str, diagnostics: str) -> bytes:
    """A complete closing answer the event loop sends itself (the request never reaches the application): an
    OperationOutcome, as the application's own errors are."""
    body = json.dumps(operation_outcome(code, diagnostics), separators=(",", ":")).encode()
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/fhir+json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


TIMEOUT = _answer("408 Request Timeout", "timeout", "request not received in time")
HEAD_TOO_LARGE = _answer("431 Request Header Fields Too Large", "too-costly", "request head too large")
BAD_FRAMING = _answer("400 Bad Request", "structure", "malformed chunked body")
BUSY = _answer("503 Service Unavailable", "transient", "too many request bytes in flight; retry")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
THROTTLED = _answer("503 Service Unavailable", "throttled", "too many connections from this address")


def body_framing(head: bytes, cfg: Any, peer: Any) -> tuple[int, bool] | None:
    """Body bytes announced by a complete request head, read by gunicorn's own parser (the one the thread uses
    afterwards, so both agree on leading zeros, duplicates, ``Transfer-Encoding`` with ``Content-Length`` ...):
    (the length, -1 for a chunked body; whether the client waits for ``100 Continue``), or None when gunicorn
    refuses the head (its thread-side parse answers that itself)."""
    try:
        request = Request(cfg, IterUnreader([head]), peer)
    except Exception:  # noqa: BLE001 - any parse error: gunicorn's thread-side parse answers it (400, 431 ...)
        return None
    expects = bool(getattr(request, "_expected_100_continue", False))
    reader = getattr(request.body, "reader", None)
    if isinstance(reader, ChunkedReader):
        return -1, expects
    if isinstance(reader, LengthReader):
        return int(reader.length), expects
    return 0, False  # no length, not chunked: a request has no body (RFC 9112 6.3)


def chunked_end(buf: bytes | bytearray, pos: int) -> tuple[int, bool, int]:
    """Scan the complete chunks of a chunked body from ``pos``: (where the next chunk starts, whether the last
    chunk and the trailers are in, data bytes in the chunks scanned). Resumable, so a trickled body is scanned
    once, not at every arrival. ValueError for framing gunicorn would refuse anyway (a size that is not hex, a
    chunk not ended by CRLF)."""
    data = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if len(buf) - pos > MAX_CHUNK_LINE:
                raise ValueError("chunk size line too long")
            return pos, False, data
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].rstrip(b" \t")
        if not size_text or len(size_text) > 16 or not set(size_text) <= _HEX:
            raise ValueError("invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            trailers_end = buf.find(_HEAD_END, line_end)
            return (trailers_end + 4, True, data) if trailers_end >= 0 else (pos, False, data)
        data_end = line_end + 2 + size
        if len(buf) < data_end + 2:
            return pos, False, data
        if buf[data_end : data_end + 2] != b"\r\n":
            raise ValueError("chunk not ended by CRLF")
        pos, data = data_end + 2, data + size


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """One non-blocking send of a short answer from the loop; a client that cannot take it loses it."""
    try:
        sock.send(data)
    except OSError:
        pass


def _refuse(sock: socket.socket, answer: bytes) -> None:
    """Answer a just-accepted socket from the loop (never blocking on it) and close it."""
    try:
        sock.setblocking(False)
    except OSError:
        pass
    _send_quietly(sock, answer)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class _NoSocket:
    """Stands in for the socket in a pool thread's parser: every request was read whole by the event loop, so
    the parser (and the application reading ``wsgi.input``, holding the gate) never reads the socket; should it
    want bytes that are not there, it sees the end of the stream (400, connection closed) instead of waiting."""

    def recv(self, size: int) -> bytes:
        return b""


class _Reading:
    """A connection whose request is still arriving: bytes so far, and the time it must be complete by."""

    __slots__ = ("body_start", "buf", "chunk_data", "chunk_pos", "deadline", "need", "started")

    def __init__(self, started: float, deadline: float) -> None:
        self.buf = bytearray()
        self.started = started
        self.deadline = deadline
        #: Where the body starts once the head is in; None while the head is incomplete.
        self.body_start: int | None = None
        #: Total bytes (head + body) of a request with a length; None while unknown or chunked.
        self.need: int | None = None
        #: Chunked body: where the next chunk starts, and the data bytes of the chunks before it.
        self.chunk_pos: int | None = None
        self.chunk_data = 0


class _ClientConn(TConn):  # type: ignore[misc]
    """gthread's connection, counted against its client's cap until closed; a graceful close lingers in the loop."""

    def __init__(
        self, cfg: Any, sock: Any, client: Any, server: Any, release: Callable[[], None], linger: Callable[[Any], None]
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self._release: Callable[[], None] | None = release
        self._linger = linger

    def close(self, graceful: bool = False) -> None:
        """gunicorn's graceful close shuts the write side, then reads the socket until the client closes (up to
        2 s) so that a reset does not cut the answer -- blocking, in the event loop: a client that never closed
        stalled every other one meanwhile. Here the loop lingers without blocking (``BufferedThreadWorker.linger``)."""
        release, self._release = self._release, None
        if release is not None:
            release()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.sock.close()
            return
        if graceful:
            self._linger(self.sock)
        else:
            self.sock.close()


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose event loop reads each whole request (head and body) before a thread runs it."""

    #: Set by the CLI from ``Config`` (class attributes: gunicorn builds the worker itself).
    header_timeout = 10.0
    body_timeout = 30.0
    max_body_bytes = 5 * 1024 * 1024
    #: Connections one client address may hold open in this worker (0: no cap). Behind a proxy, its address.
    max_connections_per_client = 64
    #: Seconds a new or kept-alive connection has to send its first byte when the worker is near its connection
    #: limit (``worker_connections``), instead of ``header_timeout``: idlers then make room quickly.
    crowded_first_byte_timeout = 1.0
    #: Share of ``worker_connections`` from which the worker counts as crowded.
    crowded_share = 0.8
    #: Socket timeout for a thread's writes (the answer); it reads nothing from the socket.
    io_timeout = 10.0
    #: Request bytes one worker may hold for connections still sending, counted as they arrive; past it, 503.
    max_buffered_bytes = 64 * 1024 * 1024
    #: The WSGI application (set by gunicorn's ``load_wsgi``, wrapped there in the gate).
    wsgi: Any
    #: Seconds a thread waiting for the GIL lets the holder run before asking it to switch (``init_process``).
    switch_interval = 0.001

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, _Reading] = {}
        self.buffered = 0
        #: Closed connections whose client may still send (``linger``), and when they are closed regardless.
        self.lingering: dict[Any, float] = {}
        #: Open connections per client address.
        self.per_client: dict[str, int] = {}
        self._per_client_lock = threading.Lock()
        #: Connections whose whole request waits for the gate (added by the event loop, discarded by the thread
        #: that takes it up; set operations are atomic under the GIL). Its size is this worker's backlog.
        self.queued: set[Any] = set()
        #: Whether a request holds the gate (written by the holder only, read by the event loop).
        self.running = False
        #: When the event loop next sends its heartbeat, checks its parent, sweeps deadlines (``notify`` ...).
        self._next_beat = self._next_parent_check = self._next_sweep = 0.0
        self._sweeping = False

    # ------------------------------------------------------------------ the event loop side

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        host = str(client_addr[0]) if isinstance(client_addr, tuple) else ""
        if not self._take_slot(host):
            _refuse(client_sock, THROTTLED)  # over this client's cap: answered and closed at once, nothing buffered
            return
        self.nr_conns += 1
        conn = _ClientConn(
            self.cfg, client_sock, client_addr, listener.getsockname(), partial(self._free_slot, host), self.linger
        )
        self._start_reading(conn)

    def _take_slot(self, host: str) -> bool:
        with self._per_client_lock:
            held = self.per_client.get(host, 0)
            if self.max_connections_per_client and held >= self.max_connections_per_client:
                return False
            self.per_client[host] = held + 1
            return True

    def _free_slot(self, host: str) -> None:
        with self._per_client_lock:
            left = self.per_client.get(host, 1) - 1
            if left > 0:
                self.per_client[host] = left
            else:
                self.per_client.pop(host, None)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has a new request coming: buffer it like a new connection's."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn)
        self._read_some(conn, client)

    def _crowded(self) -> bool:
        return bool(self.nr_conns >= self.crowded_share * self.worker_connections)

    def _start_reading(self, conn: Any) -> None:
        now = time.monotonic()
        first_byte = (
            min(self.header_timeout, self.crowded_first_byte_timeout) if self._crowded() else self.header_timeout
        )
        self.reading[conn] = _Reading(now, now + first_byte)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_some, conn))

    def _read_some(self, conn: Any, client: Any) -> None:
        state = self.reading.get(conn)
        if state is None:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self._drop(conn, None)
            return
        if self.buffered + len(data) > self.max_buffered_bytes:
            self._drop(conn, BUSY)
            return
        if not state.buf:  # the first byte is in: the head has the whole header timeout from the connection's start
            state.deadline = state.started + self.header_timeout
        state.buf += data
        self.buffered += len(data)
        self._progress(conn, state)

    def _progress(self, conn: Any, state: _Reading) -> None:
        """Dispatch the connection once its whole request (head and body) is in; refuse what never can be."""
        if state.body_start is None:
            head_end = state.buf.find(_HEAD_END)
            if head_end < 0:
                if len(state.buf) > MAX_HEAD_BYTES:
                    self._drop(conn, HEAD_TOO_LARGE)
                return
            state.body_start = head_end + 4
            framing = body_framing(bytes(state.buf[: state.body_start]), self.cfg, conn.client)
            if framing is None:  # gunicorn refuses this head: its own parser answers, from memory
                self._dispatch(conn)
                return
            length, expects_continue = framing
            if length > self.max_body_bytes:
                self._drop(conn, self._too_large())  # at once: no byte of an over-limit body is waited for
                return
            if length < 0:
                state.chunk_pos = state.body_start
            else:
                state.need = state.body_start + length
            if expects_continue and len(state.buf) == state.body_start:
                _send_quietly(conn.sock, CONTINUE)  # the client waits for it before sending the body
            state.deadline = time.monotonic() + self.body_timeout
        if state.chunk_pos is not None:
            try:
                state.chunk_pos, done, data = chunked_end(state.buf, state.chunk_pos)
            except ValueError:
                self._drop(conn, BAD_FRAMING)
                return
            state.chunk_data += data
            # Past the scanned chunks lies at most one size line and part of one chunk's data.
            pending = len(state.buf) - state.chunk_pos - MAX_CHUNK_LINE - 2
            if state.chunk_data + max(pending, 0) > self.max_body_bytes:
                self._drop(conn, self._too_large())
            elif done:
                self._dispatch(conn)
            return
        if state.need is not None and len(state.buf) >= state.need:
            self._dispatch(conn)

    def _too_large(self) -> bytes:
        return _answer("413 Content Too Large", "too-costly", f"request body exceeds {self.max_body_bytes} bytes")

    def _release(self, conn: Any) -> _Reading | None:
        state = self.reading.pop(conn, None)
        if state is not None:
            self.buffered -= len(state.buf)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        return state

    def _dispatch(self, conn: Any) -> None:
        """Hand the connection, its whole request in ``early``, to a pool thread (it runs under the gate)."""
        state = self._release(conn)
        if state is None:
            return
        conn.early = bytes(state.buf)
        conn.data_ready = True
        busy = bool(self.queued) or self.running
        self.queued.add(conn)
        if busy and self._accepting:
            self.set_accept_enabled(False)  # see set_accept_enabled (an idle worker keeps its listener as is)
        self.enqueue_req(conn)

    def _drop(self, conn: Any, answer: bytes | None) -> None:
        """Close a connection whose request will not be served, with the loop's own ``answer`` if any."""
        if self._release(conn) is None:
            return
        if answer is not None:
            _send_quietly(conn.sock, answer)
        self.nr_conns -= 1
        conn.close(graceful=answer is not None)  # a client still sending reads the answer, not a reset (linger)

    def linger(self, sock: Any) -> None:
        """After the answer and a shut write side: read and discard what the client still sends, until it closes
        or ``LINGER_SECONDS`` pass, in the loop without blocking; then close."""
        try:
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._drain_lingering, sock))
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self.lingering[sock] = time.monotonic() + LINGER_SECONDS

    def _drain_lingering(self, sock: Any, client: Any) -> None:
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._stop_lingering(sock)

    def _stop_lingering(self, sock: Any) -> None:
        if self.lingering.pop(sock, None) is None:
            return
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        sock.close()

    # ------------------------------------------------------------------ housekeeping, once per second

    def notify(self) -> None:
        """The heartbeat the arbiter watches (an ``os.utime`` on the worker's temp file): gunicorn's loop sends it on
        every turn, that is several times per request under load; the arbiter only needs it within ``timeout``
        seconds, so it goes at most once per ``HOUSEKEEPING_SECONDS``."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + HOUSEKEEPING_SECONDS
            super().notify()

    def is_parent_alive(self) -> bool:
        """gunicorn asks ``getppid`` on every loop turn; once per ``HOUSEKEEPING_SECONDS`` finds an orphaned worker
        as surely."""
        now = time.monotonic()
        if now < self._next_parent_check:
            return True
        self._next_parent_check = now + HOUSEKEEPING_SECONDS
        return bool(super().is_parent_alive())

    def murder_keepalived(self, force: bool = False) -> None:
        """First of the two deadline sweeps of a loop turn (gunicorn calls this, then ``murder_pending``): they run
        at most once per ``HOUSEKEEPING_SECONDS``, not on every turn, and always when forced (stopping)."""
        now = time.monotonic()
        self._sweeping = force or now >= self._next_sweep
        if self._sweeping:
            self._next_sweep = now + HOUSEKEEPING_SECONDS
            super().murder_keepalived(force)

    def murder_pending(self) -> None:
        """On a turn whose sweep is due (``murder_keepalived``): cut requests that are too slow to arrive, and stop
        lingering on closed connections whose time is up. A deadline is met at most a second late, as when the
        loop sleeps in ``select``."""
        if not self._sweeping:
            return
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, state in self.reading.items() if state.deadline <= now]:
            self._drop(conn, TIMEOUT)
        for sock in [s for s, deadline in self.lingering.items() if deadline <= now]:
            self._stop_lingering(sock)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Accept only while no request waits to be taken up here: a new connection is left to a worker that would
        serve it at once (the kernel holds it meanwhile, should every worker be busy). gthread's loop asks again
        after every event, so accepting resumes as soon as the queue is worked off. Stopping drops the requests
        still arriving."""
        super().set_accept_enabled(enabled and not self.queued)
        if not enabled and not self.alive:  # stopping: requests still arriving are not waited for
            for conn in list(self.reading):
                self._drop(conn, None)

    # ------------------------------------------------------------------ the thread side

    def init_process(self) -> None:
        # With the gate, the only threads that want the GIL while a request runs are brief ones: the event loop
        # taking in the next request, and -- when its socket could not take the answer at once under the gate
        # (``_room_for``) -- the previous request's thread writing it. CPython makes such a thread wait out the
        # holder's switch interval, 5 ms by default -- added to that answer. 1 ms bounds it; CPU-bound threads no
        # longer take turns (the gate), so the shorter interval costs a forced switch only when such a thread waits
        # (5 ms measured no cheaper per call, README "CPU per call").
        sys.setswitchinterval(self.switch_interval)
        super().init_process()

    def load_wsgi(self) -> None:
        """The application, run under this process's ``Gate`` for requests that are entirely in memory."""
        super().load_wsgi()
        self.gate = Gate()
        self.wsgi = self._gated(self.wsgi)
        freeze_loaded_heap()

    def _gated(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """``app`` run holding the gate (``cds_service/gate.py``), its answer collected before the gate is let go.

        Every request reaches it read whole by the event loop: nothing under the gate reads the socket (the parser's
        socket is ``_NoSocket``), so no client holds the gate by sending slowly. The answer is written while the gate
        is held only when the socket's send buffer can take all of it at once (``_room_for``: nothing of an earlier
        answer still queued, the answer well within the buffer), so the write cannot wait on the client; otherwise
        it is written after the gate is let go, so a client slow to read does not hold the gate either. Written under
        the gate, the answer leaves at once instead of waiting for the GIL behind the next request, and no writer
        thread makes the next request give up the GIL (a switch each time) while it runs. When other requests
        wait for the gate the answer closes its connection (``Connection: close``): clients reuse the connection
        they used last, so without this a worker that once held most of a client's connections kept most of its
        load, and at 200 requests per second one worker ran at three times the other's CPU. The client's next
        connection goes to a worker that accepts, one without a queue (``set_accept_enabled``).
        """

        def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            conn = getattr(_request, "conn", None)
            if conn is None:
                return app(environ, start_response)
            with holding(self.gate):
                self.queued.discard(conn)
                self.running = True
                try:
                    answer = app(environ, start_response)
                    try:
                        body = list(answer)
                    finally:
                        close = getattr(answer, "close", None)
                        if close is not None:
                            close()
                finally:
                    self.running = False
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if self.queued and not _pipelined(conn):  # never cut off requests the client already sent
                    force_close = getattr(response, "force_close", None)
                    if force_close is not None:  # says "Connection: close", then closes
                        force_close()
                if body and response is not None and _room_for(conn.sock, sum(len(chunk) for chunk in body)):
                    _send_whole(response, body)  # the socket takes it all at once: sent before the gate is let go
                    return []
                return body

        return application

    def handle(self, conn: Any) -> Any:
        """Serve one buffered request (HTTP/1.1 only) in a pool thread; True keeps the connection alive."""
        req = None
        try:
            conn.sock.settimeout(self.io_timeout)
            conn.init()
            conn.sock.settimeout(self.io_timeout)
            conn.parser.unreader.sock = _NO_SOCKET  # the request is whole in ``early``: never wait on the client
            early = getattr(conn, "early", b"")
            if early:
                conn.early = b""
                conn.parser.unreader.unread(early)
            req = next(conn.parser)
            if not req:
                return False
            req._expected_100_continue = False  # the body is in: the loop sent "100 Continue" when it was due
            _request.conn = conn
            try:
                kept = self.handle_request(req, conn)
            finally:
                _request.conn = None
                self.queued.discard(conn)
            return self._keepalive_after(conn, kept)
        except (http.errors.NoMoreData, StopIteration, TimeoutError):
            pass  # the client left, or stalled past the timeout mid-body or mid-answer
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as exc:  # noqa: BLE001 - gunicorn answers 400/431/500 and logs
            self.handle_error(req, conn.sock, conn.client, exc)
        finally:
            self.queued.discard(conn)  # whatever happened, it no longer waits
        return False

    def finish_request(self, conn: Any, fs: Any) -> None:
        """As gthread, but a kept-alive connection's leftover (pipelined) bytes are buffered in the loop too."""
        self.queued.discard(conn)  # a cancelled task never ran ``handle``
        if not fs.cancelled() and fs.exception() is None and fs.result() and self.alive:
            leftover = conn.parser.unreader.buf.getvalue()
            if leftover:
                conn.parser.unreader.buf = type(conn.parser.unreader.buf)()
                conn.sock.setblocking(False)
                self._start_reading(conn)
                state = self.reading[conn]
                state.buf += leftover
                state.deadline = state.started + self.header_timeout  # its first bytes are in
                self.buffered += len(leftover)
                self._progress(conn, state)
                return
        super().finish_request(conn, fs)


def freeze_loaded_heap() -> None:
    """Move what the worker loaded (code tables, policy packs, model classes: ~140,000 objects) out of the cyclic
    garbage collector's reach; only what requests allocate is scanned from now on.

    Those objects live as long as the worker, yet every full collection walked them all: about one per 1,000 hook
    calls, 30-46 ms each (a pause in that call's latency, ~0.015-0.03 ms of CPU per call on average). CPython's
    ``gc.freeze`` is meant for exactly this (its documentation: call it once the preloaded state is built, before
    serving). A collection first, so that startup garbage is freed rather than kept forever.
    """
    gc.collect()
    gc.freeze()


#: Per pool thread: the connection whose request it serves (read whole by the event loop).
_request = threading.local()
_NO_SOCKET = _NoSocket()


def _room_for(sock: Any, size: int) -> bool:
    """Whether ``size`` bytes fit in the socket's send buffer at once: nothing earlier still queued (``TIOCOUTQ``:
    unsent plus unacknowledged bytes) and ``size`` within a quarter of ``SO_SNDBUF`` (which Linux reports doubled
    for its own bookkeeping), so a blocking ``sendall`` returns without waiting for the peer. Any doubt: False."""
    try:
        if struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT))[0] != 0:
            return False
        return bool(size * 4 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except (OSError, ValueError, AttributeError, struct.error):
        return False


_INT = b"\0\0\0\0"


class _Collected:
    """Stands in for the socket while gunicorn's ``Response`` writes the head and the body, so both go in one send."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(bytes(data))


def _send_whole(response: Any, body: list[bytes]) -> None:
    """Write the answer through gunicorn's ``Response`` (its head, framing and byte count as ever) in one ``sendall``
    instead of one for the head and one per body chunk."""
    sock, collected = response.sock, _Collected()
    response.sock = collected
    try:
        for chunk in body:
            response.write(chunk)
    finally:
        response.sock = sock
    sock.sendall(b"".join(collected.parts))


def _pipelined(conn: Any) -> bool:
    """Whether bytes of a next request already sit behind the current one (an HTTP/1.1 pipelining client)."""
    unreader = getattr(getattr(conn, "parser", None), "unreader", None)
    buf = getattr(unreader, "buf", None)
    return bool(buf is not None and buf.getbuffer().nbytes)
