"""Translation between the contract's protobuf messages and the ledger's Python types.

The one wire module: the gRPC adapter (services.ledger.api) parses requests and answers
with it, and the NATS relay (services.ledger.relay) publishes the same IncidentEvent and
Incident messages with it, without importing the gRPC adapter (see ``.importlinter``).

:data:`COMMANDS` is the one table from a command's request message to its command
object (services/ledger/domain/commands.py); the servicer looks requests up in it.
``IngestReports`` carries many reports: :class:`DeviceReports` turns each into a
``ReportIncident`` with its device's provenance, :func:`ingest_response` answers them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, overload
from uuid import UUID

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import personal_data_pb2 as pd
from services.common.errors import InvalidArgument, LedgerError
from services.common.jsoncodec import canonical_dumps
from services.common.request_checks import check_item
from services.ledger.application import (
    ChainFailure,
    CommandResult,
    IngestItem,
    IngestOutcome,
    IngestResult,
    StoredIncidentEvent,
    SubjectView,
    TriageOutcome,
    TriageResult,
)
from services.ledger.domain.commands import (
    AcceptHandover,
    AddSupportingAgency,
    ApproveClosure,
    AssessSeverity,
    AssignLeadAgency,
    Command,
    ErasePersonalData,
    EscalateIncident,
    IncidentCommand,
    LiftLegalHold,
    LogAction,
    MergeIncident,
    PlaceLegalHold,
    ProposeHandover,
    ReadPersonalData,
    RecordCorrection,
    RecordDecision,
    RejectIncident,
    ReopenIncident,
    ReportIncident,
    RequestClosure,
    ResolveIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import (
    ENVELOPE_FIELDS,
    DataSubject,
    Incident,
    PersonalDataAccess,
    PersonalDataErasure,
    RejectionReason,
    Status,
    event_fields,
    event_hash,
)
from services.ledger.domain.personal import Person, PersonalData, SubjectRole

_NAME_PREFIX = "incidents/"


def incident_name(incident_id: UUID) -> str:
    return f"{_NAME_PREFIX}{incident_id}"


def parse_name(name: str, field: str = "name") -> UUID:
    """The incident id in a resource name ``incidents/{uuid}``."""
    if not name:
        raise InvalidArgument(field, "is required")
    if not name.startswith(_NAME_PREFIX):
        raise InvalidArgument(field, f"must look like 'incidents/{{id}}', got {name[:80]!r}")
    try:
        return UUID(name[len(_NAME_PREFIX) :])
    except ValueError:
        raise InvalidArgument(field, f"has a malformed incident id: {name[:80]!r}") from None


def parse_event_id(value: str, field: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument(field, "must be an event id (UUID)") from None


def optional_time(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    ts: Timestamp = getattr(message, field)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "has out-of-range nanos")
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid time") from None


def required_time(message: Message, field: str) -> datetime:
    value = optional_time(message, field)
    if value is None:
        raise InvalidArgument(field, "is required")
    return value


def location_from_proto(message: Message, field: str) -> dict[str, Any] | None:
    if not message.HasField(field):
        return None
    loc: pb.Location = getattr(message, field)
    result: dict[str, Any] = {"kecamatan": loc.kecamatan, "desa": loc.desa, "tps": loc.tps}
    for coord in ("latitude", "longitude"):
        if loc.HasField(coord):
            value = getattr(loc, coord)
            if not math.isfinite(value):
                raise InvalidArgument(f"{field}.{coord}", "must be a finite number")
            result[coord] = value
    return result


def required_location(message: Message, field: str) -> dict[str, Any]:
    location = location_from_proto(message, field)
    if location is None:
        raise InvalidArgument(field, "is required")
    return location


def person_from_proto(message: pd.Person) -> Person:
    return Person(name=message.name, phone=message.phone, nik=message.nik, address=message.address)


def personal_data_from_proto(message: Message, field: str) -> PersonalData | None:
    """The people a request names (checked by the command's field check)."""
    if not message.HasField(field):
        return None
    data: pd.PersonalData = getattr(message, field)
    return PersonalData(
        reporter=person_from_proto(data.reporter) if data.HasField("reporter") else None,
        anonymous=data.reporter_anonymous,
        witnesses=tuple(person_from_proto(w) for w in data.witnesses),
    )


def subject_ids(values: Sequence[str], field: str) -> tuple[UUID, ...]:
    found = []
    for n, value in enumerate(values):
        try:
            found.append(UUID(value))
        except ValueError:
            raise InvalidArgument(f"{field}[{n}]", "must be a subject id (UUID)") from None
    return tuple(found)


def rejection_reason(value: int) -> RejectionReason:
    names = {
        pb.REJECTION_REASON_INVALID: RejectionReason.INVALID,
        pb.REJECTION_REASON_HOAX: RejectionReason.HOAX,
        pb.REJECTION_REASON_OUT_OF_SCOPE: RejectionReason.OUT_OF_SCOPE,
    }
    try:
        return names[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("rejection_reason", "must be INVALID, HOAX or OUT_OF_SCOPE") from None


# ------------------------------------------------------------------ commands

Request = TypeVar("Request", bound=Message)
ToCommand = Callable[[Any], Command]


def _to(request: type[Request], convert: Callable[[Request], Command]) -> tuple[type, ToCommand]:
    return request, convert


#: Each command's request message, and how it becomes the command. The fields convert
#: in order, so the first field that does not convert is the one an error names.
COMMANDS: Mapping[type, ToCommand] = dict(
    [
        _to(
            api.ReportIncidentRequest,
            lambda r: ReportIncident(
                title=r.title,
                description=r.description,
                category=r.category,
                severity=r.severity,
                location=required_location(r, "location"),
                personal_data=personal_data_from_proto(r, "personal_data"),
            ),
        ),
        _to(
            api.VerifyIncidentRequest,
            lambda r: VerifyIncident(parse_name(r.name), r.expected_version, r.comment),
        ),
        _to(
            api.RejectIncidentRequest,
            lambda r: RejectIncident(
                parse_name(r.name),
                r.expected_version,
                rejection_reason(r.rejection_reason),
                r.comment,
            ),
        ),
        _to(
            api.MergeIncidentRequest,
            lambda r: MergeIncident(
                parse_name(r.name), r.expected_version, parse_name(r.target, "target"), r.comment
            ),
        ),
        _to(
            api.AssessSeverityRequest,
            lambda r: AssessSeverity(parse_name(r.name), r.expected_version, r.severity, r.comment),
        ),
        _to(
            api.AssignLeadAgencyRequest,
            lambda r: AssignLeadAgency(parse_name(r.name), r.expected_version, r.agency, r.comment),
        ),
        _to(
            api.AddSupportingAgencyRequest,
            lambda r: AddSupportingAgency(
                parse_name(r.name), r.expected_version, r.agency, r.comment
            ),
        ),
        _to(
            api.ProposeHandoverRequest,
            lambda r: ProposeHandover(
                parse_name(r.name), r.expected_version, r.to_agency, r.reason
            ),
        ),
        _to(
            api.AcceptHandoverRequest,
            lambda r: AcceptHandover(parse_name(r.name), r.expected_version, r.comment),
        ),
        _to(
            api.RecordDecisionRequest,
            lambda r: RecordDecision(
                parse_name(r.name),
                r.expected_version,
                deciding_agencies=tuple(r.deciding_agencies),
                forum=r.forum,
                summary=r.summary,
                rationale=r.rationale,
                scope=location_from_proto(r, "scope"),
                valid_from=required_time(r, "valid_from"),
                valid_until=required_time(r, "valid_until"),
            ),
        ),
        _to(
            api.LogActionRequest,
            lambda r: LogAction(
                parse_name(r.name), r.expected_version, r.action, location_from_proto(r, "location")
            ),
        ),
        _to(
            api.EscalateIncidentRequest,
            lambda r: EscalateIncident(parse_name(r.name), r.expected_version, r.reason),
        ),
        _to(
            api.ResolveIncidentRequest,
            lambda r: ResolveIncident(parse_name(r.name), r.expected_version, r.resolution),
        ),
        _to(
            api.RequestClosureRequest,
            lambda r: RequestClosure(parse_name(r.name), r.expected_version, r.comment),
        ),
        _to(
            api.ApproveClosureRequest,
            lambda r: ApproveClosure(parse_name(r.name), r.expected_version, r.comment),
        ),
        _to(
            api.ReopenIncidentRequest,
            lambda r: ReopenIncident(parse_name(r.name), r.expected_version, r.reason),
        ),
        _to(
            api.RecordCorrectionRequest,
            lambda r: RecordCorrection(
                parse_name(r.name),
                r.expected_version,
                event_id=parse_event_id(r.corrected_event_id, "corrected_event_id"),
                field=r.field,
                old_value=r.old_value,
                new_value=r.new_value,
                reason=r.reason,
            ),
        ),
        # --- personal data (docs/personal-data.md)
        _to(
            api.ReadPersonalDataRequest,
            lambda r: ReadPersonalData(
                parse_name(r.name),
                r.expected_version,
                r.purpose,
                subject_ids(r.subjects, "subjects") or None,
            ),
        ),
        _to(
            api.ErasePersonalDataRequest,
            lambda r: ErasePersonalData(
                parse_name(r.name),
                r.expected_version,
                subject_ids(r.subjects, "subjects"),
                r.legal_basis,
                everyone=r.everyone,
            ),
        ),
        _to(
            api.PlaceLegalHoldRequest,
            lambda r: PlaceLegalHold(parse_name(r.name), r.expected_version, r.reason),
        ),
        _to(
            api.LiftLegalHoldRequest,
            lambda r: LiftLegalHold(parse_name(r.name), r.expected_version, r.reason),
        ),
    ]
)


def command_from_proto(request: Message) -> Command:
    """The command a request message asks for."""
    return COMMANDS[type(request)](request)


class DeviceReports(Sequence[IngestItem | InvalidArgument]):
    """Each report of an ``IngestReports`` request as the ledger takes it: an item, or the
    refusal of a report that does not convert (each on its own: one bad report does not
    refuse the others), converted when first asked for.

    Pickled as the request's bytes: the ledger's intake process (services/ledger/intake.py)
    converts the reports it prepares, and the ledger's own process only those it answers
    from their records. Writing the bytes of 500 reports takes about 0.1 ms; converting them
    took 11 ms of the ledger's interpreter, and pickling the items 5 ms more, and as much
    again to unpickle them in the child (docs/performance.md)."""

    def __init__(self, request: api.IngestReportsRequest) -> None:
        self._request = request
        self._items: dict[int, IngestItem | InvalidArgument] = {}

    def __len__(self) -> int:
        return len(self._request.reports)

    @overload
    def __getitem__(self, index: int) -> IngestItem | InvalidArgument: ...

    @overload
    def __getitem__(self, index: slice) -> list[IngestItem | InvalidArgument]: ...

    def __getitem__(
        self, index: int | slice
    ) -> IngestItem | InvalidArgument | list[IngestItem | InvalidArgument]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        item = self._items.get(index)
        if item is None:
            item = self._items[index] = _ingest_item(self._request.reports[index])
        return item

    def __reduce__(self) -> tuple[Any, ...]:
        return (_device_reports, (self._request.SerializeToString(),))


def _device_reports(data: bytes) -> DeviceReports:
    return DeviceReports(api.IngestReportsRequest.FromString(data))


def _ingest_item(report: api.DeviceReport) -> IngestItem | InvalidArgument:
    try:
        check_item(report)  # what check_request leaves to the service for each report
        return IngestItem(
            report_id=_device_report_id(report.device_report_id),
            device_id=report.device_id,
            record_time=required_time(report, "device_record_time"),
            command=ReportIncident(
                title=report.title,
                description=report.description,
                category=report.category,
                severity=report.severity,
                location=required_location(report, "location"),
                personal_data=personal_data_from_proto(report, "personal_data"),
            ),
            occurred_at=optional_time(report, "occur_time"),
            correlation_id=report.correlation_id,
        )
    except InvalidArgument as error:
        return error


def triage_items(request: api.TriageIncidentsRequest) -> list[IncidentCommand | InvalidArgument]:
    """Each item of a ``TriageIncidents`` request as the command it stands for, or the
    refusal of an item that does not convert (each on its own)."""
    return [_triage_item(item) for item in request.items]


def _triage_item(item: api.TriageItem) -> IncidentCommand | InvalidArgument:
    try:
        check_item(item)  # what check_request leaves to the service for each item
        incident = parse_name(item.name)
        action = item.WhichOneof("action")
        if action == "verify":
            return VerifyIncident(incident, item.expected_version, item.verify.comment)
        if action == "reject":
            return RejectIncident(
                incident,
                item.expected_version,
                rejection_reason(item.reject.rejection_reason),
                item.reject.comment,
            )
        if action == "assign_lead":
            return AssignLeadAgency(
                incident, item.expected_version, item.assign_lead.agency, item.assign_lead.comment
            )
        raise InvalidArgument("action", "is required: verify, reject or assign_lead")
    except InvalidArgument as error:
        return error


def _device_report_id(value: str) -> UUID:
    if not value:
        raise InvalidArgument("device_report_id", "is required")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument("device_report_id", "must be a UUID") from None


# ------------------------------------------------------------------ results

STATUS_TO_PROTO: dict[Status, pb.IncidentStatus.ValueType] = {
    status: pb.IncidentStatus.Value(f"INCIDENT_STATUS_{status.value}") for status in Status
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def timestamp(value: datetime | None) -> Timestamp | None:
    """The time as a protobuf Timestamp, the same as ``Timestamp.FromDatetime`` (a naive
    time read as UTC) at a third of its cost: that goes through ``utctimetuple`` and
    ``calendar.timegm``, and the relay converts five times per event."""
    if value is None:
        return None
    since = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def location_to_proto(location: dict[str, Any] | None) -> pb.Location | None:
    if not location:
        return None
    loc = pb.Location(
        kecamatan=location.get("kecamatan", ""),
        desa=location.get("desa", ""),
        tps=location.get("tps", ""),
    )
    if location.get("latitude") is not None:
        loc.latitude = location["latitude"]
    if location.get("longitude") is not None:
        loc.longitude = location["longitude"]
    return loc


def result_to_proto(result: CommandResult) -> api.CommandResult:
    return api.CommandResult(
        incident=incident_name(result.incident_id),
        version=result.version,
        position=result.position,
        event_id=str(result.event_id),
        record_time=timestamp(result.recorded_at),
        reference=result.reference,
    )


INGEST_OUTCOMES: dict[IngestOutcome, api.IngestOutcome.ValueType] = {
    outcome: api.IngestOutcome.Value(f"INGEST_OUTCOME_{outcome.value}") for outcome in IngestOutcome
}


def ingest_response(
    results: Sequence[IngestResult], status_of: Callable[[LedgerError], status_pb2.Status]
) -> api.IngestReportsResponse:
    """The answer to ``IngestReports``; ``status_of``: an error as a google.rpc.Status (the
    gRPC adapter's error mapping, which this module, shared with the relay, cannot import)."""
    response = api.IngestReportsResponse()
    for result in results:
        item = response.results.add(outcome=INGEST_OUTCOMES[result.outcome])
        if result.result is not None:
            item.result.CopyFrom(result_to_proto(result.result))
        if result.error is not None:
            item.error.CopyFrom(status_of(result.error))
    return response


TRIAGE_OUTCOMES: dict[TriageOutcome, api.TriageOutcome.ValueType] = {
    outcome: api.TriageOutcome.Value(f"TRIAGE_OUTCOME_{outcome.value}") for outcome in TriageOutcome
}


def triage_response(
    results: Sequence[TriageResult], status_of: Callable[[LedgerError], status_pb2.Status]
) -> api.TriageIncidentsResponse:
    """The answer to ``TriageIncidents`` (``status_of`` as for :func:`ingest_response`)."""
    response = api.TriageIncidentsResponse()
    for result in results:
        item = response.results.add(outcome=TRIAGE_OUTCOMES[result.outcome])
        if result.result is not None:
            item.result.CopyFrom(result_to_proto(result.result))
        if result.error is not None:
            item.error.CopyFrom(status_of(result.error))
    return response


def listed_incident_to_proto(listed: Incident | ChainFailure) -> pb.Incident:
    """An incident on a list page: the incident, or only its name and why its stored
    history cannot be shown."""
    if isinstance(listed, Incident):
        return incident_to_proto(listed)
    return pb.Incident(
        name=incident_name(listed.incident_id),
        chain_failure=pb.ChainFailure(
            check=listed.check, version=listed.version, message=listed.message
        ),
    )


def incident_to_proto(incident: Incident) -> pb.Incident:
    message = pb.Incident(
        name=incident_name(incident.id),
        title=incident.title,
        description=incident.description,
        category=incident.category,
        severity=incident.severity,
        status=STATUS_TO_PROTO[incident.status],
        location=location_to_proto(incident.location),
        reporter=pb.Actor(agency=incident.reporter_agency, officer=incident.reporter_officer),
        lead_agency=incident.lead_agency,
        supporting_agencies=incident.supporting_agencies,
        escalation_level=incident.escalation_level,
        close_requested=incident.close_requested,
        merged_into=incident_name(incident.merged_into) if incident.merged_into else "",
        merged_incidents=[incident_name(i) for i in incident.merged_incidents],
        reference=incident.reference,
        merged_into_reference=incident.merged_into_reference,
        version=incident.version,
        occur_time=timestamp(incident.occurred_at),
        create_time=timestamp(incident.created_on),
        update_time=timestamp(incident.modified_on),
        data_subjects=[subject_summary_to_proto(s) for s in incident.subjects.values()],
        legal_hold_agencies=sorted(incident.legal_holds),
    )
    if incident.rejection_reason is not None:
        message.rejection_reason = pb.RejectionReason.Value(
            f"REJECTION_REASON_{incident.rejection_reason.value}"
        )
    if incident.pending_handover is not None:
        from_agency, to_agency, reason = incident.pending_handover
        message.pending_handover.CopyFrom(
            pb.Handover(
                from_agency=from_agency,
                to_agency=to_agency,
                reason=reason,
                event_id=str(incident.pending_handover_event or ""),
            )
        )
    for decision in incident.decisions:
        values = incident.event_values[decision.event_id]
        message.decisions.append(
            pb.Decision(
                deciding_agencies=decision.deciding_agencies,
                forum=values["forum"],
                summary=values["summary"],
                rationale=values["rationale"],
                scope=location_to_proto(incident.decision_scope(decision)),
                valid_from=timestamp(datetime.fromisoformat(values["valid_from"])),
                valid_until=timestamp(datetime.fromisoformat(values["valid_until"])),
                event_id=str(decision.event_id),
            )
        )
    return message


SUBJECT_ROLES: dict[SubjectRole, pb.DataSubjectRole.ValueType] = {
    SubjectRole.REPORTER: pb.DATA_SUBJECT_ROLE_REPORTER,
    SubjectRole.WITNESS: pb.DATA_SUBJECT_ROLE_WITNESS,
}


def subject_state(subject: DataSubject) -> pb.DataSubjectState.ValueType:
    return pb.DATA_SUBJECT_STATE_ERASED if subject.erased else pb.DATA_SUBJECT_STATE_PRESENT


def subject_summary_to_proto(subject: DataSubject) -> pb.DataSubjectSummary:
    """A data subject as every view of the incident shows them: never their data."""
    return pb.DataSubjectSummary(
        subject_id=str(subject.subject_id),
        role=SUBJECT_ROLES[subject.sealed.role],
        anonymous=subject.sealed.anonymous,
        state=subject_state(subject),
    )


def subject_to_proto(incident_id: UUID, subject: DataSubject) -> pd.DataSubject:
    """A data subject without their data: a reference, role and state."""
    return pd.DataSubject(
        subject_id=str(subject.subject_id),
        incident=incident_name(incident_id),
        role=SUBJECT_ROLES[subject.sealed.role],
        anonymous=subject.sealed.anonymous,
        state=subject_state(subject),
    )


def access_to_proto(incident_id: UUID, access: PersonalDataAccess) -> pd.PersonalDataAccess:
    return pd.PersonalDataAccess(
        event_id=str(access.event_id),
        incident=incident_name(incident_id),
        actor=pb.Actor(agency=access.agency, officer=access.officer),
        subjects=[str(s) for s in access.subjects],
        purpose=access.purpose,
        access_time=timestamp(access.time),
    )


def erasure_to_proto(incident_id: UUID, erasure: PersonalDataErasure) -> pd.PersonalDataErasure:
    return pd.PersonalDataErasure(
        event_id=str(erasure.event_id),
        incident=incident_name(incident_id),
        actor=pb.Actor(agency=erasure.agency, officer=erasure.officer),
        subjects=[str(s) for s in erasure.subjects],
        legal_basis=erasure.legal_basis,
        erase_time=timestamp(erasure.time),
    )


def subject_view_to_proto(view: SubjectView) -> pd.DataSubject:
    """A subject as read: with their data where it was read (an erased one without)."""
    message = subject_to_proto(view.incident_id, view.subject)
    if view.person is not None:
        message.person.CopyFrom(
            pd.Person(
                name=view.person.name,
                phone=view.person.phone,
                nik=view.person.nik,
                address=view.person.address,
            )
        )
    message.accesses.extend(access_to_proto(view.incident_id, a) for a in view.accesses)
    return message


def event_to_proto(stored: StoredIncidentEvent, known_hash: str | None = None) -> pb.IncidentEvent:
    """The event as protobuf; ``known_hash``: its hash when the caller has just computed it
    (folding an event into its incident does: ``head_hash``), not computed again."""
    event = stored.event
    payload = {k: v for k, v in event_fields(event).items() if k not in ENVELOPE_FIELDS}
    return pb.IncidentEvent(
        event_id=str(event.event_id),
        incident=incident_name(event.originator_id),
        version=event.originator_version,
        type=type(event).__name__,
        schema_version=getattr(type(event), "class_version", 1),
        occur_time=timestamp(event.occurred_at),
        record_time=timestamp(event.timestamp),
        actor=pb.Actor(agency=event.actor_agency, officer=event.actor_officer),
        reason=event.reason,
        location=location_to_proto(event.location),
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        request_id=event.request_id,
        previous_hash=event.previous_hash,
        hash=known_hash or event_hash(event),
        position=stored.position,
        payload_json=canonical_dumps(payload, _json_default).decode("utf-8"),
        seal=event.__dict__.get("seal") or "",
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, UUID):
        return str(value)
    msg = f"not JSON encodable: {type(value).__name__}"
    raise TypeError(msg)
