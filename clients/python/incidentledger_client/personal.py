"""Personal data of reporters and witnesses, as the client sends and receives it
(docs/personal-data.md): what a report says about people, the people an incident names,
the recorded reads of their data and the legal holds.

The ledger seals each person's data before recording it; reading it back is
:meth:`LedgerClient.read_personal_data`, with a stated purpose, and every read is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import personal_data_pb2 as pd


class SubjectState(StrEnum):
    PRESENT = "PRESENT"
    ERASED = "ERASED"


@dataclass(frozen=True)
class Person:
    """One person; empty fields are "not given". ``phone`` in E.164 or ``08…``; ``nik``
    16 digits; a name is required."""

    name: str
    phone: str = ""
    nik: str = ""
    address: str = ""

    def to_proto(self) -> pd.Person:
        return pd.Person(name=self.name, phone=self.phone, nik=self.nik, address=self.address)

    @classmethod
    def from_proto(cls, message: pd.Person) -> Person:
        return cls(message.name, message.phone, message.nik, message.address)


@dataclass(frozen=True)
class PersonalData:
    """The people a report names: its reporter (``anonymous``: only the reporting agency
    may see who they are) and its witnesses (at most 10)."""

    reporter: Person | None = None
    anonymous: bool = False
    witnesses: tuple[Person, ...] = ()

    def to_proto(self) -> pd.PersonalData:
        message = pd.PersonalData(
            reporter_anonymous=self.anonymous, witnesses=[w.to_proto() for w in self.witnesses]
        )
        if self.reporter is not None:
            message.reporter.CopyFrom(self.reporter.to_proto())
        return message


@dataclass(frozen=True)
class PersonalDataAccess:
    """One recorded read: who, whose (subject ids), when, why."""

    event_id: str
    incident: str
    agency: str
    officer: str
    subjects: tuple[str, ...]
    purpose: str
    access_time: datetime | None

    @classmethod
    def from_proto(cls, message: pd.PersonalDataAccess) -> PersonalDataAccess:
        time = (
            message.access_time.ToDatetime(tzinfo=UTC) if message.HasField("access_time") else None
        )
        return cls(
            event_id=message.event_id,
            incident=message.incident,
            agency=message.actor.agency,
            officer=message.actor.officer,
            subjects=tuple(message.subjects),
            purpose=message.purpose,
            access_time=time,
        )


@dataclass(frozen=True)
class PersonalDataErasure:
    """One erasure: who, whose (subject ids), when, on what legal basis."""

    event_id: str
    incident: str
    agency: str
    officer: str
    subjects: tuple[str, ...]
    legal_basis: str
    erase_time: datetime | None

    @classmethod
    def from_proto(cls, message: pd.PersonalDataErasure) -> PersonalDataErasure:
        time = message.erase_time.ToDatetime(tzinfo=UTC) if message.HasField("erase_time") else None
        return cls(
            event_id=message.event_id,
            incident=message.incident,
            agency=message.actor.agency,
            officer=message.actor.officer,
            subjects=tuple(message.subjects),
            legal_basis=message.legal_basis,
            erase_time=time,
        )


_ROLES = {pb.DATA_SUBJECT_ROLE_REPORTER: "reporter", pb.DATA_SUBJECT_ROLE_WITNESS: "witness"}


def _state(value: pb.DataSubjectState.ValueType) -> SubjectState:
    return SubjectState.ERASED if value == pb.DATA_SUBJECT_STATE_ERASED else SubjectState.PRESENT


@dataclass(frozen=True)
class SubjectSummary:
    """A person an incident's report names, as every view of the incident shows them:
    never their data. ``role``: ``reporter`` or ``witness``."""

    subject_id: str
    role: str
    anonymous: bool
    state: SubjectState

    @classmethod
    def from_proto(cls, message: pb.DataSubjectSummary) -> SubjectSummary:
        return cls(
            subject_id=message.subject_id,
            role=_ROLES.get(message.role, "unknown"),
            anonymous=message.anonymous,
            state=_state(message.state),
        )


@dataclass(frozen=True)
class DataSubject:
    """A person an incident names: ``person`` only where their data was read and is not
    erased; ``accesses``: the reads of it (subject access)."""

    subject_id: str
    incident: str
    role: str
    anonymous: bool
    state: SubjectState
    person: Person | None
    accesses: tuple[PersonalDataAccess, ...] = ()

    @classmethod
    def from_proto(cls, message: pd.DataSubject) -> DataSubject:
        return cls(
            subject_id=message.subject_id,
            incident=message.incident,
            role=_ROLES.get(message.role, "unknown"),
            anonymous=message.anonymous,
            state=_state(message.state),
            person=Person.from_proto(message.person) if message.HasField("person") else None,
            accesses=tuple(PersonalDataAccess.from_proto(a) for a in message.accesses),
        )


@dataclass(frozen=True)
class LegalHold:
    agency: str
    reason: str


@dataclass(frozen=True)
class PersonalDataRecord:
    """Who read an incident's personal data, the people it names (without their data), the
    legal holds in force and who erased whose data (empty from a ledger too old to say)."""

    accesses: tuple[PersonalDataAccess, ...]
    subjects: tuple[DataSubject, ...]
    legal_holds: tuple[LegalHold, ...]
    erasures: tuple[PersonalDataErasure, ...] = ()
