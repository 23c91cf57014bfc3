"""The soak run: steady load on the production topology while things are broken on purpose.

The topology, all processes on loopback: a PostgreSQL server of the test's own, a
3-node NATS JetStream cluster (stream replicas 3), two ledger replicas (with their
relays and projections) and two notifier replicas sharing a PostgreSQL store, a
webhook receiver and a live gRPC subscriber that follows whichever notifier answers.

Under a steady command load, one fault after another, each followed by progress:
kill -9 a ledger replica (and start it again), restart PostgreSQL, kill a NATS node
(and start it again), freeze the NATS stream leader (SIGSTOP, a partitioned node: its
connections stay open and answer nothing) for longer than the cluster's election
timeout while the fan-out goes on, freeze the relay leader for longer than the
stream's duplicate window (shortened to ``DUPLICATE_WINDOW`` seconds here) right after
it published, kill -9 a notifier (the other keeps delivering webhooks; then it starts
again), take the webhook receiver down (and up again). Afterwards:

- every acknowledged command is in the store exactly once, and every position is on
  the stream exactly once, in order;
- every event reached the webhook and the live subscriber, each exactly once once
  duplicates are removed by delivery id / event id, and in order per incident (each
  incident's versions strictly increasing at the webhook, none missing);
- the projections equal a rebuild from zero;
- ``VerifyLedger`` is clean.

By default one round of faults (CI). ``make soak`` runs rounds for ``SOAK_SECONDS``
(default 600) at ``SOAK_RATE`` commands/s (default 20).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import nats
import pytest
import structlog

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import LedgerSettings, nats_servers
from services.ledger.application import Ledger
from services.ledger.projections.service import Projections
from tests.fanout_support import WEBHOOK_SECRET, WebhookReceiver, arrival_versions, order_faults
from tests.nats_cluster import NatsCluster
from tests.nats_support import running_nats_cluster
from tests.support import reference, rid
from tests.topology import (
    CommandLoad,
    Deployment,
    FollowingSubscriber,
    PrivatePostgres,
    frozen,
    postgres_schema,
    private_postgres,
    stored_events,
    stream_positions,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.system]

log = structlog.get_logger("soak")

COORDINATOR = "desk_pilkada"
AUDITOR = "inspektorat"
STREAM = "LEDGER_EVENTS"
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "0"))
SOAK_RATE = float(os.environ.get("SOAK_RATE", "20"))
PROGRESS = 30  # acknowledged commands between steps of a round
DUPLICATE_WINDOW = 2.0  # the stream's, in seconds: a relay frozen longer outlives it
# A frozen NATS node stays frozen at least this long: past JetStream's election timeout
# (a few seconds), so its leaderships move, and past the notifier's stale-connection
# detection (3 pings 2 s apart), so its clients move too.
NATS_FREEZE_SECONDS = 8.0
PG_OUTAGE_SECONDS = 20.0  # PostgreSQL stopped with -m immediate for this long
# The bounds docs/deploying.md ("Several replicas, and what happens when parts fail") states,
# with room for a busy machine: commands succeed again within about a second of PostgreSQL's
# return (asserted: 5 s); another replica's relay takes over within seconds of its leader's
# death (the lock goes with the connection, the others try it every 2 s; asserted: webhook
# deliveries flowing again within 15 s).
COMMANDS_RESUME_BOUND = 5.0
RELAY_FAILOVER_BOUND = 15.0
# Webhook deliveries flowing again: with a NATS node cut off (an election, the relay's next
# node, the notifiers' pings: about 8 s), after a frozen relay leader thaws (about 1-2 s),
# and with a notifier killed (its unacknowledged messages hold the ack floor for at most
# NOTIFIER_ACK_WAIT_SECONDS, 10 s).
NATS_FREEZE_BOUND = 30.0
RELAY_THAW_BOUND = 10.0
NOTIFIER_KILL_BOUND = 20.0


def progress(load: CommandLoad, what: str) -> None:
    before = load.count
    wait_until(lambda: load.count >= before + PROGRESS, 120, f"{PROGRESS} commands {what}")


def delivering(receiver: WebhookReceiver, what: str) -> float:
    """Wait until the webhook gets ``PROGRESS`` new deliveries; the seconds it took."""
    started = time.monotonic()
    before = len(receiver.verified())
    wait_until(
        lambda: len(receiver.verified()) >= before + PROGRESS,
        120,
        f"{PROGRESS} webhook deliveries {what}",
    )
    return round(time.monotonic() - started, 1)


def verify(address: str, token: str) -> audit.VerifyLedgerResponse:
    with grpc.insecure_channel(address) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        response: audit.VerifyLedgerResponse = stub.VerifyLedger(
            audit.VerifyLedgerRequest(), metadata=md, timeout=120
        )
        return response


def projection_rows(deployment: Deployment) -> dict[str, list[tuple[object, ...]]]:
    settings = LedgerSettings(data_dir=deployment.data_dir, store_env=deployment.store_env)
    ledger = Ledger(reference(), env=settings.store_env)
    projections = Projections(ledger, settings.store_env, reference(), create=False)
    try:
        return projections.raw_rows()
    finally:
        projections.close()
        ledger.close()


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with running_nats_cluster(tmp_path / "nats", size=3) as nodes:
        yield nodes


def test_soak_nothing_is_lost_while_things_break(
    tmp_path: Path, postgres: PrivatePostgres, cluster: NatsCluster
) -> None:
    ledger_env = {**postgres.env, "POSTGRES_SCHEMA": postgres_schema(postgres.connect)}
    ledger_env.update(
        PERSISTENCE_MODULE="eventsourcing.postgres",
        POSTGRES_POOL_SIZE="4",
        POSTGRES_MAX_OVERFLOW="8",
    )
    deployment = Deployment(
        tmp_path / "data",
        ledger_env,
        nats_url=cluster.urls,
        notifier_env={
            **postgres.env,
            "POSTGRES_SCHEMA": postgres_schema(postgres.connect),
            "NOTIFIER_STORE": "postgres",
        },
    )
    receiver = WebhookReceiver()
    receiver.start()
    subscriber: FollowingSubscriber | None = None
    try:
        deployment.migrate()
        for _ in range(2):
            deployment.add_ledger(
                LEDGER_STREAM_REPLICAS="3",
                LEDGER_CHECKPOINT_SECONDS="5",
                LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS=str(DUPLICATE_WINDOW),
            )
        for ledger in deployment.ledgers:
            ledger.start()
        for _ in range(2):
            deployment.add_notifier(
                LEDGER_STREAM_REPLICAS="3",
                LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS=str(DUPLICATE_WINDOW),
            )
        for notifier in deployment.notifiers:
            notifier.start()
        tokens = deployment.tokens()
        with grpc.insecure_channel(deployment.notifiers[1].address) as channel:
            webhook = (
                napi_grpc.NotifierServiceStub(channel)
                .CreateWebhook(
                    napi.CreateWebhookRequest(
                        request_id=rid(), url=receiver.url, secret=WEBHOOK_SECRET
                    ),
                    metadata=(("authorization", f"Bearer {tokens[COORDINATOR]}"),),
                    timeout=30,
                )
                .webhook.name
            )
        subscriber = FollowingSubscriber(
            [n.address for n in deployment.notifiers], tokens[COORDINATOR]
        )
        subscriber.start()
        load = CommandLoad(
            [ledger.address for ledger in deployment.ledgers], tokens[COORDINATOR], SOAK_RATE
        )
        load.start()
        faults = fault_round(deployment, postgres, cluster, receiver, load)
        started = time.monotonic()
        rounds = 0
        try:
            while True:
                for name, fault in faults:
                    log.info("soak.fault", fault=name, round=rounds, acknowledged=load.count)
                    fault()
                rounds += 1
                if time.monotonic() - started >= SOAK_SECONDS:
                    break
        finally:
            load.stop()
        codes = {code.name: n for code, n in load.codes.items()}
        log.info(
            "soak.load_done",
            rounds=rounds,
            acknowledged=load.count,
            retries=load.retries,
            codes=codes,
        )
        assert not load.codes[grpc.StatusCode.INTERNAL], f"a command answered INTERNAL: {codes}"

        # Every acknowledged command is in the store exactly once.
        address = deployment.ledgers[0].address
        events = stored_events(address, tokens[AUDITOR])
        by_request = Counter(e.request_id for e in events)
        acknowledged = {a.request_id: a for a in load.acknowledged}
        assert set(by_request) == set(acknowledged), "an event without an acknowledged command"
        assert all(n == 1 for n in by_request.values()), "a command recorded twice"
        at = {e.request_id: e.position for e in events}
        assert all(at[r] == a.position for r, a in acknowledged.items())

        # Every position is on the stream exactly once, in order (the relay froze past the
        # duplicate window, and lost its NATS node, and its replica was killed).
        positions = [e.position for e in events]
        wait_until(
            lambda: stream_positions(cluster.urls)[-1:] == positions[-1:],
            120,
            "the stream to hold the last event",
        )
        assert stream_positions(cluster.urls) == positions, "a position not once, or not in order"

        # Every event reached every subscriber, exactly once after duplicates are removed.
        wanted = {e.event_id for e in events}

        def delivered() -> Counter[str]:
            return Counter(r.headers["X-Ledger-Event-Id"] for r in receiver.verified())

        wait_until(lambda: set(delivered()) == wanted, 180, "every event at the webhook")
        assert max(delivered().values()) == 1, "an event reached the webhook as two deliveries"
        expected: dict[str, list[int]] = defaultdict(list)
        for event in events:
            expected[event.incident].append(event.version)
        wrong = order_faults(arrival_versions(receiver.verified()), expected, [webhook])
        assert not wrong, f"{len(wrong)} incidents wrong at the webhook: {wrong[:5]}"
        wait_until(lambda: subscriber.unique_event_ids() >= wanted, 180, "every event live")
        assert subscriber.unique_event_ids() == wanted
        first: dict[str, pb.IncidentEvent] = {}
        for event in subscriber.events():
            first.setdefault(event.event_id, event)
        per_incident: dict[str, list[int]] = defaultdict(list)
        for event in first.values():
            per_incident[event.incident].append(event.version)
        for incident, versions in per_incident.items():
            assert versions == sorted(versions), f"{incident} out of order live"

        # No programming error restarted a notifier's tasks along the way.
        crashes = [
            line
            for notifier in deployment.notifiers
            for line in notifier.log_lines(every_start=True)
            if line["event"].endswith("_failed")
            and str(line.get("error", "")).startswith(("TypeError", "AttributeError", "NameError"))
        ]
        assert not crashes, crashes[:3]

        # The ledger verifies clean, and the projections equal a rebuild.
        result = verify(address, tokens[AUDITOR])
        assert result.ok, result.divergence
        assert result.events == len(events)
        deployment.stop()
        incremental = projection_rows(deployment)
        deployment.run("services.ledger.projections", "rebuild")
        assert projection_rows(deployment) == incremental
        log.info(
            "soak.done",
            rounds=rounds,
            events=len(events),
            retries=load.retries,
            subscriber_reconnects=subscriber.reconnects,
            webhook_posts=len(receiver.received),
        )
    finally:
        if subscriber is not None:
            subscriber.close()
        deployment.stop()
        receiver.stop()


def stream_last_seq(urls: str) -> int:
    """The stream's last sequence (each ledger event is one message)."""

    async def read() -> int:
        client = await nats.connect(nats_servers(urls), connect_timeout=2)
        try:
            info = await client.jetstream(timeout=5).stream_info(STREAM)
            return int(info.state.last_seq)
        finally:
            await client.close()

    return asyncio.run(read())


def node_pid(cluster: NatsCluster, i: int) -> int:
    pid = cluster.nodes[i].pid
    assert pid is not None, f"NATS node {i} is not running"
    return pid


def fault_round(
    deployment: Deployment,
    postgres: PrivatePostgres,
    cluster: NatsCluster,
    receiver: WebhookReceiver,
    load: CommandLoad,
) -> list[tuple[str, Callable[[], None]]]:
    """The faults of one round, each followed by progress under load."""

    def kill_ledger() -> None:
        deployment.ledgers[0].kill()
        progress(load, "with one ledger replica killed")
        deployment.ledgers[0].start()
        progress(load, "after the ledger replica came back")

    def restart_postgres() -> None:
        postgres.restart()
        progress(load, "after PostgreSQL restarted")

    def stop_postgres_immediately() -> None:
        postgres.stop("immediate")  # no checkpoint, connections cut: a crash
        # The fault's length, not a wait for a condition: an outage this long.
        time.sleep(PG_OUTAGE_SECONDS)
        postgres.start()
        back = time.monotonic()
        before = load.count
        wait_until(lambda: load.count > before, 60, "a command after PostgreSQL returned")
        resumed = time.monotonic() - back
        log.info("soak.postgres_returned", commands_resumed_in_seconds=round(resumed, 2))
        assert resumed < COMMANDS_RESUME_BOUND, f"commands resumed {resumed:.1f} s after"
        delivering(receiver, "after PostgreSQL returned")

    def kill_relay_leader() -> None:
        wait_until(lambda: any(x.relay_leads() for x in deployment.ledgers), 60, "a relay leader")
        leader = next(x for x in deployment.ledgers if x.relay_leads())
        at_kill = stream_last_seq(cluster.urls)
        leader.kill()
        started = time.monotonic()
        # Events the dead leader never published, published by another replica's relay.
        wait_until(
            lambda: stream_last_seq(cluster.urls) >= at_kill + PROGRESS,
            120,
            f"{PROGRESS} events on the stream after the relay leader died",
        )
        took = round(time.monotonic() - started, 1)
        log.info("soak.relay_leader_killed", publishing_resumed_in_seconds=took)
        assert took < RELAY_FAILOVER_BOUND, f"publishing resumed {took} s after the leader died"
        delivering(receiver, "with the relay leader killed")
        leader.start()
        progress(load, "after the killed relay leader's replica came back")

    def kill_nats_node() -> None:
        leader = cluster.stream_leader(STREAM)  # the hardest node to lose
        victim = 0 if leader is None else leader
        cluster.kill(victim)
        progress(load, "with a NATS node killed")
        cluster.restart(victim)
        progress(load, "after the NATS node came back")

    def freeze_nats_node() -> None:
        cluster.wait_stream_current(STREAM, 60)  # a partition, not the tail of the last fault
        leader = cluster.stream_leader(STREAM)  # its leaderships must move
        victim = 0 if leader is None else leader
        started = time.monotonic()
        with frozen(node_pid(cluster, victim)):
            took = delivering(receiver, "with a NATS node frozen")
            # The fault's length, not a wait for a condition: a partition this long.
            time.sleep(max(0.0, started + NATS_FREEZE_SECONDS - time.monotonic()))
        log.info("soak.nats_node_frozen", node=victim, fan_out_resumed_in_seconds=took)
        assert took < NATS_FREEZE_BOUND, (
            f"webhook deliveries resumed {took} s with a NATS node frozen"
        )
        cluster.wait_healthy(60)
        delivering(receiver, "after the NATS node thawed")

    def freeze_relay_leader() -> None:
        wait_until(lambda: any(x.relay_leads() for x in deployment.ledgers), 60, "a relay leader")
        leader = next(x for x in deployment.ledgers if x.relay_leads())
        # Frozen just after the stream grew: in the middle of the relay's publishing.
        last = stream_positions(cluster.urls)[-1:]
        wait_until(lambda: stream_positions(cluster.urls)[-1:] != last, 60, "a publish")
        with frozen(leader.pid):
            # The fault's length: past the duplicate window, which no longer guards a
            # republished event when the relay wakes.
            time.sleep(2 * DUPLICATE_WINDOW)
        took = delivering(receiver, "after the relay leader thawed")
        log.info("soak.relay_leader_frozen", fan_out_resumed_in_seconds=took)
        assert took < RELAY_THAW_BOUND, (
            f"webhook deliveries resumed {took} s after the relay leader thawed"
        )
        progress(load, "after the relay leader thawed")

    def kill_notifier() -> None:
        deployment.notifiers[0].kill()
        took = delivering(receiver, "with a notifier killed: the other delivers")
        log.info("soak.notifier_killed", webhook_resumed_in_seconds=took)
        assert took < NOTIFIER_KILL_BOUND, (
            f"webhook deliveries resumed {took} s with a notifier killed"
        )
        progress(load, "with a notifier killed")
        deployment.notifiers[0].start()
        progress(load, "after the notifier came back")

    def webhook_down() -> None:
        receiver.stop()
        progress(load, "with the webhook receiver down")
        receiver.start()
        progress(load, "after the webhook receiver came back")

    return [
        ("kill -9 a ledger replica", kill_ledger),
        ("restart PostgreSQL", restart_postgres),
        ("stop PostgreSQL (-m immediate) for 20 s", stop_postgres_immediately),
        ("kill -9 the relay leader", kill_relay_leader),
        ("kill a NATS node", kill_nats_node),
        ("freeze (SIGSTOP) the NATS stream leader", freeze_nats_node),
        ("freeze (SIGSTOP) the relay leader", freeze_relay_leader),
        ("kill -9 a notifier", kill_notifier),
        ("webhook receiver down", webhook_down),
    ]
