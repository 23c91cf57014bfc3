"""Test support for the fan-out: a webhook receiver, live subscribers, a whole stack."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.js.errors import NotFoundError

from clients.examples.webhook_receiver import verify
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import IPNetwork, NotifierSettings, RelaySettings, WebhookSettings
from services.notifier.server import NotifierServer
from services.notifier.server import build as build_notifier
from tests.support import REFERENCE_FILE, Client, Metadata, running_ledger, settings_for

WEBHOOK_SECRET = "a-shared-secret-of-some-length"
# The receivers here listen on loopback, which a notifier refuses by default: the tests'
# notifiers allow it explicitly (NOTIFIER_WEBHOOK_ALLOW_NETWORKS for processes).
LOOPBACK_RECEIVERS: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
ALLOW_LOOPBACK_ENV = {"NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when it arrived

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @property
    def delivery_id(self) -> str:
        return self.headers["X-Ledger-Delivery"]


@dataclass
class WebhookReceiver:
    """A real HTTP endpoint on loopback that records POSTs; ``status`` sets its answer."""

    secret: str = WEBHOOK_SECRET
    status: int = 204
    delay: float = 0.0  # seconds before answering
    location: str = ""  # sent as Location with the answer (a redirect)
    tls: ssl.SSLContext | None = None  # HTTPS at https://localhost:<port>/hook
    port: int = 0
    arrivals: int = 0  # POSTs whose body was read (answered or not yet)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        if self.tls is not None:  # the name its certificate is for
            return f"https://localhost:{self.port}/hook"
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a notifier killed by a test): no
                    # delivery, as for any HTTP server; it is sent again in full later.
                    self.close_connection = True
                    return
                with receiver._lock:
                    receiver.arrivals += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.status < 300:
                    with receiver._lock:
                        receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def verified(self) -> list[Received]:
        """Deliveries whose signature checks out, each delivery id once."""
        seen: set[str] = set()
        unique = []
        with self._lock:
            items = list(self.received)
        for item in items:
            # Checked as the receiver did on arrival (the signature's age is part of it).
            signature = item.headers["X-Ledger-Signature"]
            if not verify(self.secret, signature, item.body, now=item.at):
                raise AssertionError(f"bad signature on {item.delivery_id}")
            if item.delivery_id not in seen:
                seen.add(item.delivery_id)
                unique.append(item)
        return unique


def arrival_versions(received: Iterable[Received]) -> dict[tuple[str, str], list[int]]:
    """Per (webhook, incident), the events' versions in the order they arrived.

    ``received`` holds each delivery id once (:meth:`WebhookReceiver.verified`): a
    redelivery of the same delivery is a duplicate the receiver drops, not a reordering.
    """
    arrived: dict[tuple[str, str], list[int]] = defaultdict(list)
    for item in received:
        body = item.json
        event = body["event"]
        arrived[(body["webhook"], event["incident"])].append(int(event.get("version", 0)))
    return dict(arrived)


def order_faults(
    arrived: Mapping[tuple[str, str], list[int]],
    expected: Mapping[str, list[int]],
    webhooks: Iterable[str],
) -> list[str]:
    """What is wrong with each incident's deliveries to each of ``webhooks``: versions not
    strictly increasing (out of order, or one event as two deliveries), some missing, or
    some that should not be there. ``expected``: per incident, the versions every one of
    the webhooks should get."""
    faults = []
    for webhook in sorted(webhooks):
        for incident, wanted in sorted(expected.items()):
            versions = arrived.get((webhook, incident), [])
            inversions = sum(1 for a, b in pairwise(versions) if b <= a)
            if inversions:
                faults.append(f"{webhook} {incident}: {inversions} out of order in {versions}")
            if sorted(set(versions)) != sorted(wanted):
                faults.append(f"{webhook} {incident}: got versions {versions}, wanted {wanted}")
    unexpected = {key for key in arrived if key[1] not in expected}
    faults.extend(f"{w} {i}: not an expected incident" for w, i in sorted(unexpected))
    return faults


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


class Subscriber:
    """A live gRPC subscription read by a thread into ``responses``."""

    def __init__(
        self,
        stub: napi_grpc.NotifierServiceStub,
        md: Metadata,
        request: napi.SubscribeRequest,
    ) -> None:
        self.responses: list[napi.SubscribeResponse] = []
        self.error: grpc.RpcError | None = None
        self._call = stub.Subscribe(request, metadata=md)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    @property
    def notifications(self) -> list[napi.SubscribeResponse]:
        return [r for r in self.responses if r.HasField("notification")]

    @property
    def cursor(self) -> str:
        return self.responses[-1].cursor

    def wait_started(self) -> None:
        wait_until(lambda: bool(self.responses) or self.error is not None, what="first heartbeat")
        if self.error is not None:
            raise self.error

    @classmethod
    def when_ready(
        cls,
        stub: napi_grpc.NotifierServiceStub,
        md: Metadata,
        request: napi.SubscribeRequest,
        timeout: float = 30.0,
    ) -> Subscriber:
        """A subscription that got its first heartbeat. A notifier in a process of its own
        answers UNAVAILABLE ("retry shortly") until it consumes the stream, which the
        ledger's relay makes a moment after both start: subscribed again, as a client
        would, until ``timeout``; any other error fails at once."""
        started: list[Subscriber] = []

        def subscribed() -> bool:
            subscriber = cls(stub, md, request)
            try:
                subscriber.wait_started()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return False
                raise
            started.append(subscriber)
            return True

        wait_until(subscribed, timeout, what="a subscription the notifier accepts")
        return started[0]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        wait_until(
            lambda: len(self.notifications) >= count or self.error is not None,
            timeout,
            what=f"{count} notifications",
        )
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(10)


@dataclass
class Stack:
    ledger: Client
    notifier: NotifierServer
    channel: grpc.Channel
    stub: napi_grpc.NotifierServiceStub

    def subscribe(self, agency: str, **request: Any) -> Subscriber:
        subscriber = Subscriber(self.stub, self.ledger.md(agency), napi.SubscribeRequest(**request))
        subscriber.wait_started()
        return subscriber


def notifier_settings(
    tmp_path: Path,
    nats_url: str,
    allow_networks: tuple[IPNetwork, ...] = LOOPBACK_RECEIVERS,
    **overrides: Any,
) -> NotifierSettings:
    """A notifier's settings for tests; its webhooks may reach ``allow_networks`` (loopback
    receivers, unless a test says otherwise), whatever ``webhooks`` says."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": tmp_path / "data",
        "reference_file": REFERENCE_FILE,
        "nats_url": nats_url,
        "grace_seconds": 1.0,
        "store_env": {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "data" / "notifier.sqlite"),
        },
    }
    values.update(overrides)
    values["webhooks"] = replace(
        values.get("webhooks", WebhookSettings()), allow_networks=allow_networks
    )
    return NotifierSettings(**values)


def wait_fanout_ready(ledger: Client, notifier: NotifierServer) -> None:
    """Until the ledger's relay (in a process of its own, started with the ledger) has
    connected to NATS and made the stream, and the notifier consumes it: before that a
    Subscribe is UNAVAILABLE ("retry shortly")."""
    assert ledger.server.relay is not None
    status = ledger.server.relay.status
    wait_until(lambda: status.connected, what="the relay connected to NATS")
    wait_until(notifier.engine.consumer_ready.is_set, what="the notifier consuming the stream")


@contextmanager
def running_stack(
    tmp_path: Path,
    store_env: dict[str, str],
    nats_url: str,
    ledger_overrides: dict[str, Any] | None = None,
    **notifier: Any,
) -> Iterator[Stack]:
    """The ledger (with its relay) and the notifier, on free ports: the ledger and the
    notifier in this process, the relay in its own (services/ledger/relay_process.py),
    connected (it has made the stream the notifier reads) before the notifier starts."""
    relay = RelaySettings(nats_url=nats_url, poll_seconds=0.2)
    ledger_settings = settings_for(tmp_path, store_env, relay=relay, **(ledger_overrides or {}))
    with running_ledger(ledger_settings) as ledger:
        server = build_notifier(notifier_settings(tmp_path, nats_url, **notifier))
        wait_fanout_ready(ledger, server)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Stack(ledger, server, channel, napi_grpc.NotifierServiceStub(channel))
        finally:
            channel.close()
            server.stop(1.0)


@dataclass(frozen=True)
class StreamMessage:
    seq: int
    headers: dict[str, str]
    data: bytes


def read_stream(url: str, stream: str = "LEDGER_EVENTS") -> list[StreamMessage]:
    """Every message the stream holds, in stream order; none before the relay has made
    the stream (its process connects to NATS a moment after the ledger starts)."""

    async def read() -> list[StreamMessage]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            try:
                state = (await js.stream_info(stream)).state
            except NotFoundError:
                return []
            if not state.messages:
                return []
            found = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                found.append(StreamMessage(seq, dict(msg.headers or {}), msg.data or b""))
            return found
        finally:
            await client.close()

    return asyncio.run(read())
