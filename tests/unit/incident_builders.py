"""Helpers shared by the unit tests of the Incident aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from services.common.reference import ReferenceData
from services.ledger.domain.incident import Actor, Envelope, Incident, RejectionReason, Status
from tests.support import reference

if TYPE_CHECKING:
    from services.ledger.application import Ledger

REF: ReferenceData = reference()
COORDINATOR = "desk_pilkada"
AUDITOR = "inspektorat"
REPORTER = "kesbangpol"
LEAD = "polres"
SUPPORTER = "kodim"
OUTSIDER = "bpbd"
LOCATION: dict[str, Any] = {"kecamatan": "kota_mukomuko", "desa": "Koto Jaya"}


def actor(agency: str) -> Actor:
    return Actor(agency, f"officer-{agency}", REF.agencies[agency].role)


def envelope_for(
    agency: str, request_id: str | None = None, occurred_at: datetime | None = None
) -> Envelope:
    return Envelope(
        actor=actor(agency),
        request_id=request_id or uuid4().hex,
        correlation_id="corr-1",
        causation_id="cause-1",
        occurred_at=occurred_at,
    )


def report(
    agency: str = REPORTER,
    *,
    title: str = "Crowd at the square",
    severity: str = "low",
    category: str = "crowd_gathering",
) -> Incident:
    return Incident.report(
        envelope_for(agency),
        title=title,
        description="Hundreds gathered without a permit",
        category=category,
        severity=severity,
        location=dict(LOCATION),
        incident_id=uuid4(),
    )


def incident_in(status: Status, *, lead: str = LEAD) -> Incident:
    """A fresh incident brought to ``status`` by legal commands."""
    incident = report()
    coord = envelope_for(COORDINATOR)
    if status is Status.REPORTED:
        return incident
    if status is Status.REJECTED:
        incident.reject(coord, RejectionReason.HOAX, "a hoax")
        return incident
    if status is Status.MERGED:
        incident.merge_into(coord, report(), "duplicate")
        return incident
    incident.verify(coord, "checked")
    if status is Status.VERIFIED:
        return incident
    incident.assign_lead(coord, lead, "police lead")
    if status is Status.ASSIGNED:
        return incident
    incident.log_action(envelope_for(lead), "patrol sent", {})
    if status is Status.RESPONDING:
        return incident
    incident.resolve(envelope_for(lead), "crowd dispersed")
    if status is Status.RESOLVED:
        return incident
    if status is Status.REOPENED:
        incident.reopen(coord, "crowd came back")
        return incident
    incident.request_closure(envelope_for(lead), "done")
    incident.approve_closure(coord, "approved")
    assert status is Status.CLOSED
    return incident


def incident_events(incident: Incident) -> list[Incident.Event]:
    """The incident's pending events, typed."""
    events = [e for e in incident.pending_events if isinstance(e, Incident.Event)]
    assert len(events) == len(incident.pending_events)
    return events


def replay(events: Sequence[Incident.Event]) -> Incident:
    aggregate: Incident | None = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert aggregate is not None
    return aggregate


def event_of(incident: Incident, type_name: str, nth: int = 0) -> Incident.Event:
    matching = [e for e in incident_events(incident) if type(e).__name__ == type_name]
    return matching[nth]


def event_id_of(incident: Incident, type_name: str, nth: int = 0) -> UUID:
    return event_of(incident, type_name, nth).event_id


def personal_data_history(ledger: Ledger) -> UUID:
    """A report naming people, read, held, released and erased: the personal data events.
    A ledger built without a key table gets one in memory (the history needs it)."""
    from services.common.sql import SQLiteDatabase
    from services.ledger.domain.commands import (
        ErasePersonalData,
        LiftLegalHold,
        PlaceLegalHold,
        ReadPersonalData,
        ReportIncident,
    )
    from services.ledger.domain.personal import Person, PersonalData
    from services.ledger.personal_keys import KeyRing, PersonalKeys

    if ledger.personal_keys is None:
        ring = KeyRing({"k1": bytes(range(32))}, "k1")
        ledger.personal_keys = PersonalKeys(SQLiteDatabase(":memory:"), ring)
    people = PersonalData(
        reporter=Person(name="Siti", phone="081273456690", nik="1706014107900003"),
        witnesses=(Person(name="Budi"),),
    )
    reported = ledger.execute(
        envelope_for("kesbangpol"),
        ReportIncident(
            title="Amplop dibagikan",
            description="",
            category="money_politics",
            severity="",
            location={"kecamatan": "ipuh"},
            personal_data=people,
        ),
    )
    i = reported.incident_id
    ledger.read_personal_data(envelope_for("bawaslu"), ReadPersonalData(i, 0, "verify report"))
    ledger.execute(envelope_for("kejari"), PlaceLegalHold(i, 0, "Gakkumdu case 3"))
    ledger.execute(envelope_for("kejari"), LiftLegalHold(i, 0, "case closed"))
    ledger.erase_personal_data(
        envelope_for("desk_pilkada"), ErasePersonalData(i, 0, (), "retention rule", everyone=True)
    )
    return i


def evidence_attached(ledger: Ledger, incident: UUID, agency: str = "kesbangpol") -> UUID:
    """An EvidenceAttached event on ``incident``, as UploadEvidence records it once the file
    is stored (no object store needed: only the file's digest, size and type are recorded);
    its event id."""
    from services.ledger.domain.evidence import UploadEvidence

    result = ledger.execute(
        envelope_for(agency),
        UploadEvidence(incident, 0, "ab" * 32, 48213, "image/jpeg", "amplop.jpg", "di Ipuh"),
    )
    return result.event_id
