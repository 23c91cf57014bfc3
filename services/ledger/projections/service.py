"""The projections as a service: following the log, rebuilding, lag, and snapshots."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from services.common.failurelog import FailureLog
from services.common.reference import ReferenceData
from services.common.sql import DatabaseClosedError, SQLiteDatabase, open_database
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.ledger.application import Ledger
from services.ledger.projections.facts import FastDecoder, to_datetime
from services.ledger.projections.filters import BoardFilter
from services.ledger.projections.model import (
    AgencyWorkload,
    BoardRow,
    DecisionInForce,
    KecamatanScore,
    Lag,
    RebuildStats,
    ResponseTimes,
)
from services.ledger.projections.store import PositionBusy, ProjectionStore
from services.ledger.store import read_rows

log = structlog.get_logger(__name__)

BATCH = 500  # notifications per transaction while following the log
REBUILD_BATCH = 5000  # notifications per transaction while rebuilding
POLL_SECONDS = 0.5  # how often the follower looks for other processes' writes
GATHER_SECONDS = 0.02  # under load, the follower starts at most one round per this interval
RETRY_SECONDS = 1.0  # pause of the follower after a failure
# PostgreSQL sessions of the projections: the follower's, and the rest for queries, so
# that a query never waits for the follower's transaction.
SESSIONS = 4
#: The projections are derived from the log, and rebuilt from it: their commits need not
#: wait for the disk. On SQLite (WAL) such a commit appends to the log without a sync; the
#: ledger's next commit (synchronous FULL) syncs it with its own. A crash may undo the last
#: batches applied, their position with them, and they are applied again. The follower's
#: commit holds SQLite's one write lock, and a command whose commit finds it held waits in
#: SQLite's busy handler (1 ms at the least). Catching up about 4,600 events in rounds of
#: 5, the follower held that lock 260 ms in all with the sync, 108 ms without
#: (docs/performance.md, "the projections hold SQLite's write lock for their writes only").
SQLITE_PRAGMAS = ("PRAGMA synchronous = NORMAL",)


class ProjectionReader:
    """The read-only queries, over one store of projection tables."""

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store

    def _refresh(self, catch_up_first: bool) -> None:
        """Hook: bring the tables up to date before a query (when ``catch_up_first``)."""

    def list_incidents(
        self,
        board_filter: BoardFilter,
        after: int,
        limit: int,
        *,
        catch_up_first: bool = True,
        newest_first: bool = False,
    ) -> list[tuple[int, UUID]]:
        """(cursor, id) of matching incidents in order of report (or the newest first),
        after a cursor.

        The cursor is the position of the incident's Reported event; newest first, the
        first page's is :data:`~services.ledger.projections.store.NEWEST_START`.
        """
        self._refresh(catch_up_first)
        return self._store.list_incidents(board_filter, after, limit, newest_first=newest_first)

    def board_rows(
        self, ids: Iterable[UUID], *, catch_up_first: bool = True
    ) -> dict[UUID, BoardRow]:
        self._refresh(catch_up_first)
        return self._store.board_rows(ids)

    def row(self, incident_id: UUID, *, catch_up_first: bool = True) -> BoardRow | None:
        return self.board_rows([incident_id], catch_up_first=catch_up_first).get(incident_id)

    def vulnerability_map(
        self, at: datetime, *, catch_up_first: bool = True
    ) -> list[KecamatanScore]:
        """Every kecamatan of the reference data (then any other seen), in its order."""
        self._refresh(catch_up_first)
        return self._store.vulnerability_map(at)

    def decisions_in_force(
        self,
        at: datetime,
        kecamatan: str | None = None,
        *,
        catch_up_first: bool = True,
        after: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[DecisionInForce]:
        """Decisions with valid_from <= at < valid_until (in their scope's kecamatan), by
        start then record; ``after`` and ``limit`` page them (see the store's)."""
        self._refresh(catch_up_first)
        return self._store.decisions_in_force(at, kecamatan, after, limit)

    def workload(self, at: datetime, *, catch_up_first: bool = True) -> list[AgencyWorkload]:
        self._refresh(catch_up_first)
        return self._store.workload(at)

    def response_times(self, by: str, *, catch_up_first: bool = True) -> list[ResponseTimes]:
        """``by``: agency (the lead agency), severity, category or kecamatan."""
        self._refresh(catch_up_first)
        return self._store.response_times(by)

    def raw_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every projection table, in key order."""
        return self._store.raw_rows()


class HistoricalProjections(ProjectionReader):
    """The projections as they stood at a position, in an in-memory SQLite database."""

    def __init__(self, ledger: Ledger, reference: ReferenceData, position: int) -> None:
        super().__init__(
            ProjectionStore(SQLiteDatabase(":memory:"), FastDecoder(ledger), reference)
        )
        self._store.create_schema()
        self.position = 0
        recorder = ledger.recorder
        while True:
            batch = read_rows(recorder, None, self.position, REBUILD_BATCH, stop=position)
            if not batch:
                break
            self.position, _ = self._store.apply(batch, self.position)
        self.position = max(self.position, position)

    def close(self) -> None:
        self._store.sql.close()

    def __enter__(self) -> HistoricalProjections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Projections(ProjectionReader):
    """Status board, vulnerability map, decisions in force, agency workload and response times.

    Their tables live in the ledger's database (an in-memory SQLite database with
    the in-memory event store). ``start()`` runs a follower thread that applies new
    events when woken (register ``wake`` as the ledger's commit listener) and every
    ``POLL_SECONDS`` (other processes' writes); under load it starts at most one round
    per ``GATHER_SECONDS``, unless a reader waits for a position. Queries catch up
    first unless called with ``catch_up_first=False``.
    """

    def __init__(
        self,
        ledger: Ledger,
        store_env: Mapping[str, str],
        reference: ReferenceData,
        *,
        create: bool = True,
    ) -> None:
        self._ledger = ledger
        self._reference = reference
        super().__init__(
            ProjectionStore(
                open_database(store_env, SESSIONS, sqlite_pragmas=SQLITE_PRAGMAS),
                FastDecoder(ledger),
                reference,
            )
        )
        self._lock = threading.Lock()  # one catch-up at a time in this process
        self._applied = threading.Condition()
        self._known_position = 0
        self._wakeup = threading.Event()
        self._urgent = threading.Event()  # a reader waits for a position
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # While the store is down the follower tries again every RETRY_SECONDS: one warning,
        # a reminder now and then, and one line when it catches up again.
        self._store_failures = FailureLog(
            "projections.store_unavailable", "projections.store_available_again", logger=log
        )
        if create:
            self.create_schema()

    # -------------------------------------------------------------- lifecycle

    def create_schema(self) -> None:
        self._store.create_schema()

    def close(self) -> None:
        self.stop()
        self._store.sql.close()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._follow, name="projections", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wakeup.set()
        self._urgent.set()
        thread.join(timeout)

    def wake(self) -> None:
        """Ask the follower to catch up now (cheap; call it after each commit)."""
        self._wakeup.set()

    def _follow(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()  # before catching up: a wake-up meanwhile is not lost
            started = time.monotonic()
            try:
                position = self.catch_up()
            except DatabaseClosedError:
                return
            except STORE_CONNECTION_ERRORS as exc:  # the store restarts: retried, no traceback
                self._store_failures.failed(error=str(exc))
                self._stopping.wait(RETRY_SECONDS)
            except Exception:
                log.exception("projections.catch_up_failed")
                self._stopping.wait(RETRY_SECONDS)
            else:
                self._store_failures.succeeded(position=position)
            self._wakeup.wait(POLL_SECONDS)
            # Under load, commits gather for a moment, so that one round applies many
            # of them in one transaction; a reader waiting for its write cuts it short.
            pause = started + GATHER_SECONDS - time.monotonic()
            if pause > 0:
                self._urgent.wait(pause)
            self._urgent.clear()

    # -------------------------------------------------------------- following

    def position(self) -> int:
        """The position of the last event applied (a notification id)."""
        return self._store.position()

    def catch_up(self, batch_size: int = BATCH) -> int:
        """Apply every event recorded so far; returns the position reached."""
        with self._lock:
            position, _ = self._catch_up(batch_size)
            return position

    def _catch_up(self, batch_size: int) -> tuple[int, int]:
        """Apply batches until none is left, or until another process holds the
        position (it applies them: this round ends, and queries answer from what is
        applied); returns the position reached and the events applied."""
        recorder = self._ledger.recorder
        position = self._store.position()
        self._announce(position)
        events = 0
        while True:
            batch = read_rows(recorder, None, position, batch_size)
            if not batch:
                return position, events
            try:
                position, applied = self._store.apply(batch, position)
            except PositionBusy:
                return position, events
            events += applied
            self._announce(position)

    def _announce(self, position: int) -> None:
        with self._applied:
            self._known_position = position
            self._applied.notify_all()

    def wait_for(self, position: int, timeout: float) -> bool:
        """True once the projections have applied everything up to ``position``."""
        deadline = time.monotonic() + timeout
        if self._store.position() >= position:
            return True
        if self._thread is None:
            self.catch_up()
            return self._store.position() >= position
        self._urgent.set()
        self.wake()
        with self._applied:
            while self._known_position < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._applied.wait(min(remaining, POLL_SECONDS))
        return True

    def lag(self) -> Lag:
        """Events not applied yet (up to the store's last notification id) and their age."""
        position = self._store.position()
        recorder = self._ledger.recorder
        last = recorder.max_notification_id() or 0
        if last <= position:
            return Lag(0, 0.0)
        oldest = recorder.select_notifications(position, 1, inclusive_of_start=False)
        seconds = 0.0
        if oldest:
            recorded = to_datetime(self._store.decoder.recorded_at(oldest[0]))
            seconds = max(0.0, (datetime.now(UTC) - recorded).total_seconds())
        return Lag(last - position, seconds)

    def rebuild(self) -> RebuildStats:
        """Empty the tables and apply the whole log again, in bulk.

        The reset and each batch are transactions of their own: while a rebuild
        runs, the projections read as lagging ones (``lag()`` says how far).
        """
        with self._lock:
            started = time.perf_counter()
            self._store.reset()
            position, events = self._catch_up(REBUILD_BATCH)
            seconds = time.perf_counter() - started
        log.info(
            "projections.rebuilt",
            events=events,
            position=position,
            seconds=round(seconds, 3),
            events_per_second=round(events / seconds) if seconds else 0,
        )
        return RebuildStats(events, seconds)

    def as_of(self, position: int) -> HistoricalProjections:
        """The projections as they were once every event up to ``position`` was applied.

        Built by replaying the log into an in-memory SQLite database; close it after use.
        """
        return HistoricalProjections(self._ledger, self._reference, position)

    def _refresh(self, catch_up_first: bool) -> None:
        if catch_up_first:
            self.catch_up()
