"""The incident events this process recorded since its last checkpoint, as it stored them.

Whoever can write to the database can delete or rewrite the newest events of the log, those
after the last checkpoint, and a checkpoint made next signs the log as it then is
(docs/hash-chain.md, section 9). The ledger knows what it wrote itself: each incident event
its commits stored is kept here, by position, as a keyed digest of the stored bytes, until
a checkpoint has found it in the store as it was written. :meth:`Checkpoints.create` refuses
to sign a log from which one of them is missing or in which one was changed.

What it does not see: events another replica recorded (that replica checks its own), and
anything changed before this process started or while it kept nothing (``limit`` reached,
which it logs).
"""

from __future__ import annotations

import hashlib
import os
import threading
from array import array
from bisect import bisect_left
from collections.abc import Collection, Sequence
from itertools import pairwise

import structlog
from eventsourcing.persistence import Notification

from services.ledger.store import RawRow

log = structlog.get_logger(__name__)

#: Bytes of each kept digest: keyed with a secret of this process, so that nobody can
#: make other bytes with the same digest without it.
DIGEST_BYTES = 8
#: Events kept at most (16 bytes each): 5 minutes at 500 events/s is 150,000. Beyond it the
#: oldest half is dropped (and logged): they are then no longer checked.
DEFAULT_LIMIT = 1_000_000
#: Positions a refusal names (the count says how many there are).
NAMED = 10


class RecordedEvents:
    """Positions and digests of the incident events recorded here and not yet checked."""

    def __init__(self, topics: Collection[str], limit: int = DEFAULT_LIMIT) -> None:
        self._topics = frozenset(topics)
        self._limit = limit
        self._key = os.urandom(16)
        self._lock = threading.Lock()
        self._positions = array("q")
        self._digests = bytearray()

    def digest(self, state: bytes | memoryview) -> bytes:
        return hashlib.blake2b(state, digest_size=DIGEST_BYTES, key=self._key).digest()

    def add(self, recordings: Sequence[Notification]) -> None:
        """A commit's recordings (a listener of the ledger's commits, in the commit thread:
        about 1.6 us an event of 900 bytes, measured over 300,000; a checkpoint's check of
        them took 5 MB at its peak)."""
        kept = [(n.id, self.digest(n.state)) for n in recordings if n.topic in self._topics]
        if not kept:
            return
        with self._lock:
            for position, digest in kept:
                self._positions.append(position)
                self._digests += digest
            if len(self._positions) > self._limit:
                half = len(self._positions) // 2
                log.warning(
                    "checkpoint.recorded_events_dropped",
                    events=half,
                    until=self._positions[half - 1],
                    note="no checkpoint was made for a long time; the oldest events this "
                    "replica recorded are no longer checked at the next one",
                )
                del self._positions[:half]
                del self._digests[: half * DIGEST_BYTES]

    def pending(self) -> dict[int, bytes]:
        """The events not yet checked: position -> digest."""
        positions, digests = self.snapshot()
        return {
            position: digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
            for i, position in enumerate(positions)
        }

    def snapshot(self) -> tuple[array[int], bytes]:
        """The events not yet checked, by position (ascending) and their digests, packed:
        16 bytes an event, not a dictionary's hundred."""
        with self._lock:
            positions, digests = array("q", self._positions), bytes(self._digests)
        if any(a >= b for a, b in pairwise(positions)):
            # Commits store in the order of their positions; sorted all the same.
            order = sorted(range(len(positions)), key=positions.__getitem__)
            positions = array("q", (positions[i] for i in order))
            digests = b"".join(digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] for i in order)
        return positions, digests

    def checked_through(self, position: int) -> None:
        """Every event kept up to ``position`` was found as written: no longer kept. (Those
        recorded since the check began lie after it: a replica's commits take positions
        in their order.)"""
        with self._lock:
            keep = [i for i, p in enumerate(self._positions) if p > position]
            if len(keep) == len(self._positions):
                return
            digests = self._digests
            self._positions = array("q", (self._positions[i] for i in keep))
            self._digests = bytearray().join(
                digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] for i in keep
            )


class RecordedCheck:
    """One checkpoint's check of :class:`RecordedEvents`: fed the rows it reads, then asked
    what it did not find as written, up to the position it signs."""

    def __init__(self, recorded: RecordedEvents) -> None:
        self._recorded = recorded
        self._positions, self._digests = recorded.snapshot()
        self._seen = bytearray(len(self._positions))  # 1 found as written, 2 changed

    @property
    def first(self) -> int | None:
        """The lowest position to look for (None: nothing)."""
        return self._positions[0] if self._positions else None

    def row(self, row: RawRow) -> None:
        i = bisect_left(self._positions, row[0])
        if i == len(self._positions) or self._positions[i] != row[0]:
            return
        digest = self._digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
        self._seen[i] = 1 if self._recorded.digest(row[4]) == digest else 2

    def problem(self, until: int | None = None) -> str | None:
        """Why the log (up to ``until``) must not be signed; None when every event recorded
        here (up to it) was found as written (they are then no longer kept)."""
        missing: list[int] = []
        changed: list[int] = []
        through = None
        for i, position in enumerate(self._positions):
            if until is not None and position > until:
                break
            if self._seen[i] == 1:
                through = position
            else:
                (missing if self._seen[i] == 0 else changed).append(position)
        if not missing and not changed:
            if through is not None:
                self._recorded.checked_through(through)
            return None
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (positions {_named(missing)})")
        if changed:
            parts.append(f"{len(changed)} changed (positions {_named(changed)})")
        return (
            "incident events this replica recorded are not in the store as it wrote them: "
            + ", ".join(parts)
            + "; the store was changed outside the ledger (run verify, and compare with a "
            "witness's checkpoints or an export)"
        )


def _named(positions: Sequence[int]) -> str:
    shown = ", ".join(str(p) for p in sorted(positions)[:NAMED])
    return shown + (", ..." if len(positions) > NAMED else "")
