"""Scale-out as processes on loopback: two ledger replicas on one PostgreSQL, two notifiers.

- Both ledger replicas accept commands at once; no update is lost.
- Exactly one relay publishes; killing its replica (SIGKILL) hands publishing to the
  other, and the stream holds every event exactly once, in order.
- Two notifier replicas share the durable consumer and the webhook deliveries (each
  replica's metrics count some): killing one loses nothing, and no event is delivered
  to a webhook as two different deliveries.
- With two notifier replicas, each incident's events reach a webhook in order, with no
  fault at all (issue 21.1: the replicas store each other's neighbours' jobs late).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.natsserver import NatsServer
from tests.fanout_support import (
    WEBHOOK_SECRET,
    WebhookReceiver,
    arrival_versions,
    order_faults,
    webhook_receiver,
)
from tests.metrics_support import Scrape
from tests.support import rid, store_environment
from tests.topology import (
    CommandLoad,
    Deployment,
    FollowingSubscriber,
    Service,
    stored_events,
    stream_positions,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.system]

COORDINATOR = "desk_pilkada"
AUDITOR = "inspektorat"
STREAM = "LEDGER_EVENTS"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with store_environment("postgres", tmp_path) as store_env:
        deployment = Deployment(tmp_path / "data", store_env)
        try:
            yield deployment
        finally:
            deployment.stop()


def md(deployment: Deployment, agency: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {deployment.tokens()[agency]}"),)


def leaders(deployment: Deployment) -> list[int]:
    """Replicas whose current run logged that its relay leads."""
    return [i for i, ledger in enumerate(deployment.ledgers) if ledger.relay_leads()]


def test_two_ledger_replicas_accept_commands_concurrently_without_a_lost_update(
    deployment: Deployment,
) -> None:
    deployment.migrate()
    replicas = [deployment.add_ledger(), deployment.add_ledger()]
    for replica in replicas:
        replica.start()
    channels = [grpc.insecure_channel(r.address) for r in replicas]
    stubs = [api_grpc.LedgerServiceStub(c) for c in channels]
    coordinator = md(deployment, COORDINATOR)
    try:
        name = (
            stubs[0]
            .ReportIncident(
                api.ReportIncidentRequest(
                    request_id=rid(),
                    title="Two camps gathering near the KPU office",
                    category="crowd_gathering",
                    location=pb.Location(kecamatan="ipuh"),
                ),
                metadata=coordinator,
            )
            .result.incident
        )
        done: list[int] = []
        conflicts: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(worker: int) -> None:
            try:
                write(worker)
            except BaseException as error:  # re-raised by the test after the join
                with lock:
                    errors.append(error)

        def write(worker: int) -> None:
            stub = stubs[worker % 2]
            for n in range(10):
                while True:  # read, then write against the version read: ABORTED = retry
                    version = stub.GetIncident(
                        api.GetIncidentRequest(name=name), metadata=coordinator
                    ).incident.version
                    try:
                        result = stub.EscalateIncident(
                            api.EscalateIncidentRequest(
                                request_id=rid(),
                                name=name,
                                expected_version=version,
                                reason=f"worker {worker} round {n}",
                            ),
                            metadata=coordinator,
                        ).result
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.ABORTED, error
                        with lock:
                            conflicts.append(worker)
                        continue
                    assert result.version == version + 1
                    with lock:
                        done.append(result.position)
                    break

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not [t for t in threads if t.is_alive()], "a writer did not finish in time"
        if errors:
            raise errors[0]
        assert len(done) == 60
        assert len(set(done)) == 60, "two commands acknowledged at one position"
        assert conflicts, "the replicas never raced: the test proved nothing"
        for stub in stubs:  # both replicas see the same, complete incident
            incident = stub.GetIncident(api.GetIncidentRequest(name=name), metadata=coordinator)
            assert incident.incident.version == 61
            assert incident.incident.escalation_level == 60
        history = stored_events(replicas[1].address, deployment.tokens()[AUDITOR])
        assert sorted(e.position for e in history if e.type == "Escalated") == sorted(done)
    finally:
        for channel in channels:
            channel.close()


def test_exactly_one_relay_publishes_and_the_other_takes_over_when_it_dies(
    deployment: Deployment, nats_server: NatsServer
) -> None:
    deployment.nats_url = nats_server.url
    deployment.migrate()
    for _ in range(2):
        deployment.add_ledger().start()
    wait_until(lambda: len(leaders(deployment)) == 1, 30, "one relay leader")
    first = leaders(deployment)[0]
    load = CommandLoad(
        [r.address for r in deployment.ledgers], deployment.tokens()[COORDINATOR], rate=40
    )
    load.start()
    try:
        wait_until(lambda: load.count >= 40, 60, "40 commands")
        assert leaders(deployment) == [first], "a second relay started publishing"
        deployment.ledgers[first].kill()
        wait_until(lambda: leaders(deployment) == [1 - first], 30, "the other relay to lead")
        before = load.count
        wait_until(lambda: load.count >= before + 40, 60, "40 more commands")
        deployment.ledgers[first].start()  # back as a follower: the survivor keeps leading
    finally:
        load.stop()
    assert not load.codes[grpc.StatusCode.INTERNAL], f"a command answered INTERNAL: {load.codes}"
    survivor = deployment.ledgers[1 - first]
    events = stored_events(survivor.address, deployment.tokens()[AUDITOR])
    positions = [e.position for e in events]
    assert {a.position for a in load.acknowledged} <= set(positions)
    wait_until(
        lambda: stream_positions(nats_server.url)[-1:] == positions[-1:],
        30,
        "the stream to hold the last event",
    )
    published = stream_positions(nats_server.url)
    assert published == positions, "the stream lost, repeated or reordered an event"
    assert leaders(deployment) == [1 - first]


def webhook_deliveries(metrics_port: int) -> float:
    """Webhooks one notifier replica delivered, from its Prometheus endpoint."""
    return Scrape(metrics_port).total(
        "notifier_deliveries_total", channel="webhook", outcome="delivered"
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as hook:
        yield hook


@contextmanager
def one_ledger_two_notifiers(
    deployment: Deployment, nats_server: NatsServer, tmp_path: Path
) -> Iterator[tuple[Service, list[Service], list[int]]]:
    """A ledger and two notifier replicas sharing the consumer and a PostgreSQL store (a
    schema of the test's own); the notifiers' metrics ports. Stopped on the way out."""
    deployment.nats_url = nats_server.url
    with store_environment("postgres", tmp_path / "notifier") as notifier_store:
        deployment.notifier_env = {
            **{k: v for k, v in notifier_store.items() if k.startswith("POSTGRES_")},
            "NOTIFIER_STORE": "postgres",
        }
        deployment.migrate()
        ledger = deployment.add_ledger()
        ledger.start()
        # Port 0, read back from each start line: a port picked free here could be taken
        # before the notifier bound it.
        notifiers = [
            deployment.add_notifier(NOTIFIER_METRICS_LISTEN="127.0.0.1:0") for _ in range(2)
        ]
        for notifier in notifiers:
            notifier.start()
        yield ledger, notifiers, [notifier.metrics_port for notifier in notifiers]


def test_two_notifiers_share_the_consumer_and_killing_one_loses_nothing(
    deployment: Deployment, nats_server: NatsServer, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    with one_ledger_two_notifiers(deployment, nats_server, tmp_path) as (
        ledger,
        notifiers,
        metrics_ports,
    ):
        with grpc.insecure_channel(notifiers[0].address) as channel:
            napi_grpc.NotifierServiceStub(channel).CreateWebhook(
                napi.CreateWebhookRequest(
                    request_id=rid(), url=receiver.url, secret=WEBHOOK_SECRET
                ),
                metadata=md(deployment, COORDINATOR),
            )
        subscriber = FollowingSubscriber(
            [n.address for n in notifiers], deployment.tokens()[COORDINATOR]
        )
        subscriber.start()
        try:
            load = CommandLoad([ledger.address], deployment.tokens()[COORDINATOR], rate=40)
            load.start()
            try:
                wait_until(
                    lambda: all(webhook_deliveries(port) > 0 for port in metrics_ports),
                    60,
                    "both notifier replicas to deliver",
                )
                notifiers[0].kill()
                before = load.count
                wait_until(lambda: load.count >= before + 60, 60, "60 more commands")
            finally:
                load.stop()
            assert not load.codes[grpc.StatusCode.INTERNAL], f"INTERNAL answered: {load.codes}"
            events = stored_events(ledger.address, deployment.tokens()[AUDITOR])
            wanted = {e.event_id for e in events}
            assert {a.position for a in load.acknowledged} <= {e.position for e in events}

            def delivered() -> set[str]:
                return {r.headers["X-Ledger-Event-Id"] for r in receiver.verified()}

            wait_until(lambda: delivered() == wanted, 60, "every event at the webhook")
            wait_until(lambda: subscriber.unique_event_ids() >= wanted, 60, "every event live")
        finally:
            subscriber.close()
        unique = receiver.verified()
        assert len(unique) == len(wanted), "an event was delivered as two deliveries"
        assert subscriber.reconnects >= 1, "the subscriber never had to move to the other notifier"
        seen = [e for e in subscriber.events() if e.event_id in wanted]
        first_seen: dict[str, int] = {}
        for event in seen:
            first_seen.setdefault(event.event_id, event.position)
        ordered = list(first_seen.values())
        assert ordered == sorted(ordered), "the subscriber saw events out of order"
        deployment.stop()


def test_two_notifiers_deliver_each_incidents_events_in_order(
    deployment: Deployment, nats_server: NatsServer, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """No fault at all: a brisk load of a few hundred incidents with several events each,
    two notifier replicas sharing the consumer and the store. Before, a replica delivered an
    incident's later event while the other still held the earlier one, not yet stored
    (in the issue: 5 of 248 incidents). Each incident's versions must arrive strictly
    increasing, none missing, each event as one delivery."""
    with one_ledger_two_notifiers(deployment, nats_server, tmp_path) as (
        ledger,
        notifiers,
        metrics_ports,
    ):
        with grpc.insecure_channel(notifiers[0].address) as channel:
            webhook = (
                napi_grpc.NotifierServiceStub(channel)
                .CreateWebhook(
                    napi.CreateWebhookRequest(
                        request_id=rid(), url=receiver.url, secret=WEBHOOK_SECRET
                    ),
                    metadata=md(deployment, COORDINATOR),
                )
                .webhook.name
            )
        # Each incident's events close together (escalations among the 3 reported last),
        # at the rate one command thread reaches: the replicas split them between them.
        load = CommandLoad([ledger.address], deployment.tokens()[COORDINATOR], rate=200, window=3)
        load.start()
        try:
            wait_until(lambda: load.incidents >= 300, 120, "300 incidents reported")
        finally:
            load.stop()
        events = stored_events(ledger.address, deployment.tokens()[AUDITOR])
        wanted = {e.event_id for e in events}

        def delivered() -> set[str]:
            return {r.headers["X-Ledger-Event-Id"] for r in receiver.verified()}

        wait_until(lambda: delivered() == wanted, 120, "every event at the webhook")
        expected: dict[str, list[int]] = {}
        for event in events:
            expected.setdefault(event.incident, []).append(event.version)
        faults = order_faults(arrival_versions(receiver.verified()), expected, [webhook])
        assert not faults, f"{len(faults)} of {len(expected)} incidents wrong: {faults[:5]}"
        assert len(receiver.verified()) == len(wanted), "an event came as two deliveries"
        assert all(webhook_deliveries(port) > 0 for port in metrics_ports), (
            "one replica delivered everything: the test proved nothing"
        )
        deployment.stop()
