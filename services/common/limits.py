"""Per-agency limits: a request rate (token bucket) and concurrent server streams.

Both services apply them in the request interceptor, after authentication, so a
caller without valid credentials never costs an agency a token. Every request
(a stream's opening included) takes one token from its agency's bucket, which
holds at most ``burst`` tokens and refills at ``rate_per_second``; an empty bucket
is RESOURCE_EXHAUSTED (``RATE_LIMITED``, with the time until the next token as
RetryInfo). A server stream also holds one of its agency's
``max_streams_per_agency`` slots until it ends, for whatever reason; one more is
RESOURCE_EXHAUSTED (``TOO_MANY_STREAMS``). A limit of 0 is no limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common.config import LimitSettings
from services.common.errors import RateLimited, TooManyStreams


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key (an agency), thread-safe, on an injectable monotonic clock."""

    def __init__(
        self, rate_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_second < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        if rate_per_second > 0 and burst < 1:
            raise ValueError("a rate limit needs a burst of at least 1")
        self.rate = rate_per_second
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def try_acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when taken, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


class StreamSlot:
    """One held stream slot; :meth:`release` frees it (idempotent, thread-safe)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class StreamCounter:
    """At most ``limit`` concurrently held slots per key (an agency); 0 = unlimited."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("the stream limit must not be negative")
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str) -> StreamSlot | None:
        """A slot for ``key``, or None when ``key`` already holds ``limit`` of them."""
        with self._lock:
            held = self._held.get(key, 0)
            if self.limit and held >= self.limit:
                return None
            self._held[key] = held + 1
        return StreamSlot(lambda: self._release(key))

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)

    def _release(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)


class Limits:
    """The limits of one server: rate per agency and server streams per agency."""

    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.rate = RateLimiter(settings.rate_per_second, settings.burst, clock)
        self.streams = StreamCounter(settings.max_streams_per_agency)

    def admit(self, agency: str) -> None:
        """Admit one request of ``agency`` or raise :class:`RateLimited`."""
        retry_after = self.rate.try_acquire(agency)
        if retry_after > 0:
            raise RateLimited(agency, self.rate.rate, self.rate.burst, retry_after)

    def open_stream(self, agency: str) -> StreamSlot:
        """Admit a server stream of ``agency``: a token and a slot, or raise.

        The caller releases the slot when the stream ends, however it ends.
        """
        self.admit(agency)
        slot = self.streams.try_acquire(agency)
        if slot is None:
            raise TooManyStreams(agency, self.streams.limit)
        return slot
