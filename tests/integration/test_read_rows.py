"""The log read as plain rows (``services.ledger.store.read_rows``), on real stores, against
the library's own notifications of the same positions."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import Notification, StoredEvent

from services.ledger.store import read_rows, stored_id_text

Row = tuple[int, str, int, str, bytes]
TOPICS = ("incident:Reported", "incident:ActionLogged", "request:Recorded")


def _model(notifications: Sequence[Notification], topics: tuple[str, ...] | None) -> list[Row]:
    return [
        (n.id, str(n.originator_id), n.originator_version, n.topic, bytes(n.state))
        for n in notifications
        if topics is None or n.topic in topics
    ]


def test_rows_are_the_librarys_notifications(either_store: dict[str, str]) -> None:
    app: Application[UUID] = Application(env=either_store)
    rng = random.Random(7)
    try:
        recorder = app.recorder
        for _ in range(5):
            recorder.insert_events(
                [
                    StoredEvent(uuid4(), v, rng.choice(TOPICS), os.urandom(rng.randrange(1, 300)))
                    for v in range(1, rng.randrange(2, 40))
                ]
            )
        notifications = recorder.select_notifications(0, 1_000, inclusive_of_start=False)
        last = notifications[-1].id
        assert len(notifications) > 20

        def read(
            topics: tuple[str, ...] | None, after: int, limit: int, stop: int | None
        ) -> list[Row]:
            rows = read_rows(recorder, topics, after, limit, stop)
            # Plain: the ids as the store holds them, not parsed into UUIDs.
            assert all(type(row) is tuple and isinstance(row[1], str) for row in rows)
            return [(at, stored_id_text(i), v, t, bytes(s)) for at, i, v, t, s in rows]

        for topics in (None, TOPICS[:2], (TOPICS[2],)):
            expected = _model(notifications, topics)
            assert read(topics, 0, 1_000, None) == expected
            # Bounded on both sides, and limited.
            middle = notifications[len(notifications) // 3].id
            stop = notifications[2 * len(notifications) // 3].id
            bounded = [row for row in expected if middle < row[0] <= stop]
            assert read(topics, middle, 1_000, stop) == bounded
            assert read(topics, middle, 3, stop) == bounded[:3]
            assert read(topics, last, 10, None) == []
    finally:
        app.close()


def test_stored_ids_read_as_text_are_the_canonical_form() -> None:
    value = uuid4()
    assert stored_id_text(value) == str(value)
    assert stored_id_text(value.hex) == str(value)  # SQLite's stored form
    assert stored_id_text(str(value)) == str(value)  # PostgreSQL's text of a uuid
    assert stored_id_text(str(value).upper()) == str(value)  # parsed, not taken as it is
    assert stored_id_text("{" + str(value) + "}") == str(UUID(str(value)))
    with pytest.raises(ValueError):
        stored_id_text("x" * 36)
    with pytest.raises(ValueError):
        stored_id_text("not-an-id")
