"""LedgerService: translates each RPC into one application call and back.

A command RPC is one line: its request becomes a command through ``wire.COMMANDS``
and goes to ``Ledger.execute``. ``IngestReports`` goes to ``Ledger.ingest`` the same way,
its reports and results translated by ``wire``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, cast
from uuid import UUID

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from typing_extensions import override

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import personal_data_pb2 as pd
from services.common.errors import InvalidArgument, LedgerError
from services.common.grpc_errors import accept_language, to_status_proto
from services.common.grpc_server import current_principal
from services.common.pagetoken import PageTokens, page_of
from services.ledger import wire
from services.ledger.application import Ledger, StoredIncidentEvent
from services.ledger.domain.commands import ErasePersonalData, ReadPersonalData
from services.ledger.domain.incident import Actor, Envelope
from services.ledger.projections import NEWEST_START, BoardFilter, parse_order
from services.ledger.read_model import ReadModel


class _CommandIds(Protocol):
    request_id: str
    correlation_id: str


Response = TypeVar("Response", bound=Message)


DEFAULT_PAGE = 50
MAX_PAGE = 500
DEFAULT_EVENTS_PAGE = 100
MAX_EVENTS_PAGE = 1000
#: The most a page of incidents or events holds, in bytes (it holds one item at least):
#: half what gRPC clients take by default (4 MiB). An incident grows with its decisions
#: (each up to 4,000 characters of summary and of rationale) and an event may weigh 50 kB,
#: so a page of them by count alone could be larger than gRPC sends, and every page after
#: it could never be read.
MAX_PAGE_BYTES = 2 * 1024 * 1024


def page_size(value: int, default: int, maximum: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(value or default, maximum)


class LedgerServicer(api_grpc.LedgerServiceServicer):
    def __init__(
        self,
        ledger: Ledger,
        read_model: ReadModel,
        page_tokens: PageTokens,
        *,
        error_domain: str,
        max_page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self._ledger = ledger
        self._read = read_model
        self._tokens = page_tokens
        self._error_domain = error_domain
        self._page_bytes = max_page_bytes

    def _actor(self) -> Actor:
        """The caller, from its credentials (never from the request)."""
        principal = current_principal()
        role = self._ledger.reference.agencies[principal.agency].role
        return Actor(principal.agency, principal.officer, role)

    def _item_status(
        self, context: grpc.ServicerContext
    ) -> Callable[[LedgerError], status_pb2.Status]:
        """How a batch's refused item says why: as a failed call would, in the language
        the call asks for (``accept-language``)."""
        language = accept_language(context)
        return lambda error: to_status_proto(error, self._error_domain, language)

    def _envelope(self, request: Message) -> Envelope:
        stated = "occur_time" in request.DESCRIPTOR.fields_by_name
        occurred = wire.optional_time(request, "occur_time") if stated else None
        ids = cast(_CommandIds, request)
        return Envelope(
            actor=self._actor(),
            request_id=ids.request_id,
            correlation_id=ids.correlation_id or ids.request_id,
            causation_id=ids.request_id,
            occurred_at=occurred,
        )

    # ------------------------------------------------------------- commands

    def _command(self, request: Message, response: Callable[..., Response]) -> Response:
        """One command RPC: the envelope, the command (``wire.COMMANDS``), one call."""
        envelope = self._envelope(request)
        result = self._ledger.execute(envelope, wire.command_from_proto(request))
        return response(result=wire.result_to_proto(result))

    @override
    def ReportIncident(
        self, request: api.ReportIncidentRequest, context: grpc.ServicerContext
    ) -> api.ReportIncidentResponse:
        return self._command(request, api.ReportIncidentResponse)

    @override
    def VerifyIncident(
        self, request: api.VerifyIncidentRequest, context: grpc.ServicerContext
    ) -> api.VerifyIncidentResponse:
        return self._command(request, api.VerifyIncidentResponse)

    @override
    def RejectIncident(
        self, request: api.RejectIncidentRequest, context: grpc.ServicerContext
    ) -> api.RejectIncidentResponse:
        return self._command(request, api.RejectIncidentResponse)

    @override
    def MergeIncident(
        self, request: api.MergeIncidentRequest, context: grpc.ServicerContext
    ) -> api.MergeIncidentResponse:
        return self._command(request, api.MergeIncidentResponse)

    @override
    def AssessSeverity(
        self, request: api.AssessSeverityRequest, context: grpc.ServicerContext
    ) -> api.AssessSeverityResponse:
        return self._command(request, api.AssessSeverityResponse)

    @override
    def AssignLeadAgency(
        self, request: api.AssignLeadAgencyRequest, context: grpc.ServicerContext
    ) -> api.AssignLeadAgencyResponse:
        return self._command(request, api.AssignLeadAgencyResponse)

    @override
    def AddSupportingAgency(
        self, request: api.AddSupportingAgencyRequest, context: grpc.ServicerContext
    ) -> api.AddSupportingAgencyResponse:
        return self._command(request, api.AddSupportingAgencyResponse)

    @override
    def ProposeHandover(
        self, request: api.ProposeHandoverRequest, context: grpc.ServicerContext
    ) -> api.ProposeHandoverResponse:
        return self._command(request, api.ProposeHandoverResponse)

    @override
    def AcceptHandover(
        self, request: api.AcceptHandoverRequest, context: grpc.ServicerContext
    ) -> api.AcceptHandoverResponse:
        return self._command(request, api.AcceptHandoverResponse)

    @override
    def RecordDecision(
        self, request: api.RecordDecisionRequest, context: grpc.ServicerContext
    ) -> api.RecordDecisionResponse:
        return self._command(request, api.RecordDecisionResponse)

    @override
    def LogAction(
        self, request: api.LogActionRequest, context: grpc.ServicerContext
    ) -> api.LogActionResponse:
        return self._command(request, api.LogActionResponse)

    @override
    def EscalateIncident(
        self, request: api.EscalateIncidentRequest, context: grpc.ServicerContext
    ) -> api.EscalateIncidentResponse:
        return self._command(request, api.EscalateIncidentResponse)

    @override
    def ResolveIncident(
        self, request: api.ResolveIncidentRequest, context: grpc.ServicerContext
    ) -> api.ResolveIncidentResponse:
        return self._command(request, api.ResolveIncidentResponse)

    @override
    def RequestClosure(
        self, request: api.RequestClosureRequest, context: grpc.ServicerContext
    ) -> api.RequestClosureResponse:
        return self._command(request, api.RequestClosureResponse)

    @override
    def ApproveClosure(
        self, request: api.ApproveClosureRequest, context: grpc.ServicerContext
    ) -> api.ApproveClosureResponse:
        return self._command(request, api.ApproveClosureResponse)

    @override
    def ReopenIncident(
        self, request: api.ReopenIncidentRequest, context: grpc.ServicerContext
    ) -> api.ReopenIncidentResponse:
        return self._command(request, api.ReopenIncidentResponse)

    @override
    def RecordCorrection(
        self, request: api.RecordCorrectionRequest, context: grpc.ServicerContext
    ) -> api.RecordCorrectionResponse:
        return self._command(request, api.RecordCorrectionResponse)

    # --------------------------------------- personal data (docs/personal-data.md)

    @override
    def ReadPersonalData(
        self, request: api.ReadPersonalDataRequest, context: grpc.ServicerContext
    ) -> api.ReadPersonalDataResponse:
        command = wire.command_from_proto(request)
        if not isinstance(command, ReadPersonalData):
            raise TypeError(f"not a read: {command!r}")
        read = self._ledger.read_personal_data(self._envelope(request), command)
        return api.ReadPersonalDataResponse(
            result=wire.result_to_proto(read.result),
            subjects=[wire.subject_view_to_proto(v) for v in read.subjects],
        )

    @override
    def ErasePersonalData(
        self, request: api.ErasePersonalDataRequest, context: grpc.ServicerContext
    ) -> api.ErasePersonalDataResponse:
        command = wire.command_from_proto(request)
        if not isinstance(command, ErasePersonalData):
            raise TypeError(f"not an erasure: {command!r}")
        result = self._ledger.erase_personal_data(self._envelope(request), command)
        return api.ErasePersonalDataResponse(result=wire.result_to_proto(result))

    @override
    def PlaceLegalHold(
        self, request: api.PlaceLegalHoldRequest, context: grpc.ServicerContext
    ) -> api.PlaceLegalHoldResponse:
        return self._command(request, api.PlaceLegalHoldResponse)

    @override
    def LiftLegalHold(
        self, request: api.LiftLegalHoldRequest, context: grpc.ServicerContext
    ) -> api.LiftLegalHoldResponse:
        return self._command(request, api.LiftLegalHoldResponse)

    @override
    def FindPersonalData(
        self, request: api.FindPersonalDataRequest, context: grpc.ServicerContext
    ) -> api.FindPersonalDataResponse:
        views = self._ledger.find_personal_data(
            self._envelope(request), phone=request.phone, nik=request.nik, purpose=request.purpose
        )
        return api.FindPersonalDataResponse(subjects=[wire.subject_view_to_proto(v) for v in views])

    @override
    def ListPersonalDataAccesses(
        self, request: api.ListPersonalDataAccessesRequest, context: grpc.ServicerContext
    ) -> api.ListPersonalDataAccessesResponse:
        incident_id = wire.parse_name(request.name)
        size = page_size(request.page_size, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE)
        record = self._ledger.personal_data_record(self._actor(), incident_id)
        # Reads are only ever appended to an incident, so a read's place in the list (from
        # 1) is a stable cursor: a page never repeats or skips one recorded meanwhile.
        numbered = list(enumerate(record.accesses, start=1))
        page, next_token = page_of(
            self._tokens,
            f"personal-data-accesses?name={request.name}",
            request.page_token,
            size,
            lambda after, limit: numbered[int(after) : int(after) + limit],
            lambda item: item[0],
            0,
        )
        return api.ListPersonalDataAccessesResponse(
            accesses=[wire.access_to_proto(incident_id, a) for _, a in page],
            subjects=[wire.subject_to_proto(incident_id, s) for s in record.subjects],
            legal_holds=[
                pd.LegalHold(agency=a, reason=r) for a, r in sorted(record.legal_holds.items())
            ],
            next_page_token=next_token,
            erasures=[wire.erasure_to_proto(incident_id, e) for e in record.erasures],
        )

    @override
    def IngestReports(
        self, request: api.IngestReportsRequest, context: grpc.ServicerContext
    ) -> api.IngestReportsResponse:
        results = self._ledger.ingest(
            self._actor(),
            wire.DeviceReports(request),
            send_time=wire.optional_time(request, "send_time"),
            size=request.ByteSize(),
        )
        return wire.ingest_response(results, self._item_status(context))

    @override
    def TriageIncidents(
        self, request: api.TriageIncidentsRequest, context: grpc.ServicerContext
    ) -> api.TriageIncidentsResponse:
        results = self._ledger.triage(self._envelope(request), wire.triage_items(request))
        return wire.triage_response(results, self._item_status(context))

    # -------------------------------------------------------------- queries

    @override
    def GetIncident(
        self, request: api.GetIncidentRequest, context: grpc.ServicerContext
    ) -> api.GetIncidentResponse:
        if request.reference and request.name:
            raise InvalidArgument("reference", "name an incident by name or by reference, not both")
        if request.reference:
            incident_id = self._ledger.incident_by_reference(request.reference)
        else:
            incident_id = wire.parse_name(request.name)
        as_of_time = wire.optional_time(request, "as_of_time")
        if request.as_of_position < 0:
            raise InvalidArgument("as_of_position", "must not be negative")
        if as_of_time is not None and request.as_of_position:
            raise InvalidArgument(
                "as_of_time", "ask for the incident as of a time or a position, not both"
            )
        if as_of_time is None and not request.as_of_position:
            incident = self._ledger.get_incident(incident_id)
        else:
            incident = self._ledger.get_incident_as_of(
                incident_id,
                position=request.as_of_position,
                time=as_of_time,
                field="reference" if request.reference else "name",
            )
        return api.GetIncidentResponse(incident=wire.incident_to_proto(incident))

    @override
    def GetReferenceData(
        self, request: api.GetReferenceDataRequest, context: grpc.ServicerContext
    ) -> api.GetReferenceDataResponse:
        reference = self._ledger.reference
        caller = current_principal()
        return api.GetReferenceDataResponse(
            caller_agency=caller.agency,
            caller_officer=caller.officer,
            regency=reference.regency,
            zone=reference.zone,
            agencies=[
                api.ReferenceAgency(code=a.code, name=a.name, role=a.role.value)
                for a in reference.agencies.values()
            ],
            kecamatan=[
                api.ReferenceKecamatan(code=k.code, name=k.name, desa=sorted(k.desa))
                for k in reference.kecamatan.values()
            ],
            categories=[
                api.ReferenceCategory(
                    code=c.code, name=c.name, dimension=c.dimension, names=c.names
                )
                for c in reference.categories.values()
            ],
            severities=[
                api.ReferenceSeverity(code=v.code, name=v.name, rank=v.rank, names=v.names)
                for v in sorted(reference.severities.values(), key=lambda v: v.rank)
            ],
            default_severity=reference.default_severity,
            statuses=[
                api.ReferenceStatus(code=t.code, name=t.name, names=t.names)
                for t in reference.statuses.values()
            ],
            roles=[
                api.ReferenceRole(code=t.code, name=t.name, names=t.names)
                for t in reference.roles.values()
            ],
        )

    @override
    def ListIncidents(
        self, request: api.ListIncidentsRequest, context: grpc.ServicerContext
    ) -> api.ListIncidentsResponse:
        size = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        board_filter = BoardFilter.parse(
            request.filter, self._ledger.reference, self._ledger.find_reference
        )
        newest_first = parse_order(request.order_by)
        as_of = wire.optional_time(request, "as_of_time")
        query = f"incidents?filter={request.filter}&as_of={as_of}"
        if newest_first:  # a page token is bound to its order (and the default's stay valid)
            query += "&order_by=create_time desc"
        with self._read.view(
            min_position=request.min_position, as_of=as_of, timeout=context.time_remaining()
        ) as view:
            messages: dict[UUID, pb.Incident] = {}

            def message(incident_id: UUID) -> pb.Incident:
                """The incident as the page sends it, made once (weighed, then sent)."""
                if incident_id not in messages:
                    listed = self._ledger.listed_incident(
                        incident_id, position=view.position if view.historical else 0
                    )
                    messages[incident_id] = wire.listed_incident_to_proto(listed)
                return messages[incident_id]

            rows, next_token = page_of(
                self._tokens,
                query,
                request.page_token,
                size,
                lambda after, limit: view.reader.list_incidents(
                    board_filter,
                    int(after),
                    limit,
                    catch_up_first=view.catch_up_first,
                    newest_first=newest_first,
                ),
                lambda row: row[0],
                NEWEST_START if newest_first else 0,
                weigh=lambda row: message(row[1]).ByteSize(),
                max_bytes=self._page_bytes,
            )
            incidents = [message(incident_id) for _, incident_id in rows]
        return api.ListIncidentsResponse(incidents=incidents, next_page_token=next_token)

    @override
    def ListIncidentEvents(
        self, request: api.ListIncidentEventsRequest, context: grpc.ServicerContext
    ) -> api.ListIncidentEventsResponse:
        incident_id = wire.parse_name(request.parent, "parent")
        size = page_size(request.page_size, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE)
        messages: dict[int, pb.IncidentEvent] = {}

        def event_message(stored: StoredIncidentEvent) -> pb.IncidentEvent:
            """The event as the page sends it, made once (weighed, then sent)."""
            version = stored.event.originator_version
            if version not in messages:
                messages[version] = wire.event_to_proto(stored)
            return messages[version]

        events, next_token = page_of(
            self._tokens,
            f"events?parent={request.parent}",
            request.page_token,
            size,
            lambda after, limit: self._ledger.incident_events(
                incident_id, after_version=int(after), limit=limit
            ),
            lambda stored: stored.event.originator_version,
            0,
            weigh=lambda stored: event_message(stored).ByteSize(),
            max_bytes=self._page_bytes,
        )
        return api.ListIncidentEventsResponse(
            events=[event_message(e) for e in events], next_page_token=next_token
        )
