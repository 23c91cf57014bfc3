"""The fan-out: relay throughput, commit -> subscriber and webhook latency, their ceilings.

All of it runs against a nats-server the bench starts itself (services.common.natsserver,
free loopback ports, JetStream on file storage in the bench's temporary directory), and
every service in a process of its own, as deployed:

- Relay throughput: a fresh store pre-filled with sealed incident events (raw saves
  through the application, no gRPC), its projections rebuilt and a checkpoint signed
  (as on a ledger that ran while NATS was away); then ``python -m services.ledger``
  with the relay on starts on it, and the bench reads the stream's message count until
  it holds every event. The rate is from the first message seen on the stream to the
  last (the process's start-up is not counted; it is printed).
- Its ceiling, plain publish: a child process reads those very messages back from the
  stream (same subjects but for their prefix, same payloads, same headers) and
  publishes them to a fresh stream of the same configuration with nats-py's pipelined
  ``publish_async`` (every message sent, then the acks awaited): no store, no encoding.
- End to end: ``python -m services.ledger`` (its relay in a child process) and
  ``python -m services.notifier`` on one store and stream; a sender process sends
  LogAction commands at a fixed rate, a subscriber process reads one gRPC Subscribe
  stream, a receiver process is an HTTP endpoint registered as a webhook. Latency of an
  event = its receipt minus its ``record_time`` (the ledger's clock, when the command
  created the event, just before its commit), and minus the moment the client began the
  command's call; one machine, one wall clock.
- NATS alone, the ceiling of both: a child process publishes (awaiting each ack) to a
  test stream at the same rate, messages of the relay's shape, read by an ordered push
  consumer configured as the notifier's live subscriptions and, at the same time, by a
  durable pull consumer fetching batches of 100, as the notifier's webhook consumer does.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import nats
import psutil
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from bench import logs, profile
from bench.harness import Channels, Result, Worker, open_loop
from bench.scenarios import (
    ACTION,
    CATEGORY,
    COORDINATOR,
    KECAMATAN,
    LEAD,
    REPORTER,
    TITLE,
    Metadata,
    SigningKey,
    actors,
    envelope,
    free_port,
    ledger_process,
    prepare_assigned,
    read_tokens,
    service_process,
    store_name,
)
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import PROJECT_ROOT, RelaySettings, StreamSettings
from services.common.reference import ReferenceData
from services.ledger.application import Ledger
from services.ledger.audit import Checkpoints, RawDecoder
from services.ledger.domain.incident import Incident
from services.ledger.projections import Projections
from services.ledger.relay_encoder import PROCESS_NAME as ENCODER_NAME
from services.ledger.relay_messages import POSITION_HEADER
from services.ledger.relay_process import CHILD_MODULE

EVENTS_PER_INCIDENT = 4  # reported, verified, lead assigned, one action logged
PREFILL_BATCH = 250  # incidents per save (1,000 events)
RELAY_TIMEOUT = 300.0  # seconds the relay may take before the bench gives up
NOTIFIER_CONSUMER = "notifier"
DRAIN_SECONDS = 10.0  # how long the subscriber may still take after the last send
WEBHOOK_SECRET = secrets.token_hex(16)  # the receiver does not check signatures
STREAM_POLL_SECONDS = 0.005  # how often the relay's progress is read from the stream
LATE_SHARE_LIMIT = 0.01  # the paced sender kept its rate: at most 1 % of sends late


def stream_settings(tag: str) -> StreamSettings:
    """A stream of the bench's own (name and subjects), otherwise the ledger's defaults.

    Its checkpoint subject too: each stream gets a checkpoint stream beside it, and two
    streams of one server may not share a subject.
    """
    return StreamSettings(
        name=f"BENCH_{tag.upper()}",
        subject_prefix=f"bench.{tag}.events",
        checkpoint_subject=f"bench.{tag}.checkpoints",
    )


def stream_env(nats_url: str, stream: StreamSettings) -> dict[str, str]:
    """The environment that points a ledger or a notifier process at ``stream``."""
    return {
        "NATS_URL": nats_url,
        "LEDGER_STREAM": stream.name,
        "LEDGER_STREAM_SUBJECT_PREFIX": stream.subject_prefix,
        "LEDGER_STREAM_CHECKPOINT_SUBJECT": stream.checkpoint_subject,
    }


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def relay_pid(ledger_pid: int, timeout: float = 30.0) -> int:
    """The ledger's relay process (services/ledger/relay_process.py), once started."""
    deadline = time.monotonic() + timeout
    while True:
        for child in psutil.Process(ledger_pid).children():
            if CHILD_MODULE in child.cmdline():
                return int(child.pid)
        if time.monotonic() > deadline:
            raise RuntimeError("the ledger started no relay process")
        time.sleep(0.05)


def encoder_pid(relay: int, timeout: float = 30.0) -> int:
    """The relay's encoder process (services/ledger/relay_encoder.py), once forked."""
    deadline = time.monotonic() + timeout
    while True:
        for child in psutil.Process(relay).children():
            if child.name() == ENCODER_NAME:
                return int(child.pid)
        if time.monotonic() > deadline:
            raise RuntimeError("the relay started no encoder process")
        time.sleep(0.05)


def relay_pids(ledger_pid: int) -> tuple[int, int]:
    """The ledger's relay process and its encoder's."""
    relay = relay_pid(ledger_pid)
    return relay, encoder_pid(relay)


# ------------------------------------------------------------------ NATS helpers


@dataclass(frozen=True)
class StreamTail:
    """The state of a stream and its last message."""

    messages: int
    last_position: int  # the Ledger-Position header of the last message (0: none)
    payload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


async def _stream_tail(url: str, name: str) -> StreamTail:
    nc = await nats.connect(url, name="bench", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        state = (await js.stream_info(name)).state
        if not state.messages or not state.last_seq:
            return StreamTail(0, 0)
        last = await js.get_msg(name, state.last_seq)
        headers = dict(last.headers or {})
        return StreamTail(
            state.messages, int(headers.get(POSITION_HEADER, 0)), last.data or b"", headers
        )
    finally:
        await nc.close()


def stream_tail(url: str, name: str) -> StreamTail:
    return asyncio.run(_stream_tail(url, name))


async def _delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url, name="bench", connect_timeout=2)
    try:
        await nc.jetstream(timeout=5).delete_stream(name)
    finally:
        await nc.close()


def delete_stream(url: str, name: str) -> None:
    """Drop a stream the bench no longer needs (frees the server's memory and disk)."""
    asyncio.run(_delete_stream(url, name))


async def _wait_consumer_idle(url: str, stream: str, consumer: str, timeout: float) -> None:
    nc = await nats.connect(url, name="bench", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await js.consumer_info(stream, consumer)
                if not info.num_pending and not info.num_ack_pending:
                    return
            except nats.js.errors.NotFoundError:
                pass  # not created yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer {consumer} of {stream} still busy after {timeout} s")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


# -------------------------------------------------------------- relay throughput


def prefill(ledger: Ledger, events: int) -> int:
    """``events`` incident events written straight into the store; returns the last position.

    Each incident gets up to four events (reported, verified, lead assigned, action
    logged), saved ``PREFILL_BATCH`` incidents at a time, without idempotency records.
    """
    who = actors(ledger.reference)
    incidents = math.ceil(events / EVENTS_PER_INCIDENT)
    left = events
    for start in range(0, incidents, PREFILL_BATCH):
        batch: list[Incident] = []
        for _ in range(min(PREFILL_BATCH, incidents - start)):
            steps = min(EVENTS_PER_INCIDENT, left)
            left -= steps
            incident = Incident.report(
                envelope(who[REPORTER]),
                title=TITLE,
                description="",
                category=CATEGORY,
                severity=ledger.reference.default_severity,
                location={"kecamatan": KECAMATAN, "desa": "", "tps": ""},
                incident_id=uuid4(),
            )
            if steps > 1:
                incident.verify(envelope(who[COORDINATOR]), "confirmed by the desk")
            if steps > 2:
                incident.assign_lead(envelope(who[COORDINATOR]), LEAD, "")
            if steps > 3:
                incident.log_action(envelope(who[LEAD]), ACTION, incident.location)
            batch.append(incident)
        ledger.save(*batch)
    return int(ledger.recorder.max_notification_id() or 0)


def prepare_backlog(
    store_env: dict[str, str], reference: ReferenceData, key: SigningKey, events: int
) -> int:
    """A store as a ledger leaves it after running while NATS was away: ``events`` sealed
    incident events, the projections applied, a signed checkpoint; the last position."""
    ledger = Ledger(reference, env=store_env, sealer=key.sealer)
    try:
        last = prefill(ledger, events)
        projections = Projections(ledger, store_env, reference, create=True)
        try:
            projections.rebuild()
        finally:
            projections.close()
        checkpoints = Checkpoints(
            ledger.recorder, store_env, key.key, decoder=RawDecoder(ledger.mapper)
        )
        try:
            checkpoints.create()
        finally:
            checkpoints.close()
    finally:
        ledger.close()
    return last


@dataclass(frozen=True)
class Progress:
    """When the stream's message count was first seen above 0, and when it was complete."""

    first_at: float  # time.perf_counter()
    first_count: int
    done_at: float


async def _watch_stream(url: str, name: str, events: int, timeout: float) -> Progress:
    nc = await nats.connect(url, name="bench-watch", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.perf_counter() + timeout
        first_at, first_count = math.nan, 0
        while True:
            try:
                count = (await js.stream_info(name)).state.messages
            except nats.js.errors.NotFoundError:
                count = 0  # the relay has not made it yet
            now = time.perf_counter()
            if count and math.isnan(first_at):
                first_at, first_count = now, count
            if count >= events:
                return Progress(first_at, first_count, now)
            if now > deadline:
                raise RuntimeError(f"the stream held {count} of {events} after {timeout:g} s")
            await asyncio.sleep(STREAM_POLL_SECONDS)
    finally:
        await nc.close()


@dataclass(frozen=True)
class RelayRun:
    events: int
    prefill_seconds: float
    start_to_first: float  # process start -> first message on the stream
    first_count: int  # messages on the stream when it was first seen non-empty
    elapsed: float  # first message seen -> every message on the stream
    tail: StreamTail
    batch_size: int
    cpu_seconds: float  # of the ledger process, from its start to the last message
    logs: logs.LogCount

    @property
    def rate(self) -> float:
        """Events/s from the first message seen on the stream to the last."""
        counted = self.events - self.first_count
        return counted / self.elapsed if self.elapsed > 0 else math.nan


@dataclass(frozen=True)
class Backlog:
    """A store holding ``events`` incident events none of which is on the stream yet."""

    store_env: dict[str, str]
    key: SigningKey
    events: int
    last: int  # the last event's position
    prefill_seconds: float


def relay_backlog(
    store_env: dict[str, str], reference: ReferenceData, workdir: Path, events: int
) -> Backlog:
    """The store the relay's rounds start from (:func:`prepare_backlog`)."""
    key = SigningKey.create(workdir / "key")
    began = time.perf_counter()
    last = prepare_backlog(store_env, reference, key, events)
    return Backlog(store_env, key, events, last, time.perf_counter() - began)


def relay_throughput(
    backlog: Backlog, data_dir: Path, nats_url: str, stream: StreamSettings
) -> RelayRun:
    """``python -m services.ledger`` with the relay on, on ``backlog`` (its stream empty:
    a relay publishes from the stream's last message, so from the start), timed on the
    stream. A round of its own each time: the store is not changed by publishing it."""
    store_env, key, events, last = backlog.store_env, backlog.key, backlog.events, backlog.last
    watch: dict[str, Progress | BaseException] = {}

    def watch_stream() -> None:
        try:
            watch["progress"] = asyncio.run(
                _watch_stream(nats_url, stream.name, events, RELAY_TIMEOUT)
            )
        except BaseException as exc:  # handed to the bench's thread below
            watch["progress"] = exc

    watcher = threading.Thread(target=watch_stream, name="bench-watch", daemon=True)
    watcher.start()
    env = {**store_env, **stream_env(nats_url, stream), **key.env, "LEDGER_GRACE_SECONDS": "1"}
    started = time.perf_counter()
    recording: list[profile.Recording | None] = []
    store = store_name(store_env)

    def record(ledger: int) -> None:
        relay, encoder = relay_pids(ledger)
        recording.append(profile.start(f"relay-{store}-relay", relay))
        recording.append(profile.start(f"encoder-{store}-relay", encoder))

    try:
        with ledger_process(data_dir, env, started=record) as (process, _target):
            watcher.join(RELAY_TIMEOUT + 10)
            # The ledger's process, its relay's and the relay's encoder's
            # (services/ledger/relay_process.py, relay_encoder.py).
            pids = (process.pid, *relay_pids(process.pid))
            cpu_used = sum(cpu_seconds(pid) for pid in pids)
            for taken in recording:
                profile.stop(taken)
    finally:
        for taken in recording:
            profile.stop(taken)
    progress = watch.get("progress")
    if not isinstance(progress, Progress):
        raise RuntimeError(f"the relay's progress was not read: {progress!r}")
    tail = stream_tail(nats_url, stream.name)
    if tail.last_position != last or tail.messages != events:
        raise RuntimeError(
            f"the stream holds {tail.messages} messages up to position {tail.last_position}; "
            f"expected {events} up to {last}"
        )
    return RelayRun(
        events=events,
        prefill_seconds=backlog.prefill_seconds,
        start_to_first=progress.first_at - started,
        first_count=progress.first_count,
        elapsed=progress.done_at - progress.first_at,
        tail=tail,
        batch_size=RelaySettings.from_env(env).batch_size,
        cpu_seconds=cpu_used,
        logs=logs.tally([data_dir / "server.log"]),
    )


@dataclass(frozen=True)
class PlainPublish:
    """The relay's messages published again plainly, in windows of ``window`` messages
    (every message of a window sent, then its acks awaited); the first ``warmup``
    messages untimed, as the relay's first batch is."""

    events: int  # timed
    warmup: int
    rates: dict[int, float]  # events/s per window size tried
    payload_bytes: int  # of the last message
    header_count: int

    @property
    def window(self) -> int:
        return max(self.rates, key=lambda w: self.rates[w])

    @property
    def rate(self) -> float:
        """The best window's."""
        return self.rates[self.window] if self.rates else math.nan


async def _publish_in_windows(
    js: Any, messages: list[tuple[str, bytes, dict[str, str]]], window: int
) -> None:
    for start in range(0, len(messages), window):
        acks = [
            await js.publish_async(subject, data, headers=headers)
            for subject, data, headers in messages[start : start + window]
        ]
        await asyncio.gather(*acks)


async def _plain_publish(url: str, source: StreamSettings, events: int, batch: int) -> PlainPublish:
    nc = await nats.connect(url, name="bench-plain", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        sub = await js.subscribe(
            f"{source.subject_prefix}.>", stream=source.name, ordered_consumer=True
        )
        try:
            while len(messages) < events:
                msg = await sub.next_msg(timeout=10)
                headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
                for key in [k for k in headers if k.startswith("Nats-") and k != "Nats-Msg-Id"]:
                    del headers[key]  # what the server added on delivery
                messages.append((msg.subject, msg.data, headers))
        finally:
            await sub.unsubscribe()
        warmup = min(batch, len(messages) // 2)
        rates: dict[int, float] = {}
        for window in (batch, len(messages)):
            # Subjects as long as the relay's, under a first token of their own.
            first, _, rest = source.subject_prefix.partition(".")
            prefix = f"{'plain'[: len(first)]:x<{len(first)}}.{rest}"
            name = f"{source.name}_PLAIN_{window}"
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[f"{prefix}.>"],
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    duplicate_window=source.duplicate_window_seconds,
                )
            )
            offset = len(source.subject_prefix)
            outgoing = [(prefix + s[offset:], d, h) for s, d, h in messages]
            await _publish_in_windows(js, outgoing[:warmup], window)
            started = time.perf_counter()
            await _publish_in_windows(js, outgoing[warmup:], window)
            rates[window] = (len(outgoing) - warmup) / (time.perf_counter() - started)
            await js.delete_stream(name)
        _, payload, headers = messages[-1]
        return PlainPublish(len(messages) - warmup, warmup, rates, len(payload), len(headers))
    finally:
        await nc.close()


def plain_publish(url: str, source: StreamSettings, events: int, batch: int) -> PlainPublish:
    """In a child process: the relay's messages on ``source`` published again, plainly, in
    windows of the relay's batch and all at once (the faster counts)."""
    run: PlainPublish = in_child(_plain_publish_sync, url, source, events, batch)
    return run


def _plain_publish_sync(url: str, source: StreamSettings, events: int, batch: int) -> PlainPublish:
    return asyncio.run(_plain_publish(url, source, events, batch))


def in_child(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a fresh (spawned) child process; its result."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


# ---------------------------------------------------------------- end to end


@dataclass(frozen=True)
class SenderLoad:
    """What the sender process does: LogActions paced at ``rate`` from ``clients`` threads."""

    ledger: str
    md: Metadata
    clients: int
    mode: str
    rate: float
    warmup: float
    duration: float
    assigned: list[list[list[Any]]]  # per client: [incident name, version]


@dataclass
class Sent:
    commands: Result  # latency from each command's scheduled send time
    at: dict[str, float]  # request id -> when its call began (time.time())


def _log_action_worker(
    stub: api_grpc.LedgerServiceStub,
    md: Metadata,
    incidents: list[list[Any]],
    sent: dict[str, float],
) -> Worker:
    position = [0]

    def once() -> object:
        incident = incidents[position[0] % len(incidents)]
        position[0] += 1
        request_id = uuid4().hex
        at = time.time()
        result = stub.LogAction(
            api.LogActionRequest(
                request_id=request_id,
                name=incident[0],
                expected_version=incident[1],
                action=ACTION,
            ),
            metadata=md,
            timeout=30,
        ).result
        incident[1] = result.version
        sent[request_id] = at
        return result

    return once


def _send(load: SenderLoad) -> Sent:
    """In the sender process: a warm-up, then the measured paced run."""
    sent: dict[str, float] = {}
    with Channels(load.ledger, load.clients, load.mode) as channels:
        workers = [
            _log_action_worker(api_grpc.LedgerServiceStub(c), load.md, load.assigned[n], sent)
            for n, c in enumerate(channels.for_thread)
        ]
        open_loop(workers, rate=load.rate, duration=load.warmup)
        sent.clear()
        commands = open_loop(workers, rate=load.rate, duration=load.duration)
    return Sent(commands, sent)


# What a collector keeps of each event: request id -> (receipt, record_time), time.time().
Arrivals = dict[str, tuple[float, float]]


def _subscribe(
    target: str, md: Metadata, arrivals: Arrivals, errors: list[str], ready: Any
) -> Callable[[], None]:
    """A gRPC Subscribe stream read by a thread; returns how to stop it."""
    channel = grpc.insecure_channel(target)
    call = napi_grpc.NotifierServiceStub(channel).Subscribe(
        napi.SubscribeRequest(heartbeat_seconds=5), metadata=md
    )

    def read() -> None:
        try:
            for response in call:
                now = time.time()
                if response.HasField("notification"):
                    event = response.notification.event
                    recorded = event.record_time.seconds + event.record_time.nanos / 1e9
                    arrivals[event.request_id] = (now, recorded)
                ready.set()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors.append(f"{exc.code().name}: {exc.details()}")
        finally:
            ready.set()

    reader = threading.Thread(target=read, name="subscriber", daemon=True)
    reader.start()

    def stop() -> None:
        call.cancel()  # type: ignore[no-untyped-call]
        reader.join(10)
        channel.close()

    return stop


def _receive_webhooks(
    port: int, arrivals: Arrivals, errors: list[str], ready: Any
) -> Callable[[], None]:
    """An HTTP endpoint on loopback taking the notifier's webhook POSTs (kept-alive
    connections, as a receiver behind any common HTTP server); returns how to stop it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            now = time.time()
            try:
                event = json.loads(body)["event"]
                stamp = Timestamp()
                stamp.FromJsonString(event["record_time"])
                arrivals[event["request_id"]] = (now, stamp.seconds + stamp.nanos / 1e9)
            except (ValueError, KeyError) as exc:
                errors.append(f"unreadable delivery: {type(exc).__name__}: {exc}")
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
    ready.set()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def _collect(kind: str, target: str, md: Metadata, ready: Any, expect: Any, out: Any) -> None:
    """A collector process: subscriber or webhook receiver. Once told which request ids
    to expect (and for how long), it sends back their arrivals and any error."""
    arrivals: Arrivals = {}
    errors: list[str] = []
    if kind == "subscriber":
        stop = _subscribe(target, md, arrivals, errors, ready)
    else:
        stop = _receive_webhooks(int(target), arrivals, errors, ready)
    wanted, drain = expect.get()
    deadline = time.monotonic() + drain
    while not errors and time.monotonic() < deadline:
        if all(rid in arrivals for rid in wanted):
            break
        time.sleep(0.05)
    stop()
    out.put(({rid: arrivals[rid] for rid in wanted if rid in arrivals}, "; ".join(errors)))


class Collector:
    """A collector process (see _collect), started and waited on from the bench."""

    def __init__(self, kind: str, target: str, md: Metadata) -> None:
        context = multiprocessing.get_context("spawn")
        self.kind = kind
        self._ready = context.Event()
        self._expect: Any = context.Queue()
        self._out: Any = context.Queue()
        self._process = context.Process(
            target=_collect,
            args=(kind, target, md, self._ready, self._expect, self._out),
            name=f"bench-{kind}",
            daemon=True,
        )
        self._process.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the {self.kind} process did not start")

    def results(self, wanted: list[str], drain: float) -> tuple[Arrivals, str]:
        self._expect.put((wanted, drain))
        arrivals, error = self._out.get(timeout=drain + 30)
        return arrivals, error

    def close(self) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@dataclass
class Delivery:
    """One receiving end's figures over the measured sends."""

    from_record: Result  # receipt - record_time
    from_send: Result  # receipt - the client's send
    received: int
    error: str


def delivery(sent: Sent, arrivals: Arrivals, error: str) -> Delivery:
    from_record: list[float] = []
    from_send: list[float] = []
    for rid, at in sent.at.items():
        got = arrivals.get(rid)
        if got is not None:
            from_record.append(got[0] - got[1])
            from_send.append(got[0] - at)
    elapsed = sent.commands.elapsed
    return Delivery(
        Result(elapsed, from_record), Result(elapsed, from_send), len(from_record), error
    )


@dataclass
class EndToEndRun:
    commands: Result  # the paced LogActions, latency from their scheduled send time
    offered: int  # sends scheduled in the measured run
    subscriber: Delivery
    webhook: Delivery
    prepared: int
    ledger_cores: float  # CPU seconds per second of each process, over the measured run
    relay_cores: float
    encoder_cores: float
    notifier_cores: float
    logs: logs.LogCount = field(default_factory=logs.LogCount)
    # Split at the stream (a figure): record_time -> stored on the stream, and stored ->
    # each receiver, from each message's storage time on the stream.
    to_stream: Result = field(default_factory=lambda: Result(0.0, []))
    stream_to_subscriber: Result = field(default_factory=lambda: Result(0.0, []))
    stream_to_webhook: Result = field(default_factory=lambda: Result(0.0, []))

    @property
    def sent(self) -> int:
        return self.commands.calls

    @property
    def late_share(self) -> float:
        return self.commands.late_sends / self.offered if self.offered else 0.0


@contextmanager
def notifier_process(data_dir: Path, nats_url: str, stream: StreamSettings) -> Iterator[Any]:
    """``python -m services.notifier`` as ``make run`` configures it (SQLite store in the
    data dir), on a free port, webhooks to loopback allowed; yields (process, address)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "NOTIFIER_"))},
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
        **stream_env(nats_url, stream),
        "NOTIFIER_LISTEN": f"127.0.0.1:{port}",
        "NOTIFIER_CONSUMER": NOTIFIER_CONSUMER,
        "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_LOG_FORMAT": "json",
    }
    with service_process("services.notifier", env, port, data_dir / "notifier.log") as running:
        yield running


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def end_to_end(
    workdir: Path,
    store_env: dict[str, str],
    reference: ReferenceData,
    nats_url: str,
    stream: StreamSettings,
    clients: int,
    mode: str,
    rate: float,
    warmup: float,
    duration: float,
    per_client: int,
    drain: float = DRAIN_SECONDS,
) -> EndToEndRun:
    """The ledger (its relay in a child process) and the notifier in processes of their
    own, a sender, a subscriber and a webhook receiver in three more."""
    data_dir = workdir / "data"
    key = SigningKey.create(workdir / "key")
    ledger = Ledger(reference, env=store_env, sealer=key.sealer)
    try:
        ids = prepare_assigned(ledger, clients * per_client)
        last = int(ledger.recorder.max_notification_id() or 0)
    finally:
        ledger.close()
    env = {**store_env, **stream_env(nats_url, stream), **key.env, "LEDGER_GRACE_SECONDS": "1"}
    with ExitStack() as stack:
        ledger_proc, ledger_target = stack.enter_context(ledger_process(data_dir, env))
        wait_until(lambda: _tail_position(nats_url, stream.name) >= last, 60, "the relay's set-up")
        notifier_proc, notifier_target = stack.enter_context(
            notifier_process(data_dir, nats_url, stream)
        )
        asyncio.run(_wait_consumer_idle(nats_url, stream.name, NOTIFIER_CONSUMER, 60))
        tokens = read_tokens(data_dir)
        subscriber = Collector("subscriber", notifier_target, tokens[COORDINATOR])
        stack.callback(subscriber.close)
        port = free_port()
        receiver = Collector("webhook", str(port), ())
        stack.callback(receiver.close)
        subscriber.wait_ready()
        receiver.wait_ready()
        with grpc.insecure_channel(notifier_target) as channel:
            napi_grpc.NotifierServiceStub(channel).CreateWebhook(
                napi.CreateWebhookRequest(
                    request_id=uuid4().hex,
                    url=f"http://127.0.0.1:{port}/hook",
                    secret=WEBHOOK_SECRET,
                ),
                metadata=tokens[COORDINATOR],
                timeout=10,
            )
        load = SenderLoad(
            ledger=ledger_target,
            md=tokens[LEAD],
            clients=clients,
            mode=mode,
            rate=rate,
            warmup=warmup,
            duration=duration,
            assigned=[[[f"incidents/{i}", 3] for i in ids[n::clients]] for n in range(clients)],
        )
        relay, encoder = relay_pids(ledger_proc.pid)
        pids = (ledger_proc.pid, relay, encoder, notifier_proc.pid)
        cpu = [cpu_seconds(pid) for pid in pids]
        stream_before = stream_last_seq(nats_url, stream.name)
        started = time.perf_counter()
        store = store_name(store_env)
        with (
            profile.profiled(f"ledger-{store}-e2e", ledger_proc.pid),
            profile.profiled(f"relay-{store}-e2e", relay),
            profile.profiled(f"encoder-{store}-e2e", encoder),
            profile.profiled(f"notifier-{store}-e2e", notifier_proc.pid),
        ):
            sent: Sent = in_child(_send, load)
        seconds = time.perf_counter() - started
        ledger_cores, relay_cores, encoder_cores, notifier_cores = (
            (cpu_seconds(pid) - before) / seconds for pid, before in zip(pids, cpu, strict=True)
        )
        wanted = list(sent.at)
        got_sub = subscriber.results(wanted, drain)
        got_hook = receiver.results(wanted, drain)
        stored = stored_times(nats_url, stream.name, stream_before)
    to_stream, stream_to_subscriber = split_at_stream(sent, stored, got_sub[0])
    stream_to_webhook = split_at_stream(sent, stored, got_hook[0])[1]
    return EndToEndRun(
        commands=sent.commands,
        offered=int(rate * duration),
        subscriber=delivery(sent, *got_sub),
        webhook=delivery(sent, *got_hook),
        prepared=len(ids),
        ledger_cores=ledger_cores,
        relay_cores=relay_cores,
        encoder_cores=encoder_cores,
        notifier_cores=notifier_cores,
        logs=logs.tally([data_dir / "server.log", data_dir / "notifier.log"]),
        to_stream=to_stream,
        stream_to_subscriber=stream_to_subscriber,
        stream_to_webhook=stream_to_webhook,
    )


async def _stored_times(url: str, name: str, after: int) -> dict[str, float]:
    """Each relayed event's time of storage on the stream (the server's clock, this
    machine's), by its request id, for the messages after stream sequence ``after``."""
    nc = await nats.connect(url, name="bench-split", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        last = (await js.stream_info(name)).state.last_seq or 0
        stored: dict[str, float] = {}
        if last <= after:
            return stored
        sub = await js.subscribe(
            "",
            stream=name,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            ),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                event = pb.EventNotification.FromString(msg.data).event
                stored[event.request_id] = msg.metadata.timestamp.timestamp()
                if msg.metadata.sequence.stream >= last:
                    return stored
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def _stream_last_seq(url: str, name: str) -> int:
    nc = await nats.connect(url, name="bench-split", connect_timeout=2)
    try:
        return int((await nc.jetstream(timeout=5).stream_info(name)).state.last_seq or 0)
    finally:
        await nc.close()


def stream_last_seq(url: str, name: str) -> int:
    return asyncio.run(_stream_last_seq(url, name))


def stored_times(url: str, name: str, after: int) -> dict[str, float]:
    return asyncio.run(_stored_times(url, name, after))


def split_at_stream(
    sent: Sent, stored: dict[str, float], arrivals: Arrivals
) -> tuple[Result, Result]:
    """(record_time -> stored on the stream, stored -> received) over the measured sends."""
    to_stream: list[float] = []
    from_stream: list[float] = []
    for rid in sent.at:
        got, at = arrivals.get(rid), stored.get(rid)
        if got is None or at is None:
            continue
        to_stream.append(at - got[1])
        from_stream.append(got[0] - at)
    elapsed = sent.commands.elapsed
    return Result(elapsed, to_stream), Result(elapsed, from_stream)


def _tail_position(url: str, name: str) -> int:
    try:
        return stream_tail(url, name).last_position
    except nats.js.errors.NotFoundError:
        return 0


# ---------------------------------------------------------------- NATS alone


@dataclass
class NatsRun:
    publish: Result  # publish call -> ack
    ordered: Result  # publish call -> ordered push consumer
    pull: Result  # publish call -> durable pull consumer (fetch 100)
    payload_bytes: int
    header_count: int


NATS_STREAM = "BENCH_NATS"
NATS_PREFIX = "bench.nats"


async def _nats_latency(
    url: str,
    rate: float,
    warmup: float,
    duration: float,
    payload: bytes,
    headers: dict[str, str],
) -> NatsRun:
    nc = await nats.connect(url, name="bench", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(
            StreamConfig(
                name=NATS_STREAM,
                subjects=[f"{NATS_PREFIX}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=StreamSettings().duplicate_window_seconds,
            )
        )
        # As the notifier's live subscriptions (engine.Engine._subscribe) ...
        ordered = await js.subscribe(
            f"{NATS_PREFIX}.>",
            stream=NATS_STREAM,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1),
            pending_msgs_limit=1000,
        )
        # ... and its durable webhook consumer (engine.Engine._consume).
        pull = await js.pull_subscribe(
            f"{NATS_PREFIX}.>",
            durable="bench-pull",
            stream=NATS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=10,
                max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL,
            ),
        )
        slots = int(rate * (warmup + duration))
        first_measured = int(rate * warmup)
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}
        got_ordered: dict[int, float] = {}
        got_pull: dict[int, float] = {}

        def slot_of(msg: Msg) -> int:
            return int((msg.headers or {})["Bench-Slot"])

        async def read_ordered() -> None:
            while True:
                try:
                    msg = await ordered.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                got_ordered[slot_of(msg)] = time.perf_counter()

        async def read_pull() -> None:
            while True:
                try:
                    msgs = await pull.fetch(100, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                now = time.perf_counter()
                for msg in msgs:
                    got_pull[slot_of(msg)] = now
                for msg in msgs:
                    await msg.ack()

        readers = [asyncio.create_task(read_ordered()), asyncio.create_task(read_pull())]
        interval = 1.0 / rate
        start = time.perf_counter() + 0.1
        for slot in range(slots):
            wait = start + slot * interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            subject = f"{NATS_PREFIX}.{KECAMATAN}.{CATEGORY}.action_logged"
            msg_headers = {**headers, "Nats-Msg-Id": f"bench-{slot}", "Bench-Slot": str(slot)}
            sent[slot] = time.perf_counter()
            await js.publish(subject, payload, headers=msg_headers)
            acked[slot] = time.perf_counter()
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + 10
        while (len(got_ordered) < slots or len(got_pull) < slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await ordered.unsubscribe()
        await js.delete_stream(NATS_STREAM)

        def latencies(ends: dict[int, float]) -> Result:
            measured = range(first_measured, slots)
            values = [ends[s] - sent[s] for s in measured if s in ends]
            return Result(elapsed * duration / (warmup + duration), values)

        return NatsRun(
            latencies(acked),
            latencies(got_ordered),
            latencies(got_pull),
            len(payload),
            len({**headers, "Nats-Msg-Id": "", "Bench-Slot": ""}),
        )
    finally:
        await nc.close()


def nats_latency(
    url: str,
    rate: float,
    warmup: float,
    duration: float,
    payload: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> NatsRun:
    """In a child process: JetStream publish -> consume at ``rate`` messages/s, with the
    relay's message shape."""
    run: NatsRun = in_child(
        _nats_latency_sync, url, rate, warmup, duration, payload or os.urandom(700), headers or {}
    )
    return run


def _nats_latency_sync(
    url: str, rate: float, warmup: float, duration: float, payload: bytes, headers: dict[str, str]
) -> NatsRun:
    return asyncio.run(_nats_latency(url, rate, warmup, duration, payload, headers))
