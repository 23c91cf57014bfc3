"""NotifierService: translates each RPC into engine and store calls and back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.auth import Principal
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from services.common.grpc_server import current_principal
from services.common.pagetoken import PageTokens, page_of
from services.common.reference import ReferenceData, Role, unknown_code
from services.notifier.engine import Engine
from services.notifier.filters import EventFilter
from services.notifier.messages import encode_cursor
from services.notifier.store import (
    DeliveryLog,
    Job,
    LogEntry,
    NotifierStore,
    WebhookBacklog,
    WebhookRow,
)
from services.notifier.webhooks import WebhookChange, WebhookRegistry

DEFAULT_PAGE, MAX_PAGE = 50, 500
DEFAULT_HEARTBEAT = 15
# UpdateWebhook's update_mask: the paths that may change, and why the others never do.
CHANGEABLE = ("url", "filter", "secret")
UNCHANGEABLE = {
    "name": "a webhook keeps its name",
    "agency": "a webhook keeps its owner",
    "create_time": "it is set by the notifier",
}


def _ts(epoch: float | None) -> Timestamp | None:
    if epoch is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(epoch, UTC))
    return stamp


#: The orders ``ListDeliveries`` takes (AIP-132), and whether each is the newest first.
DELIVERY_ORDERS = {"": False, "time": False, "time asc": False, "time desc": True}
#: Above every row of the delivery log: where a newest-first listing starts.
NEWEST_FIRST_START = 2**63 - 1


def _deliveries_order(text: str) -> bool:
    """Whether ``order_by`` asks for the newest deliveries first; INVALID_ARGUMENT if unknown."""
    normalised = " ".join(text.split())
    if normalised not in DELIVERY_ORDERS:
        raise InvalidArgument("order_by", 'must be "time" or "time desc" (or empty)')
    return DELIVERY_ORDERS[normalised]


def _page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE, MAX_PAGE)


def _shown_url(url: str) -> str:
    """A stored URL as shown: credentials (refused since, but possibly stored before) are
    never echoed back."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _dead_letter_cursor(after: object) -> tuple[int, str]:
    if (
        not isinstance(after, list)
        or len(after) != 2
        or not isinstance(after[0], int)
        or not isinstance(after[1], str)
    ):
        raise InvalidArgument("page_token", "is not a valid page token")
    return after[0], after[1]


def _update_paths(request: napi.UpdateWebhookRequest) -> set[str]:
    """The fields an update changes: those the mask names, or (no mask, AIP-134) those the
    webhook sets."""
    if not request.update_mask.paths:
        webhook = request.webhook
        given = {
            "url": bool(webhook.url),
            "filter": webhook.HasField("filter"),
            "secret": bool(webhook.secret),
        }
        if not any(given.values()):
            raise InvalidArgument(
                "update_mask", f"is empty and the webhook sets none of {', '.join(CHANGEABLE)}"
            )
        return {path for path, is_set in given.items() if is_set}
    for n, path in enumerate(request.update_mask.paths):
        if path in UNCHANGEABLE:
            raise InvalidArgument(
                f"update_mask.paths[{n}]",
                f"{path!r} cannot change: {UNCHANGEABLE[path]}",
                reason="FIELD_IMMUTABLE",
            )
        if path not in CHANGEABLE:
            raise InvalidArgument(
                f"update_mask.paths[{n}]",
                f"unknown path {path!r}: the paths that may change are {', '.join(CHANGEABLE)}",
            )
    return set(request.update_mask.paths)


def _name_id(name: str, prefix: str, field: str = "name") -> str:
    if not name.startswith(prefix) or len(name) <= len(prefix) or "/" in name[len(prefix) :]:
        raise InvalidArgument(field, f"must look like '{prefix}{{id}}'")
    return name[len(prefix) :]


class NotifierServicer(napi_grpc.NotifierServiceServicer):
    def __init__(
        self,
        engine: Engine,
        store: NotifierStore,
        reference: ReferenceData,
        page_tokens: PageTokens,
        deliveries: DeliveryLog,
        webhooks: WebhookRegistry,
    ) -> None:
        self._engine = engine
        self._webhooks = webhooks
        self._store = store
        self._deliveries = deliveries
        self._reference = reference
        self._tokens = page_tokens

    def _sees_all(self, principal: Principal) -> bool:
        role = self._reference.agencies[principal.agency].role
        return role in {Role.COORDINATOR, Role.AUDITOR}

    def _webhook_proto(
        self, row: WebhookRow, backlog: WebhookBacklog | None = None
    ) -> napi.Webhook:
        message = napi.Webhook(
            name=f"webhooks/{row.id}",
            agency=row.agency,
            url=_shown_url(row.url),
            filter=EventFilter.from_json(row.filter).to_proto(self._reference),
            create_time=_ts(row.created_at),
        )
        if backlog is not None:
            message.waiting_deliveries = backlog.waiting
            message.dead_letters = backlog.dead
            oldest = _ts(backlog.oldest)
            if oldest is not None:
                message.oldest_waiting_time.CopyFrom(oldest)
        return message

    # ------------------------------------------------------------ subscriptions

    @override
    def Subscribe(
        self, request: napi.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[napi.SubscribeResponse]:
        principal = current_principal()
        event_filter = EventFilter.from_proto(request.filter, self._reference, principal.agency)
        heartbeat = request.heartbeat_seconds or DEFAULT_HEARTBEAT
        if not 1 <= heartbeat <= 300:
            raise InvalidArgument("heartbeat_seconds", "must be between 1 and 300")
        ended = threading.Event()  # the client went away (or the call otherwise ended)
        context.add_callback(ended.set)
        try:
            live = self._engine.subscribe(request.cursor)  # may wait for the stream
        except Unavailable:
            if ended.is_set():
                return  # the client left first (a stop): nothing to report to anyone
            raise
        try:
            yield self._heartbeat(live.cursor_seq, live.epoch)
            last_sent = time.monotonic()
            while not ended.is_set():
                if self._engine.stopping:
                    raise Unavailable(
                        "the notifier is shutting down; resume from your cursor",
                        reason="SHUTTING_DOWN",
                    )
                try:
                    batch = live.next_batch(timeout=min(1.0, heartbeat))
                except Unavailable:
                    if ended.is_set():
                        return  # the client left first; nothing to report to anyone
                    raise
                for seq, note in batch:
                    if event_filter.matches(note, self._reference):
                        self._deliveries.record(self._grpc_delivery(principal, note.event))
                        self._engine.count_delivery("grpc", "delivered")
                        yield napi.SubscribeResponse(
                            cursor=encode_cursor(seq, live.epoch), notification=note
                        )
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent >= heartbeat:
                    yield self._heartbeat(live.cursor_seq, live.epoch)
                    last_sent = time.monotonic()
        finally:
            live.close()

    @staticmethod
    def _heartbeat(cursor_seq: int, epoch: str) -> napi.SubscribeResponse:
        return napi.SubscribeResponse(
            cursor=encode_cursor(cursor_seq, epoch),
            heartbeat=napi.Heartbeat(time=_ts(time.time())),
        )

    @staticmethod
    def _grpc_delivery(principal: Principal, event: pb.IncidentEvent) -> LogEntry:
        return LogEntry(
            event_id=event.event_id,
            incident=event.incident,
            position=event.position,
            agency=principal.agency,
            channel="grpc",
            target=principal.officer,
            outcome="delivered",
            attempt=1,
            error="",
            at=time.time(),
        )

    # ------------------------------------------------------------------ webhooks

    @override
    def CreateWebhook(
        self, request: napi.CreateWebhookRequest, context: grpc.ServicerContext
    ) -> napi.CreateWebhookResponse:
        principal = current_principal()
        if not request.request_id:
            raise InvalidArgument("request_id", "is required (AIP-155)")
        if len(request.request_id) > 128:
            raise InvalidArgument("request_id", "is longer than 128 characters")
        row = self._webhooks.create(
            principal, request.request_id, request.url, request.secret, request.filter
        )
        return napi.CreateWebhookResponse(webhook=self._webhook_proto(row))

    @override
    def ListWebhooks(
        self, request: napi.ListWebhooksRequest, context: grpc.ServicerContext
    ) -> napi.ListWebhooksResponse:
        principal = current_principal()
        size = _page_size(request.page_size)
        agency = None if self._sees_all(principal) else principal.agency
        rows, next_token = page_of(
            self._tokens,
            f"webhooks?agency={agency}",
            request.page_token,
            size,
            lambda after, limit: self._store.webhooks(agency, after=str(after), limit=limit),
            lambda row: row.id,
            "",
        )
        # What each receiver has still to get: before, an integrator saw only the failed
        # attempts, not the deliveries queued behind them.
        backlogs = self._store.backlogs([r.id for r in rows])
        return napi.ListWebhooksResponse(
            webhooks=[self._webhook_proto(r, backlogs.get(r.id)) for r in rows],
            next_page_token=next_token,
        )

    @override
    def UpdateWebhook(
        self, request: napi.UpdateWebhookRequest, context: grpc.ServicerContext
    ) -> napi.UpdateWebhookResponse:
        webhook = request.webhook
        webhook_id = _name_id(webhook.name, "webhooks/", "webhook.name")
        paths = _update_paths(request)
        change = WebhookChange(
            url=webhook.url if "url" in paths else None,
            secret=webhook.secret if "secret" in paths else None,
            filter=webhook.filter if "filter" in paths else None,
        )
        row = self._webhooks.update(current_principal(), webhook_id, change)
        return napi.UpdateWebhookResponse(webhook=self._webhook_proto(row))

    @override
    def DeleteWebhook(
        self, request: napi.DeleteWebhookRequest, context: grpc.ServicerContext
    ) -> napi.DeleteWebhookResponse:
        self._webhooks.delete(current_principal(), _name_id(request.name, "webhooks/"))
        return napi.DeleteWebhookResponse()

    # -------------------------------------------------------------- dead letters

    def _dead_letter_proto(self, job: Job) -> napi.DeadLetter:
        return napi.DeadLetter(
            name=f"deadLetters/{job.id}",
            webhook=f"webhooks/{job.webhook_id}",
            event_id=job.event_id,
            incident=job.incident,
            position=job.position,
            attempts=job.attempts,
            last_error=job.last_error,
            first_attempt_time=_ts(job.first_attempt_at),
            last_attempt_time=_ts(job.last_attempt_at),
        )

    @override
    def ListDeadLetters(
        self, request: napi.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> napi.ListDeadLettersResponse:
        principal = current_principal()
        size = _page_size(request.page_size)
        agency = None if self._sees_all(principal) else principal.agency
        jobs, next_token = page_of(
            self._tokens,
            f"deadLetters/by-position?agency={agency}",
            request.page_token,
            size,
            lambda after, limit: self._store.dead_letters(
                agency, after=_dead_letter_cursor(after), limit=limit
            ),
            lambda job: [job.position, job.id],
            [-1, ""],
        )
        return napi.ListDeadLettersResponse(
            dead_letters=[self._dead_letter_proto(j) for j in jobs], next_page_token=next_token
        )

    @override
    def ReplayDeadLetter(
        self, request: napi.ReplayDeadLetterRequest, context: grpc.ServicerContext
    ) -> napi.ReplayDeadLetterResponse:
        principal = current_principal()
        job_id = _name_id(request.name, "deadLetters/")
        job = self._store.dead_letter(job_id)
        if job is None:
            raise NotFound(
                f"{request.name} is not a dead letter",
                reason="DEAD_LETTER_NOT_FOUND",
                metadata={"dead_letter": request.name, "field": "name"},
            )
        self._webhooks.require_owner(principal, job.agency)
        # A job replayed already (with a later one of its incident, or by a retry) is
        # left as it is: the answer is the same.
        replayed = self._store.replay(job_id)
        if replayed:
            self._engine.wake_delivery()
        return napi.ReplayDeadLetterResponse(replayed=replayed)

    # -------------------------------------------------------------- delivery log

    @override
    def ListDeliveries(
        self, request: napi.ListDeliveriesRequest, context: grpc.ServicerContext
    ) -> napi.ListDeliveriesResponse:
        principal = current_principal()
        size = _page_size(request.page_size)
        agency = request.agency or None
        if agency is not None and agency not in self._reference.agencies:
            raise unknown_code("agency", "agency", agency, self._reference.agencies)
        if not self._sees_all(principal):
            if agency not in {None, principal.agency}:
                raise PermissionDenied(
                    "an agency sees its own deliveries only",
                    reason="NOT_OWNER",
                    metadata={"caller_agency": principal.agency},
                )
            agency = principal.agency
        incident = request.incident or None
        if incident is not None:
            _name_id(incident, "incidents/", "incident")
        newest_first = _deliveries_order(request.order_by)
        query = f"deliveries?incident={incident}&agency={agency}"
        if newest_first:  # a page token is bound to its order (and the default's stay valid)
            query += "&order_by=time desc"
        rows, next_token = page_of(
            self._tokens,
            query,
            request.page_token,
            size,
            lambda after, limit: self._store.deliveries(
                incident=incident,
                agency=agency,
                after=int(after),
                limit=limit,
                newest_first=newest_first,
            ),
            lambda row: row[0],
            NEWEST_FIRST_START if newest_first else 0,
        )
        return napi.ListDeliveriesResponse(
            deliveries=[
                napi.DeliveryRecord(
                    event_id=e.event_id,
                    incident=e.incident,
                    position=e.position,
                    agency=e.agency,
                    channel=e.channel,
                    target=e.target,
                    outcome=e.outcome,
                    attempt=e.attempt,
                    error=e.error,
                    time=_ts(e.at),
                )
                for _, e in rows
            ],
            next_page_token=next_token,
        )
