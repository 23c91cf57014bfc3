"""The log of something done again and again while it keeps failing: one warning, a
reminder now and then, one line when it works again (FailureLog, and the metrics' reads of
the store that use it)."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.common.failurelog import FailureLog
from services.common.metrics import Metrics
from tests.fanout_support import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_are_one_warning_then_a_reminder_at_most_every_period_then_one_line() -> None:
    clock = Clock()
    failures = FailureLog("thing.failed", "thing.works_again", clock=clock, reminder_seconds=30)
    with capture_logs() as logs:
        failures.succeeded()  # working: nothing to say
        for _ in range(100):  # a loop 2.5 times a second for 40 s
            failures.failed(error="connection refused")
            clock.now += 0.4
        assert failures.failing
        failures.succeeded(position=7)
        failures.succeeded()
    assert [(x["event"], x["log_level"]) for x in logs] == [
        ("thing.failed", "warning"),
        ("thing.failed", "warning"),
        ("thing.works_again", "info"),
    ]
    first, reminder, again = logs
    assert first["error"] == "connection refused"
    assert reminder["failing_for_seconds"] == 30.0 and reminder["failures"] == 76
    assert again == {
        "event": "thing.works_again",
        "log_level": "info",
        "failed_for_seconds": 40.0,
        "failures": 100,
        "position": 7,
    }
    assert not failures.failing


def test_a_new_outage_is_told_at_once() -> None:
    clock = Clock()
    failures = FailureLog("thing.failed", clock=clock, reminder_seconds=30)
    with capture_logs() as logs:
        failures.failed(error="a")
        clock.now += 1
        failures.succeeded()  # no recovered event given: nothing said
        clock.now += 1
        failures.failed(error="b")
    assert [x.get("error") for x in logs] == ["a", "b"]


def test_metrics_read_from_a_store_that_is_down_warn_once_not_at_each_read() -> None:
    """The ledger reads its stored gauges every second (three of them) and warned for each
    one at each read while PostgreSQL was down: about 2.4 lines a second on each replica."""
    down = [True]
    reads = [0]

    def read() -> float:
        reads[0] += 1
        if down[0]:
            raise ConnectionError("connection refused")
        return float(reads[0])

    metrics = Metrics("test", store_interval=0.01, store_max_age=1.0)
    metrics.stored_gauge("test_store_position", "a value read from the store", read)
    metrics.stored_gauge("test_store_lag", "another one", read)
    with capture_logs() as logs:
        metrics.serve("127.0.0.1:0")
        try:
            wait_until(lambda: reads[0] >= 40, 10, "20 failed rounds of reads")
            failed = [x for x in list(logs) if x["event"] == "metrics.read_failed"]
            assert len(failed) == 1, f"{len(failed)} warnings"
            down[0] = False
            wait_until(
                lambda: any(x["event"] == "metrics.read_again" for x in list(logs)),
                10,
                "the line saying the values are read again",
            )
        finally:
            metrics.close()
    assert failed[0]["metrics"] == ["test_store_position", "test_store_lag"]
    assert "connection refused" in failed[0]["error"]
