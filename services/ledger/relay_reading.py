"""How the relay reads the store's notification log after a position, in batches: by
polling (SQLite, in memory; a write in this process wakes it) or through PostgreSQL's
LISTEN/NOTIFY subscription."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, Notification
from eventsourcing.postgres import PostgresApplicationRecorder


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


def open_reader(
    recorder: ApplicationRecorder,
    position: int,
    topics: Sequence[str],
    batch: int,
    wake: threading.Event,
) -> NotificationReader:
    """The reader that suits the store: PostgreSQL's subscription, else polling (woken by
    ``wake`` when this process, or the ledger's commits, record events)."""
    if isinstance(recorder, PostgresApplicationRecorder):
        return SubscriptionReader(recorder, position, topics, batch)
    return PollingReader(recorder, position, topics, batch, wake)
