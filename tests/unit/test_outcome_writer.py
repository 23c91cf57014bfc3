"""The writer of webhook outcomes while the notifier's store is away: deliveries under way
retry their outcome within their lease, and the log says so once per outage, not once per
delivery and retry (a 20 s PostgreSQL outage logged 357 such lines on two notifiers)."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from services.notifier.outcomes import OutcomeWriter
from services.notifier.store import Job, LogEntry, Outcome


class FlakyStore:
    """A store whose transactions fail until ``down_until`` (monotonic seconds)."""

    def __init__(self, down_until: float) -> None:
        self.down_until = down_until
        self.finished: list[Outcome] = []

    def finish_all(self, outcomes: list[Outcome]) -> None:
        if time.monotonic() < self.down_until:
            raise ConnectionRefusedError("connection refused")
        self.finished.extend(outcomes)


def outcome(n: int) -> Outcome:
    job = Job(
        id=f"dl_{n}",
        webhook_id="wh_1",
        stream_seq=n,
        position=n,
        event_id=f"ev_{n}",
        incident="incidents/1",
        agency="bpbd",
        payload="{}",
        attempts=0,
        first_attempt_at=None,
        last_attempt_at=None,
        last_error="",
    )
    entry = LogEntry(f"ev_{n}", "incidents/1", n, "bpbd", "webhook", "webhooks/wh_1",
                     "delivered", 1, "", 0.0)  # fmt: skip
    return Outcome(job, "delivered", 1, "", 0.0, entry)


async def record_during_outage(store: FlakyStore, count: int, lease: float) -> list[bool]:
    writer = OutcomeWriter(store)  # type: ignore[arg-type]
    runner = asyncio.create_task(writer.run())
    try:
        lease_ends = time.monotonic() + lease
        return list(
            await asyncio.gather(
                *(writer.record_within(outcome(n), lease_ends, lambda: False) for n in range(count))
            )
        )
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_an_outage_is_one_warning_and_one_line_when_outcomes_are_recorded_again() -> None:
    store = FlakyStore(down_until=time.monotonic() + 1.0)
    with capture_logs() as logs:
        recorded = asyncio.run(record_during_outage(store, count=16, lease=30.0))
    assert recorded == [True] * 16
    assert len(store.finished) == 16
    assert [x["event"] for x in logs] == [
        "webhook.outcome_not_recorded",
        "webhook.outcome_recorded_again",
    ]
    assert logs[0]["error"] == "ConnectionRefusedError: connection refused"


def test_an_outcome_not_recorded_within_the_lease_is_left_to_the_lease() -> None:
    store = FlakyStore(down_until=time.monotonic() + 60.0)
    with capture_logs() as logs:
        recorded = asyncio.run(record_during_outage(store, count=4, lease=0.5))
    assert recorded == [False] * 4
    assert [x["event"] for x in logs] == ["webhook.outcome_not_recorded"]
