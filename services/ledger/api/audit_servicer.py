"""AuditService: the history for auditors, its verification and the signed checkpoints."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from services.common.errors import DataLoss, InvalidArgument
from services.common.grpc_server import current_principal
from services.common.pagetoken import PageTokens, page_of
from services.common.reference import Role, unknown_code
from services.ledger import wire
from services.ledger.api.servicer import DEFAULT_PAGE, MAX_PAGE, page_size
from services.ledger.application import Ledger
from services.ledger.audit import (
    Checkpoint,
    CheckpointError,
    Checkpoints,
    VerifyProgress,
    VerifyReport,
    verify_store,
)
from services.ledger.audit.verify_stored import ProgressCallback
from services.ledger.domain.incident import Incident

log = structlog.get_logger(__name__)

AUDIT_ROLES = {Role.COORDINATOR, Role.AUDITOR}
PROGRESS_SECONDS = 0.2  # StreamVerifyLedger sends at most one progress message this often
HANDOFF_SECONDS = 0.5  # a hand-over that waits checks this often whether the caller left
LEAVE_SECONDS = 30.0  # how long a stream that ends waits for its verification to stop


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


def report_proto(report: VerifyReport) -> audit.VerifyLedgerResponse:
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


class _CallerLeftError(Exception):
    """The stream ended before the verification did: it stops at its next step."""


@dataclass(frozen=True)
class _Done:
    outcome: VerifyReport | BaseException


class ProgressRelay:
    """A verification's progress, from the thread that verifies to the stream's thread.

    At most one progress report per ``interval`` is passed on (the others are dropped),
    and each is handed over only once the stream took the one before: a slow reader
    slows the verification rather than piling messages up. Once the caller has left
    (:meth:`leave`), the verification stops at its next report.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._handoff: queue.Queue[VerifyProgress | _Done] = queue.Queue(maxsize=1)
        self._left = threading.Event()
        self._passed_at: float | None = None

    def leave(self) -> None:
        self._left.set()

    def report(self, progress: VerifyProgress) -> None:
        """The verification's progress callback (in the verifying thread)."""
        if self._left.is_set():
            raise _CallerLeftError
        now = self._clock()
        if self._passed_at is not None and now - self._passed_at < self._interval:
            return
        self._passed_at = now
        self._put(progress)

    def run(self, verify: Callable[[ProgressCallback], VerifyReport]) -> None:
        """Run ``verify`` with this relay as its progress callback, and hand over its
        result or its error (the verifying thread's body)."""
        outcome: VerifyReport | BaseException
        try:
            outcome = verify(self.report)
        except _CallerLeftError:
            log.info("audit.verify_stream_left", note="the caller left; verification stopped")
            return
        except Exception as exc:  # raised again in the stream's thread, which maps errors
            outcome = exc
        with contextlib.suppress(_CallerLeftError):  # nobody is left to tell
            self._put(_Done(outcome))

    def received(self) -> Iterator[VerifyProgress | VerifyReport]:
        """The progress reports, then the result (in the stream's thread); raises the
        verification's error; ends early when the caller has left."""
        while True:
            try:
                item = self._handoff.get(timeout=HANDOFF_SECONDS)
            except queue.Empty:
                if self._left.is_set():
                    return
                continue
            if not isinstance(item, _Done):
                yield item
            elif isinstance(item.outcome, BaseException):
                raise item.outcome
            else:
                yield item.outcome
                return

    def _put(self, item: VerifyProgress | _Done) -> None:
        while True:
            if self._left.is_set():
                raise _CallerLeftError
            try:
                self._handoff.put(item, timeout=HANDOFF_SECONDS)
                return
            except queue.Full:
                continue


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
        return report_proto(self._verify())

    def _verify(self, progress: ProgressCallback | None = None) -> VerifyReport:
        return verify_store(
            self._ledger,
            self._checkpoints.public_keys,  # the retired keys signed the history before
            self._checkpoints.iterate(),
            stored_checkpoints=False,  # the server's own checkpoints are the ones given
            progress=progress,
        )

    @override
    def StreamVerifyLedger(
        self, request: audit.StreamVerifyLedgerRequest, context: grpc.ServicerContext
    ) -> Iterator[audit.StreamVerifyLedgerResponse]:
        self._ledger.reference.require_role(
            current_principal().agency, AUDIT_ROLES, "verify the ledger"
        )
        relay = ProgressRelay(PROGRESS_SECONDS)
        context.add_callback(relay.leave)
        worker = threading.Thread(
            target=relay.run, args=(self._verify,), name="verify-stream", daemon=True
        )
        worker.start()
        try:
            for item in relay.received():
                if isinstance(item, VerifyProgress):
                    yield audit.StreamVerifyLedgerResponse(
                        progress=audit.VerifyLedgerProgress(
                            position=item.position,
                            ledger_position=item.end,
                            events_checked=item.events,
                        )
                    )
                else:
                    yield audit.StreamVerifyLedgerResponse(result=report_proto(item))
        finally:
            relay.leave()
            worker.join(LEAVE_SECONDS)
            if worker.is_alive():
                log.warning("audit.verify_stream_still_running", waited_seconds=LEAVE_SECONDS)

    @override
    def CreateCheckpoint(
        self, request: audit.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> audit.CreateCheckpointResponse:
        self._ledger.reference.require_role(
            current_principal().agency, AUDIT_ROLES, "create a checkpoint"
        )
        try:
            checkpoint = self._checkpoints.create()
        except CheckpointError as exc:
            raise DataLoss(str(exc), reason="CHECKPOINT_REFUSED") from exc
        return audit.CreateCheckpointResponse(checkpoint=checkpoint_proto(checkpoint))

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
            raise unknown_code("kecamatan", "kecamatan", request.kecamatan, reference.kecamatan)
        start = wire.optional_time(request, "start_time")
        end = wire.optional_time(request, "end_time")

        def keep(event: Incident.Event) -> bool:
            location = event.location or {}
            return (
                (not request.agency or event.actor_agency == request.agency)
                and (not request.kecamatan or location.get("kecamatan") == request.kecamatan)
                and (start is None or event.timestamp >= start)
                and (end is None or event.timestamp < end)
            )

        # Each yield waits for the transport: a slow reader slows the reading here.
        for stored in self._ledger.history(
            after=request.after_position,
            until=request.until_position or None,
            keep=keep,
            incident=incident,
        ):
            if not context.is_active():
                return
            yield audit.StreamEventsResponse(event=wire.event_to_proto(stored))
