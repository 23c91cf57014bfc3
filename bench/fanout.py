"""The fan-out: relay throughput, ledger commit -> gRPC subscriber latency, NATS alone.

All three run against a nats-server the bench starts itself (services.common.natsserver,
free loopback ports, JetStream on file storage in the bench's temporary directory).

- Relay throughput: a fresh store pre-filled with incident events straight through
  the application (raw saves, no gRPC), then a Relay (services.ledger.relay) started
  on a fresh Ledger, timed until the stream's last message carries the store's
  last position.
- End to end: the real ledger (services.ledger.server.build, relay on) and the real
  notifier (services.notifier.server.build) in this process; a child process sends
  LogAction commands at a fixed rate and reads a gRPC Subscribe stream from the
  notifier. Latency of an event = its receipt by the subscriber minus its
  ``record_time`` (the ledger's clock, when the command created the event), and
  minus the moment the client began the command's call (the client's clock); same
  machine, one wall clock.
- NATS alone: JetStream publish (awaiting the ack) to a test stream at the same rate,
  read by an ordered push consumer configured as the notifier's live subscriptions
  (and, at the same time, by a durable pull consumer fetching batches of 100, as the
  notifier's webhook consumer does).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import grpc
import nats
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

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
    actors,
    envelope,
    free_port,
    ledger_settings,
    prepare_assigned,
    read_tokens,
    service_process,
)
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.auth import generate_dev_credentials
from services.common.config import PROJECT_ROOT, RelaySettings, StreamSettings
from services.common.reference import ReferenceData
from services.ledger.application import Ledger
from services.ledger.domain.incident import Incident
from services.ledger.relay import Relay
from services.ledger.relay_messages import POSITION_HEADER
from services.ledger.server import LedgerServer, build

EVENTS_PER_INCIDENT = 4  # reported, verified, lead assigned, one action logged
PREFILL_BATCH = 250  # incidents per save (1,000 events)
RELAY_TIMEOUT = 300.0  # seconds the relay may take before the bench gives up
NOTIFIER_CONSUMER = "notifier"
DRAIN_SECONDS = 10.0  # how long the subscriber may still take after the last send


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


# ------------------------------------------------------------------ service logs


class LogTally(logging.Filter):
    """Counts the log records that reach the root handlers, and drops them."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg: object = record.msg
        if isinstance(msg, dict):  # structlog's event dict (services.common.logging)
            name, detail = str(msg.get("event", "")), str(msg.get("error", ""))
        else:
            name, detail = record.getMessage()[:80], ""
        key = f"{record.levelname.lower()} {name}"
        self.counts[key] += 1
        self.samples.setdefault(key, detail[:90])
        return False

    def lines(self) -> list[str]:
        return [
            f"{key} x{n:,}" + (f" ({self.samples[key]})" if self.samples[key] else "")
            for key, n in self.counts.most_common(4)
        ]


@contextmanager
def tallied_logs() -> Iterator[LogTally]:
    """The services' log lines counted instead of printed, while the block runs."""
    tally = LogTally()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(tally)
    try:
        yield tally
    finally:
        for handler in handlers:
            handler.removeFilter(tally)


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


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


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


@dataclass(frozen=True)
class RelayRun:
    events: int
    prefill_seconds: float
    first_publish_seconds: float  # start() -> first batch acknowledged by the stream
    elapsed: float  # start() -> the last position acknowledged by the stream
    stream_messages: int
    tail: StreamTail
    batch_size: int

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        """Events/s after the first batch (connect, stream set-up and first read excluded)."""
        steady = self.elapsed - self.first_publish_seconds
        return (self.events - self.batch_size) / steady if steady > 0 else math.nan


def relay_throughput(
    store_env: dict[str, str],
    reference: ReferenceData,
    nats_url: str,
    stream: StreamSettings,
    events: int,
) -> RelayRun:
    """Pre-fill, then time a fresh Relay from start() until the stream has the last position."""
    ledger = Ledger(reference, env=store_env)
    began = time.perf_counter()
    try:
        last = prefill(ledger, events)
    finally:
        ledger.close()
    prefill_seconds = time.perf_counter() - began
    # The relay on a Ledger of its own, as after a restart: nothing cached in memory.
    ledger = Ledger(reference, env=store_env)
    settings = RelaySettings(nats_url=nats_url, stream=stream)
    relay = Relay(ledger, settings, store_env)
    try:
        started = time.perf_counter()
        relay.start()
        first = math.nan
        while relay.status.position < last:
            now = time.perf_counter()
            if math.isnan(first) and relay.status.published:
                first = now - started
            if now - started > RELAY_TIMEOUT:
                raise RuntimeError(
                    f"the relay reached position {relay.status.position} of {last} in "
                    f"{RELAY_TIMEOUT:g} s (last error: {relay.status.last_error or 'none'})"
                )
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        if math.isnan(first):
            first = elapsed
    finally:
        relay.stop()
        ledger.close()
    tail = stream_tail(nats_url, stream.name)
    if tail.last_position != last or tail.messages != events:
        raise RuntimeError(
            f"the stream holds {tail.messages} messages up to position {tail.last_position}; "
            f"expected {events} up to {last}"
        )
    delete_stream(nats_url, stream.name)
    return RelayRun(
        events, prefill_seconds, first, elapsed, tail.messages, tail, settings.batch_size
    )


# ---------------------------------------------------------------- end to end


@dataclass(frozen=True)
class EndToEndLoad:
    """What the child process does: subscribe at the notifier, send paced LogActions."""

    ledger: str
    notifier: str
    tokens: dict[str, Metadata]
    clients: int
    mode: str
    rate: float
    warmup: float
    duration: float
    assigned: list[list[list[Any]]]  # per client: [incident name, version]
    drain_timeout: float = DRAIN_SECONDS


@dataclass
class EndToEndRun:
    commands: Result  # the paced LogActions, latency from their scheduled send time
    from_record: Result  # subscriber receipt - record_time
    from_send: Result  # subscriber receipt - the client's send
    sent: int
    received: int
    subscriber_error: str
    prepared: int = 0

    @property
    def missing(self) -> int:
        return self.sent - self.received


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


def _end_to_end_client(load: EndToEndLoad) -> EndToEndRun:
    """In the child: one Subscribe stream read by a thread, LogActions from ``clients`` threads."""
    received: dict[str, tuple[float, float]] = {}  # request id -> (receipt, record_time)
    errors: list[str] = []
    first = threading.Event()
    with grpc.insecure_channel(load.notifier) as channel:
        call = napi_grpc.NotifierServiceStub(channel).Subscribe(
            napi.SubscribeRequest(heartbeat_seconds=5), metadata=load.tokens[COORDINATOR]
        )

        def read() -> None:
            try:
                for response in call:
                    now = time.time()
                    if response.HasField("notification"):
                        event = response.notification.event
                        recorded = event.record_time.seconds + event.record_time.nanos / 1e9
                        received[event.request_id] = (now, recorded)
                    first.set()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    errors.append(f"{exc.code().name}: {exc.details()}")
            finally:
                first.set()

        reader = threading.Thread(target=read, name="subscriber", daemon=True)
        reader.start()
        if not first.wait(15) or errors:
            raise RuntimeError(f"the subscription did not start: {errors or 'no heartbeat'}")
        sent: dict[str, float] = {}
        with Channels(load.ledger, load.clients, load.mode) as channels:
            workers = [
                _log_action_worker(
                    api_grpc.LedgerServiceStub(c), load.tokens[LEAD], load.assigned[n], sent
                )
                for n, c in enumerate(channels.for_thread)
            ]
            open_loop(workers, rate=load.rate, duration=load.warmup)
            sent.clear()
            commands = open_loop(workers, rate=load.rate, duration=load.duration)
        deadline = time.monotonic() + load.drain_timeout
        while not errors and time.monotonic() < deadline:
            if all(rid in received for rid in list(sent)):
                break
            time.sleep(0.05)
        call.cancel()  # type: ignore[no-untyped-call]
        reader.join(10)
    from_record: list[float] = []
    from_send: list[float] = []
    for rid, at in sent.items():
        got = received.get(rid)
        if got is not None:
            from_record.append(got[0] - got[1])
            from_send.append(got[0] - at)
    return EndToEndRun(
        commands,
        Result(commands.elapsed, from_record),
        Result(commands.elapsed, from_send),
        len(sent),
        len(from_record),
        "; ".join(errors),
    )


def run_end_to_end_client(load: EndToEndLoad) -> EndToEndRun:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: EndToEndRun = pool.apply(_end_to_end_client, (load,))
    return result


@contextmanager
def notifier_process(data_dir: Path, nats_url: str, stream: StreamSettings) -> Iterator[str]:
    """``python -m services.notifier`` as ``make run`` configures it (SQLite store in the
    data dir), on a free port; yields its address."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "NOTIFIER_"))},
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
        "NATS_URL": nats_url,
        "NOTIFIER_LISTEN": f"127.0.0.1:{port}",
        "NOTIFIER_CONSUMER": NOTIFIER_CONSUMER,
        "LEDGER_STREAM": stream.name,
        "LEDGER_STREAM_SUBJECT_PREFIX": stream.subject_prefix,
        "LEDGER_STREAM_CHECKPOINT_SUBJECT": stream.checkpoint_subject,
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_LOG_FORMAT": "json",
    }
    with service_process("services.notifier", env, port, data_dir / "notifier.log") as (
        _process,
        target,
    ):
        yield target


def end_to_end(
    data_dir: Path,
    store_env: dict[str, str],
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
    """The ledger (relay on) in this process, the notifier in its own (as deployed), and the
    client in a third."""
    settings = replace(
        ledger_settings(data_dir, store_env),
        relay=RelaySettings(nats_url=nats_url, stream=stream),
    )
    reference = ReferenceData.load(settings.reference_file)
    generate_dev_credentials(data_dir / "credentials", reference.agencies)
    ledger: LedgerServer = build(settings)
    stack = ExitStack()
    try:
        relay = ledger.relay
        if relay is None:
            raise RuntimeError("the ledger started without its relay")
        ids: list[UUID] = prepare_assigned(ledger.ledger, clients * per_client)
        relay.wake()
        last = int(ledger.ledger.recorder.max_notification_id() or 0)
        wait_until(lambda: relay.status.position >= last, 60, "the relay to publish the set-up")
        notifier = stack.enter_context(notifier_process(data_dir, nats_url, stream))
        asyncio.run(_wait_consumer_idle(nats_url, stream.name, NOTIFIER_CONSUMER, 60))
        load = EndToEndLoad(
            ledger=f"127.0.0.1:{ledger.port}",
            notifier=notifier,
            tokens=read_tokens(data_dir),
            clients=clients,
            mode=mode,
            rate=rate,
            warmup=warmup,
            duration=duration,
            assigned=[[[f"incidents/{i}", 3] for i in ids[n::clients]] for n in range(clients)],
        )
        run = run_end_to_end_client(load)
        run.prepared = len(ids)
    finally:
        stack.close()
        ledger.stop(1.0)
    delete_stream(nats_url, stream.name)
    return run


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
    """JetStream publish -> consume at ``rate`` messages/s, with the relay's message shape."""
    return asyncio.run(
        _nats_latency(url, rate, warmup, duration, payload or os.urandom(700), headers or {})
    )
