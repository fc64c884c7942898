"""The gunicorn worker ``priorauth-cds serve`` runs: gthread, with requests buffered before a thread sees them.

Why (README "Production topology"): with sync workers each connection holds a whole worker process from
accept to answer, so two idle TCP connections stalled the default two workers for 30 s. gunicorn's stock
``gthread`` worker is better but still hands a new connection to a pool thread at once: the thread waits up to
5 s for a first byte and then reads the request head with no time limit, so idle or header-trickling clients
still use up every thread. This subclass keeps every connection in the worker's event loop (a selector, no
thread) until the request head (and a body announced with ``Content-Length`` up to ``CDS_MAX_BODY_BYTES``) is
complete, as nginx does, and closes connections whose head did not arrive within ``CDS_HEADER_TIMEOUT_SECONDS``
(or whose body did not arrive within ``CDS_BODY_TIMEOUT_SECONDS``) with a 408. Only complete requests reach a
thread; a thread's socket reads and writes (a chunked body, the answer) have a per-operation timeout.

A worker with requests waiting for its gate answers with ``Connection: close`` and accepts no new connection
until its queue is worked off, so that callers move to a worker without a queue: clients reuse the connection
they used last, and kept-alive connections otherwise pinned most of the load on one worker.

A hook call is CPU-bound Python, so the threads of one process share one GIL: throughput comes from the
processes (one per core), the threads only keep a call that waits on the FHIR fallback from blocking the
worker. A request read whole runs holding the process's ``Gate`` (``gate.py``), one at a time in arrival order,
which a call waiting on the FHIR fallback lets go meanwhile: interleaved through the GIL, calls slowed each other
down far beyond their share of the core (every SQLite statement waited out the other thread's 5 ms switch
interval, with the write lock held). Its answer is written after the gate is let go. Thread safety of the
shared state was checked: the code-table memos (``fhir_mappings/codes.py`` ``_remember``) and the concept cache
(``fhir_mappings/record.py`` ``_CONCEPTS``) are plain dicts whose readers use ``get`` and tolerate a miss, so a
concurrent ``clear()`` only costs a recomputation; the JWT replay guard and the JWKS cache take locks; the store's
engine pools connections per thread; Flask's request state is context-local. This worker speaks HTTP/1.1 only and does no TLS itself (a TLS terminator sits in front).
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import ThreadWorker

from .gate import Gate, holding

#: Largest request head buffered (request line + headers); gunicorn's own limits then reject it with 400/431.
MAX_HEAD_BYTES = 64 * 1024
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n"
    b"request timeout\n"
)


class _Reading:
    """A connection whose request is still arriving: bytes so far and the time it must be complete by."""

    __slots__ = ("buf", "deadline", "need")

    def __init__(self, deadline: float) -> None:
        self.buf = bytearray()
        self.deadline = deadline
        #: Total bytes (head + body) to wait for once the head is in; None while the head is incomplete.
        self.need: int | None = None


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose event loop buffers each request (head, and a Content-Length body) before a thread runs it."""

    #: Set by the CLI from ``Config`` (class attributes: gunicorn builds the worker itself).
    header_timeout = 10.0
    body_timeout = 30.0
    max_body_bytes = 5 * 1024 * 1024
    #: Socket timeout for a thread's reads and writes (chunked bodies, the answer).
    io_timeout = 10.0
    #: Body bytes one worker may hold for connections still sending; past it, a body is read by its thread.
    max_buffered_bytes = 64 * 1024 * 1024
    #: The WSGI application (set by gunicorn's ``load_wsgi``, wrapped there in the gate).
    wsgi: Any
    #: Seconds a thread waiting for the GIL lets the holder run before asking it to switch (``init_process``).
    switch_interval = 0.001

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, _Reading] = {}
        self.buffered = 0
        #: Connections whose whole request waits for the gate (added by the event loop, discarded by the thread
        #: that takes it up; set operations are atomic under the GIL). Its size is this worker's backlog.
        self.queued: set[Any] = set()
        #: Whether a request holds the gate (written by the holder only, read by the event loop).
        self.running = False

    # ------------------------------------------------------------------ the event loop side

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        from gunicorn.workers.gthread import TConn

        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # sets the socket non-blocking
        self._start_reading(conn)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has a new request coming: buffer it like a new connection's."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn)
        self._read_some(conn, client)

    def _start_reading(self, conn: Any) -> None:
        self.reading[conn] = _Reading(time.monotonic() + self.header_timeout)
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
            self._drop(conn, answer=False)
            return
        state.buf += data
        self._progress(conn, state)

    def _progress(self, conn: Any, state: _Reading) -> None:
        """Dispatch the connection once its head (and a Content-Length body worth buffering) is in."""
        if state.need is None:
            head_end = state.buf.find(_HEAD_END)
            if head_end < 0:
                if len(state.buf) > MAX_HEAD_BYTES:
                    self._dispatch(conn)  # gunicorn's parser answers the over-long head with an error
                return
            head = bytes(state.buf[: head_end + 4])
            state.need = self._body_to_buffer(head)
            if state.need is None:
                # Whole already when there is no body to read from the socket (none announced, or length 0).
                self._dispatch(conn, whole=not _TRANSFER_ENCODING.search(head) and self._no_body(head))
                return
            state.need += head_end + 4
            self.buffered += state.need
            state.deadline = time.monotonic() + self.body_timeout
        if len(state.buf) >= state.need:
            self._dispatch(conn, whole=True)

    def _body_to_buffer(self, head: bytes) -> int | None:
        """Body bytes to wait for before dispatching, or None to dispatch now (no body, chunked, too big)."""
        if _TRANSFER_ENCODING.search(head):
            return None
        lengths = _CONTENT_LENGTH.findall(head)
        if len(lengths) != 1:
            return None  # none, or duplicated: gunicorn decides
        length = int(lengths[0])
        if length == 0 or length > self.max_body_bytes or self.buffered + length > self.max_buffered_bytes:
            return None  # the app answers 413 to an over-limit body without reading all of it
        return length

    @staticmethod
    def _no_body(head: bytes) -> bool:
        lengths = _CONTENT_LENGTH.findall(head)
        return not lengths or (len(lengths) == 1 and int(lengths[0]) == 0)

    def _release(self, conn: Any) -> _Reading | None:
        state = self.reading.pop(conn, None)
        if state is not None:
            if state.need is not None:
                self.buffered -= state.need
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        return state

    def _dispatch(self, conn: Any, *, whole: bool = False) -> None:
        """Hand the connection to a pool thread; ``whole``: the request's bytes are all in ``early`` (gated)."""
        state = self._release(conn)
        if state is None:
            return
        conn.whole = whole
        conn.early = bytes(state.buf)
        conn.data_ready = True
        if whole:
            busy = bool(self.queued) or self.running
            self.queued.add(conn)
            if busy and self._accepting:
                self.set_accept_enabled(False)  # see set_accept_enabled (an idle worker keeps its listener as is)
        self.enqueue_req(conn)

    def _drop(self, conn: Any, *, answer: bool) -> None:
        if self._release(conn) is None:
            return
        if answer:
            try:
                conn.sock.send(_TIMEOUT_ANSWER)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Runs once per event-loop turn (at least every second): cut requests that are too slow to arrive."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, state in self.reading.items() if state.deadline <= now]:
            self._drop(conn, answer=True)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Accept only while no request waits to be taken up here: a new connection is left to a worker that would
        serve it at once (the kernel holds it meanwhile, should every worker be busy). gthread's loop asks again
        after every event, so accepting resumes as soon as the queue is worked off. Stopping drops the requests
        still arriving."""
        super().set_accept_enabled(enabled and not self.queued)
        if not enabled and not self.alive:  # stopping: requests still arriving are not waited for
            for conn in list(self.reading):
                self._drop(conn, answer=False)

    # ------------------------------------------------------------------ the thread side

    def init_process(self) -> None:
        # With the gate, the only threads that want the GIL while a request runs are brief ones: the event loop
        # taking in the next request, and the previous request's thread writing its answer (headers and body are
        # two sends, and after each it must get the GIL back). CPython makes such a thread wait out the holder's
        # switch interval, 5 ms by default -- added to that answer. 1 ms bounds it; CPU-bound threads no longer
        # take turns (the gate), so the shorter interval costs a forced switch only when such a thread waits.
        sys.setswitchinterval(self.switch_interval)
        super().init_process()

    def load_wsgi(self) -> None:
        """The application, run under this process's ``Gate`` for requests that are entirely in memory."""
        super().load_wsgi()
        self.gate = Gate()
        self.wsgi = self._gated(self.wsgi)

    def _gated(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """``app`` run holding the gate (``cds_service/gate.py``), its answer collected before the gate is let go.

        Only for a request read whole in the event loop: one whose body must still come from the socket (chunked,
        or larger than the buffering limits) would hold the gate while the client sends. The answer is written to
        the socket after the gate is let go, so a client slow to read does not hold it either. When other requests
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
                if self.queued and not _pipelined(conn):  # never cut off requests the client already sent
                    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                    if force_close is not None:  # gunicorn's Response: says "Connection: close", then closes
                        force_close()
                return body

        return application

    def handle(self, conn: Any) -> Any:
        """Serve one buffered request (HTTP/1.1 only) in a pool thread; True keeps the connection alive."""
        req = None
        try:
            conn.sock.settimeout(self.io_timeout)
            conn.init()
            conn.sock.settimeout(self.io_timeout)
            early = getattr(conn, "early", b"")
            if early:
                conn.early = b""
                conn.parser.unreader.unread(early)
            req = next(conn.parser)
            if not req:
                return False
            _request.conn = conn if getattr(conn, "whole", False) else None
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
                self._progress(conn, state)
                return
        super().finish_request(conn, fs)


#: Per pool thread: the connection whose request it serves, when that request was read whole by the event loop.
_request = threading.local()


def _pipelined(conn: Any) -> bool:
    """Whether bytes of a next request already sit behind the current one (an HTTP/1.1 pipelining client)."""
    unreader = getattr(getattr(conn, "parser", None), "unreader", None)
    buf = getattr(unreader, "buf", None)
    return bool(buf is not None and buf.getbuffer().nbytes)
