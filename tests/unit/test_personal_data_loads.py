"""Reading one incident's personal data works on the incident the rule ran on: no load of its
whole history after the read is recorded (as erasure), but for a retry answered from its record."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition
from services.common.sql import SQLiteDatabase
from services.ledger.application import Ledger
from services.ledger.domain.commands import ErasePersonalData, ReadPersonalData, ReportIncident
from services.ledger.domain.incident import Incident
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
    """The ids of the aggregates loaded from the store: records and incidents."""
    loads: list[UUID] = []
    for method in ("load_aggregate", "load_incident"):
        load = getattr(ledger, method)

        def counted(aggregate_id: UUID, version: int | None = None, load: Any = load) -> Any:
            loads.append(aggregate_id)
            return load(aggregate_id, version)

        monkeypatch.setattr(ledger, method, counted)
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
    accesses = ledger.personal_data_record(envelope_for("desk_pilkada").actor, incident).accesses
    assert [a.event_id for a in accesses] == [read.result.event_id]  # recorded once


def test_another_officer_replaying_a_reads_request_id_is_shown_nothing(ledger: Ledger) -> None:
    """A request id is the agency's and not secret: a second officer of the agency who sends
    the first one's request again must not be shown the data with only the first's read
    recorded (a read of their own needs a request id of their own)."""
    incident = reported(ledger)
    first = envelope_for("bawaslu", request_id="bw-shared-1")
    read = ledger.read_personal_data(first, ReadPersonalData(incident, 0, "verify report"))
    second = replace(first, actor=replace(first.actor, officer="officer-bawaslu-2"))
    with pytest.raises(AlreadyExists) as refused:
        ledger.read_personal_data(second, ReadPersonalData(incident, 0, "verify report"))
    assert refused.value.reason == "REQUEST_ID_REUSED"
    # Nor by subject access: the first officer's search, then the second's with its id.
    search = {"phone": "081273456690", "nik": "", "purpose": "subject access 1"}
    found = ledger.find_personal_data(replace(first, request_id="bw-find-1"), **search)
    assert sorted(v.person.name for v in found if v.person) == ["Siti"]
    with pytest.raises(AlreadyExists):
        ledger.find_personal_data(replace(second, request_id="bw-find-1"), **search)
    # With a request id of their own the second officer reads, and the read is theirs.
    ledger.read_personal_data(
        replace(second, request_id="bw-own-2"), ReadPersonalData(incident, 0, "verify report")
    )
    # The first officer's own retries are still answered from their records.
    again = ledger.read_personal_data(first, ReadPersonalData(incident, 0, "verify report"))
    assert again.result == read.result
    retried = ledger.find_personal_data(replace(first, request_id="bw-find-1"), **search)
    assert [v.person for v in retried] == [v.person for v in found]
    accesses = ledger.personal_data_record(envelope_for("desk_pilkada").actor, incident).accesses
    assert [a.officer for a in accesses] == [
        "officer-bawaslu",  # the read
        "officer-bawaslu",  # the subject access
        "officer-bawaslu-2",  # the second officer's own read
    ]


def test_erasing_or_reading_after_erasure_says_erased_and_records_nothing(ledger: Ledger) -> None:
    incident = reported(ledger)
    coordinator = envelope_for("desk_pilkada")
    ledger.erase_personal_data(
        coordinator, ErasePersonalData(incident, 0, (), "asked by both", everyone=True)
    )
    version = ledger.get_incident(incident).version
    with pytest.raises(FailedPrecondition) as again:
        ledger.erase_personal_data(
            envelope_for("desk_pilkada"),
            ErasePersonalData(incident, 0, (), "asked again", everyone=True),
        )
    assert again.value.reason == "NO_PERSONAL_DATA"
    assert "everyone it names is erased already" in str(again.value)
    with pytest.raises(FailedPrecondition) as read:  # a read, then, says why it finds none
        ledger.read_personal_data(
            envelope_for("bawaslu"), ReadPersonalData(incident, 0, "verify report")
        )
    assert "erased" in str(read.value)
    assert ledger.get_incident(incident).version == version
    plain = ReportIncident("Amplop dibagikan", "", "money_politics", "", dict(LOCATION), None)
    nobody = ledger.execute(envelope_for(REPORTER), plain).incident_id
    with pytest.raises(FailedPrecondition) as none:
        ledger.erase_personal_data(
            envelope_for("desk_pilkada"),
            ErasePersonalData(nobody, 0, (), "asked by one", everyone=True),
        )
    assert "names nobody" in str(none.value)


def test_erasing_one_person_again_says_the_others_are_still_there(ledger: Ledger) -> None:
    incident = reported(ledger)
    read = ledger.read_personal_data(
        envelope_for("bawaslu"), ReadPersonalData(incident, 0, "verify report")
    )
    reporter = next(
        v.subject.subject_id for v in read.subjects if v.person and v.person.name == "Siti"
    )
    ledger.erase_personal_data(
        envelope_for("desk_pilkada"), ErasePersonalData(incident, 0, (reporter,), "asked")
    )
    with pytest.raises(FailedPrecondition) as again:
        ledger.erase_personal_data(
            envelope_for("desk_pilkada"), ErasePersonalData(incident, 0, (reporter,), "asked again")
        )
    assert again.value.reason == "NO_PERSONAL_DATA"
    assert "1 other person it names is not" in str(again.value), again.value


def test_a_snapshot_keeps_who_erased_and_one_from_before_erasures_were_kept_is_refused(
    ledger: Ledger,
) -> None:
    incident_id = reported(ledger)
    witness = next(
        s.subject_id
        for s in ledger.get_incident(incident_id).subjects.values()
        if s.sealed.role.value == "witness"
    )
    ledger.erase_personal_data(
        envelope_for("desk_pilkada"),
        ErasePersonalData(incident_id, 0, (witness,), "witness asked, 4/2026"),
    )
    incident = ledger.get_incident(incident_id)
    ((erasure,),) = [incident.erasures]
    assert (erasure.agency, erasure.subjects, erasure.legal_basis) == (
        "desk_pilkada",
        (witness,),
        "witness asked, 4/2026",
    )
    state = incident.snapshot_state()
    rebuilt = Incident.from_snapshot_state(state, incident.event_rows)
    assert rebuilt.erasures == incident.erasures
    # A snapshot written before erasures were kept, of an incident with one: refused, so
    # that a load replays the events rather than show the erasure as no one's.
    before = {k: v for k, v in state.items() if k != "erasures"}
    with pytest.raises(KeyError):
        Incident.from_snapshot_state(before, incident.event_rows)
    # One of an incident that nobody erased from is as good as before.
    fresh = ledger.get_incident(reported(ledger))
    plain = {k: v for k, v in fresh.snapshot_state().items() if k != "erasures"}
    assert Incident.from_snapshot_state(plain, fresh.event_rows).erasures == []
