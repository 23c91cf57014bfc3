"""The fan-out end to end: ledger -> relay -> JetStream -> notifier -> subscribers.

Every test runs a real nats-server (bundled binary, free ports), the real ledger
with its relay and the real notifier, and real subscribers: gRPC streams and an
HTTP webhook receiver.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import grpc
import nats
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import RelaySettings, StreamSettings, WebhookSettings
from services.common.grpc_errors import error_info, localized_message
from services.common.natsserver import NatsServer
from services.ledger.relay import ensure_stream
from services.notifier.engine import Engine
from services.notifier.server import build as build_notifier
from tests.fanout_support import (
    ALLOW_LOOPBACK_ENV,
    WEBHOOK_SECRET,
    Stack,
    Subscriber,
    WebhookReceiver,
    notifier_settings,
    read_stream,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.support import (
    dev_tokens,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)

pytestmark = pytest.mark.nats


def rid() -> str:
    return secrets.token_hex(8)


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url) as running,
    ):
        yield running


def create_webhook(stack: Stack, receiver: WebhookReceiver, agency: str, **filt: object) -> str:
    response = stack.stub.CreateWebhook(
        napi.CreateWebhookRequest(
            request_id=rid(),
            url=receiver.url,
            secret=WEBHOOK_SECRET,
            filter=napi.EventFilter(**filt),  # type: ignore[arg-type]
        ),
        metadata=stack.ledger.md(agency),
    )
    return response.webhook.name


def test_an_event_reaches_a_grpc_subscriber_and_a_webhook_with_the_same_envelope(
    stack: Stack,
) -> None:
    with webhook_receiver() as receiver:
        create_webhook(stack, receiver, "bpbd", kecamatan=["air_manjunto"])
        subscriber = stack.subscribe("bpbd", filter=napi.EventFilter(kecamatan=["air_manjunto"]))
        stack.ledger.report("kesbangpol")  # elsewhere: matches neither
        result = stack.ledger.report(
            "bpbd",
            title="Flood threatens TPS 03",
            category="flood",
            severity="high",
            location=pb.Location(kecamatan="air_manjunto", desa="Pondok Baru", tps="TPS 03"),
        )
        subscriber.wait_for(1)
        wait_until(lambda: len(receiver.verified()) >= 1, what="the webhook delivery")
        subscriber.close()

    streamed = subscriber.notifications[0].notification
    assert streamed.event.incident == result.incident
    assert streamed.event.event_id == result.event_id
    assert streamed.event.position == result.position
    assert streamed.event.type == "Reported"
    assert streamed.event.actor.agency == "bpbd"
    assert streamed.incident.severity == "high"
    delivered = receiver.verified()
    assert len(delivered) == 1
    body = delivered[0].json
    assert body["event"] == json_format.MessageToDict(
        streamed.event, preserving_proto_field_name=True
    )
    assert body["incident"]["name"] == result.incident
    assert delivered[0].headers["X-Ledger-Event-Id"] == result.event_id


def test_involved_agencies_are_notified_without_being_addressed(stack: Stack) -> None:
    satpol = stack.subscribe("satpolpp", filter=napi.EventFilter(involving_my_agency=True))
    name = stack.ledger.report("polres").incident
    s, md = stack.ledger.stub, stack.ledger.md
    s.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    )
    s.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
        metadata=md("desk_pilkada"),
    )
    s.AddSupportingAgency(
        api.AddSupportingAgencyRequest(request_id=rid(), name=name, agency="satpolpp"),
        metadata=md("polres"),
    )
    s.LogAction(
        api.LogActionRequest(request_id=rid(), name=name, action="patrol"), metadata=md("polres")
    )
    satpol.wait_for(2)
    satpol.close()
    types = [r.notification.event.type for r in satpol.notifications]
    assert types == ["SupportingAgencyAdded", "ActionLogged"]

    def logged() -> list[napi.DeliveryRecord]:
        return list(
            stack.stub.ListDeliveries(
                napi.ListDeliveriesRequest(incident=name), metadata=stack.ledger.md("satpolpp")
            ).deliveries
        )

    wait_until(lambda: len(logged()) == 2, what="the live deliveries in the delivery log")
    assert {(d.agency, d.channel, d.target, d.outcome) for d in logged()} == {
        ("satpolpp", "grpc", "dev-satpolpp", "delivered")
    }


def test_the_event_that_takes_an_incident_out_of_a_filter_still_reaches_its_followers(
    stack: Stack,
) -> None:
    """A filter takes an event when the incident matches it before or after the event: the
    lead that hands over, and the subscriber of high severity whose incident is lowered,
    each receive that event as their last of it (before, never: their copy kept the state
    the filter had last seen). Nothing after it, and nothing that matched neither."""
    s, md = stack.ledger.stub, stack.ledger.md
    with webhook_receiver() as receiver:
        create_webhook(stack, receiver, "bpbd", min_severity="high")
        police = stack.subscribe("polres", filter=napi.EventFilter(involving_my_agency=True))
        severe = stack.subscribe("bpbd", filter=napi.EventFilter(min_severity="high"))
        name = stack.ledger.report("kesbangpol", severity="high").incident
        s.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
        )
        s.AssignLeadAgency(
            api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
            metadata=md("desk_pilkada"),
        )
        s.ProposeHandover(
            api.ProposeHandoverRequest(
                request_id=rid(), name=name, to_agency="satpolpp", reason="crowd control"
            ),
            metadata=md("polres"),
        )
        s.AcceptHandover(
            api.AcceptHandoverRequest(request_id=rid(), name=name), metadata=md("satpolpp")
        )
        s.AssessSeverity(
            api.AssessSeverityRequest(request_id=rid(), name=name, severity="low"),
            metadata=md("desk_pilkada"),
        )
        s.LogAction(
            api.LogActionRequest(request_id=rid(), name=name, action="patrol"),
            metadata=md("satpolpp"),
        )
        # A last event each filter takes: whatever came before it has been delivered.
        marker = stack.ledger.report("polres", severity="high").incident
        police.wait_for(4)
        severe.wait_for(7)
        wait_until(lambda: len(receiver.verified()) >= 7, what="the webhook deliveries")
        police.close()
        severe.close()

    def seen(notifications: list[pb.EventNotification]) -> list[tuple[str, str]]:
        return [
            (n.event.type, "marker" if n.event.incident == marker else "") for n in notifications
        ]

    assert seen([r.notification for r in police.notifications]) == [
        ("LeadAssigned", ""),
        ("HandoverProposed", ""),
        ("HandoverAccepted", ""),  # polres led until it: its last
        ("Reported", "marker"),
    ]
    expected_severe = [
        ("Reported", ""),
        ("Verified", ""),
        ("LeadAssigned", ""),
        ("HandoverProposed", ""),
        ("HandoverAccepted", ""),
        ("SeverityAssessed", ""),  # high until it: its last
        ("Reported", "marker"),
    ]
    assert seen([r.notification for r in severe.notifications]) == expected_severe
    delivered = sorted(receiver.verified(), key=lambda d: int(d.json["position"]))
    assert [
        (d.json["event"]["type"], "marker" if d.json["event"]["incident"] == marker else "")
        for d in delivered
    ] == expected_severe
    lowered = severe.notifications[5].notification
    assert (lowered.before.severity, lowered.incident.severity) == ("high", "low")
    assert not severe.notifications[0].notification.HasField("before")  # its first event


def test_a_subscriber_resuming_from_its_cursor_gets_exactly_what_it_missed(stack: Stack) -> None:
    first = stack.subscribe("polres")
    names = [stack.ledger.report().incident for _ in range(3)]
    first.wait_for(3)
    first.close()
    cursor = first.notifications[-1].cursor
    missed = [stack.ledger.report().incident for _ in range(4)]
    again = stack.subscribe("polres", cursor=cursor)
    again.wait_for(4)
    more = stack.ledger.report().incident
    again.wait_for(5)
    again.close()
    assert [r.notification.event.incident for r in first.notifications] == names
    assert [r.notification.event.incident for r in again.notifications] == [*missed, more]


def delete_stream(url: str, stream: str = "LEDGER_EVENTS") -> None:
    async def delete() -> None:
        client = await nats.connect(url)
        try:
            await client.jetstream().delete_stream(stream)
        finally:
            await client.close()

    asyncio.run(delete())


def test_a_cursor_of_a_stream_made_again_is_refused_not_resumed_past_new_events(
    stack: Stack, nats_server: NatsServer
) -> None:
    """NATS lost the stream (its data, or a machine restored from backups without it): the
    relay makes it again and publishes the ledger's events again, numbered from 1. A
    subscriber's cursor counts in the stream that is gone: resumed by its number, it
    skipped the events recorded since (or was told it was "not from this notifier")."""
    first = stack.subscribe("polres")
    for _ in range(3):
        stack.ledger.report()
    first.wait_for(3)
    first.close()
    cursor = first.notifications[-1].cursor
    delete_stream(nats_server.url)
    stack.ledger.report()  # the relay finds the stream gone, makes it again, publishes all
    wait_until(lambda: len(read_stream(nats_server.url)) >= 4, 30)  # past the cursor
    md = stack.ledger.md("polres")
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stack.stub.Subscribe(napi.SubscribeRequest(cursor=cursor), metadata=md)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "CURSOR_EXPIRED", info
    assert "made again" in (caught.value.details() or "")
    # A cursor of the new stream resumes as ever.
    fresh = stack.subscribe("polres")
    later = stack.ledger.report().incident
    fresh.wait_for(1)
    fresh.close()
    assert [r.notification.event.incident for r in fresh.notifications] == [later]


def test_a_subscriber_connected_while_the_stream_is_made_again_is_told_to_start_over(
    stack: Stack, nats_server: NatsServer
) -> None:
    """The client library carries a live subscriber's ordered consumer over to a stream made
    again from the old stream's sequence: after a restore (the new stream numbering fewer
    events) it silently skipped every new event numbered at or below it, and the events that
    did come carried cursors of the stream that is gone. Now the subscription ends with
    CURSOR_EXPIRED, as a resume from such a cursor does."""
    watching = stack.subscribe("polres")
    for _ in range(3):
        stack.ledger.report()
    watching.wait_for(3)
    epoch = watching.notifications[-1].cursor.split(".")[1]
    delete_stream(nats_server.url)
    stack.ledger.report()  # the relay makes the stream again, publishes everything again
    wait_until(lambda: watching.error is not None, 30, what="the subscription ended")
    assert watching.error is not None
    assert watching.error.code() == grpc.StatusCode.FAILED_PRECONDITION, watching.error
    info = error_info(watching.error)  # type: ignore[arg-type]
    assert info is not None and info.reason == "CURSOR_EXPIRED", info
    assert "made again while you were subscribed" in (watching.error.details() or "")
    assert all(r.cursor.split(".")[1] == epoch for r in watching.notifications)
    assert len(watching.notifications) == 3, "nothing from the new stream under the old epoch"


def test_an_unknown_code_in_a_filter_is_named_in_the_caller_s_language(stack: Stack) -> None:
    """The notifier refused codes the reference data does not have with the field alone:
    the ledger's refusals carry check, value and what, so that a message in the caller's
    language says which value it was (docs/api.md, INVALID_FIELD)."""
    md = (*stack.ledger.md("polres"), ("accept-language", "id"))
    refusals: list[tuple[Callable[[], object], str, str]] = [
        (
            lambda: stack.stub.CreateWebhook(
                napi.CreateWebhookRequest(
                    request_id=rid(),
                    url="http://127.0.0.1:9/h",
                    secret=WEBHOOK_SECRET,
                    filter=napi.EventFilter(kecamatan=["atlantis"]),
                ),
                metadata=md,
            ),
            "atlantis",
            "kecamatan",
        ),
        (
            lambda: stack.stub.ListDeliveries(
                napi.ListDeliveriesRequest(agency="fbi"), metadata=md
            ),
            "fbi",
            "agency",
        ),
        (
            lambda: next(
                iter(
                    stack.stub.Subscribe(
                        napi.SubscribeRequest(filter=napi.EventFilter(min_severity="apocalyptic")),
                        metadata=md,
                    )
                )
            ),
            "apocalyptic",
            "severity",
        ),
    ]
    for call, value, what in refusals:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        info = error_info(caught.value)  # type: ignore[arg-type]
        assert info is not None, caught.value
        assert (info.metadata["check"], info.metadata["value"], info.metadata["what"]) == (
            "unknown",
            value,
            what,
        ), info
        said = localized_message(caught.value)  # type: ignore[arg-type]
        assert said is not None and value in said.message, (value, said)


def test_bad_input_to_the_notifier_is_invalid_and_stores_nothing(stack: Stack) -> None:
    md = stack.ledger.md("polres")
    bad_requests = [
        napi.CreateWebhookRequest(request_id=rid(), url="ftp://x/y", secret=WEBHOOK_SECRET),
        napi.CreateWebhookRequest(request_id=rid(), url="not a url", secret=WEBHOOK_SECRET),
        napi.CreateWebhookRequest(request_id=rid(), url="http://127.0.0.1:9/h", secret="short"),
        napi.CreateWebhookRequest(
            request_id=rid(),
            url="http://127.0.0.1:9/h",
            secret=WEBHOOK_SECRET,
            filter=napi.EventFilter(kecamatan=["atlantis"]),
        ),
        napi.CreateWebhookRequest(
            request_id=rid(),
            url="http://127.0.0.1:9/h",
            secret=WEBHOOK_SECRET,
            filter=napi.EventFilter(agencies=["fbi"]),
        ),
        napi.CreateWebhookRequest(
            request_id=rid(),
            url="http://127.0.0.1:9/h",
            secret=WEBHOOK_SECRET,
            filter=napi.EventFilter(min_severity="apocalyptic"),
        ),
        napi.CreateWebhookRequest(url="http://127.0.0.1:9/h", secret=WEBHOOK_SECRET),
    ]
    for request in bad_requests:
        with pytest.raises(grpc.RpcError) as caught:
            stack.stub.CreateWebhook(request, metadata=md)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        info = error_info(caught.value)  # type: ignore[arg-type]
        assert info is not None and info.domain == "notifier.incidentledger"
    assert list(stack.stub.ListWebhooks(napi.ListWebhooksRequest(), metadata=md).webhooks) == []
    subscribe_requests: list[napi.SubscribeRequest] = [
        napi.SubscribeRequest(filter=napi.EventFilter(event_types=["Exploded"])),
        napi.SubscribeRequest(cursor="yesterday"),
        napi.SubscribeRequest(heartbeat_seconds=-1),
    ]
    for subscribe in subscribe_requests:
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stack.stub.Subscribe(subscribe, metadata=md)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.ListDeliveries(napi.ListDeliveriesRequest(agency="fbi"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.ListWebhooks(napi.ListWebhooksRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_dead_endpoint_is_retried_then_dead_lettered_then_replayed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    quick_retries = WebhookSettings(
        max_attempts=3, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
    )
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url, webhooks=quick_retries) as stack,
        webhook_receiver() as receiver,
    ):
        receiver.status = 503
        create_webhook(stack, receiver, "dinkes")
        result = stack.ledger.report("dinkes", category="crowd_gathering")
        md = stack.ledger.md("dinkes")

        def dead_letters() -> list[napi.DeadLetter]:
            return list(
                stack.stub.ListDeadLetters(napi.ListDeadLettersRequest(), metadata=md).dead_letters
            )

        wait_until(lambda: len(dead_letters()) == 1, what="a dead letter")
        (dead,) = dead_letters()
        assert dead.event_id == result.event_id
        assert dead.attempts == 3
        assert dead.last_error == "HTTP 503"
        log = stack.stub.ListDeliveries(
            napi.ListDeliveriesRequest(incident=result.incident), metadata=md
        ).deliveries
        assert [(d.channel, d.outcome, d.attempt) for d in log] == [
            ("webhook", "failed", 1),
            ("webhook", "failed", 2),
            ("webhook", "dead_letter", 3),
        ]
        # Another agency can neither see nor replay it.
        assert (
            list(
                stack.stub.ListDeadLetters(
                    napi.ListDeadLettersRequest(), metadata=stack.ledger.md("kpu")
                ).dead_letters
            )
            == []
        )
        with pytest.raises(grpc.RpcError) as caught:
            stack.stub.ReplayDeadLetter(
                napi.ReplayDeadLetterRequest(name=dead.name), metadata=stack.ledger.md("kpu")
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        receiver.status = 204
        stack.stub.ReplayDeadLetter(napi.ReplayDeadLetterRequest(name=dead.name), metadata=md)
        wait_until(lambda: len(receiver.verified()) == 1, what="the replayed delivery")
        assert receiver.verified()[0].json["event"]["event_id"] == result.event_id
        assert dead_letters() == []


def test_nats_down_commands_go_on_and_the_backlog_drains_in_order(
    stack: Stack, nats_server: NatsServer
) -> None:
    with webhook_receiver() as receiver:
        create_webhook(stack, receiver, "polres")
        subscriber = stack.subscribe("polres")
        names = [stack.ledger.report().incident for _ in range(3)]
        subscriber.wait_for(3)
        health = health_pb2_grpc.HealthStub(stack.ledger.channel)

        nats_server.stop()
        escalations = []
        for name in names:
            for n in range(3):
                escalations.append(
                    stack.ledger.stub.EscalateIncident(
                        api.EscalateIncidentRequest(request_id=rid(), name=name, reason=f"r{n}"),
                        metadata=stack.ledger.md("kesbangpol"),
                    ).result
                )
        wait_until(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(service="relay")).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            what="the relay to report NOT_SERVING",
        )
        overall = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert overall.status == health_pb2.HealthCheckResponse.SERVING

        nats_server.start()
        subscriber.wait_for(12, timeout=60)
        wait_until(lambda: len(receiver.verified()) >= 12, timeout=60, what="12 webhook deliveries")
        subscriber.close()
        wait_until(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(service="relay")).status
                == health_pb2.HealthCheckResponse.SERVING
            ),
            what="the relay to serve again",
        )

    streamed = [r.notification.event for r in subscriber.notifications]
    assert len(streamed) == 12
    assert len({e.event_id for e in streamed}) == 12, "no event twice"
    positions = [e.position for e in streamed]
    assert positions == sorted(positions), "log order"
    for name in names:
        versions = [e.version for e in streamed if e.incident == name]
        assert versions == [1, 2, 3, 4], "every event, in order per incident"
    hooked = [json.loads(r.body)["event"] for r in receiver.verified()]
    assert sorted(e["event_id"] for e in hooked) == sorted(e.event_id for e in streamed)
    for name in names:
        versions = [int(e["version"]) for e in hooked if e["incident"] == name]
        assert versions == [1, 2, 3, 4]


def notifier_health(stack: Stack) -> int:
    answer = health_pb2_grpc.HealthStub(stack.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    return int(answer.status)


def test_while_nats_is_down_the_notifier_says_not_serving_and_logs_the_outage_once(
    stack: Stack, nats_server: NatsServer
) -> None:
    """A notifier without NATS delivers nothing: its health says so (a load balancer sends
    callers elsewhere), and its log says so once, not once per reconnection attempt (every
    0.5 s); once NATS is back, SERVING again, and one line with how long it was away."""
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert notifier_health(stack) == serving
    with capture_logs() as logs:
        nats_server.stop()
        try:
            wait_until(
                lambda: notifier_health(stack) == not_serving,
                what="the notifier's health to say NOT_SERVING while NATS is down",
            )
            wait_until(
                lambda: stack.notifier.engine.nats_link.failed_attempts >= 6,
                what="several failed attempts to reconnect",
            )
        finally:
            nats_server.start()
        wait_until(
            lambda: notifier_health(stack) == serving,
            what="the notifier's health to say SERVING again",
        )
    events = [line for line in logs if str(line["event"]).startswith("notifier.nats_")]
    names = [line["event"] for line in events]
    assert names.count("notifier.nats_disconnected") == 1, names
    assert names.count("notifier.nats_reconnected") == 1, names
    # Within the first minute of an outage, no line per attempt (and no reminder yet).
    assert names.count("notifier.nats_error") <= 1, names  # the lost connection's own cause
    assert "notifier.nats_unreachable" not in names, names
    back = next(line for line in events if line["event"] == "notifier.nats_reconnected")
    assert back["failed_attempts"] >= 6 and back["down_seconds"] > 0, back


def test_a_quiet_subscriber_gets_no_earlier_event_again_after_nats_comes_back(
    stack: Stack, nats_server: NatsServer
) -> None:
    """A live subscription that has received nothing since it subscribed (from now, or from
    a cursor) starts its stream over after NATS is back at its cursor, not at the stream's
    first message: before, it was sent every event the stream held again."""
    earlier = [stack.ledger.report().incident for _ in range(3)]
    wait_until(lambda: len(read_stream(nats_server.url)) >= 3, what="the reports on the stream")
    subscriber = stack.subscribe("polres")  # from now: after the three
    link = stack.notifier.engine.nats_link
    nats_server.stop()
    try:
        # Long enough for its consumer to miss its heartbeats and start over (every 2 s).
        wait_until(lambda: link.failed_attempts >= 8, what="an outage of a few seconds")
    finally:
        nats_server.start()
    wait_until(lambda: link.connected, what="the notifier back on NATS")
    later = stack.ledger.report().incident
    subscriber.wait_for(1)
    wait_until(
        lambda: any(r.notification.event.incident == later for r in subscriber.notifications),
        what="the report made after the outage",
    )
    subscriber.close()
    received = [r.notification.event.incident for r in subscriber.notifications]
    assert received == [later], f"sent again: {[n for n in received if n in earlier]}"


def stream_messages(url: str, stream: str = "LEDGER_EVENTS") -> list[tuple[int, int]]:
    """(stream sequence, ledger position) of every message in the stream, in order."""
    return [(m.seq, int(m.headers["Nats-Msg-Id"])) for m in read_stream(url, stream)]


def process_env(tmp_path: Path, store_env: dict[str, str], nats_url: str) -> dict[str, str]:
    return {
        **store_env,
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_LISTEN": "127.0.0.1:0",
        "NOTIFIER_LISTEN": "127.0.0.1:0",
        "NATS_URL": nats_url,
        **ALLOW_LOOPBACK_ENV,
    }


def report_many(address: str, tokens: dict[str, str], count: int) -> list[api.CommandResult]:
    channel = grpc.insecure_channel(address)
    stub = api_grpc.LedgerServiceStub(channel)
    md = (("authorization", f"Bearer {tokens['kesbangpol']}"),)

    def one(n: int) -> api.CommandResult:
        return stub.ReportIncident(
            api.ReportIncidentRequest(
                request_id=f"bulk-{n}",
                title=f"Report {n}",
                category="hoax",
                location=pb.Location(kecamatan="ipuh"),
            ),
            metadata=md,
        ).result

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(count)))
    channel.close()
    return results


def test_a_relay_killed_mid_backlog_resumes_with_no_loss_and_no_duplicate(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    env = process_env(tmp_path, {}, nats_server.url)
    env["LEDGER_RELAY_BATCH"] = "1"  # a slow relay, so that it can be caught mid-backlog
    total = 600
    with service_process("services.ledger", env) as ledger:
        nats_server.stop()
        results = report_many(f"127.0.0.1:{ledger.port}", dev_tokens(tmp_path / "data"), total)
        nats_server.start()

        def published() -> int:
            return len(stream_messages(nats_server.url)) if nats_server.running else 0

        wait_until(lambda: published() > 50, what="the relay to start draining")
        ledger.proc.kill()
        ledger.proc.wait(10)
    at_kill = published()
    assert at_kill < total, "the relay was killed before it drained the backlog"
    with service_process("services.ledger", env):
        wait_until(lambda: published() >= total, timeout=60, what="the backlog to drain")
    messages = stream_messages(nats_server.url)
    positions = [position for _, position in messages]
    assert len(positions) == len(set(positions)), "no event is in the stream twice"
    assert positions == sorted(positions), "log order"
    assert sorted(positions) == sorted(r.position for r in results), "every event is there"


def test_a_notifier_killed_mid_stream_resumes_with_no_loss_and_no_duplicate(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    total = 300
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(
            settings_for(tmp_path, store_env, relay=RelaySettings(nats_url=nats_server.url))
        ) as ledger,
        webhook_receiver() as receiver,
    ):
        env = process_env(tmp_path, {}, nats_server.url)
        env["NOTIFIER_ACK_WAIT_SECONDS"] = "2"  # unacknowledged messages come back sooner
        env["NOTIFIER_WEBHOOK_TIMEOUT_SECONDS"] = "1"  # and so do leased deliveries
        receiver.delay = 0.01
        with service_process("services.notifier", env) as notifier:
            channel = grpc.insecure_channel(f"127.0.0.1:{notifier.port}")
            stub = napi_grpc.NotifierServiceStub(channel)
            stub.CreateWebhook(
                napi.CreateWebhookRequest(
                    request_id="hook-1", url=receiver.url, secret=WEBHOOK_SECRET
                ),
                metadata=ledger.md("kpu"),
            )
            # The notifier's process may start before the relay has made the stream.
            subscriber = Subscriber.when_ready(stub, ledger.md("kpu"), napi.SubscribeRequest())
            results = report_many(ledger.address, ledger.tokens, total)
            wait_until(lambda: len(receiver.verified()) > 30, what="deliveries under way")
            notifier.proc.kill()
            notifier.proc.wait(10)
            channel.close()
        at_kill = len(receiver.verified())
        assert at_kill < total, "the notifier was killed before it delivered everything"
        subscriber.close()
        streamed_before = [r.notification.event.event_id for r in subscriber.notifications]
        cursor = subscriber.cursor
        with service_process("services.notifier", env) as notifier:
            channel = grpc.insecure_channel(f"127.0.0.1:{notifier.port}")
            stub = napi_grpc.NotifierServiceStub(channel)
            resumed = Subscriber(stub, ledger.md("kpu"), napi.SubscribeRequest(cursor=cursor))
            resumed.wait_for(total - len(streamed_before), timeout=60)
            wait_until(lambda: len(receiver.verified()) >= total, timeout=60, what="deliveries")
            resumed.close()
            channel.close()

    expected = [r.event_id for r in sorted(results, key=lambda r: r.position)]
    streamed = streamed_before + [r.notification.event.event_id for r in resumed.notifications]
    assert streamed == expected, "the stream resumed with no gap and no duplicate, in order"
    hooked = [r.json["event"]["event_id"] for r in receiver.verified()]
    assert sorted(hooked) == sorted(expected), "each event delivered under one delivery id"


def test_a_slow_endpoint_does_not_hold_up_the_others(stack: Stack) -> None:
    with webhook_receiver() as slow, webhook_receiver() as fast:
        slow.delay = 2.0  # answers, but only after 2 s each time
        create_webhook(stack, slow, "polres")
        create_webhook(stack, fast, "kodim")
        results = [stack.ledger.report(f"{agency}") for agency in ("polres", "kodim") * 5]
        wait_until(lambda: len(fast.verified()) == 10, timeout=5, what="the fast endpoint")
        assert len(slow.verified()) < 10, "the slow endpoint is still catching up"

        def logged() -> list[napi.DeliveryRecord]:
            return list(
                stack.stub.ListDeliveries(
                    napi.ListDeliveriesRequest(agency="kodim"), metadata=stack.ledger.md("kodim")
                ).deliveries
            )

        # The delivery log is written in batches, a moment after the endpoint answered.
        wait_until(lambda: len(logged()) == 10, timeout=5, what="the delivery log")
        deliveries = logged()
        assert sorted(d.event_id for d in deliveries) == sorted(r.event_id for r in results)
        assert {(d.agency, d.channel, d.outcome) for d in deliveries} == {
            ("kodim", "webhook", "delivered")
        }
        with pytest.raises(grpc.RpcError) as caught:
            stack.stub.ListDeliveries(
                napi.ListDeliveriesRequest(agency="polres"), metadata=stack.ledger.md("kodim")
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_subscribe_before_the_stream_exists_waits_for_it_instead_of_failing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """On a first start the situation room (or any subscriber) asks the notifier before the
    ledger's relay has made the event stream; each such Subscribe was refused UNAVAILABLE
    and logged as a warning until it had. The notifier now waits a few seconds for the
    stream. The stream is made here only once the notifier has looked for it (NATS's
    count of JetStream API calls went up)."""

    def api_calls() -> int:
        return int(nats_server.monitoring("/jsz")["api"]["total"])

    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env)) as ledger,  # no relay: no stream yet
    ):
        notifier = build_notifier(notifier_settings(tmp_path, nats_server.url))
        wait_until(lambda: notifier.engine.nats_link.connected, what="the notifier on NATS")
        try:
            with (
                grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel,
                capture_logs() as logs,
            ):
                before = api_calls()
                subscriber = Subscriber(
                    napi_grpc.NotifierServiceStub(channel),
                    ledger.md("kesbangpol"),
                    napi.SubscribeRequest(),
                )
                wait_until(lambda: api_calls() > before, what="the notifier looking for the stream")
                asyncio.run(make_stream(nats_server.url))
                subscriber.wait_started()
                subscriber.close()
        finally:
            notifier.stop(1.0)
    refused = [x for x in logs if x["event"] == "request" and x.get("status") == "UNAVAILABLE"]
    assert not refused, refused


@pytest.mark.parametrize("client_left", [False, True], ids=["client_waits", "client_left"])
def test_a_subscribe_waiting_for_the_stream_at_the_notifier_s_stop_is_told_shutting_down(
    tmp_path: Path, nats_server: NatsServer, client_left: bool
) -> None:
    """``make run`` stopped right after a first start: the situation room's Subscribe was
    still waiting for the stream the relay had not made yet. The notifier's stop cancelled
    that wait under the request, which crashed (request.crashed and an INTERNAL line, at
    error). Now the stop ends the wait: a caller still there is told SHUTTING_DOWN, and one
    that left first (the room stops before the notifier) leaves nothing in the log."""

    def api_calls() -> int:
        return int(nats_server.monitoring("/jsz")["api"]["total"])

    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env)) as ledger,  # no relay: no stream
    ):
        notifier = build_notifier(notifier_settings(tmp_path, nats_server.url))
        wait_until(lambda: notifier.engine.nats_link.connected, what="the notifier on NATS")
        try:
            with (
                grpc.insecure_channel(f"127.0.0.1:{notifier.port}") as channel,
                capture_logs() as logs,
            ):
                before = api_calls()
                subscriber = Subscriber(
                    napi_grpc.NotifierServiceStub(channel),
                    ledger.md("kesbangpol"),
                    napi.SubscribeRequest(),
                )
                wait_until(lambda: api_calls() > before, what="the notifier looking for the stream")
                # The consumer looks for the stream too: only a handler thread inside
                # Engine.subscribe shows that the call reached the servicer. Cancelled
                # before that, gRPC never runs the handler and no request line is logged.
                wait_until(
                    lambda: thread_inside(Engine.subscribe), what="the Subscribe handler waiting"
                )
                if client_left:
                    subscriber.close()
                notifier.stop(1.0)
                subscriber.close()
                # A call the client cancelled is over for gRPC, so the stop need not wait
                # for its handler: the handler's request line can come just after the stop
                # (it failed once in CI, logged after the capture had ended).
                wait_until(
                    lambda: any(x["event"] == "request" for x in logs), what="the request line"
                )
        finally:
            if not notifier.stopped.is_set():
                notifier.stop(1.0)
    assert not [x for x in logs if x["log_level"] == "error"], logs
    requests = [x for x in logs if x["event"] == "request"]
    assert len(requests) == 1, requests
    if client_left:
        assert requests[0]["log_level"] == "info", requests
    else:
        assert (requests[0]["status"], requests[0]["reason"]) == ("UNAVAILABLE", "SHUTTING_DOWN")
        error = subscriber.error
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(error)  # type: ignore[arg-type]
        assert info is not None
        assert info.reason == "SHUTTING_DOWN"


def thread_inside(function: Callable[..., object]) -> bool:
    """Whether some thread is running ``function`` (anywhere on its stack) right now."""
    code = function.__code__
    for frame in sys._current_frames().values():
        f: FrameType | None = frame
        while f is not None:
            if f.f_code is code:
                return True
            f = f.f_back
    return False


async def make_stream(url: str) -> None:
    client = await nats.connect(url)
    try:
        await ensure_stream(client.jetstream(), StreamSettings())
    finally:
        await client.close()
