"""The notifier's delivery log of live streams while its store is away."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import cast

from structlog.testing import capture_logs

from services.notifier.store import DeliveryLog, LogEntry, NotifierStore
from tests.fanout_support import wait_until


class FlakyStore:
    """A store whose ``log`` fails until told otherwise, counting the attempts."""

    def __init__(self) -> None:
        self.down = True
        self.attempts = 0
        self.written: list[LogEntry] = []
        self._lock = threading.Lock()

    def log(self, entries: Sequence[LogEntry]) -> None:
        with self._lock:
            self.attempts += 1
            if self.down:
                raise ConnectionError("connection refused")
            self.written.extend(entries)


def entry(n: int) -> LogEntry:
    return LogEntry(f"e{n}", "incidents/x", n, "polres", "grpc", "sub", "delivered", 1, "", 0.0)


def test_a_store_away_is_one_warning_not_one_per_flush_and_nothing_is_lost() -> None:
    """Flushes are tried every ``interval`` (0.2 s in the service): while the store is down
    the kept records are tried at each one, and the warning comes once (again only every
    ``FAILURE_LOG_SECONDS``), then one line when they are written. Before, every flush
    logged a warning: five a second on each notifier replica for as long as PostgreSQL was
    down."""
    store = FlakyStore()
    with capture_logs() as logs:
        deliveries = DeliveryLog(cast(NotifierStore, store), interval=0.01)
        try:
            deliveries.record(entry(1))
            wait_until(lambda: store.attempts >= 20, what="20 failed flushes")
            failed = [x for x in list(logs) if x["event"] == "delivery_log.flush_failed"]
            assert len(failed) == 1, f"{len(failed)} warnings for {store.attempts} flushes"
            deliveries.record(entry(2))
            store.down = False
            wait_until(lambda: len(store.written) == 2, what="both records written")
            wait_until(
                lambda: any(x["event"] == "delivery_log.flushed_again" for x in list(logs)),
                what="the line saying the records are written again",
            )
        finally:
            deliveries.close()
    assert failed[0]["log_level"] == "warning"
    assert "connection refused" in failed[0]["error"]
    (again,) = [x for x in logs if x["event"] == "delivery_log.flushed_again"]
    assert again["entries"] == 2
    assert [e.event_id for e in store.written] == ["e1", "e2"]
