"""Reference codes as the ledger records them: in the Reported event, claimed once, found
again by their code, drawn again when taken."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.sql import SQLiteDatabase
from services.ledger import application, personal_keys
from services.ledger.application import IngestItem, IngestOutcome, Ledger
from services.ledger.domain import commands
from services.ledger.domain.commands import ReadPersonalData, ReportIncident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.domain.refcodes import code_for
from services.ledger.personal_keys import KeyRing, PersonalKeys
from tests.unit.incident_builders import LOCATION, REF, REPORTER, actor, envelope_for

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=lambda: NOW)
    yield app
    app.close()


def command(title: str = "Kotak suara dibawa") -> ReportIncident:
    return ReportIncident(
        title=title,
        description="",
        category="crowd_gathering",
        severity="",
        location=dict(LOCATION),
    )


def same_code_as(incident_id: UUID) -> UUID:
    """Another incident id with the same reference code (the same low 25 bits)."""
    low = incident_id.int & ((1 << 25) - 1)
    return UUID(int=(uuid4().int >> 25 << 25) | low)


def drawing(monkeypatch: pytest.MonkeyPatch, ids: list[UUID]) -> None:
    """Incident ids drawn in this order (then at random) by new reports."""
    pending = list(ids)
    monkeypatch.setattr(commands, "uuid4", lambda: pending.pop(0) if pending else uuid4())


def test_a_report_records_its_code_and_the_code_finds_it(ledger: Ledger) -> None:
    result = ledger.execute(envelope_for(REPORTER), command())
    incident = ledger.get_incident(result.incident_id)
    assert incident.reference == code_for(REF.reference_prefix, incident.id)
    (stored,) = ledger.incident_events(incident.id, after_version=0, limit=1)
    assert stored.event.__dict__["reference"] == incident.reference
    assert ledger.incident_by_reference(incident.reference.lower()) == incident.id


def test_a_mistyped_code_is_invalid_and_an_unknown_one_not_found(ledger: Ledger) -> None:
    result = ledger.execute(envelope_for(REPORTER), command())
    code = ledger.get_incident(result.incident_id).reference
    swapped = code[:-2] + code[-1] + code[-2]
    if swapped != code:
        with pytest.raises(InvalidArgument) as caught:
            ledger.incident_by_reference(swapped)
        assert caught.value.reason == "REFERENCE_MISTYPED"
    unknown = code_for(REF.reference_prefix, uuid4())
    if unknown != code:
        with pytest.raises(NotFound):
            ledger.incident_by_reference(unknown)
        assert ledger.find_reference(unknown) is None


def test_a_report_whose_code_is_taken_is_recorded_under_another(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id, other_id = uuid4(), uuid4()
    drawing(monkeypatch, [first_id, same_code_as(first_id), other_id])
    first = ledger.execute(envelope_for(REPORTER), command("first"))
    second = ledger.execute(envelope_for(REPORTER), command("second"))
    assert first.incident_id == first_id
    assert second.incident_id == other_id, "the colliding draw was not recorded"
    codes = {ledger.get_incident(r.incident_id).reference for r in (first, second)}
    assert len(codes) == 2
    # The retry is the second draw: its code comes from the id and the draw number.
    assert ledger.incident_by_reference(code_for(REF.reference_prefix, other_id, 1)) == other_id


def test_a_report_naming_people_whose_code_is_taken_keeps_its_id_and_draws_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its personal data is sealed for its incident id, so only the code is drawn again.
    ledger.personal_keys = PersonalKeys(
        SQLiteDatabase(":memory:"), KeyRing({"k1": bytes(range(32))}, "k1")
    )
    first_id = uuid4()
    drawing(monkeypatch, [first_id])
    ledger.execute(envelope_for(REPORTER), command("first"))
    colliding = same_code_as(first_id)
    monkeypatch.setattr(personal_keys, "uuid4", lambda: colliding)  # the incident's, each subject's
    people = PersonalData(reporter=Person(name="Siti", phone="081273456690"))
    named = ledger.execute(envelope_for(REPORTER), replace(command("named"), personal_data=people))
    assert named.incident_id == colliding
    code = ledger.get_incident(colliding).reference
    assert code == code_for(REF.reference_prefix, colliding, 1), "the second draw"
    assert ledger.incident_by_reference(code) == colliding
    read = ledger.read_personal_data(
        envelope_for("bawaslu"), ReadPersonalData(colliding, 0, "verify the report")
    )
    assert [v.person.name for v in read.subjects if v.person] == ["Siti"]


def item(title: str) -> IngestItem:
    values: dict[str, Any] = {
        "device_id": "hp-panwascam-07",
        "report_id": uuid4(),
        "record_time": NOW - timedelta(hours=3),
        "command": command(title),
    }
    return IngestItem(**values)


def created_ids(results: list[application.IngestResult]) -> list[UUID]:
    assert [r.outcome for r in results] == [IngestOutcome.CREATED] * len(results)
    return [r.result.incident_id for r in results if r.result is not None]


def test_two_reports_of_a_batch_never_share_a_code(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id, other_id = uuid4(), uuid4()
    drawing(monkeypatch, [first_id, same_code_as(first_id), other_id])
    results = ledger.ingest(actor(REPORTER), [item("one"), item("two")])
    assert created_ids(results) == [first_id, other_id]


def test_an_ingested_report_whose_code_is_taken_is_drawn_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id, other_id, third_id = uuid4(), uuid4(), uuid4()
    # The second batch's first report draws a taken code: the query for the batch's
    # recorded reports finds the code's claim, and that report draws again (after "three"
    # drew its id) before the save, which then succeeds at once.
    drawing(monkeypatch, [first_id, same_code_as(first_id), other_id, third_id])
    assert created_ids(ledger.ingest(actor(REPORTER), [item("one")])) == [first_id]
    inserts: list[int] = []
    insert_events = ledger.recorder.insert_events

    def counted(events: Any, **kwargs: Any) -> Any:
        inserts.append(len(events))
        return insert_events(events, **kwargs)

    monkeypatch.setattr(ledger.recorder, "insert_events", counted)
    results = ledger.ingest(actor(REPORTER), [item("two"), item("three")])
    assert created_ids(results) == [third_id, other_id]
    assert inserts == [6], "one transaction: two reports, each with its record and claim"
    codes = {ledger.get_incident(i).reference for i in (first_id, other_id, third_id)}
    assert len(codes) == 3
