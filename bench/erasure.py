"""Erasing one person (issue 14): its time against the ledger's size and against the
length of their incident's history.

Erasure destroys one key in the key table and records one event; it never rewrites the
history. So its time should not grow with the ledger: the number of people in the key
table, the number of incidents. It is measured in this process, the application's whole
``Ledger.erase_personal_data`` (checks, the incident's rule, the ``PersonalDataErased``
event with its idempotency record, the key destroyed), one person per call:

- **loaded**: a ledger without a write cache (``LEDGER_CACHE_SIZE`` 0), so each erasure
  loads the incident from the store, as the first command on an incident not written
  lately (the retention rule's case, a year after closure) does;
- **cached**: the incident already in the write cache (a command on it came first).

Two fresh stores, one naming few people and one naming many; in the first, incidents of a
short history, in the second, of a short and of long ones, each naming 11 people (a
reporter and ten witnesses), so one incident gives 11 erasures. The incidents are written
straight into the stores (the domain's own methods, sealed by the key table as reports
are; sealed, with a snapshot every ``LEDGER_SNAPSHOT_INTERVAL`` events): setup, not measured.
Then the erasures of every point are taken in turns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.harness import Result
from bench.scenarios import (
    CATEGORY,
    COORDINATOR,
    KECAMATAN,
    LEAD,
    REPORTER,
    TITLE,
    actors,
    envelope,
)
from services.common.reference import ReferenceData
from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ErasePersonalData
from services.ledger.domain.incident import Actor, Incident
from services.ledger.domain.personal import MAX_WITNESSES, Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from services.ledger.seals import Sealer

ACTION = "Statement taken from a witness at the post"
LEGAL_BASIS = "erasure requested by the data subject"
#: People in each background report: a reporter and a witness.
BACKGROUND_PEOPLE = 2
COLD = "loaded"  # from the store
WARM = "cached"  # in the write cache


@dataclass(frozen=True)
class ErasurePlan:
    small: int  # people in the ledger at the first point
    large: int  # ... at the second
    lengths: tuple[int, ...]  # events of the erased person's incident (the first: short)
    incidents: int  # incidents per measured point (11 people each)


ERASURE_FULL = ErasurePlan(small=100, large=10_000, lengths=(10, 1_000, 5_000), incidents=4)
ERASURE_QUICK = ErasurePlan(small=100, large=2_000, lengths=(10, 500, 2_000), incidents=2)


@dataclass
class ErasureRun:
    store: str
    plan: ErasurePlan
    # (people in the ledger, events of the incident, loaded or cached) -> one erasure's
    # wall-clock times, and this process's CPU times (the commit thread's included)
    points: dict[tuple[int, int, str], Result] = field(default_factory=dict)
    cpu: dict[tuple[int, int, str], Result] = field(default_factory=dict)
    events: int = 0  # events in the larger store at the end
    setup_seconds: float = 0.0

    def p50(self, people: int, length: int, how: str) -> float:
        result = self.points.get((people, length, how))
        return result.p50_ms if result else float("nan")


def _people(serial: int, witnesses: int) -> PersonalData:
    def person(n: int) -> Person:
        number = f"{serial:06d}{n:02d}"
        return Person(f"Warga {number}", f"+62812{number}", f"170601{number}00"[:16], "")

    return PersonalData(
        reporter=person(0), witnesses=tuple(person(n + 1) for n in range(witnesses))
    )


class _Writer:
    """Incidents naming people, sealed by the key table and saved straight to the store."""

    def __init__(self, ledger: Ledger, keys: PersonalKeys) -> None:
        self._ledger = ledger
        self._keys = keys
        self._who = actors(ledger.reference)
        self._serial = 0
        self.people = 0

    def _incident(self, data: PersonalData, events: int) -> Incident:
        sealed = data.sealed
        if sealed is None:
            raise TypeError("not sealed")
        who = self._who
        incident = Incident.report(
            envelope(who[REPORTER]),
            title=TITLE,
            description="",
            category=CATEGORY,
            severity=self._ledger.reference.default_severity,
            location={"kecamatan": KECAMATAN, "desa": "", "tps": ""},
            incident_id=sealed.incident_id,
            personal=sealed,
        )
        if events > 1:
            incident.verify(envelope(who[COORDINATOR]), "confirmed by the desk")
            incident.assign_lead(envelope(who[COORDINATOR]), LEAD, "")
        while incident.version < events:
            incident.log_action(envelope(who[LEAD]), ACTION, incident.location)
        return incident

    def background(self, people: int, batch: int = 250) -> None:
        """Reports of two people each until the ledger names ``people``."""
        while self.people < people:
            count = min(batch, (people - self.people + 1) // BACKGROUND_PEOPLE)
            batch_data = []
            for _ in range(count):
                self._serial += 1
                batch_data.append(_people(self._serial, BACKGROUND_PEOPLE - 1))
            sealed = self._keys.seal_many(batch_data)
            self._ledger.save(*(self._incident(d, 1) for d in sealed))
            self.people += count * BACKGROUND_PEOPLE

    def named(self, events: int) -> tuple[UUID, list[UUID]]:
        """One incident of ``events`` events naming 11 people; its id and theirs."""
        self._serial += 1
        data = self._keys.seal(_people(self._serial, MAX_WITNESSES))
        incident = self._incident(data, events)
        self._ledger.save(incident)
        self.people += MAX_WITNESSES + 1
        subjects = [s.subject_id for s in data.sealed.subjects] if data.sealed else []
        return incident.id, subjects


Point = tuple[int, int, str]
#: One erasure to time: the application, the incident, the person.
Erasure = tuple[Ledger, UUID, UUID]


def _erase(ledger: Ledger, actor: Actor, incident_id: UUID, subject: UUID) -> tuple[float, float]:
    """One erasure's wall-clock and CPU time (this process's, the commit thread's too)."""
    command = ErasePersonalData(incident_id, 0, (subject,), LEGAL_BASIS)
    cpu, began = time.process_time(), time.perf_counter()
    ledger.erase_personal_data(envelope(actor), command)
    return time.perf_counter() - began, time.process_time() - cpu


class _Ledgers:
    """Two applications on one store, with its people: ``warm`` keeps its write cache
    (the default size), ``cold`` has none, so each command loads its incident."""

    def __init__(self, store_env: dict[str, str], reference: ReferenceData) -> None:
        ring = KeyRing({"bench": b"\x07" * 32}, "bench")
        # Sealed, as the service's ledger is: a load checks the newest event's seal, and
        # starts from the incident's latest sealed snapshot (LEDGER_SNAPSHOT_INTERVAL).
        sealer = Sealer(Ed25519PrivateKey.from_private_bytes(b"\x09" * 32))
        self.all: list[Ledger] = []
        for size in (None, 0):
            ledger = (
                Ledger(reference, env=store_env, sealer=sealer)
                if size is None
                else Ledger(reference, env=store_env, cache_size=size, sealer=sealer)
            )
            ledger.personal_keys = PersonalKeys(
                open_database(store_env, 2, sqlite_pragmas=SQLITE_PRAGMAS), ring
            )
            self.all.append(ledger)
        self.warm, self.cold = self.all
        keys = self.warm.personal_keys
        if keys is None:
            raise RuntimeError("no key table")
        self.writer = _Writer(self.warm, keys)

    def settle(self) -> None:
        """Wait for the snapshots of the setup to be stored (they are written by a thread)."""
        for ledger in self.all:
            if ledger.incident_snapshots is not None:
                ledger.incident_snapshots.flush()

    def close(self) -> None:
        for ledger in self.all:
            if ledger.personal_keys is not None:
                ledger.personal_keys.close()
            ledger.close()


def measure_erasure(
    plan: ErasurePlan,
    store: str,
    small_env: dict[str, str],
    large_env: dict[str, str],
    reference: ReferenceData,
) -> ErasureRun:
    """The erasure times at each point of ``plan``: a store naming few people, and one
    naming many, both prepared first; then the points' erasures taken in turns (one of
    each point, again and again), so that the machine's ups and downs (other work, the
    disk's flushes) fall alike on every point."""
    run = ErasureRun(store, plan)
    coordinator = actors(reference)[COORDINATOR]
    stores: list[_Ledgers] = []
    try:
        began = time.perf_counter()
        queues: dict[Point, list[Erasure]] = {}
        short = plan.lengths[0]
        for env, people, lengths in (
            (small_env, plan.small, (short,)),
            (large_env, plan.large, plan.lengths),
        ):
            ledgers = _Ledgers(env, reference)
            stores.append(ledgers)
            ledgers.writer.background(people)
            # Warm-up, not timed: an application's first erasures (its first loads and
            # statements) took 4 ms where the next took 0.7.
            for ledger in ledgers.all:
                incident_id, subjects = ledgers.writer.named(short)
                for subject in subjects:
                    _erase(ledger, coordinator, incident_id, subject)
            for length in lengths:
                for how, ledger in ((COLD, ledgers.cold), (WARM, ledgers.warm)):
                    queue = queues.setdefault((people, length, how), [])
                    for _ in range(plan.incidents):
                        incident_id, subjects = ledgers.writer.named(length)
                        if how == WARM:  # its first erasure loads it into the cache
                            _erase(ledger, coordinator, incident_id, subjects.pop())
                        queue.extend((ledger, incident_id, s) for s in subjects)
        for ledgers in stores:
            ledgers.settle()
        run.setup_seconds = time.perf_counter() - began
        walls: dict[Point, list[float]] = {point: [] for point in queues}
        cpus: dict[Point, list[float]] = {point: [] for point in queues}
        started = time.perf_counter()
        while any(queues.values()):
            for point, queue in queues.items():
                if queue:
                    ledger, incident_id, subject = queue.pop(0)
                    wall, cpu = _erase(ledger, coordinator, incident_id, subject)
                    walls[point].append(wall)
                    cpus[point].append(cpu)
        elapsed = time.perf_counter() - started
        for point in queues:
            run.points[point] = Result(elapsed, walls[point])
            run.cpu[point] = Result(elapsed, cpus[point])
        run.events = stores[-1].warm.recorder.max_notification_id() or 0
    finally:
        for ledgers in stores:
            ledgers.close()
    return run


def rows(run: ErasureRun) -> list[list[str]]:
    out = []
    for (people, length, how), result in sorted(run.points.items()):
        out.append(
            [
                f"{people:,}",
                f"{length:,}",
                how,
                f"{result.p50_ms:.1f}",
                f"{result.p99_ms:.1f}",
                f"{run.cpu[(people, length, how)].p50_ms:.1f}",
                f"{result.max_ms:.1f}",
                f"{result.calls}",
            ]
        )
    return out


HEADERS = [
    "people in the ledger",
    "incident events",
    "incident",
    "p50 ms",
    "p99 ms",
    "CPU p50 ms",
    "max ms",
    "erasures",
]
