"""On PostgreSQL the ledger inserts with ArrayInsertRecorder (four plain arrays, one call of
its insert function): the rows, their positions and the refusal of a duplicate are the
library recorder's, with the function and, on a store that lacks it, without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from structlog.testing import capture_logs

from services.ledger.application import Ledger
from services.ledger.store import INSERT_FUNCTION, ArrayInsertRecorder
from tests.support import _pg_connect, store_environment
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


def inserted_alike(ours: Ledger, library: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """The same batches inserted by both; the library's transaction refused to ours while
    ``monkeypatch`` holds (the function's path must not need it)."""
    ids = [uuid4() for _ in range(5)]
    for events in (batch(ids[:3]), batch(ids[3:])):
        expected = library.recorder.insert_events(events)
        with monkeypatch.context() as patch:
            patch.setattr(PostgresApplicationRecorder, "insert_events", refused)
            assert ours.recorder.insert_events(events) == expected
    return ids


def refused(*_: object, **__: object) -> None:
    raise AssertionError("the library's transaction was used")


def test_the_ledger_inserts_the_rows_the_library_would(
    ledgers: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, library = ledgers
    assert type(ours.recorder) is ArrayInsertRecorder
    assert type(library.recorder) is PostgresApplicationRecorder
    ids = inserted_alike(ours, library, monkeypatch)
    assert rows(ours) == rows(library)
    assert len(rows(ours)) == 10
    # The relay on PostgreSQL is woken by the insert's notification (on a channel named
    # after the table, not the schema: only this ledger inserts while the test listens).
    assert isinstance(ours.recorder, ArrayInsertRecorder)
    more = batch([uuid4()])
    with _pg_connect() as listener:
        listener.execute(f"LISTEN {ours.recorder.channel_name}")
        ours.recorder.insert_events(more)
        notified = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notified] == [ours.recorder.channel_name]
    library.recorder.insert_events(more)  # the two stores alike again
    # A version stored before fails the whole transaction, as with the library's.
    for ledger in (ours, library):
        with pytest.raises(IntegrityError):
            ledger.recorder.insert_events([*batch([uuid4()]), *batch(ids[:1])])
    assert rows(ours) == rows(library)


def test_a_store_without_the_insert_function_takes_the_library_s_transaction(
    ledgers: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables an earlier version made (no ``migrate`` since): the same rows, through the
    library's transaction, and one warning that says how to get the faster commit."""
    ours, library = ledgers
    assert isinstance(ours.recorder, ArrayInsertRecorder)
    schema = ours.recorder.datastore.schema
    with _pg_connect() as conn:
        conn.execute(f"DROP FUNCTION {schema}.{INSERT_FUNCTION}")
    env = {**ours.env, "CREATE_TABLE": "n"}
    earlier = Ledger(REF, env=env)
    try:
        with capture_logs() as logs:
            ids = [uuid4() for _ in range(5)]
            for events in (batch(ids[:3]), batch(ids[3:])):
                assert earlier.recorder.insert_events(events) == library.recorder.insert_events(
                    events
                )
        assert rows(earlier) == rows(library)
        warnings = [x for x in logs if x["event"] == "store.insert_function_missing"]
        assert len(warnings) == 1, logs
        assert warnings[0]["fix"] == "python -m services.ledger migrate"
        for ledger in (earlier, library):  # each sequence skips a number alike
            with pytest.raises(IntegrityError):
                ledger.recorder.insert_events(batch(ids[:1]))
    finally:
        earlier.close()
    # A migrate (the tables made again) brings the function back: no warning.
    again = Ledger(REF, env={**ours.env, "CREATE_TABLE": "y"})
    try:
        with capture_logs() as logs:
            inserted_alike(again, library, monkeypatch)
        assert not [x for x in logs if x["event"] == "store.insert_function_missing"]
        assert rows(again) == rows(library)
    finally:
        again.close()
