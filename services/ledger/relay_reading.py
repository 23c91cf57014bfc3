"""How the relay reads the store's notification log after a position, in batches: by
polling, woken by the ledger's commits (SQLite, in memory) and on PostgreSQL also by the
store's LISTEN/NOTIFY."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

#: How long a reader waits for its LISTEN to be in place before its first read.
LISTEN_START_SECONDS = 5.0


class NotificationReader(ABC):
    """Incident notifications after a position, in log order, in batches."""

    @abstractmethod
    def next_batch(self, timeout: float) -> list[Notification]:
        """The next notifications, or an empty list if none came within ``timeout``."""

    def close(self) -> None:
        return None


class PollingReader(NotificationReader):
    """Polls the log; ``wake`` (a commit of the ledger) ends a wait at once."""

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
        # The last read reached the end of the log: the next one waits for news first.
        # Reading again at once found nothing, every time: two reads of the store per
        # commit instead of one.
        self._drained = False

    def next_batch(self, timeout: float) -> list[Notification]:
        if self._drained:
            self._wake.wait(timeout)  # a timeout reads anyway: another process may write
        self._wake.clear()  # before the read: a commit after it wakes the next wait
        rows = self._select()
        self._drained = len(rows) < self._batch
        if rows:
            self._position = rows[-1].id
        return rows

    def _select(self) -> list[Notification]:
        return list(
            self._recorder.select_notifications(
                self._position, self._batch, topics=self._topics, inclusive_of_start=False
            )
        )


class ListeningReader(PollingReader):
    """PostgreSQL: :class:`PollingReader`, woken as well by the store's notifications
    (``LISTEN`` on the channel the library's recorder ``NOTIFY``-s at every insert, from any
    replica), on a connection of its own, read by a thread.

    It reads the log in the relay's batches (``select_notifications``): the library's own
    subscription hands the rows over one at a time, through two queues and a thread, and
    drained 12,200-12,500 events/s where these reads give 15,100-16,000
    (docs/performance.md, "The relay's encoder")."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        position: int,
        topics: Sequence[str],
        batch: int,
        wake: threading.Event,
    ) -> None:
        super().__init__(recorder, position, topics, batch, wake)
        self._datastore = recorder.datastore
        self._channel = recorder.channel_name
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        listening = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, args=(listening,), name="relay-listen", daemon=True
        )
        self._thread.start()
        # Listening before the first read: an insert after that read is never missed.
        listening.wait(LISTEN_START_SECONDS)

    def _listen(self, listening: threading.Event) -> None:
        try:
            with self._datastore.get_connection() as conn:
                conn.execute(SQL("LISTEN {0}").format(Identifier(self._channel)))
                listening.set()
                while not self._stopped.is_set():
                    # At most 0.1 s a wait, so that a stop is seen; what a notification
                    # says does not matter, only that one came.
                    for _ in conn.notifies(timeout=0.1, stop_after=1):
                        self._wake.set()
        except Exception as exc:  # handed to the reader's caller, whose session fails
            self._error = exc
            self._wake.set()
        finally:
            listening.set()

    def next_batch(self, timeout: float) -> list[Notification]:
        if self._error is not None:
            raise self._error
        return super().next_batch(timeout)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()


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
        return ListeningReader(recorder, position, topics, batch, wake)
    return PollingReader(recorder, position, topics, batch, wake)
