"""The notifier client: live subscriptions that resume by cursor, webhooks, the delivery log.

>>> from incidentledger_client import NotifierClient
>>> with NotifierClient("127.0.0.1:50052", token) as notifier:  # doctest: +SKIP
...     with notifier.subscribe(kecamatan=["ipuh"], min_severity="high") as subscription:
...         for note in subscription:
...             handle(note.event, note.incident)
...             save(note.cursor)          # resume later with subscribe(cursor=...)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from incidentledger_client._transport import (
    ClientCertificate,
    RetryPolicy,
    Transport,
    new_request_id,
)
from incidentledger_client.errors import (
    DeadlineExceeded,
    Unavailable,
    from_rpc_error,
    status_code,
)
from incidentledger_client.ledger import paginate
from incidentledger_client.types import (
    DeadLetter,
    Delivery,
    EventFilter,
    Notification,
    Webhook,
    to_datetime,
)

DEFAULT_TARGET = "127.0.0.1:50052"

RECONNECT = RetryPolicy(retries=10, initial_backoff=0.2, max_backoff=5.0)
"""Default backoff between reconnections of a dropped subscription."""


def _filter(filter: EventFilter | None, fields: dict[str, Any]) -> EventFilter:
    given = {k: v for k, v in fields.items() if v}
    if filter is not None and given:
        raise TypeError("pass either filter= or the filter's fields, not both")
    if filter is not None:
        return filter
    return EventFilter(
        kecamatan=tuple(given.get("kecamatan", ())),
        categories=tuple(given.get("categories", ())),
        min_severity=given.get("min_severity", ""),
        event_types=tuple(given.get("event_types", ())),
        involving_my_agency=bool(given.get("involving_my_agency", False)),
        agencies=tuple(given.get("agencies", ())),
    )


class _Stream:
    """One Subscribe call of a subscription, and its watchdog's state."""

    def __init__(self, call: Any, idle_timeout: float) -> None:
        self.call = call
        self.idle_timeout = idle_timeout
        #: When the last message arrived (time.monotonic()).
        self.last = [time.monotonic()]
        #: Whether the watchdog cancelled the call (silent too long).
        self.fired = [False]
        #: The first answer, read by Subscription.ready() before the iteration.
        self.first: Any = None
        self._stop = threading.Event()

    def watch(self) -> None:
        """Cancel the call when nothing arrived for ``idle_timeout`` seconds."""
        while not self._stop.wait(max(0.05, min(1.0, self.idle_timeout / 4))):
            if time.monotonic() - self.last[0] > self.idle_timeout:
                self.fired[0] = True
                self.call.cancel()
                return

    def end(self) -> None:
        self._stop.set()
        self.call.cancel()


class Subscription(Iterator[Notification]):
    """An iterator over a live subscription that survives dropped streams.

    It keeps the last cursor (of an event or a heartbeat) in :attr:`cursor`. When the
    stream drops (UNAVAILABLE: the notifier restarted or the connection was lost) or stays
    silent longer than ``idle_timeout`` (heartbeats stopped), it subscribes again from that
    cursor, after a backoff: no event is missed and none is repeated. After
    ``max_reconnects`` consecutive reconnections without receiving anything it raises
    :class:`~incidentledger_client.errors.Unavailable`; ``None`` retries for ever. Any other
    error (bad filter, expired cursor, bad credentials) is raised at once.

    :meth:`close` (from any thread) ends the iteration: ``for`` loops simply stop.
    """

    def __init__(
        self,
        transport: Transport,
        stub: napi_grpc.NotifierServiceStub,
        event_filter: EventFilter,
        *,
        cursor: str,
        heartbeat_seconds: int,
        max_reconnects: int | None,
        reconnect: RetryPolicy,
        idle_timeout: float,
    ) -> None:
        self.cursor = cursor
        """The cursor to resume after the last message received (event or heartbeat)."""
        self.reconnects = 0
        """How many times the stream was re-established."""
        self.last_heartbeat: Any = None
        self.received_at: float | None = None
        """When the last message (event or heartbeat) arrived, in ``time.monotonic()``
        seconds (None before the first): a stream silent for longer than its heartbeats
        is not delivering, whether or not it is reconnecting."""
        self._transport = transport
        self._stub = stub
        self._filter = event_filter.to_proto()
        self._heartbeat_seconds = heartbeat_seconds
        self._max_reconnects = max_reconnects
        self._reconnect = reconnect
        self._idle_timeout = idle_timeout
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        # A stream opened by ready(), its first answer read: where _run begins.
        self._primed: _Stream | None = None
        self._messages = self._run()

    def __iter__(self) -> Subscription:
        return self

    def ready(self, timeout: float = 10.0) -> Subscription:
        """Open the stream now and return once the notifier has placed it (its first
        heartbeat): every event recorded after this returns is yielded. Without it the
        stream opens at the first ``next()``, and "from now" means from then: an event
        recorded in between is not this subscription's. Returns the subscription itself::

            with notifier.subscribe(kecamatan=["ipuh"]).ready() as subscription:
                ledger.report(...)          # yielded below
                note = next(subscription)

        Raises what the notifier refused (a bad filter or cursor), and
        :class:`~incidentledger_client.errors.DeadlineExceeded` when it did not answer
        within ``timeout`` seconds (its stream may not exist yet); iterating then opens
        the stream again as usual.
        """
        if self._primed is not None or self._call is not None:
            return self  # already open
        stream = self._open(idle_timeout=timeout)
        try:
            response = next(stream.call)
        except grpc.RpcError as error:
            stream.end()
            if stream.fired[0]:
                raise DeadlineExceeded(
                    "DEADLINE_EXCEEDED", "", f"the notifier did not answer within {timeout} s"
                ) from None
            raise from_rpc_error(error) from None
        except StopIteration:
            stream.end()
            raise Unavailable("UNAVAILABLE", "", "the notifier ended the stream") from None
        stream.first = response
        self.cursor = response.cursor  # where a resumption starts, already
        stream.idle_timeout = self._idle_timeout
        self._primed = stream
        return self

    def __next__(self) -> Notification:
        return next(self._messages)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop: cancel the current stream; the iteration ends."""
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _connect(self) -> Any:
        request = napi.SubscribeRequest(
            filter=self._filter, cursor=self.cursor, heartbeat_seconds=self._heartbeat_seconds
        )
        call = self._stub.Subscribe(request, metadata=self._transport.metadata)
        with self._lock:
            self._call = call
        if self._closed.is_set():
            call.cancel()  # type: ignore[no-untyped-call]
        return call

    def _open(self, idle_timeout: float | None = None) -> _Stream:
        """A new stream, watched: cancelled when nothing arrived for ``idle_timeout``
        seconds (the subscription's unless given)."""
        stream = _Stream(self._connect(), idle_timeout or self._idle_timeout)
        threading.Thread(target=stream.watch, daemon=True).start()
        return stream

    def _responses(self, stream: _Stream) -> Iterator[Any]:
        if stream.first is not None:
            yield stream.first
        yield from stream.call

    def _run(self) -> Iterator[Notification]:
        silent = 0  # consecutive reconnections without a message
        while not self._closed.is_set():
            stream, self._primed = self._primed or self._open(), None
            last, fired = stream.last, stream.fired
            failure: grpc.RpcError | None = None
            try:
                for response in self._responses(stream):
                    last[0] = self.received_at = time.monotonic()
                    silent = 0
                    self.cursor = response.cursor
                    if response.HasField("notification"):
                        yield Notification.from_proto(response)
                    else:
                        self.last_heartbeat = to_datetime(response.heartbeat.time)
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                # A certificate that does not verify will not on a reconnection either.
                unverified = self._transport.certificate_failure(error)
                if unverified is not None:
                    raise unverified from None
                code = status_code(error)
                dropped = code == grpc.StatusCode.UNAVAILABLE or (
                    code == grpc.StatusCode.CANCELLED and fired[0]
                )
                if not dropped:
                    raise from_rpc_error(error) from None
                failure = error
            finally:
                stream.end()
            if self._closed.is_set():
                return
            if self._max_reconnects is not None and silent >= self._max_reconnects:
                if fired[0]:
                    raise Unavailable(
                        "UNAVAILABLE", "", f"nothing received for {self._idle_timeout} s"
                    )
                if failure is not None:
                    raise from_rpc_error(failure)
                return
            if self._closed.wait(self._reconnect.delay(silent)):
                return
            silent += 1
            self.reconnects += 1


class NotifierClient:
    """A typed client of the notifier (NotifierService).

    :param target: ``host:port``; default ``$NOTIFIER_ADDRESS`` or ``127.0.0.1:50052``.
    :param token: the bearer token (the same as the ledger's); default ``$LEDGER_TOKEN``.
    :param tls: as for :class:`~incidentledger_client.LedgerClient`; default: the CA file
        ``$NOTIFIER_TLS_CA``, else ``$LEDGER_TLS_CA``, else plaintext.
    :param client_cert: for mutual TLS, as for ``LedgerClient``; default the file
        ``$NOTIFIER_TLS_CLIENT_CERT``, else ``$LEDGER_TLS_CLIENT_CERT``.
    :param client_key: its key; default ``$NOTIFIER_TLS_CLIENT_KEY``, else
        ``$LEDGER_TLS_CLIENT_KEY``.
    :param timeout: deadline of each attempt of each unary call, in seconds.
    :param retries: retries of UNAVAILABLE and DEADLINE_EXCEEDED (backoff with jitter);
        default as often as the retry budget (20 s) allows.

    ``create_webhook`` is idempotent by ``request_id``, ``update_webhook`` by nature.
    ``delete_webhook`` and ``replay_dead_letter`` are retried too: a retried delete whose
    first attempt succeeded raises ``NotFound``, a retried replay may deliver twice under the
    same delivery id.
    """

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        *,
        tls: bool | str | bytes | Path | None = None,
        client_cert: str | bytes | Path | None = None,
        client_key: str | bytes | Path | None = None,
        timeout: float = 10.0,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        options: Iterable[tuple[str, Any]] = (),
        language: str | None = None,
    ) -> None:
        self._transport = Transport(
            target=target,
            target_env="NOTIFIER_ADDRESS",
            default_target=DEFAULT_TARGET,
            token=token,
            auth_env="LEDGER_TOKEN",
            tls=tls,
            tls_env=("NOTIFIER_TLS_CA", "LEDGER_TLS_CA"),
            timeout=timeout,
            retry=retry or RetryPolicy(retries=retries),
            channel=channel,
            options=tuple(options),
            language=language,
            client_certificate=ClientCertificate(
                client_cert,
                client_key,
                cert_env=("NOTIFIER_TLS_CLIENT_CERT", "LEDGER_TLS_CLIENT_CERT"),
                key_env=("NOTIFIER_TLS_CLIENT_KEY", "LEDGER_TLS_CLIENT_KEY"),
            ),
        )
        self._stub = napi_grpc.NotifierServiceStub(self._transport.channel)

    @property
    def target(self) -> str:
        return self._transport.target

    def close(self) -> None:
        """Close the channel (unless it was passed in)."""
        self._transport.close()

    def __enter__(self) -> NotifierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(
        self,
        *,
        kecamatan: Iterable[str] = (),
        categories: Iterable[str] = (),
        min_severity: str = "",
        event_types: Iterable[str] = (),
        involving_my_agency: bool = False,
        agencies: Iterable[str] = (),
        filter: EventFilter | None = None,
        cursor: str | None = None,
        heartbeat_seconds: int = 15,
        max_reconnects: int | None = 10,
        reconnect: RetryPolicy = RECONNECT,
        idle_timeout: float | None = None,
    ) -> Subscription:
        """Events matching the filter, from ``cursor`` (exclusive) or from now.

        The returned :class:`Subscription` yields :class:`Notification` objects (event,
        incident right after it, cursor) and resumes from its last cursor after a dropped
        stream. ``idle_timeout`` (default three heartbeats) is how long silence means a dead
        stream. The stream is opened on the first ``next()``, or at once by
        :meth:`Subscription.ready`, which returns once the notifier has placed it: "from
        now" is then from that return (act after it, and every event of the act is yielded).

        >>> sub = notifier.subscribe(involving_my_agency=True, cursor=saved)  # doctest: +SKIP
        >>> note = next(sub); note.event.type, note.incident.status  # doctest: +SKIP
        ('SupportingAgencyAdded', <IncidentStatus.ASSIGNED: 'ASSIGNED'>)
        """
        event_filter = _filter(
            filter,
            {
                "kecamatan": tuple(kecamatan),
                "categories": tuple(categories),
                "min_severity": min_severity,
                "event_types": tuple(event_types),
                "involving_my_agency": involving_my_agency,
                "agencies": tuple(agencies),
            },
        )
        return Subscription(
            self._transport,
            self._stub,
            event_filter,
            cursor=cursor or "",
            heartbeat_seconds=heartbeat_seconds,
            max_reconnects=max_reconnects,
            reconnect=reconnect,
            idle_timeout=idle_timeout if idle_timeout is not None else 3.0 * heartbeat_seconds,
        )

    def create_webhook(
        self,
        url: str,
        secret: str,
        *,
        kecamatan: Iterable[str] = (),
        categories: Iterable[str] = (),
        min_severity: str = "",
        event_types: Iterable[str] = (),
        involving_my_agency: bool = False,
        agencies: Iterable[str] = (),
        filter: EventFilter | None = None,
        request_id: str | None = None,
    ) -> Webhook:
        """Register a webhook for the caller's agency (``secret``: 16-256 characters).

        >>> hook = notifier.create_webhook("https://bpbd.example/hook", secret,  # doctest: +SKIP
        ...                                kecamatan=["air_manjunto"], categories=["flood"])
        """
        event_filter = _filter(
            filter,
            {
                "kecamatan": tuple(kecamatan),
                "categories": tuple(categories),
                "min_severity": min_severity,
                "event_types": tuple(event_types),
                "involving_my_agency": involving_my_agency,
                "agencies": tuple(agencies),
            },
        )
        request = napi.CreateWebhookRequest(
            request_id=request_id or new_request_id(),
            url=url,
            secret=secret,
            filter=event_filter.to_proto(),
        )
        return Webhook.from_proto(self._transport.unary(self._stub.CreateWebhook, request).webhook)

    def webhooks(self, *, page_size: int = 0) -> Iterator[Webhook]:
        """The caller's agency's webhooks, page after page."""

        def fetch(token: str) -> tuple[list[Webhook], str]:
            request = napi.ListWebhooksRequest(page_size=page_size, page_token=token)
            page = self._transport.unary(self._stub.ListWebhooks, request)
            return [Webhook.from_proto(w) for w in page.webhooks], page.next_page_token

        return paginate(fetch)

    def update_webhook(
        self,
        name: str,
        *,
        url: str | None = None,
        secret: str | None = None,
        filter: EventFilter | None = None,
    ) -> Webhook:
        """Change one of the caller's agency's webhooks (``"webhooks/{id}"``) in place: what
        is given changes (``filter`` is replaced whole), the rest stays, and so does the name.

        >>> notifier.update_webhook(name, url="https://bpbd.example/v2")  # doctest: +SKIP
        """
        changes = {"url": url, "secret": secret, "filter": filter}
        paths = [path for path, value in changes.items() if value is not None]
        if not paths:
            raise TypeError("nothing to change: give url, secret or filter")
        webhook = napi.Webhook(name=name, url=url or "", secret=secret or "")
        if filter is not None:
            webhook.filter.CopyFrom(filter.to_proto())
        request = napi.UpdateWebhookRequest(webhook=webhook)
        request.update_mask.paths.extend(paths)
        return Webhook.from_proto(self._transport.unary(self._stub.UpdateWebhook, request).webhook)

    def delete_webhook(self, name: str) -> None:
        """Delete one of the caller's agency's webhooks (``"webhooks/{id}"``)."""
        self._transport.unary(self._stub.DeleteWebhook, napi.DeleteWebhookRequest(name=name))

    def dead_letters(self, *, page_size: int = 0) -> Iterator[DeadLetter]:
        """Deliveries that exhausted their attempts (the caller's agency's own)."""

        def fetch(token: str) -> tuple[list[DeadLetter], str]:
            request = napi.ListDeadLettersRequest(page_size=page_size, page_token=token)
            page = self._transport.unary(self._stub.ListDeadLetters, request)
            return [DeadLetter.from_proto(d) for d in page.dead_letters], page.next_page_token

        return paginate(fetch)

    def replay_dead_letter(self, name: str) -> int:
        """Deliver a dead letter again (``"deadLetters/{id}"``); attempts start over. The
        earlier dead letters of its incident and webhook go with it: returns how many went
        back (0: it was replayed already, with a later one of its incident)."""
        response = self._transport.unary(
            self._stub.ReplayDeadLetter, napi.ReplayDeadLetterRequest(name=name)
        )
        return int(response.replayed)

    def deliveries(
        self,
        *,
        incident: str | None = None,
        agency: str | None = None,
        page_size: int = 0,
        newest_first: bool = False,
    ) -> Iterator[Delivery]:
        """The delivery log, optionally of one incident and/or to one agency, in the order
        it was logged, or with ``newest_first`` from the latest back (what just happened,
        without reading the whole log)."""

        def fetch(token: str) -> tuple[list[Delivery], str]:
            request = napi.ListDeliveriesRequest(
                incident=incident or "",
                agency=agency or "",
                page_size=page_size,
                page_token=token,
                order_by="time desc" if newest_first else "",
            )
            page = self._transport.unary(self._stub.ListDeliveries, request)
            return [Delivery.from_proto(d) for d in page.deliveries], page.next_page_token

        return paginate(fetch)
