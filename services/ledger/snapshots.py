"""Sealed snapshots: an incident's state every so many events, so that a load replays only
the events after the latest one instead of the incident's whole history.

Why sealed: a snapshot is state outside the hash chain. Whoever can write to the database
could put there any state (a subject not erased, a legal hold gone, another incident's
state), and a load that trusted it would act on it. So each snapshot carries the ledger's
Ed25519 seal (services/ledger/seals.py) over the SHA-256 of its whole stored content,
which names the incident, its version and the hash of the event it stands for; the seal
signs ``incidentledger.snapshot-seal.v1:`` and that digest (never what an event's seal
signs, so neither passes for the other).

A load takes the latest snapshot only when its seal holds, it decodes, it is of that
incident, and the stored event at its version has the hash the snapshot names (the chain
continues from it: the events after it link to that hash, and the newest event's seal is
checked as on every load). Otherwise it logs ``incident.snapshot_rejected`` and replays the
events from the first: the events stay the only authority, a snapshot only saves time.

Stored: two rows per snapshot in the library's own snapshots table (``stored_snapshots`` on
SQLite, ``ledger_snapshots`` on PostgreSQL); the event log, its notifications and everything
reading them (verification, export, the relay, the projections) never see them.

- The snapshot, keyed by incident and version: its seal, a line break, then its body
  (canonical JSON, :data:`SNAPSHOT_FORMAT`): the state, and the SHA-256 and number of its
  event rows.
- Its event rows (one canonical JSON line per event: id, type, agency, correctable values),
  keyed by :func:`rows_key` and the version: they grow with the history (about 250 bytes an
  event) and most commands never read them, so a load reads them only when the incident
  first needs them (a correction; the texts of its decisions and evidence), checked then
  against the digest its sealed body names. Read with the snapshot, 2,000 events' rows
  alone took PostgreSQL longer to send than the rest of an erasure.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import structlog
from eventsourcing.persistence import (
    AggregateRecorder,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)

from services.common.jsoncodec import canonical_dumps, loads
from services.ledger.domain.incident import Incident
from services.ledger.seals import SNAPSHOT_SEAL_FORMAT, SealChecker, Sealer

log = structlog.get_logger(__name__)

#: The body's format, and the stored row's topic.
SNAPSHOT_FORMAT = "incidentledger.snapshot.v1"
#: The topic of a snapshot's event rows.
SNAPSHOT_ROWS_FORMAT = "incidentledger.snapshot-rows.v1"


def rows_key(incident_id: UUID) -> UUID:
    """Under what id an incident's snapshots keep their event rows (by the same version)."""
    return uuid5(incident_id, SNAPSHOT_ROWS_FORMAT)


class SnapshotRejected(Exception):  # noqa: N818 - a reason, not a failure of the program
    """Why a stored snapshot is not used (its text: the problem, for the log)."""


def rejected(incident_id: UUID | str, problem: str) -> None:
    """Log a snapshot not used (an error: only a change in the store explains one)."""
    log.error("incident.snapshot_rejected", incident=f"incidents/{incident_id}", problem=problem)


def _lines(rows: list[list[Any]]) -> bytes:
    return b"".join(canonical_dumps(row) + b"\n" for row in rows)


class PackedRows:
    """A snapshot's event rows, read from the store once the incident first needs them
    (:meth:`Incident.from_snapshot_state`).

    The seal covers them through their SHA-256, named in the sealed body; they are checked
    against it when read. Rows missing or failing it are not used: ``replayed`` gives them
    from the events (a replay up to the snapshot's version), and the snapshot is logged as
    rejected.
    """

    def __init__(
        self,
        incident_id: UUID,
        fetch: Callable[[], bytes | None],
        sha256: str,
        count: int,
        replayed: Callable[[], list[list[Any]]],
    ) -> None:
        self.incident_id = incident_id
        self.sha256 = sha256
        self.count = count
        self._fetch = fetch
        self._replayed = replayed
        self._lines: bytes | None = None

    def lines(self) -> bytes | None:
        """The rows as stored, if they are and match their digest."""
        if self._lines is None:
            lines = self._fetch()
            if lines is None or hashlib.sha256(lines).hexdigest() != self.sha256:
                return None
            self._lines = lines
        return self._lines

    def __call__(self) -> list[list[Any]]:
        lines = self.lines()
        if lines is None:
            rejected(self.incident_id, "its event rows are missing or no longer match its seal")
            return self._replayed()
        rows: list[list[Any]] = loads(b"[" + b",".join(lines.splitlines()) + b"]")
        if len(rows) != self.count:
            rejected(self.incident_id, "its event rows do not decode")
            return self._replayed()
        return rows


@dataclass(frozen=True)
class Snapshot:
    """A snapshot whose seal holds: the incident's state at ``version``, standing for the
    event whose hash is ``head_hash``."""

    incident_id: UUID
    version: int
    head_hash: str
    state: dict[str, Any]
    rows_sha256: str
    rows: int

    def incident(
        self, fetch: Callable[[], bytes | None], replayed: Callable[[], list[list[Any]]]
    ) -> Incident:
        """The incident it holds (SnapshotRejected when its state does not rebuild one);
        ``fetch``: its event rows as stored, ``replayed``: from the events, should its own
        be missing or fail their digest."""
        packed = PackedRows(self.incident_id, fetch, self.rows_sha256, self.rows, replayed)
        try:
            incident = Incident.from_snapshot_state(self.state, packed)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SnapshotRejected(f"its state does not decode ({type(exc).__name__})") from None
        if incident.id != self.incident_id or incident.version != self.version:
            raise SnapshotRejected("its state is of another incident or version")
        if incident.head_hash != self.head_hash:
            raise SnapshotRejected("its state's head hash differs from the one it names")
        return incident


def encode(incident: Incident, sealer: Sealer) -> list[StoredEvent]:
    """The stored rows of a snapshot of ``incident`` (its committed state), sealed: the
    snapshot (the seal, a line break, the body) and its event rows (module docstring)."""
    packed, recent = incident.packed_event_rows()
    lines = packed.lines() if isinstance(packed, PackedRows) else None
    if isinstance(packed, PackedRows) and lines is not None:
        # The rows of the snapshot it was loaded from, as they were stored (checked
        # against their digest: no changed row is sealed again), and those after them.
        lines, count = lines + _lines(recent), packed.count + len(recent)
    else:
        rows = incident.event_rows()
        lines, count = _lines(rows), len(rows)
    body = canonical_dumps(
        {
            "format": SNAPSHOT_FORMAT,
            "incident": str(incident.id),
            "version": incident.version,
            "head_hash": incident.head_hash,
            "state": incident.snapshot_state(),
            "rows_sha256": hashlib.sha256(lines).hexdigest(),
            "rows": count,
        }
    )
    seal = sealer.seal(hashlib.sha256(body).hexdigest(), SNAPSHOT_SEAL_FORMAT)
    return [
        StoredEvent(
            originator_id=incident.id,
            originator_version=incident.version,
            topic=SNAPSHOT_FORMAT,
            state=seal.encode("ascii") + b"\n" + body,
        ),
        StoredEvent(
            originator_id=rows_key(incident.id),
            originator_version=incident.version,
            topic=SNAPSHOT_ROWS_FORMAT,
            state=lines,
        ),
    ]


def decode(stored: StoredEvent, checker: SealChecker) -> Snapshot:
    """The snapshot a stored row holds, its seal checked; SnapshotRejected (the problem)
    when the seal fails or the row is not a snapshot of the incident and version it is
    stored under."""
    if stored.topic != SNAPSHOT_FORMAT:
        raise SnapshotRejected(f"its format is {stored.topic[:60]!r}")
    seal, newline, body = bytes(stored.state).partition(b"\n")
    if not newline or seal.startswith(b"{"):
        raise SnapshotRejected("it carries no seal")
    problem = checker.problem(
        hashlib.sha256(body).hexdigest(), seal.decode("ascii", "replace"), SNAPSHOT_SEAL_FORMAT
    )
    if problem is not None:
        raise SnapshotRejected(problem)
    try:
        content = loads(body)
        snapshot = Snapshot(
            UUID(content["incident"]),
            int(content["version"]),
            str(content["head_hash"]),
            dict(content["state"]),
            str(content["rows_sha256"]),
            int(content["rows"]),
        )
        known = content["format"] == SNAPSHOT_FORMAT
    except (KeyError, ValueError, TypeError) as exc:
        raise SnapshotRejected(f"it does not decode ({type(exc).__name__})") from None
    if not known:
        raise SnapshotRejected("its body is of another format")
    if snapshot.incident_id != UUID(str(stored.originator_id)):
        raise SnapshotRejected(f"it is a snapshot of incident {snapshot.incident_id}")
    if snapshot.version != stored.originator_version:
        raise SnapshotRejected(f"it is sealed for version {snapshot.version}")
    return snapshot


class Snapshots:
    """The ledger's snapshots of incidents: written every ``interval`` events (by a thread
    of their own, from state already committed), read back sealed-checked.

    ``interval`` 0: none written (those stored are still read).
    """

    def __init__(self, recorder: AggregateRecorder, sealer: Sealer, interval: int) -> None:
        self.recorder = recorder
        self.interval = interval
        self._sealer = sealer
        self._checker = sealer.checker
        # One writer: snapshots are rare (one per ``interval`` events of an incident), and
        # their insert, a transaction of its own, stays off the command's path.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="snapshots")
        # The incidents with a snapshot handed to the writer and not stored yet: a load
        # meanwhile replays past it, and need not write another.
        self._pending: Counter[UUID] = Counter()
        self._lock = threading.Lock()
        self._unavailable = False  # logged once: the table is missing

    def latest(self, incident_id: UUID) -> Snapshot | None:
        """The incident's latest stored snapshot, if any; SnapshotRejected when it fails
        its seal or does not decode."""
        try:
            rows = self.recorder.select_events(incident_id, desc=True, limit=1)
        except (ProgrammingError, OperationalError) as exc:
            # No snapshots table: a store not migrated since snapshots came (`migrate`
            # makes it). Loads replay every event meanwhile, as before. (SQLite says so
            # with an OperationalError, as it says that it is locked: that one is raised.)
            if isinstance(exc, OperationalError) and "no such table" not in str(exc):
                raise
            if not self._unavailable:
                self._unavailable = True
                log.warning("incident.snapshots_unavailable", error=str(exc)[:200])
            return None
        return decode(rows[0], self._checker) if rows else None

    def rows(self, incident_id: UUID, version: int) -> bytes | None:
        """The event rows stored with the incident's snapshot at ``version``, if any."""
        found = self.recorder.select_events(
            rows_key(incident_id), gt=version - 1, lte=version, limit=1
        )
        return bytes(found[0].state) if found else None

    def due(self, incident: Incident, since: int) -> bool:
        """Whether a snapshot of ``incident`` is due: it crossed a multiple of the interval
        after version ``since`` (that of the state it was loaded or last saved at)."""
        interval = self.interval
        return interval > 0 and incident.version // interval > since // interval

    def pending(self, incident_id: UUID) -> bool:
        """Whether a snapshot of the incident is on its way to the store."""
        with self._lock:
            return self._pending[incident_id] > 0

    def write(self, incident: Incident) -> None:
        """Store a snapshot of ``incident``, whose state must be committed: encoded now
        (the caller holds the incident), inserted by the writer thread."""
        try:
            stored = encode(incident, self._sealer)
        except Exception as exc:  # never fails the command, which committed
            self._failed(incident.id, incident.version, exc)
            return
        with self._lock:
            self._pending[incident.id] += 1
        self._writer.submit(self._insert, incident.id, stored)

    def _failed(self, incident_id: UUID | str, version: int, exc: Exception) -> None:
        log.warning(
            "incident.snapshot_failed",
            incident=f"incidents/{incident_id}",
            version=version,
            error_type=type(exc).__name__,
            error=str(exc)[:200],
        )

    def _insert(self, incident_id: UUID, stored: list[StoredEvent]) -> None:
        try:
            self._store(stored)
        finally:
            with self._lock:
                self._pending[incident_id] -= 1
                if self._pending[incident_id] <= 0:
                    del self._pending[incident_id]

    def _store(self, rows: list[StoredEvent]) -> None:
        stored = rows[0]
        try:
            self.recorder.insert_events(rows)  # one transaction: both or neither
        except IntegrityError:
            pass  # another replica stored this version's snapshot first
        except Exception as exc:  # a snapshot only saves time: loads replay without it
            self._failed(stored.originator_id, stored.originator_version, exc)
        else:
            log.debug(
                "incident.snapshot_stored",
                incident=f"incidents/{stored.originator_id}",
                version=stored.originator_version,
                size=sum(len(row.state) for row in rows),
            )

    def flush(self) -> None:
        """Wait until the snapshots handed to the writer are stored (tests, closing)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
