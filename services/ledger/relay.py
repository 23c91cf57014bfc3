"""The outbox relay: recorded events, in log order, from the store to NATS JetStream.

Commands never talk to NATS. The relay follows the store's notification log and
publishes each incident event with its notification id as ``Nats-Msg-Id``, so a
republished overlap is dropped by the stream's duplicate window. Its restart
position is the position carried by the stream's last message, which also
repairs messages a crashed NATS lost before syncing them to disk; when the
stream has no message left to read it from (for example after its limits removed
them), a position kept in the ledger's database takes over.

Only one relay publishes at a time: a PostgreSQL advisory lock (several ledger
replicas on one database) or a file lock beside the SQLite database. When the
holder dies, its lock goes with it and another relay takes over.

While NATS is unreachable the ledger keeps accepting commands; the relay retries
with backoff, reports itself NOT_SERVING on the health service ``relay``, and
drains the backlog in order when NATS returns.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import queue
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import psycopg
import structlog
from eventsourcing.persistence import ApplicationRecorder, Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from incidentledger.v1 import incident_pb2 as pb
from services.common.config import RelaySettings, StreamSettings, nats_servers
from services.common.natsconn import connect_options
from services.common.sql import (
    Database,
    creates_tables,
    open_database,
    postgres_connect,
    schema_lock,
)
from services.ledger.api import convert
from services.ledger.application import Ledger, StoredIncidentEvent
from services.ledger.domain.incident import Incident, incident_event_classes

log = structlog.get_logger(__name__)

POSITION_HEADER = "Ledger-Position"
POSITION_SAVE_SECONDS = 1.0
CONTENT_TYPE = "application/x-protobuf; message=incidentledger.v1.EventNotification"

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_TOKEN = re.compile(r"[^a-z0-9_-]+")


def subject_token(value: str) -> str:
    """A lowercase NATS subject token (never empty, no dots or wildcards)."""
    return _TOKEN.sub("_", value.lower()).strip("_") or "none"


def event_type_token(type_name: str) -> str:
    """``LeadAssigned`` -> ``lead_assigned``."""
    return _SNAKE.sub("_", type_name).lower()


def event_subject(prefix: str, kecamatan: str, category: str, type_name: str) -> str:
    """``<prefix>.<kecamatan>.<category>.<event_type>``, broad to narrow."""
    return ".".join(
        (prefix, subject_token(kecamatan), subject_token(category), event_type_token(type_name))
    )


@dataclass(frozen=True)
class Outgoing:
    position: int
    subject: str
    headers: dict[str, str]
    payload: bytes


class EventEncoder:
    """Turns notifications into messages: the event plus the incident's state after it.

    The state is folded with the domain's own rules, from a bounded cache of
    incidents; a miss loads the incident at that version from the store.
    """

    def __init__(self, ledger: Ledger, prefix: str, cache_size: int = 2000) -> None:
        self._ledger = ledger
        self._prefix = prefix
        self._cache: OrderedDict[UUID, Incident] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, notification: Notification) -> Outgoing:
        event = self._ledger.mapper.to_domain_event(notification)
        if not isinstance(event, Incident.Event):
            raise TypeError(f"not an incident event: {notification.topic}")
        incident = self._state_after(event)
        message = pb.EventNotification(
            event=convert.event_to_proto(StoredIncidentEvent(event, notification.id)),
            incident=convert.incident_to_proto(incident),
        )
        kecamatan = str((event.location or incident.location).get("kecamatan", ""))
        type_name = type(event).__name__
        return Outgoing(
            position=notification.id,
            subject=event_subject(self._prefix, kecamatan, incident.category, type_name),
            headers={
                "Nats-Msg-Id": str(notification.id),
                POSITION_HEADER: str(notification.id),
                "Ledger-Incident": convert.incident_name(incident.id),
                "Ledger-Event-Id": str(event.event_id),
                "Ledger-Event-Type": type_name,
                "Ledger-Kecamatan": kecamatan,
                "Ledger-Category": incident.category,
                "Ledger-Severity": incident.severity,
                "Content-Type": CONTENT_TYPE,
            },
            payload=message.SerializeToString(),
        )

    def _state_after(self, event: Incident.Event) -> Incident:
        incident_id = event.originator_id
        cached = self._cache.pop(incident_id, None)
        if event.originator_version == 1:
            incident = event.mutate(None)
        elif cached is not None and cached.version == event.originator_version - 1:
            incident = event.mutate(cached)
        else:
            incident = self._ledger.load_aggregate(incident_id, event.originator_version)
        if not isinstance(incident, Incident):
            raise TypeError(f"not an incident: {incident_id}")
        self._cache[incident_id] = incident
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return incident


# --------------------------------------------------------------------- leadership


class LeaderLock(ABC):
    """Held by at most one relay at a time; released when its holder dies."""

    @abstractmethod
    def try_acquire(self) -> bool: ...

    @abstractmethod
    def still_held(self) -> bool: ...

    @abstractmethod
    def release(self) -> None: ...


class SoleLeader(LeaderLock):
    """The in-memory store has one process by definition."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class FileLeader(LeaderLock):
    """An exclusive ``flock`` on a file beside the SQLite database."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class PostgresLeader(LeaderLock):
    """A session-level advisory lock, held on a connection of its own."""

    def __init__(self, env: Mapping[str, str], name: str) -> None:
        self._env = env
        digest = hashlib.sha256(f"incidentledger-relay:{name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection[Any] | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_held()
        try:
            conn = postgres_connect(self._env, autocommit=True)
        except psycopg.OperationalError as exc:
            log.warning("relay.leader_lock_unavailable", error=str(exc))
            return False
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        if not row or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session releases the lock
            except psycopg.Error as exc:
                log.warning("relay.leader_release_failed", error=str(exc))
            self._conn = None


def create_position_table(db: Database) -> None:
    """The relay's own table: the last position published, per stream."""
    with db.transaction() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS relay_position "
            "(stream TEXT PRIMARY KEY, position BIGINT NOT NULL)"
        )


def leader_lock(store_env: Mapping[str, str], stream: str) -> LeaderLock:
    module = store_env.get("PERSISTENCE_MODULE", "eventsourcing.popo")
    if module == "eventsourcing.postgres":
        schema = store_env.get("POSTGRES_SCHEMA", "public")
        return PostgresLeader(store_env, f"{schema}:{stream}")
    dbname = store_env.get("SQLITE_DBNAME", ":memory:")
    if module == "eventsourcing.sqlite" and dbname != ":memory:" and "mode=memory" not in dbname:
        return FileLeader(Path(f"{dbname}.relay.lock"))
    return SoleLeader()


# ------------------------------------------------------------------------ reading


class NotificationReader(ABC):
    """Incident notifications after a position, in log order, in batches."""

    @abstractmethod
    def next_batch(self, timeout: float) -> list[Notification]:
        """The next notifications, or an empty list if none came within ``timeout``."""

    def close(self) -> None:
        return None


class PollingReader(NotificationReader):
    """Polls the log; a write in this process wakes it at once (SQLite, in memory)."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        position: int,
        topics: Sequence[str],
        batch: int,
        wake: threading.Event,
    ) -> None:
        self._recorder = recorder
        self._position = position
        self._topics = topics
        self._batch = batch
        self._wake = wake

    def next_batch(self, timeout: float) -> list[Notification]:
        rows = self._select()
        if not rows:
            self._wake.wait(timeout)
            self._wake.clear()
            rows = self._select()
        if rows:
            self._position = rows[-1].id
        return rows

    def _select(self) -> list[Notification]:
        return list(
            self._recorder.select_notifications(
                self._position, self._batch, topics=self._topics, inclusive_of_start=False
            )
        )


class SubscriptionReader(NotificationReader):
    """The library's PostgreSQL subscription (LISTEN/NOTIFY), read by a thread of its own."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        position: int,
        topics: Sequence[str],
        batch: int,
    ) -> None:
        self._batch = batch
        self._queue: queue.Queue[Notification | BaseException] = queue.Queue(maxsize=4 * batch)
        self._subscription = recorder.subscribe(gt=position, topics=topics)
        self._subscription.__enter__()
        self._thread = threading.Thread(target=self._pump, name="relay-subscription", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for notification in self._subscription:
                self._queue.put(notification)
        except Exception as exc:  # handed to the relay, which restarts its session
            self._queue.put(exc)

    def next_batch(self, timeout: float) -> list[Notification]:
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        items = [first]
        while len(items) < self._batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        batch: list[Notification] = []
        for item in items:
            if isinstance(item, BaseException):
                raise item
            batch.append(item)
        return batch

    def close(self) -> None:
        self._subscription.stop()
        while self._thread.is_alive():
            try:  # unblock the pump if it waits on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)
        self._subscription.__exit__(None, None, None)


# ------------------------------------------------------------------------ the relay


@dataclass
class RelayStatus:
    leader: bool = False
    connected: bool = False
    position: int = 0
    position_known: bool = False  # derived from the stream at least once since start
    published: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class RelayLag:
    events: int  # incident events recorded after the published position
    seconds: float  # age of the oldest of them (0 when there is none)


class Relay:
    """Runs in a thread of the ledger process, with an asyncio loop of its own."""

    def __init__(
        self,
        ledger: Ledger,
        settings: RelaySettings,
        store_env: Mapping[str, str],
        on_health: Callable[[bool], None] = lambda _serving: None,
    ) -> None:
        self._ledger = ledger
        self._settings = settings
        self._store_env = dict(store_env)
        self._on_health = on_health
        self._topics = [get_topic(cls) for cls in incident_event_classes()]
        self._encoder = EventEncoder(ledger, settings.stream.subject_prefix)
        self._leader = leader_lock(store_env, settings.stream.name)
        self._tracking: Database | None = None
        self._wake = threading.Event()
        self._checkpoints: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.status = RelayStatus()
        self._position_saved_at = 0.0

    # -- lifecycle (called from other threads)

    def start(self) -> None:
        self._tracking = open_database(self._store_env)
        if creates_tables(self._store_env):
            with schema_lock(self._store_env):  # not raced by migrate or another replica
                create_position_table(self._tracking)
        self._thread.start()

    def wake(self) -> None:
        """New events were recorded in this process."""
        self._wake.set()

    def publish_checkpoint(self, position: int, body: bytes) -> None:
        """Queue a signed checkpoint for the witnesses' stream (sent by the leading relay)."""
        self._checkpoints.put((position, body))
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._tracking is not None:
            self._tracking.close()

    def lag(self) -> RelayLag | None:
        """What is recorded but not yet published, read from the store; ``None`` unless
        this relay leads and knows its position (another replica's relay publishes)."""
        status = self.status
        if not (status.leader and status.position_known):
            return None
        position = status.position
        events = self._ledger.positions.count_after(position, self._topics)
        if not events:
            return RelayLag(0, 0.0)
        oldest = self._ledger.recorder.select_notifications(
            position, 1, topics=self._topics, inclusive_of_start=False
        )
        seconds = 0.0
        event = self._ledger.mapper.to_domain_event(oldest[0]) if oldest else None
        if isinstance(event, Incident.Event):
            seconds = max(0.0, (datetime.now(UTC) - event.timestamp).total_seconds())
        return RelayLag(events, seconds)

    # -- the relay thread

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            if not await asyncio.to_thread(self._leader.try_acquire):
                self.status.leader = False
                await self._sleep(self._settings.leader_retry_seconds)
                continue
            if not self.status.leader:
                log.info("relay.leader", stream=self._settings.stream.name)
            self.status.leader = True
            try:
                await self._session()
                backoff = 0.2
            except Exception as exc:  # logged and retried: the relay must outlive NATS outages
                self.status.connected = False
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                self._on_health(False)
                log.warning(
                    "relay.session_failed",
                    error=self.status.last_error,
                    position=self.status.position,
                    retry_in=round(backoff, 2),
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        await asyncio.to_thread(self._leader.release)
        self._on_health(False)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.to_thread(self._stopping.wait, seconds)

    async def _session(self) -> None:
        settings = self._settings

        async def error(exc: Exception) -> None:  # e.g. a node of the cluster is down
            log.warning("relay.nats_error", error=f"{type(exc).__name__}: {exc}")

        nc = await nats.connect(
            nats_servers(settings.nats_url),  # one server, or the nodes of a cluster
            allow_reconnect=False,  # a new session (on any node) re-derives its position
            connect_timeout=2,
            name="incident-ledger-relay",
            error_cb=error,
            **connect_options(settings.nats),
        )
        reader: NotificationReader | None = None
        try:
            js = nc.jetstream(timeout=settings.publish_timeout_seconds)
            await ensure_stream(js, settings.stream)
            position = await self._start_position(js)
            self.status.connected = True
            self.status.position = position
            self.status.position_known = True
            self._on_health(True)
            log.info("relay.publishing", stream=settings.stream.name, after=position)
            reader = await asyncio.to_thread(self._reader, position)
            while not self._stopping.is_set():
                if not nc.is_connected:  # noticed while idle, not only at the next publish
                    raise ConnectionError("the connection to NATS was lost")
                if not await asyncio.to_thread(self._leader.still_held):
                    log.warning("relay.leadership_lost")
                    self.status.leader = False
                    return
                batch = await asyncio.to_thread(reader.next_batch, settings.poll_seconds)
                if batch:
                    await self._publish(js, batch)
                await self._publish_checkpoints(js)
        finally:
            self.status.connected = False
            if reader is not None:
                await asyncio.to_thread(reader.close)
                await asyncio.to_thread(self._save_position, self.status.position)
            await nc.close()

    async def _publish_checkpoints(self, js: JetStreamContext) -> None:
        while True:
            try:
                position, body = self._checkpoints.get_nowait()
            except queue.Empty:
                return
            try:
                await js.publish(
                    self._settings.stream.checkpoint_subject,
                    body,
                    headers={"Nats-Msg-Id": f"checkpoint-{position}"},
                )
            except Exception:
                self._checkpoints.put((position, body))  # sent by the next session
                raise

    def _reader(self, position: int) -> NotificationReader:
        recorder = self._ledger.recorder
        batch = self._settings.batch_size
        if isinstance(recorder, PostgresApplicationRecorder):
            return SubscriptionReader(recorder, position, self._topics, batch)
        return PollingReader(recorder, position, self._topics, batch, self._wake)

    async def _publish(self, js: JetStreamContext, batch: list[Notification]) -> None:
        outgoing = await asyncio.to_thread(lambda: [self._encoder.encode(n) for n in batch])
        started = time.perf_counter()
        acks = [await js.publish_async(m.subject, m.payload, headers=m.headers) for m in outgoing]
        await asyncio.wait_for(asyncio.gather(*acks), self._settings.publish_timeout_seconds)
        position = outgoing[-1].position
        if time.monotonic() - self._position_saved_at >= POSITION_SAVE_SECONDS:
            # A fallback only (the stream's last message is the position): kept off
            # the path of every batch, where it would compete with commands for the
            # database's write lock.
            await asyncio.to_thread(self._save_position, position)
            self._position_saved_at = time.monotonic()
        self.status.position = position
        self.status.published += len(outgoing)
        log.debug(
            "relay.published",
            events=len(outgoing),
            position=position,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _start_position(self, js: JetStreamContext) -> int:
        """Where to continue: after the stream's last message, else the kept position."""
        name = self._settings.stream.name
        state = (await js.stream_info(name)).state
        if state.messages > 0 and state.last_seq:
            last = await js.get_msg(name, state.last_seq)
            header = (last.headers or {}).get(POSITION_HEADER)
            if header is not None:
                return int(header)
        return await asyncio.to_thread(self._kept_position) if state.last_seq else 0

    def _database(self) -> Database:
        if self._tracking is None:
            raise RuntimeError("the relay was not started")
        return self._tracking

    def _kept_position(self) -> int:
        tracking = self._database()
        with tracking.transaction() as cur:
            cur.execute(
                tracking.q("SELECT position FROM relay_position WHERE stream = ?"),
                (self._settings.stream.name,),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _save_position(self, position: int) -> None:
        tracking = self._database()
        with tracking.transaction() as cur:
            cur.execute(
                tracking.q(
                    "INSERT INTO relay_position (stream, position) VALUES (?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET position = excluded.position"
                ),
                (self._settings.stream.name, position),
            )


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the stream, or bring its configuration up to date (idempotent)."""
    config = StreamConfig(
        name=settings.name,
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE if settings.storage == "file" else StorageType.MEMORY,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_seconds,
        max_age=settings.max_age_days * 86400 if settings.max_age_days else None,
    )
    checkpoints = StreamConfig(
        name=f"{settings.name}_CHECKPOINTS",
        subjects=[settings.checkpoint_subject],
        retention=RetentionPolicy.LIMITS,
        storage=config.storage,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_seconds,
    )
    for wanted in (config, checkpoints):
        try:
            await js.stream_info(wanted.name or "")
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("relay.stream_created", stream=wanted.name, replicas=settings.replicas)
            continue
        await js.update_stream(wanted)
