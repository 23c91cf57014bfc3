"""The notifier's connection to NATS as its log tells it: one line when it goes down, a
reminder a minute while it stays down (not a line per reconnection attempt, every 0.5 s),
one line when it is back; health follows it (``on_change``)."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.common.natslink import NatsLink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_one_line_down_a_reminder_a_minute_and_one_line_back() -> None:
    clock, changes = Clock(), list[bool]()
    link = NatsLink("notifier", changes.append, clock=clock, reminder_seconds=60)
    link.up()
    assert changes == [True] and link.connected
    with capture_logs() as logs:
        link.error(ConnectionResetError("unexpected EOF"))  # the lost connection's cause
        link.down(stopping=False)
        for _ in range(300):  # 150 s of attempts, 0.5 s apart
            clock.now += 0.5
            link.error(ConnectionRefusedError("Connect call failed"))
        link.up()
    assert changes == [True, False, True]
    assert [line["event"] for line in logs] == [
        "notifier.nats_error",
        "notifier.nats_disconnected",
        "notifier.nats_unreachable",  # at 60 s
        "notifier.nats_unreachable",  # at 120 s
        "notifier.nats_reconnected",
    ]
    assert logs[1]["error"] == "unexpected EOF"
    assert logs[2]["down_seconds"] == 60 and logs[2]["failed_attempts"] == 120
    assert logs[2]["last_error"] == "Connect call failed"
    assert logs[4]["down_seconds"] == 150 and logs[4]["failed_attempts"] == 300
    assert link.failed_attempts == 0


def test_a_notifier_that_cannot_reach_nats_at_start_says_so_at_once_then_each_minute() -> None:
    clock, changes = Clock(), list[bool]()
    link = NatsLink("notifier", changes.append, clock=clock, reminder_seconds=60)
    with capture_logs() as logs:
        for _ in range(10):
            link.error(ConnectionRefusedError("Connect call failed"))
            clock.now += 0.5
        link.up()
        link.down(stopping=True)  # the notifier's own stop
    assert [line["event"] for line in logs] == [
        "notifier.nats_unreachable",
        "notifier.nats_connected",
        "notifier.nats_closed",
    ]
    assert logs[1]["failed_attempts"] == 10
    assert changes == [True, False]
