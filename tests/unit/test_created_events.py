"""A field device's reports are made without the aggregates (``ReportIncident.reported``,
``RequestRecord.recorded``, ``ReferenceClaim.claimed``), and mapped by the sealing mapper's
orjson encoder: the events, their hashes, seals and stored bytes are those the aggregate
path (``ReportIncident.create``, ``RequestRecord.record``, ``ReferenceClaim.claim``) and
the library's own mapper give, for every kind of report."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)

from services.common.errors import PermissionDenied
from services.ledger.application import SealingMapper
from services.ledger.domain import commands, incident
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.incident import DeviceRecord, Envelope, Incident, event_hash
from services.ledger.domain.personal import (
    Person,
    PersonalData,
    SealedReport,
    SealedSubject,
    SubjectRole,
)
from services.ledger.domain.refcodes import ReferenceClaim
from services.ledger.domain.requests import RequestRecord, request_fingerprint, request_key
from services.ledger.seals import Sealer
from tests.unit.incident_builders import AUDITOR, LOCATION, REPORTER, actor

T0 = datetime(2026, 12, 3, 9, 15, 0, 123456, tzinfo=UTC)
PREFIX = "MKM"


class Clock:
    """Times and ids drawn in sequence, the same for both paths once reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._ticks = itertools.count()
        self._ids = itertools.count(1)

    def now(self) -> datetime:
        return T0 + timedelta(microseconds=next(self._ticks))

    def uuid4(self) -> UUID:
        return UUID(int=(next(self._ids) * 0x9E3779B97F4A7C15) % (1 << 122) | (4 << 76))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock()
    monkeypatch.setattr(incident, "event_time", fixed.now)
    monkeypatch.setattr(incident, "uuid4", fixed.uuid4)
    monkeypatch.setattr(commands, "uuid4", fixed.uuid4)
    for cls in (RequestRecord.Recorded, ReferenceClaim.Claimed):
        monkeypatch.setattr(cls, "create_timestamp", staticmethod(fixed.now))
    return fixed


def library_mapper() -> Mapper[UUID]:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def sealing_mapper() -> SealingMapper:
    return SealingMapper(library_mapper(), Sealer(KEY))


def personal(incident_id: UUID, anonymous: bool = False) -> PersonalData:
    subjects = (
        SealedSubject(UUID(int=7), SubjectRole.REPORTER, anonymous, "bm9uY2U=", "Y2lwaGVy"),
        SealedSubject(UUID(int=8), SubjectRole.WITNESS, False, "bm9uY2Uy", "Y2lwaGVyMg=="),
    )
    return PersonalData(
        reporter=Person(name="Siti", phone="+6281273456690", nik="1706014107900003"),
        anonymous=anonymous,
        witnesses=(Person(name="Budi", phone="+6285212345678"),),
        digest="d" * 64,
        sealed=SealedReport(incident_id, subjects),
    )


DEVICE = DeviceRecord("hp-panwascam-07", UUID(int=99), T0 - timedelta(hours=20), -1_250)

#: Reports of every shape: plain, from a device (with and without its skew), naming
#: people (anonymous or not), with text that JSON escapes, with an occurrence time, and a
#: code drawn again.
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "device": {"device": DEVICE},
    "device without skew": {"device": replace(DEVICE, clock_skew_ms=None)},
    "personal data": {"personal": False, "device": DEVICE},
    "anonymous reporter": {"personal": True},
    "escaped text": {"title": 'Kotak suara "dibawa" \\ kabur\n\t\u0001\u2028 é 漢 🗳'},
    "occurred earlier": {"occurred_at": datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC)},
    "occurred, another zone": {
        "occurred_at": datetime(2026, 12, 3, 7, 0, tzinfo=UTC).astimezone(
            datetime(2026, 1, 1, tzinfo=UTC).astimezone().tzinfo
        )
    },
    "full location": {"location": {"kecamatan": "air_rami", "desa": "Pasar Ipuh", "tps": "004"}},
    "third draw": {"draw": 2},
}


def case_command(case: dict[str, Any]) -> ReportIncident:
    command = ReportIncident(
        title=case.get("title", "Ballot box carried off"),
        description="Seen at 08.00 by the TPS staff",
        category="crowd_gathering",
        severity="high",
        location=case.get("location", dict(LOCATION)),
    )
    if "personal" in case:
        command = replace(command, personal_data=personal(UUID(int=42), case["personal"]))
    return command


Maker = Callable[[ReportIncident, Envelope, dict[str, Any]], list[Any]]


def by_aggregates(command: ReportIncident, envelope: Envelope, case: dict[str, Any]) -> list[Any]:
    """What ``Ledger._execute`` saves for a report: the aggregates' pending events."""
    made = command.create(envelope, PREFIX, case.get("device"), draw=case.get("draw", 0))
    record = RequestRecord.record(
        request_key(envelope.actor.agency, envelope.request_id),
        command="ReportIncident",
        fingerprint=request_fingerprint(command, envelope.occurred_at),
        incident=f"{made.id}@{made.version}",
    )
    claim = ReferenceClaim.claim(made.reference, made.id)
    return [*made.collect_events(), *record.collect_events(), *claim.collect_events()]


def by_events(command: ReportIncident, envelope: Envelope, case: dict[str, Any]) -> list[Any]:
    """What ``Ledger.ingest`` saves for a report: the events alone."""
    reported = command.reported(envelope, PREFIX, case.get("device"), draw=case.get("draw", 0))
    recorded = RequestRecord.recorded(
        request_key(envelope.actor.agency, envelope.request_id),
        command="ReportIncident",
        fingerprint=request_fingerprint(command, envelope.occurred_at),
        incident=f"{reported.originator_id}@{reported.originator_version}",
    )
    claimed = ReferenceClaim.claimed(str(reported.reference), reported.originator_id)
    return [reported, recorded, claimed]


def made(clock: Clock, maker: Maker, case: dict[str, Any]) -> list[Any]:
    clock.reset()
    envelope = Envelope(
        actor(REPORTER), "device-report-1", "corr-1", "device-report-1", case.get("occurred_at")
    )
    return maker(case_command(case), envelope, case)


def stored(events: list[Any], mapper: Mapper[UUID]) -> Iterator[StoredEvent]:
    return (mapper.to_stored_event(event) for event in events)


@pytest.mark.parametrize("name", CASES)
def test_a_reports_events_made_alone_are_the_aggregates_events(clock: Clock, name: str) -> None:
    case = CASES[name]
    slow, fast = made(clock, by_aggregates, case), made(clock, by_events, case)
    assert [type(e) for e in fast] == [
        Incident.Reported,
        RequestRecord.Recorded,
        ReferenceClaim.Claimed,
    ]
    for a, b in zip(slow, fast, strict=True):
        assert vars(a) == vars(b)
        assert list(vars(a)) == list(vars(b)), "the same fields in the same order"
    assert event_hash(slow[0]) == event_hash(fast[0])
    # Mapped and sealed: the same stored events, and the same bytes as the library's mapper.
    sealed_slow = list(stored(slow, sealing_mapper()))
    sealed_fast = list(stored(fast, sealing_mapper()))
    assert sealed_slow == sealed_fast
    assert [s.state for s in sealed_fast] == [s.state for s in stored(fast, library_mapper())]
    assert vars(fast[0])["seal"] == Sealer(KEY).seal(event_hash(fast[0]))


def test_the_events_stored_decode_to_the_incident_the_aggregate_made(clock: Clock) -> None:
    case = CASES["personal data"]
    aggregate = made(clock, lambda c, e, k: [c.create(e, PREFIX, k.get("device"))], case)[0]
    mapper = sealing_mapper()
    (event,) = (mapper.to_domain_event(s) for s in stored(made(clock, by_events, case)[:1], mapper))
    assert isinstance(event, Incident.Reported)
    rebuilt: Any = event.mutate(None)
    assert isinstance(rebuilt, Incident)
    assert rebuilt.head_hash == aggregate.head_hash
    assert rebuilt.reference == aggregate.reference and rebuilt.subjects == aggregate.subjects


def test_the_rules_of_a_report_hold_for_its_event_alone(clock: Clock) -> None:
    command = case_command({})
    auditor = Envelope(actor(AUDITOR), "r-1", "r-1", "r-1")
    with pytest.raises(PermissionDenied):
        command.reported(auditor, PREFIX)
    other = replace(command, personal_data=personal(UUID(int=42)))
    sealed = other.personal_data.sealed if other.personal_data else None
    assert sealed is not None
    with pytest.raises(ValueError, match="another incident"):
        Incident.reported(
            Envelope(actor(REPORTER), "r-2", "r-2", "r-2"),
            title="t",
            description="",
            category="crowd_gathering",
            severity="high",
            location=dict(LOCATION),
            incident_id=UUID(int=43),
            personal=sealed,
        )
