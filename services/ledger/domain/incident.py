"""The Incident aggregate: its lifecycle, permissions, events and hash chain.

Every rule about what may happen to an incident, and who may make it happen, is
here. The application layer loads, calls one command method and saves.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate

from services.common.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from services.common.jsoncodec import canonical_dumps
from services.common.reference import PersonalDataPolicy, Role, unknown_code
from services.ledger.domain.created import created_event
from services.ledger.domain.personal import SealedReport, SealedSubject, SubjectRole
from services.ledger.domain.refcodes import code_for
from services.ledger.domain.times import shown, window_refused

GENESIS_HASH = "0" * 64
#: The most decisions an incident records. The incident carries each in full (up to 4,000
#: characters of summary and of rationale, 33 kB in 4-byte characters) in every answer
#: that shows it: 100 of them stay under the 4 MiB a gRPC client takes in one message.
#: Before, about 125 made GetIncident fail for everyone, and every ListIncidents page
#: holding the incident with it.
MAX_DECISIONS = 100


class Status(enum.Enum):
    REPORTED = "REPORTED"
    VERIFIED = "VERIFIED"
    ASSIGNED = "ASSIGNED"
    RESPONDING = "RESPONDING"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"
    REJECTED = "REJECTED"
    MERGED = "MERGED"
    REOPENED = "REOPENED"


TERMINAL = frozenset({Status.CLOSED, Status.REJECTED, Status.MERGED})
OPEN_WORK = frozenset({Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.REOPENED})


class RejectionReason(enum.Enum):
    INVALID = "INVALID"
    HOAX = "HOAX"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"


@dataclass(frozen=True)
class Actor:
    """Who acts: from the caller's credentials, never from a request body."""

    agency: str
    officer: str
    role: Role


@dataclass(frozen=True)
class Decision:
    """A decision on the incident; its correctable texts live in ``event_values``."""

    event_id: UUID
    deciding_agencies: tuple[str, ...]
    scope: dict[str, Any]


@dataclass(frozen=True)
class Envelope:
    """What every event carries besides its payload, supplied by the application."""

    actor: Actor
    request_id: str
    correlation_id: str
    causation_id: str
    occurred_at: datetime | None = None
    #: A request the ledger makes itself (the retention rule, a subject access's reads),
    #: whose request id may be in the ledger's own namespace (RESERVED_REQUEST_PREFIXES).
    by_ledger: bool = False


#: Request ids the ledger gives its own requests begin so: a caller's may not (else an
#: officer of the coordinator could take ``retention/{incident}`` first, and the retention
#: rule would be refused as a reused request id at every run, the data never erased).
RESERVED_REQUEST_PREFIXES = ("retention/", "find/")


@dataclass(frozen=True)
class DeviceRecord:
    """Where a report handed over by a field device came from (``IngestReports``).

    ``record_time`` is by the device's clock, kept as the device stated it; the ledger
    never orders by it. ``clock_skew_ms`` is the device's clock minus the ledger's when
    the call arrived (positive: the device is ahead), when the call said its send time.
    """

    device_id: str
    report_id: UUID
    record_time: datetime
    clock_skew_ms: int | None = None


#: The payload fields of a ``Reported`` event ingested from a field device: absent
#: from every other report (see :meth:`Incident.Reported.__post_init__`).
DEVICE_FIELDS = (
    "device_id",
    "device_report_id",
    "device_record_time",
    "device_clock_skew_ms",
)


#: The payload fields a ``Reported`` event has only when set: absent from every report
#: without them, so that its payload and hash stay as they always were.
OPTIONAL_REPORT_FIELDS = (*DEVICE_FIELDS, "personal_data")


@dataclass(frozen=True)
class DataSubject:
    """A person named in the incident's report, as the incident knows them: a reference
    and their sealed data, never the data itself. ``erased``: their key was destroyed."""

    sealed: SealedSubject
    erased: bool = False

    @property
    def subject_id(self) -> UUID:
        return self.sealed.subject_id


@dataclass(frozen=True)
class PersonalDataAccess:
    """One read of personal data: who, whose, when, why (the *rekam jejak pemrosesan*)."""

    event_id: UUID
    agency: str
    officer: str
    subjects: tuple[UUID, ...]
    purpose: str
    time: datetime


@dataclass(frozen=True)
class PersonalDataErasure:
    """One erasure of personal data: who, whose, when, on what legal basis (a person's
    answer to "who erased my data, and why")."""

    event_id: UUID
    agency: str
    officer: str
    subjects: tuple[UUID, ...]
    legal_basis: str
    time: datetime


def _drop_unset(event: Any, names: tuple[str, ...]) -> None:
    """Leave unset optional fields out of the event, not stored as null: the payload (and
    the hash) of an event without them stays as it always was."""
    for name in names:
        if name in event.__dict__ and event.__dict__[name] is None:
            object.__delattr__(event, name)


def canonical_json(value: Any) -> bytes:
    """The canonical encoding hashed by the chain: sorted keys, no spaces, UTF-8."""
    return canonical_dumps(value, _canonical)


def _canonical(value: Any) -> Any:
    if type(value) is datetime and value.tzinfo is UTC:  # most: astimezone would copy it
        return value.isoformat(timespec="microseconds")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, UUID):
        return str(value)
    msg = f"not canonically encodable: {type(value).__name__}"
    raise TypeError(msg)


# Fields that a correction may change, per event type. A location field is
# correctable on every event that has a location.
CORRECTABLE: dict[str, frozenset[str]] = {
    "Reported": frozenset({"title", "description", "category", "severity"}),
    "SeverityAssessed": frozenset({"severity"}),
    "DecisionRecorded": frozenset({"forum", "summary", "rationale", "valid_from", "valid_until"}),
    "ActionLogged": frozenset({"action"}),
    "Resolved": frozenset({"resolution"}),
    # Evidence is never replaced: its file stays; a new attachment corrects it, named by
    # a correction of the old one's ``superseded_by`` (empty until then).
    "EvidenceAttached": frozenset({"description", "superseded_by"}),
}
LOCATION_FIELDS = frozenset({"location.kecamatan", "location.desa", "location.tps"})
# The location fields the reference data names together: a desa lies in one kecamatan.
PLACE_FIELDS = frozenset({"location.kecamatan", "location.desa"})

#: The desa of a kecamatan, None for one the reference data does not know
#: (``ReferenceData.desa_of``).
DesaOf = Callable[[str], frozenset[str] | None]
# Correctable fields that hold a time: recorded in the canonical form (UTC, microseconds),
# named in a correction by any ISO-8601 spelling of the same instant.
TIME_FIELDS = frozenset({"occurred_at", "valid_from", "valid_until"})


@dataclass(frozen=True)
class EvidenceFile:
    """A file as the ledger checked it: its content's SHA-256 (hex), size and sniffed type."""

    sha256: str
    size_bytes: int
    media_type: str


@dataclass(frozen=True)
class Evidence:
    """Evidence attached to an incident; its correctable texts live in ``event_values``."""

    event_id: UUID
    file: EvidenceFile
    file_name: str
    agency: str
    officer: str
    attached_at: datetime


class Incident(Aggregate):
    """An incident reported by an agency, handled by a lead agency and its supporters."""

    class Event(Aggregate.Event):
        """The event envelope shared by every incident event."""

        event_id: UUID
        occurred_at: datetime
        actor_agency: str
        actor_officer: str
        reason: str
        location: dict[str, Any] | None
        correlation_id: str
        causation_id: str
        request_id: str
        previous_hash: str

        def apply(self, aggregate: Any) -> None:
            incident: Incident = aggregate
            # Read from the stored state itself: an event stripped of its link is broken.
            if self.__dict__.get("previous_hash") != incident.head_hash:
                # The link at this version does not match the event before it: either was
                # changed (ledger-audit verify names which, and its position).
                before = self.originator_version - 1
                link = (
                    f"its link does not match version {before}, one of the two was changed"
                    if before
                    else "its link is not a chain's start: it was changed"
                )
                raise self._changed(link, "chain")
            try:
                self.evolve(incident)
            except AttributeError:
                # A stored event stripped of a field it must have (its JSON still decodes):
                # changed in the store, so DATA_LOSS like any other change, never INTERNAL
                # (the relay and the reads passed over only what they know is broken).
                missing = missing_fields(self)
                if not missing:
                    raise
                lacks = f"its stored event lacks {', '.join(missing)}, it was changed"
                raise self._changed(lacks, "decode") from None
            # A record of a read of its personal data changes nothing a command decides
            # on (check_expected).
            if not isinstance(self, Incident.PersonalDataAccessed):
                incident.decided_version = self.originator_version
            incident.head_hash = event_hash(self)
            # The ledger's signature over that hash, set when the event was stored
            # (see services/ledger/seals.py); None until then, and on events stored
            # before seals existed.
            incident.head_seal = self.__dict__.get("seal")
            # Written past the properties: a snapshot's rows stay packed (see event_values).
            incident._event_values[self.event_id] = _initial_values(self)
            incident._event_types[self.event_id] = type(self).__name__
            incident._event_agencies[self.event_id] = self.actor_agency

        def evolve(self, incident: Incident) -> None:
            """Changes the incident's state; overridden by each event type."""

        def _changed(self, what: str, check: str) -> DataLoss:
            """The DATA_LOSS of this stored event, changed in the store: ``what`` says how,
            ``check`` which check found it ("chain", "decode")."""
            return DataLoss(
                f"incident {self.originator_id} fails its hash chain at version "
                f"{self.originator_version}: {what} (`ledger-audit verify --store` names "
                "where)",
                reason="HASH_CHAIN_BROKEN",
                metadata={
                    "incident": f"incidents/{self.originator_id}",
                    "version": str(self.originator_version),
                    "check": check,
                },
            )

    class Created(Event, Aggregate.Created):
        pass

    class Reported(Created):
        title: str
        description: str
        category: str
        severity: str
        # The incident's reference code (refcodes.py); absent from reports recorded
        # before codes existed.
        reference: str | None = None
        # Only on a report ingested from a field device (DeviceRecord).
        device_id: str | None = None
        device_report_id: UUID | None = None
        device_record_time: datetime | None = None
        device_clock_skew_ms: int | None = None
        # Only on a report that names people: each a SealedSubject's payload.
        personal_data: list[dict[str, Any]] | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            _drop_unset(self, ("reference", *OPTIONAL_REPORT_FIELDS))

        def evolve(self, incident: Incident) -> None:
            incident.reference = self.__dict__.get("reference") or ""
            incident.title = self.title
            incident.description = self.description
            incident.category = self.category
            incident.severity = self.severity
            incident.severity_event_id = self.event_id
            incident.location = dict(self.location or {})
            incident.reporter_agency = self.actor_agency
            incident.reporter_officer = self.actor_officer
            incident.occurred_at = self.occurred_at
            for payload in self.__dict__.get("personal_data") or ():
                sealed = SealedSubject.from_payload(payload)
                incident.subjects[sealed.subject_id] = DataSubject(sealed)

    class Verified(Event):
        def evolve(self, incident: Incident) -> None:
            incident.status = Status.VERIFIED

    class Rejected(Event):
        rejection_reason: str

        def evolve(self, incident: Incident) -> None:
            incident.status = Status.REJECTED
            incident.rejection_reason = RejectionReason(self.rejection_reason)

    class Merged(Event):
        target_id: UUID
        # The survivor's reference code, when it has one.
        target_reference: str | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            _drop_unset(self, ("target_reference",))

        def evolve(self, incident: Incident) -> None:
            incident.status = Status.MERGED
            incident.merged_into = self.target_id
            incident.merged_into_reference = self.__dict__.get("target_reference") or ""

    class DuplicateMerged(Event):
        duplicate_id: UUID
        # The duplicate's reference code, when it has one.
        duplicate_reference: str | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            _drop_unset(self, ("duplicate_reference",))

        def evolve(self, incident: Incident) -> None:
            incident.merged_incidents.append(self.duplicate_id)

    class SeverityAssessed(Event):
        severity: str

        def evolve(self, incident: Incident) -> None:
            incident.severity = self.severity
            incident.severity_event_id = self.event_id

    class LeadAssigned(Event):
        agency: str

        def evolve(self, incident: Incident) -> None:
            incident.status = Status.ASSIGNED
            incident.lead_agency = self.agency
            if self.agency in incident.supporting_agencies:
                incident.supporting_agencies.remove(self.agency)
            # A proposal made by a former lead does not bind the newly assigned one.
            incident.pending_handover = None
            incident.pending_handover_event = None

    class SupportingAgencyAdded(Event):
        agency: str

        def evolve(self, incident: Incident) -> None:
            incident.supporting_agencies.append(self.agency)

    class HandoverProposed(Event):
        to_agency: str

        def evolve(self, incident: Incident) -> None:
            incident.pending_handover = (incident.lead_agency, self.to_agency, self.reason)
            incident.pending_handover_event = self.event_id

    class HandoverAccepted(Event):
        from_agency: str
        to_agency: str

        def evolve(self, incident: Incident) -> None:
            incident.lead_agency = self.to_agency
            if self.to_agency in incident.supporting_agencies:
                incident.supporting_agencies.remove(self.to_agency)
            incident.pending_handover = None
            incident.pending_handover_event = None

    class DecisionRecorded(Event):
        deciding_agencies: list[str]
        forum: str
        summary: str
        rationale: str
        valid_from: datetime
        valid_until: datetime

        def evolve(self, incident: Incident) -> None:
            incident.decisions.append(
                Decision(self.event_id, tuple(self.deciding_agencies), dict(self.location or {}))
            )

    class ActionLogged(Event):
        action: str
        starts_response: bool

        def evolve(self, incident: Incident) -> None:
            if self.starts_response:
                incident.status = Status.RESPONDING

    class Escalated(Event):
        level: int

        def evolve(self, incident: Incident) -> None:
            incident.escalation_level = self.level

    class Resolved(Event):
        resolution: str

        def evolve(self, incident: Incident) -> None:
            incident.status = Status.RESOLVED
            incident.close_requested = False

    class ClosureRequested(Event):
        def evolve(self, incident: Incident) -> None:
            incident.close_requested = True

    class ClosureApproved(Event):
        def evolve(self, incident: Incident) -> None:
            incident.status = Status.CLOSED
            incident.close_requested = False
            incident.closed_at = self.timestamp

    class Reopened(Event):
        def evolve(self, incident: Incident) -> None:
            incident.status = Status.REOPENED
            incident.close_requested = False

    class PersonalDataAccessed(Event):
        """Personal data read (``subjects``: their ids) for a stated purpose (``reason``)."""

        subjects: list[str]

        def evolve(self, incident: Incident) -> None:
            incident.accesses.append(
                PersonalDataAccess(
                    self.event_id,
                    self.actor_agency,
                    self.actor_officer,
                    tuple(UUID(s) for s in self.subjects),
                    self.reason,
                    self.timestamp,
                )
            )

    class PersonalDataErased(Event):
        """The subjects' keys destroyed, on request or by the retention rule (``reason``:
        the legal basis). Carries no personal data."""

        subjects: list[str]

        def evolve(self, incident: Incident) -> None:
            for text in self.subjects:
                subject_id = UUID(text)
                incident.subjects[subject_id] = DataSubject(
                    incident.subjects[subject_id].sealed, erased=True
                )
            incident.erasures.append(
                PersonalDataErasure(
                    self.event_id,
                    self.actor_agency,
                    self.actor_officer,
                    tuple(UUID(s) for s in self.subjects),
                    self.reason,
                    self.timestamp,
                )
            )

    class LegalHoldPlaced(Event):
        """An agency (law enforcement, Bawaslu) blocks erasure; ``reason``: why."""

        def evolve(self, incident: Incident) -> None:
            incident.legal_holds[self.actor_agency] = self.reason

    class LegalHoldLifted(Event):
        def evolve(self, incident: Incident) -> None:
            incident.legal_holds.pop(self.actor_agency, None)

    class EvidenceAttached(Event):
        """A file attached as evidence: only its digest, size and type, never its bytes."""

        sha256: str
        size_bytes: int
        media_type: str
        file_name: str
        description: str

        def evolve(self, incident: Incident) -> None:
            incident.evidence[self.event_id] = Evidence(
                self.event_id,
                EvidenceFile(self.sha256, self.size_bytes, self.media_type),
                self.file_name,
                self.actor_agency,
                self.actor_officer,
                self.timestamp,
            )

    class Corrected(Event):
        corrected_event_id: UUID
        field: str
        old_value: str
        new_value: str

        def evolve(self, incident: Incident) -> None:
            incident.apply_correction(self.corrected_event_id, self.field, self.new_value)

    # ------------------------------------------------------------------ state

    def __init__(self) -> None:
        self.status = Status.REPORTED
        # "" for an incident reported before reference codes existed.
        self.reference = ""
        self.title = ""
        self.description = ""
        self.category = ""
        self.severity = ""
        self.severity_event_id: UUID | None = None
        self.location: dict[str, Any] = {}
        self.reporter_agency = ""
        self.reporter_officer = ""
        self.occurred_at: datetime | None = None
        self.lead_agency = ""
        self.supporting_agencies: list[str] = []
        self.pending_handover: tuple[str, str, str] | None = None
        self.pending_handover_event: UUID | None = None
        self.escalation_level = 0
        self.decisions: list[Decision] = []
        self.close_requested = False
        self.merged_into: UUID | None = None
        self.merged_into_reference = ""
        self.merged_incidents: list[UUID] = []
        self.rejection_reason: RejectionReason | None = None
        self.closed_at: datetime | None = None
        # Personal data: the people the report names (references and ciphertext only),
        # every read of their data, and the legal holds in force (agency -> reason).
        self.subjects: dict[UUID, DataSubject] = {}
        self.accesses: list[PersonalDataAccess] = []
        self.erasures: list[PersonalDataErasure] = []
        self.legal_holds: dict[str, str] = {}
        self.head_hash = GENESIS_HASH
        self.head_seal: str | None = None
        # The version of its latest event that changed what a command decides on (every
        # event but a record of a read): see check_expected.
        self.decided_version = 0
        # Current (corrected) values of each event's correctable fields, each event's type
        # and agency (read through the properties below).
        self._event_values: dict[UUID, dict[str, str]] = {}
        self._event_types: dict[UUID, str] = {}
        self._event_agencies: dict[UUID, str] = {}
        # The rows of those of the events a snapshot holds, while not needed yet (None:
        # all in the dicts above): see from_snapshot_state.
        self._packed_rows: Callable[[], list[list[Any]]] | None = None
        self.evidence: dict[UUID, Evidence] = {}

    @property
    def event_values(self) -> dict[UUID, dict[str, str]]:
        """Current (corrected) values of each event's correctable fields, by event id."""
        self._unpack()
        return self._event_values

    @property
    def event_types(self) -> dict[UUID, str]:
        self._unpack()
        return self._event_types

    @property
    def event_agencies(self) -> dict[UUID, str]:
        self._unpack()
        return self._event_agencies

    def _unpack(self) -> None:
        """The packed rows of a snapshot put into the dicts, before the rows of the events
        applied since (in the events' order, as a replay has them)."""
        loader = self._packed_rows
        if loader is None:
            return
        values: dict[UUID, dict[str, str]] = {}
        types: dict[UUID, str] = {}
        agencies: dict[UUID, str] = {}
        for text, event_type, agency, row_values in loader():
            event_id = UUID(text)
            values[event_id] = dict(row_values)
            types[event_id] = str(event_type)
            agencies[event_id] = str(agency)
        values.update(self._event_values)
        types.update(self._event_types)
        agencies.update(self._event_agencies)
        self._event_values, self._event_types, self._event_agencies = values, types, agencies
        self._packed_rows = None

    # ------------------------------------------------------- optimistic concurrency

    def check_expected(self, expected: int) -> None:
        """ABORTED (VersionConflict) when a command sent with the version its sender saw
        (``expected``; 0: any) comes after a change of the incident. A record of a read of
        its personal data (``PersonalDataAccessed``) changes nothing a sender decides on, so
        the versions such records added since are accepted too: a coordinator's form open
        while Bawaslu reads the report's people still sends."""
        if expected and not self.decided_version <= expected <= self.version:
            raise VersionConflict(expected, self.version)

    # ---------------------------------------------------------------- snapshot

    def snapshot_state(self) -> dict[str, Any]:
        """The incident's whole state as plain JSON values (texts, numbers, lists, dicts
        keyed by text): what a snapshot stores (services/ledger/snapshots.py).
        :meth:`from_snapshot_state` rebuilds the same incident from it. Every attribute is
        named here: a new one must be added to both (tests/unit/test_snapshots.py). The
        rows of its events, which grow with its history, are apart: :meth:`event_rows`."""
        return {
            "id": str(self.id),
            "version": self.version,
            "created_on": _iso(self.created_on),
            "modified_on": _iso(self.modified_on),
            "status": self.status.value,
            "reference": self.reference,
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "severity": self.severity,
            "severity_event_id": _text(self.severity_event_id),
            "location": self.location,
            "reporter_agency": self.reporter_agency,
            "reporter_officer": self.reporter_officer,
            "occurred_at": _iso(self.occurred_at),
            "lead_agency": self.lead_agency,
            "supporting_agencies": self.supporting_agencies,
            "pending_handover": self.pending_handover,
            "pending_handover_event": _text(self.pending_handover_event),
            "escalation_level": self.escalation_level,
            "decisions": [
                [str(d.event_id), list(d.deciding_agencies), d.scope] for d in self.decisions
            ],
            "close_requested": self.close_requested,
            "merged_into": _text(self.merged_into),
            "merged_into_reference": self.merged_into_reference,
            "merged_incidents": [str(i) for i in self.merged_incidents],
            "rejection_reason": self.rejection_reason.value if self.rejection_reason else None,
            "closed_at": _iso(self.closed_at),
            "subjects": [[s.sealed.to_payload(), s.erased] for s in self.subjects.values()],
            "accesses": [
                [
                    str(a.event_id),
                    a.agency,
                    a.officer,
                    [str(s) for s in a.subjects],
                    a.purpose,
                    _iso(a.time),
                ]
                for a in self.accesses
            ],
            "erasures": [
                [
                    str(e.event_id),
                    e.agency,
                    e.officer,
                    [str(s) for s in e.subjects],
                    e.legal_basis,
                    _iso(e.time),
                ]
                for e in self.erasures
            ],
            "legal_holds": self.legal_holds,
            "head_hash": self.head_hash,
            "head_seal": self.head_seal,
            "decided_version": self.decided_version,
            "evidence": [
                [
                    str(e.event_id),
                    e.file.sha256,
                    e.file.size_bytes,
                    e.file.media_type,
                    e.file_name,
                    e.agency,
                    e.officer,
                    _iso(e.attached_at),
                ]
                for e in self.evidence.values()
            ],
        }

    def event_rows(self) -> list[list[Any]]:
        """One row per event, in order: its id, type, agency and current correctable values
        (plain JSON values)."""
        return self._rows(self.event_values)

    def packed_event_rows(self) -> tuple[Callable[[], list[list[Any]]] | None, list[list[Any]]]:
        """The loader of the rows still packed (None when none are), and the rows of the
        events after them: a snapshot of a snapshot's incident need not unpack them."""
        return self._packed_rows, self._rows(self._event_values)

    def _rows(self, values: dict[UUID, dict[str, str]]) -> list[list[Any]]:
        return [
            [str(event_id), self._event_types[event_id], self._event_agencies[event_id], row]
            for event_id, row in values.items()
        ]

    @classmethod
    def from_snapshot_state(
        cls, state: dict[str, Any], event_rows: Callable[[], list[list[Any]]]
    ) -> Incident:
        """The incident :meth:`snapshot_state` gave ``state`` for, with the rows
        :meth:`event_rows` gave: ``event_rows`` is called once they are first read (most
        commands never read them, and their number grows with the history). KeyError,
        ValueError or TypeError when ``state`` is not such a state."""
        incident = cls.__new__(cls)
        incident.__base_init__(UUID(state["id"]), int(state["version"]), _time(state["created_on"]))
        incident.modified_on = _time(state["modified_on"])
        incident.status = Status(state["status"])
        incident.reference = str(state["reference"])
        incident.title = str(state["title"])
        incident.description = str(state["description"])
        incident.category = str(state["category"])
        incident.severity = str(state["severity"])
        incident.severity_event_id = _uuid(state["severity_event_id"])
        incident.location = dict(state["location"])
        incident.reporter_agency = str(state["reporter_agency"])
        incident.reporter_officer = str(state["reporter_officer"])
        incident.occurred_at = _time_or_none(state["occurred_at"])
        incident.lead_agency = str(state["lead_agency"])
        incident.supporting_agencies = [str(a) for a in state["supporting_agencies"]]
        handover = state["pending_handover"]
        incident.pending_handover = (
            None if handover is None else (str(handover[0]), str(handover[1]), str(handover[2]))
        )
        incident.pending_handover_event = _uuid(state["pending_handover_event"])
        incident.escalation_level = int(state["escalation_level"])
        incident.decisions = [
            Decision(UUID(event_id), tuple(agencies), dict(scope))
            for event_id, agencies, scope in state["decisions"]
        ]
        incident.close_requested = bool(state["close_requested"])
        incident.merged_into = _uuid(state["merged_into"])
        incident.merged_into_reference = str(state["merged_into_reference"])
        incident.merged_incidents = [UUID(i) for i in state["merged_incidents"]]
        reason = state["rejection_reason"]
        incident.rejection_reason = None if reason is None else RejectionReason(reason)
        incident.closed_at = _time_or_none(state["closed_at"])
        incident.subjects = {}
        for payload, erased in state["subjects"]:
            sealed = SealedSubject.from_payload(payload)
            incident.subjects[sealed.subject_id] = DataSubject(sealed, bool(erased))
        incident.accesses = [
            PersonalDataAccess(
                UUID(event_id),
                agency,
                officer,
                tuple(UUID(s) for s in subjects),
                purpose,
                _time(at),
            )
            for event_id, agency, officer, subjects, purpose, at in state["accesses"]
        ]
        # A snapshot written before erasures were kept, of an incident with one: refused
        # (KeyError: the snapshot is rejected and the incident replayed from its events),
        # lest it be shown as erased by no one.
        erasures = state.get("erasures")
        if erasures is None and any(s.erased for s in incident.subjects.values()):
            raise KeyError("erasures")
        incident.erasures = [
            PersonalDataErasure(
                UUID(event_id),
                agency,
                officer,
                tuple(UUID(s) for s in subjects),
                legal_basis,
                _time(at),
            )
            for event_id, agency, officer, subjects, legal_basis, at in erasures or []
        ]
        incident.legal_holds = dict(state["legal_holds"])
        incident.head_hash = str(state["head_hash"])
        incident.head_seal = state["head_seal"]
        # Snapshots stored before it was kept: their version, as strict as before.
        incident.decided_version = int(state.get("decided_version", incident.version))
        incident._event_values = {}
        incident._event_types = {}
        incident._event_agencies = {}
        incident._packed_rows = event_rows
        incident.evidence = {}
        for event_id, sha256, size, media_type, file_name, agency, officer, at in state["evidence"]:
            evidence = Evidence(
                UUID(event_id),
                EvidenceFile(sha256, int(size), media_type),
                file_name,
                agency,
                officer,
                _time(at),
            )
            incident.evidence[evidence.event_id] = evidence
        return incident

    # --------------------------------------------------------------- commands

    @classmethod
    def report(
        cls,
        envelope: Envelope,
        *,
        title: str,
        description: str,
        category: str,
        severity: str,
        location: dict[str, Any],
        incident_id: UUID,
        reference_prefix: str | None = None,
        reference_draw: int = 0,
        device: DeviceRecord | None = None,
        personal: SealedReport | None = None,
    ) -> Incident:
        """A new incident; with ``reference_prefix``, its reference code is recorded (the
        code is a function of ``incident_id`` and ``reference_draw``: see
        services/ledger/domain/refcodes.py)."""
        return cls._create(
            cls.Reported,
            id=incident_id,
            **cls._reported_fields(
                envelope,
                title=title,
                description=description,
                category=category,
                severity=severity,
                location=location,
                incident_id=incident_id,
                reference_prefix=reference_prefix,
                reference_draw=reference_draw,
                device=device,
                personal=personal,
            ),
        )

    @classmethod
    def reported(
        cls,
        envelope: Envelope,
        *,
        title: str,
        description: str,
        category: str,
        severity: str,
        location: dict[str, Any],
        incident_id: UUID,
        reference_prefix: str | None = None,
        reference_draw: int = 0,
        device: DeviceRecord | None = None,
        personal: SealedReport | None = None,
    ) -> Incident.Reported:
        """The event :meth:`report` records, by the same rules, without making the
        incident from it (a field device's batch: the incident is not changed again
        before it is stored, so only its event is wanted)."""
        return created_event(
            cls,
            cls.Reported,
            incident_id,
            **cls._reported_fields(
                envelope,
                title=title,
                description=description,
                category=category,
                severity=severity,
                location=location,
                incident_id=incident_id,
                reference_prefix=reference_prefix,
                reference_draw=reference_draw,
                device=device,
                personal=personal,
            ),
        )

    @staticmethod
    def _reported_fields(
        envelope: Envelope,
        *,
        title: str,
        description: str,
        category: str,
        severity: str,
        location: dict[str, Any],
        incident_id: UUID,
        reference_prefix: str | None,
        reference_draw: int,
        device: DeviceRecord | None,
        personal: SealedReport | None,
    ) -> dict[str, Any]:
        """The rules of a report, and the fields of its ``Reported`` event."""
        _require_writer(envelope.actor, "ReportIncident")
        provenance: dict[str, Any] = {}
        if personal is not None:
            if personal.incident_id != incident_id:
                raise ValueError("personal data sealed for another incident")
            provenance["personal_data"] = [s.to_payload() for s in personal.subjects]
        if device is not None:
            provenance.update(
                device_id=device.device_id,
                device_report_id=device.report_id,
                device_record_time=device.record_time,
                device_clock_skew_ms=device.clock_skew_ms,
            )
        return {
            "title": title,
            "description": description,
            "category": category,
            "severity": severity,
            "reference": None
            if reference_prefix is None
            else code_for(reference_prefix, incident_id, reference_draw),
            **provenance,
            **_envelope_kwargs(envelope, GENESIS_HASH, location=location),
        }

    def verify(self, envelope: Envelope, comment: str) -> None:
        self._check("VerifyIncident", envelope, {Status.REPORTED}, coordinator_only=True)
        self._trigger(self.Verified, envelope, reason=comment)

    def reject(self, envelope: Envelope, reason: RejectionReason, comment: str) -> None:
        self._check("RejectIncident", envelope, {Status.REPORTED}, coordinator_only=True)
        self._trigger(self.Rejected, envelope, reason=comment, rejection_reason=reason.value)

    def merge_into(self, envelope: Envelope, target: Incident, comment: str) -> None:
        self._check("MergeIncident", envelope, {Status.REPORTED}, coordinator_only=True)
        if target.id == self.id:
            raise InvalidArgument("target", "an incident cannot be merged into itself")
        if target.status in {Status.REJECTED, Status.MERGED}:
            raise FailedPrecondition(
                f"the target incident is {target.status.value} and cannot absorb duplicates",
                reason="MERGE_TARGET_NOT_LIVE",
                metadata={"target_status": target.status.value},
            )
        self._trigger(
            self.Merged,
            envelope,
            reason=comment,
            target_id=target.id,
            target_reference=target.reference or None,
        )
        target._trigger(
            self.DuplicateMerged,
            envelope,
            reason=comment,
            duplicate_id=self.id,
            duplicate_reference=self.reference or None,
        )

    def assess_severity(self, envelope: Envelope, severity: str, comment: str) -> None:
        allowed = set(Status) - TERMINAL
        self._check("AssessSeverity", envelope, allowed, involved=True, reporter_too=True)
        if severity == self.severity:
            raise FailedPrecondition(
                f"the severity is already {severity}",
                reason="NO_CHANGE",
                metadata={"severity": severity},
            )
        self._trigger(self.SeverityAssessed, envelope, reason=comment, severity=severity)

    def assign_lead(self, envelope: Envelope, agency: str, comment: str) -> None:
        self._check(
            "AssignLeadAgency", envelope, {Status.VERIFIED, Status.REOPENED}, coordinator_only=True
        )
        self._trigger(self.LeadAssigned, envelope, reason=comment, agency=agency)

    def add_supporting_agency(self, envelope: Envelope, agency: str, comment: str) -> None:
        allowed = {Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.REOPENED}
        self._check("AddSupportingAgency", envelope, allowed, lead_or_coordinator=True)
        if agency == self.lead_agency or agency in self.supporting_agencies:
            raise FailedPrecondition(
                f"agency {agency} is already involved in the incident",
                reason="ALREADY_INVOLVED",
                metadata={"agency": agency},
            )
        self._trigger(self.SupportingAgencyAdded, envelope, reason=comment, agency=agency)

    def propose_handover(self, envelope: Envelope, to_agency: str, reason: str) -> None:
        allowed = {Status.ASSIGNED, Status.RESPONDING}
        self._check("ProposeHandover", envelope, allowed, lead_or_coordinator=True)
        if self.pending_handover is not None:
            raise FailedPrecondition(
                f"a handover to {self.pending_handover[1]} is already pending",
                reason="HANDOVER_PENDING",
                metadata={"to_agency": self.pending_handover[1]},
            )
        if to_agency == self.lead_agency:
            raise InvalidArgument("to_agency", f"{to_agency} already leads the incident")
        self._trigger(self.HandoverProposed, envelope, reason=reason, to_agency=to_agency)

    def accept_handover(self, envelope: Envelope, comment: str) -> None:
        self._check("AcceptHandover", envelope, {Status.ASSIGNED, Status.RESPONDING})
        if self.pending_handover is None:
            raise FailedPrecondition("no handover is pending", reason="NO_HANDOVER_PENDING")
        from_agency, to_agency, _ = self.pending_handover
        if envelope.actor.agency != to_agency:
            raise PermissionDenied(
                f"only {to_agency}, the receiving agency, may accept this handover",
                reason="NOT_HANDOVER_RECIPIENT",
                metadata={"to_agency": to_agency, "caller_agency": envelope.actor.agency},
            )
        self._trigger(
            self.HandoverAccepted,
            envelope,
            reason=comment,
            from_agency=from_agency,
            to_agency=to_agency,
        )

    def record_decision(
        self,
        envelope: Envelope,
        *,
        deciding_agencies: list[str],
        forum: str,
        summary: str,
        rationale: str,
        scope: dict[str, Any],
        valid_from: datetime,
        valid_until: datetime,
        zone: tzinfo,
    ) -> None:
        """``zone``: the regency's, in which a refusal states the window's ends."""
        allowed = {
            Status.VERIFIED,
            Status.ASSIGNED,
            Status.RESPONDING,
            Status.RESOLVED,
            Status.REOPENED,
        }
        self._check("RecordDecision", envelope, allowed, involved=True)
        if (
            envelope.actor.role is not Role.COORDINATOR
            and envelope.actor.agency not in deciding_agencies
        ):
            raise PermissionDenied(
                "a decision can only be recorded by one of its deciding agencies "
                "or by the coordinator",
                reason="NOT_A_DECIDING_AGENCY",
                metadata={"caller_agency": envelope.actor.agency},
            )
        window_refused("valid_until", valid_from, valid_until, zone)
        if len(self.decisions) >= MAX_DECISIONS:
            raise FailedPrecondition(
                f"the incident already records {MAX_DECISIONS} decisions, the most it may",
                reason="TOO_MANY_DECISIONS",
                metadata={"limit": str(MAX_DECISIONS)},
            )
        self._trigger(
            self.DecisionRecorded,
            envelope,
            reason=rationale,
            location=scope,
            deciding_agencies=list(deciding_agencies),
            forum=forum,
            summary=summary,
            rationale=rationale,
            valid_from=valid_from,
            valid_until=valid_until,
        )

    def log_action(self, envelope: Envelope, action: str, location: dict[str, Any]) -> None:
        allowed = {Status.ASSIGNED, Status.RESPONDING, Status.RESOLVED, Status.REOPENED}
        self._check("LogAction", envelope, allowed, involved=True)
        self._trigger(
            self.ActionLogged,
            envelope,
            reason="",
            location=location,
            action=action,
            starts_response=self.status is Status.ASSIGNED,
        )

    def escalate(self, envelope: Envelope, reason: str) -> None:
        allowed = {
            Status.REPORTED,
            Status.VERIFIED,
            Status.ASSIGNED,
            Status.RESPONDING,
            Status.REOPENED,
        }
        self._check("EscalateIncident", envelope, allowed, involved=True, reporter_too=True)
        self._trigger(self.Escalated, envelope, reason=reason, level=self.escalation_level + 1)

    def resolve(self, envelope: Envelope, resolution: str) -> None:
        self._check("ResolveIncident", envelope, {Status.RESPONDING}, lead_or_coordinator=True)
        self._trigger(self.Resolved, envelope, reason=resolution, resolution=resolution)

    def request_closure(self, envelope: Envelope, comment: str) -> None:
        self._check("RequestClosure", envelope, {Status.RESOLVED}, lead_only=True)
        if self.close_requested:
            raise FailedPrecondition(
                "closure was already requested", reason="CLOSURE_ALREADY_REQUESTED"
            )
        self._trigger(self.ClosureRequested, envelope, reason=comment)

    def approve_closure(self, envelope: Envelope, comment: str) -> None:
        self._check("ApproveClosure", envelope, {Status.RESOLVED}, coordinator_only=True)
        if not self.close_requested:
            raise FailedPrecondition(
                "closure must be requested by the lead agency before it is approved",
                reason="CLOSURE_NOT_REQUESTED",
            )
        self._trigger(self.ClosureApproved, envelope, reason=comment)

    def reopen(self, envelope: Envelope, reason: str) -> None:
        self._check(
            "ReopenIncident", envelope, {Status.RESOLVED, Status.CLOSED}, lead_or_coordinator=True
        )
        self._trigger(self.Reopened, envelope, reason=reason)

    def check_attach(self, envelope: Envelope) -> None:
        """Whether the caller may attach evidence: checked before the upload is accepted,
        and again when its event is recorded."""
        allowed = set(Status) - TERMINAL
        self._check("UploadEvidence", envelope, allowed, involved=True, reporter_too=True)

    def attach_evidence(
        self, envelope: Envelope, file: EvidenceFile, file_name: str, description: str
    ) -> None:
        self.check_attach(envelope)
        self._trigger(
            self.EvidenceAttached,
            envelope,
            reason="",
            sha256=file.sha256,
            size_bytes=file.size_bytes,
            media_type=file.media_type,
            file_name=file_name,
            description=description,
        )

    def check_evidence_reader(self, actor: Actor, command: str) -> None:
        """Who may list and download evidence: auditors (who read everything), the
        coordinator and the agencies involved, the reporting one included."""
        if actor.role in {Role.AUDITOR, Role.COORDINATOR}:
            return
        if actor.agency in {self.lead_agency, self.reporter_agency, *self.supporting_agencies}:
            return
        raise PermissionDenied(
            f"agency {actor.agency} is not involved in this incident",
            reason="NOT_INVOLVED",
            metadata={"command": command, "caller_agency": actor.agency},
        )

    def check_download_auditor(self, actor: Actor) -> None:
        """Who may see who downloaded the incident's evidence: auditors and the coordinator."""
        if actor.role not in {Role.AUDITOR, Role.COORDINATOR}:
            raise PermissionDenied(
                "only auditors and the coordinator may list the downloads of evidence",
                reason="AUDITOR_OR_COORDINATOR_ONLY",
                metadata={"command": "ListEvidenceDownloads", "caller_agency": actor.agency},
            )

    def evidence_item(self, event_id: UUID) -> Evidence:
        try:
            return self.evidence[event_id]
        except KeyError:
            raise NotFound(
                f"no evidence {event_id} on incident {self.id}",
                reason="EVIDENCE_NOT_FOUND",
                metadata={"evidence": f"incidents/{self.id}/evidence/{event_id}"},
            ) from None

    def correct(
        self,
        envelope: Envelope,
        *,
        event_id: UUID,
        field: str,
        old_value: str,
        new_value: str,
        reason: str,
        zone: tzinfo,
        desa_of: DesaOf,
    ) -> None:
        """``zone``: the regency's, in which a refusal states a recorded time when the
        caller's ``old_value`` names no zone of its own; ``desa_of``: the reference data's
        places, which a corrected kecamatan or desa must be one of, with the other."""
        _require_writer(envelope.actor, "RecordCorrection")
        values = self.event_values.get(event_id)
        if values is None:
            raise InvalidArgument("corrected_event_id", f"no event {event_id} in this incident")
        if envelope.actor.role is not Role.COORDINATOR and (
            self.event_agencies[event_id] != envelope.actor.agency
        ):
            raise PermissionDenied(
                "only the agency that recorded an event, or the coordinator, may correct it",
                reason="NOT_EVENT_AUTHOR",
                metadata={"event_agency": self.event_agencies[event_id]},
            )
        if field not in values:
            correctable = ", ".join(sorted(values)) or "none"
            raise InvalidArgument(
                "field",
                f"{field!r} cannot be corrected on a {self.event_types[event_id]} event "
                f"(correctable: {correctable})",
            )
        recorded = values[field]
        if field in TIME_FIELDS:
            # A time is named by its instant, whatever the spelling (the zone a person
            # reads it in, with or without the microseconds), and recorded in one form.
            named = _instant(old_value)
            if old_value != recorded and (named is None or named != _time_value(recorded)):
                # Stated as the window refusals state times: in the zone the caller wrote
                # old_value in, else the regency's (the recorded UTC reads seven hours off in
                # WIB); the same instant, which a retry may give as old_value.
                said = shown(_time_value(recorded), zone if named is None else named.tzinfo or zone)
                raise FailedPrecondition(
                    f"old_value does not match the recorded value of {field}, {said}",
                    reason="OLD_VALUE_MISMATCH",
                    metadata={"field": field, "recorded_value": said},
                )
            old_value = recorded
            stated = _time_value(new_value)
            new_value = _canonical(stated)
            # A refusal states the window in the zone the caller wrote new_value in.
            self._check_validity_window(values, field, stated)
        elif recorded != old_value:
            raise FailedPrecondition(
                f"old_value does not match the recorded value of {field}, {recorded!r}",
                reason="OLD_VALUE_MISMATCH",
                metadata={"field": field, "recorded_value": recorded},
            )
        if new_value == old_value:
            raise InvalidArgument("new_value", "must differ from old_value")
        if field == "superseded_by":
            self._check_superseding(event_id, new_value)
        if field in PLACE_FIELDS:
            _check_corrected_place(values, field, new_value, desa_of)
        if not reason:
            raise InvalidArgument("reason", "a correction needs a reason")
        self._trigger(
            self.Corrected,
            envelope,
            reason=reason,
            corrected_event_id=event_id,
            field=field,
            old_value=old_value,
            new_value=new_value,
        )

    # ---------------------------------------------------------- personal data

    def readable_subjects(self, actor: Actor, policy: PersonalDataPolicy) -> list[DataSubject]:
        """The subjects whose data ``actor`` may read (erased ones included: they read as
        erased). PERMISSION_DENIED, naming nobody, when the agency may read none here."""
        is_reporter = actor.agency == self.reporter_agency
        if not (is_reporter or actor.agency in policy.readers):
            raise PermissionDenied(
                f"agency {actor.agency} may not read personal data of this incident",
                reason="PERSONAL_DATA_NOT_PERMITTED",
                metadata={"caller_agency": actor.agency},
            )
        return [
            s
            for s in self.subjects.values()
            # An anonymous reporter is known to the reporting agency alone.
            if is_reporter or not (s.sealed.anonymous and s.sealed.role is SubjectRole.REPORTER)
        ]

    def recorded_read(self, actor: Actor, event_id: UUID, request_id: str) -> PersonalDataAccess:
        """The read recorded by ``event_id``, for a retry of its request: it discloses again
        only to the officer it records. A request id is the agency's, not the officer's,
        and not secret: another officer of the agency replaying it would be shown the data
        with no read of theirs recorded (ALREADY_EXISTS, nothing disclosed)."""
        access = next(a for a in self.accesses if a.event_id == event_id)
        if access.officer != actor.officer:
            raise AlreadyExists(
                f"request_id {request_id!r} was already used by another officer of "
                f"{actor.agency} to read personal data; use a request id of your own",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "original_command": "ReadPersonalData"},
            )
        return access

    def found_subjects(
        self,
        actor: Actor,
        policy: PersonalDataPolicy,
        found: frozenset[UUID],
        access: PersonalDataAccess,
        request_id: str,
    ) -> list[DataSubject]:
        """The subjects a search (subject access) found here that its recorded read
        ``access`` discloses: those of ``found`` the caller may read, never an anonymous
        reporter but to the reporting agency (not even as a match withheld). A found subject
        with data that the read does not name means the read was recorded by another search
        under the same request id: REQUEST_ID_REUSED, nothing disclosed without its read."""
        chosen = [s for s in self.readable_subjects(actor, policy) if s.subject_id in found]
        if any(not s.erased and s.subject_id not in access.subjects for s in chosen):
            raise AlreadyExists(
                f"request_id {request_id!r} was already used by {actor.agency} to search "
                "for another person; use a request id of your own for each search",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "original_command": "FindPersonalData"},
            )
        return sorted(chosen, key=lambda s: s.subject_id)

    def check_may_see_personal_data_record(self, actor: Actor, policy: PersonalDataPolicy) -> None:
        """Who read the data, the subjects' references and the holds: for the agencies that
        may read, erase or hold it, and auditors (the record holds no personal data)."""
        if not (
            actor.role is Role.AUDITOR
            or actor.agency == self.reporter_agency
            or actor.agency in policy.readers | policy.erasers | policy.legal_hold
        ):
            raise PermissionDenied(
                f"agency {actor.agency} may not see who read this incident's personal data",
                reason="PERSONAL_DATA_NOT_PERMITTED",
                metadata={"caller_agency": actor.agency},
            )

    def record_personal_data_access(
        self,
        envelope: Envelope,
        purpose: str,
        policy: PersonalDataPolicy,
        only: frozenset[UUID] | None = None,
        named: tuple[UUID, ...] | None = None,
    ) -> list[DataSubject]:
        """Record that the caller reads the subjects' data (``only``: those subjects, for a
        subject access request; ``named``: those the caller named, each of them one this
        incident names); returns the subjects read. Nothing is recorded when the caller may
        not read, or there is nothing it may read."""
        subjects = self.readable_subjects(envelope.actor, policy)
        if named:
            for n, subject_id in enumerate(named):
                if subject_id not in self.subjects:
                    raise InvalidArgument(
                        f"subjects[{n}]", "names no data subject of this incident"
                    )
            only = frozenset(named) if only is None else only & frozenset(named)
        if only is not None:
            subjects = [s for s in subjects if s.subject_id in only]
        live = [s for s in subjects if not s.erased]
        if not live:
            said = (
                "its people's data was erased"
                if subjects
                else "it names nobody the caller may read"
            )
            raise FailedPrecondition(
                f"the incident holds no personal data the caller may read: {said}",
                reason="NO_PERSONAL_DATA",
                metadata={"incident": f"incidents/{self.id}", "check": "read"},
            )
        self._trigger(
            self.PersonalDataAccessed,
            envelope,
            reason=purpose,
            subjects=[str(s.subject_id) for s in live],
        )
        return subjects

    def erase_personal_data(
        self,
        envelope: Envelope,
        subjects: tuple[UUID, ...],
        legal_basis: str,
        policy: PersonalDataPolicy,
    ) -> list[UUID]:
        """Record the erasure of the subjects' data (none named: all of this incident's);
        returns their ids, whose keys the application then destroys. FAILED_PRECONDITION
        (``LEGAL_HOLD``) while a legal hold is in force. An auditor is refused first
        (``READ_ONLY_ROLE``), as by every command, even one the policy names."""
        actor = envelope.actor
        _require_writer(actor, "ErasePersonalData")
        if not (
            actor.role is Role.COORDINATOR
            or actor.agency == self.reporter_agency
            or actor.agency in policy.erasers
        ):
            raise PermissionDenied(
                f"agency {actor.agency} may not erase personal data of this incident",
                reason="PERSONAL_DATA_NOT_PERMITTED",
                metadata={"caller_agency": actor.agency},
            )
        for n, subject_id in enumerate(subjects):
            if subject_id not in self.subjects:
                raise InvalidArgument(f"subjects[{n}]", "names no data subject of this incident")
        if self.legal_holds:
            agencies = ", ".join(sorted(self.legal_holds))
            raise FailedPrecondition(
                f"a legal hold ({agencies}) blocks erasure until it is lifted",
                reason="LEGAL_HOLD",
                metadata={"holding_agencies": agencies},
            )
        chosen = subjects or tuple(self.subjects)
        erasing = [i for i in chosen if not self.subjects[i].erased]
        if not erasing:
            left = sum(1 for subject in self.subjects.values() if not subject.erased)
            if not chosen:
                said = "this incident names nobody"
            elif not left:
                said = "everyone it names is erased already"
            else:
                # Said, so that no one reads "nothing left" of a person still named.
                others = "1 other person it names is" if left == 1 else f"{left} others are"
                said = f"the people this request names are erased already ({others} not)"
            raise FailedPrecondition(
                f"no personal data is left to erase: {said}",
                reason="NO_PERSONAL_DATA",
                metadata={"check": "erase"},
            )
        self._trigger(
            self.PersonalDataErased,
            envelope,
            reason=legal_basis,
            subjects=[str(i) for i in erasing],
        )
        return erasing

    def personal_data_expired(self, now: datetime, retention: timedelta) -> bool:
        """Whether the retention rule erases the incident's personal data now: closed at
        least ``retention`` ago, no legal hold in force, someone left to erase."""
        return (
            self.status is Status.CLOSED
            and self.closed_at is not None
            and self.closed_at + retention <= now
            and not self.legal_holds
            and any(not s.erased for s in self.subjects.values())
        )

    def place_legal_hold(self, envelope: Envelope, reason: str, policy: PersonalDataPolicy) -> None:
        self._require_hold_agency(envelope.actor, policy, "PlaceLegalHold")
        if envelope.actor.agency in self.legal_holds:
            raise FailedPrecondition(
                f"agency {envelope.actor.agency} already holds this incident",
                reason="LEGAL_HOLD_ALREADY_PLACED",
            )
        self._trigger(self.LegalHoldPlaced, envelope, reason=reason)

    def lift_legal_hold(self, envelope: Envelope, reason: str, policy: PersonalDataPolicy) -> None:
        self._require_hold_agency(envelope.actor, policy, "LiftLegalHold")
        if envelope.actor.agency not in self.legal_holds:
            raise FailedPrecondition(
                f"agency {envelope.actor.agency} holds no legal hold on this incident",
                reason="LEGAL_HOLD_NOT_PLACED",
            )
        self._trigger(self.LegalHoldLifted, envelope, reason=reason)

    @staticmethod
    def _require_hold_agency(actor: Actor, policy: PersonalDataPolicy, command: str) -> None:
        """An agency the policy names for legal holds, never an auditor (a hold is written
        in the incident's history: auditors write nothing, even one the policy names)."""
        _require_writer(actor, command)
        if actor.agency not in policy.legal_hold:
            raise PermissionDenied(
                f"only {', '.join(sorted(policy.legal_hold)) or 'no agency'} may {command}",
                reason="LEGAL_HOLD_NOT_PERMITTED",
                metadata={"command": command, "caller_agency": actor.agency},
            )

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _check_validity_window(values: dict[str, str], field: str, stated: datetime) -> None:
        """A decision's window stays non-empty when one of its ends is corrected, as when it
        was recorded: valid_until after valid_from (stated in the zone of ``stated``)."""
        if field == "valid_from":
            start, end = stated, _time_value(values["valid_until"])
        elif field == "valid_until":
            start, end = _time_value(values["valid_from"]), stated
        else:
            return
        window_refused("new_value", start, end, stated.tzinfo or UTC)  # aware: _time_value

    def decision_scope(self, decision: Decision) -> dict[str, Any]:
        """Where ``decision`` applies as it stands: its recorded scope with the corrections of
        its location fields (as the decisions in force have it)."""
        values = self.event_values[decision.event_id]
        scope = dict(decision.scope)
        for field in LOCATION_FIELDS:
            key = field.removeprefix("location.")
            if field in values and values[field] != str(scope.get(key, "")):
                scope[key] = values[field]
        return scope

    def apply_correction(self, event_id: UUID, field: str, new_value: str) -> None:
        self.event_values[event_id][field] = new_value
        is_report = self.event_types[event_id] == "Reported"
        if field == "severity" and event_id == self.severity_event_id:
            self.severity = new_value
        elif is_report and field in {"title", "description", "category"}:
            setattr(self, field, new_value)
        elif is_report and field.startswith("location."):
            self.location[field.removeprefix("location.")] = new_value
        elif is_report and field == "occurred_at":
            self.occurred_at = datetime.fromisoformat(new_value)

    def _check_superseding(self, event_id: UUID, new_value: str) -> None:
        """Evidence is superseded by other evidence of the same incident, never by itself."""
        try:
            superseding = UUID(new_value)
        except ValueError:
            raise InvalidArgument(
                "new_value", "must be the id of an EvidenceAttached event"
            ) from None
        if superseding == event_id or superseding not in self.evidence:
            raise InvalidArgument(
                "new_value", f"no other evidence {new_value} in this incident supersedes it"
            )

    def _check(
        self,
        command: str,
        envelope: Envelope,
        allowed: set[Status] | frozenset[Status],
        *,
        coordinator_only: bool = False,
        lead_or_coordinator: bool = False,
        lead_only: bool = False,
        involved: bool = False,
        reporter_too: bool = False,
    ) -> None:
        """Refuse the command unless the caller may give it and the status allows it.

        A caller whose role never allows it (an auditor; anyone but the coordinator for
        the coordinator's commands) is refused before the status is looked at, whatever
        the status: the refusal tells them nothing of the incident. Lead, supporting and
        reporting agencies are parties of the incident, which its status shapes (before a
        lead is assigned there is none): the status is checked before them.
        """
        actor = envelope.actor
        _require_writer(actor, command)
        is_coordinator = actor.role is Role.COORDINATOR
        if coordinator_only and not is_coordinator:
            raise PermissionDenied(
                f"only the coordinator may {command}",
                reason="COORDINATOR_ONLY",
                metadata={"command": command, "caller_agency": actor.agency},
            )
        if self.status not in allowed:
            if self.status is Status.MERGED and self.merged_into is not None:
                # The survivor is where the work goes on: named, so that no one has to
                # look it up (metadata for programs, the reference code for people).
                survivor = self.merged_into_reference or str(self.merged_into)
                raise IllegalTransition(
                    command,
                    self.status.value,
                    f"it was merged into {survivor}: act on that incident",
                    metadata={
                        "merged_into": f"incidents/{self.merged_into}",
                        "merged_into_reference": self.merged_into_reference,
                    },
                )
            raise IllegalTransition(command, self.status.value)
        if lead_only and actor.agency != self.lead_agency:
            raise PermissionDenied(
                f"only the lead agency ({self.lead_agency or 'none'}) may {command}",
                reason="LEAD_AGENCY_ONLY",
                metadata={"command": command, "caller_agency": actor.agency},
            )
        if lead_or_coordinator and not (is_coordinator or actor.agency == self.lead_agency):
            raise PermissionDenied(
                f"only the lead agency ({self.lead_agency or 'none'}) or the coordinator "
                f"may {command}",
                reason="LEAD_OR_COORDINATOR_ONLY",
                metadata={"command": command, "caller_agency": actor.agency},
            )
        if involved and not (
            is_coordinator
            or actor.agency == self.lead_agency
            or actor.agency in self.supporting_agencies
            or (reporter_too and actor.agency == self.reporter_agency)
        ):
            raise PermissionDenied(
                f"agency {actor.agency} is not involved in this incident",
                reason="NOT_INVOLVED",
                metadata={"command": command, "caller_agency": actor.agency},
            )

    def _trigger(
        self,
        event_class: type[Incident.Event],
        envelope: Envelope,
        *,
        reason: str,
        location: dict[str, Any] | None = None,
        **payload: Any,
    ) -> None:
        self.trigger_event(
            event_class,
            **_envelope_kwargs(
                envelope, self.head_hash, location=location or self.location or None, reason=reason
            ),
            **payload,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def _iso(value: datetime | None) -> str | None:
    """A time as a snapshot keeps it: ISO 8601 with its offset, exactly as it was."""
    return None if value is None else value.isoformat()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _text(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid(text: str | None) -> UUID | None:
    return None if text is None else UUID(text)


def require_writer(actor: Actor, command: str) -> None:
    """PERMISSION_DENIED (``READ_ONLY_ROLE``) for an auditor: auditors write nothing."""
    _require_writer(actor, command)


def _require_writer(actor: Actor, command: str) -> None:
    if actor.role is Role.AUDITOR:
        raise PermissionDenied(
            f"auditors read everything and write nothing ({command})",
            reason="READ_ONLY_ROLE",
            metadata={"command": command, "caller_agency": actor.agency},
        )


def event_time() -> datetime:
    """The time an event is recorded at (the library's ``timestamp``)."""
    return datetime.now(UTC)


def _envelope_kwargs(
    envelope: Envelope, previous_hash: str, *, location: dict[str, Any] | None, reason: str = ""
) -> dict[str, Any]:
    now = event_time()
    return {
        "event_id": uuid4(),
        "timestamp": now,
        "occurred_at": envelope.occurred_at or now,
        "actor_agency": envelope.actor.agency,
        "actor_officer": envelope.actor.officer,
        "reason": reason,
        "location": dict(location) if location else None,  # never shared with state
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "request_id": envelope.request_id,
        "previous_hash": previous_hash,
    }


ENVELOPE_FIELDS = frozenset(
    {
        "originator_id",
        "originator_version",
        "timestamp",
        "event_id",
        "occurred_at",
        "actor_agency",
        "actor_officer",
        "reason",
        "location",
        "correlation_id",
        "causation_id",
        "request_id",
        "previous_hash",
        "originator_topic",
        "seal",
    }
)
"""The fields every event carries besides its payload (the event envelope)."""


def event_fields(event: Incident.Event) -> dict[str, Any]:
    """The event as a plain dict: envelope, identity and payload (what its hash covers).

    The seal is left out: it is the ledger's signature over this hash.
    """
    data = dict(vars(event))
    data.pop("originator_topic", None)
    data.pop("seal", None)
    return data


def missing_fields(event: Incident.Event) -> list[str]:
    """The fields the event's class declares without a default that its stored state does
    not hold (a record changed in the store). Only looked at once a fold has failed."""
    declared: dict[str, None] = {}
    for klass in type(event).__mro__:
        declared.update(dict.fromkeys(inspect.get_annotations(klass)))
    return sorted(
        name for name in declared if name not in event.__dict__ and not hasattr(type(event), name)
    )


def event_hash(event: Incident.Event) -> str:
    """SHA-256 over the canonical encoding of the event, its type and identity."""
    body = event_fields(event)
    body["type"] = type(event).__name__
    body["schema_version"] = getattr(type(event), "class_version", 1)
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _time_value(text: str) -> datetime:
    """A time of a correctable field as recorded or as checked by the command (ISO-8601;
    one recorded before offsets were required, without one, is UTC)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _instant(text: str) -> datetime | None:
    """The instant an old_value names: an ISO-8601 time with its UTC offset (without one it
    names no instant, unless it is the recorded text itself), else None."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _check_corrected_place(
    values: dict[str, str], field: str, new_value: str, desa_of: DesaOf
) -> None:
    """A corrected kecamatan or desa leaves the event naming a place a report could name:
    its desa, if any, in its kecamatan (a report naming a desa of another kecamatan is
    refused; a correction made the same place, counted in a kecamatan it is not in)."""
    kecamatan = new_value if field == "location.kecamatan" else values.get("location.kecamatan", "")
    desa = new_value if field == "location.desa" else values.get("location.desa", "")
    known = desa_of(kecamatan)
    if field == "location.kecamatan" and known is None:
        raise unknown_code("new_value", "kecamatan", kecamatan)
    if not desa:
        return
    if known is None:
        raise InvalidArgument(
            "new_value",
            f"a desa lies in a kecamatan, and this event names none ({kecamatan!r}): "
            "correct location.kecamatan first",
        )
    if desa in known:
        return
    if field == "location.desa":
        raise InvalidArgument(
            "new_value",
            f"unknown desa {desa!r} in kecamatan {kecamatan}",
            metadata={"check": "unknown", "value": desa, "what": "desa"},
        )
    raise InvalidArgument(
        "new_value",
        f"the event's desa {desa!r} is not in kecamatan {kecamatan}: correct location.desa "
        "to an empty value first, then the kecamatan, then the desa",
    )


def _initial_values(event: Incident.Event) -> dict[str, str]:
    name = type(event).__name__
    values: dict[str, str] = {}
    for field in CORRECTABLE.get(name, frozenset()):
        value = getattr(event, field, "")  # "" until corrected: superseded_by
        values[field] = _canonical(value) if isinstance(value, datetime) else str(value)
    if event.location:
        for field in LOCATION_FIELDS:
            values[field] = str(event.location.get(field.removeprefix("location."), ""))
    values["occurred_at"] = _canonical(event.occurred_at)
    return values


def incident_event_classes() -> list[type[Incident.Event]]:
    """Every concrete event class of the Incident aggregate."""
    found: list[type[Incident.Event]] = []
    pending: list[type[Incident.Event]] = [Incident.Event]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return [c for c in found if c is not Incident.Created]
