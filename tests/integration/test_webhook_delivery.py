"""Webhook delivery against the real stack: ledger -> relay -> nats-server -> notifier -> HTTP.

What a delivery guarantees when things are slow, idle, broken or hostile: no stalls after
an idle spell, no duplicate POSTs to a slow but healthy endpoint, dead letters listed and
replayed in order, every attempt ending in an outcome, internal targets refused, and the
target's answers never echoed back to the agency.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from structlog.testing import capture_logs

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import RelaySettings, WebhookSettings
from services.common.grpc_errors import error_info
from services.common.natsserver import NatsServer
from services.notifier.engine import FETCH_SECONDS
from services.notifier.filters import EventFilter
from services.notifier.server import build as build_notifier
from tests.fanout_support import (
    ALLOW_LOOPBACK_ENV,
    WEBHOOK_SECRET,
    Stack,
    Subscriber,
    WebhookReceiver,
    notifier_settings,
    running_stack,
    wait_fanout_ready,
    wait_until,
    webhook_receiver,
)
from tests.metrics_support import Scrape
from tests.support import running_ledger, service_process, settings_for, store_environment

pytestmark = pytest.mark.nats

QUICK = WebhookSettings(
    max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
)


def rid() -> str:
    return secrets.token_hex(8)


@contextmanager
def stack_with(tmp_path: Path, nats_server: NatsServer, **notifier: Any) -> Iterator[Stack]:
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url, **notifier) as stack,
    ):
        yield stack


def create_webhook(stack: Stack, url: str, agency: str = "polres") -> str:
    response = stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(request_id=rid(), url=url, secret=WEBHOOK_SECRET),
        metadata=stack.ledger.md(agency),
    )
    return response.webhook.name


def store_webhook(stack: Stack, url: str, agency: str = "polres") -> None:
    """A webhook already in the store, as registered before today's checks (or whose name
    resolves elsewhere since): only the delivery-time checks stand in its way."""
    stack.notifier.store.add_webhook(
        agency=agency,
        url=url,
        secret=WEBHOOK_SECRET,
        filter_json=EventFilter().to_json(),
        request_key=rid(),
        fingerprint=rid(),
    )
    stack.notifier.engine.webhooks_changed()


def dead_letters(stack: Stack, agency: str = "polres", page_size: int = 0) -> list[napi.DeadLetter]:
    found: list[napi.DeadLetter] = []
    token = ""
    while True:
        page = stack.stub.ListDeadLetters(
            napi.ListDeadLettersRequest(page_size=page_size, page_token=token),
            metadata=stack.ledger.md(agency),
        )
        found.extend(page.dead_letters)
        token = page.next_page_token
        if not token:
            return found


def webhook_log(stack: Stack, agency: str = "polres") -> list[napi.DeliveryRecord]:
    return [
        d
        for d in stack.stub.ListDeliveries(
            napi.ListDeliveriesRequest(agency=agency, page_size=500),
            metadata=stack.ledger.md(agency),
        ).deliveries
        if d.channel == "webhook"
    ]


def incident_with_events(stack: Stack, actions: int) -> tuple[str, list[int]]:
    """An incident with 3 + ``actions`` events; their positions."""
    s, md = stack.ledger.stub, stack.ledger.md
    first = stack.ledger.report("polres")
    name = first.incident
    positions = [first.position]
    positions.append(
        s.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
        ).result.position
    )
    positions.append(
        s.AssignLeadAgency(
            api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
            metadata=md("desk_pilkada"),
        ).result.position
    )
    for n in range(actions):
        positions.append(
            s.LogAction(
                api.LogActionRequest(request_id=rid(), name=name, action=f"patrol {n}"),
                metadata=md("polres"),
            ).result.position
        )
    return name, positions


# ------------------------------------------------------------------ idle, then paced


def test_after_an_idle_spell_paced_events_arrive_quickly_and_the_consumer_never_restarts(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The issue's measurement: idle longer than the fetch timeout, then paced events.

    Before, an idle fetch could end in the built-in TimeoutError, which restarted the
    consumer with a backoff that was never reset (pauses up to 5 s, webhook p99 2.2 s).
    The notifier runs as its own process (as deployed: no interpreter shared with the
    ledger and the receiver), and latency is measured from the moment each event was
    stored in the stream, so that the figure is the notifier's, not the relay's.
    """
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
        webhook_receiver() as receiver,
        service_process(
            "services.notifier",
            {
                "LEDGER_DATA_DIR": str(tmp_path / "data"),
                # Port 0, read back from the start line: a port picked free here could be
                # taken before the notifier bound it.
                "NOTIFIER_METRICS_LISTEN": "127.0.0.1:0",
                "NATS_URL": nats_server.url,
                **ALLOW_LOOPBACK_ENV,
            },
        ) as notifier,
        grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel,
    ):
        metrics_port = notifier.metrics_port
        napi_grpc.NotifierServiceStub(channel).CreateWebhook(
            napi.CreateWebhookRequest(request_id=rid(), url=receiver.url, secret=WEBHOOK_SECRET),
            metadata=ledger.md("polres"),
        )
        ledger.report("polres")  # the consumer is up and delivering
        wait_until(lambda: len(receiver.verified()) == 1, what="the first delivery")
        # The idle spell is what this test is about: several fetches find nothing.
        time.sleep(8 * FETCH_SECONDS)
        results = []
        for _ in range(200):  # a p99 of 200 is the third slowest, not one scheduling hiccup
            results.append(ledger.report("polres"))
            time.sleep(0.1)  # paced events, as in the issue (1/s there; 10/s here)
        wait_until(lambda: len(receiver.verified()) == 1 + len(results), what="every delivery")
        stored = stream_times(nats_server.url)
        in_order = [round((r.at - stored[cursor_seq(r)]) * 1000) for r in receiver.verified()[1:]]
        restarts = Scrape(metrics_port).value("notifier_consumer_restarts_total")
    latencies = sorted(in_order)
    p99 = latencies[max(0, round(0.99 * len(latencies)) - 1)]
    assert latencies[0] >= 0, "each was stored before it was delivered (one clock)"
    # Before the consumer waited with a fetch of one message, one run in three had every
    # other event about 110 ms late (a batch fetch held up by a pull request an earlier
    # fetch had left on the server): p99 120-170 ms.
    assert p99 < 100, f"webhook latency p99 {p99} ms (ms, in order: {in_order})"
    assert restarts == 0, "an idle fetch is normal: the consumer is never set up again"


def test_waiting_for_the_stream_at_a_first_start_is_no_restart_and_a_lost_consumer_is(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A notifier started before any ledger waits for the stream its relay will make: that
    is no failure, and ``notifier_consumer_restarts_total`` stays 0 (the idle-spell test
    above holds it at 0, and failed in CI when the relay, in a process of its own, made the
    stream after the notifier's first try). A consumer lost once consuming is a restart."""
    with service_process(
        "services.notifier",
        {
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "NOTIFIER_METRICS_LISTEN": "127.0.0.1:0",  # read back: see the test above
            "NATS_URL": nats_server.url,
        },
    ) as notifier:
        metrics_port = notifier.metrics_port

        def logged(event: str) -> int:
            return sum(line.get("event") == event for line in notifier.log_lines())

        wait_until(lambda: logged("notifier.consumer_waiting") >= 2, what="two waits")
        assert Scrape(metrics_port).value("notifier_consumer_restarts_total") == 0
        relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
        with (
            store_environment("sqlite", tmp_path) as store_env,
            running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
        ):
            ledger.report("polres")
            wait_until(lambda: logged("notifier.consuming") == 1, what="the consumer")
            assert Scrape(metrics_port).value("notifier_consumer_restarts_total") == 0
            assert logged("notifier.consumer_failed") == 0

            asyncio.run(delete_consumer(nats_server.url, "notifier"))
            wait_until(lambda: logged("notifier.consuming") == 2, what="the consumer again")
        assert logged("notifier.consumer_failed") >= 1
        assert (Scrape(metrics_port).value("notifier_consumer_restarts_total") or 0) >= 1


def test_a_notifier_without_webhooks_asks_nats_nothing_per_event(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Only stored deliveries wait for the consumer's ack floor: a notifier that serves
    subscribers alone reads it on the metrics' turn (every 5 s), not after each batch. Each
    read is a JetStream API request, which the server counts (``/jsz``); events sent one at
    a time made one batch each, and a read each, before."""
    events = 20
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
        service_process(
            "services.notifier",
            {"LEDGER_DATA_DIR": str(tmp_path / "data"), "NATS_URL": nats_server.url},
        ) as notifier,
        grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel,
    ):
        subscriber = Subscriber.when_ready(
            napi_grpc.NotifierServiceStub(channel),
            ledger.md("polres"),
            napi.SubscribeRequest(heartbeat_seconds=5),
        )
        ledger.report("polres")
        subscriber.wait_for(1)
        wait_acked(nats_server, 1)
        before = js_api_requests(nats_server)
        for n in range(2, events + 2):
            ledger.report("polres")
            subscriber.wait_for(n)
            wait_acked(nats_server, n)  # the next event only then: a batch of its own
        requests = js_api_requests(nats_server) - before
        subscriber.close()
    # The metrics' reads of the consumer, one every 5 s, and the odd request of the
    # relay: a handful, against one per event or more before.
    assert requests < events // 2, f"{requests} JetStream API requests for {events} events"


def test_a_webhook_s_events_one_by_one_cost_no_floor_read_each(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Events one at a time, each delivered to a webhook: each makes a batch of its own,
    which follows the floor with no gap, so the floor moves over it without a read of the
    consumer (one JetStream API request a batch, before)."""
    events = 20
    with stack_with(tmp_path, nats_server) as stack, webhook_receiver() as receiver:
        create_webhook(stack, receiver.url)
        stack.ledger.report("polres")
        wait_delivered(receiver, 1)
        wait_acked(nats_server, 1)
        before = js_api_requests(nats_server)
        for n in range(2, events + 2):
            stack.ledger.report("polres")
            wait_delivered(receiver, n)
            wait_acked(nats_server, n)  # the next event only then: a batch of its own
        requests = js_api_requests(nats_server) - before
    assert len(receiver.verified()) == events + 1, "each event delivered once"
    # The metrics' reads of the consumer, one every 5 s, and the odd request of the
    # relay: a handful, against one per event or more before.
    assert requests < events // 2, f"{requests} JetStream API requests for {events} events"


def wait_delivered(receiver: WebhookReceiver, count: int) -> None:
    wait_until(lambda: len(receiver.verified()) >= count, what=f"{count} deliveries")


def js_api_requests(server: NatsServer) -> int:
    """The JetStream API requests the server has answered (its monitoring page)."""
    return int(server.monitoring("/jsz")["api"]["total"])


def wait_acked(server: NatsServer, seq: int) -> None:
    wait_until(lambda: durable_acked(server) >= seq, what=f"the durable consumer to ack {seq}")


def durable_acked(server: NatsServer, consumer: str = "notifier") -> int:
    """The stream sequence the durable consumer has acknowledged through (monitoring, which
    is no API request); 0 before it exists."""
    found = consumer_detail(server, consumer)
    return int(found["ack_floor"]["stream_seq"]) if found else 0


def consumer_detail(server: NatsServer, consumer: str) -> dict[str, Any] | None:
    """The consumer's state as the server's monitoring page gives it; None before it exists."""
    jsz = server.monitoring("/jsz?consumers=true")
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            for found in stream.get("consumer_detail") or []:
                if found.get("name") == consumer:
                    return dict(found)
    return None


async def delete_consumer(url: str, consumer: str, stream: str = "LEDGER_EVENTS") -> None:
    client = await nats.connect(url)
    try:
        await client.jetstream().delete_consumer(stream, consumer)
    finally:
        await client.close()


def cursor_seq(received: Any) -> int:
    return int(received.json["cursor"].rpartition(".")[2])


def stream_times(url: str, stream: str = "LEDGER_EVENTS") -> dict[int, float]:
    """When each message of the stream was stored (server clock: this machine's)."""

    async def read() -> dict[int, float]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            state = (await js.stream_info(stream)).state
            found = {}
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                found[seq] = parse_time(msg.time)
            return found
        finally:
            await client.close()

    return asyncio.run(read())


def parse_time(value: object) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).replace("Z", "+00:00")
    whole, _, rest = text.partition(".")
    fraction, sign, zone = rest.partition("+")
    # RFC 3339 with nanoseconds: Python takes at most microseconds.
    return datetime.fromisoformat(f"{whole}.{fraction[:6] or '0'}{sign}{zone}").timestamp()


def test_a_backlog_fetched_in_batches_is_acknowledged_message_by_message(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A backlog comes to the consumer in batches, each acknowledged with one confirmation
    (the last ack's). Every message is acknowledged all the same: the deliveries go out well
    before any message could come again (ack_wait: 60 s here), and then the durable
    consumer's ack floor is the stream's last message, with no ack pending."""
    events = 30
    with (
        stack_with(tmp_path, nats_server, ack_wait_seconds=60.0) as stack,
        webhook_receiver() as receiver,
    ):
        create_webhook(stack, receiver.url)
        engine = stack.notifier.engine
        release = threading.Event()
        held = threading.Event()

        async def hold_up() -> None:
            held.set()
            release.wait(30)  # the consumer's loop, blocked: the stream's messages wait

        with ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(engine.call, hold_up(), 40)
            assert held.wait(10), "the engine's loop took the call"
            try:
                for _ in range(events):
                    stack.ledger.report("polres")
                wait_until(
                    lambda: stream_last_seq(nats_server) >= events,
                    what=f"{events} events on the stream",
                )
            finally:
                release.set()
            blocked.result(10)
        wait_until(
            lambda: len(receiver.verified()) >= events,
            timeout=30,
            what=f"{events} deliveries (before any message could come again)",
        )
        last = stream_last_seq(nats_server)
        wait_until(lambda: durable_acked(nats_server) >= last, what="the ack floor at the end")
        assert durable_ack_pending(nats_server) == 0
        assert len(receiver.verified()) == events, "each event delivered once"


def stream_last_seq(server: NatsServer, stream: str = "LEDGER_EVENTS") -> int:
    """The stream's last sequence (monitoring, which is no API request)."""
    jsz = server.monitoring("/jsz?streams=true")
    for account in jsz.get("account_details") or []:
        for found in account.get("stream_detail") or []:
            if found.get("name") == stream:
                return int(found["state"]["last_seq"])
    return 0


def durable_ack_pending(server: NatsServer, consumer: str = "notifier") -> int:
    """Messages delivered to the durable consumer and not acknowledged yet (monitoring)."""
    found = consumer_detail(server, consumer)
    assert found is not None, f"no consumer {consumer!r} on the server"
    return int(found["num_ack_pending"])


# --------------------------------------------------------------- slow endpoint, no dups


def test_a_slow_healthy_endpoint_gets_each_event_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """40 events, 1 s answers, 4 at a time: the last ones wait 10 s for their turn, longer
    than the lease (3 timeouts = 6 s). Before, they were claimed again: 62 POSTs for 40."""
    slow = WebhookSettings(
        timeout_seconds=2.0,
        backoff_seconds=0.05,
        max_backoff_seconds=0.1,
        per_endpoint_concurrency=4,  # so that the last deliveries wait beyond a lease
    )
    events = 40
    with stack_with(tmp_path, nats_server, webhooks=slow) as stack, webhook_receiver() as receiver:
        receiver.delay = 1.0
        create_webhook(stack, receiver.url)
        for _ in range(events):
            stack.ledger.report("polres")

        def done() -> bool:
            return sum(d.outcome == "delivered" for d in webhook_log(stack)) == events

        wait_until(done, timeout=90, what="every delivery recorded")
        posts = len(receiver.received)
        unique = len(receiver.verified())
    assert unique == events
    assert posts == events, f"{posts} POSTs for {events} events"


# --------------------------------------------------------------- dead letters in order


def test_dead_letters_are_listed_and_replayed_in_position_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    once = WebhookSettings(max_attempts=1, timeout_seconds=1.0)
    with stack_with(tmp_path, nats_server, webhooks=once) as stack, webhook_receiver() as receiver:
        receiver.status = 503
        create_webhook(stack, receiver.url)
        name, positions = incident_with_events(stack, actions=5)
        wait_until(lambda: len(dead_letters(stack)) == len(positions), what="dead letters")
        listed = dead_letters(stack, page_size=3)  # over pages, too
        assert [d.position for d in listed] == sorted(positions)
        assert all(d.incident == name and d.last_error == "HTTP 503" for d in listed)

        receiver.status = 204
        md = stack.ledger.md("polres")
        for dead in reversed(listed):  # the worst order a client could choose
            stack.stub.ReplayDeadLetter(napi.ReplayDeadLetterRequest(name=dead.name), metadata=md)
        wait_until(lambda: len(receiver.verified()) == len(positions), what="the replays")
        arrived = [r.json["position"] for r in receiver.verified()]
        assert dead_letters(stack) == []
    assert arrived == sorted(positions), "an incident's events arrive in order"


# ------------------------------------------------------- every attempt has an outcome


def test_a_url_with_an_invalid_port_is_refused_and_a_stored_one_ends_in_a_dead_letter(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with stack_with(tmp_path, nats_server, webhooks=QUICK) as stack:
        for url in ["http://127.0.0.1:99999/", "http://[::1"]:
            with pytest.raises(grpc.RpcError) as refused:
                create_webhook(stack, url)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            info = error_info(refused.value)  # type: ignore[arg-type]
            assert info is not None
            assert (info.reason, dict(info.metadata)) == ("INVALID_FIELD", {"field": "url"})
        # One stored before the check: its deliveries end (OverflowError before: in flight
        # for ever, and the incident's later events waited behind it).
        store_webhook(stack, "http://127.0.0.1:99999/")
        _, positions = incident_with_events(stack, actions=1)
        wait_until(lambda: len(dead_letters(stack)) == len(positions), what="dead letters")
        (error,) = {d.last_error for d in dead_letters(stack)}
        assert {d.attempts for d in dead_letters(stack)} == {QUICK.max_attempts}
    assert "Overflow" not in error and "99999" not in error


def test_a_delivery_whose_outcome_the_store_cannot_take_at_once_is_not_posted_again(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The store fails while the outcome is written (here: once, "database is locked").
    Before, the task's exception went unobserved, the job stayed leased and was POSTed
    again when its lease ran out; now the write is retried."""
    with (
        stack_with(tmp_path, nats_server, webhooks=QUICK) as stack,
        webhook_receiver() as receiver,
    ):
        store = stack.notifier.store
        real_finish = store.finish_all  # the outcomes of the deliveries ended meanwhile
        failures: list[str] = []

        def flaky_finish(*args: Any, **kwargs: Any) -> None:
            if not failures:
                failures.append("failed once")
                raise sqlite3.OperationalError("database is locked")
            real_finish(*args, **kwargs)

        store.finish_all = flaky_finish  # type: ignore[method-assign]
        create_webhook(stack, receiver.url)
        stack.ledger.report("polres")
        wait_until(lambda: [d.outcome for d in webhook_log(stack)] == ["delivered"], what="log")
        # Longer than the lease (3 timeouts): a job left leased would be POSTed again by now.
        deadline = time.monotonic() + 4 * QUICK.timeout_seconds
        wait_until(
            lambda: len(receiver.received) > 1 or time.monotonic() > deadline,
            timeout=10,
            what="the lease to pass",
        )
        assert failures == ["failed once"]
        assert len(receiver.received) == 1
        assert [d.outcome for d in webhook_log(stack)] == ["delivered"]


def test_an_endpoint_slot_is_free_once_it_answered_and_an_incident_keeps_its_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """One slot at the endpoint, and the store holding the first delivery's outcome back:
    the next incident's event is POSTed meanwhile (before, the slot stayed taken until the
    outcome was stored); the first incident's next event waits for that outcome."""
    one_slot = WebhookSettings(
        timeout_seconds=5.0,  # a lease of 15 s: never runs out while the outcome is held
        backoff_seconds=0.05,
        max_backoff_seconds=0.1,
        per_endpoint_concurrency=1,
    )
    with (
        stack_with(tmp_path, nats_server, webhooks=one_slot) as stack,
        webhook_receiver() as receiver,
    ):
        store = stack.notifier.store
        real_finish = store.finish_all
        held = threading.Event()  # an outcome reached the store
        release = threading.Event()

        def held_finish(*args: Any, **kwargs: Any) -> None:
            held.set()
            if not release.wait(timeout=30):
                raise sqlite3.OperationalError("the test never let the outcome through")
            real_finish(*args, **kwargs)

        store.finish_all = held_finish  # type: ignore[method-assign]
        create_webhook(stack, receiver.url)
        first = stack.ledger.report("polres")
        wait_until(held.is_set, what="the first delivery's outcome at the store")
        try:
            stack.ledger.stub.VerifyIncident(
                api.VerifyIncidentRequest(request_id=rid(), name=first.incident),
                metadata=stack.ledger.md("desk_pilkada"),
            )
            second = stack.ledger.report("polres")

            def incidents() -> list[str]:
                return [r.json["event"]["incident"] for r in receiver.verified()]

            wait_until(
                lambda: second.incident in incidents(),
                timeout=10,
                what="the other incident's event POSTed while the first outcome is held",
            )
            assert incidents() == [first.incident, second.incident], "no event of the first"
        finally:
            release.set()
        wait_until(lambda: len(receiver.verified()) == 3, what="every event delivered")
        wait_until(
            lambda: [d.outcome for d in webhook_log(stack)] == ["delivered"] * 3,
            what="every outcome recorded",
        )
        bodies = [r.json for r in receiver.verified()]
    mine = [b["position"] for b in bodies if b["event"]["incident"] == first.incident]
    assert len(mine) == 2 and mine == sorted(mine), "the first incident's events in order"
    assert len(receiver.received) == 3, "each event POSTed once"


# ----------------------------------------------------------------- refused targets


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10:8080/hook",
        "http://agency:s3cret-pw@93.184.216.34/hook",
    ],
)
def test_internal_targets_are_refused_unless_allowed(
    tmp_path: Path, nats_server: NatsServer, url: str
) -> None:
    with (
        stack_with(tmp_path, nats_server, allow_networks=()) as stack,
        webhook_receiver() as receiver,
    ):
        with pytest.raises(grpc.RpcError) as refused:
            create_webhook(stack, url.format(port=receiver.port))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "s3cret" not in (refused.value.details() or "")
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert info is not None and dict(info.metadata) == {"field": "url"}
        assert webhook_list(stack) == []


def webhook_list(stack: Stack) -> list[str]:
    return [
        w.url
        for w in stack.stub.ListWebhooks(
            napi.ListWebhooksRequest(), metadata=stack.ledger.md("polres")
        ).webhooks
    ]


def test_at_delivery_a_target_resolving_to_a_refused_address_is_never_contacted(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Rows that passed registration once (a name resolving elsewhere since, DNS rebinding,
    or stored before): each delivery resolves and checks again, and never connects."""
    with (
        stack_with(tmp_path, nats_server, webhooks=QUICK, allow_networks=()) as stack,
        webhook_receiver() as receiver,
    ):
        store_webhook(stack, f"http://localhost:{receiver.port}/hook")
        store_webhook(stack, f"http://127.0.0.1:{receiver.port}/hook")
        store_webhook(stack, f"http://agency:s3cret-pw@127.0.0.1:{receiver.port}/hook")
        stack.ledger.report("polres")
        wait_until(lambda: len(dead_letters(stack)) == 3, what="three dead letters")
        errors = {d.last_error for d in dead_letters(stack)}
        shown = webhook_list(stack)
    assert receiver.received == [], "nothing reached the refused address"
    assert len(errors) == 1 and "refused" in errors.pop()
    assert not any("s3cret" in url for url in shown), "credentials are never echoed back"


@contextmanager
def raw_tcp_server(answer: bytes) -> Iterator[int]:
    """Something on a port that is not an HTTP server: it says ``answer`` and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    while conn.recv(65536):  # the rest of the request: then no reset
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stopping.set()
        thread.join(5)
        server.close()


def test_last_error_names_the_kind_of_failure_never_what_the_target_answered(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    banner = b"SSH-2.0-OpenSSH_9.6 internal-build-host-7\r\n\r\n"
    with (
        stack_with(tmp_path, nats_server, webhooks=QUICK) as stack,
        raw_tcp_server(banner) as port,
        webhook_receiver() as failing,
    ):
        failing.status = 500
        create_webhook(stack, f"http://127.0.0.1:{port}/hook")
        create_webhook(stack, failing.url)
        stack.ledger.report("polres")
        wait_until(lambda: len(dead_letters(stack)) == 2, what="two dead letters")
        errors = sorted(d.last_error for d in dead_letters(stack))
        logged = {d.error for d in webhook_log(stack)}
    assert "HTTP 500" in errors
    for text in [*errors, *logged]:
        assert "SSH" not in text and "internal-build-host" not in text, text


def test_a_stopping_notifier_lets_the_deliveries_under_way_finish(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """docs/operations.md: a stop lets the webhook deliveries under way finish. The delivery
    loop closed its HTTP session as soon as the stop began, under the deliveries still
    running: each failed ("Session is closed", a warning) and counted as an attempt."""
    receiver = WebhookReceiver(delay=1.5)  # every delivery is under way for 1.5 s
    receiver.start()
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    try:
        with (
            store_environment("sqlite", tmp_path) as store_env,
            running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
        ):
            notifier = build_notifier(notifier_settings(tmp_path, nats_server.url))
            try:
                wait_fanout_ready(ledger, notifier)
                with grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
                    napi_grpc.NotifierServiceStub(channel).CreateWebhook(
                        napi.CreateWebhookRequest(
                            request_id=rid(), url=receiver.url, secret=WEBHOOK_SECRET
                        ),
                        metadata=ledger.md("polres"),
                        timeout=10,
                    )
                for _ in range(3):
                    ledger.report("polres")
                wait_until(lambda: receiver.arrivals == 3, what="three deliveries under way")
            finally:
                with capture_logs() as logs:
                    notifier.stop(5.0)
        assert len(receiver.verified()) == 3
        said = [x["event"] for x in logs]
        assert "webhook.delivery_error" not in said, said
        assert "webhook.delivery_failed" not in said, said
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "notifier.sqlite")) as db:
            rows = db.execute("SELECT status, attempts FROM delivery_jobs").fetchall()
        assert rows == [("delivered", 1)] * 3, rows
    finally:
        receiver.stop()
