"""One live subscription to the notifier per web process, fanned out to the browser tabs.

A thread reads the client's :class:`~incidentledger_client.Subscription` (which resumes by
cursor when the stream drops) and hands each event to the event loop; every open SSE
connection has a bounded queue of its own. The events carry the ledger position, which the
page uses as the SSE event id. A tab that falls behind (its queue full) is told to reload
its board rather than being sent a partial stream.

The hub also says whether it is live (:attr:`Hub.live`): the subscription asks for a
heartbeat every :data:`HEARTBEAT_SECONDS`, and a subscription silent for longer than
:data:`STALE_SECONDS` (the notifier stopped, unreachable, or reconnecting) is not. The tabs
are told (their boards and maps may be out of date), and the change is logged.

The notifier goes on sending heartbeats while the ledger is away, when no change can come
and no read of a board or a map can succeed: :class:`LedgerWatch` says whether the page
reaches the ledger, and the tabs are told that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from incidentledger_client import (
    CursorExpired,
    InvalidArgument,
    LedgerError,
    NotifierClient,
    Subscription,
)

log = structlog.get_logger(__name__)

#: Events a tab may have waiting before it is told to reload instead.
QUEUE_SIZE = 256
#: How often the notifier sends the subscription a heartbeat when no event comes.
HEARTBEAT_SECONDS = 5
#: Silence longer than this (two heartbeats missed) means live updates are interrupted.
STALE_SECONDS = 2.0 * HEARTBEAT_SECONDS + 2.0
#: How often the hub checks whether it is live (and logs a change).
WATCH_SECONDS = 1.0
#: How often the page checks that its channel to the ledger is connected, and how long a
#: check waits for the channel to connect before the ledger counts as away.
LEDGER_CHECK_SECONDS = 1.0
LEDGER_CONNECT_SECONDS = 2.0


@dataclass(frozen=True)
class Change:
    """An event as the page hears of it: the position (SSE id), the incident and the type."""

    position: int
    incident: str
    type: str
    status: str


#: Marks a queue that overflowed: the tab reloads its board at the latest position.
RESYNC = Change(0, "", "resync", "")


class NotReadyError(ValueError):
    """What the subscription needs is not there yet, as on a first start, when the page
    starts before the ledger has written the development tokens: waited for, at info."""


class SetupMissingError(ValueError):
    """What the subscription needs is missing and nothing will write it (the development
    tokens, left out of a restore): an error, said once with what to do, and tried again
    every second all the same, so that putting it back resumes the page."""


class Hub:
    """Fans the one subscription out to the tabs (see the module docstring)."""

    def __init__(
        self, connect: Callable[[], NotifierClient], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._watcher: asyncio.Task[None] | None = None
        #: Whether the hub was live when last watched (what the log last said).
        self._was_live = False
        #: When the hub was first watched, and whether it said it is not live yet: a page
        #: that never hears from the notifier (a wrong address, TLS, token) says so too.
        self._first_watched: float | None = None
        self._said_not_live = False
        #: Why the last attempt to subscribe failed before reaching the notifier (None: it
        #: did not), named by the warning of a page never live.
        self._connect_error: str | None = None
        self._queues: set[asyncio.Queue[Change]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        #: The position of the last event heard (0: none yet).
        self.position = 0
        #: Where a new subscription resumes ("": from now).
        self._cursor = ""

    @property
    def listeners(self) -> int:
        return len(self._queues)

    @property
    def live(self) -> bool:
        """Whether changes reach the tabs now: the subscription heard from the notifier
        (an event or a heartbeat) within :data:`STALE_SECONDS`."""
        subscription = self._subscription
        heard = subscription.received_at if subscription is not None else None
        return heard is not None and self._clock() - heard <= STALE_SECONDS

    def watch(self) -> None:
        """Log a change of :attr:`live` (a warning when live updates stop)."""
        live = self.live
        now = self._clock()
        if self._first_watched is None:
            self._first_watched = now
        if live == self._was_live:
            if not live and not self._said_not_live and now - self._first_watched >= STALE_SECONDS:
                # Never live since the start: the client reconnects by itself, so no
                # failure reaches the log otherwise.
                self._said_not_live = True
                error = self._connect_error
                log.warning(
                    "situation_room.live_interrupted",
                    position=self.position,
                    silent_seconds=STALE_SECONDS,
                    note="the notifier has not been heard from since the page started: check "
                    "SITUATION_ROOM_NOTIFIER_ADDRESS, SITUATION_ROOM_TOKEN and, if the "
                    "notifier speaks TLS, LEDGER_TLS_CA; boards and maps are not updated",
                    **({"error": error} if error is not None else {}),
                )
            return
        self._was_live = live
        self._said_not_live = True
        if live:
            log.info("situation_room.live_on", position=self.position)
        else:
            log.warning(
                "situation_room.live_interrupted",
                position=self.position,
                silent_seconds=STALE_SECONDS,
                note="the notifier has not been heard from: boards and maps are not updated",
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.watch()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read, name="situation-room-live", daemon=True)
        self._thread.start()
        self._watcher = self._loop.create_task(self._watch())

    def stop(self) -> None:
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._subscription is not None:
            self._subscription.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _read(self) -> None:
        """Subscribe (again after a failure, every second) until stopped."""
        while not self._stopped.is_set():
            try:
                notifier = self._connect()
            except NotReadyError as error:
                self._connect_error = str(error)
                log.info("situation_room.subscription_waiting", reason=str(error))
                self._stopped.wait(1.0)
                continue
            except SetupMissingError as error:
                if self._connect_error != str(error):  # once, not every second
                    log.error("situation_room.subscription_impossible", error=str(error))
                self._connect_error = str(error)
                self._stopped.wait(1.0)
                continue
            except (OSError, ValueError) as error:
                self._connect_error = str(error)
                log.warning("situation_room.subscription_failed", error=str(error))
                self._stopped.wait(1.0)
                continue
            self._connect_error = None
            unusable = False  # the cursor: resume from now, the tabs reload
            try:
                self._subscription = notifier.subscribe(
                    cursor=self._cursor or None,
                    max_reconnects=None,
                    heartbeat_seconds=HEARTBEAT_SECONDS,
                )
                if self._stopped.is_set():
                    return
                self._follow(self._subscription)
            except LedgerError as error:
                # Too old to resume (no longer kept), or ahead of the stream (NATS lost it
                # and the stream was made again): tried again, it would fail for ever.
                unusable = isinstance(error, CursorExpired) or (
                    isinstance(error, InvalidArgument) and error.field == "cursor"
                )
                if not self._stopped.is_set():
                    log.warning(
                        "situation_room.subscription_failed",
                        error=str(error),
                        **({"note": "resuming from now; the tabs reload"} if unusable else {}),
                    )
            finally:
                if unusable:
                    self._cursor = ""
                elif self._subscription is not None:
                    self._cursor = self._subscription.cursor or self._cursor
                notifier.close()
            if unusable:
                self._resync()
            self._stopped.wait(1.0)

    def _resync(self) -> None:
        """Tell every tab to reload (from the reading thread): what came between the last
        event heard and the new subscription's start reaches it by that reload."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is stopping
            loop.call_soon_threadsafe(self._publish_resync)

    def _publish_resync(self) -> None:
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(RESYNC)

    def _follow(self, subscription: Subscription) -> None:
        loop = self._loop
        assert loop is not None  # noqa: S101 - set by start()
        for note in subscription:
            change = Change(
                note.event.position, note.event.incident, note.event.type, note.incident.status
            )
            try:
                loop.call_soon_threadsafe(self._publish, change)
            except RuntimeError:  # the loop closed: the process is stopping
                return

    def _publish(self, change: Change) -> None:
        self.position = max(self.position, change.position)
        for queue in self._queues:
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)

    def attach(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def detach(self, queue: asyncio.Queue[Change]) -> None:
        self._queues.discard(queue)


class LedgerWatch:
    """Whether the page reaches the ledger (:attr:`up`): its channel connected, or connecting
    within :data:`LEDGER_CONNECT_SECONDS`, checked every :data:`LEDGER_CHECK_SECONDS` in a
    thread of its own (no call is made: the ledger logs nothing of it). A change is logged."""

    def __init__(self, reachable: Callable[[float], bool]) -> None:
        self._reachable = reachable
        #: Whether the last check reached the ledger (so until a first check says not).
        self.up = True
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        up = self._reachable(LEDGER_CONNECT_SECONDS)
        if up == self.up:
            return
        self.up = up
        if up:
            log.info("situation_room.ledger_reached")
        else:
            log.warning(
                "situation_room.ledger_unreachable",
                waited_seconds=LEDGER_CONNECT_SECONDS,
                note="the ledger does not answer: boards and maps are not updated",
            )

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.check()
            self._stopped.wait(LEDGER_CHECK_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="situation-room-ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=LEDGER_CONNECT_SECONDS + 1.0)
