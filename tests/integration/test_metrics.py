"""Prometheus metrics of both services, scraped over HTTP from a real stack.

A real nats-server, the ledger with its relay and the notifier, with their
metrics endpoints on free ports; commands, a live subscriber and webhooks (one
that answers, one that fails into a dead letter) move the counters, and a NATS
outage moves the connection gauges and the relay's lag.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from eventsourcing.utils import get_topic

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.config import RelaySettings, WebhookSettings
from services.common.natsserver import NatsServer
from services.ledger.domain.incident import incident_event_classes
from tests.fanout_support import (
    WEBHOOK_SECRET,
    Stack,
    WebhookReceiver,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.metrics_support import Scrape, documented_metrics
from tests.support import Client, rid, running_ledger, settings_for, store_environment

LEDGER = "/incidentledger.v1.LedgerService/"


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    quick = WebhookSettings(
        max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
    )
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(
            tmp_path,
            env,
            nats_server.url,
            ledger_overrides={"metrics_listen": "127.0.0.1:0"},
            metrics_listen="127.0.0.1:0",
            webhooks=quick,
        ) as running,
    ):
        yield running


def create_webhook(stack: Stack, receiver: WebhookReceiver, event_type: str) -> None:
    stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(
            request_id=rid(),
            url=receiver.url,
            secret=WEBHOOK_SECRET,
            filter=napi.EventFilter(event_types=[event_type]),
        ),
        metadata=stack.ledger.md("bpbd"),
    )


def wait_for_scrape(port: int, condition: Callable[[Scrape], bool], what: str) -> Scrape:
    """Scrape until ``condition`` holds (with a deadline); the scrape where it held."""
    found: list[Scrape] = []

    def holds() -> bool:
        scrape = Scrape(port)
        if condition(scrape):
            found.append(scrape)
            return True
        return False

    wait_until(holds, timeout=60, what=what)
    return found[0]


def test_the_relay_backlog_counts_incident_events_after_a_position(ledger: Client) -> None:
    topics = [get_topic(cls) for cls in incident_event_classes()]
    results = [ledger.report("kesbangpol") for _ in range(3)]
    positions = ledger.server.ledger.positions
    # Each command also records a request record, which is not an incident event.
    assert positions.count_after(0, topics) == 3
    assert positions.count_after(results[0].position, topics) == 2
    assert positions.count_after(results[-1].position, topics) == 0
    assert positions.count_after(results[-1].position + 10, topics) == 0


@pytest.mark.nats
def test_labelled_counters_are_there_at_zero_with_the_documented_labels(stack: Stack) -> None:
    # A counter's series that first appears at 1 has no earlier sample, so increase() and
    # rate() miss that count: the first dead letter would never fire the alert on them.
    stack.ledger.report("kesbangpol")
    ledger = wait_for_scrape(
        stack.ledger.server.metrics.port,
        lambda m: m.value("ledger_evidence_sweeps_total", outcome="done") == 1,
        "the first evidence sweep",
    )
    notifier = Scrape(stack.notifier.metrics.port)
    for channel, outcome in (
        ("webhook", "delivered"),
        ("webhook", "failed"),
        ("webhook", "dead_letter"),
        ("grpc", "delivered"),
    ):
        assert notifier.value("notifier_deliveries_total", channel=channel, outcome=outcome) == 0
    assert ledger.value("ledger_evidence_sweeps_total", outcome="failed") == 0
    for kind in ("pending", "object"):
        assert ledger.value("ledger_evidence_swept_total", kind=kind) == 0
    for key in ("peer", "token"):
        assert ledger.value("ledger_auth_throttled_total", key=key) == 0
        assert notifier.value("notifier_auth_throttled_total", key=key) == 0

    # Every metric with samples (the notifier has had no request yet) has exactly the
    # labels its row of the table names.
    for d in documented_metrics().values():
        scrape = ledger if d.service == "ledger" else notifier
        samples = [
            sample
            for sample in scrape.families[d.family].samples
            if not sample.name.endswith("_created")
        ]
        if samples:
            assert {label for s in samples for label in s.labels} - {"le"} == d.labels, d.name


@pytest.mark.nats
def test_metrics_count_what_happened_and_follow_the_nats_connection(
    stack: Stack, nats_server: NatsServer
) -> None:
    ledger_port = stack.ledger.server.metrics.port
    notifier_port = stack.notifier.metrics.port
    s, md = stack.ledger.stub, stack.ledger.md

    with webhook_receiver() as good, webhook_receiver() as bad:
        bad.status = 500
        create_webhook(stack, good, "Reported")
        create_webhook(stack, bad, "Verified")
        subscriber = stack.subscribe("bpbd")
        names = [stack.ledger.report("kesbangpol").incident for _ in range(3)]
        verified = s.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=names[0]), metadata=md("desk_pilkada")
        ).result
        with pytest.raises(grpc.RpcError) as refused:
            s.VerifyIncident(
                api.VerifyIncidentRequest(request_id=rid(), name=f"incidents/{uuid.uuid4()}"),
                metadata=md("desk_pilkada"),
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND

        # Counted when committed, before the command answers: no waiting needed.
        ledger = Scrape(ledger_port)
        assert ledger.value("ledger_events_appended_total", type="Reported") == 3
        assert ledger.value("ledger_events_appended_total", type="Verified") == 1
        assert ledger.total("ledger_events_appended_total") == 4
        report = {"method": f"{LEDGER}ReportIncident", "status": "OK"}
        assert ledger.value("ledger_requests_total", **report) == 3
        assert ledger.value("ledger_request_seconds_count", **report) == 3
        failed = {"method": f"{LEDGER}VerifyIncident", "status": "NOT_FOUND"}
        assert ledger.value("ledger_requests_total", **failed) == 1
        assert ledger.value("ledger_request_seconds_count", **failed) == 1
        assert ledger.value("ledger_relay_leader") == 1
        assert ledger.value("ledger_relay_connected") == 1

        ledger = wait_for_scrape(
            ledger_port,
            lambda m: (
                m.value("ledger_relay_published_total") == 4
                # Stored gauges are read every second: a reading from before the commands
                # (position 0, no lag) must not pass for one after them.
                and (m.value("ledger_position") or 0) >= verified.position
                and m.value("ledger_relay_lag_events") == 0
                and m.value("ledger_projection_lag_events") == 0
            ),
            "the relay and the projections to catch up",
        )
        assert ledger.value("ledger_relay_lag_seconds") == 0
        assert ledger.value("ledger_projection_lag_seconds") == 0
        position = ledger.value("ledger_position")
        assert position is not None
        assert ledger.value("ledger_projection_position") == position
        relay_position = ledger.value("ledger_relay_position")
        assert relay_position is not None
        assert 0 < relay_position <= position

        subscriber.wait_for(4)
        wait_until(lambda: len(good.verified()) == 3, what="three webhook deliveries")
        notifier = wait_for_scrape(
            notifier_port,
            lambda m: (
                m.value("notifier_deliveries_total", channel="webhook", outcome="delivered") == 3
                and m.value("notifier_deliveries_total", channel="webhook", outcome="dead_letter")
                == 1
                and m.value("notifier_deliveries_total", channel="grpc", outcome="delivered") == 4
                and m.value("notifier_consumer_pending_events") == 0
                and m.value("notifier_consumer_ack_pending_events") == 0
                # Every delivery made or given up: none waits (read at most once a second).
                and m.value("notifier_webhook_deliveries_waiting") == 0
                and m.value("notifier_dead_letters") == 1
                # The receiver answering 500 has taken nothing since it started failing.
                and (m.value("notifier_webhook_failing_seconds") or 0) > 0
            ),
            "the deliveries and the consumer to settle",
        )
        assert notifier.value("notifier_deliveries_total", channel="webhook", outcome="failed") == 1
        assert notifier.total("notifier_deliveries_total") == 3 + 1 + 1 + 4
        assert notifier.value("notifier_dead_letters") == 1
        assert notifier.value("notifier_webhook_oldest_waiting_seconds") == 0
        assert notifier.value("notifier_live_subscribers") == 1
        assert notifier.value("notifier_nats_connected") == 1
        subscribe = {"method": "/incidentledger.v1.NotifierService/CreateWebhook", "status": "OK"}
        assert notifier.value("notifier_requests_total", **subscribe) == 2
        subscriber.close()
        wait_for_scrape(
            notifier_port,
            lambda m: m.value("notifier_live_subscribers") == 0,
            "the subscriber to be gone",
        )

    # Exactly the documented metrics, no more, no fewer.
    documented = documented_metrics().values()
    for service, scrape in (("ledger", ledger), ("notifier", notifier)):
        expected = {d.family for d in documented if d.service == service}
        assert scrape.names(service) == expected, service
        for d in documented:
            if d.service == service:
                assert scrape.families[d.family].type == d.type, d.name

    # NATS goes away: both connections are seen lost, the relay's backlog grows.
    nats_server.stop()
    wait_for_scrape(
        ledger_port, lambda m: m.value("ledger_relay_connected") == 0, "the relay to disconnect"
    )
    wait_for_scrape(
        notifier_port,
        lambda m: m.value("notifier_nats_connected") == 0,
        "the notifier to disconnect",
    )
    stack.ledger.report("kesbangpol")
    ledger = wait_for_scrape(
        ledger_port,
        lambda m: (
            m.value("ledger_relay_lag_events") == 1
            and (m.value("ledger_relay_lag_seconds") or 0) > 0
        ),
        "the relay's backlog",
    )
    assert ledger.value("ledger_relay_leader") == 1  # still holds the lock, cannot publish
    assert Scrape(notifier_port).value("notifier_consumer_pending_events") is None

    nats_server.start()
    wait_for_scrape(
        ledger_port,
        lambda m: (
            m.value("ledger_relay_connected") == 1
            and m.value("ledger_relay_lag_events") == 0
            and m.value("ledger_relay_published_total") == 5
        ),
        "the relay to reconnect and drain its backlog",
    )
    wait_for_scrape(
        notifier_port,
        lambda m: m.value("notifier_nats_connected") == 1,
        "the notifier to reconnect",
    )


@pytest.mark.nats
def test_a_ledger_started_while_nats_is_away_shows_its_relay_backlog(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The lag gauges waited for a position read from the stream: a ledger restarted while
    NATS was away showed none (or 0 with events unpublished), and the lag alerts could not
    fire. They count from the position the store says was published until then."""
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    with store_environment("sqlite", tmp_path) as env:
        settings = settings_for(tmp_path, env, relay=relay, metrics_listen="127.0.0.1:0")
        with running_ledger(settings) as ledger:
            ledger.report("kesbangpol")
            port = ledger.server.metrics.port
            wait_for_scrape(
                port,
                lambda m: (
                    m.value("ledger_relay_published_total") == 1
                    and m.value("ledger_relay_lag_events") == 0
                ),
                "the first report published",
            )
        nats_server.stop()
        try:
            with running_ledger(settings) as ledger:
                for _ in range(3):
                    ledger.report("kesbangpol")
                port = ledger.server.metrics.port
                scrape = wait_for_scrape(
                    port,
                    lambda m: m.value("ledger_relay_lag_events") == 3,
                    "the backlog of a relay that never reached NATS",
                )
                assert scrape.value("ledger_relay_connected") == 0
                assert (scrape.value("ledger_relay_lag_seconds") or 0) > 0
        finally:
            nats_server.start()
