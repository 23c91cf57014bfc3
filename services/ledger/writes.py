"""The write path's machinery: group commit and the cache of recently written incidents.

Group commit: request threads prepare their commands concurrently and hand the
resulting aggregates to one committer thread, which saves everything that is
waiting in a single transaction. A command still waits for its own commit before
it answers; one commit (one fsync) then serves many commands. If a batch fails
(another process won a race, a request id was already recorded), its commands
are saved one by one so that each gets its own outcome.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Recording

log = structlog.get_logger(__name__)

Save = Callable[..., list[Recording[UUID]]]


@dataclass
class _Pending:
    aggregates: Sequence[Aggregate]
    outcome: Future[list[Recording[UUID]]] = field(default_factory=Future)


class GroupCommitter:
    """Saves the aggregates of concurrent commands together, in one transaction."""

    def __init__(self, save: Save, *, max_batch: int = 256) -> None:
        self._save = save
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-commit", daemon=True)
        self._thread.start()

    def save(self, *aggregates: Aggregate) -> list[Recording[UUID]]:
        """Save atomically with whatever else is waiting; raises what the save raised."""
        pending = _Pending(aggregates)
        self._queue.put(pending)
        return pending.outcome.result()

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

    def _commit(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                recordings = self._save(*(a for p in batch for a in p.aggregates))
            except Exception:  # each command is then saved alone, to get its own outcome
                log.debug("commit.batch_failed", size=len(batch))
            else:
                by_id: dict[Any, list[Recording[UUID]]] = {}
                for recording in recordings:
                    by_id.setdefault(recording.domain_event.originator_id, []).append(recording)
                for pending in batch:
                    pending.outcome.set_result(
                        [r for a in pending.aggregates for r in by_id.get(a.id, [])]
                    )
                return
        for pending in batch:
            try:
                pending.outcome.set_result(self._save(*pending.aggregates))
            except Exception as exc:  # handed to the waiting command, which raises it
                pending.outcome.set_exception(exc)


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
