"""Wiring: builds the ledger's parts from settings and serves them over gRPC."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import grpc
import structlog
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic
from grpc_health.v1 import health, health_pb2

from incidentledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    evidence_service_pb2,
    evidence_service_pb2_grpc,
    ledger_service_pb2,
    ledger_service_pb2_grpc,
    situation_service_pb2,
    situation_service_pb2_grpc,
)
from services.common.auth import TokenStore, load_or_create_tokens, shared_secret
from services.common.config import ConfigError, LedgerSettings
from services.common.datafiles import close_data_dir, prepare_sqlite_file
from services.common.errors import SigningKeyRetired
from services.common.grpc_server import RequestInterceptor
from services.common.heap import freeze_after_start
from services.common.limits import Limits
from services.common.metrics import Metrics, shared_reading
from services.common.pagetoken import PageTokens
from services.common.reference import ReferenceData
from services.common.serving import Readiness, add_health_and_reflection, listen, new_server
from services.common.sql import (
    Database,
    StoreWatch,
    creates_tables,
    is_postgres,
    open_database,
    schema_lock,
    watch_store,
)
from services.common.stopping import close_step
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.common.store_format import LEDGER_FORMAT, check_format, record_format
from services.ledger.api.audit_servicer import AuditServicer
from services.ledger.api.evidence_servicer import EvidenceServicer
from services.ledger.api.servicer import MAX_PAGE_BYTES, LedgerServicer
from services.ledger.api.situation_servicer import SituationServicer
from services.ledger.application import ERASURE_SETTLE, IngestLimits, Ledger, time_bounds_of
from services.ledger.audit import Checkpoint, CheckpointError, Checkpoints, load_signing_key
from services.ledger.audit.encoding import RawDecoder
from services.ledger.audit.evidence_check import verify_evidence
from services.ledger.audit.keys import load_retired_keys
from services.ledger.audit.recorded import RecordedEvents
from services.ledger.domain.evidence import EvidencePolicy
from services.ledger.domain.incident import incident_event_classes
from services.ledger.evidence import EvidenceService, clear_spool, create_downloads_table
from services.ledger.evidence_store import EvidenceObjects
from services.ledger.evidence_sweep import EvidenceSweeper
from services.ledger.intake import IntakeProcess, IntakeSetup
from services.ledger.key_watch import RetiredKeyWatch
from services.ledger.personal_keys import SQLITE_PRAGMAS, PersonalKeys, load_key_ring
from services.ledger.projections import Projections
from services.ledger.read_model import ReadModel
from services.ledger.relay import Relay, create_position_table
from services.ledger.relay_process import RelayProcess, relay_runs_apart
from services.ledger.seals import Sealer

log = structlog.get_logger(__name__)

SERVICE_NAME = ledger_service_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
SERVICES = [
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (ledger_service_pb2, "LedgerService"),
        (situation_service_pb2, "SituationService"),
        (audit_service_pb2, "AuditService"),
        (evidence_service_pb2, "EvidenceService"),
    )
]
ERROR_DOMAIN = "ledger.incidentledger"
RELAY_HEALTH = "relay"
#: How long a stop waits, once the grace period is over and the evidence calls were ended,
#: for their answers to go out before gRPC cancels every call still open.
CUT_SECONDS = 1.0
# NOT_SERVING while the relay's session found messages on the stream the store does not
# vouch for (foreign messages); "relay" stays SERVING, since publishing goes on.
RELAY_STREAM_HEALTH = "relay.stream"
# A part of the ledger's readiness: unavailable for good once the store records this
# replica's signing key as retired (services/ledger/key_watch.py).
SIGNING_KEY_PART = "signing_key"


def load_tokens(settings: LedgerSettings, reference: ReferenceData) -> TokenStore:
    """The token store; development credentials are generated on a first development start."""
    return load_or_create_tokens(
        settings.resolved_tokens_file,
        reference.agencies,
        may_generate=not settings.production and settings.tokens_file is None,
        production=settings.production,
    )


def open_personal_keys(settings: LedgerSettings, *, create: bool) -> PersonalKeys:
    """The key table of personal data, opened with the configured key-encryption keys:
    a wrong or missing key stops the start here (ConfigError), not at the first read."""
    ring = load_key_ring(
        keys=settings.personal_data_keys,
        key_dir=settings.key_dir,
        production=settings.production,
        variable=settings.personal_data_keys_variable,
    )
    db = open_database(settings.store_env, connections=4, sqlite_pragmas=SQLITE_PRAGMAS)
    try:
        keys = PersonalKeys(db, ring, create=create)
        keys.rewrap()  # rows of a former key-encryption key move under the current one
    except BaseException:
        db.close()
        raise
    return keys


def page_token_secret(settings: LedgerSettings) -> bytes:
    if settings.page_token_secret is not None:
        return settings.page_token_secret
    return shared_secret(settings.data_dir / "page-token.secret")


class PersonalDataUpkeep:
    """At start and then every ``interval`` seconds, in a thread of its own: the sweep of
    keys written for reports never saved (``LEDGER_PERSONAL_DATA_SWEEP_GRACE_SECONDS``),
    the keys of people erased found in the key table again (a restored backup, an erasure
    cut off by a crash: :meth:`Ledger.destroy_keys_of_erased`, the whole log at start, then
    what was recorded since), the retention rule of personal data
    (``LEDGER_PERSONAL_DATA_RETENTION_DAYS``, when set), and the scrub of destroyed keys
    from the store's files (done after each erasure; here again in case the store was too
    busy then). Every replica may run them: an erasure is recorded once (its request id
    names the incident), a key is deleted only once its report is known unsaved, and
    destroying a key again is idempotent."""

    def __init__(
        self,
        ledger: Ledger,
        days: float,
        grace_seconds: float,
        interval: float = 3600.0,
        settle: timedelta = ERASURE_SETTLE,
    ) -> None:
        self._ledger = ledger
        self._settle = settle
        self._retention = timedelta(days=days) if days > 0 else None
        self._grace = timedelta(seconds=grace_seconds)
        self._interval = interval
        #: The log's position up to which erasures were checked for keys found again.
        self._erasures_checked = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="personal-data", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # The first pass at start leaves erasures younger than a minute (their requests may
        # still be destroying keys): an erasure recorded just before a crash is one, and
        # its keys, restored or never destroyed, were left for the hour. So a second pass
        # once that minute is over, then hourly.
        wait = min(self._interval, self._settle.total_seconds() + 1)
        while not self._stopping.is_set():
            try:
                self._ledger.delete_unsaved_personal_keys(self._grace)
                self._erasures_checked, _ = self._ledger.destroy_keys_of_erased(
                    self._erasures_checked, settle=self._settle
                )
                if self._retention is not None:
                    self._ledger.erase_expired_personal_data(self._retention)
                self._ledger.scrub_personal_keys()
            except STORE_CONNECTION_ERRORS as exc:  # the store is away: the next run retries
                log.warning("personal_data.upkeep_failed", error=f"{type(exc).__name__}")
            except SigningKeyRetired:  # an erasure is an event; the key watch says what to do
                log.info("personal_data.upkeep_skipped", reason="SIGNING_KEY_RETIRED")
            self._stopping.wait(wait)
            wait = self._interval

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@dataclass
class LedgerServer:
    """A running ledger: the gRPC server and the parts behind it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    ledger: Ledger
    projections: Projections
    checkpoints: Checkpoints
    relay: Relay | RelayProcess | None
    metrics: Metrics
    stopped: threading.Event
    store_watch: StoreWatch | None = None
    key_watch: RetiredKeyWatch | None = None
    personal_data: PersonalDataUpkeep | None = None
    evidence_objects: EvidenceObjects | None = None
    evidence_db: Database | None = None
    evidence_sweeper: EvidenceSweeper | None = None
    intake: IntakeProcess | None = None

    def stop(self, grace: float) -> None:
        """Graceful shutdown: NOT_SERVING first, then drain in-flight calls, then close.

        A step that fails (NATS resetting the relay's connection) is logged and the
        others still run: the process exits either way.
        """
        self.health.enter_graceful_shutdown()
        close_step("ledger", "grpc", lambda: self._stop_serving(grace))
        if self.personal_data is not None:
            close_step("ledger", "personal_data", self.personal_data.stop)
        if self.store_watch is not None:
            close_step("ledger", "store_watch", self.store_watch.stop)
        if self.key_watch is not None:
            close_step("ledger", "key_watch", self.key_watch.stop)
        close_step("ledger", "checkpoints", self.checkpoints.close)
        close_step("ledger", "metrics", self.metrics.close)
        if self.relay is not None:
            close_step("ledger", "relay", self.relay.stop)
        # The sweep's run under way may be waiting for NATS (its first connection, up to
        # 10 s while NATS is away: a stop took 10 s so); closing the evidence store ends
        # that wait, so the store closes before the sweep's thread is waited for.
        if self.evidence_sweeper is not None:
            self.evidence_sweeper.halt()
        if self.evidence_objects is not None:
            close_step("ledger", "evidence", self.evidence_objects.close)
        if self.evidence_sweeper is not None:
            close_step("ledger", "evidence_sweep", self.evidence_sweeper.stop)
        if self.evidence_db is not None:
            close_step("ledger", "evidence_db", self.evidence_db.close)
        if self.intake is not None:
            close_step("ledger", "intake", self.intake.close)
        close_step("ledger", "projections", self.projections.close)
        close_step("ledger", "store", self.ledger.close)
        if self.ledger.personal_keys is not None:
            close_step("ledger", "personal_keys", self.ledger.personal_keys.close)
        self.stopped.set()

    def _stop_serving(self, grace: float) -> None:
        """No new calls; those under way get ``grace`` seconds to end. Then the evidence
        calls still going are ended with their own answer (UNAVAILABLE, the ledger is
        stopping: an upload sent again is taken again), and only after that does gRPC
        cancel what is left. gRPC's cancellation first ended an upload's stream as if the
        file were complete: the upload was refused as the caller's fault (its declared
        size not reached), or stored cut short, while its caller got a bare cancellation."""
        # gRPC's own cancellation a little after the grace period: a backstop, should the
        # evidence calls not be ended by then.
        drained = self.server.stop(grace + CUT_SECONDS)
        if drained.wait(grace):
            return
        if self.evidence_objects is not None:
            self.evidence_objects.cut()
            drained.wait(CUT_SECONDS)
        self.server.stop(0).wait(1)


def _rotate_key(probe: Checkpoints, ledger: Ledger) -> Checkpoint | None:
    """The start-up's key check, and the rotation to a new key when the store was last
    signed with a retired one (recorded in the log through ``ledger`` when it has nothing
    new to sign). A rotation that cannot sign (the store disagrees with its own seals) is a
    refusal to start, naming why: nothing is sealed with the new key."""
    try:
        return probe.rotate_key(ledger.record_key_rotation)
    except CheckpointError as exc:
        raise ConfigError(f"cannot rotate to signing key {probe.key_id}: {exc}") from exc


def prepare_store(settings: LedgerSettings) -> None:
    """The data directory private to the service's user, and the embedded store's file in it
    (mode 0600; see services/common/datafiles.py)."""
    close_data_dir(settings.data_dir)
    prepare_sqlite_file(settings.store_env.get("SQLITE_DBNAME", ""))


def check_store_format(store_env: Mapping[str, str], *, record: bool) -> None:
    """Stop (StoreTooNewError) on a store a later version migrated, before anything reads
    or writes it; with ``record``, note that this version's tables are made there."""
    db = open_database(store_env)
    try:
        check_format(db, "ledger", LEDGER_FORMAT)
        if record:
            record_format(db, "ledger", LEDGER_FORMAT)
    finally:
        db.close()


def build(settings: LedgerSettings) -> LedgerServer:
    reference = ReferenceData.load(settings.reference_file)
    prepare_store(settings)
    # On PostgreSQL the tables (and this record) are made by migrate, under its lock.
    check_store_format(
        settings.store_env,
        record=creates_tables(settings.store_env) and not is_postgres(settings.store_env),
    )
    tokens = load_tokens(settings, reference)
    if creates_tables(settings.store_env) and is_postgres(settings.store_env):
        # Replicas starting together take turns creating the tables, as `migrate` does;
        # then each starts as on tables made beforehand.
        migrate(settings)
        settings = replace(settings, store_env={**settings.store_env, "CREATE_TABLE": "n"})
    signing_key = load_signing_key(settings.audit())
    retired_keys = load_retired_keys(settings.audit())
    create = creates_tables(settings.store_env)
    personal_keys = open_personal_keys(settings, create=create)
    ledger = Ledger(
        reference,
        env=settings.store_env,
        cache_size=settings.cache_size,
        sealer=Sealer(signing_key, retired_keys),
        time_bounds=time_bounds_of(settings),
        ingest_limits=IngestLimits.of(settings),
        personal_keys=personal_keys,
        triage_max_items=settings.triage_max_items,
        snapshot_interval=settings.snapshot_interval,
    )
    # Before anything starts: a replica with another signing key would seal with it, and
    # one with a new key rotates to it (docs/operations.md) before it seals anything.
    probe = Checkpoints(
        ledger.recorder, settings.store_env, signing_key, create_table=create, retired=retired_keys
    )
    try:
        rotated = _rotate_key(probe, ledger)
        ledger.bound_retired_seals(probe.retired_positions())
        if probe.records_retirements():
            ledger.guard_commits()
    except BaseException:
        # A refusal to start (another key, a retired one) closes what is open: a process
        # exits anyway, but a ledger built in-process (the tests') kept its pool's
        # connections, 10-15 a refusal on PostgreSQL, until the server ran out of them.
        ledger.close()
        personal_keys.close()
        raise
    finally:
        probe.close()
    intake = None
    if settings.ingest_process:
        intake = IntakeProcess(
            IntakeSetup(
                reference,
                ledger.time_bounds,
                ledger.sealer,
                personal_keys.sealer,
                settings.store_env,
                settings.log_level,
                settings.log_format,
            )
        )
        ledger.use_intake(intake)
    projections = Projections(ledger, settings.store_env, reference, create=create)
    ledger.add_commit_listener(projections.wake)
    projections.start()
    metrics = Metrics("ledger")
    server = new_server(
        max_workers=settings.max_workers,
        max_message_bytes=settings.max_message_bytes,
        interceptor=RequestInterceptor(tokens, ERROR_DOMAIN, metrics, Limits(settings.limits)),
    )
    health_servicer = add_health_and_reflection(server, SERVICES)
    relay = start_relay(settings, ledger, health_servicer)
    # What this replica records, found as written before each periodic checkpoint signs it.
    recorded = RecordedEvents(RawDecoder().topics) if settings.checkpoint_seconds > 0 else None
    if recorded is not None:
        ledger.add_record_listener(recorded.add)
    checkpoints = Checkpoints(
        ledger.recorder,
        settings.store_env,
        signing_key,
        retired=retired_keys,
        recorded=recorded,
        interval_seconds=settings.checkpoint_seconds,
        on_checkpoint=(
            (lambda c: relay.publish_checkpoint(c.position, c.to_bytes())) if relay else None
        ),
        create_table=create,
    )
    register_metrics(metrics, ledger, projections, relay, checkpoints)
    metrics_port = metrics.serve(settings.metrics_listen) if settings.metrics_listen else 0
    page_tokens = PageTokens(page_token_secret(settings))
    read_model = ReadModel(ledger, projections)
    ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(
            ledger,
            read_model,
            page_tokens,
            error_domain=ERROR_DOMAIN,
            # Within what the server sends (4 times the largest request it takes).
            max_page_bytes=min(MAX_PAGE_BYTES, 2 * settings.max_message_bytes),
        ),
        server,
    )
    situation_service_pb2_grpc.add_SituationServiceServicer_to_server(
        SituationServicer(
            read_model,
            page_tokens,
            max_page_bytes=min(MAX_PAGE_BYTES, 2 * settings.max_message_bytes),
        ),
        server,
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(ledger, checkpoints, page_tokens), server
    )
    evidence_objects, evidence_db, evidence = build_evidence(settings, ledger, create)
    evidence_service_pb2_grpc.add_EvidenceServiceServicer_to_server(
        EvidenceServicer(
            evidence,
            reference,
            page_tokens,
            (lambda: verify_evidence(ledger, evidence_objects.read_into))
            if evidence_objects is not None
            else None,
        ),
        server,
    )
    if rotated is not None and relay is not None:  # the witnesses keep the rotation's too
        relay.publish_checkpoint(rotated.position, rotated.to_bytes())
    checkpoints.seal_earlier_history()
    unsealed = checkpoints.unsealed_history()
    ledger.bound_unsealed_history(unsealed.heads)
    if unsealed.until:
        log.info(
            "ledger.unsealed_history",
            position=unsealed.until,
            incidents=len(unsealed.heads),
            note="incidents last changed before seals existed load under the checkpoint",
        )
    port = listen(server, settings.listen, settings)
    server.start()
    readiness = Readiness(health_servicer, SERVICES)
    readiness.serve()
    # On PostgreSQL, NOT_SERVING while the store does not answer, SERVING again once it does.
    store_watch = watch_store(
        settings.store_env,
        settings.store_check_seconds,
        lambda available: readiness.set("store", available),
    )
    checkpoints.start()
    key_watch = watch_signing_key(settings, ledger, checkpoints, readiness)
    personal_data = PersonalDataUpkeep(
        ledger,
        settings.personal_data_retention_days,
        settings.personal_data_sweep_grace_seconds,
    )
    personal_data.start()
    evidence_sweeper = None
    if evidence_objects is not None:
        # Every replica sweeps; services/ledger/evidence_store.py says why that is safe.
        evidence_sweeper = EvidenceSweeper(ledger, evidence_objects, settings.evidence, metrics)
        evidence_sweeper.start()
    freeze_after_start("ledger")
    log.info(
        "ledger.started",
        listen=settings.listen,
        port=port,
        metrics_port=metrics_port or None,
        store=settings.store_env.get("PERSISTENCE_MODULE"),
        regency=reference.regency,
        environment=settings.environment,
    )
    return LedgerServer(
        server,
        port,
        health_servicer,
        ledger,
        projections,
        checkpoints,
        relay,
        metrics,
        threading.Event(),
        store_watch,
        key_watch,
        personal_data,
        evidence_objects,
        evidence_db,
        evidence_sweeper,
        intake,
    )


def watch_signing_key(
    settings: LedgerSettings, ledger: Ledger, checkpoints: Checkpoints, readiness: Readiness
) -> RetiredKeyWatch:
    """Every ``LEDGER_STORE_CHECK_SECONDS``, on every store: has another replica's rotation
    retired this replica's signing key? Then it records and signs nothing more, and its
    health turns NOT_SERVING for good (a restart with the current key brings it back)."""

    def on_retired(refusal: SigningKeyRetired) -> None:
        ledger.stop_sealing(refusal)
        readiness.set(SIGNING_KEY_PART, False)
        checkpoints.stop()  # it would only fail, every interval, for the same reason

    watch = RetiredKeyWatch(
        checkpoints.key_id,
        lambda: checkpoints.retirement(checkpoints.key_id),
        settings.store_check_seconds,
        on_retired,
    )
    ledger.add_key_retired_listener(watch.wake)  # a commit refused: health follows at once
    watch.start()
    return watch


def build_evidence(
    settings: LedgerSettings, ledger: Ledger, create: bool
) -> tuple[EvidenceObjects | None, Database | None, EvidenceService | None]:
    """Evidence, when the ledger has NATS (its object store): the bucket's client, the
    table of downloads, and the service; None without NATS (the RPCs answer UNAVAILABLE)."""
    if not settings.relay.nats_url:
        log.info("evidence.disabled", reason="NATS_URL is not set")
        return None, None, None
    spool = settings.data_dir / "evidence-spool"
    clear_spool(spool)
    db = open_database(settings.store_env)
    if create:
        create_downloads_table(db)
    objects = EvidenceObjects(settings.relay.nats_url, settings.relay.nats, settings.evidence)
    policy = EvidencePolicy(settings.evidence.media_types, settings.evidence.max_bytes)
    return objects, db, EvidenceService(ledger, objects, policy, spool, db)


def register_metrics(
    metrics: Metrics,
    ledger: Ledger,
    projections: Projections,
    relay: Relay | RelayProcess | None,
    checkpoints: Checkpoints,
) -> None:
    """Events appended (counted as they are committed); positions, lags, refused
    checkpoints and the relay's state (read at each scrape). docs/operations.md,
    "Metrics", lists them all."""
    appended = metrics.counter(
        "ledger_events_appended", "incident events appended to the ledger, by type", ["type"]
    )

    # The event's type by its stored topic: a field device's reports reach the commit
    # mapped, without their domain events.
    incident_types = {get_topic(cls): cls.__name__ for cls in incident_event_classes()}

    def count_appended(recordings: Sequence[Notification]) -> None:
        types = Counter(incident_types[r.topic] for r in recordings if r.topic in incident_types)
        for name, count in types.items():
            appended.labels(name).inc(count)

    ledger.add_record_listener(count_appended)

    def ledger_position() -> float:
        return float(ledger.recorder.max_notification_id() or 0)

    # Values from the store are read in the background: a scrape never waits for it.
    metrics.stored_gauge("ledger_position", "the last recorded position", ledger_position)
    metrics.stored_gauge(
        "ledger_projection_position",
        "the position the projections have applied",
        lambda: float(projections.position()),
    )
    projection_lag = shared_reading(projections.lag)  # read once for both gauges
    metrics.stored_gauge(
        "ledger_projection_lag_events",
        "recorded events the projections have not applied",
        lambda: float(projection_lag().events),
    )
    metrics.stored_gauge(
        "ledger_projection_lag_seconds",
        "age of the oldest event the projections have not applied",
        lambda: projection_lag().seconds,
    )
    metrics.counter_reading(
        "ledger_checkpoints_refused",
        "checkpoints this replica refused to sign since the process started",
        lambda: float(checkpoints.refused),
    )
    if relay is None:
        return
    status = relay.status

    relay_lag = shared_reading(relay.lag)  # a COUNT over the backlog: once for both gauges

    metrics.gauge(
        "ledger_relay_position",
        "the last position this relay published to NATS",
        lambda: float(status.position),
    )
    metrics.stored_gauge(
        "ledger_relay_lag_events",
        "incident events recorded but not yet published (leading replica only)",
        lambda: None if (lag := relay_lag()) is None else float(lag.events),
    )
    metrics.stored_gauge(
        "ledger_relay_lag_seconds",
        "age of the oldest incident event not yet published (leading replica only)",
        lambda: None if (lag := relay_lag()) is None else lag.seconds,
    )
    metrics.gauge(
        "ledger_relay_leader",
        "1 while this replica's relay holds the publishing lock",
        lambda: 1.0 if status.leader else 0.0,
    )
    metrics.gauge(
        "ledger_relay_connected",
        "1 while this replica's relay is connected to NATS (only the leader connects)",
        lambda: 1.0 if status.connected else 0.0,
    )
    metrics.counter_reading(
        "ledger_relay_published",
        "events this relay published to NATS since the process started",
        lambda: float(status.published),
    )
    metrics.counter_reading(
        "ledger_relay_foreign_messages",
        "messages on the stream the store does not vouch for (foreign), found since start",
        lambda: float(status.foreign_messages),
    )
    metrics.gauge(
        "ledger_relay_stream_foreign",
        "foreign messages this relay's current session found on the stream (0: none)",
        lambda: float(status.stream_foreign),
    )


def start_relay(
    settings: LedgerSettings, ledger: Ledger, health_servicer: health.HealthServicer
) -> Relay | RelayProcess | None:
    """The outbox relay to NATS, when NATS_URL is set; its health is the service "relay".
    In a process of its own (services/ledger/relay_process.py says why), but with a store
    in this process's memory."""
    if not settings.relay.nats_url:
        log.info("relay.disabled", reason="NATS_URL is not set")
        return None

    def on_health(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        health_servicer.set(RELAY_HEALTH, status)

    def on_stream_check(trusted: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if trusted
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        health_servicer.set(RELAY_STREAM_HEALTH, status)

    on_health(False)
    on_stream_check(True)  # nothing found yet
    relay: Relay | RelayProcess
    if relay_runs_apart(settings.store_env):
        relay = RelayProcess(ledger, settings, on_health, on_stream_check)
    else:
        relay = Relay(ledger, settings.relay, settings.store_env, on_health, on_stream_check)
    ledger.add_commit_listener(relay.wake)
    relay.start()
    return relay


def migrate(settings: LedgerSettings) -> None:
    """Create the store's tables once, before any replica starts.

    Safe to run again (every table is created only if missing) and concurrently: on
    PostgreSQL the schema lock makes concurrent runs take turns.
    """
    reference = ReferenceData.load(settings.reference_file)
    signing_key = load_signing_key(settings.audit())
    prepare_store(settings)
    store_env = {**settings.store_env, "CREATE_TABLE": "y"}
    with schema_lock(store_env):
        check_store_format(store_env, record=True)
        ledger = Ledger(reference, env=store_env)
        try:
            Projections(ledger, store_env, reference, create=True).close()
            Checkpoints(ledger.recorder, store_env, signing_key, create_table=True).close()
            db = open_database(store_env)
            try:
                create_position_table(db)
                create_downloads_table(db)
            finally:
                db.close()
            open_personal_keys(replace(settings, store_env=store_env), create=True).close()
        finally:
            ledger.close()
    log.info("ledger.migrated", store=store_env.get("PERSISTENCE_MODULE"))
