"""Reading one incident's personal data works on the incident the rule ran on: no load of its
whole history after the read is recorded (as erasure), but for a retry answered from its record."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from services.common.sql import SQLiteDatabase
from services.ledger.application import Ledger
from services.ledger.domain.commands import ReadPersonalData, ReportIncident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import KeyRing, PersonalKeys
from tests.unit.incident_builders import LOCATION, REF, REPORTER, envelope_for

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=lambda: NOW)
    app.personal_keys = PersonalKeys(
        SQLiteDatabase(":memory:"), KeyRing({"k1": bytes(range(32))}, "k1")
    )
    yield app
    app.close()


def reported(ledger: Ledger) -> UUID:
    people = PersonalData(
        reporter=Person(name="Siti", phone="081273456690"), witnesses=(Person(name="Budi"),)
    )
    command = ReportIncident("Amplop dibagikan", "", "money_politics", "", dict(LOCATION), people)
    return ledger.execute(envelope_for(REPORTER), command).incident_id


def counting_loads(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    loads: list[UUID] = []
    load = ledger.load_aggregate

    def counted(aggregate_id: UUID, version: int | None = None) -> Any:
        loads.append(aggregate_id)
        return load(aggregate_id, version)

    monkeypatch.setattr(ledger, "load_aggregate", counted)
    return loads


def test_a_read_discloses_from_the_incident_it_ran_on_without_loading_it_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = reported(ledger)
    loads = counting_loads(ledger, monkeypatch)
    envelope = envelope_for("bawaslu")
    read = ledger.read_personal_data(envelope, ReadPersonalData(incident, 0, "verify report"))
    assert loads == []  # the report left the incident in the write cache
    assert sorted(v.person.name for v in read.subjects if v.person) == ["Budi", "Siti"]
    # The same request again is answered from its record: the rule does not run, the
    # incident is loaded, and the same people are disclosed under the same recorded read.
    again = ledger.read_personal_data(envelope, ReadPersonalData(incident, 0, "verify report"))
    assert loads.count(incident) == 1  # beside the request's record, read to answer it
    assert again.result == read.result
    assert [(v.subject.subject_id, v.person) for v in again.subjects] == [
        (v.subject.subject_id, v.person) for v in read.subjects
    ]
    accesses, _, _ = ledger.personal_data_record(envelope_for("desk_pilkada").actor, incident)
    assert [a.event_id for a in accesses] == [read.result.event_id]  # recorded once
