"""SituationService: the projections' views, translated to protobuf."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from typing_extensions import override

from incidentledger.v1 import situation_service_pb2 as sit
from incidentledger.v1 import situation_service_pb2_grpc as sit_grpc
from services.common.errors import InvalidArgument
from services.common.pagetoken import PageTokens, page_of
from services.common.reference import unknown_code
from services.ledger import wire
from services.ledger.projections import DecisionInForce
from services.ledger.projections.facts import micros, to_datetime
from services.ledger.projections.model import Percentiles
from services.ledger.read_model import ReadModel

GROUPINGS = {
    sit.RESPONSE_TIME_GROUPING_UNSPECIFIED: "agency",
    sit.RESPONSE_TIME_GROUPING_AGENCY: "agency",
    sit.RESPONSE_TIME_GROUPING_SEVERITY: "severity",
    sit.RESPONSE_TIME_GROUPING_CATEGORY: "category",
    sit.RESPONSE_TIME_GROUPING_KECAMATAN: "kecamatan",
}


#: The most decisions a page of ListDecisionsInForce holds (and its default): a page also
#: ends before ``max_page_bytes`` of them. Before, the list was not paged: about 125
#: decisions in force at their texts' limits made it larger than gRPC sends, for everyone.
MAX_DECISIONS_PAGE = 500


class SituationServicer(sit_grpc.SituationServiceServicer):
    def __init__(
        self, read_model: ReadModel, page_tokens: PageTokens, *, max_page_bytes: int
    ) -> None:
        self._read = read_model
        self._tokens = page_tokens
        self._page_bytes = max_page_bytes

    @override
    def GetVulnerabilityMap(
        self, request: sit.GetVulnerabilityMapRequest, context: grpc.ServicerContext
    ) -> sit.GetVulnerabilityMapResponse:
        at = wire.optional_time(request, "time") or datetime.now(UTC)
        with self._read.view(
            min_position=request.min_position, as_of=at, timeout=context.time_remaining()
        ) as view:
            scores = view.reader.vulnerability_map(at, catch_up_first=view.catch_up_first)
        return sit.GetVulnerabilityMapResponse(
            kecamatan=[
                sit.KecamatanScore(
                    kecamatan=score.code,
                    name=score.name,
                    score=score.score,
                    band=score.band,
                    incident_count=score.incidents,
                    reasons=[
                        sit.ScoreReason(
                            incident=wire.incident_name(reason.incident_id),
                            title=reason.title,
                            severity=reason.severity,
                            category=reason.category,
                            dimension=reason.dimension,
                            status=reason.status,
                            report_time=wire.timestamp(reason.reported_at),
                            weight=reason.weight,
                            reference=reason.reference,
                        )
                        for reason in score.reasons
                    ],
                )
                for score in scores
            ],
            time=wire.timestamp(at),
            position=view.position,
        )

    @override
    def ListDecisionsInForce(
        self, request: sit.ListDecisionsInForceRequest, context: grpc.ServicerContext
    ) -> sit.ListDecisionsInForceResponse:
        reference = self._read.ledger.reference
        if request.kecamatan and request.kecamatan not in reference.kecamatan:
            raise unknown_code("kecamatan", "kecamatan", request.kecamatan, reference.kecamatan)
        stated = wire.optional_time(request, "time")
        query = f"decisions?kecamatan={request.kecamatan}&time={stated}"
        # The first page's "now" is the time of every page after it: its token carries it.
        at = stated or datetime.now(UTC)
        if request.page_token:
            at = to_datetime(int(self._tokens.decode(query, request.page_token)["after"][2]))
        size = min(request.page_size or MAX_DECISIONS_PAGE, MAX_DECISIONS_PAGE)
        messages: dict[str, sit.DecisionInForce] = {}

        def message(d: DecisionInForce) -> sit.DecisionInForce:
            """The decision as the page sends it, made once (weighed, then sent)."""
            key = str(d.event_id)
            if key not in messages:
                messages[key] = sit.DecisionInForce(
                    incident=wire.incident_name(d.incident_id),
                    event_id=key,
                    summary=d.summary,
                    forum=d.forum,
                    rationale=d.rationale,
                    deciding_agencies=list(d.deciding_agencies),
                    kecamatan=d.kecamatan,
                    desa=d.desa,
                    valid_from=wire.timestamp(d.valid_from),
                    valid_until=wire.timestamp(d.valid_until),
                    record_time=wire.timestamp(d.recorded_at),
                    recorded_by=d.recorded_by,
                    reference=d.reference,
                )
            return messages[key]

        with self._read.view(
            min_position=request.min_position, as_of=at, timeout=context.time_remaining()
        ) as view:
            decisions, next_token = page_of(
                self._tokens,
                query,
                request.page_token,
                size,
                lambda after, limit: view.reader.decisions_in_force(
                    at,
                    request.kecamatan or None,
                    catch_up_first=view.catch_up_first,
                    after=None if after is None else (int(after[0]), int(after[1])),
                    limit=limit,
                ),
                lambda d: [micros(d.valid_from), d.position, micros(at)],
                None,
                weigh=lambda d: message(d).ByteSize(),
                max_bytes=self._page_bytes,
            )
        return sit.ListDecisionsInForceResponse(
            decisions=[message(d) for d in decisions],
            position=view.position,
            next_page_token=next_token,
        )

    @override
    def GetAgencyWorkload(
        self, request: sit.GetAgencyWorkloadRequest, context: grpc.ServicerContext
    ) -> sit.GetAgencyWorkloadResponse:
        with self._read.view(
            min_position=request.min_position, timeout=context.time_remaining()
        ) as view:
            rows = view.reader.workload(datetime.now(UTC), catch_up_first=view.catch_up_first)
        return sit.GetAgencyWorkloadResponse(
            agencies=[
                sit.AgencyWorkload(
                    agency=r.agency,
                    open=r.open,
                    unacknowledged=r.unacknowledged,
                    overdue=r.overdue,
                )
                for r in rows
            ],
            position=view.position,
        )

    @override
    def GetResponseTimes(
        self, request: sit.GetResponseTimesRequest, context: grpc.ServicerContext
    ) -> sit.GetResponseTimesResponse:
        by = GROUPINGS.get(request.group_by)
        if by is None:
            raise InvalidArgument("group_by", "must be AGENCY, SEVERITY, CATEGORY or KECAMATAN")
        with self._read.view(
            min_position=request.min_position, timeout=context.time_remaining()
        ) as view:
            groups = view.reader.response_times(by, catch_up_first=view.catch_up_first)

        def stats(p: Percentiles) -> sit.DurationStats:
            return sit.DurationStats(
                count=p.count, median_seconds=p.median or 0.0, p90_seconds=p.p90 or 0.0
            )

        return sit.GetResponseTimesResponse(
            groups=[
                sit.ResponseTimes(
                    key=g.key,
                    acknowledge=stats(g.acknowledge),
                    verify=stats(g.verify),
                    resolve=stats(g.resolve),
                )
                for g in groups
            ],
            position=view.position,
        )

    @override
    def GetProjectionStatus(
        self, request: sit.GetProjectionStatusRequest, context: grpc.ServicerContext
    ) -> sit.GetProjectionStatusResponse:
        projections = self._read.projections
        lag = projections.lag()
        return sit.GetProjectionStatusResponse(
            position=projections.position(),
            ledger_position=self._read.ledger.recorder.max_notification_id() or 0,
            lag_events=lag.events,
            lag_seconds=lag.seconds,
        )
