"""A service's connection to NATS as an operator sees it (the notifier's, the ledger's
evidence store's; ``name`` is the prefix of the log lines).

Whether it is up (``on_change``: the notifier's health and ``notifier_nats_connected``
follow it), and the log: one line when it goes down (``<name>.nats_disconnected``), a
reminder while it stays down (``<name>.nats_unreachable``, every :data:`REMINDER_SECONDS`:
for how long, how many attempts to reconnect failed, the last failure), and one line when it
is back (``<name>.nats_reconnected``, with how long it was down). The client library tries
again every half second or two and reports each failure (its own default, without an error
callback, logs each at ``error`` with a traceback): those are counted here, not logged one by
one. An error while the connection is up is logged as it comes (``<name>.nats_error``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

#: While NATS stays away, a reminder this often.
REMINDER_SECONDS = 60.0


class NatsLink:
    """Called from the NATS client's callbacks, on its event loop (one thread)."""

    def __init__(
        self,
        name: str,
        on_change: Callable[[bool], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        reminder_seconds: float = REMINDER_SECONDS,
    ) -> None:
        self._name = name
        self._on_change = on_change
        self._clock = clock
        self._reminder_seconds = reminder_seconds
        self.connected = False
        self._ever_connected = False
        self._down_since = clock()  # not connected yet: down from the start
        self._failures = 0
        self._last_error = ""
        self._reminded_at: float | None = None  # the first failure at start is told at once

    @property
    def failed_attempts(self) -> int:
        """Attempts to reach NATS that failed since the connection was last up."""
        return self._failures

    def up(self) -> None:
        """Connected: the first time, or again after an outage."""
        if self.connected:
            return
        if self._ever_connected:
            log.info(
                f"{self._name}.nats_reconnected",
                down_seconds=round(self._clock() - self._down_since, 1),
                failed_attempts=self._failures,
            )
        elif self._failures:
            log.info(
                f"{self._name}.nats_connected",
                waited_seconds=round(self._clock() - self._down_since, 1),
                failed_attempts=self._failures,
            )
        self.connected = self._ever_connected = True
        self._failures, self._last_error = 0, ""
        if self._on_change is not None:
            self._on_change(True)

    def down(self, stopping: bool) -> None:
        """The connection was lost (or closed by the service's own stop)."""
        if stopping:  # the service's own close, at its stop: nothing went wrong
            log.info(f"{self._name}.nats_closed")
        elif self.connected:
            log.warning(
                f"{self._name}.nats_disconnected",
                error=self._last_error or None,
                note="reconnecting",
            )
        if not self.connected:
            return
        self.connected = False
        self._down_since = self._clock()
        self._failures, self._last_error = 0, ""
        self._reminded_at = self._down_since  # the first reminder comes after a while
        if self._on_change is not None:
            self._on_change(False)

    def error(self, exc: Exception) -> None:
        """An error the client reports: a failed reconnection attempt while down (counted,
        and told in the reminders), else logged."""
        error = str(exc) or type(exc).__name__
        if self.connected:
            self._last_error = error  # a lost connection reports its cause first
            log.warning(f"{self._name}.nats_error", error=error)
            return
        self._failures += 1
        self._last_error = error
        now = self._clock()
        if self._reminded_at is None or now - self._reminded_at >= self._reminder_seconds:
            self._reminded_at = now
            log.warning(
                f"{self._name}.nats_unreachable",
                down_seconds=round(now - self._down_since, 1),
                failed_attempts=self._failures,
                last_error=error,
                note="reconnecting" if self._ever_connected else "not connected yet; trying again",
            )
