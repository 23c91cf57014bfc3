"""The log of something a service does again and again (a flush, a catch-up round, a
reading of the store) while it keeps failing, as an operator wants to read it: one warning
when it starts failing, a reminder at most every ``reminder_seconds`` while it goes on failing
(for how long, how many times), and one line when it works again (after how long).

Without it, a loop that runs several times a second logs a warning each time for the whole of
an outage (a store down), and the line that matters is lost among thousands. The NATS link
(:mod:`services.common.natslink`) follows the same pattern with its own events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

#: While something keeps failing, a reminder at most this often.
REMINDER_SECONDS = 30.0


class FailureLog:
    """``failed`` each time it fails, ``succeeded`` each time it works; thread-safe.

    ``event`` is the warning's name, ``recovered`` the name of the line said once it works
    again (none when not given)."""

    def __init__(
        self,
        event: str,
        recovered: str | None = None,
        *,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        reminder_seconds: float = REMINDER_SECONDS,
    ) -> None:
        self._event = event
        self._recovered = recovered
        self._log = logger if logger is not None else structlog.get_logger(__name__)
        self._clock = clock
        self._reminder_seconds = reminder_seconds
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._logged_at = 0.0
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def failed(self, **fields: Any) -> None:
        """It failed (``fields``: the error, what failed): logged if it is the first
        failure, or the last warning is ``reminder_seconds`` old."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._logged_at < self._reminder_seconds:
                return
            self._logged_at = now
            failing_for = round(now - self._failing_since, 1)
            failures = self._failures
        if failures == 1:
            self._log.warning(self._event, **fields)
        else:
            self._log.warning(
                self._event, failing_for_seconds=failing_for, failures=failures, **fields
            )

    def succeeded(self, **fields: Any) -> None:
        """It worked: after failures, the ``recovered`` line (with how long it failed)."""
        if not self.failing:  # the common case, without taking the lock
            return
        with self._lock:
            since = self._failing_since
            if since is None:
                return
            failed_for = round(self._clock() - since, 1)
            failures = self._failures
            self._failing_since, self._failures = None, 0
        if self._recovered is not None:
            self._log.info(
                self._recovered, failed_for_seconds=failed_for, failures=failures, **fields
            )
