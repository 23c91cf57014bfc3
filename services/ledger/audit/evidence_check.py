"""Deep verification: every file an ``EvidenceAttached`` event refers to, read back from the
object store and checked against the event's digest and size; and the sweep of objects no
event refers to.

The hash chain proves the events were not altered; this proves the files they name were
not either. Each object is read once (the same file attached twice is one object), in full,
hashed as it streams (nothing is kept), and every event referring to a missing or changed
object is named: incident, event, position and object.

An object no event refers to is what an upload leaves when the ledger was killed half way
(its pending entry and chunks), or stopped (or its store failed) between storing the file
and recording its event. :class:`OrphanSweep` deletes such objects once they are older than
a grace period; the ledger runs it at start and then periodically
(services/ledger/evidence_sweep.py), ``ledger-audit sweep-evidence`` once. An upload under
way keeps its entries younger than the grace period, and each deletion is conditional on
the entry being as listed (services/ledger/evidence_store.py): no object an upload is
writing, or an event is about to name, is deleted, whichever replica sweeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from services.ledger.application import Ledger
from services.ledger.domain.evidence import object_name
from services.ledger.domain.incident import Incident
from services.ledger.evidence_store import (
    PENDING_PREFIX,
    EvidenceObjects,
    HashingSink,
    ObjectChangedError,
    StoredObject,
)

#: Reads an object into a sink; None when there is no such object
#: (:meth:`services.ledger.evidence_store.EvidenceObjects.read_into`).
ReadObject = Callable[[str, HashingSink], StoredObject | None]


@dataclass(frozen=True)
class EvidenceProblem:
    """An event whose file is missing from the object store, or differs from what it says."""

    incident: str
    event_id: str
    position: int
    object: str
    problem: str  # "missing" or "changed"
    expected_sha256: str
    expected_size: int
    found_sha256: str = ""
    found_size: int = 0

    def to_log(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class EvidenceReport:
    evidence: int = 0  # EvidenceAttached events checked
    objects: int = 0  # distinct objects read
    bytes_read: int = 0
    problems: list[EvidenceProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Found:
    exists: bool
    sha256: str
    size: int


def verify_evidence(ledger: Ledger, read: ReadObject) -> EvidenceReport:
    """Check every referenced object (see the module's docstring)."""
    report = EvidenceReport()
    found: dict[str, _Found] = {}
    for stored in ledger.history(keep=lambda e: isinstance(e, Incident.EvidenceAttached)):
        event = stored.event
        if not isinstance(event, Incident.EvidenceAttached):
            continue
        report.evidence += 1
        name = object_name(event.sha256)
        if name not in found:
            found[name] = _read(read, name)
            report.objects += 1
            report.bytes_read += found[name].size
        seen = found[name]
        if seen.exists and (seen.sha256, seen.size) == (event.sha256, event.size_bytes):
            continue
        report.problems.append(
            EvidenceProblem(
                incident=f"incidents/{event.originator_id}",
                event_id=str(event.event_id),
                position=stored.position,
                object=name,
                problem="changed" if seen.exists else "missing",
                expected_sha256=event.sha256,
                expected_size=event.size_bytes,
                found_sha256=seen.sha256,
                found_size=seen.size,
            )
        )
    return report


def _read(read: ReadObject, name: str) -> _Found:
    sink = HashingSink()
    try:
        stored = read(name, sink)
    except ObjectChangedError:
        # The bytes differ from the digest the store itself recorded: what was read is
        # what the store holds now. Nothing at all (its entry left, its chunks gone) is a
        # missing file, as a download says it (EVIDENCE_MISSING).
        if not sink.size:
            return _Found(False, "", 0)
        return _Found(True, sink.sha256, sink.size)
    if stored is None:
        return _Found(False, "", 0)
    return _Found(True, sink.sha256, sink.size)


@dataclass(frozen=True)
class Swept:
    """An object the sweep deleted."""

    name: str
    size_bytes: int
    stored_at: datetime | None

    @property
    def pending(self) -> bool:
        """The leftover of an upload cut short, not a complete object."""
        return self.name.startswith(PENDING_PREFIX)


class OrphanSweep:
    """Deletes the objects no event refers to once older than the grace period (see the
    module's docstring). The references are read incrementally: an event, once recorded,
    names its object for good, so each sweep reads only the events recorded since the
    last one (the first reads them all). Positions become visible in order (on PostgreSQL
    the event store's library takes a table lock for each insert; SQLite has one writer), so
    no event shows up later below a position already read."""

    def __init__(self, ledger: Ledger, objects: EvidenceObjects, grace: timedelta) -> None:
        self._ledger = ledger
        self._objects = objects
        self._grace = grace
        self._referenced: set[str] = set()
        self._position = 0

    def _read_references(self) -> None:
        for stored in self._ledger.history(
            after=self._position, keep=lambda e: isinstance(e, Incident.EvidenceAttached)
        ):
            if isinstance(stored.event, Incident.EvidenceAttached):
                self._referenced.add(object_name(stored.event.sha256))
            self._position = max(self._position, stored.position)

    def run(self, now: datetime) -> list[Swept]:
        """One sweep: what it deleted."""
        # Listed before the events are read: an object stored and named by an event meanwhile
        # is then among the references.
        listed = self._objects.list_objects()
        old = [
            item
            for item in listed
            if item.stored_at is not None and now - item.stored_at >= self._grace
        ]
        if any(not item.pending and item.name not in self._referenced for item in old):
            self._read_references()
        # The chunks of the files stored: a pending entry left beside the file its upload
        # stored (its purge failed at the end, NATS gone) points at those same chunks, and
        # only the entry may go.
        stored_chunks = {item.nuid for item in listed if not item.pending and item.nuid}
        swept = []
        for item in old:
            if item.name in self._referenced:
                continue
            spared = item.pending and item.nuid in stored_chunks
            target = replace(item, nuid="") if spared else item
            # False: an upload touched it (or another replica swept it) since it was listed.
            if self._objects.delete_unchanged(target):
                swept.append(Swept(item.name, item.size_bytes, item.stored_at))
        return swept


def sweep_orphans(
    ledger: Ledger, objects: EvidenceObjects, grace: timedelta, now: datetime
) -> list[str]:
    """Delete the objects no event refers to that were stored more than ``grace`` before
    ``now`` (see the module's docstring); their names."""
    return [swept.name for swept in OrphanSweep(ledger, objects, grace).run(now)]
