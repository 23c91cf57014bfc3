"""The notifier's NATS side, on an asyncio loop of its own thread.

- The durable consumer reads the ledger's stream with explicit acks. For each
  event it stores one delivery job per matching webhook, then acknowledges: a
  crash before the ack means the message comes again, and the job's unique key
  (webhook, stream sequence) makes the second copy a no-op.
- Notifier replicas share that consumer, so each takes some of the messages and
  stores their jobs at its own pace. A job is delivered only once every earlier
  stream message is handled: the consumer's ack floor (every message up to it is
  acknowledged, so its jobs are stored, by whichever replica) reaches the job's
  stream sequence minus one. A batch's acks are confirmed (the last one's
  confirmation, after the others on the same connection, covers them), so that a
  replica sees its own acks in the floor it reads next. A message that a replica
  took and never acknowledged (killed, frozen, cut off) holds the floor until
  ``ack_wait`` passes and another replica takes it: webhook deliveries of the
  events after it wait that long (live subscriptions do not).
- The delivery worker POSTs due jobs to their webhooks, signed, with retries,
  exponential backoff with jitter, and a dead letter after the last attempt. Each
  endpoint has a small cap on concurrent POSTs, so a slow or dead endpoint never
  holds up the others; a job is claimed (leased) only when its endpoint has a free
  slot, so its lease never runs out while it waits its turn, and the slot is free again
  once the endpoint has answered (the outcome is recorded after). Every attempt ends
  in an outcome (delivered, retry, dead letter), whatever goes wrong in it, and its
  target is checked (:mod:`services.notifier.targets`) before each request.
- Live subscriptions (gRPC Subscribe) each read the stream with an ordered
  consumer from their cursor; the gRPC threads pull from them.

The gRPC servicer runs in the server's threads and reaches this loop through
:meth:`Engine.call`.

Beside this module: the live subscriptions (:mod:`services.notifier.live`), the webhooks
as this replica last read them (:mod:`services.notifier.webhook_cache`), and the cursors,
webhook body and signature (:mod:`services.notifier.messages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import aiohttp
import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from incidentledger.v1 import incident_pb2 as pb
from services.common.config import NotifierSettings, nats_servers
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.failurelog import FailureLog
from services.common.natsconn import connect_options
from services.common.natslink import NatsLink
from services.common.reference import ReferenceData
from services.notifier.filters import EventFilter
from services.notifier.live import LiveSubscription
from services.notifier.messages import (
    SIGNATURE_HEADER,
    EventJson,
    decode_cursor,
    sign,
    stream_epoch,
    webhook_body,
    with_delivery_id,
)
from services.notifier.outcomes import OutcomeWriter
from services.notifier.store import Job, LogEntry, NewJob, NotifierStore, Outcome, WebhookRow
from services.notifier.targets import (
    TargetPolicy,
    TargetRefusedError,
    parse_target,
    pinned_url,
)
from services.notifier.webhook_cache import CREATED_MARGIN_SECONDS, Webhook, WebhookCache

log = structlog.get_logger(__name__)

T = TypeVar("T")

PENDING_LIMIT = 20_000  # buffered per live subscriber before the client library drops
CONSUMER_INFO_SECONDS = 5.0  # how often the durable consumer's backlog is read (metrics)
FETCH_SECONDS = 1.0  # a fetch that finds nothing returns after this (normal when idle)
FETCH_BATCH = 100  # messages fetched at once while the consumer has a backlog
RESTART_BACKOFF = (0.2, 5.0)  # first and longest pause before a failed task starts again
LEASE_TIMEOUTS = 3  # a job's lease, in endpoint timeouts (one attempt takes at most one)
ACK_SECONDS = 5.0  # the server confirms an ack within this (on loopback: about 1 ms)
#: The longest answer body read to keep its connection: the body itself is not wanted.
MAX_ANSWER_READ = 64 * 1024
FLOOR_POLL_SECONDS = 0.05  # the floor is read this often while stored jobs wait for it
FLOOR_REFRESH_SECONDS = 1.0  # otherwise (jobs another replica stored, retries), this often
FLOOR_TIMEOUT = 2.0  # a floor reading that takes longer is skipped (the last one stands)
# A Subscribe that finds no event stream waits this long for it: on a first start the
# ledger's relay makes it when it first connects to NATS, about a second after the
# services start (a subscriber such as the situation room asks at once).
STREAM_WAIT_SECONDS = 5.0
STREAM_WAIT_POLL_SECONDS = 0.1
# How old the stream's epoch (its creation time) that idle live subscriptions compare theirs
# with may be: read again at most this often, once for all of them.
EPOCH_CHECK_SECONDS = 5.0

Healthy = Callable[[], None]  # a supervised task reports that it works (its backoff resets)

DeliveryCounter = Callable[[str, str], None]  # (channel, outcome), as in the delivery log


@dataclass
class EngineStatus:
    """What the metrics read; written on the engine's loop."""

    nats_connected: bool = False
    consumer_pending: int | None = None  # stream messages not yet delivered to the consumer
    consumer_ack_pending: int | None = None  # delivered, not yet acknowledged
    handled_through: int = 0  # the consumer's ack floor: every message up to it is handled
    restarts: Counter[str] = field(default_factory=Counter)  # supervised tasks restarted


PING_INTERVAL_SECONDS = 2
MAX_OUTSTANDING_PINGS = 3


class Engine:
    def __init__(
        self,
        settings: NotifierSettings,
        store: NotifierStore,
        reference: ReferenceData,
        count_delivery: DeliveryCounter | None = None,
        on_nats_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_nats_change(connected)``: the connection to NATS came up or went down (the
        notifier's health follows it); called on the engine's loop."""
        self._settings = settings
        self._count_delivery = count_delivery
        self._store = store
        self._reference = reference
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="notifier-io", daemon=True)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Only a store shared by replicas (PostgreSQL) sees webhooks made elsewhere.
        self._webhooks = WebhookCache(shared=store.shared)
        self._wake_delivery: asyncio.Event | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._stopping = False
        self._closed = False
        self._submit_lock = threading.Lock()
        self._inflight: Counter[str] = Counter()  # POSTs claimed and not yet answered, per webhook
        self._targets = TargetPolicy(settings.webhooks.allow_networks)
        self._tls = settings.webhooks.ssl_context()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._outcomes = OutcomeWriter(store)
        self._slow_consumer_drops = 0
        self._jobs_through = 0  # the last stream sequence this replica stored jobs for
        self._floor_read_at = 0.0  # when the ack floor was last read (monotonic)
        self.consumer_ready = threading.Event()
        self.status = EngineStatus()
        self._on_nats_change = on_nats_change
        self.nats_link = NatsLink("notifier", self._nats_changed)
        self.live: set[LiveSubscription] = set()  # open live subscriptions
        # The stream's epoch as last read, and when (monotonic): see stream_epoch_now.
        self._epoch_now: str | None = None
        self._epoch_read_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()
        self.call(self._start(), 30)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> bool:
        return not self._closed

    def begin_shutdown(self) -> None:
        """Live subscriptions end at their next step; consuming stops."""
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        with self._submit_lock:
            self._closed = True  # from here on, call() refuses: nothing is left unawaited
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a coroutine on the engine's loop from another thread and wait for it.

        One still running when the engine stops is cancelled there: the caller is told
        that the notifier is shutting down, as one that comes after the stop is."""
        with self._submit_lock:
            if self._closed:
                coroutine.close()
                raise Unavailable("the notifier is shutting down", reason="SHUTTING_DOWN")
            future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
        except CancelledError:
            if not self._stopping:
                raise
            raise Unavailable("the notifier is shutting down", reason="SHUTTING_DOWN") from None

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        self._wake_delivery = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._tasks = [
            asyncio.create_task(self._supervise("consumer", self._consume)),
            asyncio.create_task(self._supervise("delivery", self._deliver_due)),
            asyncio.create_task(self._outcomes.run()),
        ]

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting first if needed (NATS may start later)."""
        if self._connect_lock is None:
            raise RuntimeError("the engine was not started")
        async with self._connect_lock:
            if self._js is None:
                self._nc = await self._connect()
                if self._nc.is_connected:
                    self.nats_link.up()
                self._js = self._nc.jetstream(timeout=5)
            return self._js

    def _nats_changed(self, connected: bool) -> None:
        self.status.nats_connected = connected
        if self._on_nats_change is not None:
            self._on_nats_change(connected)

    async def _connect(self) -> NatsClient:
        # Logged by the link: one line down, a reminder while down, one line back.
        async def disconnected() -> None:
            self.nats_link.down(self._stopping)

        async def reconnected() -> None:
            self.nats_link.up()

        async def error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self._slow_consumer_drops += 1  # summarised, not logged one by one
                return
            self.nats_link.error(exc)

        client: NatsClient = await nats.connect(
            nats_servers(self._settings.nats_url),  # reconnects to another node of a cluster
            name="incident-notifier",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            # A node that is frozen or cut off keeps the TCP connection open and answers
            # nothing: the client's pings find it out (2 s apart, 3 unanswered), then it
            # reconnects to another node. The library's default (120 s, 2) left a notifier
            # delivering nothing for minutes.
            ping_interval=PING_INTERVAL_SECONDS,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **connect_options(self._settings.nats),
        )
        return client

    async def _stop(self) -> None:
        # Deliveries under way finish (each is bounded by the endpoint timeout) and are
        # recorded; only then is the rest cancelled and the connection closed.
        if self._deliveries:
            await asyncio.wait(
                list(self._deliveries), timeout=self._settings.webhooks.timeout_seconds + 1
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()
        # Whatever the client library still runs (consumers' housekeeping) ends here.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _supervise(self, name: str, body: Callable[[Healthy], Awaitable[None]]) -> None:
        """Run ``body`` again after any failure (NATS down, database busy), with backoff.

        The backoff doubles while failures follow one another and starts over once the
        body reports that it works again: a failure after a healthy stretch pauses 0.2 s,
        not the longest pause an earlier outage reached. While failures follow one another
        (the store or NATS down: a restart every 5 s), ``notifier.<name>_failed`` is logged
        once, then at most every 30 s with how long and how many, and
        ``notifier.<name>_working_again`` once the body reports that it works.
        """
        first, longest = RESTART_BACKOFF
        backoff = first
        failures = FailureLog(
            f"notifier.{name}_failed", f"notifier.{name}_working_again", logger=log
        )

        def healthy() -> None:
            nonlocal backoff
            backoff = first
            failures.succeeded()

        while not self._stopping:
            try:
                await body(healthy)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged and retried: the notifier outlives outages
                if isinstance(exc, NotFoundError) and not self.consumer_ready.is_set():
                    # A first start beside a ledger starting too: its relay makes the stream
                    # when it first connects to NATS, a moment later. Not a failure yet, and
                    # not a restart (the metric says the consumer was set up *again*).
                    log.info(
                        f"notifier.{name}_waiting",
                        reason="the event stream does not exist yet: the ledger's relay "
                        "makes it when it first connects to NATS",
                        retry_in_seconds=backoff,
                    )
                else:
                    self.status.restarts[name] += 1
                    failures.failed(
                        error=f"{type(exc).__name__}: {exc}", restart_in_seconds=backoff
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, longest)

    # --------------------------------------------------------------- webhooks

    def webhooks_changed(self) -> None:
        """A webhook was created, changed or deleted (called from a gRPC thread): the
        webhooks are read again before the next events are taken in."""
        self._webhooks.invalidate()

    async def _current_webhooks(self, newest_recorded: float) -> list[Webhook]:
        cache = self._webhooks
        if cache.needs_load(newest_recorded):
            started = cache.read_started()  # a webhook changed meanwhile is read next time
            rows = await asyncio.to_thread(self._store.webhooks)
            cache.loaded([Webhook(r, EventFilter.from_json(r.filter)) for r in rows], started)
        return cache.hooks

    async def _read_consumer(self) -> None:
        """Read the durable consumer's state: its ack floor (what may be delivered) and its
        backlog (metrics). A failure (NATS down, a cluster failover, a slow server) leaves
        the last floor standing, which is safe: the floor only says what is handled
        already, and a lower figure only delays deliveries."""
        js, nc = self._js, self._nc
        if js is None or nc is None or not nc.is_connected:
            self.status.consumer_pending = self.status.consumer_ack_pending = None
            return
        self._floor_read_at = time.monotonic()
        try:
            info = await js.consumer_info(
                self._settings.stream.name, self._settings.consumer, timeout=FLOOR_TIMEOUT
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("notifier.consumer_info_failed", error=str(exc))
            self.status.consumer_pending = self.status.consumer_ack_pending = None
            return
        self.status.consumer_pending = info.num_pending
        self.status.consumer_ack_pending = info.num_ack_pending
        if info.ack_floor is not None and info.ack_floor.stream_seq is not None:
            self.status.handled_through = info.ack_floor.stream_seq

    def _floor_behind(self) -> bool:
        """Jobs this replica stored may wait for messages not yet handled (by it, or by
        another replica that holds them)."""
        return self._jobs_through > self.status.handled_through

    async def _consume(self, healthy: Healthy) -> None:
        settings = self._settings
        js = await self._jetstream()
        psub = await js.pull_subscribe(
            f"{settings.stream.subject_prefix}.>",
            durable=settings.consumer,
            stream=settings.stream.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait_seconds,
                max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL,
            ),
        )
        # The cursors in webhook bodies name the stream they count in (a stream made again
        # fails this consumer, which is then set up again: the epoch is read again too).
        epoch = stream_epoch((await js.stream_info(settings.stream.name)).created)
        self.consumer_ready.set()
        log.info("notifier.consuming", stream=settings.stream.name, consumer=settings.consumer)
        # Caught up, the consumer waits with a fetch of one message; with a backlog, it
        # fetches batches. A waiting fetch of many ends only when its batch is full, its
        # request expires or the server says no more: when a status meant for an earlier,
        # expired request (they all share one inbox) reaches the client first, the client
        # library sends a second request that outlives the fetch, and every later fetch then
        # waited for the next message as well (in one run of three of the paced webhook test:
        # every other event about 110 ms late at 10 events/s). A fetch of one returns with
        # the first message; one a stale request delivers waits in the inbox for the next.
        batch = 1
        # Messages a failed round took and did not acknowledge come back only after the ack
        # wait: until then a fetch that finds nothing shows that NATS answers, not that the
        # consumer works (while its store was down, each such fetch said
        # notifier.consumer_working_again and the message that came back failed it again).
        idle_proves_after = time.monotonic() + settings.ack_wait_seconds
        while not self._stopping:
            if time.monotonic() - self._floor_read_at >= CONSUMER_INFO_SECONDS:
                await self._read_consumer()
            try:
                msgs = await psub.fetch(batch, timeout=FETCH_SECONDS)
            except TimeoutError:
                # Nothing came: normal when idle. The client library raises its own
                # TimeoutError or, on some paths, the built-in one (both are TimeoutError).
                batch = 1
                if time.monotonic() >= idle_proves_after:
                    healthy()
                continue
            # The last message says how many more the stream holds for this consumer.
            batch = FETCH_BATCH if msgs and msgs[-1].metadata.num_pending else 1
            notes = [pb.EventNotification.FromString(msg.data) for msg in msgs]
            times = [n.event.record_time.ToDatetime(tzinfo=UTC).timestamp() for n in notes]
            webhooks = await self._current_webhooks(max(times, default=0.0))
            jobs: list[NewJob] = []
            for msg, note, recorded in zip(msgs, notes, times, strict=True):
                seq = int(msg.metadata.sequence.stream)
                rendered: EventJson | None = None  # once for all the event's webhooks
                for hook in webhooks:
                    if hook.row.created_at > recorded + CREATED_MARGIN_SECONDS:
                        continue  # recorded before the webhook existed
                    if hook.filter.matches(note, self._reference):
                        rendered = rendered or EventJson.of(note)
                        jobs.append(
                            NewJob(
                                webhook_id=hook.row.id,
                                stream_seq=seq,
                                position=note.event.position,
                                event_id=note.event.event_id,
                                incident=note.event.incident,
                                agency=hook.row.agency,
                                payload=webhook_body(hook.row.id, seq, rendered, epoch),
                            )
                        )
            if jobs:  # no hop to a worker thread for a batch no webhook wants
                await asyncio.to_thread(self._store.add_jobs, jobs)
            # A confirmed ack: the floor read next counts it, so these jobs may go at once.
            # The batch's other acks go out before the last one on the same connection,
            # and the server handles a consumer's acks in the order they come: the last
            # one's confirmation covers them (one reply a batch, not one a message: part 6
            # of the bench, fifteen pairs, record_time -> webhook p50 lower in ten;
            # docs/performance.md). A message whose ack is lost comes again after
            # ack_wait; its jobs are stored.
            await _acknowledged(msgs)
            self._handled(msgs)
            if jobs:
                self._jobs_through = max(self._jobs_through, max(j.stream_seq for j in jobs))
            if self._floor_behind():
                # Only jobs wait for the floor: after a batch that stored none, and with
                # none waiting, the floor is read when the metrics' turn comes (a round
                # trip to the server a message saved where subscribers alone listen).
                await self._read_consumer()
            healthy()
            if jobs and self._wake_delivery is not None:
                self._wake_delivery.set()

    def _handled(self, msgs: list[Msg]) -> None:
        """Move the floor over a batch this replica has just handled (its jobs stored, its
        acks confirmed) when the batch follows the floor last known with no gap: every
        message up to the batch's last is then handled, those before by the floor, the
        batch's by this replica, whatever other replicas do. Its jobs may then go without
        the floor read again (a round trip to the server each round: 2.2-2.7 ms at p50 in
        "The webhook's path at 500 events/s, step by step", docs/performance.md). A batch
        after a gap (another replica's messages, or a redelivery) leaves the floor to
        the next read."""
        first = self.status.handled_through + 1
        seqs = [int(msg.metadata.sequence.stream) for msg in msgs]
        if seqs == list(range(first, first + len(seqs))):
            self.status.handled_through = first + len(seqs) - 1

    async def _deliver_due(self, healthy: Healthy) -> None:
        hooks = self._settings.webhooks
        wake = self._wake_delivery or asyncio.Event()
        # trust_env=False: no proxy from the environment, the request goes where it was
        # checked. Connections are kept per address, port and TLS server name.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=hooks.concurrency, ssl=self._tls),
            timeout=aiohttp.ClientTimeout(total=hooks.timeout_seconds),
            trust_env=False,
        ) as client:
            running = self._deliveries
            reported_drops, reported_at = 0, 0.0
            while not self._stopping:
                if (
                    self._slow_consumer_drops > reported_drops
                    and time.monotonic() - reported_at > 10
                ):
                    log.warning(
                        "notifier.live_subscriber_lagging",
                        dropped_and_refetched=self._slow_consumer_drops - reported_drops,
                    )
                    reported_drops, reported_at = self._slow_consumer_drops, time.monotonic()
                free = hooks.concurrency - len(running)
                jobs: list[Job] = []
                if free > 0:
                    lease = hooks.timeout_seconds * LEASE_TIMEOUTS
                    lease_ends = time.monotonic() + lease  # no later than the store's lease
                    since = time.monotonic() - self._floor_read_at
                    if since >= FLOOR_REFRESH_SECONDS or (
                        self._floor_behind() and since >= FLOOR_POLL_SECONDS
                    ):
                        await self._read_consumer()
                    jobs, webhooks = await asyncio.to_thread(
                        self._claim, free, lease, +self._inflight
                    )
                    healthy()
                    for job in jobs:
                        self._inflight[job.webhook_id] += 1  # the slot is the job's from now
                        webhook = webhooks.get(job.webhook_id)
                        task = asyncio.create_task(self._deliver(client, job, webhook, lease_ends))
                        running.add(task)
                        task.add_done_callback(self._delivery_done)
                if jobs:
                    continue  # more may be due, for endpoints with slots still free
                idle = FLOOR_POLL_SECONDS if free > 0 and self._floor_behind() else 0.5
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), idle)
                wake.clear()
            # Stopping: the deliveries under way finish (each bounded by the endpoint timeout)
            # before their session closes. Closed under them, each failed ("Session is
            # closed") and counted as an attempt.
            if running:
                await asyncio.wait(list(running), timeout=hooks.timeout_seconds + 1)

    def _claim(
        self, free: int, lease: float, busy: Counter[str]
    ) -> tuple[list[Job], dict[str, WebhookRow]]:
        """Due jobs, leased, and their webhooks: one read for the batch, not one per
        delivery (in a worker thread). A store that fails the read leaves the jobs leased:
        they are claimed again once the lease runs out."""
        jobs = self._store.claim_due(
            free,
            lease,
            per_webhook=self._settings.webhooks.per_endpoint_concurrency,
            handled_through=self.status.handled_through,
            busy=busy,
        )
        return jobs, self._store.webhooks_by_id(j.webhook_id for j in jobs) if jobs else {}

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        """Every delivery task's end is observed: an error is logged, never left unseen."""
        self._deliveries.discard(task)
        if self._wake_delivery is not None:
            self._wake_delivery.set()  # its outcome is in: the next job of its incident may go
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "webhook.delivery_crashed",
                error=f"{type(exc).__name__}: {exc}",
                note="the job's lease runs out and it is delivered again",
            )

    async def _deliver(
        self,
        client: aiohttp.ClientSession,
        job: Job,
        webhook: WebhookRow | None,
        lease_ends: float,
    ) -> None:
        released = False

        def release() -> None:
            """Free the job's slot at its endpoint (once)."""
            nonlocal released
            if released:
                return
            released = True
            self._inflight[job.webhook_id] -= 1
            if self._inflight[job.webhook_id] <= 0:
                del self._inflight[job.webhook_id]
            if self._wake_delivery is not None:
                self._wake_delivery.set()  # the endpoint's next job may go

        try:
            await self._attempt(client, job, webhook, lease_ends, release)
        finally:
            release()

    async def _attempt(
        self,
        client: aiohttp.ClientSession,
        job: Job,
        webhook: WebhookRow | None,
        lease_ends: float,
        release: Callable[[], None],
    ) -> None:
        """One attempt of a claimed job; ``webhook``: as read when the job was claimed;
        ``release`` frees the job's slot at its endpoint."""
        hooks = self._settings.webhooks
        attempt = job.attempts + 1
        if webhook is None:
            return  # deleted meanwhile; its jobs were cancelled
        error = await self._post(client, webhook, job)
        # The endpoint has answered: its slot is free for its next job while this outcome
        # is recorded. This job stays in flight in the store until then, and a later job
        # of its incident waits for that (store.claim_due), so the incident's order holds.
        # Held until the outcome was stored, a slot spent a third of its time waiting for
        # the outcome's commit, and at 500 events/s 14 of the 16 slots were taken
        # (docs/performance.md, "The webhook's path at 500 events/s").
        release()
        now = time.time()
        if not error:
            outcome, retry_at = "delivered", now
        elif attempt >= hooks.max_attempts:
            outcome, retry_at = "dead_letter", now
        else:
            outcome = "failed"
            delay = min(hooks.max_backoff_seconds, hooks.backoff_seconds * 2 ** (attempt - 1))
            retry_at = now + random.uniform(delay / 2, delay)  # noqa: S311 - jitter
        entry = LogEntry(
            event_id=job.event_id,
            incident=job.incident,
            position=job.position,
            agency=job.agency,
            channel="webhook",
            target=f"webhooks/{job.webhook_id}",
            outcome=outcome,
            attempt=attempt,
            error=error,
            at=now,
        )
        if not await self._record(job, outcome, attempt, error, retry_at, entry, lease_ends):
            return
        self.count_delivery("webhook", outcome)
        if outcome != "delivered":
            log.info(
                "webhook.delivery_failed",
                webhook=job.webhook_id,
                attempt=attempt,
                outcome=outcome,
                error=error,
            )

    async def _post(self, client: aiohttp.ClientSession, webhook: WebhookRow, job: Job) -> str:
        """One POST; "" when the endpoint took it, else a neutral reason.

        The reason reaches the agency (the dead letter's ``last_error``): it says what
        kind of failure it was and never repeats what the target answered, so a webhook
        cannot be used to read another service's answers. A redirect is not followed
        (its target was never checked): it is the answer, ``HTTP 3xx``.
        """
        try:
            async with asyncio.timeout(self._settings.webhooks.timeout_seconds):
                target = parse_target(webhook.url)
                address = await self._targets.resolve(target)
                url, host = pinned_url(target, address)
                raw = with_delivery_id(job.payload, job.id)
                timestamp = int(time.time())
                async with client.post(
                    url,
                    data=raw,
                    headers={
                        **host,
                        "Content-Type": "application/json",
                        "X-Ledger-Delivery": job.id,
                        "X-Ledger-Event-Id": job.event_id,
                        "X-Ledger-Timestamp": str(timestamp),
                        SIGNATURE_HEADER: sign(webhook.secret, timestamp, raw),
                    },
                    allow_redirects=False,
                    # TLS checks the certificate against the name, not the address.
                    server_hostname=target.host if target.scheme == "https" else None,
                ) as response:
                    status = response.status
                    await _drain(response)
        except TargetRefusedError:
            return "target refused: not a public address, or the name does not resolve"
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            return "timeout: no answer in time"
        except aiohttp.ClientConnectorCertificateError:  # before its base class below
            # Said apart from a refused port: an operator fixes a CA or a name, not a route.
            return "TLS: the receiver's certificate does not verify (its CA, or its name)"
        except aiohttp.ClientConnectorSSLError:
            return "TLS: the handshake with the receiver failed"
        except aiohttp.ClientConnectorError:  # refused or unreachable
            return "connection failed"
        except aiohttp.ClientError:
            return "the answer was not a valid HTTP response"
        except Exception as exc:  # any other failure is this attempt's outcome, never a stuck job
            log.warning(
                "webhook.delivery_error",
                webhook=webhook.id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return "the delivery failed in the notifier"
        if not 200 <= status < 300:
            return f"HTTP {status}"
        return ""

    async def _record(
        self,
        job: Job,
        outcome: str,
        attempt: int,
        error: str,
        retry_at: float,
        entry: LogEntry,
        lease_ends: float,
    ) -> bool:
        """Store an attempt's outcome, retrying a failing store while the job's lease lasts
        (after that the job is claimed again and delivered again, under the same id)."""
        return await self._outcomes.record_within(
            Outcome(job, outcome, attempt, error, retry_at, entry),
            lease_ends,
            lambda: self._stopping,
        )

    def count_delivery(self, channel: str, outcome: str) -> None:
        """A delivery's outcome was decided (and recorded)."""
        if self._count_delivery is not None:
            self._count_delivery(channel, outcome)

    def wake_delivery(self) -> None:
        if self._wake_delivery is not None:
            self._loop.call_soon_threadsafe(self._wake_delivery.set)

    # ------------------------------------------------------------ live streams

    def subscribe(self, cursor: str) -> LiveSubscription:
        """A live subscription after ``cursor`` (or from now); called from a gRPC thread."""
        return self.call(self._subscribe(cursor), 15)

    async def _stream_info(self, js: JetStreamContext, name: str) -> StreamInfo:
        """The event stream's info, waiting up to :data:`STREAM_WAIT_SECONDS` for a
        stream that does not exist yet (NotFoundError after that; the notifier's stop
        ends the wait at once, SHUTTING_DOWN)."""
        deadline = time.monotonic() + STREAM_WAIT_SECONDS
        while True:
            try:
                return await js.stream_info(name)
            except NotFoundError:
                if self._stopping:
                    raise Unavailable(
                        "the notifier is shutting down", reason="SHUTTING_DOWN"
                    ) from None
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(STREAM_WAIT_POLL_SECONDS)

    async def stream_epoch_now(self, fresh: bool) -> str | None:
        """The event stream's epoch now (None: the stream cannot be read, or is gone for the
        moment); read again when ``fresh`` or older than :data:`EPOCH_CHECK_SECONDS`."""
        if fresh or time.monotonic() - self._epoch_read_at >= EPOCH_CHECK_SECONDS:
            self._epoch_read_at = time.monotonic()
            try:
                js = await asyncio.wait_for(self._jetstream(), 5)
                info = await asyncio.wait_for(js.stream_info(self._settings.stream.name), 5)
            except (TimeoutError, OSError, nats.errors.Error):
                self._epoch_now = None
            else:
                self._epoch_now = stream_epoch(info.created)
        return self._epoch_now

    async def _subscribe(self, cursor: str) -> LiveSubscription:
        name = self._settings.stream.name
        try:
            js = await asyncio.wait_for(self._jetstream(), 5)
            info = await self._stream_info(js, name)
            state = info.state
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise Unavailable(
                "the notifier cannot reach the event stream yet; retry shortly",
                reason="STREAM_UNAVAILABLE",
            ) from exc
        epoch = stream_epoch(info.created)
        if cursor:
            given_epoch, after = decode_cursor(cursor)
            if given_epoch and epoch and given_epoch != epoch:
                # Its sequence counts in a stream that is gone: here it would name other
                # events, and a resume would skip those recorded since the stream was made.
                raise FailedPrecondition(
                    "the event stream was made again since this cursor was given (its data "
                    "lost, or restored): subscribe from now",
                    reason="CURSOR_EXPIRED",
                )
            if after > state.last_seq:
                raise InvalidArgument("cursor", "is ahead of the stream: not from this notifier")
            if state.messages and after + 1 < state.first_seq:
                raise FailedPrecondition(
                    "the events after this cursor are no longer kept; subscribe from now",
                    reason="CURSOR_EXPIRED",
                )
        else:
            after = state.last_seq
        sub = await js.subscribe(
            f"{self._settings.stream.subject_prefix}.>",
            stream=name,
            ordered_consumer=True,
            idle_heartbeat=1.0,  # a consumer lost with a NATS restart is noticed in seconds
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            ),
            pending_msgs_limit=PENDING_LIMIT,
        )
        # nats-py's ordered consumer starts over after a reset (NATS back after an outage,
        # heartbeats missed) from the last stream sequence it received, which it counts
        # from 0: one that had received nothing yet started over at the stream's first
        # message, and its subscriber was sent every event the stream held again. Its count
        # starts at the cursor. (LiveSubscription also drops whatever comes at or before it.)
        ordered = getattr(sub, "_jsi", None)
        if ordered is not None and hasattr(ordered, "_sseq"):
            ordered._sseq = after
        return LiveSubscription(self, sub, after + 1, epoch)


async def _acknowledged(msgs: list[Msg]) -> None:
    """Acknowledge a batch of messages in order, waiting for the server's confirmation of
    the last (raises what the acks raised)."""
    if not msgs:
        return
    *rest, last = msgs
    for msg in rest:
        await msg.ack()
    await last.ack_sync(timeout=ACK_SECONDS)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a short answer's body, so that its connection serves the next delivery; a long
    one (or one of unknown length) is left unread, and its connection closed."""
    length = response.content_length
    if length is not None and length <= MAX_ANSWER_READ:
        await response.read()
