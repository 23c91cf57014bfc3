"""The ledger application: loads incidents, calls one command, saves atomically.

Every command (services/ledger/domain/commands.py) takes one path, :meth:`Ledger.execute`:
the checks its fields declare (against the reference data and the time bounds), then the
guarantees around the domain: idempotency by request id (AIP-155, with a fingerprint over
all the command's fields), optimistic concurrency (expected_version, retries).
:meth:`Ledger.ingest` records a field device's batch of reports the same way, each a
ReportIncident with its own idempotency record, saved in as few transactions as it can.
Storage is chosen by the environment (the library's variables).
"""

from __future__ import annotations

import enum
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from contextvars import copy_context
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol
from uuid import UUID, uuid5

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import DomainEventProtocol, OriginatorVersionError
from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
)
from eventsourcing.utils import Environment, TopicError, get_topic

from services.common.config import LedgerSettings
from services.common.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    IngestTooLarge,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    SigningKeyRetired,
    VersionConflict,
)
from services.common.jsoncodec import transcoder_dumps
from services.common.reference import ReferenceData, Role
from services.common.sql import store_location
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.common.storepool import bound_store
from services.ledger.domain.commands import (
    MAX_SHORT,
    AssignLeadAgency,
    Command,
    CreatingCommand,
    ErasePersonalData,
    IncidentCommand,
    ReadPersonalData,
    RejectIncident,
    ReportIncident,
    Rules,
    VerifyIncident,
    blank,
    check_text,
    checked,
    command_name,
)
from services.ledger.domain.incident import (
    RESERVED_REQUEST_PREFIXES,
    Actor,
    DataSubject,
    DeviceRecord,
    Envelope,
    Incident,
    PersonalDataAccess,
    PersonalDataErasure,
    event_hash,
    incident_event_classes,
    require_writer,
)
from services.ledger.domain.personal import (
    Person,
    check_nik,
    check_purpose,
    normalised_phone,
)
from services.ledger.domain.refcodes import ReferenceClaim, claim_key, parse_code
from services.ledger.domain.requests import RequestRecord, request_fingerprint, request_key
from services.ledger.domain.rotations import KeyRotation, rotation_key
from services.ledger.domain.times import TimeBounds
from services.ledger.personal_keys import KeyRows, PersonalKeys, PersonalSealer
from services.ledger.seals import SealChecker, Sealer, key_id
from services.ledger.snapshots import SnapshotRejected, Snapshots, rejected
from services.ledger.store import (
    ArrayInsertRecorder,
    EventPositions,
    KeyedSQLiteRecorder,
    RetiredKeyCommitError,
)
from services.ledger.writes import AggregateCache, GroupCommitter, SingleCommands

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 30
# How many times a report draws a new incident id (and reference code) when its code
# is taken: with 33 million codes, a second draw is already rare.
MAX_REFERENCE_DRAWS = 10
LOCK_STRIPES = 256
# A field device's batch is prepared and mapped in steps of this many reports, pausing
# between them while single commands are under way, for at most the pause each time (so a
# steady stream of commands slows a batch, never stops it). Quick SQLite runs, 4 devices,
# alternating: single commands' p50 / p99 during the ingest 24-26 / 96-113 ms with the
# pauses, 31-46 / 126-219 ms without; the ingest 4-7 % slower (docs/performance.md).
INGEST_STEP = 16
INGEST_PAUSE_SECONDS = 0.02


@dataclass(frozen=True)
class CommandResult:
    incident_id: UUID
    version: int
    position: int
    event_id: UUID
    recorded_at: datetime
    #: A report's reference code ("" for other commands, and for reports recorded before
    #: codes existed).
    reference: str = ""
    #: Answered from the request's record: recorded by an earlier request with its id (a
    #: retry). Not part of the result's value: a retry's result equals the original's.
    replayed: bool = field(default=False, compare=False)


MAX_DEVICE_ID = 64


@dataclass(frozen=True)
class IngestLimits:
    """The most one ``IngestReports`` call may hold (``LEDGER_INGEST_MAX_REPORTS``,
    ``LEDGER_INGEST_MAX_BYTES``)."""

    max_reports: int = LedgerSettings.ingest_max_reports
    max_bytes: int = LedgerSettings.ingest_max_bytes

    @classmethod
    def of(cls, settings: LedgerSettings) -> IngestLimits:
        return cls(settings.ingest_max_reports, settings.ingest_max_bytes)


class IngestOutcome(enum.Enum):
    """What became of one report of an ``IngestReports`` batch."""

    CREATED = "CREATED"  # recorded now
    DUPLICATE = "DUPLICATE"  # recorded before, with the same content: the original result
    CONFLICT = "CONFLICT"  # its device report id was recorded before with other content
    INVALID = "INVALID"  # refused as ReportIncident would refuse it


@dataclass(frozen=True)
class IngestItem:
    """One report of a field device's batch: the ``ReportIncident`` it asks for, and where
    it came from. Its request id, the key of its idempotency record, is
    ``{device_id}/{report_id}``: a ReportIncident sent with that request id is the same
    request."""

    device_id: str
    report_id: UUID
    record_time: datetime
    command: ReportIncident
    occurred_at: datetime | None = None
    correlation_id: str = ""

    @property
    def request_id(self) -> str:
        return f"{self.device_id}/{self.report_id}"


@dataclass(frozen=True)
class IngestResult:
    """One report's answer: its command result (CREATED, DUPLICATE) or why not."""

    outcome: IngestOutcome
    result: CommandResult | None = None
    error: LedgerError | None = None


#: The commands of a TriageIncidents call (the coordinator's triage of reported incidents).
TRIAGE_COMMANDS: tuple[type[IncidentCommand], ...] = (
    VerifyIncident,
    RejectIncident,
    AssignLeadAgency,
)
#: A triage call's request id leaves room for its items' "/{n}" within MAX_SHORT.
MAX_TRIAGE_REQUEST_ID = MAX_SHORT - 8
#: How many incidents of triage calls are worked on at once: their saves then share group
#: commits (one transaction for several items) instead of waiting for one each.
TRIAGE_WORKERS = 8


class TriageOutcome(enum.Enum):
    """What became of one item of a ``TriageIncidents`` call."""

    RECORDED = "RECORDED"  # recorded now
    DUPLICATE = "DUPLICATE"  # recorded before by the same request: the original result
    CONFLICT = "CONFLICT"  # its request id was used before for another request
    INVALID = "INVALID"  # refused as the single command would refuse its fields
    REFUSED = "REFUSED"  # its incident refuses the command (state, permission, version)


@dataclass(frozen=True)
class TriageResult:
    """One item's answer: its command result (RECORDED, DUPLICATE) or why not."""

    outcome: TriageOutcome
    result: CommandResult | None = None
    error: LedgerError | None = None


@dataclass(frozen=True)
class _ReadyReport:
    """A checked report of a batch (``index``): its incident's ``Reported`` event, with its
    request record's and its code's claim's (``events``), and what answers a retry of
    it; :meth:`Ledger._prepared` maps it into a :class:`PreparedReport`."""

    index: int
    key: UUID
    request_id: str
    command: ReportIncident
    fingerprint: str
    envelope: Envelope
    device: DeviceRecord
    reported: Incident.Reported
    events: list[Any]
    draws: int = 1
    keys: KeyRows | None = None  # its people's keys, saved in its events' transaction

    @property
    def reference(self) -> str:
        return reference_of(self.reported)

    @property
    def claim_key(self) -> UUID | None:
        """The id of its code's claim (the last of its events), if it has a code."""
        return self.events[-1].originator_id if len(self.events) > 2 else None


class PreparedReport(NamedTuple):
    """A report of a batch prepared to save (:meth:`Ledger.prepare_reports`): checked, its
    events made, mapped and sealed (``stored``), with what answers it (``result``, its
    position filled in once saved) and a retry of it. Plain values: the intake process
    (services/ledger/intake.py) sends it back pickled, and the domain events themselves
    cost as much to pickle and unpickle as to make (1.4 MB and 52 ms for 500 reports,
    against 54 ms to map them; docs/performance.md). ``at``: its index in the call."""

    at: int
    key: UUID
    request_id: str
    fingerprint: str
    draws: int
    claim_key: UUID | None
    result: CommandResult
    stored: tuple[StoredEvent, ...]
    keys: KeyRows | None

    @property
    def reference(self) -> str:
        return self.result.reference


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's reports prepared: the INVALID results (``results``, by index, None for
    the others), the reports to save (``ready``), and those the batch holds twice
    (``again``: answered from the first one's record once it is saved)."""

    results: list[IngestResult | None]
    ready: list[PreparedReport]
    again: list[PreparedReport]


class ReportIntake(Protocol):
    """What prepares a batch for :meth:`Ledger.ingest` in another process."""

    def prepare(
        self, actor: Actor, items: Sequence[IngestItem | InvalidArgument], skew_ms: int | None
    ) -> PreparedBatch: ...


#: How old an erasure must be before the upkeep destroys its keys found again: a younger
#: one's request may still be destroying them (Ledger.destroy_keys_of_erased).
ERASURE_SETTLE = timedelta(minutes=1)


def _ahead(skew_ms: int | None) -> timedelta | None:
    """How far a device's clock runs ahead of the ledger's (negative: behind), from a
    call's measured skew; None when the call did not say its send time."""
    return None if skew_ms is None else timedelta(milliseconds=skew_ms)


@dataclass(frozen=True)
class _IngestCall:
    """The call a batch came in: what answers a report from its record, or draws it again."""

    actor: Actor
    items: Sequence[IngestItem | InvalidArgument]
    skew_ms: int | None
    results: list[IngestResult | None]

    def item(self, index: int) -> IngestItem:
        item = self.items[index]
        if not isinstance(item, IngestItem):
            raise TypeError(f"report {index} was refused, not prepared: {item!r}")
        return item


@dataclass(frozen=True)
class SubjectView:
    """A data subject as a reader sees them: their data where it was read and is not
    erased (``person``), and the reads of it (``accesses``, for subject access)."""

    incident_id: UUID
    subject: DataSubject
    person: Person | None = None
    accesses: tuple[PersonalDataAccess, ...] = ()


@dataclass(frozen=True)
class PersonalDataRecord:
    """What an incident's personal data went through: every read, the people (references),
    every erasure, the legal holds in force (agency -> reason)."""

    accesses: list[PersonalDataAccess]
    subjects: list[DataSubject]
    erasures: list[PersonalDataErasure]
    legal_holds: dict[str, str]


@dataclass(frozen=True)
class PersonalDataRead:
    """The answer to ReadPersonalData: the recorded access and what it disclosed."""

    result: CommandResult
    subjects: tuple[SubjectView, ...]


class SealingMapper(Mapper[UUID]):
    """The application's mapper, sealing each incident event as it is stored.

    Every write (a command's group commit, ``Application.save``) passes here, so no
    incident event reaches the store without its seal (see services/ledger/seals.py).
    """

    def __init__(self, base: Mapper[UUID], sealer: Sealer) -> None:
        super().__init__(base.transcoder, compressor=base.compressor, cipher=base.cipher)
        self._sealer = sealer
        # The stored state written by orjson, the same bytes as the transcoder's (a fifth
        # of an ingested report's time went to the standard library's encoder), where the
        # transcoder is the library's own with its default transcodings.
        transcoder = base.transcoder
        self._fast = (
            type(transcoder) is JSONTranscoder
            and set(transcoder.names) == DEFAULT_TRANSCODINGS
            and base.compressor is None
            and base.cipher is None
        )

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if isinstance(domain_event, Incident.Event) and "seal" not in vars(domain_event):
            # The event object is frozen; the seal is not part of what its hash covers.
            object.__setattr__(domain_event, "seal", self._sealer.seal(event_hash(domain_event)))
        if not self._fast:
            return super().to_stored_event(domain_event)
        # Mapper.to_stored_event, with the state encoded by transcoder_dumps.
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        encoded = transcoder_dumps(state)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(type(domain_event)),
            state=self.transcoder.encode(state) if encoded is None else encoded,
        )


#: The names of the transcodings an application registers by default (UUIDAsHex,
#: DatetimeAsISO, DecimalAsStr): what :func:`transcoder_dumps` writes alike.
DEFAULT_TRANSCODINGS = frozenset({"uuid_hex", "datetime_iso", "decimal_str"})


class ForeignRecordError(ValueError):
    """A stored event among an incident's that is not one of its events: another kind of
    record of the log (a request's, a reference code's), or a second report, where the
    store's topic of an event was changed. The audit, which reads incident events only,
    sees the event missing; a load must answer DATA_LOSS, not the library's assertion."""


# What a stored event that no longer loads raises: bytes that do not decode, a version
# missing from its incident's sequence (a deleted event), or a record that is not one of
# the incident's events.
BROKEN_HISTORY = (
    MapperDeserialisationError,
    OriginatorVersionError,
    TopicError,
    ForeignRecordError,
)


#: What each kind of :data:`BROKEN_HISTORY` says of the stored events, in words.
_BROKEN_HOW = {
    MapperDeserialisationError: "a stored event's bytes no longer decode",
    OriginatorVersionError: "a version is missing from its sequence (an event was deleted)",
    TopicError: "a stored event names a type the ledger does not know",
    ForeignRecordError: "a record that is not one of its events is among them",
}


def broken_history(incident_id: UUID | str, error: Exception) -> DataLoss:
    """The DATA_LOSS answer for an incident whose stored events no longer load."""
    how = next(
        (words for kind, words in _BROKEN_HOW.items() if isinstance(error, kind)),
        "a stored event no longer loads",
    )
    return DataLoss(
        f"incident {incident_id} fails its hash chain: {how}, changed in the store "
        f"(`ledger-audit verify --store` names where; {type(error).__name__})",
        reason="HASH_CHAIN_BROKEN",
        metadata={"incident": f"incidents/{incident_id}", "check": "decode"},
    )


@dataclass(frozen=True)
class ChainFailure:
    """An incident whose stored history fails its hash chain, as a list shows it: which
    check failed and where, and nothing of the changed history."""

    incident_id: UUID
    #: "chain", "seal" or "decode": the ``check`` of the DATA_LOSS a load of it answers.
    check: str
    #: The version whose check failed; 0 when the check cannot name one.
    version: int
    message: str

    @classmethod
    def of(cls, incident_id: UUID, error: DataLoss) -> ChainFailure:
        version = error.metadata.get("version", "0")
        return cls(
            incident_id=incident_id,
            check=error.metadata.get("check", ""),
            version=int(version) if version.isdigit() else 0,
            message=error.message,
        )


def changed_record(record: str, incident_id: UUID, detail: str) -> DataLoss:
    """The DATA_LOSS answer for a record of the log outside the chain (a request's
    outcome, a reference code's claim) that disagrees with the incident events it names:
    changed in the store."""
    log.error("ledger.record_changed", record=record, incident=f"incidents/{incident_id}")
    return DataLoss(
        f"the stored {record} record names incident {incident_id}, but {detail}: it was "
        "changed outside the ledger (run `ledger-audit verify`)",
        reason="STORED_RECORD_CHANGED",
        metadata={"record": record, "incident": f"incidents/{incident_id}"},
    )


@dataclass(frozen=True)
class StoredIncidentEvent:
    event: Incident.Event
    position: int


def utc_now() -> datetime:
    return datetime.now(UTC)


def time_bounds_of(settings: LedgerSettings) -> TimeBounds:
    """The times callers may state, from the settings."""
    return TimeBounds(
        earliest=settings.earliest_time,
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        max_planned_ahead=timedelta(days=settings.max_decision_days),
    )


def reference_of(event: Incident.Event) -> str:
    """The reference code a report records ("" for any other event, and for reports
    recorded before codes existed)."""
    return (
        str(event.__dict__.get("reference") or "") if isinstance(event, Incident.Reported) else ""
    )


def claims_of(incidents: Iterable[Incident]) -> list[ReferenceClaim]:
    """The claims of the reference codes of the incidents reported now (saved with
    their reports, so that a code taken already fails the save)."""
    return [
        ReferenceClaim.claim(incident.reference, incident.id)
        for incident in incidents
        if incident.reference
        and any(isinstance(e, Incident.Reported) for e in incident.pending_events)
    ]


def mutate_all(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's aggregate projector, without its runtime check of every event
    against a ``Protocol`` (an ``isinstance`` that cost a third of loading an incident)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def mutate_incident(aggregate: Any, events: Iterable[Any]) -> Any:
    """:func:`mutate_all` for an incident's stored events, each of which must be an event
    of the incident that follows: after the first, a record of another kind or a second
    report is :class:`ForeignRecordError` (DATA_LOSS at load). A lone record of another kind
    (an id that names a request, not an incident) is returned as it is: not an incident."""
    for event in events:
        if aggregate is None:
            if isinstance(event, Incident.Event) and not isinstance(event, Incident.Created):
                raise ForeignRecordError(
                    f"version {event.originator_version} is a {type(event).__name__}, "
                    "but the incident's first event is missing"
                )
        elif (
            not isinstance(aggregate, Incident)
            or not isinstance(event, Incident.Event)
            or isinstance(event, Incident.Created)
        ):
            raise ForeignRecordError(
                f"version {event.originator_version} is a {type(event).__qualname__}, "
                f"which does not follow a {type(aggregate).__name__}"
            )
        aggregate = event.mutate(aggregate)
    return aggregate


class Ledger(Application[UUID]):
    """Incident commands and queries over the event store."""

    name = "Ledger"

    def __init__(
        self,
        reference: ReferenceData,
        env: Mapping[str, str] | None = None,
        *,
        cache_size: int = LedgerSettings.cache_size,
        sealer: Sealer | None = None,
        time_bounds: TimeBounds | None = None,
        clock: Callable[[], datetime] = utc_now,
        ingest_limits: IngestLimits | None = None,
        personal_keys: PersonalKeys | None = None,
        personal_sealer: PersonalSealer | None = None,
        triage_max_items: int = LedgerSettings.triage_max_items,
        snapshot_interval: int = LedgerSettings.snapshot_interval,
    ) -> None:
        # Before the base class builds the mapper, which seals with it.
        self.sealer = sealer
        self.seal_checker: SealChecker | None = sealer.checker if sealer else None
        # Up to which position each retired key's seal still vouches for an incident's
        # newest event (bound_retired_seals); None: any seal of a trusted key does.
        self._retired_until: dict[str, int] | None = None
        # The history recorded before seals existed, which a signed checkpoint covers
        # (bound_unsealed_history): each of its incidents' newest hash as the start checked
        # it; empty: every newest event needs its seal.
        self._unsealed_heads: Mapping[UUID, str] = {}
        # Set once the store records this ledger's own signing key as retired (a rotation
        # by another replica, seen by services/ledger/key_watch.py): every commit refuses.
        self._key_retired: SigningKeyRetired | None = None
        # The key id each commit looks up in ledger_retired_keys in its own transaction
        # (guard_commits); None: no such check.
        self._commit_key: str | None = None
        self._key_retired_listeners: list[Callable[[], None]] = []
        # env: the store's settings (PERSISTENCE_MODULE, SQLITE_*, POSTGRES_*, ...), under
        # the name eventsourcing's Application gives them.
        super().__init__(env)
        self.personal_keys = personal_keys
        # What seals reports' personal data when there is no key table: an intake
        # process's ledger, over no store, is given the key table's sealer.
        self._personal_sealer = personal_sealer
        self.reference = reference
        self.time_bounds = time_bounds or time_bounds_of(LedgerSettings())
        self._clock = clock
        self.ingest_limits = ingest_limits or IngestLimits()
        # One batch is prepared and saved at a time (Ledger.ingest): its work is Python
        # under one interpreter lock, so batches side by side would not go faster, and
        # single commands would wait behind all of them.
        self._ingesting = threading.Lock()
        # Where batches are prepared when not in this process (use_intake).
        self._intake: ReportIntake | None = None
        # Single commands go first: a batch's preparation pauses for those under way.
        self._singles = SingleCommands(INGEST_PAUSE_SECONDS)
        self.triage_max_items = triage_max_items
        self._triage_pool = ThreadPoolExecutor(TRIAGE_WORKERS, thread_name_prefix="triage")
        self.positions = EventPositions(self.recorder)
        # Sealed snapshots of incidents (services/ledger/snapshots.py), in the library's
        # snapshots table. None without a signing key: a snapshot nobody can check would
        # have to be trusted blindly, so such a ledger (tests, tools) always replays.
        # Its recorder is made in any case: with CREATE_TABLE (migrate), it makes the table.
        snapshot_recorder = self.factory.aggregate_recorder(purpose="snapshots")
        self.incident_snapshots: Snapshots | None = None
        if sealer is not None:
            self.incident_snapshots = Snapshots(snapshot_recorder, sealer, snapshot_interval)
        # Commands on the same incident queue here instead of racing inside this
        # process; across processes, optimistic concurrency (IntegrityError) decides.
        self._incident_topics = [get_topic(cls) for cls in incident_event_classes()]
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._cache = AggregateCache(cache_size)
        # Events are stored straight through the event store: Application.save()
        # would only add costly runtime protocol checks on this path.
        self._commit_listeners: list[Callable[[], None]] = []
        self._record_listeners: list[Callable[[Sequence[Notification]], None]] = []
        self._committer: GroupCommitter[DomainEventProtocol[UUID] | StoredEvent, KeyRows] = (
            GroupCommitter(self._put, after_commit=self._committed, on_recorded=self._recorded)
        )

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        # On PostgreSQL, the library's recorder with a cheaper insert (ArrayInsertRecorder),
        # unless the environment names another.
        # On both SQL stores, a recorder that writes the keys of personal data in the
        # transaction of the events that seal it.
        topic = InfrastructureFactory.APPLICATION_RECORDER_TOPIC
        module = env.get(InfrastructureFactory.PERSISTENCE_MODULE)
        recorders = {
            "eventsourcing.postgres": ArrayInsertRecorder,
            "eventsourcing.sqlite": KeyedSQLiteRecorder,
        }
        if module in recorders and not env.get(topic):
            env = Environment(env.name, {**env, topic: get_topic(recorders[module])})
        # On PostgreSQL, connections that fail fast while the server is down.
        return bound_store(super().construct_factory(env))

    def construct_mapper(self) -> Mapper[UUID]:
        base = super().construct_mapper()
        return base if self.sealer is None else SealingMapper(base, self.sealer)

    @property
    def cache_size(self) -> int:
        """How many incidents the write path keeps in memory (``LEDGER_CACHE_SIZE``)."""
        return self._cache.maxsize

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (in the committing thread) after each commit."""
        self._commit_listeners.append(listener)

    def add_record_listener(self, listener: Callable[[Sequence[Notification]], None]) -> None:
        """Call ``listener`` (in the committing thread) with the events of each commit,
        once they are stored and before their commands answer."""
        self._record_listeners.append(listener)

    @property
    def personal_keys(self) -> PersonalKeys | None:
        """The key table of personal data; None: reports naming people are refused."""
        return self._personal_keys

    @personal_keys.setter
    def personal_keys(self, keys: PersonalKeys | None) -> None:
        self._personal_keys = keys
        # Whether the key table lives in the event store, whose recorder then writes a
        # report's keys in its events' transaction (else: in one of their own, before).
        self._keys_with_events = (
            keys is not None
            and isinstance(self.recorder, (KeyedSQLiteRecorder, ArrayInsertRecorder))
            and bool(keys.location)
            and keys.location == store_location(self.env)
        )

    def _put(
        self, items: Sequence[DomainEventProtocol[UUID] | StoredEvent], keys: Sequence[KeyRows]
    ) -> list[Notification]:
        """``self.events.put`` of the events, but for those already mapped (a field
        device's reports, mapped and sealed in their request's thread): the commit
        thread maps only what a single command left to it, then inserts; with the keys
        of the personal data they seal, in the same transaction (or, where the event
        store cannot take them, in one of their own just before). Nothing once the
        signing key is retired (:meth:`stop_sealing`)."""
        if self._key_retired is not None:
            raise self._key_retired
        to_stored = self.mapper.to_stored_event
        stored = [item if isinstance(item, StoredEvent) else to_stored(item) for item in items]
        rows = KeyRows.joined(keys) if keys else None
        if rows and not self._keys_with_events:
            self._keys().store(rows)
            rows = None
        extra: dict[str, Any] = {}
        if rows:
            extra["personal_keys"] = rows
        if self._commit_key is not None:
            extra["signing_key"] = self._commit_key
        try:
            positions = self.recorder.insert_events(stored, **extra)
        except RetiredKeyCommitError as exc:
            self._key_retired = SigningKeyRetired(exc.key_id, exc.retired_at, exc.successor)
            for listener in self._key_retired_listeners:
                listener()
            raise self._key_retired from None
        if not positions:
            return []
        return [
            Notification(
                originator_id=s.originator_id,
                originator_version=s.originator_version,
                topic=s.topic,
                state=s.state,
                id=position,
            )
            for s, position in zip(stored, positions, strict=True)
        ]

    def _committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    def _recorded(self, recordings: Sequence[Notification]) -> None:
        for listener in self._record_listeners:
            listener(recordings)

    def close(self) -> None:
        self._triage_pool.shutdown(wait=True)
        self._committer.close()
        if self.incident_snapshots is not None:
            self.incident_snapshots.close()
        super().close()

    # ------------------------------------------------------------- commands

    def execute(self, envelope: Envelope, command: Command) -> CommandResult:
        """Run one command: check its fields, apply its rule to the incident(s) and save,
        once per request id (AIP-155): a retry is answered as the original was."""
        with self._singles.running():
            return self._execute_one(envelope, command)

    def _execute_one(self, envelope: Envelope, command: Command) -> CommandResult:
        command, keys = self._sealed(
            checked(command, Rules(self.reference, self.time_bounds, self._clock))
        )
        if isinstance(command, CreatingCommand):
            creating = command

            draws = itertools.count()

            def create(_reload: bool) -> list[Incident]:
                # A retry (reload) draws its reference code again: the last one may be taken.
                return [
                    creating.create(envelope, self.reference.reference_prefix, draw=next(draws))
                ]

            return self._execute(envelope, command, None, 0, create, keys=keys)
        if not isinstance(command, IncidentCommand):
            raise TypeError(f"not a command the ledger runs: {command!r}")
        on_incident = command
        incident_id, expected = command.incident, command.expected_version
        others = command.other_incidents()

        def run(reload: bool) -> list[Incident]:
            incident = self._load_for_write(incident_id, expected, reload=reload)
            changed = [self._load_for_write(i, 0, reload=reload, field=f) for i, f in others]
            on_incident.run(self.reference, envelope, incident, *changed)
            return [incident, *changed]

        lock_ids = (incident_id, *(i for i, _ in others))
        return self._execute(envelope, command, incident_id, expected, run, lock_ids)

    def check_ahead(self, envelope: Envelope, command: Command) -> Command:
        """The checks :meth:`execute` makes before it acts, made ahead of it: for a command
        whose last fields are settled after a long transfer (``UploadEvidence``), so a
        request refused by its ids or texts is refused before the transfer starts."""
        self._check_request(envelope)
        return checked(command, Rules(self.reference, self.time_bounds, self._clock))

    def request_recorded(self, envelope: Envelope) -> bool:
        """Whether a command of this agency with this request id is recorded already: sent
        again, :meth:`execute` answers its result (the same command) or refuses it
        (``REQUEST_ID_REUSED``). For an upload, whose bytes then need no storing."""
        key = request_key(envelope.actor.agency, envelope.request_id)
        try:
            self.load_aggregate(key)
        except AggregateNotFoundError:
            return False
        return True

    def ingest(
        self,
        actor: Actor,
        items: Sequence[IngestItem | InvalidArgument],
        *,
        send_time: datetime | None = None,
        size: int = 0,
    ) -> list[IngestResult]:
        """Record a field device's reports (``IngestReports``), each as ReportIncident
        records it and once per device report; one result per item, in order.

        ``items``: what the request's reports became, an item or the refusal of one that
        did not convert. Each report is checked as ReportIncident is and recorded with its
        request record (its key: :attr:`IngestItem.request_id`), so that a report sent
        again is answered from the record (DUPLICATE) and one with other content refused
        (CONFLICT), alike whether it came in a batch or alone. ``send_time``: the sender's
        clock when it sent the call; its difference to the ledger's on receipt is recorded
        as each report's clock skew. ``size``: the request's size in bytes. A call over the
        limits (:class:`IngestLimits`) is refused as a whole, before anything is recorded.

        Reports already recorded are answered from their records before the save, so a
        batch sent again touches the store only to read (on PostgreSQL a refused insert
        would burn positions); the others are saved together (:meth:`_save_ready`).
        """
        limits = self.ingest_limits
        if len(items) > limits.max_reports:
            raise InvalidArgument(
                "reports", f"at most {limits.max_reports} reports per call, got {len(items)}"
            )
        if size > limits.max_bytes:
            raise IngestTooLarge(size, limits.max_bytes)
        require_writer(actor, "IngestReports")
        received = self._clock()  # on receipt: the skew leaves out the wait below
        skew_ms = None
        if send_time is not None:
            skew_ms = round((send_time - received) / timedelta(milliseconds=1))
        intake = self._intake
        if intake is None:
            # One batch at a time, saved before the next is prepared: batches side by side
            # (or one prepared while another is saved) measured slower in this process,
            # and single commands then waited seconds behind them.
            with self._ingesting:
                batch = self.prepare_reports(actor, items, skew_ms)
                call = _IngestCall(actor, items, skew_ms, batch.results)
                self._save_ready(self._unrecorded(batch.ready, call), call)
        else:
            # Prepared in the intake's process (one batch at a time there), while this one
            # saves the batch before: the preparation's Python no longer holds this
            # process's interpreter, which single commands and the commit thread share.
            batch = intake.prepare(actor, items, skew_ms)
            call = _IngestCall(actor, items, skew_ms, batch.results)
            with self._ingesting:
                self._save_ready(self._unrecorded(batch.ready, call), call)
        results = batch.results
        for report in batch.again:
            results[report.at] = self._answer_recorded(report, call)
        answered = [r for r in results if r is not None]
        if len(answered) != len(items):
            raise RuntimeError("a report of the batch was left without an answer")
        counts = Counter(r.outcome.value.lower() for r in answered)
        log.info("ingest.done", reports=len(items), skew_ms=skew_ms, **counts)
        return answered

    def triage(
        self, envelope: Envelope, items: Sequence[IncidentCommand | InvalidArgument]
    ) -> list[TriageResult]:
        """Triage incidents (``TriageIncidents``): each item the single command it is
        (:data:`TRIAGE_COMMANDS`), run by :meth:`execute` as if sent alone, with the
        request id ``{request_id}/{n}`` (n from 1); one result per item, in order.

        ``items``: what the request's items became, a command or the refusal of one that
        did not convert. An item recorded before by the same request (the call sent
        again) is answered from its record (DUPLICATE); a refusal is the item's own. The
        items run in order, so that two items on one incident (verify, then assign a
        lead) act as two single commands sent one after the other would; the items of
        different incidents run at the same time (up to :data:`TRIAGE_WORKERS`), so that
        their saves share transactions.
        """
        if len(items) > self.triage_max_items:
            raise InvalidArgument(
                "items", f"at most {self.triage_max_items} items per call, got {len(items)}"
            )
        require_writer(envelope.actor, "TriageIncidents")
        if blank(envelope.request_id):
            raise InvalidArgument("request_id", "is required (AIP-155)")
        check_text("request_id", envelope.request_id, MAX_TRIAGE_REQUEST_ID)
        check_text("correlation_id", envelope.correlation_id, MAX_SHORT)
        answers: list[TriageResult | None] = [None] * len(items)
        by_incident: dict[UUID, list[int]] = {}
        for index, item in enumerate(items):
            if isinstance(item, IncidentCommand):
                by_incident.setdefault(item.incident, []).append(index)
            else:
                answers[index] = self._triage_item(envelope, index + 1, item)

        def run(indexes: list[int]) -> None:
            for index in indexes:  # in the order of the request
                answers[index] = self._triage_item(envelope, index + 1, items[index])

        # Each in the caller's context (its log bindings: request id, actor).
        done, _ = wait(
            [
                self._triage_pool.submit(copy_context().run, run, indexes)
                for indexes in by_incident.values()
            ]
        )
        for future in done:
            future.result()  # a failure of the store fails the call, as in ingest
        results = [r for r in answers if r is not None]
        if len(results) != len(items):
            raise RuntimeError("an item of the triage was left without an answer")
        counts = Counter(r.outcome.value.lower() for r in results)
        log.info("triage.done", items=len(items), **counts)
        return results

    def _triage_item(
        self, envelope: Envelope, n: int, item: IncidentCommand | InvalidArgument
    ) -> TriageResult:
        if isinstance(item, InvalidArgument):
            return TriageResult(TriageOutcome.INVALID, error=item)
        if not isinstance(item, TRIAGE_COMMANDS):
            raise TypeError(f"not a triage command: {item!r}")
        request_id = f"{envelope.request_id}/{n}"
        single = replace(envelope, request_id=request_id, causation_id=request_id)
        try:
            result = self.execute(single, item)
            outcome = TriageOutcome.DUPLICATE if result.replayed else TriageOutcome.RECORDED
            return TriageResult(outcome, result)
        except InvalidArgument as error:
            return TriageResult(TriageOutcome.INVALID, error=error)
        except AlreadyExists as error:
            return TriageResult(TriageOutcome.CONFLICT, error=error)
        except SigningKeyRetired:
            raise  # not the incident's refusal: the whole call goes to another replica
        except LedgerError as error:
            return TriageResult(TriageOutcome.REFUSED, error=error)

    def use_intake(self, intake: ReportIntake | None) -> None:
        """Prepare field devices' batches with ``intake`` (another process) from now on;
        None: in this process."""
        self._intake = intake

    def prepare_reports(
        self, actor: Actor, items: Sequence[IngestItem | InvalidArgument], skew_ms: int | None
    ) -> PreparedBatch:
        """A batch's reports checked, made, mapped and sealed, ready to save; what
        :meth:`ingest` saves, here or in the intake's process (whose ledger, over no
        store, runs this)."""
        results, ready, again = self._prepare(actor, items, skew_ms)
        prepared = []
        for n, report in enumerate(ready):
            if n % INGEST_STEP == 0:
                self._singles.give_way()
            prepared.append(self._prepared(report))
        return PreparedBatch(results, prepared, [self._prepared(r, mapped=False) for r in again])

    def _prepared(self, report: _ReadyReport, *, mapped: bool = True) -> PreparedReport:
        """The report's events mapped to what the store records (and sealed), with what
        answers it: the commit thread then only inserts them."""
        event = report.reported
        return PreparedReport(
            report.index,
            report.key,
            report.request_id,
            report.fingerprint,
            report.draws,
            report.claim_key,
            CommandResult(
                event.originator_id,
                event.originator_version,
                0,
                event.event_id,
                event.timestamp,
                reference=report.reference,
            ),
            tuple(map(self.mapper.to_stored_event, report.events)) if mapped else (),
            report.keys,
        )

    def _prepare(
        self, actor: Actor, items: Sequence[IngestItem | InvalidArgument], skew_ms: int | None
    ) -> tuple[list[IngestResult | None], list[_ReadyReport], list[_ReadyReport]]:
        """Each report checked and made ready to save, or its INVALID result; the reports
        of the batch, and those it holds twice (answered once the first is saved)."""
        rules = Rules(self.reference, self.time_bounds, self._clock)
        results: list[IngestResult | None] = [None] * len(items)
        ready: dict[UUID, _ReadyReport] = {}
        again: list[_ReadyReport] = []  # a report the batch holds twice: answered once saved
        passed: list[tuple[int, IngestItem, Envelope, ReportIncident]] = []
        device_ahead = _ahead(skew_ms)
        for index, item in enumerate(items):
            if index % INGEST_STEP == 0:
                self._singles.give_way()
            if isinstance(item, InvalidArgument):
                results[index] = IngestResult(IngestOutcome.INVALID, error=item)
                continue
            try:
                envelope, command = self._checked_report(actor, item, rules, device_ahead)
            except InvalidArgument as error:
                results[index] = IngestResult(IngestOutcome.INVALID, error=error)
                continue
            passed.append((index, item, envelope, command))
        sealed = self._sealed_reports([command for _, _, _, command in passed])
        codes: set[str] = set()
        for (index, item, envelope, _), (command, keys) in zip(passed, sealed, strict=True):
            report = self._ready_report(index, item, envelope, command, skew_ms, keys)
            if report.key in ready:
                again.append(report)
                continue
            # Two reports of the batch that drew one code: the later draws again (a
            # store may not check the claims of one transaction against each other).
            while report.reference in codes:
                report = self._redraw(report)
            codes.add(report.reference)
            ready[report.key] = report
        return results, list(ready.values()), again

    def _checked_report(
        self, actor: Actor, item: IngestItem, rules: Rules, device_ahead: timedelta | None
    ) -> tuple[Envelope, ReportIncident]:
        """The report checked as ReportIncident is, with the envelope it is recorded in;
        its occurrence time judged by the device's clock (``device_ahead``)."""
        check_text("device_id", item.device_id, MAX_DEVICE_ID, required=True)
        request_id = item.request_id
        if request_id.startswith(RESERVED_REQUEST_PREFIXES):
            # The report's request id is the device's id, a slash and the report's: named
            # as the field the device sent, not as a request_id it never wrote.
            reserved = " or ".join(repr(prefix.rstrip("/")) for prefix in RESERVED_REQUEST_PREFIXES)
            raise InvalidArgument(
                "device_id",
                f"may not be {reserved}: the ledger names its own requests so (a report's "
                "request id is its device id, a slash and its report id)",
            )
        envelope = Envelope(
            actor=actor,
            request_id=request_id,
            correlation_id=item.correlation_id or request_id,
            causation_id=request_id,
            occurred_at=item.occurred_at,
        )
        command = checked(item.command, rules)
        if not isinstance(command, ReportIncident):
            raise TypeError(f"not a report: {command!r}")
        self._check_request(envelope, device_ahead=device_ahead)
        return envelope, command

    def _ready_report(
        self,
        index: int,
        item: IngestItem,
        envelope: Envelope,
        command: ReportIncident,
        skew_ms: int | None,
        keys: KeyRows | None,
        *,
        draws: int = 1,
    ) -> _ReadyReport:
        """The checked (and sealed) report's incident and request record, made."""
        actor, request_id = envelope.actor, envelope.request_id
        fingerprint = request_fingerprint(command, envelope.occurred_at)
        if envelope.occurred_at is None and self.time_bounds.plausible_occurrence(
            item.record_time, self._clock(), _ahead(skew_ms)
        ):
            # What a device recorded happened no later than it recorded it: a backlog handed
            # over a week on read as brand new (the board, the map's weights by occurrence).
            # Taken only when plausible (not a clock reset to 1970); the fingerprint is of
            # what the device stated, so a resend is the same report as before this default.
            envelope = replace(envelope, occurred_at=item.record_time)
        key = request_key(actor.agency, request_id)
        device = DeviceRecord(item.device_id, item.report_id, item.record_time, skew_ms)
        return self._drawn_report(
            index, key, request_id, command, fingerprint, envelope, device, keys, draws=draws
        )

    def _drawn_report(
        self,
        index: int,
        key: UUID,
        request_id: str,
        command: ReportIncident,
        fingerprint: str,
        envelope: Envelope,
        device: DeviceRecord,
        keys: KeyRows | None,
        *,
        draws: int,
    ) -> _ReadyReport:
        """The report's ``Reported`` event (a new incident id, hence a new reference code),
        its request record's and its code's claim's: the events ``command.create`` and
        :meth:`_execute` would save, made without the aggregates (a third of the time of
        an ingested report went to making them: docs/performance.md)."""
        reported = command.reported(
            envelope, self.reference.reference_prefix, device, draw=draws - 1
        )
        incident_id = reported.originator_id
        record = RequestRecord.recorded(
            key,
            command=command_name(command),
            fingerprint=fingerprint,
            incident=f"{incident_id}@{reported.originator_version}",
        )
        events: list[Any] = [reported, record]
        code = reference_of(reported)
        if code:
            events.append(ReferenceClaim.claimed(code, incident_id))
        return _ReadyReport(
            index,
            key,
            request_id,
            command,
            fingerprint,
            envelope,
            device,
            reported,
            events,
            draws,
            keys,
        )

    def _redrawn(self, report: PreparedReport, call: _IngestCall) -> PreparedReport | None:
        """The report with a new incident id, when its reference code was taken (by an
        incident recorded meanwhile); None when the code is free (the save failed for
        another reason) or it was drawn too often."""
        if report.draws >= MAX_REFERENCE_DRAWS or not self._claimed(report.reference):
            return None
        return self._drawn_again(report, call)

    def _drawn_again(self, report: PreparedReport, call: _IngestCall) -> PreparedReport:
        """The prepared report drawn again (:meth:`_redraw`), made again in this process
        from the call's item: its people sealed under new keys (the first ones were never
        saved), the same fingerprint."""
        if report.draws >= MAX_REFERENCE_DRAWS:
            raise RuntimeError(f"{MAX_REFERENCE_DRAWS} reference codes drawn were all taken")
        log.info("reference.redrawn", reference=report.reference)
        item = call.item(report.at)
        rules = Rules(self.reference, self.time_bounds, self._clock)
        envelope, command = self._checked_report(call.actor, item, rules, _ahead(call.skew_ms))
        ((sealed, keys),) = self._sealed_reports([command])
        ready = self._ready_report(
            report.at, item, envelope, sealed, call.skew_ms, keys, draws=report.draws + 1
        )
        return self._prepared(ready)

    def _redraw(self, report: _ReadyReport) -> _ReadyReport:
        """The report with a new incident id, hence a new reference code."""
        if report.draws >= MAX_REFERENCE_DRAWS:
            raise RuntimeError(f"{MAX_REFERENCE_DRAWS} reference codes drawn were all taken")
        log.info("reference.redrawn", reference=report.reference)
        return self._drawn_report(
            report.index,
            report.key,
            report.request_id,
            report.command,
            report.fingerprint,
            report.envelope,
            report.device,
            report.keys,
            draws=report.draws + 1,
        )

    def _unrecorded(self, reports: list[PreparedReport], call: _IngestCall) -> list[PreparedReport]:
        """The reports whose request is not recorded yet; the others answered from their
        records (DUPLICATE or CONFLICT). One query finds which are recorded, and which
        reference codes drawn are taken already: those reports draw again before the save
        (a code taken would fail the batch's transaction, then each half of it, down to
        the report: 9 failed transactions for one code in 500; with 20,000 incidents
        stored, one batch in three draws a taken code). A report recorded, or a code
        taken, by a racing call after this is caught by the store's uniqueness when saved,
        as before (:meth:`_save_ready`)."""
        if not reports:
            return reports
        claims = [r.claim_key for r in reports if r.claim_key]
        found = self.positions.existing([*(r.key for r in reports), *claims])
        if not found:
            return reports
        unrecorded = []
        codes = {r.reference for r in reports}
        for report in reports:
            answer = self._answer_recorded(report, call) if report.key in found else None
            if answer is not None:
                call.results[report.at] = answer
                continue
            if report.claim_key in found:
                report = self._drawn_again(report, call)
                while report.reference in codes:  # as in _prepare: one code per batch
                    report = self._drawn_again(report, call)
                codes.add(report.reference)
            unrecorded.append(report)
        return unrecorded

    def _save_ready(self, reports: list[PreparedReport], call: _IngestCall) -> None:
        """Save the reports in as few transactions as the store takes: all in one (through
        the group committer, with whatever else is waiting).

        When that fails because some were recorded before (a batch sent again, or twice
        at once), those are answered from their records and the others saved again
        together. Any other failure halves the batch, down to the one report whose save
        fails, which fails the call (the others are saved: sending the batch again is
        safe); a store that cannot be reached fails it at once.
        """
        if not reports:
            return
        results = call.results
        try:
            recordings = self._committer.save(
                [stored for r in reports for stored in r.stored],
                [r.keys for r in reports if r.keys],
            )
        except IntegrityError:
            unsettled = []
            for report in reports:
                answer = self._answer_recorded(report, call)
                if answer is None:
                    unsettled.append(report)
                else:
                    results[report.at] = answer
            if len(unsettled) < len(reports):
                self._save_ready(unsettled, call)
                return
            if len(reports) == 1:
                redrawn = self._redrawn(reports[0], call)
                if redrawn is None:
                    raise
                self._save_ready([redrawn], call)
                return
            failure = "IntegrityError"
        except (*STORE_CONNECTION_ERRORS, SigningKeyRetired):
            raise
        except Exception as exc:  # halved below, down to the report that fails
            if len(reports) == 1:
                raise
            failure = type(exc).__name__
        else:
            positions = {r.originator_id: r.id for r in recordings}
            # The incidents are not cached for the write path: they were never made
            # (a command on one loads it, as for any incident not written lately).
            for report in reports:
                result = replace(report.result, position=positions[report.result.incident_id])
                results[report.at] = IngestResult(IngestOutcome.CREATED, result)
            return
        log.warning("ingest.batch_failed", reports=len(reports), error_type=failure)
        half = len(reports) // 2
        self._save_ready(reports[:half], call)
        self._save_ready(reports[half:], call)

    def _answer_recorded(self, report: PreparedReport, call: _IngestCall) -> IngestResult | None:
        """DUPLICATE (with the original result) or CONFLICT when the report's request was
        recorded before; None when it was not."""
        try:
            original = self._original(
                report.key, report.request_id, call.item(report.at).command, report.fingerprint
            )
        except AlreadyExists as error:
            return IngestResult(IngestOutcome.CONFLICT, error=error)
        if original is None:
            return None
        return IngestResult(IngestOutcome.DUPLICATE, original)

    # -------------------------------------------------------- personal data

    def _sealed(self, command: Command) -> tuple[Command, KeyRows | None]:
        """A report's personal data sealed (a key per person) and digested, before the
        report is fingerprinted and made, with the key table's rows to save with its
        events; any other command as it is."""
        if not isinstance(command, ReportIncident) or command.personal_data is None:
            return command, None
        sealed, keys = self._sealer_of_people().seal_unstored(command.personal_data)
        return replace(command, personal_data=sealed), keys

    def _sealed_reports(
        self, commands: Sequence[ReportIncident]
    ) -> list[tuple[ReportIncident, KeyRows | None]]:
        """:meth:`_sealed` for a batch's reports."""
        sealed: list[tuple[ReportIncident, KeyRows | None]] = []
        for command in commands:
            if command.personal_data is None:
                sealed.append((command, None))
            else:
                data, keys = self._sealer_of_people().seal_unstored(command.personal_data)
                sealed.append((replace(command, personal_data=data), keys))
        return sealed

    def _sealer_of_people(self) -> PersonalSealer:
        if self._personal_sealer is not None:
            return self._personal_sealer
        return self._keys().sealer

    def _keys(self) -> PersonalKeys:
        if self.personal_keys is None:
            raise FailedPrecondition(
                "this ledger has no key table for personal data",
                reason="PERSONAL_DATA_UNAVAILABLE",
            )
        return self.personal_keys

    def _view(self, incident: Incident, subject: DataSubject, read: frozenset[UUID]) -> SubjectView:
        person = None
        if subject.subject_id in read and not subject.erased:
            person = self._keys().open_subject(incident.id, subject.sealed)
        return SubjectView(incident.id, subject, person)

    def read_personal_data(self, envelope: Envelope, command: ReadPersonalData) -> PersonalDataRead:
        """Record the read (who, whose, when, why), then disclose what it names.

        What to disclose is taken from the incident the rule ran on, as erasure takes its
        subjects (no load of the incident's whole history after the save); decrypted before
        the read is saved (a subject that does not decrypt refuses it unrecorded) and
        disclosed only once it is. A retry answered from its record loads the incident."""
        self._keys()
        checked_command = checked(command, Rules(self.reference, self.time_bounds, self._clock))
        if not isinstance(checked_command, ReadPersonalData):
            raise TypeError(f"not a read of personal data: {checked_command!r}")
        read_command = checked_command
        policy = self.reference.personal_data
        ran: list[tuple[Incident, UUID, frozenset[UUID]]] = []
        opened: dict[UUID, Person | None] = {}

        def run(reload: bool) -> list[Incident]:
            incident = self._load_for_write(
                read_command.incident, read_command.expected_version, reload=reload
            )
            read_command.run(self.reference, envelope, incident)
            access = incident.accesses[-1]  # the one just recorded
            read = frozenset(access.subjects)
            ran[:] = [(incident, access.event_id, read)]
            # Opened before the read is saved, disclosed only after: a key lost or changed
            # in the store (DATA_LOSS) refused the read after it was recorded, and the
            # record said that everyone of the incident was read, again at each retry.
            opened.clear()
            opened.update(
                (s.subject_id, self._view(incident, s, read).person)
                for s in incident.subjects.values()
            )
            return [incident]

        result = self._execute(
            envelope,
            read_command,
            read_command.incident,
            read_command.expected_version,
            run,
            (read_command.incident,),
        )
        if ran and not result.replayed and ran[0][1] == result.event_id:
            incident, _, read = ran[0]
            return PersonalDataRead(
                result,
                tuple(
                    SubjectView(incident.id, s, opened.get(s.subject_id))
                    for s in incident.subjects.values()
                ),
            )
        # Answered from its record: the rule did not run this time.
        incident = self._load(result.incident_id)
        access = incident.recorded_read(envelope.actor, result.event_id, envelope.request_id)
        read = frozenset(access.subjects)
        # The agency may still read it here: PERMISSION_DENIED otherwise, as at first.
        incident.readable_subjects(envelope.actor, policy)
        # Every person the report names, in its order: those the read took with their data
        # (``read``, the recorded access's subjects), the others without (an erased one; an
        # anonymous reporter, to an agency other than the reporting one, whose existence
        # GetIncident shows anyway). Left out, the answer read as if the report named fewer
        # people than it does.
        return PersonalDataRead(
            result, tuple(self._view(incident, s, read) for s in incident.subjects.values())
        )

    def erase_personal_data(self, envelope: Envelope, command: ErasePersonalData) -> CommandResult:
        """Record the erasure, then destroy the keys of every erased subject of the incident
        (again for one whose key survived an earlier failure: destroying is idempotent).

        The erased subjects are taken from the incident the rule ran on, not from a second
        load after the save: an incident not in the cache is loaded once, from its latest
        sealed snapshot and the events after it, so an erasure costs about the same at 10
        events as at 5,000, cached or not (docs/performance.md, "Erasing one person")."""
        keys = self._keys()
        checked_command = checked(command, Rules(self.reference, self.time_bounds, self._clock))
        if not isinstance(checked_command, ErasePersonalData):
            raise TypeError(f"not an erasure: {checked_command!r}")
        erase = checked_command
        erased: list[UUID] = []

        def run(reload: bool) -> list[Incident]:
            incident = self._load_for_write(erase.incident, erase.expected_version, reload=reload)
            erase.run(self.reference, envelope, incident)
            erased[:] = [s.subject_id for s in incident.subjects.values() if s.erased]
            return [incident]

        result = self._execute(
            envelope, erase, erase.incident, erase.expected_version, run, (erase.incident,)
        )
        if result.replayed:  # answered from its record: the rule did not run this time
            incident = self._load(result.incident_id)
            erased[:] = [s.subject_id for s in incident.subjects.values() if s.erased]
        keys.destroy(erase.incident, erased)
        return result

    def find_personal_data(
        self, envelope: Envelope, *, phone: str, nik: str, purpose: str
    ) -> list[SubjectView]:
        """Subject access: the person with this phone or NIK in every incident that names
        them, each incident's read recorded once per request id (its own per incident,
        derived from the caller's)."""
        keys = self._keys()
        policy = self.reference.personal_data
        if envelope.actor.agency not in policy.readers:
            # Nothing about the person, not even whether they are known, is disclosed.
            raise PermissionDenied(
                f"agency {envelope.actor.agency} may not search personal data",
                reason="PERSONAL_DATA_NOT_PERMITTED",
                metadata={"caller_agency": envelope.actor.agency},
            )
        if bool(phone.strip()) == bool(nik.strip()):
            raise InvalidArgument("phone", "give exactly one of phone and nik")
        check_purpose(purpose)
        self._check_request(envelope)
        if phone.strip():
            found = keys.find("phone", normalised_phone(phone, "phone"))
        else:
            found = keys.find("nik", check_nik(nik, "nik"))
        by_incident: dict[UUID, set[UUID]] = {}
        for entry in found:
            by_incident.setdefault(entry.incident_id, set()).add(entry.subject_id)
        views: list[SubjectView] = []
        for incident_id, subject_ids in by_incident.items():
            only = frozenset(subject_ids)
            try:
                incident, access = self._record_subject_access(envelope, incident_id, only, purpose)
            except NotFound:
                continue  # keys of a report that failed to save: they open nothing
            except FailedPrecondition as refused:
                if refused.reason != "NO_PERSONAL_DATA":
                    raise
                continue  # an anonymous reporter, known to the reporting agency alone
            # Disclosed: what the recorded read names, of whom the caller may read (an
            # anonymous reporter found by a shared phone is left out, not decrypted).
            read = frozenset(access.subjects)
            for subject in incident.found_subjects(
                envelope.actor, policy, only, access, envelope.request_id
            ):
                view = self._view(incident, subject, read)
                trail = tuple(a for a in incident.accesses if subject.subject_id in a.subjects)
                views.append(replace(view, accesses=trail))
        return views

    def _record_subject_access(
        self, envelope: Envelope, incident_id: UUID, only: frozenset[UUID], purpose: str
    ) -> tuple[Incident, PersonalDataAccess]:
        """Record a subject access's read of one incident, as ReadPersonalData records it
        (once per request id: ``find/`` and a UUID of the incident and the caller's id);
        the incident after it and the read recorded (now, or by the request before)."""
        # One request id per incident, derived from the caller's (and as short as any).
        request_id = f"find/{uuid5(incident_id, envelope.request_id).hex}"
        env = replace(
            envelope, request_id=request_id, causation_id=envelope.request_id, by_ledger=True
        )
        policy = self.reference.personal_data

        def run(reload: bool) -> list[Incident]:
            incident = self._load_for_write(incident_id, 0, reload=reload)
            incident.record_personal_data_access(env, purpose, policy, only=only)
            return [incident]

        command = ReadPersonalData(incident_id, 0, purpose)
        result = self._execute(env, command, incident_id, 0, run, (incident_id,))
        incident = self._load(incident_id)
        return incident, incident.recorded_read(env.actor, result.event_id, envelope.request_id)

    def erase_expired_personal_data(self, retention: timedelta, now: datetime | None = None) -> int:
        """The retention rule: erase the personal data of every incident closed at least
        ``retention`` ago and not under a legal hold, as the coordinator erasing it with the
        rule as legal basis (request id ``retention/{incident}``: a second run, or another
        replica's, records nothing twice). How many incidents it erased."""
        keys = self._keys()
        moment = now or self._clock()
        actor = Actor(self.reference.coordinator, "retention-rule", Role.COORDINATOR)
        days = retention / timedelta(days=1)
        erased = 0
        for incident_id in keys.incidents_with_keys():
            try:
                incident = self._load(incident_id)
            except NotFound:
                continue  # keys of a report that failed to save
            if not incident.personal_data_expired(moment, retention):
                continue
            request_id = f"retention/{incident_id}"
            envelope = Envelope(actor, request_id, request_id, request_id, by_ledger=True)
            command = ErasePersonalData(
                incident_id,
                0,
                (),
                f"retention rule: {days:g} days after closure",
                everyone=True,
            )
            try:
                self.erase_personal_data(envelope, command)
            except LedgerError as refused:  # a hold placed meanwhile: the next run sees it
                log.warning(
                    "personal_data.retention_refused",
                    incident=f"incidents/{incident_id}",
                    reason=refused.reason,
                )
                continue
            erased += 1
        if erased:
            log.info("personal_data.retention_erased", incidents=erased, days=days)
        return erased

    def delete_unsaved_personal_keys(self, grace: timedelta) -> int:
        """The sweep of keys written for reports that were never saved (their keys are
        stored before their events: a store error, or a retry answered from its first
        result, leaves keys that open nothing). Keys older than ``grace`` whose incident
        has no recorded event are deleted; how many. Every replica may sweep: a report is
        saved within its request, long before ``grace`` (an hour by default) is past."""
        keys = self._keys()
        before = self._clock() - grace
        deleted = 0
        for incident_ids in keys.incidents_keyed_before(before):
            recorded = self.positions.existing(incident_ids)
            deleted += keys.delete_unsaved([i for i in incident_ids if i not in recorded], before)
        return deleted

    def destroy_keys_of_erased(
        self, after: int = 0, *, settle: timedelta = ERASURE_SETTLE, batch: int = 500
    ) -> tuple[int, int]:
        """Destroy again the keys that a recorded erasure destroyed and the key table holds
        once more: a key table restored from a backup taken before the erasure (the events
        say who was erased; the restored keys would open their data again), or an erasure
        recorded just before a crash, its keys not yet destroyed. Each such incident is
        logged ``personal_data.erased_key_found`` (warning). Reads the erasures recorded
        after position ``after``, up to the first one younger than ``settle`` (its request
        may still be destroying its keys); returns (the position to go on from, keys
        destroyed). The upkeep runs it from the start of the log at each start, then on."""
        keys = self._keys()
        topics = [get_topic(Incident.PersonalDataErased)]
        settled = self._clock() - settle
        position = after
        erased: dict[UUID, set[UUID]] = {}
        while True:
            rows = self.recorder.select_notifications(
                position, batch, topics=topics, inclusive_of_start=False
            )
            young = False
            for row in rows:
                try:
                    event = self.mapper.to_domain_event(row)
                except BROKEN_HISTORY:  # changed in the store: the audit names it
                    log.error("personal_data.erasure_unreadable", position=row.id)
                    position = row.id
                    continue
                if not isinstance(event, Incident.PersonalDataErased):
                    position = row.id
                    continue
                if event.timestamp > settled:
                    young = True
                    break
                subjects = erased.setdefault(event.originator_id, set())
                subjects.update(UUID(text) for text in event.subjects)
                position = row.id
            if young or len(rows) < batch:
                break
        destroyed = 0
        for incident_id, found in keys.undestroyed(erased).items():
            log.warning(
                "personal_data.erased_key_found",
                incident=f"incidents/{incident_id}",
                subjects=len(found),
                why="a key table restored from an older backup, or an erasure cut off by a "
                "crash: destroyed again",
            )
            destroyed += keys.destroy(incident_id, found)
        return position, destroyed

    def scrub_personal_keys(self) -> None:
        """No older copy of a destroyed key left in the store's files
        (:meth:`PersonalKeys.scrub`): the upkeep's retry of a scrub that an erasure found
        the store too busy for."""
        self._keys().scrub()

    def personal_data_record(self, actor: Actor, incident_id: UUID) -> PersonalDataRecord:
        """The reads of an incident's personal data, its subjects (references), erasures
        and legal holds; for the agencies that may read, erase or hold it, and auditors."""
        incident = self._load(incident_id)
        incident.check_may_see_personal_data_record(actor, self.reference.personal_data)
        return PersonalDataRecord(
            list(incident.accesses),
            list(incident.subjects.values()),
            list(incident.erasures),
            dict(incident.legal_holds),
        )

    # -------------------------------------------------------------- queries

    def get_incident(self, incident_id: UUID, field: str = "name") -> Incident:
        """The incident now; ``field`` names the request's field that named it (in a
        NOT_FOUND: a list's ``parent``, a command's ``name``)."""
        return self._load(incident_id, field)

    def listed_incident(self, incident_id: UUID, *, position: int = 0) -> Incident | ChainFailure:
        """The incident as a list shows it, now or at global ``position`` (0: now): when its
        stored history fails its hash chain, that failure in its place, so that one changed
        incident does not hide every other from every agency (its own reads still refuse)."""
        try:
            if position:
                return self.get_incident_as_of(incident_id, position=position)
            return self.get_incident(incident_id)
        except NotFound:
            # Listed, so the read side folded its report from this store: every one of its
            # events was deleted since, outside the ledger. Before, the whole list answered
            # NOT_FOUND, for every agency.
            failure = ChainFailure(
                incident_id,
                check="decode",
                version=0,
                message=f"incident {incident_id} fails its hash chain: its recorded events "
                "are gone from the store (deleted outside the ledger; `ledger-audit verify "
                "--store` with a witness's checkpoints names where)",
            )
        except DataLoss as error:
            if error.reason != "HASH_CHAIN_BROKEN":
                raise
            failure = ChainFailure.of(incident_id, error)
        log.error(
            "incident.listed_broken",
            incident=f"incidents/{incident_id}",
            check=failure.check,
            version=failure.version,
        )
        return failure

    def incident_by_reference(self, text: str, field: str = "reference") -> UUID:
        """The id of the incident whose reference code ``text`` is (read leniently).

        INVALID_ARGUMENT when ``text`` is not a code of this ledger or is mistyped (its
        check character does not match); NOT_FOUND when no incident has it.
        """
        code = parse_code(text, self.reference.reference_prefix, field)
        try:
            claim: ReferenceClaim = self.load_aggregate(claim_key(code))
        except AggregateNotFoundError:
            raise NotFound(
                f"no incident has the reference {code}",
                reason="INCIDENT_NOT_FOUND",
                # No "incident": it holds a resource name wherever it is said, which no
                # incident here has (error_messages.NOT_FOUND_BY_REFERENCE says the code).
                metadata={"reference": code, "field": field},
            ) from None
        # The claim is outside the chain; the incident's report, in it, records its code.
        try:
            recorded = self._load(claim.incident_id, field).reference
        except NotFound:
            recorded = None
        if recorded != code:
            raise changed_record(
                "reference",
                claim.incident_id,
                f"that incident's report records the code {recorded or 'none'}, not {code}",
            )
        return claim.incident_id

    def find_reference(self, text: str) -> UUID | None:
        """As :meth:`incident_by_reference` (for a list's filter), None when no incident
        has the code."""
        try:
            return self.incident_by_reference(text, "filter")
        except NotFound:
            return None

    def _claimed(self, code: str) -> bool:
        try:
            self.load_aggregate(claim_key(code))
        except AggregateNotFoundError:
            return False
        return True

    def check_recorded(self, position: int, field: str) -> int:
        """The last recorded position; FAILED_PRECONDITION ``POSITION_NOT_RECORDED`` when
        ``position`` (the request's ``field``) lies beyond it."""
        recorded = self.recorder.max_notification_id() or 0
        if position > recorded:
            raise FailedPrecondition(
                f"position {position} has not been recorded (the ledger is at {recorded})",
                reason="POSITION_NOT_RECORDED",
                metadata={
                    field: str(position),
                    "position": str(position),
                    "ledger_position": str(recorded),
                },
            )
        return recorded

    def get_incident_as_of(
        self,
        incident_id: UUID,
        *,
        position: int = 0,
        time: datetime | None = None,
        field: str = "name",
    ) -> Incident:
        """The incident as it stood at a global position and/or a record time; ``field``
        names the request's field that named it (in a NOT_FOUND, as :meth:`_load`)."""
        if position:
            # The state there is not known yet: answering with today's would give the same
            # question another answer tomorrow.
            self.check_recorded(position, "as_of_position")
        version = 0
        positions = self.positions.of(incident_id) if position else {}
        with self._loading(incident_id):
            for event in self.events.get(incident_id):
                if not isinstance(event, Incident.Event):
                    continue
                if position and positions.get(event.originator_version, 0) > position:
                    break
                if time is not None and event.timestamp > time:
                    break
                version = event.originator_version
        if version == 0:
            raise NotFound(
                f"incident {incident_id} did not exist then",
                reason="INCIDENT_NOT_FOUND",
                metadata={"incident": f"incidents/{incident_id}", "field": field},
            )
        with self._loading(incident_id):
            incident: Incident = self.load_incident(incident_id, version)
        self.check_seal(incident)  # every event was sealed when it was stored
        return incident

    def position_at(self, time: datetime) -> int:
        """The last position recorded at or before ``time`` (0 if none).

        A binary search over the log: record times grow with positions.
        """
        low, high = 0, self.recorder.max_notification_id() or 0
        while low < high:
            middle = (low + high + 1) // 2
            rows = self.recorder.select_notifications(middle, 1, topics=self._incident_topics)
            if not rows or rows[0].id > high:
                high = middle - 1  # no incident event in [middle, high]
                continue
            event = self.mapper.to_domain_event(rows[0])
            if not isinstance(event, Incident.Event) or event.timestamp > time:
                high = middle - 1
            else:
                low = rows[0].id
        return low

    def history(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        keep: Callable[[Incident.Event], bool] = lambda _event: True,
        batch: int = 500,
        incident: UUID | None = None,
    ) -> Iterator[StoredIncidentEvent]:
        """Incident events in log order after a position, read in batches (bounded memory).

        Of one ``incident``: its events only, folded and checked (chain and seal) as its
        own views are, so that DATA_LOSS refuses a changed one (before, it was streamed as
        the store held it) and NOT_FOUND one that does not exist; another incident's
        unreadable event no longer stops it."""
        if incident is not None:
            for stored in self.incident_events(
                incident, after_version=0, limit=None, field="incident"
            ):
                within = stored.position > after and (until is None or stored.position <= until)
                if within and keep(stored.event):
                    yield stored
            return
        topics = self._incident_topics
        while True:
            rows = self.recorder.select_notifications(
                after, batch, stop=until, topics=topics, inclusive_of_start=False
            )
            if not rows:
                return
            for row in rows:
                try:
                    event = self.mapper.to_domain_event(row)
                except BROKEN_HISTORY as exc:
                    raise self._unreadable_in_log(row, exc) from None
                if isinstance(event, Incident.Event) and keep(event):
                    yield StoredIncidentEvent(event, row.id)
            after = rows[-1].id
            if until is not None and after >= until:
                return

    def incident_events(
        self, incident_id: UUID, *, after_version: int, limit: int | None, field: str = "parent"
    ) -> list[StoredIncidentEvent]:
        """Events of one incident with their global positions, oldest first; ``field``
        names the request's field that named it (in a NOT_FOUND, as :meth:`_load`)."""
        # The whole history is read and checked (chain and seal), so that no page serves
        # an event that was changed in the store; incidents hold tens of events.
        with self._loading(incident_id):
            history = list(self.events.get(incident_id))
            incident = mutate_incident(None, history) if history else None
        if not isinstance(incident, Incident):
            raise NotFound(
                f"incident {incident_id} does not exist",
                reason="INCIDENT_NOT_FOUND",
                metadata={"incident": f"incidents/{incident_id}", "field": field},
            )
        self.check_seal(incident)
        events = [e for e in history if e.originator_version > after_version][:limit]
        if not events:
            return []
        positions = self.positions.of(
            incident_id, gt=after_version, lte=events[-1].originator_version
        )
        return [
            StoredIncidentEvent(e, positions.get(e.originator_version, 0))  # type: ignore[arg-type]
            for e in events
        ]

    # ------------------------------------------------------------- plumbing

    @contextmanager
    def _serialised(self, incident_ids: tuple[UUID, ...]) -> Iterator[None]:
        stripes = sorted({incident_id.int % LOCK_STRIPES for incident_id in incident_ids})
        with ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(self._stripes[stripe])
            yield

    def _execute(
        self,
        envelope: Envelope,
        checked_command: Command,
        incident_id: UUID | None,
        expected: int,
        run: Callable[[bool], list[Incident]],
        lock_ids: tuple[UUID, ...] = (),
        *,
        keys: KeyRows | None = None,
    ) -> CommandResult:
        self._check_request(envelope, expected)
        command = command_name(checked_command)
        fingerprint = request_fingerprint(checked_command, envelope.occurred_at)
        key = request_key(envelope.actor.agency, envelope.request_id)
        reload = False
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                with self._serialised(lock_ids):
                    try:
                        aggregates = run(reload)
                        primary = aggregates[0]
                        last_event = primary.pending_events[-1]
                        if not isinstance(last_event, Incident.Event):
                            raise TypeError(f"unexpected event {last_event!r}")
                        record = RequestRecord.record(
                            key,
                            command=command,
                            fingerprint=fingerprint,
                            incident=f"{primary.id}@{primary.version}",
                        )
                        claims = claims_of(aggregates)
                        recordings = self._committer.save(
                            [e for a in (*aggregates, record, *claims) for e in a.collect_events()],
                            (keys,) if keys else (),
                        )
                    except BaseException:
                        for incident_id_ in lock_ids:
                            self._cache.drop(incident_id_)
                        raise
                    for aggregate in aggregates:
                        self._cache.put(aggregate.id, aggregate)
                    self._snapshot_saved(aggregates, (r.originator_id for r in recordings))
            except IntegrityError:
                original = self._original(key, envelope.request_id, checked_command, fingerprint)
                if original is not None:
                    return original
                if expected and incident_id is not None:
                    try:
                        self._load(incident_id).check_expected(expected)
                    except VersionConflict as conflict:
                        raise conflict from None
                log.debug("command.conflict_retry", command=command, attempt=attempt)
                reload = True
                # Jittered exponential backoff: another process won the race.
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))  # noqa: S311
                continue
            except SigningKeyRetired:
                raise  # nothing this replica could retry would be recorded
            except LedgerError:
                original = self._original(key, envelope.request_id, checked_command, fingerprint)
                if original is not None:
                    return original
                if not reload and lock_ids:
                    reload = True  # the refusal may come from a stale cached state
                    continue
                raise
            position = max(r.id for r in recordings if r.originator_id == primary.id)
            return CommandResult(
                incident_id=primary.id,
                version=primary.version,
                position=position,
                event_id=last_event.event_id,
                recorded_at=last_event.timestamp,
                reference=reference_of(last_event),
            )
        raise Aborted(
            f"{command} lost {MAX_CONFLICT_RETRIES} races for the incident; retry later",
            reason="TOO_MUCH_CONTENTION",
        )

    def _check_request(
        self, envelope: Envelope, expected: int = 0, device_ahead: timedelta | None = None
    ) -> None:
        """The checks of what every command carries beside its fields: its ids, the
        expected version, the time it says it happened (by a field device's clock when
        ``device_ahead`` says how far it runs ahead: :meth:`TimeBounds.check_occurred`)."""
        if blank(envelope.request_id):
            raise InvalidArgument("request_id", "is required (AIP-155)")
        check_text("request_id", envelope.request_id, MAX_SHORT)
        if not envelope.by_ledger and envelope.request_id.startswith(RESERVED_REQUEST_PREFIXES):
            raise InvalidArgument(
                "request_id",
                f"may not begin with {' or '.join(RESERVED_REQUEST_PREFIXES)}: the ledger "
                "names its own requests so",
            )
        check_text("correlation_id", envelope.correlation_id, MAX_SHORT)
        if expected < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        if envelope.occurred_at is not None:
            self.time_bounds.check_occurred(
                "occur_time",
                envelope.occurred_at,
                self._clock(),
                self.reference.tz(),
                device_ahead=device_ahead,
            )

    def _original(
        self, key: UUID, request_id: str, command: Command, fingerprint: str
    ) -> CommandResult | None:
        """The result of an earlier command with this request id, if there was one."""
        try:
            record: RequestRecord = self.load_aggregate(key)
        except AggregateNotFoundError:
            return None
        incident_id, version = record.incident_id, record.incident_version
        if (
            record.command != command_name(command)
            or record.fingerprint != fingerprint
            or not command.could_have_recorded(incident_id, version)
        ):
            # What the request recorded is named, so that the sender can find it (a device's
            # report sent again with other content: the desk corrects the incident recorded).
            event = self._recorded_by(key, incident_id, version)
            reference = reference_of(event)
            recorded = f"incidents/{incident_id}"
            raise AlreadyExists(
                f"request_id {request_id!r} was already used by this agency for a "
                f"different request ({record.command}, {recorded} version {version}"
                f"{f', reference {reference}' if reference else ''})",
                reason="REQUEST_ID_REUSED",
                metadata={
                    "request_id": request_id,
                    "original_command": record.command,
                    "incident": recorded,
                    "version": str(version),
                    **({"reference": reference} if reference else {}),
                },
            )
        event = self._recorded_by(key, incident_id, version)
        return CommandResult(
            incident_id=incident_id,
            version=version,
            position=self.positions.of(incident_id, gt=version - 1, lte=version).get(version, 0),
            event_id=event.event_id,
            recorded_at=event.timestamp,
            reference=reference_of(event),
            replayed=True,
        )

    def _recorded_by(self, key: UUID, incident_id: UUID, version: int) -> Incident.Event:
        """The event a request's record names, checked to be that request's."""
        with self._loading(incident_id):
            found = list(self.events.get(incident_id, gt=version - 1, lte=version))
        if not found:
            raise broken_history(incident_id, LookupError(f"version {version} is missing"))
        event = found[0]
        if not isinstance(event, Incident.Event):
            raise TypeError(f"unexpected event {event!r}")
        # The record is outside the chain; the event, in it, names the request it recorded.
        if request_key(event.actor_agency, event.request_id) != key:
            raise changed_record(
                "request",
                incident_id,
                f"its version {version} was recorded by another request "
                f"({event.actor_agency}, {event.request_id!r})",
            )
        return event

    def _load_for_write(
        self, incident_id: UUID, expected: int, *, reload: bool, field: str = "name"
    ) -> Incident:
        """The incident to change: the cached state, unless ``reload`` (from the store) or
        not cached."""
        cached = None if reload else self._cache.get(incident_id)
        incident = cached if isinstance(cached, Incident) else self._load(incident_id, field)
        incident.check_expected(expected)
        return incident

    def load_aggregate(self, aggregate_id: UUID, version: int | None = None) -> Any:
        """An aggregate from its stored events (up to ``version``): ``repository.get``
        with a cheaper projector."""
        return self.repository.get(aggregate_id, version=version, projector_func=mutate_all)

    def load_incident(self, incident_id: UUID, version: int | None = None) -> Any:
        """:meth:`load_aggregate` for an incident: a stored record among its events that is
        not one of them is :class:`ForeignRecordError` (see :func:`mutate_incident`)."""
        return self.repository.get(incident_id, version=version, projector_func=mutate_incident)

    def _unreadable_in_log(self, row: Notification, error: Exception) -> DataLoss:
        """The DATA_LOSS of a replay that reaches a stored event it cannot read: which one
        (position, incident, version), and how to read on past it."""
        log.error(
            "history.event_unreadable",
            position=row.id,
            incident=f"incidents/{row.originator_id}",
            version=row.originator_version,
            error_type=type(error).__name__,
        )
        return DataLoss(
            f"the stored event at position {row.id} (incident {row.originator_id}, version "
            f"{row.originator_version}) no longer decodes: it was changed in the store "
            "(`ledger-audit verify --store` names the change); the replay stops there, and "
            f"goes on past it from after_position {row.id}",
            reason="HASH_CHAIN_BROKEN",
            metadata={
                "incident": f"incidents/{row.originator_id}",
                "version": str(row.originator_version),
                "position": str(row.id),
                "check": "decode",
            },
        )

    @contextmanager
    def _loading(self, incident_id: UUID | str) -> Iterator[None]:
        """Stored events of the incident that no longer load are DATA_LOSS, never INTERNAL."""
        try:
            yield
        except BROKEN_HISTORY as exc:
            log.error(
                "incident.history_broken",
                incident=f"incidents/{incident_id}",
                error_type=type(exc).__name__,
                error=str(exc)[:500],
            )
            raise broken_history(incident_id, exc) from None

    def stop_sealing(self, refusal: SigningKeyRetired) -> None:
        """From now on every commit fails with ``refusal``: the store records this ledger's
        signing key as retired, so whatever it sealed now would be refused at load, by the
        checkpoints and by the audit, and nothing would ever re-seal it."""
        self._key_retired = refusal

    def guard_commits(self) -> None:
        """From now on each commit looks this ledger's signing key up in the store's
        ``ledger_retired_keys``, in its own transaction, and is rolled back (and every
        later one refused, :meth:`stop_sealing`) once a rotation has retired the key. For
        a store that has that table, on SQLite or PostgreSQL.

        Its cost, measured in-process on the 2-core machine while it was shared (load
        average about 16), medians of 40-120 alternating rounds: a bare commit of one event
        took 234 -> 267 us of CPU on SQLite and 925 -> 1000 us on PostgreSQL; a whole
        ReportIncident 534 -> 549 us on SQLite (+3 %) and 1386 -> 1341 us on PostgreSQL
        (within the noise: the check rides in the insert's pipeline, no round trip). Small
        beside what it buys (no event sealed with a retired key is ever stored after the
        rotation's row), so every commit makes it; the periodic check alone left up to
        LEDGER_STORE_CHECK_SECONDS of such events, broken for good."""
        if self.sealer is None:
            return
        if isinstance(self.recorder, KeyedSQLiteRecorder) or (
            # The library's insert function (POSTGRES_ENABLE_DB_FUNCTIONS) takes the events
            # alone: there only the periodic check (services/ledger/key_watch.py) runs.
            isinstance(self.recorder, ArrayInsertRecorder)
            and not self.recorder.datastore.enable_db_functions
        ):
            self._commit_key = self.sealer.key_id

    def add_key_retired_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (in the committing thread) when a commit finds the key retired."""
        self._key_retired_listeners.append(listener)

    @property
    def sealing_refused(self) -> SigningKeyRetired | None:
        """Why this ledger records nothing more (None while it records)."""
        return self._key_retired

    def record_key_rotation(self, retired_key: str, successor: str, position: int) -> int:
        """Record in the log that ``retired_key`` was retired for ``successor`` at
        ``position`` (a :class:`KeyRotation`, outside the chains), and return the record's
        position, where the rotation signs the new key's first checkpoint when nothing was
        recorded since the old key's last one (Checkpoints.rotate_key). Once per retired
        key: a second call, or a replica rotating at once, gets the first record's position."""
        rotation = KeyRotation.record(retired_key, successor, position)
        stored = [self.mapper.to_stored_event(event) for event in rotation.collect_events()]
        try:
            positions = self.recorder.insert_events(stored)
        except IntegrityError:
            positions = None
        if positions:
            return int(positions[0])
        recorded = self.positions.of(rotation_key(retired_key)).get(1)
        if recorded is None:  # the insert failed, and not for the record being there
            raise RuntimeError(f"the rotation of key {retired_key} could not be recorded")
        return recorded

    def bound_retired_seals(self, until: Mapping[str, int]) -> None:
        """From now on, a seal made with a retired key vouches for an incident's newest
        event only when that event lies at or before the position the key's rotation
        recorded (``until``, by key id; Checkpoints.retired_positions): what a leaked key,
        or a replica left running with it, seals after the rotation is refused."""
        self._retired_until = dict(until)

    def bound_unsealed_history(self, heads: Mapping[UUID, str]) -> None:
        """From now on an incident whose newest event carries no seal loads when that event
        is the one the start checked against the checkpoint over the history recorded
        before seals existed (``heads``, by incident id; Checkpoints.unsealed_history). Any
        other missing seal is a forgery as before, also on an event of that history changed
        in the store since the start."""
        self._unsealed_heads = heads

    def check_seal(self, incident: Incident) -> None:
        """DATA_LOSS unless the incident's newest event carries the ledger's seal over its
        hash: whoever changed it in the store could not have re-sealed it."""
        checker = self.seal_checker
        if checker is None:
            return
        signer = checker.signer(incident.head_hash, incident.head_seal)
        if signer is None and incident.head_seal is None and self._recorded_before_seals(incident):
            return
        if signer is None:
            problem = checker.problem(incident.head_hash, incident.head_seal)
        elif self._retired_until is None or signer == key_id(checker.public_key):
            return
        else:
            problem = self._retired_problem(incident, signer, self._retired_until)
            if problem is None:
                return
        if self._key_retired is not None and signer is None:
            # Most likely sealed with the key that retired this one, which this replica does
            # not know: not a broken history, a replica to restart (UNAVAILABLE, elsewhere).
            raise self._key_retired
        log.error(
            "incident.seal_broken",
            incident=f"incidents/{incident.id}",
            version=incident.version,
            problem=problem,
        )
        raise DataLoss(
            f"incident {incident.id} fails its hash chain at version {incident.version}: {problem}",
            reason="HASH_CHAIN_BROKEN",
            metadata={
                "incident": f"incidents/{incident.id}",
                "version": str(incident.version),
                "check": "seal",
            },
        )

    def _recorded_before_seals(self, incident: Incident) -> bool:
        """Whether the incident's newest event is the one the start found, unchanged, in the
        history recorded before seals existed (its hash covers its version and content)."""
        return self._unsealed_heads.get(incident.id) == incident.head_hash

    def _retired_problem(
        self, incident: Incident, signer: str, until: Mapping[str, int]
    ) -> str | None:
        """Why a seal of retired key ``signer`` does not vouch for the incident's newest
        event; None when the event lies at or before the key's retirement. One indexed
        query, only for incidents last changed before a rotation."""
        bound = until.get(signer)
        if bound is None:
            return f"it is sealed with key {signer}, which this ledger never retired"
        version = incident.version
        position = self.positions.of(incident.id, version - 1, version).get(version)
        if position is not None and position <= bound:
            return None
        return (
            f"it is sealed with key {signer}, retired at position {bound}, but lies at "
            f"position {position}"
        )

    def _load(self, incident_id: UUID, field: str = "name") -> Incident:
        """The incident from the store: from its latest snapshot and the events after it
        when the snapshot's seal and link to the chain hold, else by replaying all its
        events; then the newest event's seal checked. A snapshot is written when the
        events replayed crossed a multiple of the interval (an incident saved in one go,
        or before snapshots existed)."""
        snapshots = self.incident_snapshots
        # A snapshot on its way to the store when the load begins may be stored before the
        # check below, after the load read an older one: this load then writes none.
        writing = snapshots is not None and snapshots.pending(incident_id)
        loaded = None if snapshots is None else self._from_snapshot(incident_id, snapshots)
        if loaded is not None:
            incident, base = loaded
        else:
            base = 0
            try:
                with self._loading(incident_id):
                    incident = self.load_incident(incident_id)
            except AggregateNotFoundError:
                raise NotFound(
                    f"incident {incident_id} does not exist",
                    reason="INCIDENT_NOT_FOUND",
                    metadata={"incident": f"incidents/{incident_id}", "field": field},
                ) from None
            if not isinstance(incident, Incident):
                raise NotFound(
                    f"incident {incident_id} does not exist",
                    reason="INCIDENT_NOT_FOUND",
                    metadata={"incident": f"incidents/{incident_id}", "field": field},
                )
        self.check_seal(incident)
        if (
            snapshots is not None
            and not writing
            and snapshots.due(incident, base)
            and not snapshots.pending(incident.id)
        ):
            snapshots.write(incident)  # loaded from the store: committed state
        return incident

    def _from_snapshot(
        self, incident_id: UUID, snapshots: Snapshots
    ) -> tuple[Incident, int] | None:
        """The incident from its latest snapshot and the events after it, with the
        snapshot's version; None when it has none, or the snapshot is rejected (logged:
        ``incident.snapshot_rejected``). The stored event at the snapshot's version must
        have the hash the snapshot names: the events after it then link to it as the chain
        requires (checked as they apply), and the newest one's seal is checked by the
        caller, as on a full replay."""
        try:
            snapshot = snapshots.latest(incident_id)
            if snapshot is None:
                return None
            version = snapshot.version

            def replayed() -> list[list[Any]]:
                # The rows of the snapshot's events from those events: the fallback
                # should the snapshot's own rows fail their digest.
                with self._loading(incident_id):
                    full: Incident = self.load_incident(incident_id, version)
                return full.event_rows()

            incident = snapshot.incident(lambda: snapshots.rows(incident_id, version), replayed)
        except SnapshotRejected as problem:
            rejected(incident_id, str(problem))
            return None
        with self._loading(incident_id):
            events = iter(self.events.get(incident_id, gt=snapshot.version - 1))
            head = next(events, None)
            if (
                not isinstance(head, Incident.Event)
                or head.originator_version != snapshot.version
                or event_hash(head) != snapshot.head_hash
            ):
                rejected(
                    incident_id,
                    f"the stored event at version {snapshot.version} is not the one it stands for",
                )
                return None
            incident.head_seal = head.__dict__.get("seal")  # the stored event's, as a replay
            incident = mutate_incident(incident, events)
        return incident, snapshot.version

    def _snapshot_saved(self, aggregates: Iterable[Any], saved: Iterable[UUID | str]) -> None:
        """A snapshot of each incident a commit took across a multiple of the interval
        (``saved``: the originator of each event it stored). Called after the commit, the
        incidents' state as committed, under their locks."""
        snapshots = self.incident_snapshots
        if snapshots is None:
            return
        counts = Counter(saved)
        for aggregate in aggregates:
            if isinstance(aggregate, Incident) and snapshots.due(
                aggregate, aggregate.version - counts[aggregate.id]
            ):
                snapshots.write(aggregate)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """``Application.save``'s snapshots (tools and tests save so): the ledger's own,
        sealed, never the library's (which could not encode an incident's state)."""
        self._snapshot_saved(
            processing_event.aggregates.values(),
            (event.originator_id for event in processing_event.events),
        )
