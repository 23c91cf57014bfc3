"""Per-agency limits: a request rate (token bucket) and concurrent server streams.

Both services apply them in the request interceptor, after authentication, so a
caller without valid credentials never costs an agency a token. Every request
(a stream's opening included) takes one token from its agency's bucket, which
holds at most ``burst`` tokens and refills at ``rate_per_second``; an empty bucket
is RESOURCE_EXHAUSTED (``RATE_LIMITED``, with the time until the next token as
RetryInfo). A server stream also holds one of its agency's
``max_streams_per_agency`` slots until it ends, for whatever reason; one more is
RESOURCE_EXHAUSTED (``TOO_MANY_STREAMS``). A limit of 0 is no limit.

Before authentication, :class:`AuthThrottle` refuses peers and token prefixes that
failed to authenticate too often (see its docstring).
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from services.common.config import LimitSettings
from services.common.errors import AuthThrottled, RateLimited, TooManyStreams

log = structlog.get_logger(__name__)

#: Characters of a presented bearer token that name its throttling key.
TOKEN_PREFIX_CHARS = 8


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


def peer_address(peer: str) -> str:
    """The throttling key of a gRPC peer (``ipv4:10.0.0.7:53412``): its address without
    the port; an IPv6 address by its /64 (one host can pick any address in it)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return f"ipv4:{rest.rpartition(':')[0]}"
    if kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%")[0]
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return f"ipv6:{host}"
        if address.ipv4_mapped is not None:
            return f"ipv4:{address.ipv4_mapped}"
        return f"ipv6:{ipaddress.IPv6Network(f'{address}/64', strict=False)}"
    return kind or peer  # unix sockets: one local peer


@dataclass
class _Failures:
    window_start: float
    count: int = 0
    blocked_until: float = 0.0


class FailureWindow:
    """Failures per key in fixed windows; ``max_failures`` within one blocks the key for a
    whole window. At most ``max_keys`` keys are kept (the least recently seen go first),
    so a flood of new keys costs bounded memory. Thread-safe, on an injectable clock."""

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, key: str) -> float:
        """Seconds ``key`` stays blocked (0.0 when it is not)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.blocked_until <= now:
                return 0.0
            self._entries.move_to_end(key)  # a blocked key that keeps trying stays remembered
            return entry.blocked_until - now

    def fail(self, key: str) -> bool:
        """Count a failure of ``key``; True when it starts a block (once per burst)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now - entry.window_start >= self.window:
                entry = _Failures(now)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
            entry.count += 1
            if entry.count >= self.max_failures and entry.blocked_until <= now:
                entry.blocked_until = now + self.window
                return True
            return False

    def __len__(self) -> int:
        return len(self._entries)


class AuthThrottle:
    """Throttles guessing of credentials, before authentication.

    Every failed authentication with a bearer token (an unknown token) counts against the
    caller's peer address and against the token's first eight characters. After
    ``auth_max_failures`` failures of one of them within ``auth_window_seconds``, every
    request from that peer, or with a token of that prefix, is refused for one window
    with RESOURCE_EXHAUSTED (``AUTH_THROTTLED``, RetryInfo = the rest of the block),
    valid credentials included: the answer must not tell a guesser whether a guess was
    right. The credentials are not even looked at meanwhile. RESOURCE_EXHAUSTED rather
    than UNAVAILABLE because clients retry UNAVAILABLE at once, by themselves.

    One ``auth.throttled`` log line per block, not one per refused request.
    """

    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = settings.auth_max_failures > 0
        args = (settings.auth_max_failures, settings.auth_window_seconds, settings.auth_max_keys)
        self.peers = FailureWindow(*args, clock=clock)
        self.tokens = FailureWindow(*args, clock=clock)

    def _keys(self, peer: str, token: str | None) -> list[tuple[str, FailureWindow, str]]:
        keys = [("peer", self.peers, peer_address(peer))]
        if token:
            keys.append(("token", self.tokens, token[:TOKEN_PREFIX_CHARS]))
        return keys

    def check(self, peer: str, token: str | None) -> None:
        """Raise :class:`AuthThrottled` when the peer or the token's prefix is blocked."""
        if not self.enabled:
            return
        for kind, window, key in self._keys(peer, token):
            retry_after = window.blocked(key)
            if retry_after > 0:
                raise AuthThrottled(kind, window.max_failures, window.window, retry_after)

    def failed(self, peer: str, token: str | None) -> None:
        """Count a failed authentication; log when it starts a block."""
        if not self.enabled:
            return
        blocked = {
            # A token's prefix is the beginning of a secret: only its hash is logged.
            kind: key if kind == "peer" else _digest(key)
            for kind, window, key in self._keys(peer, token)
            if window.fail(key)
        }
        if blocked:
            log.warning(
                "auth.throttled",
                **blocked,
                failures=self.peers.max_failures,
                window_seconds=self.peers.window,
            )


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


class Limits:
    """The limits of one server: rate per agency, server streams per agency, and the
    throttle of failed authentications per peer and token prefix."""

    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.rate = RateLimiter(settings.rate_per_second, settings.burst, clock)
        self.streams = StreamCounter(settings.max_streams_per_agency)
        self.auth = AuthThrottle(settings, clock)

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
