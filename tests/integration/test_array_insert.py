"""On PostgreSQL the ledger inserts with ArrayInsertRecorder (four plain arrays): the rows,
their positions and the refusal of a duplicate are the library recorder's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from services.ledger.application import Ledger
from services.ledger.store import ArrayInsertRecorder
from tests.support import store_environment
from tests.unit.incident_builders import REF

TOPIC = "services.ledger.domain.incident:Incident.Reported"


@pytest.fixture
def ledgers(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger]]:
    """The ledger, and a ledger with the library's own recorder, each on a fresh schema."""
    with (
        store_environment("postgres", tmp_path) as ours,
        store_environment("postgres", tmp_path) as library,
    ):
        topic = "eventsourcing.postgres:PostgresApplicationRecorder"
        a = Ledger(REF, env=ours)
        b = Ledger(REF, env={**library, "APPLICATION_RECORDER_TOPIC": topic})
        try:
            yield a, b
        finally:
            a.close()
            b.close()


def batch(ids: list[UUID]) -> list[StoredEvent]:
    states = [b'{"title":"Kotak suara \\u0000 \xe2\x80\xa8"}', bytes(range(256)), b"{}"]
    return [
        StoredEvent(originator_id, version, TOPIC, states[n % len(states)])
        for n, originator_id in enumerate(ids)
        for version in (1, 2)
    ]


def rows(ledger: Ledger) -> list[tuple[object, ...]]:
    return [
        (n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in ledger.recorder.select_notifications(1, 1000)
    ]


def test_the_ledger_inserts_the_rows_the_library_would(ledgers: tuple[Ledger, Ledger]) -> None:
    ours, library = ledgers
    assert type(ours.recorder) is ArrayInsertRecorder
    assert type(library.recorder) is PostgresApplicationRecorder
    ids = [uuid4() for _ in range(5)]
    for events in (batch(ids[:3]), batch(ids[3:])):
        assert ours.recorder.insert_events(events) == library.recorder.insert_events(events)
    assert rows(ours) == rows(library)
    assert len(rows(ours)) == 10
    # A version stored before fails the whole transaction, as with the library's.
    for ledger in (ours, library):
        with pytest.raises(IntegrityError):
            ledger.recorder.insert_events([*batch([uuid4()]), *batch(ids[:1])])
    assert rows(ours) == rows(library)
