"""Per-caller token buckets for hook and feedback calls (``CDS_RATE_LIMIT_PER_MINUTE``).

The caller is the verified JWT issuer, or the client address when JWT checks are off (loopback / dev mode).
Buckets live in each worker process: with N gunicorn workers a caller may get up to N times the limit across
the server (the kernel spreads connections over workers), which bounds a runaway client without a database
round trip per call. A bucket holds a minute's worth of calls and refills continuously.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

#: Callers remembered per worker before idle (full) buckets are forgotten.
MAX_TRACKED_CALLERS = 10_000


class RateLimiter:
    """``check(key)`` takes one token from ``key``'s bucket; returns 0 when allowed, else seconds to wait."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def check(self, key: str) -> int:
        """0 if the call may proceed (a token was taken), else the whole seconds until one is available."""
        if not self.enabled:
            return 0
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > MAX_TRACKED_CALLERS:
                    self._forget_idle(now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled completely (they behave exactly like a new one)."""
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]
