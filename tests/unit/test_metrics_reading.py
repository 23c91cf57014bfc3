"""shared_reading: the gauges of one scrape share one costly reading; gauges that read
the store never hold up a scrape."""

from __future__ import annotations

import itertools
import threading
import urllib.request

from services.common.metrics import Metrics, shared_reading
from tests.fanout_support import wait_until


def test_a_shared_reading_is_made_once_per_period_and_again_after_it() -> None:
    counter = itertools.count(1)
    once = shared_reading(lambda: next(counter), seconds=3600)
    assert [once(), once(), once()] == [1, 1, 1]
    always = shared_reading(lambda: next(counter), seconds=0)
    assert [always(), always()] == [2, 3]


def test_a_scrape_never_waits_for_a_gauge_that_reads_the_store() -> None:
    """A stored gauge is read in the background: while its read hangs (the store does not
    answer), a scrape answers at once, with the last value until it is too old."""
    answers = threading.Event()
    answers.set()
    reads = itertools.count(1)

    def read() -> float:
        value = float(next(reads))
        answers.wait()  # the store stops answering when cleared
        return value

    metrics = Metrics("test", store_interval=0.05, store_max_age=0.5)
    metrics.stored_gauge("test_store_position", "a value read from the store", read)
    metrics.gauge("test_in_memory", "a value kept in memory", lambda: 7.0)
    port = metrics.serve("127.0.0.1:0")
    try:

        def sample() -> str | None:
            """The stored gauge's sample line, if the scrape has one."""
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as reply:
                lines = reply.read().decode().splitlines()
            assert "test_in_memory 7.0" in lines
            return next((line for line in lines if line.startswith("test_store_position ")), None)

        assert sample() == "test_store_position 1.0"  # read once when serving starts
        answers.clear()  # the read under way now hangs
        wait_until(lambda: sample() is None, 5, "the stale value to be left out")
        answers.set()
        wait_until(lambda: sample() is not None, 5, "the value to come back")
    finally:
        answers.set()
        metrics.close()
