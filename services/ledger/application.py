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
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import OriginatorVersionError
from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    Mapper,
    MapperDeserialisationError,
    Recording,
    StoredEvent,
)
from eventsourcing.utils import Environment, TopicError, get_topic

from services.common.config import LedgerSettings
from services.common.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    LedgerError,
    NotFound,
    VersionConflict,
)
from services.common.reference import ReferenceData
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.common.storepool import bound_store
from services.ledger.domain.commands import (
    MAX_SHORT,
    Command,
    CreatingCommand,
    IncidentCommand,
    ReportIncident,
    Rules,
    check_text,
    checked,
    command_name,
)
from services.ledger.domain.incident import (
    Actor,
    DeviceRecord,
    Envelope,
    Incident,
    event_hash,
    incident_event_classes,
    require_writer,
)
from services.ledger.domain.requests import RequestRecord, request_fingerprint, request_key
from services.ledger.domain.times import TimeBounds
from services.ledger.seals import SealChecker, Sealer
from services.ledger.store import EventPositions
from services.ledger.writes import AggregateCache, GroupCommitter

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 30
LOCK_STRIPES = 256


@dataclass(frozen=True)
class CommandResult:
    incident_id: UUID
    version: int
    position: int
    event_id: UUID
    recorded_at: datetime


MAX_INGEST_REPORTS = 500
MAX_DEVICE_ID = 64


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


@dataclass(frozen=True)
class _ReadyReport:
    """A checked report of a batch (``index``): its incident's and its request record's
    events, ready to save, and what answers a retry of it."""

    index: int
    key: UUID
    request_id: str
    command: ReportIncident
    fingerprint: str
    incident: Incident
    reported: Incident.Event
    events: list[Any]


class SealingMapper(Mapper[UUID]):
    """The application's mapper, sealing each incident event as it is stored.

    Every write (a command's group commit, ``Application.save``) passes here, so no
    incident event reaches the store without its seal (see services/ledger/seals.py).
    """

    def __init__(self, base: Mapper[UUID], sealer: Sealer) -> None:
        super().__init__(base.transcoder, compressor=base.compressor, cipher=base.cipher)
        self._sealer = sealer

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if isinstance(domain_event, Incident.Event) and "seal" not in vars(domain_event):
            # The event object is frozen; the seal is not part of what its hash covers.
            object.__setattr__(domain_event, "seal", self._sealer.seal(event_hash(domain_event)))
        return super().to_stored_event(domain_event)


# What a stored event that no longer loads raises: bytes that do not decode, or a
# version missing from its incident's sequence (a deleted event).
BROKEN_HISTORY = (MapperDeserialisationError, OriginatorVersionError, TopicError)


def broken_history(incident_id: UUID | str, error: Exception) -> DataLoss:
    """The DATA_LOSS answer for an incident whose stored events no longer load."""
    return DataLoss(
        f"incident {incident_id} fails its hash chain: a stored event no longer loads "
        f"({type(error).__name__})",
        reason="HASH_CHAIN_BROKEN",
        metadata={"incident": f"incidents/{incident_id}", "check": "decode"},
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


def mutate_all(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's aggregate projector, without its runtime check of every event
    against a ``Protocol`` (an ``isinstance`` that cost a third of loading an incident)."""
    for event in events:
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
    ) -> None:
        # Before the base class builds the mapper, which seals with it.
        self.sealer = sealer
        self.seal_checker: SealChecker | None = sealer.checker if sealer else None
        # env: the store's settings (PERSISTENCE_MODULE, SQLITE_*, POSTGRES_*, ...), under
        # the name eventsourcing's Application gives them.
        super().__init__(env)
        self.reference = reference
        self.time_bounds = time_bounds or time_bounds_of(LedgerSettings())
        self._clock = clock
        self.positions = EventPositions(self.recorder)
        # Commands on the same incident queue here instead of racing inside this
        # process; across processes, optimistic concurrency (IntegrityError) decides.
        self._incident_topics = [get_topic(cls) for cls in incident_event_classes()]
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._cache = AggregateCache(cache_size)
        # Events are stored straight through the event store: Application.save()
        # would only add costly runtime protocol checks on this path.
        self._commit_listeners: list[Callable[[], None]] = []
        self._record_listeners: list[Callable[[Sequence[Recording[UUID]]], None]] = []
        self._committer = GroupCommitter(
            self.events.put, after_commit=self._committed, on_recorded=self._recorded
        )

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
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

    def add_record_listener(self, listener: Callable[[Sequence[Recording[UUID]]], None]) -> None:
        """Call ``listener`` (in the committing thread) with the events of each commit,
        once they are stored and before their commands answer."""
        self._record_listeners.append(listener)

    def _committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    def _recorded(self, recordings: Sequence[Recording[UUID]]) -> None:
        for listener in self._record_listeners:
            listener(recordings)

    def close(self) -> None:
        self._committer.close()
        super().close()

    # ------------------------------------------------------------- commands

    def execute(self, envelope: Envelope, command: Command) -> CommandResult:
        """Run one command: check its fields, apply its rule to the incident(s) and save,
        once per request id (AIP-155): a retry is answered as the original was."""
        command = checked(command, Rules(self.reference, self.time_bounds, self._clock))
        if isinstance(command, CreatingCommand):
            creating = command

            def create(_reload: bool) -> list[Incident]:
                return [creating.create(envelope)]

            return self._execute(envelope, command, None, 0, create)
        if not isinstance(command, IncidentCommand):
            raise TypeError(f"not a command the ledger runs: {command!r}")
        on_incident = command
        incident_id, expected = command.incident, command.expected_version
        others = command.other_incidents()

        def run(reload: bool) -> list[Incident]:
            incident = self._load_for_write(incident_id, expected, reload=reload)
            changed = [self._load_for_write(i, 0, reload=reload, field=f) for i, f in others]
            on_incident.apply(envelope, incident, *changed)
            return [incident, *changed]

        lock_ids = (incident_id, *(i for i, _ in others))
        return self._execute(envelope, command, incident_id, expected, run, lock_ids)

    def check_ahead(self, envelope: Envelope, command: Command) -> Command:
        """The checks :meth:`execute` makes before it acts, made ahead of it: for a command
        whose last fields are settled after a long transfer (``UploadEvidence``), so a
        request refused by its ids or texts is refused before the transfer starts."""
        self._check_request(envelope)
        return checked(command, Rules(self.reference, self.time_bounds, self._clock))

    def ingest(
        self,
        actor: Actor,
        items: Sequence[IngestItem | InvalidArgument],
        *,
        send_time: datetime | None = None,
    ) -> list[IngestResult]:
        """Record a field device's reports (``IngestReports``), each as ReportIncident
        records it and once per device report; one result per item, in order.

        ``items``: what the request's reports became, an item or the refusal of one that
        did not convert. Each report is checked as ReportIncident is and recorded with its
        request record (its key: :attr:`IngestItem.request_id`), so that a report sent
        again is answered from the record (DUPLICATE) and one with other content refused
        (CONFLICT), alike whether it came in a batch or alone. ``send_time``: the sender's
        clock when it sent the call; its difference to the ledger's on receipt is recorded
        as each report's clock skew. The reports are saved together (:meth:`_save_ready`).
        """
        if len(items) > MAX_INGEST_REPORTS:
            raise InvalidArgument(
                "reports", f"at most {MAX_INGEST_REPORTS} reports per call, got {len(items)}"
            )
        require_writer(actor, "IngestReports")
        received = self._clock()
        skew_ms = None
        if send_time is not None:
            skew_ms = round((send_time - received) / timedelta(milliseconds=1))
        rules = Rules(self.reference, self.time_bounds, self._clock)
        results: list[IngestResult | None] = [None] * len(items)
        ready: dict[UUID, _ReadyReport] = {}
        again: list[_ReadyReport] = []  # a report the batch holds twice: answered once saved
        for index, item in enumerate(items):
            if isinstance(item, InvalidArgument):
                results[index] = IngestResult(IngestOutcome.INVALID, error=item)
                continue
            try:
                report = self._ready_report(actor, index, item, skew_ms, rules)
            except InvalidArgument as error:
                results[index] = IngestResult(IngestOutcome.INVALID, error=error)
                continue
            if report.key in ready:
                again.append(report)
            else:
                ready[report.key] = report
        self._save_ready(list(ready.values()), results)
        for report in again:
            results[report.index] = self._answer_recorded(report)
        answered = [r for r in results if r is not None]
        if len(answered) != len(items):
            raise RuntimeError("a report of the batch was left without an answer")
        counts = Counter(r.outcome.value.lower() for r in answered)
        log.info("ingest.done", reports=len(items), skew_ms=skew_ms, **counts)
        return answered

    def _ready_report(
        self, actor: Actor, index: int, item: IngestItem, skew_ms: int | None, rules: Rules
    ) -> _ReadyReport:
        """The report checked (as ReportIncident is), its incident and request record made."""
        check_text("device_id", item.device_id, MAX_DEVICE_ID, required=True)
        request_id = item.request_id
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
        self._check_request(envelope)
        fingerprint = request_fingerprint(command, envelope.occurred_at)
        key = request_key(actor.agency, request_id)
        device = DeviceRecord(item.device_id, item.report_id, item.record_time, skew_ms)
        incident = command.create(envelope, device)
        record = RequestRecord.record(
            key,
            command=command_name(command),
            fingerprint=fingerprint,
            incident=f"{incident.id}@{incident.version}",
        )
        events = [*incident.collect_events(), *record.collect_events()]
        reported = events[0]
        if not isinstance(reported, Incident.Event):
            raise TypeError(f"unexpected event {reported!r}")
        return _ReadyReport(
            index, key, request_id, command, fingerprint, incident, reported, events
        )

    def _save_ready(self, reports: list[_ReadyReport], results: list[IngestResult | None]) -> None:
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
        try:
            recordings = self._committer.save([e for r in reports for e in r.events])
        except IntegrityError:
            unsettled = []
            for report in reports:
                answer = self._answer_recorded(report)
                if answer is None:
                    unsettled.append(report)
                else:
                    results[report.index] = answer
            if len(unsettled) < len(reports):
                self._save_ready(unsettled, results)
                return
            if len(reports) == 1:
                raise
            failure = "IntegrityError"
        except STORE_CONNECTION_ERRORS:
            raise
        except Exception as exc:  # halved below, down to the report that fails
            if len(reports) == 1:
                raise
            failure = type(exc).__name__
        else:
            positions = {r.domain_event.originator_id: r.notification.id for r in recordings}
            for report in reports:
                incident, event = report.incident, report.reported
                self._cache.put(incident.id, incident)
                result = CommandResult(
                    incident.id,
                    incident.version,
                    positions[incident.id],
                    event.event_id,
                    event.timestamp,
                )
                results[report.index] = IngestResult(IngestOutcome.CREATED, result)
            return
        log.warning("ingest.batch_failed", reports=len(reports), error_type=failure)
        half = len(reports) // 2
        self._save_ready(reports[:half], results)
        self._save_ready(reports[half:], results)

    def _answer_recorded(self, report: _ReadyReport) -> IngestResult | None:
        """DUPLICATE (with the original result) or CONFLICT when the report's request was
        recorded before; None when it was not."""
        try:
            original = self._original(
                report.key, report.request_id, report.command, report.fingerprint
            )
        except AlreadyExists as error:
            return IngestResult(IngestOutcome.CONFLICT, error=error)
        if original is None:
            return None
        return IngestResult(IngestOutcome.DUPLICATE, original)

    # -------------------------------------------------------------- queries

    def get_incident(self, incident_id: UUID) -> Incident:
        return self._load(incident_id)

    def get_incident_as_of(
        self, incident_id: UUID, *, position: int = 0, time: datetime | None = None
    ) -> Incident:
        """The incident as it stood at a global position and/or a record time."""
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
                metadata={"incident": f"incidents/{incident_id}"},
            )
        with self._loading(incident_id):
            incident: Incident = self.load_aggregate(incident_id, version)
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
    ) -> Iterator[StoredIncidentEvent]:
        """Incident events in log order after a position, read in batches (bounded memory)."""
        topics = self._incident_topics
        while True:
            rows = self.recorder.select_notifications(
                after, batch, stop=until, topics=topics, inclusive_of_start=False
            )
            if not rows:
                return
            for row in rows:
                with self._loading(row.originator_id):
                    event = self.mapper.to_domain_event(row)
                if isinstance(event, Incident.Event) and keep(event):
                    yield StoredIncidentEvent(event, row.id)
            after = rows[-1].id
            if until is not None and after >= until:
                return

    def incident_events(
        self, incident_id: UUID, *, after_version: int, limit: int
    ) -> list[StoredIncidentEvent]:
        """Events of one incident with their global positions, oldest first."""
        # The whole history is read and checked (chain and seal), so that no page serves
        # an event that was changed in the store; incidents hold tens of events.
        with self._loading(incident_id):
            history = list(self.events.get(incident_id))
            incident = mutate_all(None, history) if history else None
        if not isinstance(incident, Incident):
            raise NotFound(f"incident {incident_id} does not exist", reason="INCIDENT_NOT_FOUND")
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
                        recordings = self._committer.save(
                            [e for a in (*aggregates, record) for e in a.collect_events()]
                        )
                    except BaseException:
                        for incident_id_ in lock_ids:
                            self._cache.drop(incident_id_)
                        raise
                    for aggregate in aggregates:
                        self._cache.put(aggregate.id, aggregate)
            except IntegrityError:
                original = self._original(key, envelope.request_id, checked_command, fingerprint)
                if original is not None:
                    return original
                if expected and incident_id is not None:
                    current = self._load(incident_id).version
                    if current != expected:
                        raise VersionConflict(expected, current) from None
                log.debug("command.conflict_retry", command=command, attempt=attempt)
                reload = True
                # Jittered exponential backoff: another process won the race.
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))  # noqa: S311
                continue
            except LedgerError:
                original = self._original(key, envelope.request_id, checked_command, fingerprint)
                if original is not None:
                    return original
                if not reload and lock_ids:
                    reload = True  # the refusal may come from a stale cached state
                    continue
                raise
            position = max(
                r.notification.id for r in recordings if r.domain_event.originator_id == primary.id
            )
            return CommandResult(
                incident_id=primary.id,
                version=primary.version,
                position=position,
                event_id=last_event.event_id,
                recorded_at=last_event.timestamp,
            )
        raise Aborted(
            f"{command} lost {MAX_CONFLICT_RETRIES} races for the incident; retry later",
            reason="TOO_MUCH_CONTENTION",
        )

    def _check_request(self, envelope: Envelope, expected: int = 0) -> None:
        """The checks of what every command carries beside its fields: its ids, the
        expected version, the time it says it happened."""
        if not envelope.request_id:
            raise InvalidArgument("request_id", "is required (AIP-155)")
        check_text("request_id", envelope.request_id, MAX_SHORT)
        check_text("correlation_id", envelope.correlation_id, MAX_SHORT)
        if expected < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        if envelope.occurred_at is not None:
            self.time_bounds.check_occurred("occur_time", envelope.occurred_at, self._clock())

    def _original(
        self, key: UUID, request_id: str, command: Command, fingerprint: str
    ) -> CommandResult | None:
        """The result of an earlier command with this request id, if there was one."""
        try:
            record: RequestRecord = self.load_aggregate(key)
        except AggregateNotFoundError:
            return None
        if (
            record.command != command_name(command)
            or record.fingerprint != fingerprint
            or not command.could_have_recorded(record.incident_id, record.incident_version)
        ):
            raise AlreadyExists(
                f"request_id {request_id!r} was already used by this agency for a "
                f"different request ({record.command})",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "original_command": record.command},
            )
        incident_id, version = record.incident_id, record.incident_version
        with self._loading(incident_id):
            found = list(self.events.get(incident_id, gt=version - 1, lte=version))
        if not found:
            raise broken_history(incident_id, LookupError(f"version {version} is missing"))
        event = found[0]
        if not isinstance(event, Incident.Event):
            raise TypeError(f"unexpected event {event!r}")
        return CommandResult(
            incident_id=incident_id,
            version=version,
            position=self.positions.of(incident_id, gt=version - 1, lte=version).get(version, 0),
            event_id=event.event_id,
            recorded_at=event.timestamp,
        )

    def _load_for_write(
        self, incident_id: UUID, expected: int, *, reload: bool, field: str = "name"
    ) -> Incident:
        """The incident to change: the cached state, unless ``reload`` (from the store) or
        not cached."""
        cached = None if reload else self._cache.get(incident_id)
        incident = cached if isinstance(cached, Incident) else self._load(incident_id, field)
        if expected and incident.version != expected:
            raise VersionConflict(expected, incident.version)
        return incident

    def load_aggregate(self, aggregate_id: UUID, version: int | None = None) -> Any:
        """An aggregate from its stored events (up to ``version``): ``repository.get``
        with a cheaper projector."""
        return self.repository.get(aggregate_id, version=version, projector_func=mutate_all)

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

    def check_seal(self, incident: Incident) -> None:
        """DATA_LOSS unless the incident's newest event carries the ledger's seal over its
        hash: whoever changed it in the store could not have re-sealed it."""
        if self.seal_checker is None:
            return
        problem = self.seal_checker.problem(incident.head_hash, incident.head_seal)
        if problem is None:
            return
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

    def _load(self, incident_id: UUID, field: str = "name") -> Incident:
        try:
            with self._loading(incident_id):
                incident: Incident = self.load_aggregate(incident_id)
        except AggregateNotFoundError:
            raise NotFound(
                f"incident {incident_id} does not exist",
                reason="INCIDENT_NOT_FOUND",
                metadata={"incident": f"incidents/{incident_id}", "field": field},
            ) from None
        if not isinstance(incident, Incident):
            raise NotFound(f"incident {incident_id} does not exist", reason="INCIDENT_NOT_FOUND")
        self.check_seal(incident)
        return incident
