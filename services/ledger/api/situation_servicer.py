"""SituationService: the projections' views, translated to protobuf."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from typing_extensions import override

from incidentledger.v1 import situation_service_pb2 as sit
from incidentledger.v1 import situation_service_pb2_grpc as sit_grpc
from services.common.errors import InvalidArgument
from services.ledger import wire
from services.ledger.projections.model import Percentiles
from services.ledger.read_model import ReadModel

GROUPINGS = {
    sit.RESPONSE_TIME_GROUPING_UNSPECIFIED: "agency",
    sit.RESPONSE_TIME_GROUPING_AGENCY: "agency",
    sit.RESPONSE_TIME_GROUPING_SEVERITY: "severity",
    sit.RESPONSE_TIME_GROUPING_CATEGORY: "category",
    sit.RESPONSE_TIME_GROUPING_KECAMATAN: "kecamatan",
}


class SituationServicer(sit_grpc.SituationServiceServicer):
    def __init__(self, read_model: ReadModel) -> None:
        self._read = read_model

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
        at = wire.optional_time(request, "time") or datetime.now(UTC)
        reference = self._read.ledger.reference
        if request.kecamatan and request.kecamatan not in reference.kecamatan:
            raise InvalidArgument("kecamatan", f"unknown kecamatan {request.kecamatan!r}")
        with self._read.view(
            min_position=request.min_position, as_of=at, timeout=context.time_remaining()
        ) as view:
            decisions = view.reader.decisions_in_force(
                at, request.kecamatan or None, catch_up_first=view.catch_up_first
            )
        return sit.ListDecisionsInForceResponse(
            decisions=[
                sit.DecisionInForce(
                    incident=wire.incident_name(d.incident_id),
                    event_id=str(d.event_id),
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
                for d in decisions
            ],
            position=view.position,
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
