"""Sealed snapshots on real stores (SQLite, PostgreSQL): a long incident loads from its latest
snapshot to the state a full replay gives; snapshots changed in the store (an edited state
under its old seal, the seal stripped, another incident's snapshot, edited event rows) are
rejected and the events give the true state; erasure on a long incident not in memory; and
nothing that reads the event log sees a snapshot."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import StoredEvent
from psycopg.sql import SQL, Identifier
from structlog.testing import capture_logs

from services.common.errors import DataLoss
from services.common.sql import SQLiteDatabase, postgres_connect
from services.ledger.application import Ledger
from services.ledger.audit import public_key_bytes, verify_store
from services.ledger.domain.commands import (
    AssignLeadAgency,
    ErasePersonalData,
    LogAction,
    ReadPersonalData,
    ReportIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import Incident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import KeyRing, PersonalKeys
from services.ledger.seals import Sealer
from services.ledger.snapshots import SNAPSHOT_FORMAT, Snapshots
from tests.support import reference, store_environment
from tests.unit.incident_builders import COORDINATOR, LEAD, LOCATION, REPORTER, envelope_for

KEY = Ed25519PrivateKey.generate()
INTERVAL = 10
ERASER = COORDINATOR  # may erase personal data (the reference data's policy)
READER = "bawaslu"  # may read it


def table(recorder: Any) -> str:
    """The table a recorder of the library writes (SQLite and PostgreSQL recorders have one)."""
    return str(recorder.events_table_name)


@dataclass
class Store:
    kind: str
    env: dict[str, str]
    ledger: Ledger
    snapshots: Snapshots

    def _run(self, table: str, statement: str, params: tuple[Any, ...]) -> None:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.env["SQLITE_DBNAME"])) as lite, lite:
                lite.execute(statement.replace("{t}", table), params)
            return
        with postgres_connect(self.env, autocommit=True) as pg:
            query = SQL(statement.replace("?", "%s").replace("{t}", "{table}")).format(
                table=Identifier(self.env["POSTGRES_SCHEMA"], table)
            )
            pg.execute(query, params)

    def replace_snapshot(self, old: bytes, new: bytes) -> None:
        """Change a stored snapshot's bytes in place, as an intruder would."""
        self._run(
            table(self.snapshots.recorder), "UPDATE {t} SET state = ? WHERE state = ?", (new, old)
        )

    def delete_snapshot_row(self, state: bytes) -> None:
        self._run(table(self.snapshots.recorder), "DELETE FROM {t} WHERE state = ?", (state,))

    def replace_event(self, old: bytes, new: bytes) -> None:
        self._run(
            table(self.ledger.recorder), "UPDATE {t} SET state = ? WHERE state = ?", (new, old)
        )

    def latest(self, incident_id: UUID) -> StoredEvent:
        rows = self.snapshots.recorder.select_events(incident_id, desc=True, limit=1)
        assert rows, "no snapshot stored"
        return rows[0]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as store_env:
        # No write cache: every command loads its incident from the store.
        ledger = Ledger(
            reference(),
            env=store_env,
            sealer=Sealer(KEY),
            cache_size=0,
            snapshot_interval=INTERVAL,
        )
        ledger.personal_keys = PersonalKeys(
            SQLiteDatabase(":memory:"), KeyRing({"k1": bytes(range(32))}, "k1")
        )
        snapshots = ledger.incident_snapshots
        assert snapshots is not None
        try:
            yield Store(request.param, store_env, ledger, snapshots)
        finally:
            ledger.personal_keys.close()
            ledger.close()


def long_incident(ledger: Ledger, actions: int) -> tuple[UUID, list[UUID]]:
    """A report naming a reporter and a witness, the witness erased early, then actions:
    ``actions + 4`` events. Its id and its subjects (reporter first)."""
    people = PersonalData(
        reporter=Person(name="Siti", phone="081273456690"), witnesses=(Person(name="Budi"),)
    )
    command = ReportIncident("Amplop dibagikan", "", "money_politics", "", dict(LOCATION), people)
    incident_id = ledger.execute(envelope_for(REPORTER), command).incident_id
    ledger.execute(envelope_for(COORDINATOR), VerifyIncident(incident_id, 0, "ok"))
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 0, LEAD, ""))
    subjects = list(ledger.get_incident(incident_id).subjects)
    erase = ErasePersonalData(incident_id, 0, (subjects[1],), "asked by the witness")
    ledger.erase_personal_data(envelope_for(ERASER), erase)
    for n in range(actions):
        ledger.execute(envelope_for(LEAD), LogAction(incident_id, 0, f"patrol {n}", None))
    snapshots = ledger.incident_snapshots
    assert snapshots is not None
    snapshots.flush()
    return incident_id, subjects


def whole(incident: Incident) -> tuple[Any, ...]:
    """All the incident holds."""
    return (
        incident.version,
        incident.status,
        incident.head_hash,
        incident.head_seal,
        incident.subjects,
        incident.decisions,
        incident.accesses,
        incident.event_values,
        incident.event_types,
        incident.event_agencies,
        incident.snapshot_state(),
        incident.event_rows(),
    )


def replayed(ledger: Ledger, incident_id: UUID) -> Incident:
    incident: Incident = ledger.load_aggregate(incident_id)  # every event, no snapshot
    return incident


def rejections(logs: Iterable[Mapping[str, Any]]) -> list[str]:
    return [e["problem"] for e in logs if e["event"] == "incident.snapshot_rejected"]


def test_a_long_incident_loads_from_its_snapshot_to_the_replayed_state(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident_id, _ = long_incident(store.ledger, 33)  # 37 events
    versions = [s.originator_version for s in store.snapshots.recorder.select_events(incident_id)]
    assert versions == [10, 20, 30]
    replays: list[UUID] = []
    monkeypatch.setattr(store.ledger, "load_incident", lambda i, v=None: replays.append(i))
    with capture_logs() as logs:
        loaded = store.ledger.get_incident(incident_id)
    assert replays == []  # from the snapshot at 30 and the 7 events after it
    assert rejections(logs) == []
    monkeypatch.undo()
    truth = replayed(store.ledger, incident_id)
    assert loaded.version == 37
    assert [s.erased for s in loaded.subjects.values()] == [False, True]
    assert whole(loaded) == whole(truth)


def test_an_erasure_on_a_long_incident_not_in_memory_records_its_event(store: Store) -> None:
    ledger = store.ledger
    incident_id, (reporter, _) = long_incident(ledger, 40)
    erase = ErasePersonalData(incident_id, 0, (reporter,), "asked by the reporter")
    result = ledger.erase_personal_data(envelope_for(ERASER), erase)
    assert result.version == 45
    last = list(ledger.events.get(incident_id, gt=44))
    assert [type(e).__name__ for e in last] == ["PersonalDataErased"]
    loaded = ledger.get_incident(incident_id)
    assert all(s.erased for s in loaded.subjects.values())
    assert whole(loaded) == whole(replayed(ledger, incident_id))
    read = ReadPersonalData(incident_id, 0, "check the report")
    with pytest.raises(Exception, match="no personal data"):
        ledger.read_personal_data(envelope_for(READER), read)


def forge_edited(store: Store, incident_id: UUID, _other: UUID) -> None:
    """The state edited under its old seal: the erased witness not erased."""
    old = bytes(store.latest(incident_id).state)
    new = old.replace(b'"erased":true', b'"erased":false').replace(b",true]", b",false]")
    assert new != old
    store.replace_snapshot(old, new)


def forge_stripped(store: Store, incident_id: UUID, _other: UUID) -> None:
    old = bytes(store.latest(incident_id).state)
    store.replace_snapshot(old, old.split(b"\n", 1)[1])


def forge_copied(store: Store, incident_id: UUID, other: UUID) -> None:
    """Another incident's snapshot (sealed, intact) stored as this one's latest."""
    theirs = store.latest(other)
    store.snapshots.recorder.insert_events(
        [StoredEvent(incident_id, theirs.originator_version + 5, theirs.topic, theirs.state)]
    )


def forge_rows(store: Store, incident_id: UUID, _other: UUID) -> None:
    """An event row edited (its correctable values), the sealed snapshot left as it was."""
    old = store.snapshots.rows(incident_id, store.latest(incident_id).originator_version)
    assert old is not None
    new = old.replace(b'"patrol 3"', b'"patrol 4"')
    assert new != old
    store.replace_snapshot(old, new)


def forge_rows_deleted(store: Store, incident_id: UUID, _other: UUID) -> None:
    old = store.snapshots.rows(incident_id, store.latest(incident_id).originator_version)
    assert old is not None
    store.delete_snapshot_row(old)


FORGERIES = {
    "edited": (forge_edited, "no longer matches its seal"),
    "stripped": (forge_stripped, "carries no seal|no longer matches"),
    "copied": (forge_copied, "a snapshot of incident"),
    "rows": (forge_rows, "event rows are missing or no longer match"),
    "rows deleted": (forge_rows_deleted, "event rows are missing or no longer match"),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_snapshot_is_rejected_and_the_events_give_the_true_state(
    store: Store, forgery: str
) -> None:
    ledger = store.ledger
    incident_id, _ = long_incident(ledger, 28)  # 32 events: snapshots at 10, 20, 30
    other, _ = long_incident(ledger, 28)
    forge, problem = FORGERIES[forgery]
    forge(store, incident_id, other)
    with capture_logs() as logs:
        loaded = ledger.get_incident(incident_id)
        state = whole(loaded)  # reads the event rows too
    found = rejections(logs)
    assert len(found) == 1, found
    assert re.search(problem, found[0]), found
    assert whole(replayed(ledger, incident_id)) == state
    assert [s.erased for s in loaded.subjects.values()] == [False, True]


def test_an_event_changed_below_the_snapshot_head_fails_the_load(store: Store) -> None:
    """The event the snapshot stands for is read on each load: changed, the snapshot is not
    used, and the full replay finds the change (DATA_LOSS), as without snapshots."""
    ledger = store.ledger
    incident_id, _ = long_incident(ledger, 28)
    head = next(iter(ledger.recorder.select_events(incident_id, gt=29, lte=30)))
    old = bytes(head.state)
    store.replace_event(old, old.replace(b"patrol 25", b"patrol 52"))
    with capture_logs() as logs, pytest.raises(DataLoss):
        ledger.get_incident(incident_id)
    assert rejections(logs) == ["the stored event at version 30 is not the one it stands for"]


def test_snapshots_stay_out_of_the_event_log_and_its_verification(store: Store) -> None:
    ledger = store.ledger
    incident_id, _ = long_incident(ledger, 28)
    assert store.snapshots.recorder.select_events(incident_id)
    notifications = ledger.recorder.select_notifications(0, 10_000)
    assert all(n.topic != SNAPSHOT_FORMAT for n in notifications)
    history = [s.event for s in ledger.history()]
    assert len([e for e in history if e.originator_id == incident_id]) == 32
    report = verify_store(ledger, public_key_bytes(KEY), None, workers=0)
    assert report.ok, report


def test_a_store_without_the_snapshots_table_loads_by_replaying(store: Store) -> None:
    """A store migrated before snapshots came: loads replay every event (logged once) until
    `migrate` makes the table."""
    ledger = store.ledger
    incident_id, _ = long_incident(ledger, 28)
    store._run(table(store.snapshots.recorder), "DROP TABLE {t}", ())
    with capture_logs() as logs:
        loaded = ledger.get_incident(incident_id)
        ledger.get_incident(incident_id)
    assert whole(loaded) == whole(replayed(ledger, incident_id))
    assert [e["event"] for e in logs if "snapshots_" in e["event"]] == [
        "incident.snapshots_unavailable"
    ]
