"""How the relay reads the log (services/ledger/relay_reading.py), on a real store: on
PostgreSQL an event recorded by another process (another replica: nothing wakes this
reader but the store's LISTEN/NOTIFY) ends its wait at once, not at its next poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic

from services.ledger.application import Ledger
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.incident import Actor, Envelope, incident_event_classes
from services.ledger.relay_reading import ListeningReader, open_reader
from tests.support import reference, store_environment

#: Longer than any wait a notification ends: a reader that only polled would take this.
POLL_SECONDS = 30.0


@pytest.fixture
def two_ledgers(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger]]:
    """Two applications on one PostgreSQL schema, as two replicas are."""
    ref = reference()
    with store_environment("postgres", tmp_path) as env:
        first = Ledger(ref, env={**env, "CREATE_TABLE": "y"})
        second = Ledger(ref, env=env)
        yield first, second
        second.close()
        first.close()


def report(ledger: Ledger) -> int:
    role = ledger.reference.agencies["bpbd"].role
    request = uuid4().hex
    envelope = Envelope(Actor("bpbd", "officer-bpbd", role), request, request, request)
    command = ReportIncident("Banjir", "", "flood", "", {"kecamatan": "ipuh"}, None)
    return ledger.execute(envelope, command).position


def test_a_write_of_another_replica_wakes_the_postgres_reader_at_once(
    two_ledgers: tuple[Ledger, Ledger],
) -> None:
    reader_ledger, other = two_ledgers
    recorder = reader_ledger.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    topics = [get_topic(cls) for cls in incident_event_classes()]
    first = report(other)
    reader = open_reader(recorder, 0, topics, 100, threading.Event())
    assert isinstance(reader, ListeningReader)
    try:
        assert [n.id for n in reader.next_batch(POLL_SECONDS)] == [first]  # what was there
        recorded: list[int] = []
        timer = threading.Timer(0.5, lambda: recorded.append(report(other)))
        timer.start()
        started = time.monotonic()
        batch = reader.next_batch(POLL_SECONDS)
        waited = time.monotonic() - started
        timer.join()
        assert [n.id for n in batch] == recorded
        assert waited < POLL_SECONDS / 3, f"woken after {waited:.1f} s: by its poll, not LISTEN"
    finally:
        reader.close()
