"""Sealed snapshots of incidents (services/ledger/snapshots.py): the state they keep, how a
load uses them, and what it does with one that fails its checks. On real stores, with
forged rows: tests/integration/test_snapshots.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import StoredEvent
from structlog.testing import capture_logs

from services.ledger.application import Ledger
from services.ledger.domain.commands import (
    AssignLeadAgency,
    LogAction,
    ReportIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import Incident
from services.ledger.domain.incident import Status as IncidentStatus
from services.ledger.seals import SNAPSHOT_SEAL_FORMAT, Sealer
from services.ledger.snapshots import (
    SnapshotRejected,
    decode,
    encode,
    rows_key,
)
from tests.unit.incident_builders import (
    COORDINATOR,
    LEAD,
    LOCATION,
    REF,
    REPORTER,
    SUPPORTER,
    envelope_for,
    incident_in,
)

KEY = Ed25519PrivateKey.generate()
POPO = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


def state_of(incident: Incident) -> tuple[dict[str, Any], list[list[Any]], int]:
    """All an incident holds, as plain values (its head seal included)."""
    return incident.snapshot_state(), incident.event_rows(), incident.version


def rich_incident() -> Incident:
    """An incident with decisions, supporters, a pending handover and a correction."""
    incident = incident_in(IncidentStatus.RESPONDING)
    lead = envelope_for(LEAD)
    incident.add_supporting_agency(lead, SUPPORTER, "help")
    now = datetime.now(UTC)
    incident.record_decision(
        envelope_for(COORDINATOR),
        deciding_agencies=[LEAD],
        forum="rapat",
        summary="close the road",
        rationale="safety",
        scope=dict(LOCATION),
        valid_from=now,
        valid_until=now + timedelta(days=1),
        zone=UTC,
    )
    incident.propose_handover(lead, SUPPORTER, "they are closer")
    reported = next(i for i, t in incident.event_types.items() if t == "Reported")
    incident.correct(
        envelope_for(REPORTER),
        event_id=reported,
        field="title",
        old_value=incident.title,
        new_value="Crowd at the market",
        reason="misheard",
        zone=UTC,
        desa_of=REF.desa_of,
    )
    incident.collect_events()
    return incident


def test_the_snapshot_state_names_every_attribute_of_an_incident() -> None:
    """A new attribute of Incident must be added to the snapshot: else a load from one would
    lack it (a rebuilt incident is made without __init__)."""
    incident = incident_in(IncidentStatus.REPORTED)
    kept = set(incident.snapshot_state()) | {"event_rows"}
    base: dict[str, str | None] = {"_id": "id", "_version": "version"}
    base |= {"_created_on": "created_on", "_modified_on": "modified_on", "_pending_events": None}
    apart = {"_event_values", "_event_types", "_event_agencies", "_packed_rows"}
    for name in vars(incident):
        if name in apart:
            continue
        expected = base.get(name, name)
        assert expected is None or expected in kept, f"{name} is not in the snapshot"


def test_an_incident_rebuilt_from_its_snapshot_state_is_the_same_incident() -> None:
    incident = rich_incident()
    rows = incident.event_rows()
    calls: list[int] = []

    def packed() -> list[list[Any]]:
        calls.append(1)
        return rows

    rebuilt = Incident.from_snapshot_state(incident.snapshot_state(), packed)
    assert rebuilt.id == incident.id
    assert rebuilt.created_on == incident.created_on
    assert rebuilt.modified_on == incident.modified_on
    assert calls == []  # the rows are read only when needed
    for name, value in vars(incident).items():
        if not name.startswith(("_event_", "_pending_events", "_packed_rows")):
            assert getattr(rebuilt, name) == value, name
    assert calls == []
    assert rebuilt.event_values == incident.event_values
    assert calls == [1]
    assert rebuilt.event_types == incident.event_types
    assert rebuilt.event_agencies == incident.event_agencies
    assert state_of(rebuilt) == state_of(incident)


def test_events_applied_to_a_rebuilt_incident_keep_the_rows_in_order_unread() -> None:
    incident = rich_incident()
    rows = incident.event_rows()
    rebuilt = Incident.from_snapshot_state(incident.snapshot_state(), lambda: rows)
    incident.log_action(envelope_for(LEAD), "patrol", dict(LOCATION))
    for event in incident.collect_events():
        event.mutate(rebuilt)  # as a load applies the events after the snapshot
    packed, recent = rebuilt.packed_event_rows()
    assert packed is not None and len(recent) == 1  # still packed: only the new row apart
    assert list(rebuilt.event_values) == list(incident.event_values)
    assert rebuilt.event_rows() == incident.event_rows()


def test_a_snapshot_is_sealed_over_its_content_and_refused_when_changed() -> None:
    sealer = Sealer(KEY)
    incident = rich_incident()
    stored, rows = encode(incident, sealer)
    assert rows.originator_id == rows_key(incident.id)
    assert rows.originator_version == incident.version
    snapshot = decode(stored, sealer.checker)
    assert (snapshot.incident_id, snapshot.version) == (incident.id, incident.version)
    rebuilt = snapshot.incident(lambda: bytes(rows.state), incident.event_rows)
    assert state_of(rebuilt) == state_of(incident)
    body = bytes(stored.state)
    seal, content = body.split(b"\n", 1)
    forged = body.replace(b'"RESPONDING"', b'"CLOSED"')
    assert forged != body
    other_key = Sealer(Ed25519PrivateKey.generate())
    digest = hashlib.sha256(content).hexdigest()
    cases = {
        "its state edited, its seal kept": forged,
        "its seal stripped": content,
        "sealed by another key": other_key.seal(digest, SNAPSHOT_SEAL_FORMAT).encode()
        + b"\n"
        + content,
        # an event's seal over the same digest does not pass for a snapshot's
        "an event's seal": sealer.seal(digest).encode() + b"\n" + content,
    }
    assert sealer.checker.problem(digest, seal.decode(), SNAPSHOT_SEAL_FORMAT) is None
    for name, state in cases.items():
        with pytest.raises(SnapshotRejected):
            decode(_with_state(stored, state), sealer.checker)
            pytest.fail(f"{name}: accepted")
    with pytest.raises(SnapshotRejected, match="a snapshot of incident"):
        decode(_moved(encode(rich_incident(), sealer)[0], incident.id), sealer.checker)


def _with_state(stored: StoredEvent, state: bytes) -> StoredEvent:
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)


def _moved(stored: StoredEvent, incident_id: UUID) -> StoredEvent:
    return StoredEvent(incident_id, stored.originator_version, stored.topic, stored.state)


# ----------------------------------------------------------------- the ledger


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env=POPO, sealer=Sealer(KEY), cache_size=0, snapshot_interval=5)
    yield app
    app.close()


def long_incident(ledger: Ledger, actions: int) -> UUID:
    command = ReportIncident("Crowd", "", "crowd_gathering", "", dict(LOCATION))
    incident_id = ledger.execute(envelope_for(REPORTER), command).incident_id
    ledger.execute(envelope_for(COORDINATOR), VerifyIncident(incident_id, 0, "ok"))
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 0, LEAD, ""))
    for n in range(actions):
        ledger.execute(envelope_for(LEAD), LogAction(incident_id, 0, f"patrol {n}", None))
    return incident_id


def replayed(ledger: Ledger, incident_id: UUID) -> Incident:
    incident: Incident = ledger.load_aggregate(incident_id)
    return incident


def test_a_load_starts_from_the_latest_snapshot_and_gives_the_replayed_state(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident_id = long_incident(ledger, 20)  # 23 events: snapshots at 5, 10, 15, 20
    snapshots = ledger.incident_snapshots
    assert snapshots is not None
    snapshots.flush()
    stored = snapshots.recorder.select_events(incident_id)
    assert [s.originator_version for s in stored] == [5, 10, 15, 20]
    read: list[int | None] = []
    get = ledger.events.get

    def counted(originator_id: UUID, **kwargs: Any) -> Any:
        read.append(kwargs.get("gt"))
        return get(originator_id, **kwargs)

    monkeypatch.setattr(ledger.events, "get", counted)
    with capture_logs() as logs:
        loaded = ledger.get_incident(incident_id)
    assert read == [19]  # from the event the snapshot stands for, not from the first
    assert not [e for e in logs if e["event"] == "incident.snapshot_rejected"]
    monkeypatch.undo()
    assert loaded.version == 23
    assert state_of(loaded) == state_of(replayed(ledger, incident_id))
    assert loaded.head_seal and loaded.head_seal == replayed(ledger, incident_id).head_seal


def test_a_ledger_without_a_signing_key_writes_no_snapshot() -> None:
    app = Ledger(REF, env=POPO, cache_size=0, snapshot_interval=5)
    try:
        incident_id = long_incident(app, 10)
        assert app.incident_snapshots is None
        assert app.get_incident(incident_id).version == 13
    finally:
        app.close()


def test_an_interval_of_zero_writes_none_and_a_command_crossing_it_writes_one() -> None:
    app = Ledger(REF, env=POPO, sealer=Sealer(KEY), cache_size=0, snapshot_interval=0)
    try:
        incident_id = long_incident(app, 10)
        snapshots = app.incident_snapshots
        assert snapshots is not None
        app.get_incident(incident_id)
        snapshots.flush()
        assert snapshots.recorder.select_events(incident_id) == []
    finally:
        app.close()


def test_a_load_without_a_snapshot_past_the_interval_writes_one(ledger: Ledger) -> None:
    """An incident saved in one go (Application.save, or before snapshots existed) gets its
    snapshot when saved, or else on its first load."""
    incident = incident_in(IncidentStatus.RESPONDING)
    while incident.version < 12:
        incident.log_action(envelope_for(LEAD), "patrol", {})
    snapshots = ledger.incident_snapshots
    assert snapshots is not None
    ledger.save(incident)
    snapshots.flush()
    assert [s.originator_version for s in snapshots.recorder.select_events(incident.id)] == [12]
    fresh = incident_in(IncidentStatus.RESPONDING)
    while fresh.version < 7:
        fresh.log_action(envelope_for(LEAD), "patrol", {})
    interval, snapshots.interval = snapshots.interval, 0
    ledger.save(fresh)
    snapshots.interval = interval
    snapshots.flush()
    assert snapshots.recorder.select_events(fresh.id) == []
    assert ledger.get_incident(fresh.id).version == 7
    snapshots.flush()
    assert [s.originator_version for s in snapshots.recorder.select_events(fresh.id)] == [7]
