"""AuditService: the history for auditors, its verification and the signed checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_server import current_principal
from services.common.pagetoken import PageTokens, page_of
from services.common.reference import Role
from services.ledger import wire
from services.ledger.api.servicer import DEFAULT_PAGE, MAX_PAGE, page_size
from services.ledger.application import Ledger
from services.ledger.audit import Checkpoint, Checkpoints, verify_store
from services.ledger.domain.incident import Incident

AUDIT_ROLES = {Role.COORDINATOR, Role.AUDITOR}


def checkpoint_proto(checkpoint: Checkpoint) -> audit.Checkpoint:
    created = Timestamp()
    created.FromDatetime(datetime.fromisoformat(checkpoint.created_at))
    return audit.Checkpoint(
        position=checkpoint.position,
        chain_head=checkpoint.head,
        events=checkpoint.events,
        create_time=created,
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
    )


class AuditServicer(audit_grpc.AuditServiceServicer):
    def __init__(self, ledger: Ledger, checkpoints: Checkpoints, page_tokens: PageTokens) -> None:
        self._ledger = ledger
        self._checkpoints = checkpoints
        self._tokens = page_tokens

    @override
    def VerifyLedger(
        self, request: audit.VerifyLedgerRequest, context: grpc.ServicerContext
    ) -> audit.VerifyLedgerResponse:
        self._ledger.reference.require_role(
            current_principal().agency, AUDIT_ROLES, "verify the ledger"
        )
        report = verify_store(
            self._ledger,
            self._checkpoints.public_key,
            self._checkpoints.iterate(),
            stored_checkpoints=False,  # the server's own checkpoints are the ones given
        )
        response = audit.VerifyLedgerResponse(
            ok=report.ok,
            events=report.events,
            incidents=report.incidents,
            checkpoints_checked=report.checkpoints_checked,
        )
        if report.divergence is not None:
            d = report.divergence
            response.divergence.CopyFrom(
                audit.Divergence(
                    kind=d.kind,
                    incident=d.incident or "",
                    version=d.version or 0,
                    position=d.position or 0,
                    detail=d.detail,
                )
            )
        return response

    @override
    def CreateCheckpoint(
        self, request: audit.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> audit.CreateCheckpointResponse:
        self._ledger.reference.require_role(
            current_principal().agency, AUDIT_ROLES, "create a checkpoint"
        )
        return audit.CreateCheckpointResponse(
            checkpoint=checkpoint_proto(self._checkpoints.create())
        )

    @override
    def ListCheckpoints(
        self, request: audit.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> audit.ListCheckpointsResponse:
        size = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        checkpoints, next_token = page_of(
            self._tokens,
            "checkpoints",
            request.page_token,
            size,
            lambda after, limit: self._checkpoints.list(after=int(after), limit=limit),
            lambda checkpoint: checkpoint.position,
            0,
        )
        return audit.ListCheckpointsResponse(
            checkpoints=[checkpoint_proto(c) for c in checkpoints], next_page_token=next_token
        )

    @override
    def StreamEvents(
        self, request: audit.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[audit.StreamEventsResponse]:
        reference = self._ledger.reference
        for field in ("after_position", "until_position"):
            if getattr(request, field) < 0:
                raise InvalidArgument(field, "positions are not negative")
        incident = wire.parse_name(request.incident, "incident") if request.incident else None
        if request.agency:
            reference.agency(request.agency, "agency")
        if request.kecamatan and request.kecamatan not in reference.kecamatan:
            raise InvalidArgument("kecamatan", f"unknown kecamatan {request.kecamatan!r}")
        start = wire.optional_time(request, "start_time")
        end = wire.optional_time(request, "end_time")

        def keep(event: Incident.Event) -> bool:
            location = event.location or {}
            return (
                (incident is None or event.originator_id == incident)
                and (not request.agency or event.actor_agency == request.agency)
                and (not request.kecamatan or location.get("kecamatan") == request.kecamatan)
                and (start is None or event.timestamp >= start)
                and (end is None or event.timestamp < end)
            )

        # Each yield waits for the transport: a slow reader slows the reading here.
        for stored in self._ledger.history(
            after=request.after_position, until=request.until_position or None, keep=keep
        ):
            if not context.is_active():
                return
            yield audit.StreamEventsResponse(event=wire.event_to_proto(stored))
