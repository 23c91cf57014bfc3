"""The fan-out on a three-node JetStream cluster: a node killed (SIGKILL) and restarted.

A real cluster of bundled nats-servers on free loopback ports, the real ledger (in
this process) publishing to a stream with three replicas, the real notifier (a
process of its own, configured from the environment like in production: ``NATS_URL``
lists the three nodes), a live gRPC subscriber and a webhook receiver. One node is
killed -- the stream's leader, or the node the notifier is connected to -- while
commands keep being recorded; every event must still reach both subscribers, once
and in order, before the node is back. Then the node rejoins, catches up, and the
events recorded after that arrive too. A first test checks the cluster itself: a new
meta leader, and a restarted node on its old ports catching up from its peers.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import RelaySettings, StreamSettings
from services.common.natsserver import free_ports
from tests import nats_cluster as cluster_support
from tests.fanout_support import (
    ALLOW_LOOPBACK_ENV,
    WEBHOOK_SECRET,
    Subscriber,
    WebhookReceiver,
    wait_until,
    webhook_receiver,
)
from tests.nats_cluster import NatsCluster
from tests.nats_support import running_nats_cluster
from tests.support import (
    Client,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.system]

STREAM = StreamSettings().name
NOTIFIER_CONNECTION = "incident-notifier"  # the client name the notifier connects with
DEADLINE = 30.0  # seconds any one step may take, elections included


class Recorder:
    """Records commands on the ledger: reports, and escalations of what was reported."""

    def __init__(self, ledger: Client) -> None:
        self.ledger = ledger
        self.results: list[api.CommandResult] = []
        self._incidents: list[str] = []

    def record(self, count: int) -> None:
        """``count`` commands, each of which must be accepted."""
        for n in range(count):
            if n % 2 == 0 or not self._incidents:
                result = self.ledger.report(
                    "bpbd",
                    title=f"Flood warning {len(self.results)}",
                    category="flood",
                    location=pb.Location(kecamatan="air_manjunto"),
                )
                self._incidents.append(result.incident)
            else:
                result = self.ledger.stub.EscalateIncident(
                    api.EscalateIncidentRequest(
                        request_id=secrets.token_hex(8),
                        name=self._incidents[n % len(self._incidents)],
                        reason="the river is still rising",
                    ),
                    metadata=self.ledger.md("bpbd"),
                ).result
            assert result.position > 0, "the command was recorded"
            self.results.append(result)

    @property
    def expected(self) -> list[str]:
        """The event ids of everything recorded, in log order."""
        return [r.event_id for r in sorted(self.results, key=lambda r: r.position)]


def notifier_env(tmp_path: Path, cluster: NatsCluster) -> dict[str, str]:
    return {
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "NOTIFIER_LISTEN": "127.0.0.1:0",
        "NATS_URL": cluster.urls,  # "nats://127.0.0.1:p1,nats://127.0.0.1:p2,..."
        "LEDGER_STREAM_REPLICAS": "3",
        "NOTIFIER_ACK_WAIT_SECONDS": "2",  # an ack lost with its node is redelivered soon
        **ALLOW_LOOPBACK_ENV,
    }


def stream_state(servers: list[str]) -> tuple[list[int], list[bool]]:
    """The ledger positions the stream holds, in order, and whether each replica the
    stream's leader reports is current."""

    async def read() -> tuple[list[int], list[bool]]:
        client = await nats.connect(servers, connect_timeout=2)
        try:
            js = client.jetstream(timeout=5)
            info = await js.stream_info(STREAM)
            replicas = info.cluster.replicas if info.cluster else None
            current = [bool(peer.current) and not peer.offline for peer in replicas or []]
            positions = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(STREAM, seq)
                positions.append(int((msg.headers or {})["Nats-Msg-Id"]))
            return positions, current
        finally:
            await client.close()

    return asyncio.run(read())


def test_a_killed_node_restarts_on_its_ports_with_its_store_and_catches_up(
    nats_cluster: NatsCluster,
) -> None:
    async def publish(count: int) -> None:
        client = await nats.connect(nats_cluster.servers, connect_timeout=2)
        try:
            js = client.jetstream(timeout=5)
            for n in range(count):
                # A stream just created (or just failed over) has no leader for a few
                # seconds on a busy machine: no responders until it has one.
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await js.publish("check.one", f"{n}".encode())
                        break
                    except NoStreamResponseError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
        finally:
            await client.close()

    async def create() -> None:
        client = await nats.connect(nats_cluster.servers, connect_timeout=2)
        try:
            config = StreamConfig(name="CHECK", subjects=["check.>"], num_replicas=3)
            # A cluster that has just started may still be electing its meta leader: the
            # request then times out or finds no responder; creating it again is harmless.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await client.jetstream(timeout=5).add_stream(config)
                    return
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await client.close()

    def held_by(i: int) -> int:
        jsz = nats_cluster.nodes[i].monitoring("/jsz")
        return int(jsz["messages"])

    assert nats_cluster.urls == ",".join(node.url for node in nats_cluster.nodes)
    asyncio.run(create())
    asyncio.run(publish(5))
    nats_cluster.wait_stream_current("CHECK")
    leader = nats_cluster.meta_leader()
    assert leader is not None
    ports = [(n.port, n.cluster_port, n.monitor_port) for n in nats_cluster.nodes]

    nats_cluster.kill(leader)
    assert nats_cluster.running == [i for i in range(3) if i != leader]
    nats_cluster.wait_healthy()
    assert nats_cluster.meta_leader() not in (None, leader), "the others elected a leader"
    asyncio.run(publish(5))  # two of three replicas are a majority

    nats_cluster.restart(leader)
    nats_cluster.wait_stream_current("CHECK")
    assert [(n.port, n.cluster_port, n.monitor_port) for n in nats_cluster.nodes] == ports
    wait_until(lambda: held_by(leader) == 10, what="the restarted node to catch up")
    assert all(held_by(i) == 10 for i in range(3))


@pytest.fixture
def replicated_ledger(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Client]:
    """The ledger, its relay publishing to a stream replicated on all three nodes."""
    relay = RelaySettings(
        nats_url=nats_cluster.urls, stream=StreamSettings(replicas=3), poll_seconds=0.2
    )
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as client,
    ):
        yield client


def delivered(receiver: WebhookReceiver) -> list[str]:
    """Event ids the webhook received, each delivery once (by its delivery id)."""
    return [str(item.json["event"]["event_id"]) for item in receiver.verified()]


@pytest.mark.parametrize("victim", ["stream-leader", "notifier-node"])
def test_a_killed_node_neither_stops_nor_duplicates_the_fan_out_and_rejoins(
    tmp_path: Path, nats_cluster: NatsCluster, replicated_ledger: Client, victim: str
) -> None:
    ledger = replicated_ledger
    with (
        webhook_receiver() as receiver,
        service_process("services.notifier", notifier_env(tmp_path, nats_cluster)) as notifier,
        grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel,
    ):
        stub = napi_grpc.NotifierServiceStub(channel)
        stub.CreateWebhook(
            napi.CreateWebhookRequest(request_id="hook-1", url=receiver.url, secret=WEBHOOK_SECRET),
            metadata=ledger.md("bpbd"),
        )
        # The notifier's process may start before the relay has made the stream.
        subscriber = Subscriber.when_ready(stub, ledger.md("bpbd"), napi.SubscribeRequest())
        recorder = Recorder(ledger)

        def everything_arrived() -> None:
            count = len(recorder.results)
            subscriber.wait_for(count, timeout=DEADLINE)
            wait_until(
                lambda: len(receiver.verified()) >= count,
                timeout=DEADLINE,
                what=f"{count} webhook deliveries",
            )

        recorder.record(6)
        everything_arrived()
        nats_cluster.wait_stream_current(STREAM, timeout=DEADLINE)
        nats_cluster.wait_healthy(timeout=DEADLINE)  # the notifier's consumer replicas too

        if victim == "stream-leader":
            down = nats_cluster.stream_leader(STREAM)
            assert down is not None, "the stream has a leader"
        else:
            (down,) = nats_cluster.client_nodes(NOTIFIER_CONNECTION)
        nats_cluster.kill(down)

        recorder.record(10)  # accepted while the node is down
        everything_arrived()
        assert not nats_cluster.nodes[down].running, "delivered while the node was down"
        assert nats_cluster.stream_leader(STREAM) not in (None, down), "a new leader serves"

        nats_cluster.restart(down)  # waits until the cluster is healthy with it again
        nats_cluster.wait_stream_current(STREAM, timeout=DEADLINE)
        wait_until(
            lambda: all(stream_state(nats_cluster.servers)[1]),
            timeout=DEADLINE,
            what="every replica of the stream to report current",
        )

        recorder.record(6)
        everything_arrived()
        subscriber.close()
        assert subscriber.error is None, subscriber.error

    expected = recorder.expected
    streamed = [r.notification.event for r in subscriber.notifications]
    assert [e.event_id for e in streamed] == expected, "once each, in log order, no gap"
    assert [e.position for e in streamed] == sorted(r.position for r in recorder.results)
    hooked = delivered(receiver)
    assert sorted(hooked) == sorted(expected), "each event under one delivery id"
    incident_of = {r.event_id: r.incident for r in recorder.results}
    for incident in set(incident_of.values()):
        arrived = [e for e in hooked if incident_of[e] == incident]
        assert arrived == [e for e in expected if incident_of[e] == incident], "in order"
    positions, current = stream_state(nats_cluster.servers)
    assert positions == sorted(r.position for r in recorder.results), "each event once"
    assert current == [True, True], "both followers current"


def test_a_cluster_whose_picked_port_was_taken_before_its_first_start_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node's routes name its peers' cluster ports, so the ports are picked free before
    the first start; another process may take one before its node binds it. The nodes then
    move to new ports (nothing knows them yet)."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        taken = holder.getsockname()[1]
        picks = [taken]
        real = free_ports

        def picked(count: int, host: str = "127.0.0.1") -> list[int]:
            ports = real(count, host)
            return [picks.pop(), *ports[1:]] if picks else ports

        monkeypatch.setattr(cluster_support, "free_ports", picked)
        with running_nats_cluster(tmp_path, size=3) as cluster:
            assert taken not in {node.port for node in cluster.nodes}
            assert cluster.meta_leader() is not None
