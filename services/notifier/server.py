"""Wiring: builds the notifier's parts from settings and serves them over gRPC."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health

from incidentledger.v1 import notifier_service_pb2, notifier_service_pb2_grpc
from services.common.auth import load_or_create_tokens, shared_secret
from services.common.config import NotifierSettings
from services.common.datafiles import close_data_dir, prepare_sqlite_file
from services.common.grpc_server import RequestInterceptor
from services.common.heap import freeze_after_start
from services.common.limits import Limits
from services.common.metrics import Metrics, shared_reading
from services.common.natsconn import redact_url
from services.common.pagetoken import PageTokens
from services.common.reference import ReferenceData
from services.common.serving import Readiness, add_health_and_reflection, listen, new_server
from services.common.sql import StoreWatch, open_database, schema_lock, watch_store
from services.common.stopping import close_step
from services.notifier.engine import Engine
from services.notifier.sealing import load_secret_box
from services.notifier.servicer import NotifierServicer
from services.notifier.store import DeliveryLog, NotifierStore
from services.notifier.targets import TargetPolicy
from services.notifier.webhooks import WebhookRegistry

log = structlog.get_logger(__name__)

SERVICE_NAME = notifier_service_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name
ERROR_DOMAIN = "notifier.incidentledger"


@dataclass
class NotifierServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    engine: Engine
    store: NotifierStore
    deliveries: DeliveryLog
    metrics: Metrics
    stopped: threading.Event
    store_watch: StoreWatch | None = None

    def stop(self, grace: float) -> None:
        """Graceful shutdown: NOT_SERVING, end the streams, stop consuming, close.

        A step that fails (NATS resetting the connection while it is closed) is logged
        and the others still run: the process exits either way.
        """
        self.health.enter_graceful_shutdown()
        self.engine.begin_shutdown()
        close_step("notifier", "grpc", lambda: self.server.stop(grace).wait(grace + 1))
        if self.store_watch is not None:
            close_step("notifier", "store_watch", self.store_watch.stop)
        close_step("notifier", "engine", self.engine.stop)
        close_step("notifier", "deliveries", self.deliveries.close)
        close_step("notifier", "metrics", self.metrics.close)
        close_step("notifier", "store", self.store.close)
        self.stopped.set()


def build(settings: NotifierSettings) -> NotifierServer:
    close_data_dir(settings.data_dir)
    dbname = settings.store_env.get("SQLITE_DBNAME", "")
    prepare_sqlite_file(dbname)  # first, before other files are made in its directory
    if dbname and dbname != ":memory:" and not dbname.startswith("file:"):
        use_wal(dbname)
    reference = ReferenceData.load(settings.reference_file)
    tokens = load_or_create_tokens(
        settings.resolved_tokens_file,
        reference.agencies,
        may_generate=not settings.production and settings.tokens_file is None,
        production=settings.production,
    )
    secret = settings.page_token_secret or shared_secret(settings.data_dir / "page-token.secret")
    store = NotifierStore(open_database(settings.store_env), load_secret_box(settings))
    with schema_lock(settings.store_env):  # replicas starting together take turns
        store.create_schema()
    metrics = Metrics("notifier")
    deliveries_counter = metrics.counter(
        "notifier_deliveries",
        "deliveries by channel (webhook, grpc) and outcome (delivered, failed, dead_letter)",
        ["channel", "outcome"],
        known=[
            ("webhook", "delivered"),
            ("webhook", "failed"),
            ("webhook", "dead_letter"),
            ("grpc", "delivered"),
        ],
    )
    server = new_server(
        max_workers=settings.max_workers,
        max_message_bytes=settings.max_message_bytes,
        interceptor=RequestInterceptor(tokens, ERROR_DOMAIN, metrics, Limits(settings.limits)),
    )
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    # SERVING only while the notifier can deliver: connected to NATS, and its store (on
    # PostgreSQL) answering. A load balancer sends callers elsewhere meanwhile.
    readiness = Readiness(health_servicer, [SERVICE_NAME], parts=("nats",))
    engine = Engine(
        settings,
        store,
        reference,
        count_delivery=lambda channel, outcome: deliveries_counter.labels(channel, outcome).inc(),
        on_nats_change=lambda connected: readiness.set("nats", connected),
    )
    engine.start()
    register_metrics(metrics, engine, store)
    metrics_port = metrics.serve(settings.metrics_listen) if settings.metrics_listen else 0
    deliveries = DeliveryLog(store)
    notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server(
        NotifierServicer(
            engine,
            store,
            reference,
            PageTokens(secret),
            deliveries,
            WebhookRegistry(
                store,
                reference,
                TargetPolicy(settings.webhooks.allow_networks),
                changed=engine.webhooks_changed,
            ),
        ),
        server,
    )
    port = listen(server, settings.listen, settings)
    server.start()
    readiness.serve()
    store_watch = watch_store(
        settings.store_env,
        settings.store_check_seconds,
        lambda available: readiness.set("store", available),
    )
    freeze_after_start("notifier")
    log.info(
        "notifier.started",
        listen=settings.listen,
        port=port,
        metrics_port=metrics_port or None,
        nats=redact_url(settings.nats_url),
        stream=settings.stream.name,
        consumer=settings.consumer,
    )
    return NotifierServer(
        server,
        port,
        health_servicer,
        engine,
        store,
        deliveries,
        metrics,
        threading.Event(),
        store_watch,
    )


def use_wal(dbname: str) -> None:
    """Put the notifier's SQLite file in WAL mode (it stays so; synchronous stays FULL, so
    a commit is still on disk when it returns). Two commits stand between an event and its
    webhook POST (the job, its claim): measured here, a commit took 3.6 ms median and 32 ms
    at p90 with the default rollback journal, 0.3 and 1.4 ms in WAL mode."""
    with closing(sqlite3.connect(dbname, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def register_metrics(metrics: Metrics, engine: Engine, store: NotifierStore) -> None:
    """The notifier's state, read at each scrape or, from its store, every second in the
    background (docs/operations.md, "Metrics", lists them all)."""
    status = engine.status

    def while_connected(value: int | None) -> float | None:
        return float(value) if status.nats_connected and value is not None else None

    metrics.gauge(
        "notifier_nats_connected",
        "1 while the notifier is connected to NATS",
        lambda: 1.0 if status.nats_connected else 0.0,
    )
    metrics.gauge(
        "notifier_consumer_pending_events",
        "stream messages the durable consumer has not yet received (read every 5 s)",
        lambda: while_connected(status.consumer_pending),
    )
    metrics.gauge(
        "notifier_consumer_ack_pending_events",
        "messages the durable consumer received but has not yet acknowledged",
        lambda: while_connected(status.consumer_ack_pending),
    )
    metrics.counter_reading(
        "notifier_consumer_restarts",
        "times the durable consumer was set up again after a failure (NATS down, ...)",
        lambda: float(status.restarts["consumer"]),
    )
    # The gauges that read the database are read in the background (Metrics.stored_gauge):
    # with PostgreSQL hung, a scrape that waited for them failed, and took every other
    # notifier metric (notifier_nats_connected, ...) with it.
    metrics.stored_gauge(
        "notifier_dead_letters",
        "webhook deliveries that are dead letters now (waiting for a replay)",
        lambda: float(store.dead_letter_count()),
    )
    waiting = shared_reading(store.waiting)  # one query for both gauges
    metrics.stored_gauge(
        "notifier_webhook_deliveries_waiting",
        "webhook deliveries not made yet: stored, under way or to be retried (not dead letters)",
        lambda: float(waiting()[0]),
    )
    metrics.stored_gauge(
        "notifier_webhook_oldest_waiting_seconds",
        "age of the oldest of them, from when it was stored or first attempted (0: none)",
        lambda: 0.0 if (oldest := waiting()[1]) is None else max(0.0, time.time() - oldest),
    )
    metrics.stored_gauge(
        "notifier_webhook_failing_seconds",
        "how long the webhook failing longest has failed with no delivery since (0: none)",
        lambda: 0.0 if (since := store.failing_since()) is None else max(0.0, time.time() - since),
    )
    metrics.gauge(
        "notifier_live_subscribers",
        "open live gRPC subscriptions on this replica",
        lambda: float(len(engine.live)),
    )
