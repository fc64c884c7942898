"""One request at a time runs Python in a worker process; a request that waits on the network steps aside.

A hook call is CPU-bound Python (parse, typed record, policy, cards), so the threads of a gunicorn worker share
one core through the GIL whatever their number. Left to the GIL, two calls in one worker do not just take turns:
each time one of them releases the GIL for a moment of I/O (every SQLite statement, a log line, a socket write)
it gets it back only when the other has run out its switch interval (5 ms), so a call overlapping another paid
up to 5 ms per statement -- and held SQLite's write lock meanwhile, which sent the other worker's writers to sleep
in SQLite's busy handler (1, 2, 5, 10 ... ms). Profiled under load, that convoy, not the work, made the tail: at
200 requests per second a call spent most of its time waiting for the GIL or the write lock.

So the buffered worker (``server.py``) runs each request (all its bytes in memory) while holding its process's
``Gate``, in arrival order (a FIFO hand-over, no barging), and writes the answer after letting go. The threads
stay for what they are for (README "Production topology"): a call waiting on the FHIR fallback steps aside
(``stepped_aside``, in ``prefetch.py``) so the others run meanwhile. Outside a gated request (tests, the CLI, the
development server) ``stepped_aside`` does nothing. Every request the worker runs was read whole by its event
loop first, so nothing holding the gate reads from a client.

Only step aside around a wait that holds no lock another gate holder could want: a thread that steps aside
while holding such a lock could come back to a gate held by a thread waiting for that lock. The JWKS fetch
(``auth.py``) runs under the key cache's lock, so it keeps the gate: a worker waits for its issuer's keys at most
the JWKS timeout, once per refresh.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    """A lock handed to its waiters in arrival order: ``release`` gives it straight to the longest waiter."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by ``release``: the gate is ours, still marked held

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        """Threads waiting for the gate (for tests and diagnostics)."""
        return len(self._waiters)


_held = threading.local()


@contextmanager
def holding(gate: Gate) -> Iterator[None]:
    """Run the block holding ``gate`` (the worker's, around one request)."""
    gate.acquire()
    _held.gate = gate
    try:
        yield
    finally:
        _held.gate = None
        gate.release()


@contextmanager
def stepped_aside() -> Iterator[None]:
    """Around a wait on the network: the thread's gate, if it holds one, is let go and taken back afterwards."""
    gate: Gate | None = getattr(_held, "gate", None)
    if gate is None:
        yield
        return
    _held.gate = None
    gate.release()
    try:
        yield
    finally:
        gate.acquire()
        _held.gate = gate


def held() -> bool:
    """Whether this thread holds a gate now."""
    return getattr(_held, "gate", None) is not None
