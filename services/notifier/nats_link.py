"""The notifier's connection to NATS as an operator sees it.

Whether it is up (the notifier's health and ``notifier_nats_connected`` follow it), and the
log: one line when it goes down (``notifier.nats_disconnected``), a reminder while it stays
down (``notifier.nats_unreachable``, every :data:`REMINDER_SECONDS`: for how long, how many
attempts to reconnect failed, the last failure), and one line when it is back
(``notifier.nats_reconnected``, with how long it was down). The client library tries again
every half second and reports each failure: those are counted here, not logged one by one
(before, a ``notifier.nats_error`` line every 0.5 s for as long as NATS was away). An error
while the connection is up is logged as it comes (``notifier.nats_error``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

#: While NATS stays away, a reminder this often.
REMINDER_SECONDS = 60.0


class NatsLink:
    """Called from the NATS client's callbacks, on the engine's loop (one thread)."""

    def __init__(
        self,
        on_change: Callable[[bool], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        reminder_seconds: float = REMINDER_SECONDS,
    ) -> None:
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
                "notifier.nats_reconnected",
                down_seconds=round(self._clock() - self._down_since, 1),
                failed_attempts=self._failures,
            )
        elif self._failures:
            log.info(
                "notifier.nats_connected",
                waited_seconds=round(self._clock() - self._down_since, 1),
                failed_attempts=self._failures,
            )
        self.connected = self._ever_connected = True
        self._failures, self._last_error = 0, ""
        self._on_change(True)

    def down(self, stopping: bool) -> None:
        """The connection was lost (or closed by the notifier's own stop)."""
        if stopping:  # the notifier's own close, at its stop: nothing went wrong
            log.info("notifier.nats_closed")
        elif self.connected:
            log.warning(
                "notifier.nats_disconnected",
                error=self._last_error or None,
                note="delivery pauses; reconnecting every 0.5 s",
            )
        if not self.connected:
            return
        self.connected = False
        self._down_since = self._clock()
        self._failures, self._last_error = 0, ""
        self._reminded_at = self._down_since  # the first reminder comes after a while
        self._on_change(False)

    def error(self, exc: Exception) -> None:
        """An error the client reports: a failed reconnection attempt while down (counted,
        and told in the reminders), else logged."""
        error = str(exc) or type(exc).__name__
        if self.connected:
            self._last_error = error  # a lost connection reports its cause first
            log.warning("notifier.nats_error", error=error)
            return
        self._failures += 1
        self._last_error = error
        now = self._clock()
        if self._reminded_at is None or now - self._reminded_at >= self._reminder_seconds:
            self._reminded_at = now
            log.warning(
                "notifier.nats_unreachable",
                down_seconds=round(now - self._down_since, 1),
                failed_attempts=self._failures,
                last_error=error,
                note="delivery pauses; reconnecting every 0.5 s"
                if self._ever_connected
                else "the notifier has not reached NATS yet; trying again",
            )
