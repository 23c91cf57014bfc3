"""The outbox relay: recorded events, in log order, from the store to NATS JetStream.

Commands never talk to NATS. The relay follows the store's notification log and
publishes each incident event with its notification id as ``Nats-Msg-Id``, so a
republished overlap is dropped by the stream's duplicate window. Its restart
position is the position carried by the stream's last message, which also
repairs messages a crashed NATS lost before syncing them to disk; when the
stream has no message left to read it from (for example after its limits removed
them), a position kept in the ledger's database takes over.

The stream's last message is only trusted when the store vouches for it: its
position holds an incident event in the store and the message carries that
event (its id, incident, version and hash). A message that does not match was
published by someone else (a "foreign" message): the relay reports it (an error
line ``relay.foreign_message`` naming its stream sequence and headers, the
metrics ``ledger_relay_foreign_messages_total`` and ``ledger_relay_stream_foreign``,
the health service ``relay.stream`` NOT_SERVING) and reads further back, by
stream sequence, to the last message that does match; it falls back to the kept
position if none of the last ``TAIL_CHECK_LIMIT`` does. A message beyond the store's
last position that carries an event sealed with the ledger's key, which the store does not
hold, is no foreign one: the ledger's own, lost by a store restored from an older backup
(one warning ``relay.stream_ahead`` for all of them). A foreign message that
took the ``Nats-Msg-Id`` of an event still to publish would make the duplicate
window drop that event: such an event goes out as ``<position>-<foreign seq>``.

Only one relay publishes at a time: a PostgreSQL advisory lock (several ledger
replicas on one database) or a file lock beside the SQLite database. When the
holder dies, its lock goes with it and another relay takes over.

While NATS is unreachable the ledger keeps accepting commands; the relay retries
with backoff, reports itself NOT_SERVING on the health service ``relay``, and
drains the backlog in order when NATS returns. While the store is unreachable the
relay that held the lock tries for it again every ``STORE_RETRY_SECONDS``, and a
session the store failed is retried as soon: PostgreSQL answers (or refuses) at once
when it is back or away, so the relay resumes with the commands instead of after a
NATS-sized backoff (see :class:`SessionRetry`).

Beside this module: the messages and the test for a foreign one
(:mod:`services.ledger.relay_messages`), the leader locks
(:mod:`services.ledger.relay_leadership`), the readers of the log
(:mod:`services.ledger.relay_reading`) and where a session's messages come from, read and
encoded here or by the encoder process (:mod:`services.ledger.relay_encoder`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import structlog
from eventsourcing.utils import get_topic
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NoStreamResponseError, NotFoundError

from services.common.config import RelaySettings, StreamSettings, nats_servers
from services.common.failurelog import FailureLog
from services.common.natsconn import connect_options
from services.common.sql import Database, creates_tables, open_database, schema_lock
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.common.storepool import RECONNECT_SECONDS
from services.ledger.application import Ledger
from services.ledger.domain.incident import Incident, incident_event_classes
from services.ledger.relay_encoder import BatchSource, EncoderLink, LocalSource
from services.ledger.relay_leadership import leader_lock
from services.ledger.relay_messages import (
    BEYOND_THE_STORE,
    POSITION_HEADER,
    TRIMMED_HEADER,
    EventEncoder,
    Outgoing,
    fitted,
    foreign_reason,
    lost_event,
    message_size,
)
from services.ledger.relay_reading import open_reader

log = structlog.get_logger(__name__)

POSITION_SAVE_SECONDS = 1.0
# How many stream messages, newest first, the relay reads at most in search of one the
# store vouches for (one request each) before it falls back to the kept position.
TAIL_CHECK_LIMIT = 1000
FOREIGN_LOGGED = 20  # foreign messages logged one by one per session; a summary for the rest
# A failing session is retried quickly while a stream's leader may be being elected (NATS
# raft: 4-9 s without a leader), then ever more slowly (a NATS that is away).
ELECTION_SECONDS = 10.0
RETRY_SECONDS = (0.2, 0.5)  # the first retry; the longest during an election
RETRY_MAX_SECONDS = 10.0  # the longest afterwards
# After a failure of the store (its connection refused, lost or not to be had), as often
# as the event store's pool tries to reconnect: the store is quickly there again or not,
# and asking costs one connection attempt. NATS's backoff (10 s once failures last beyond
# ELECTION_SECONDS) would keep the relay away that long after the store is back.
STORE_RETRY_SECONDS = RECONNECT_SECONDS


def create_position_table(db: Database) -> None:
    """The relay's own table: the last position published, per stream."""
    with db.transaction() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS relay_position "
            "(stream TEXT PRIMARY KEY, position BIGINT NOT NULL)"
        )


# ------------------------------------------------------------------------ the relay


def is_store_failure(exc: BaseException) -> bool:
    """Whether a session failed on the store (PostgreSQL or SQLite), not on NATS."""
    return isinstance(exc, STORE_CONNECTION_ERRORS)


def session_error(exc: BaseException, nats_error: str | None) -> str:
    """What ended a relay session, for its log line and its status: the exception, and the
    last error NATS reported during the session when the exception does not say it (a
    publish that the server refused for lack of permission ends as ``nats: timeout``; only
    the server's ``Permissions Violation``, reported on the side, names the cause)."""
    said = f"{type(exc).__name__}: {exc}"
    if not nats_error or nats_error in said:
        return said
    return f"{said} (last NATS error of the session: {nats_error})"


class SessionRetry:
    """How long the relay pauses after a failed session.

    A failure of the store is retried after ``STORE_RETRY_SECONDS``, however long the
    store has been away: it answers at once when it is back. A failure of NATS is
    retried quickly while a stream's leader may be being elected (``ELECTION_SECONDS``
    of failures), then ever more slowly up to ``RETRY_MAX_SECONDS`` (a NATS that is
    away). Only NATS failures count towards that; a session that published (or found
    nothing to publish), or one the store failed (NATS answered it), starts the count
    afresh.
    """

    def __init__(self) -> None:
        self._backoff = RETRY_SECONDS[0]
        self._failing_since: float | None = None

    def reset(self) -> None:
        """A session published, or found nothing to publish."""
        self._backoff, self._failing_since = RETRY_SECONDS[0], None

    def pause(self, exc: BaseException, now: float) -> float:
        """The pause before the next session, after ``exc`` ended one at ``now``."""
        if is_store_failure(exc):
            self.reset()
            return STORE_RETRY_SECONDS
        if self._failing_since is None:
            self._failing_since = now
        pause = self._backoff
        electing = now + pause - self._failing_since < ELECTION_SECONDS
        self._backoff = min(pause * 2, RETRY_SECONDS[1] if electing else RETRY_MAX_SECONDS)
        return pause


@dataclass
class RelayStatus:
    leader: bool = False
    connected: bool = False
    position: int = 0
    position_known: bool = False  # derived from the stream at least once since start
    # The position the store says was published, read when this relay took the lead: the
    # lag counts from it until the stream is read (a relay started while NATS is away still
    # shows its backlog growing, so the lag alerts can fire).
    kept_position: int | None = None
    published: int = 0
    last_error: str = ""
    foreign_messages: int = 0  # found on the stream since start, each counted once
    stream_foreign: int = 0  # foreign messages found in this session (0: the stream matched)


@dataclass(frozen=True)
class RelayLag:
    events: int  # incident events recorded after the published position
    seconds: float  # age of the oldest of them (0 when there is none)


def relay_lag(ledger: Ledger, status: RelayStatus) -> RelayLag | None:
    """What is recorded but not yet published, read from ``ledger``'s store, by a relay of
    that ``status``; ``None`` unless it leads and knows its position."""
    if not status.leader:
        return None
    if status.position_known:
        position = status.position
    elif status.kept_position is not None:
        position = status.kept_position
    else:
        return None
    topics = [get_topic(cls) for cls in incident_event_classes()]
    events = ledger.positions.count_after(position, topics)
    if not events:
        return RelayLag(0, 0.0)
    oldest = ledger.recorder.select_notifications(
        position, 1, topics=topics, inclusive_of_start=False
    )
    seconds = 0.0
    event = ledger.mapper.to_domain_event(oldest[0]) if oldest else None
    if isinstance(event, Incident.Event):
        seconds = max(0.0, (datetime.now(UTC) - event.timestamp).total_seconds())
    return RelayLag(events, seconds)


def prepare_position_table(store_env: Mapping[str, str]) -> None:
    """The relay's table, where the store's settings create tables (not raced by
    ``migrate`` or another replica)."""
    if not creates_tables(store_env):
        return
    db = open_database(store_env)
    try:
        with schema_lock(store_env):
            create_position_table(db)
    finally:
        db.close()


class Relay:
    """Runs in a thread with an asyncio loop of its own: in a process of its own beside
    the ledger's (:mod:`services.ledger.relay_process`), or in the ledger's process when
    its store lives in that process's memory."""

    def __init__(
        self,
        ledger: Ledger,
        settings: RelaySettings,
        store_env: Mapping[str, str],
        on_health: Callable[[bool], None] = lambda _serving: None,
        on_stream_check: Callable[[bool], None] = lambda _trusted: None,
        on_checkpoint_sent: Callable[[int], None] = lambda _position: None,
        encoder: EncoderLink | None = None,
    ) -> None:
        self._ledger = ledger
        # Reads and encodes in a process of its own when given (relay_encoder.py), else here.
        self._encoder_link = encoder
        self._source: BatchSource | None = None
        self._on_checkpoint_sent = on_checkpoint_sent
        self._settings = settings
        self._store_env = dict(store_env)
        self._on_health = on_health
        self._on_stream_check = on_stream_check
        # Foreign messages up to this stream sequence are counted already.
        self._foreign_counted_through = 0
        # Nats-Msg-Ids foreign messages hold (id -> their stream sequence): an event of
        # the ledger with that id is published under another, or the stream's duplicate
        # window would drop it.
        self._taken_ids: dict[str, int] = {}
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
        # Set once both streams exist with this configuration; a new session then does not
        # wait on the checkpoints stream's own leader election to publish events.
        self._streams_ready = False
        self._retry = SessionRetry()
        # A session fails every 0.2-10 s while NATS or the store is away: logged when the
        # failures start, then every half minute, and once when a session publishes again.
        self._session_failures = FailureLog(
            "relay.session_failed", "relay.session_recovered", logger=log
        )
        # nats-py's own errors (a node of a cluster that is down, a refused connection)
        # come once per connection attempt: logged the same way.
        self._nats_errors = FailureLog("relay.nats_error", logger=log)
        # Each session starts with the next node of a cluster: a node that is frozen or
        # cut off (it accepts TCP, answers nothing) costs one connect timeout, not one per
        # session (the client picks a node at random and tries only that one here).
        self._first_server = 0
        # The last error nats-py reported during the current session: a refused publish
        # (a permissions violation) comes only there, while the call itself times out.
        self._session_nats_error: str | None = None
        # The largest message the session's server takes (its INFO's max_payload).
        self._max_payload = 1024 * 1024

    # -- lifecycle (called from other threads)

    def start(self) -> None:
        prepare_position_table(self._store_env)
        self._tracking = open_database(self._store_env)
        if not self._tracking.location:
            # A store in this process's memory (tests): the table made above went with
            # its connection; this one keeps it.
            create_position_table(self._tracking)
        self._thread.start()

    def wake(self) -> None:
        """New events were recorded in this process."""
        self._wake.set()

    def publish_checkpoint(self, position: int, body: bytes) -> None:
        """Queue a signed checkpoint for the witnesses' stream (sent by the leading relay)."""
        self._checkpoints.put((position, body))
        self._poke()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._poke()
        self._thread.join(timeout)
        if self._tracking is not None:
            self._tracking.close()

    def lag(self) -> RelayLag | None:
        """What is recorded but not yet published, read from the store; ``None`` unless
        this relay leads and knows its position (another replica's relay publishes)."""
        return relay_lag(self._ledger, self.status)

    def _poke(self) -> None:
        """The relay's loop, waiting for events, looks at its other work now."""
        self._wake.set()
        source = self._source
        if source is not None:
            source.poke()

    # -- the relay thread

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        # Whether this relay held the lock when last anyone could tell: while the store is
        # unreachable it asks for the lock again every STORE_RETRY_SECONDS, not at the
        # followers' pace, so that it resumes as soon as the store is back.
        held = False
        # Whether it said it follows: once when it finds another relay holding the lock,
        # at its start as after leading, so an operator (and a test) can tell who leads
        # now and that the other relay is there to take over.
        following = False
        while not self._stopping.is_set():
            if not await asyncio.to_thread(self._leader.try_acquire):
                if self.status.leader or not (following or self._leader.unreachable):
                    log.info("relay.follower", stream=self._settings.stream.name)
                    following = True
                self.status.leader = False
                held = held and self._leader.unreachable  # else another relay holds it
                await self._sleep(
                    STORE_RETRY_SECONDS if held else self._settings.leader_retry_seconds
                )
                continue
            held = True
            following = False
            if not self.status.leader:
                log.info("relay.leader", stream=self._settings.stream.name)
            self.status.leader = True
            if not self.status.position_known and self.status.kept_position is None:
                try:
                    self.status.kept_position = await asyncio.to_thread(self._kept_position)
                except STORE_CONNECTION_ERRORS as exc:  # read again at the next round
                    log.debug("relay.kept_position_unread", error=str(exc))
            try:
                await self._session()
                self._retry.reset()
            except Exception as exc:  # logged and retried: the relay outlives outages
                self.status.connected = False
                self.status.last_error = session_error(exc, self._session_nats_error)
                self._on_health(False)
                pause = self._retry.pause(exc, time.monotonic())
                self._session_failures.failed(
                    error=self.status.last_error,
                    position=self.status.position,
                    retry_in=round(pause, 2),
                )
                await self._sleep(pause)
        await asyncio.to_thread(self._leader.release)
        self._on_health(False)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.to_thread(self._stopping.wait, seconds)

    async def _session(self) -> None:
        settings = self._settings

        self._session_nats_error = None

        async def error(exc: Exception) -> None:  # e.g. a node of the cluster is down
            self._session_nats_error = f"{type(exc).__name__}: {exc}"
            self._nats_errors.failed(error=self._session_nats_error)

        servers = nats_servers(settings.nats_url)  # one server, or the nodes of a cluster
        first = self._first_server % len(servers)
        self._first_server += 1  # the next session starts on the next node
        nc = await nats.connect(
            servers[first:] + servers[:first],
            dont_randomize=True,
            allow_reconnect=False,  # a new session (on any node) re-derives its position
            # Without these, nats-py's first connection tries a refused server again and
            # again, 2 s apart, 60 times, whatever allow_reconnect says: the session did not
            # fail (nor say so) for two minutes, and a stop waited for it. Each node is now
            # tried twice at most; the pause between sessions is the relay's, which a stop
            # ends.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            name="incident-ledger-relay",
            error_cb=error,
            **connect_options(settings.nats),
        )
        self._max_payload = nc.max_payload
        source: BatchSource | None = None
        try:
            js = nc.jetstream(timeout=settings.publish_timeout_seconds)
            if not self._streams_ready:
                await ensure_stream(js, settings.stream)
                self._streams_ready = True
            position = await self._start_position(js)
            self.status.connected = True
            self.status.position = position
            self.status.position_known = True
            log.info("relay.publishing", stream=settings.stream.name, after=position)
            source = self._source = await asyncio.to_thread(self._open_source, position)
            # The session works once it has published, or found nothing to publish: only
            # then are the failures over (their end logged, the retries' backoff reset, the
            # health SERVING). Before, that was said as soon as the position was found, and
            # a session that failed at each first publish (a permission the relay's user
            # lacks) logged its recovery and its failure, and was retried after 0.2 s, every
            # time, forever, its health flipping between SERVING and NOT_SERVING. Nothing to
            # publish is the source's end of the log (``caught_up``), not an empty batch: a
            # batch not ready within the poll (the encoder still reading a backlog) made a
            # session whose publishes NATS never acknowledged (its disk full) say it
            # recovered, then fail again.
            working = False
            while not self._stopping.is_set():
                if not nc.is_connected:  # noticed while idle, not only at the next publish
                    raise ConnectionError("the connection to NATS was lost")
                outgoing = await asyncio.to_thread(self._next_batch, source)
                if outgoing is None:
                    log.warning("relay.leadership_lost")
                    self.status.leader = False
                    return
                if outgoing:
                    await self._publish(js, outgoing)
                await self._publish_checkpoints(js)
                if not working and (outgoing or source.caught_up):
                    working = True
                    self._on_health(True)
                    self._retry.reset()
                    self._session_failures.succeeded(stream=settings.stream.name)
                    self._nats_errors.succeeded()
        except NotFoundError:  # the stream was deleted: made again by the next session
            self._streams_ready = False
            raise
        finally:
            self.status.connected = False
            try:
                if source is not None:
                    self._source = None
                    await asyncio.to_thread(source.close)
                    # Fails while the store is away: NATS's connection is closed all the same.
                    await asyncio.to_thread(self._save_position, self.status.position)
            finally:
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
            except Exception as exc:
                self._checkpoints.put((position, body))  # sent by the next session
                if isinstance(exc, NoStreamResponseError):  # their stream may be gone
                    self._streams_ready = False
                raise
            self._on_checkpoint_sent(position)

    def _open_source(self, position: int) -> BatchSource:
        """The session's messages after ``position``: from the encoder process, or read
        and encoded here."""
        if self._encoder_link is not None:
            return self._encoder_link.open(position)
        reader = open_reader(
            self._ledger.recorder, position, self._topics, self._settings.batch_size, self._wake
        )
        return LocalSource(reader, self._encoder)

    def _next_batch(self, source: BatchSource) -> list[Outgoing] | None:
        """The next events to publish, encoded (an empty list when none came within the
        poll); None when this relay no longer leads. In a worker thread: one hop from the
        event loop per batch, where the check, the read and the encoding took one each."""
        batch = source.next_batch(self._settings.poll_seconds)
        # Checked once the batch is in hand, right before it is published (one check a
        # batch, as before): checked before the wait, a relay stalled there (a paused
        # process whose lock's session the database ended) published the batch it then
        # held after another had taken over and published the same events, past the
        # stream's duplicate window: on the stream twice, out of order.
        if not self._leader.still_held():
            return None
        return batch

    async def _publish(self, js: JetStreamContext, encoded: list[Outgoing]) -> None:
        outgoing = [self._fitted(self._untaken(m)) for m in encoded]
        started = time.perf_counter()
        acks = [await js.publish_async(m.subject, m.payload, headers=m.headers) for m in outgoing]
        timeout = self._settings.publish_timeout_seconds
        try:
            done = await asyncio.wait_for(asyncio.gather(*acks), timeout)
        except TimeoutError as exc:
            # Said "TimeoutError: " and nothing more: the operator had no lead. A server
            # whose disk filled under its stream answers no publish (its log says "no space
            # left on device"), and keeps not answering, space freed, until it restarts.
            raise TimeoutError(
                f"NATS acknowledged none or only part of {len(outgoing)} messages within "
                f"{timeout:g} s: see the NATS server's log (a full disk under its JetStream "
                "store, which a NATS server reports until it is restarted; a refused "
                "permission; a stream without a leader)"
            ) from exc
        for message, ack in zip(outgoing, done, strict=True):
            if isinstance(ack, PubAck) and ack.duplicate:
                await self._check_duplicate(js, message, ack.seq)
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
        """Where to continue: after the last stream message the store vouches for, else
        the kept position. Foreign messages on the way are reported, never trusted."""
        name = self._settings.stream.name
        state = (await js.stream_info(name)).state
        foreign = 0
        lost: list[int] = []  # positions of the ledger's own events the store lost
        position: int | None = 0 if not state.last_seq else None
        if state.messages:
            lowest = max(state.first_seq, state.last_seq - TAIL_CHECK_LIMIT + 1)
            for seq in range(state.last_seq, lowest - 1, -1):
                try:
                    msg = await js.get_msg(name, seq)
                except NotFoundError:  # deleted from the middle of the stream
                    continue
                headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
                reason = await asyncio.to_thread(
                    foreign_reason, self._ledger, self._topics, headers, msg.data or b""
                )
                if reason is None:
                    position = int(headers[POSITION_HEADER])
                    break
                if reason.startswith(BEYOND_THE_STORE) and await asyncio.to_thread(
                    lost_event, self._ledger, headers, msg.data or b""
                ):
                    lost.append(int(headers[POSITION_HEADER]))
                    msg_id = headers.get("Nats-Msg-Id")
                    if msg_id is not None and msg_id.isdigit():
                        # Its position goes to an event recorded from now on: under an id
                        # of its own, or the duplicate window would drop that event.
                        self._taken_ids[msg_id] = seq
                    continue
                foreign += 1
                counted = seq > self._foreign_counted_through
                self._foreign(seq, msg.subject or "", headers, reason, counted, foreign)
        self._foreign_counted_through = max(self._foreign_counted_through, state.last_seq)
        if lost:
            log.warning(
                "relay.stream_ahead",
                stream=name,
                events=len(lost),
                positions=sorted(lost)[:FOREIGN_LOGGED],
                reason="the stream holds events sealed by this ledger that its store does not "
                "hold: continuing after the last event both hold",
                note="expected after the ledger's store was restored from a backup older than "
                "the stream (docs/operations.md, Restoring): those events were recorded after "
                "the backup and are lost; subscribers and webhooks may hold them, and their "
                "positions go to the events recorded from now on",
            )
        if position is not None:
            await self._check_not_behind(name, position)
        if position is None:
            position = await asyncio.to_thread(self._kept_position)
            if foreign:
                log.error(
                    "relay.stream_unverified",
                    stream=name,
                    foreign=foreign,
                    after=position,
                    reason=f"no message of the last {TAIL_CHECK_LIMIT} matches the store: "
                    "continuing after the position kept in the database",
                )
        if foreign > FOREIGN_LOGGED:
            log.error("relay.foreign_messages", stream=name, foreign=foreign, after=position)
        self._taken_ids = {k: v for k, v in self._taken_ids.items() if int(k) > position}
        self.status.stream_foreign = foreign
        self._on_stream_check(foreign == 0)
        return position

    def _foreign(
        self,
        seq: int,
        subject: str,
        headers: Mapping[str, str],
        reason: str,
        counted: bool,
        logged: int,
    ) -> None:
        """A message on the stream the store does not vouch for: reported, never trusted."""
        if counted:
            self.status.foreign_messages += 1
        msg_id = headers.get("Nats-Msg-Id")
        if msg_id is not None and msg_id.isdigit():  # the relay's ids are positions
            self._taken_ids[msg_id] = seq
        if logged <= FOREIGN_LOGGED:
            log.error(
                "relay.foreign_message",
                stream=self._settings.stream.name,
                stream_seq=seq,
                subject=subject,
                position_header=headers.get(POSITION_HEADER),
                msg_id=msg_id,
                event_id_header=headers.get("Ledger-Event-Id"),
                reason=reason,
            )

    def _fitted(self, message: Outgoing) -> Outgoing:
        """The message, trimmed to fit the server's max payload if it must be (one warning
        per message trimmed)."""
        smaller = fitted(message, self._max_payload)
        if smaller is not message:
            log.warning(
                "relay.message_trimmed",
                position=message.position,
                incident=message.headers.get("Ledger-Incident"),
                left_out=smaller.headers[TRIMMED_HEADER],
                bytes=message_size(message),
                trimmed_bytes=message_size(smaller),
                max_payload=self._max_payload,
                note="the incident's state is larger than NATS takes in one message: sent "
                "without what the header Ledger-Incident-Trimmed names (GetIncident has it)",
            )
        return smaller

    def _untaken(self, message: Outgoing) -> Outgoing:
        """The message, under a Nats-Msg-Id of its own if a foreign message holds its id."""
        seq = self._taken_ids.get(message.headers["Nats-Msg-Id"])
        if seq is None:
            return message
        headers = {**message.headers, "Nats-Msg-Id": f"{message.position}-{seq}"}
        return Outgoing(message.position, message.subject, headers, message.payload)

    async def _check_duplicate(self, js: JetStreamContext, message: Outgoing, seq: int) -> None:
        """The stream dropped ``message`` as a duplicate of the message at ``seq``: fine if
        that is the same event (an overlap after a restart); if it is a foreign message,
        the event is published again under an id of its own (it then follows the rest of
        its batch), so that it still reaches the stream."""
        name = self._settings.stream.name
        try:
            msg = await js.get_msg(name, seq)
        except NotFoundError:  # removed since (limits): nothing left to compare with
            log.warning("relay.duplicate_unchecked", stream=name, stream_seq=seq)
            return
        headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
        reason = await asyncio.to_thread(
            foreign_reason, self._ledger, self._topics, headers, msg.data or b""
        )
        if reason is None:
            return
        self._foreign(seq, msg.subject or "", headers, reason, counted=True, logged=1)
        self.status.stream_foreign += 1
        self._on_stream_check(False)
        again = self._untaken(message)
        await js.publish(again.subject, again.payload, headers=again.headers)

    def _database(self) -> Database:
        if self._tracking is None:
            raise RuntimeError("the relay was not started")
        return self._tracking

    async def _check_not_behind(self, stream: str, position: int) -> None:
        """A line when the stream ends before the position kept in the database; the
        events after ``position`` are published again either way. An error when this relay
        itself had published beyond it (NATS lost messages it had acknowledged while the
        ledger ran: its storage, or the stream deleted or purged). A warning when it finds
        the stream so at its first look: that is what every restore of the ledger's store
        onto a new or older stream ends in (docs/operations.md), which the relay cannot tell
        from a NATS that lost its storage while the ledger was stopped, so it names both.
        Either way the evidence bucket, kept by the same servers, may have lost files too
        (``ledgerctl audit verify --deep``)."""
        kept = await asyncio.to_thread(self._kept_position)
        if position >= kept:
            return
        seen = self.status.position if self.status.position_known else 0
        if position < seen:
            log.error(
                "relay.stream_behind",
                stream=stream,
                stream_position=position,
                published=kept,
                reason="the stream lost messages this relay had published to it: publishing "
                "them again",
                note="NATS lost messages it had acknowledged (its storage, or the stream "
                "deleted or purged), and evidence files may be lost with them: run "
                "ledgerctl audit verify --deep",
            )
            return
        log.warning(
            "relay.stream_behind",
            stream=stream,
            stream_position=position,
            published=kept,
            reason="the stream ends before the position the database says was published: "
            "publishing from there again",
            note="expected after the ledger's store was restored onto a new NATS or an older "
            "stream (docs/operations.md, Restoring); otherwise NATS lost messages it had "
            "acknowledged while the ledger was stopped. Either way run "
            "ledgerctl audit verify --deep: evidence files may be missing",
        )

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
