"""The write path's machinery: group commit and the cache of recently written incidents.

Group commit: request threads prepare their commands concurrently and hand the
resulting aggregates to one committer thread, which saves everything that is
waiting in a single transaction. A command still waits for its own commit before
it answers; one commit (one fsync) then serves many commands. If a batch fails
(another process won a race, a request id was already recorded), its commands
are saved one by one so that each gets its own outcome. What else a command stores
with its events (the keys of the personal data they seal) goes into the same
transaction as them, whichever that is.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar
from uuid import UUID

import structlog
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification

log = structlog.get_logger(__name__)

#: What a command hands over to be stored: its events (or what ``put`` takes for them),
#: and rows stored with them (``R``).
T = TypeVar("T")
R = TypeVar("R")
Recorded = Callable[[Sequence[Notification]], None]


class _Pending(Generic[T, R]):
    """One command's events and, once committed, its outcome.

    A bare lock, held until the outcome is set, is the cheapest way to make the
    command's thread wait (a Future's condition variable costs measurably more).
    """

    __slots__ = ("_done", "error", "events", "recordings", "rows")

    def __init__(self, events: Sequence[T], rows: Sequence[R]) -> None:
        self.events = events
        self.rows = rows
        self.recordings: list[Notification] = []
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def set_result(self, recordings: list[Notification]) -> None:
        self.recordings = recordings
        self._done.release()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._done.release()

    def result(self) -> list[Notification]:
        self._done.acquire()
        if self.error is not None:
            raise self.error
        return self.recordings


class GroupCommitter(Generic[T, R]):
    """Stores the new events of concurrent commands together, in one transaction.

    ``put`` stores a list of events and a list of rows atomically (the event store's
    ``put``, or one that also takes events already mapped, and other rows);
    ``on_recorded`` is called with what each successful ``put`` recorded: the stored
    events with their positions (the library's notifications; what was saved already
    mapped has no domain event to go with it).
    """

    def __init__(
        self,
        put: Callable[[Sequence[T], Sequence[R]], list[Notification]],
        *,
        max_batch: int = 256,
        after_commit: Callable[[], None] | None = None,
        on_recorded: Recorded | None = None,
    ) -> None:
        self._put = put
        self._after_commit = after_commit
        self._on_recorded = on_recorded
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending[T, R] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-commit", daemon=True)
        self._thread.start()

    def save(self, events: Sequence[T], rows: Sequence[R] = ()) -> list[Notification]:
        """Store the events and ``rows`` atomically, with whatever else is waiting; raises
        what it raised."""
        pending: _Pending[T, R] = _Pending(events, rows)
        self._queue.put(pending)
        return pending.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._commit(batch)
                    return
                batch.append(item)
            self._commit(batch)
            if self._after_commit is not None:
                self._after_commit()

    def _commit(self, batch: list[_Pending[T, R]]) -> None:
        if len(batch) > 1:
            try:
                recordings = self._put(
                    [e for p in batch for e in p.events], [r for p in batch for r in p.rows]
                )
            except Exception:  # each command is then saved alone, to get its own outcome
                log.debug("commit.batch_failed", size=len(batch))
            else:
                self._recorded(recordings)
                start = 0
                for pending in batch:
                    end = start + len(pending.events)
                    pending.set_result(recordings[start:end])
                    start = end
                return
        for pending in batch:
            try:
                recordings = self._put(pending.events, pending.rows)
            except Exception as exc:  # handed to the waiting command, which raises it
                pending.set_exception(exc)
            else:
                self._recorded(recordings)
                pending.set_result(recordings)

    def _recorded(self, recordings: list[Notification]) -> None:
        if self._on_recorded is None:
            return
        try:
            self._on_recorded(recordings)
        except Exception:  # an observer's failure must not fail a commit that succeeded
            log.exception("commit.observer_failed")


class AggregateCache:
    """The latest committed state of recently written incidents (bounded LRU).

    Only the write path uses it, under the incident's lock. An entry may be stale
    when another process wrote the incident since: the save then fails with a
    version conflict, the entry is dropped and the command is retried on fresh state.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def get(self, key: UUID) -> Aggregate | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: UUID, value: Aggregate) -> None:
        if self._maxsize <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)

    def drop(self, key: UUID) -> None:
        with self._lock:
            self._items.pop(key, None)


class SingleCommands:
    """Single commands under way, so that bulk work gives way to them.

    A field device's batch holds the interpreter for a long stretch of Python (checking,
    making and sealing 500 reports); a single command beside it waits for the interpreter
    at each step of its own. The batch's loops call :meth:`give_way` between steps: while
    single commands run, the batch waits (without the interpreter) until none does, or
    ``pause`` seconds at most.
    """

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._changed = threading.Condition(threading.Lock())  # not reentered: no RLock
        self._running = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around one single command."""
        with self._changed:
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                if not self._running:
                    self._changed.notify_all()

    def give_way(self) -> bool:
        """Wait while single commands run (at most the pause); True if it waited."""
        if not self._running:  # the common case, without the lock
            return False
        with self._changed:
            self._changed.wait_for(lambda: not self._running, timeout=self._pause)
        return True
