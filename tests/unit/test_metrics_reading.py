"""shared_reading: the gauges of one scrape share one costly reading; gauges that read
the store never hold up a scrape."""

from __future__ import annotations

import itertools
import threading
import urllib.request
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

from services.common.metrics import Metrics, shared_reading
from services.notifier.server import register_metrics
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

        # Read when serving starts, then every 0.05 s: a loaded machine may already have
        # read it again, so any count the reads reached will do.
        first = sample()
        assert first is not None and float(first.split()[1]) >= 1.0
        answers.clear()  # the read under way now hangs
        wait_until(lambda: sample() is None, 5, "the stale value to be left out")
        answers.set()
        wait_until(lambda: sample() is not None, 5, "the value to come back")
    finally:
        answers.set()
        metrics.close()


def test_the_notifier_s_scrape_never_waits_for_its_store() -> None:
    """The notifier's dead letter and waiting gauges read its database: with PostgreSQL
    hung, a scrape that waited for them failed (Prometheus's timeout), taking
    notifier_nats_connected and every other notifier metric with it."""
    answers = threading.Event()

    class HungStore:
        def dead_letter_count(self) -> int:
            answers.wait()
            return 2

        def waiting(self) -> tuple[int, float | None]:
            answers.wait()
            return 3, None

    status = SimpleNamespace(
        nats_connected=True, consumer_pending=0, consumer_ack_pending=0, restarts=Counter()
    )
    engine = SimpleNamespace(status=status, live=[])
    metrics = Metrics("notifier", store_interval=0.05, store_max_age=0.5)
    register_metrics(metrics, cast(Any, engine), cast(Any, HungStore()))
    answered = threading.Thread(target=metrics.serve, args=("127.0.0.1:0",), daemon=True)
    answered.start()  # serving reads the store once first: it hangs there too, before
    try:
        wait_until(lambda: metrics.port != 0, 5, "/metrics to be served")
        lines = scrape_lines(metrics.port)  # at once, although the store hangs
        assert "notifier_nats_connected 1.0" in lines
        assert not any(line.startswith("notifier_dead_letters ") for line in lines)
        answers.set()
        wait_until(
            lambda: "notifier_dead_letters 2.0" in scrape_lines(metrics.port),
            5,
            "the store's gauges once it answers",
        )
        assert "notifier_webhook_deliveries_waiting 3.0" in scrape_lines(metrics.port)
    finally:
        answers.set()
        answered.join(timeout=5)
        metrics.close()


def scrape_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text: str = reply.read().decode()
    return text.splitlines()
