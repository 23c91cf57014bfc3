"""Deep verification: every file an ``EvidenceAttached`` event refers to, read back from the
object store and checked against the event's digest and size; and the sweep of objects no
event refers to.

The hash chain proves the events were not altered; this proves the files they name were
not either. Each object is read once (the same file attached twice is one object), in full,
hashed as it streams (nothing is kept), and every event referring to a missing or changed
object is named: incident, event, position and object.

An object no event refers to is what an upload leaves when the ledger stopped (or its store
failed) between storing the file and recording its event. :func:`sweep_orphans` deletes such
objects once they are older than a grace period: an upload of the same bytes in progress
records its event well within it, so no object an event is about to name is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.ledger.application import Ledger
from services.ledger.domain.evidence import object_name
from services.ledger.domain.incident import Incident
from services.ledger.evidence_store import (
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
        # what the store holds now.
        return _Found(True, sink.sha256, sink.size)
    if stored is None:
        return _Found(False, "", 0)
    return _Found(True, sink.sha256, sink.size)


def referenced_objects(ledger: Ledger) -> set[str]:
    """The names of the objects the ledger's ``EvidenceAttached`` events refer to."""
    return {
        object_name(stored.event.sha256)
        for stored in ledger.history(keep=lambda e: isinstance(e, Incident.EvidenceAttached))
        if isinstance(stored.event, Incident.EvidenceAttached)
    }


def sweep_orphans(
    ledger: Ledger, objects: EvidenceObjects, grace: timedelta, now: datetime
) -> list[str]:
    """Delete the objects no event refers to that were stored more than ``grace`` before
    ``now`` (see the module's docstring); their names."""
    # Listed before the events are read: an object stored and named by an event meanwhile
    # is then among the references.
    listed = objects.list_objects()
    referenced = referenced_objects(ledger)
    swept = []
    for item in listed:
        if item.name in referenced or item.stored_at is None or now - item.stored_at < grace:
            continue
        objects.delete(item.name)
        swept.append(item.name)
    return swept
