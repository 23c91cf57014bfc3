"""Plain, immutable Python types for what the ledger and the notifier return.

Times are timezone-aware :class:`datetime.datetime` in UTC (``None`` where the server left
a time unset); statuses are :class:`enum.StrEnum` members that compare equal to their
names (``incident.status == "VERIFIED"``). Every type is a frozen dataclass built from the
protobuf message by its ``from_proto`` class method.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import audit_service_pb2 as audit_pb
from incidentledger.v1 import evidence_service_pb2 as evidence_pb
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as notifier_pb
from incidentledger.v1 import situation_service_pb2 as situation_pb
from incidentledger_client.errors import LedgerError, from_status
from incidentledger_client.personal import PersonalData, SubjectSummary

ResponseTimeGrouping = Literal["agency", "severity", "category", "kecamatan"]
"""How :meth:`LedgerClient.response_times` groups its figures."""

DeliveryChannel = Literal["grpc", "webhook"]
DeliveryOutcome = Literal["delivered", "failed", "dead_letter"]
Band = Literal["low", "medium", "high"]


class IncidentStatus(StrEnum):
    """The lifecycle status of an incident."""

    UNSPECIFIED = "UNSPECIFIED"
    REPORTED = "REPORTED"
    VERIFIED = "VERIFIED"
    ASSIGNED = "ASSIGNED"
    RESPONDING = "RESPONDING"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"
    REJECTED = "REJECTED"
    MERGED = "MERGED"
    REOPENED = "REOPENED"

    @classmethod
    def from_proto(cls, value: int) -> IncidentStatus:
        return cls(pb.IncidentStatus.Name(value).removeprefix("INCIDENT_STATUS_"))  # type: ignore[arg-type]


class RejectionReason(StrEnum):
    """Why a reported incident was rejected."""

    UNSPECIFIED = "UNSPECIFIED"
    INVALID = "INVALID"
    HOAX = "HOAX"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"

    @classmethod
    def from_proto(cls, value: int) -> RejectionReason:
        return cls(pb.RejectionReason.Name(value).removeprefix("REJECTION_REASON_"))  # type: ignore[arg-type]

    def to_proto(self) -> pb.RejectionReason.ValueType:
        return pb.RejectionReason.Value(f"REJECTION_REASON_{self.value}")


# --- time conversion -----------------------------------------------------------------------


def to_datetime(stamp: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)


def _optional_time(message: Any, name: str) -> datetime | None:
    return to_datetime(getattr(message, name)) if message.HasField(name) else None


def to_timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp (naive datetimes are refused)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is required, got {value!r}")
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


# --- the incident --------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where something happened: codes from the reference data.

    >>> Location("ipuh", desa="Pasar Ipuh", tps="TPS 03")
    Location(kecamatan='ipuh', desa='Pasar Ipuh', tps='TPS 03', latitude=None, longitude=None)
    """

    kecamatan: str
    desa: str = ""
    tps: str = ""
    latitude: float | None = None
    longitude: float | None = None

    @classmethod
    def from_proto(cls, message: pb.Location) -> Location:
        return cls(
            kecamatan=message.kecamatan,
            desa=message.desa,
            tps=message.tps,
            latitude=message.latitude if message.HasField("latitude") else None,
            longitude=message.longitude if message.HasField("longitude") else None,
        )

    def to_proto(self) -> pb.Location:
        message = pb.Location(kecamatan=self.kecamatan, desa=self.desa, tps=self.tps)
        if self.latitude is not None:
            message.latitude = self.latitude
        if self.longitude is not None:
            message.longitude = self.longitude
        return message


@dataclass(frozen=True)
class Actor:
    """Who did something (from the caller's credentials)."""

    agency: str
    officer: str

    @classmethod
    def from_proto(cls, message: pb.Actor) -> Actor:
        return cls(message.agency, message.officer)


@dataclass(frozen=True)
class Decision:
    """A decision recorded on an incident."""

    deciding_agencies: tuple[str, ...]
    forum: str
    summary: str
    rationale: str
    scope: Location | None
    valid_from: datetime | None
    valid_until: datetime | None
    event_id: str

    @classmethod
    def from_proto(cls, message: pb.Decision) -> Decision:
        return cls(
            deciding_agencies=tuple(message.deciding_agencies),
            forum=message.forum,
            summary=message.summary,
            rationale=message.rationale,
            scope=Location.from_proto(message.scope) if message.HasField("scope") else None,
            valid_from=_optional_time(message, "valid_from"),
            valid_until=_optional_time(message, "valid_until"),
            event_id=message.event_id,
        )


@dataclass(frozen=True)
class Handover:
    """A proposed handover of the lead role, not yet accepted."""

    from_agency: str
    to_agency: str
    reason: str
    event_id: str

    @classmethod
    def from_proto(cls, message: pb.Handover) -> Handover:
        return cls(message.from_agency, message.to_agency, message.reason, message.event_id)


@dataclass(frozen=True)
class ChainFailure:
    """Why a listed incident's stored history cannot be shown: it fails its hash chain
    (changed in the store, outside the ledger)."""

    #: "chain", "seal" or "decode".
    check: str
    #: The version whose check failed; 0 when the check cannot name one.
    version: int
    message: str

    @classmethod
    def from_proto(cls, message: pb.ChainFailure) -> ChainFailure:
        return cls(message.check, message.version, message.message)


@dataclass(frozen=True)
class Incident:
    """An incident's current state (or its state at a past time or position).

    On a list, an incident whose stored history fails its hash chain has only ``name`` and
    ``chain_failure`` set (the other fields their empty values); ``get_incident`` of it
    raises ``DATA_LOSS``.
    """

    name: str
    title: str
    description: str
    category: str
    severity: str
    status: IncidentStatus
    location: Location
    reporter: Actor
    lead_agency: str
    supporting_agencies: tuple[str, ...]
    pending_handover: Handover | None
    escalation_level: int
    decisions: tuple[Decision, ...]
    close_requested: bool
    merged_into: str
    merged_incidents: tuple[str, ...]
    rejection_reason: RejectionReason
    version: int
    occur_time: datetime | None
    create_time: datetime | None
    update_time: datetime | None
    #: The reference code people read out (``MKM-7QK3-9V``); "" for an incident reported
    #: before the ledger gave codes.
    reference: str = ""
    #: The code of the incident this one was merged into, when ``MERGED`` (and it has one).
    merged_into_reference: str = ""
    #: The people the report names (reporter first, then witnesses), never their data:
    #: each one's role, anonymity and whether their data is present or erased.
    data_subjects: tuple[SubjectSummary, ...] = ()
    #: The agencies holding a legal hold on the incident (it blocks erasure).
    legal_hold_agencies: tuple[str, ...] = ()
    #: Set only on a list, for an incident whose stored history fails its hash chain.
    chain_failure: ChainFailure | None = None

    @classmethod
    def from_proto(cls, message: pb.Incident) -> Incident:
        return cls(
            name=message.name,
            title=message.title,
            description=message.description,
            category=message.category,
            severity=message.severity,
            status=IncidentStatus.from_proto(message.status),
            location=Location.from_proto(message.location),
            reporter=Actor.from_proto(message.reporter),
            lead_agency=message.lead_agency,
            supporting_agencies=tuple(message.supporting_agencies),
            pending_handover=(
                Handover.from_proto(message.pending_handover)
                if message.HasField("pending_handover")
                else None
            ),
            escalation_level=message.escalation_level,
            decisions=tuple(Decision.from_proto(d) for d in message.decisions),
            close_requested=message.close_requested,
            merged_into=message.merged_into,
            merged_incidents=tuple(message.merged_incidents),
            rejection_reason=RejectionReason.from_proto(message.rejection_reason),
            version=message.version,
            occur_time=_optional_time(message, "occur_time"),
            create_time=_optional_time(message, "create_time"),
            update_time=_optional_time(message, "update_time"),
            reference=message.reference,
            merged_into_reference=message.merged_into_reference,
            data_subjects=tuple(SubjectSummary.from_proto(d) for d in message.data_subjects),
            legal_hold_agencies=tuple(message.legal_hold_agencies),
            chain_failure=(
                ChainFailure.from_proto(message.chain_failure)
                if message.HasField("chain_failure")
                else None
            ),
        )


@dataclass(frozen=True)
class IncidentPage:
    """One page of ``ListIncidents``: its incidents, and the token of the next page ("" when
    no more incidents match), which continues the same filter and order from where this
    page ends."""

    incidents: tuple[Incident, ...]
    next_page_token: str


@dataclass(frozen=True)
class IncidentEvent:
    """One immutable event of an incident: the event envelope.

    ``payload`` is the event-specific part, decoded from ``payload_json``.
    """

    event_id: str
    incident: str
    version: int
    type: str
    schema_version: int
    occur_time: datetime | None
    record_time: datetime | None
    actor: Actor
    reason: str
    location: Location | None
    correlation_id: str
    causation_id: str
    request_id: str
    previous_hash: str
    hash: str
    position: int
    payload_json: str = field(repr=False)

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.payload_json) if self.payload_json else {}
        return value

    @classmethod
    def from_proto(cls, message: pb.IncidentEvent) -> IncidentEvent:
        return cls(
            event_id=message.event_id,
            incident=message.incident,
            version=message.version,
            type=message.type,
            schema_version=message.schema_version,
            occur_time=_optional_time(message, "occur_time"),
            record_time=_optional_time(message, "record_time"),
            actor=Actor.from_proto(message.actor),
            reason=message.reason,
            location=(
                Location.from_proto(message.location) if message.HasField("location") else None
            ),
            correlation_id=message.correlation_id,
            causation_id=message.causation_id,
            request_id=message.request_id,
            previous_hash=message.previous_hash,
            hash=message.hash,
            position=message.position,
            payload_json=message.payload_json,
        )


@dataclass(frozen=True)
class CommandResult:
    """What every command returns: the incident's new version and the event's position.

    Pass ``position`` as ``min_position`` to a query to read your own write.
    """

    incident: str
    version: int
    position: int
    event_id: str
    record_time: datetime | None
    #: A report's reference code (``MKM-7QK3-9V``), to give the reporter; "" otherwise.
    reference: str = ""

    @classmethod
    def from_proto(cls, message: api.CommandResult) -> CommandResult:
        return cls(
            reference=message.reference,
            incident=message.incident,
            version=message.version,
            position=message.position,
            event_id=message.event_id,
            record_time=_optional_time(message, "record_time"),
        )


# --- field intake --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceReport:
    """One report as a field device recorded it, for :meth:`LedgerClient.ingest_reports`.

    ``report_id`` is the UUID the device made when the officer saved the report: with
    ``device_id`` (at most 64 characters) it is the report's idempotency key, so sending it
    again never records it twice (its request id is ``{device_id}/{report_id}``).
    ``record_time`` is when the device recorded it, by the device's clock. The other fields
    are :meth:`LedgerClient.report`'s, with the same limits.
    """

    report_id: str
    device_id: str
    record_time: datetime
    title: str
    category: str
    location: Location | str
    description: str = ""
    severity: str = ""
    occur_time: datetime | None = None
    correlation_id: str = ""
    #: The people the report names (:mod:`incidentledger_client.personal`).
    personal_data: PersonalData | None = None

    def to_proto(self) -> api.DeviceReport:
        location = Location(self.location) if isinstance(self.location, str) else self.location
        message = api.DeviceReport(
            device_report_id=self.report_id,
            device_id=self.device_id,
            device_record_time=to_timestamp(self.record_time),
            title=self.title,
            description=self.description,
            category=self.category,
            severity=self.severity,
            location=location.to_proto(),
            correlation_id=self.correlation_id,
        )
        if self.occur_time is not None:
            message.occur_time.CopyFrom(to_timestamp(self.occur_time))
        if self.personal_data is not None:
            message.personal_data.CopyFrom(self.personal_data.to_proto())
        return message


class IngestOutcome(StrEnum):
    """What became of one report handed over by :meth:`LedgerClient.ingest_reports`."""

    UNSPECIFIED = "UNSPECIFIED"
    CREATED = "CREATED"  # recorded now
    DUPLICATE = "DUPLICATE"  # recorded before (same content): the original result
    CONFLICT = "CONFLICT"  # its report id was recorded before with other content
    INVALID = "INVALID"  # refused, as ReportIncident would refuse it

    @classmethod
    def from_proto(cls, value: int) -> IngestOutcome:
        return cls(api.IngestOutcome.Name(value).removeprefix("INGEST_OUTCOME_"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class IngestResult:
    """One report's answer: its command result (``CREATED``, ``DUPLICATE``: the original
    one), or why it was not recorded (``CONFLICT``: a
    :class:`~incidentledger_client.errors.RequestIdReused`; ``INVALID``: an
    :class:`~incidentledger_client.errors.InvalidArgument` naming the field)."""

    report_id: str
    outcome: IngestOutcome
    result: CommandResult | None
    error: LedgerError | None

    @property
    def recorded(self) -> bool:
        """Whether the report is in the ledger (now or from before)."""
        return self.result is not None

    @classmethod
    def from_proto(cls, report_id: str, message: api.IngestResult) -> IngestResult:
        return cls(
            report_id=report_id,
            outcome=IngestOutcome.from_proto(message.outcome),
            result=CommandResult.from_proto(message.result) if message.HasField("result") else None,
            error=from_status(message.error) if message.HasField("error") else None,
        )


@dataclass
class IngestSummary:
    """How many reports of a backlog came to each outcome (:meth:`add` each result as it
    comes, or :meth:`of` a list)."""

    counts: dict[IngestOutcome, int] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Iterable[IngestResult]) -> IngestSummary:
        summary = cls()
        for result in results:
            summary.add(result)
        return summary

    def add(self, result: IngestResult) -> None:
        self.counts[result.outcome] = self.counts.get(result.outcome, 0) + 1

    def __getitem__(self, outcome: IngestOutcome) -> int:
        return self.counts.get(outcome, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def recorded(self) -> int:
        """Reports in the ledger now: recorded by this run or before it."""
        return self[IngestOutcome.CREATED] + self[IngestOutcome.DUPLICATE]

    @property
    def refused(self) -> int:
        """Reports the ledger refused (``CONFLICT``, ``INVALID``): fix them on the device."""
        return self.total - self.recorded


# --- bulk triage ---------------------------------------------------------------------------


class TriageAction(StrEnum):
    """What a triage item does to its incident: the single command it stands for."""

    VERIFY = "verify"  # VerifyIncident
    REJECT = "reject"  # RejectIncident (with a reason and a comment)
    ASSIGN_LEAD = "assign_lead"  # AssignLeadAgency (with the agency)


@dataclass(frozen=True)
class TriageItem:
    """One incident's triage in :meth:`LedgerClient.triage`.

    >>> TriageItem("incidents/0b6f…", TriageAction.VERIFY, expected_version=1)  # doctest: +SKIP
    >>> TriageItem(name, "reject", reason="HOAX", comment="edited photo")  # doctest: +SKIP
    >>> TriageItem(name, "assign_lead", agency="polres")  # doctest: +SKIP
    """

    name: str
    action: TriageAction | str
    expected_version: int = 0
    comment: str = ""
    #: For ``reject``: ``"INVALID"``, ``"HOAX"`` or ``"OUT_OF_SCOPE"``.
    reason: RejectionReason | str = RejectionReason.UNSPECIFIED
    #: For ``assign_lead``: the agency that leads.
    agency: str = ""

    def to_proto(self) -> api.TriageItem:
        item = api.TriageItem(name=self.name, expected_version=self.expected_version)
        action = TriageAction(self.action)
        if action is TriageAction.VERIFY:
            item.verify.comment = self.comment
        elif action is TriageAction.REJECT:
            item.reject.rejection_reason = RejectionReason(self.reason).to_proto()
            item.reject.comment = self.comment
        else:
            item.assign_lead.agency = self.agency
            item.assign_lead.comment = self.comment
        return item


class TriageOutcome(StrEnum):
    """What became of one item of :meth:`LedgerClient.triage`."""

    UNSPECIFIED = "UNSPECIFIED"
    RECORDED = "RECORDED"  # recorded now
    DUPLICATE = "DUPLICATE"  # recorded before by the same request: the original result
    CONFLICT = "CONFLICT"  # its request id was used before for another request
    INVALID = "INVALID"  # refused, as the single command would refuse its fields
    REFUSED = "REFUSED"  # the incident refuses the command (status, permission, version)

    @classmethod
    def from_proto(cls, value: int) -> TriageOutcome:
        return cls(api.TriageOutcome.Name(value).removeprefix("TRIAGE_OUTCOME_"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TriageResult:
    """One item's answer: its command result (``RECORDED``, ``DUPLICATE``: the original
    one), or why nothing was recorded: ``error`` is the error the single command would
    raise (:class:`~incidentledger_client.errors.VersionConflict`,
    :class:`~incidentledger_client.errors.IncidentNotFound`,
    :class:`~incidentledger_client.errors.IllegalTransition`, ...)."""

    name: str
    outcome: TriageOutcome
    result: CommandResult | None
    error: LedgerError | None

    @property
    def recorded(self) -> bool:
        """Whether the item's event is in the ledger (now or from before)."""
        return self.result is not None

    @classmethod
    def from_proto(cls, name: str, message: api.TriageResult) -> TriageResult:
        return cls(
            name=name,
            outcome=TriageOutcome.from_proto(message.outcome),
            result=CommandResult.from_proto(message.result) if message.HasField("result") else None,
            error=from_status(message.error) if message.HasField("error") else None,
        )


# --- the situation -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreReason:
    """One incident's contribution to a kecamatan's vulnerability score."""

    incident: str
    title: str
    severity: str
    category: str
    dimension: str
    status: str
    report_time: datetime | None
    weight: float
    #: The incident's reference code ("" for one reported before codes existed).
    reference: str = ""

    @classmethod
    def from_proto(cls, message: situation_pb.ScoreReason) -> ScoreReason:
        return cls(
            reference=message.reference,
            incident=message.incident,
            title=message.title,
            severity=message.severity,
            category=message.category,
            dimension=message.dimension,
            status=message.status,
            report_time=_optional_time(message, "report_time"),
            weight=message.weight,
        )


@dataclass(frozen=True)
class KecamatanScore:
    """A kecamatan's vulnerability score (0-100), band and reasons."""

    kecamatan: str
    name: str
    score: float
    band: Band
    #: The heaviest contributions only (at most the ledger's max_reasons, 50 by default).
    reasons: tuple[ScoreReason, ...]
    #: How many incidents contribute to the score: the true count, which reasons may not reach.
    incident_count: int = 0

    @classmethod
    def from_proto(cls, message: situation_pb.KecamatanScore) -> KecamatanScore:
        reasons = tuple(ScoreReason.from_proto(r) for r in message.reasons)
        return cls(
            kecamatan=message.kecamatan,
            name=message.name,
            score=message.score,
            band=message.band,  # type: ignore[arg-type]
            reasons=reasons,
            # A ledger older than the field sends 0: the listed reasons are all it tells.
            incident_count=message.incident_count or len(reasons),
        )


@dataclass(frozen=True)
class VulnerabilityMap:
    """The vulnerability map at ``time``, reflecting the projections up to ``position``."""

    kecamatan: tuple[KecamatanScore, ...]
    time: datetime | None
    position: int

    @classmethod
    def from_proto(cls, message: situation_pb.GetVulnerabilityMapResponse) -> VulnerabilityMap:
        return cls(
            kecamatan=tuple(KecamatanScore.from_proto(k) for k in message.kecamatan),
            time=_optional_time(message, "time"),
            position=message.position,
        )


@dataclass(frozen=True)
class DecisionInForce:
    """A decision whose validity window covers the asked time."""

    incident: str
    event_id: str
    summary: str
    forum: str
    rationale: str
    deciding_agencies: tuple[str, ...]
    kecamatan: str
    desa: str
    valid_from: datetime | None
    valid_until: datetime | None
    record_time: datetime | None
    recorded_by: str
    #: The incident's reference code (MKM-7QK3-9V); "" for one reported before codes.
    reference: str = ""

    @classmethod
    def from_proto(cls, message: situation_pb.DecisionInForce) -> DecisionInForce:
        return cls(
            incident=message.incident,
            event_id=message.event_id,
            summary=message.summary,
            forum=message.forum,
            rationale=message.rationale,
            deciding_agencies=tuple(message.deciding_agencies),
            kecamatan=message.kecamatan,
            desa=message.desa,
            valid_from=_optional_time(message, "valid_from"),
            valid_until=_optional_time(message, "valid_until"),
            record_time=_optional_time(message, "record_time"),
            recorded_by=message.recorded_by,
            reference=message.reference,
        )


@dataclass(frozen=True)
class AgencyWorkload:
    """Open, unacknowledged and overdue incidents of one agency."""

    agency: str
    open: int
    unacknowledged: int
    overdue: int

    @classmethod
    def from_proto(cls, message: situation_pb.AgencyWorkload) -> AgencyWorkload:
        return cls(message.agency, message.open, message.unacknowledged, message.overdue)


@dataclass(frozen=True)
class DurationStats:
    """Count, median and 90th percentile of a duration, in seconds."""

    count: int
    median_seconds: float
    p90_seconds: float

    @classmethod
    def from_proto(cls, message: situation_pb.DurationStats) -> DurationStats:
        return cls(message.count, message.median_seconds, message.p90_seconds)


@dataclass(frozen=True)
class ResponseTimes:
    """Time to acknowledge, verify and resolve for one agency, severity or category (``key``)."""

    key: str
    acknowledge: DurationStats
    verify: DurationStats
    resolve: DurationStats

    @classmethod
    def from_proto(cls, message: situation_pb.ResponseTimes) -> ResponseTimes:
        return cls(
            key=message.key,
            acknowledge=DurationStats.from_proto(message.acknowledge),
            verify=DurationStats.from_proto(message.verify),
            resolve=DurationStats.from_proto(message.resolve),
        )


@dataclass(frozen=True)
class ReferenceAgency:
    """An agency and its role (coordinator, responder or auditor)."""

    code: str
    name: str
    role: str


@dataclass(frozen=True)
class ReferenceKecamatan:
    """A kecamatan and its desa."""

    code: str
    name: str
    desa: tuple[str, ...]


@dataclass(frozen=True)
class ReferenceCategory:
    """A category and its Bawaslu IKP dimension."""

    code: str
    name: str
    dimension: str
    #: The name in other languages, by language tag (``"id"``), as the reference file gives.
    names: dict[str, str] = field(default_factory=dict)

    def name_in(self, language: str) -> str:
        """The name in ``language``, else :attr:`name`."""
        return self.names.get(language) or self.name


@dataclass(frozen=True)
class ReferenceSeverity:
    """A severity; ``rank`` orders them, lowest first."""

    code: str
    name: str
    rank: int
    names: dict[str, str] = field(default_factory=dict)

    def name_in(self, language: str) -> str:
        """The name in ``language``, else :attr:`name`."""
        return self.names.get(language) or self.name


@dataclass(frozen=True)
class ReferenceStatus:
    """A status of an incident as the regency words it: ``name`` in the reference file's main
    language (the code when the file does not name it), ``names`` in others. People's labels
    come from :func:`incidentledger_client.i18n.labels.status`, which prefers ``names``."""

    code: str
    name: str
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceRole:
    """A role of agencies (coordinator, responder, auditor) as the regency words it, as for
    :class:`ReferenceStatus` (labels: :func:`incidentledger_client.i18n.labels.role`)."""

    code: str
    name: str
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceData:
    """The ledger's reference data: what requests are checked against."""

    regency: str
    agencies: tuple[ReferenceAgency, ...]
    kecamatan: tuple[ReferenceKecamatan, ...]
    categories: tuple[ReferenceCategory, ...]
    severities: tuple[ReferenceSeverity, ...]
    default_severity: str
    #: Every status and role, as the regency words them (empty from a ledger too old to say).
    statuses: tuple[ReferenceStatus, ...] = ()
    roles: tuple[ReferenceRole, ...] = ()
    #: Who the caller's credentials identify (empty from a ledger too old to say).
    caller_agency: str = ""
    caller_officer: str = ""
    #: The regency's time zone, an IANA name (``Asia/Jakarta``), in which its officers read
    #: times (empty from a ledger too old to say): see :meth:`tz`.
    zone: str = ""

    def tz(self) -> ZoneInfo | None:
        """The regency's time zone, to show times for people in; None when the ledger does
        not say it or names a zone this machine's time zone data does not know."""
        if not self.zone:
            return None
        try:
            return ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError):
            return None

    def status_names(self) -> dict[str, dict[str, str]]:
        """Each status's names in other languages, by code (for ``labels.status``)."""
        return {s.code: s.names for s in self.statuses}

    def role_names(self) -> dict[str, dict[str, str]]:
        """Each role's names in other languages, by code (for ``labels.role``)."""
        return {r.code: r.names for r in self.roles}

    def kecamatan_names(self) -> dict[str, str]:
        """Each kecamatan's name (``Malin Deman``), by code (``malin_deman``): what people
        read where a program reads the code."""
        return {k.code: k.name for k in self.kecamatan if k.name}

    @classmethod
    def from_proto(cls, message: api.GetReferenceDataResponse) -> ReferenceData:
        return cls(
            regency=message.regency,
            agencies=tuple(ReferenceAgency(a.code, a.name, a.role) for a in message.agencies),
            kecamatan=tuple(
                ReferenceKecamatan(k.code, k.name, tuple(k.desa)) for k in message.kecamatan
            ),
            categories=tuple(
                ReferenceCategory(c.code, c.name, c.dimension, dict(c.names))
                for c in message.categories
            ),
            severities=tuple(
                ReferenceSeverity(v.code, v.name, v.rank, dict(v.names)) for v in message.severities
            ),
            default_severity=message.default_severity,
            statuses=tuple(
                ReferenceStatus(s.code, s.name, dict(s.names)) for s in message.statuses
            ),
            roles=tuple(ReferenceRole(r.code, r.name, dict(r.names)) for r in message.roles),
            caller_agency=message.caller_agency,
            caller_officer=message.caller_officer,
            zone=message.zone,
        )


@dataclass(frozen=True)
class ProjectionStatus:
    """How far the projections are behind the ledger."""

    position: int
    ledger_position: int
    lag_events: int
    lag_seconds: float

    @classmethod
    def from_proto(cls, message: situation_pb.GetProjectionStatusResponse) -> ProjectionStatus:
        return cls(
            message.position, message.ledger_position, message.lag_events, message.lag_seconds
        )


# --- audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint of the ledger-wide hash chain."""

    position: int
    chain_head: str
    events: int
    create_time: datetime | None
    key_id: str
    signature: bytes = field(repr=False)

    @classmethod
    def from_proto(cls, message: audit_pb.Checkpoint) -> Checkpoint:
        return cls(
            position=message.position,
            chain_head=message.chain_head,
            events=message.events,
            create_time=_optional_time(message, "create_time"),
            key_id=message.key_id,
            signature=bytes(message.signature),
        )

    def published(self) -> dict[str, Any]:
        """The checkpoint as the ledger publishes it (docs/hash-chain.md, section 6): a line
        of a witness's file, as ``ledger-audit verify --checkpoints`` and
        tests/js/verify_export.mjs read it. Its ``created_at`` is the text the ledger
        signed, a canonical time (UTC, six fraction digits, ``+00:00``): ``create_time``
        written that way again."""
        if self.create_time is None:
            raise ValueError(f"the checkpoint at position {self.position} has no time")
        return {
            "position": self.position,
            "head": self.chain_head,
            "events": self.events,
            "created_at": self.create_time.astimezone(UTC).isoformat(timespec="microseconds"),
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }


@dataclass(frozen=True)
class Divergence:
    """The first place where the stored history does not verify."""

    kind: Literal["modified", "deleted", "inserted", "reordered", "truncated", "bad_signature"]
    # None where the problem concerns no one incident (a checkpoint's count or head) or
    # no one position, as ledger-audit says it: the message leaves them unset ("" and 0).
    incident: str | None
    version: int | None
    position: int | None
    detail: str

    @classmethod
    def from_proto(cls, message: audit_pb.Divergence) -> Divergence:
        return cls(
            kind=message.kind,  # type: ignore[arg-type]
            incident=message.incident or None,
            version=message.version or None,
            position=message.position or None,
            detail=message.detail,
        )


@dataclass(frozen=True)
class VerifyProgress:
    """How far a verification of the whole ledger has come (see ``stream_verify_ledger``)."""

    position: int  # every log position up to this one is checked
    ledger_position: int  # the ledger's last position when it started (position may pass it)
    events_checked: int

    @classmethod
    def from_proto(cls, message: audit_pb.VerifyLedgerProgress) -> VerifyProgress:
        return cls(
            position=message.position,
            ledger_position=message.ledger_position,
            events_checked=message.events_checked,
        )


@dataclass(frozen=True)
class VerifyReport:
    """The result of verifying the whole ledger: ``ok``, or the first ``divergence``."""

    ok: bool
    events: int
    incidents: int
    checkpoints_checked: int
    divergence: Divergence | None

    @classmethod
    def from_proto(cls, message: audit_pb.VerifyLedgerResponse) -> VerifyReport:
        return cls(
            ok=message.ok,
            events=message.events,
            incidents=message.incidents,
            checkpoints_checked=message.checkpoints_checked,
            divergence=(
                Divergence.from_proto(message.divergence)
                if message.HasField("divergence")
                else None
            ),
        )


# --- the notifier --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscription or a webhook wants; empty fields match everything."""

    kecamatan: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    min_severity: str = ""
    event_types: tuple[str, ...] = ()
    involving_my_agency: bool = False
    agencies: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, message: notifier_pb.EventFilter) -> EventFilter:
        return cls(
            kecamatan=tuple(message.kecamatan),
            categories=tuple(message.categories),
            min_severity=message.min_severity,
            event_types=tuple(message.event_types),
            involving_my_agency=message.involving_my_agency,
            agencies=tuple(message.agencies),
        )

    def to_proto(self) -> notifier_pb.EventFilter:
        return notifier_pb.EventFilter(
            kecamatan=self.kecamatan,
            categories=self.categories,
            min_severity=self.min_severity,
            event_types=self.event_types,
            involving_my_agency=self.involving_my_agency,
            agencies=self.agencies,
        )


@dataclass(frozen=True)
class Notification:
    """One event from a subscription, the incident right after it, and the cursor to resume."""

    event: IncidentEvent
    incident: Incident
    cursor: str

    @classmethod
    def from_proto(cls, message: notifier_pb.SubscribeResponse) -> Notification:
        return cls(
            event=IncidentEvent.from_proto(message.notification.event),
            incident=Incident.from_proto(message.notification.incident),
            cursor=message.cursor,
        )


@dataclass(frozen=True)
class Webhook:
    """A registered webhook endpoint (its secret is never returned)."""

    name: str
    agency: str
    url: str
    filter: EventFilter
    create_time: datetime | None
    #: As ``webhooks()`` lists it (0 and None elsewhere): its deliveries not made yet
    #: (stored, under way, or waiting for a retry), when the oldest of them was stored or
    #: first attempted, and its dead letters. Not compared: they change as it delivers.
    waiting_deliveries: int = field(default=0, compare=False)
    oldest_waiting_time: datetime | None = field(default=None, compare=False)
    dead_letters: int = field(default=0, compare=False)

    @classmethod
    def from_proto(cls, message: notifier_pb.Webhook) -> Webhook:
        return cls(
            name=message.name,
            agency=message.agency,
            url=message.url,
            filter=EventFilter.from_proto(message.filter),
            create_time=_optional_time(message, "create_time"),
            waiting_deliveries=message.waiting_deliveries,
            oldest_waiting_time=_optional_time(message, "oldest_waiting_time"),
            dead_letters=message.dead_letters,
        )


@dataclass(frozen=True)
class DeadLetter:
    """A webhook delivery that exhausted its attempts."""

    name: str
    webhook: str
    event_id: str
    incident: str
    position: int
    attempts: int
    last_error: str
    first_attempt_time: datetime | None
    last_attempt_time: datetime | None

    @classmethod
    def from_proto(cls, message: notifier_pb.DeadLetter) -> DeadLetter:
        return cls(
            name=message.name,
            webhook=message.webhook,
            event_id=message.event_id,
            incident=message.incident,
            position=message.position,
            attempts=message.attempts,
            last_error=message.last_error,
            first_attempt_time=_optional_time(message, "first_attempt_time"),
            last_attempt_time=_optional_time(message, "last_attempt_time"),
        )


@dataclass(frozen=True)
class Delivery:
    """One line of the delivery log: who was notified of which event, how, with what outcome."""

    event_id: str
    incident: str
    position: int
    agency: str
    channel: DeliveryChannel
    target: str
    outcome: DeliveryOutcome
    attempt: int
    error: str
    time: datetime | None

    @classmethod
    def from_proto(cls, message: notifier_pb.DeliveryRecord) -> Delivery:
        return cls(
            event_id=message.event_id,
            incident=message.incident,
            position=message.position,
            agency=message.agency,
            channel=message.channel,  # type: ignore[arg-type]
            target=message.target,
            outcome=message.outcome,  # type: ignore[arg-type]
            attempt=message.attempt,
            error=message.error,
            time=_optional_time(message, "time"),
        )


# --- evidence ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """A file attached to an incident: its metadata, never its bytes.

    ``name`` is ``incidents/{id}/evidence/{event_id}``; ``sha256`` the hex digest of the
    bytes; ``media_type`` as the ledger sniffed it from the content; ``superseded_by`` the
    name of the evidence that corrects this one, or ``""``.
    """

    name: str
    sha256: str
    size_bytes: int
    media_type: str
    file_name: str
    description: str
    uploader: Actor
    attach_time: datetime | None
    superseded_by: str

    @property
    def incident(self) -> str:
        return self.name.partition("/evidence/")[0]

    @classmethod
    def from_proto(cls, message: evidence_pb.Evidence) -> Evidence:
        return cls(
            name=message.name,
            sha256=message.sha256,
            size_bytes=message.size_bytes,
            media_type=message.media_type,
            file_name=message.file_name,
            description=message.description,
            uploader=Actor.from_proto(message.uploader),
            attach_time=_optional_time(message, "attach_time"),
            superseded_by=message.superseded_by,
        )


@dataclass(frozen=True)
class EvidenceDownload:
    """One recorded download: who fetched which evidence, and when."""

    evidence: str
    actor: Actor
    download_time: datetime | None

    @classmethod
    def from_proto(cls, message: evidence_pb.EvidenceDownload) -> EvidenceDownload:
        return cls(
            evidence=message.evidence,
            actor=Actor.from_proto(message.actor),
            download_time=_optional_time(message, "download_time"),
        )


@dataclass(frozen=True)
class EvidenceProblem:
    """An event whose file is missing from the object store (``problem`` "missing") or
    differs from what it says ("changed")."""

    evidence: str
    position: int
    object: str
    problem: str
    expected_sha256: str
    expected_size_bytes: int
    found_sha256: str
    found_size_bytes: int

    @classmethod
    def from_proto(cls, message: evidence_pb.EvidenceProblem) -> EvidenceProblem:
        return cls(
            evidence=message.evidence,
            position=message.position,
            object=message.object,
            problem=message.problem,
            expected_sha256=message.expected_sha256,
            expected_size_bytes=message.expected_size_bytes,
            found_sha256=message.found_sha256,
            found_size_bytes=message.found_size_bytes,
        )


@dataclass(frozen=True)
class EvidenceReport:
    """What a deep verification of the evidence found."""

    ok: bool
    evidence: int
    objects: int
    bytes_read: int
    problems: tuple[EvidenceProblem, ...]

    @classmethod
    def from_proto(cls, message: evidence_pb.VerifyEvidenceResponse) -> EvidenceReport:
        return cls(
            ok=message.ok,
            evidence=message.evidence,
            objects=message.objects,
            bytes_read=message.bytes_read,
            problems=tuple(EvidenceProblem.from_proto(p) for p in message.problems),
        )
