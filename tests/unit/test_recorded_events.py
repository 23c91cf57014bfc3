"""RecordedEvents: what a replica recorded, kept until a checkpoint found it as written."""

from __future__ import annotations

from uuid import uuid4

from eventsourcing.persistence import Notification

from services.ledger.audit.recorded import RecordedCheck, RecordedEvents

TOPIC = "incident-event"


def _recording(position: int, state: bytes, topic: str = TOPIC) -> Notification:
    return Notification(
        originator_id=uuid4(), originator_version=1, topic=topic, state=state, id=position
    )


def _row(position: int, state: bytes) -> tuple[int, str, int, str, bytes]:
    return (position, uuid4().hex, 1, TOPIC, state)


def test_only_incident_events_are_kept_and_found_ones_are_let_go() -> None:
    recorded = RecordedEvents([TOPIC])
    recorded.add(
        [_recording(1, b"a"), _recording(2, b"request", topic="other"), _recording(3, b"c")]
    )
    assert sorted(recorded.pending()) == [1, 3]

    check = RecordedCheck(recorded)
    assert check.first == 1
    check.row(_row(1, b"a"))
    check.row(_row(2, b"request"))
    check.row(_row(3, b"c"))
    assert check.problem() is None
    assert recorded.pending() == {}


def test_a_changed_or_missing_event_is_named_and_stays_kept() -> None:
    recorded = RecordedEvents([TOPIC])
    recorded.add([_recording(p, bytes([p])) for p in range(1, 6)])
    check = RecordedCheck(recorded)
    check.row(_row(1, b"\x01"))
    check.row(_row(2, b"\x09"))  # other bytes at that position
    check.row(_row(4, b"\x04"))
    problem = check.problem()
    assert problem is not None
    assert "2 missing (positions 3, 5)" in problem
    assert "1 changed (positions 2)" in problem
    assert sorted(recorded.pending()) == [1, 2, 3, 4, 5]  # nothing let go on a refusal
    assert RecordedCheck(recorded).problem(until=1) is not None  # 1 not read this time
    bounded = RecordedCheck(recorded)
    bounded.row(_row(1, b"\x01"))
    assert bounded.problem(until=1) is None  # only up to ``until`` is asked for
    assert sorted(recorded.pending()) == [2, 3, 4, 5]


def test_beyond_its_limit_the_oldest_half_is_dropped() -> None:
    recorded = RecordedEvents([TOPIC], limit=4)
    recorded.add([_recording(p, b"x") for p in range(1, 6)])
    assert sorted(recorded.pending()) == [3, 4, 5]


def test_events_kept_out_of_order_are_checked_in_order() -> None:
    recorded = RecordedEvents([TOPIC])
    recorded.add([_recording(5, b"e"), _recording(2, b"b"), _recording(9, b"i")])
    check = RecordedCheck(recorded)
    assert check.first == 2
    check.row(_row(2, b"b"))
    check.row(_row(5, b"e"))
    assert check.problem(until=5) is None
    assert sorted(recorded.pending()) == [9]
