"""The Python client's NotifierClient against a real notifier, ledger and nats-server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from incidentledger_client import (
    AlreadyExists,
    EventFilter,
    IncidentStatus,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    NotFound,
    Notification,
    NotifierClient,
    PermissionDenied,
    RetryPolicy,
    Subscription,
)
from services.common.config import RelaySettings, WebhookSettings
from services.common.natsserver import NatsServer
from tests.fanout_support import (
    ALLOW_LOOPBACK_ENV,
    WEBHOOK_SECRET,
    Stack,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.support import running_ledger, service_process, settings_for, store_environment

pytestmark = pytest.mark.nats

QUICK = RetryPolicy(retries=50, initial_backoff=0.05, max_backoff=0.3)


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    quick_retries = WebhookSettings(
        max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
    )
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url, webhooks=quick_retries) as running,
    ):
        yield running


def clients(stack: Stack, agency: str) -> tuple[LedgerClient, NotifierClient]:
    token = stack.ledger.tokens[agency]
    return (
        LedgerClient(stack.ledger.address, token),
        NotifierClient(f"127.0.0.1:{stack.notifier.port}", token),
    )


class Reader:
    """Reads a subscription in a thread, as an application would."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.received: list[Notification] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for notification in self.subscription:
                self.received.append(notification)
        except BaseException as error:  # handed to the test
            self.error = error

    def wait_started(self) -> None:
        wait_until(
            lambda: bool(self.subscription.cursor) or self.error is not None,
            what="the first heartbeat",
        )
        if self.error is not None:
            raise self.error

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        wait_until(
            lambda: len(self.received) >= count or self.error is not None,
            timeout,
            what=f"{count} notifications",
        )
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.subscription.close()
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_subscribe_streams_typed_notifications_and_resumes_from_a_cursor(stack: Stack) -> None:
    ledger, notifier = clients(stack, "bpbd")
    with ledger, notifier:
        reader = Reader(notifier.subscribe(kecamatan=["air_manjunto"], heartbeat_seconds=1))
        reader.wait_started()
        ledger.report("Elsewhere", "crowd_gathering", "ipuh")
        flood = ledger.report("Flood threatens TPS 03", "flood", "air_manjunto", severity="high")
        reader.wait_for(1)
        (note,) = reader.received
        assert note.event.event_id == flood.event_id
        assert note.event.position == flood.position
        assert note.event.type == "Reported"
        assert note.event.actor.agency == "bpbd"
        assert note.incident.name == flood.incident
        assert note.incident.status is IncidentStatus.REPORTED
        assert note.cursor
        reader.close()
        assert reader.error is None and reader.subscription.closed

        missed = [ledger.escalate(flood.incident, f"water rising {n}") for n in range(3)]
        with notifier.subscribe(
            filter=EventFilter(kecamatan=("air_manjunto",)), cursor=note.cursor
        ) as again:
            resumed = [next(again) for _ in range(3)]
        assert [n.event.event_id for n in resumed] == [r.event_id for r in missed]
        assert [n.event.version for n in resumed] == [2, 3, 4]

        with pytest.raises(InvalidArgument):
            next(notifier.subscribe(event_types=["Exploded"]))
        with pytest.raises(InvalidArgument):
            next(notifier.subscribe(cursor="yesterday"))
        with pytest.raises(TypeError):
            notifier.subscribe(filter=EventFilter(), kecamatan=["ipuh"])


def test_a_subscription_made_ready_yields_what_is_recorded_right_after(stack: Stack) -> None:
    """``ready()`` returns once the notifier has placed the stream: a report recorded at
    once is yielded (without it the stream opened at the first ``next()``, after the
    report, and "from now" left it out). Its refusals come from ``ready()`` itself."""
    ledger, notifier = clients(stack, "bpbd")
    with ledger, notifier:
        with notifier.subscribe(kecamatan=["pondok_suguh"]).ready() as subscription:
            assert subscription.cursor  # the first heartbeat's
            reported = ledger.report("Banner torn down", "sara_provocation", "pondok_suguh")
            first = next(subscription)
        assert first.event.event_id == reported.event_id
        with pytest.raises(InvalidArgument):
            notifier.subscribe(event_types=["Exploded"]).ready()


def test_webhooks_dead_letters_replay_and_the_delivery_log(stack: Stack) -> None:
    ledger, notifier = clients(stack, "dinkes")
    _, other = clients(stack, "kpu")
    with ledger, notifier, other, webhook_receiver() as receiver:
        receiver.status = 503
        hook = notifier.create_webhook(
            receiver.url, WEBHOOK_SECRET, categories=["crowd_gathering"], request_id="hook-1"
        )
        assert hook.name.startswith("webhooks/")
        assert hook.agency == "dinkes"
        assert hook.filter == EventFilter(categories=("crowd_gathering",))
        assert hook.create_time is not None
        again = notifier.create_webhook(
            receiver.url, WEBHOOK_SECRET, categories=["crowd_gathering"], request_id="hook-1"
        )
        assert again == hook, "create_webhook is idempotent by request_id"
        assert list(notifier.webhooks(page_size=1)) == [hook]
        assert list(other.webhooks()) == []

        result = ledger.report("Gathering", "crowd_gathering", "ipuh")
        wait_until(lambda: len(list(notifier.dead_letters())) == 1, what="a dead letter")
        (dead,) = notifier.dead_letters()
        assert (dead.event_id, dead.incident, dead.attempts) == (
            result.event_id,
            result.incident,
            2,
        )
        assert dead.last_error == "HTTP 503"
        assert dead.last_attempt_time is not None
        (listed,) = notifier.webhooks()  # what its receiver has still to get
        assert (listed.waiting_deliveries, listed.oldest_waiting_time, listed.dead_letters) == (
            0,
            None,
            1,
        )
        log = list(notifier.deliveries(incident=result.incident, page_size=1))
        assert [(d.channel, d.outcome, d.attempt) for d in log] == [
            ("webhook", "failed", 1),
            ("webhook", "dead_letter", 2),
        ]
        assert {d.agency for d in notifier.deliveries(agency="dinkes")} == {"dinkes"}
        with pytest.raises(PermissionDenied):
            other.replay_dead_letter(dead.name)

        receiver.status = 204
        notifier.replay_dead_letter(dead.name)
        wait_until(lambda: len(receiver.verified()) == 1, what="the replayed delivery")
        assert list(notifier.dead_letters()) == []

        with pytest.raises(InvalidArgument) as bad:
            notifier.create_webhook("ftp://x/y", WEBHOOK_SECRET)
        assert bad.value.domain == "notifier.incidentledger"
        notifier.delete_webhook(hook.name)
        assert list(notifier.webhooks()) == []
        with pytest.raises(NotFound):
            notifier.delete_webhook(hook.name)
        with pytest.raises(LedgerError):
            notifier.replay_dead_letter("deadLetters/nothing")


def test_update_webhook_changes_it_in_place(stack: Stack) -> None:
    ledger, notifier = clients(stack, "dinkes")
    _, other = clients(stack, "kpu")
    with ledger, notifier, other, webhook_receiver() as first, webhook_receiver() as second:
        hook = notifier.create_webhook(first.url, WEBHOOK_SECRET, categories=["flood"])
        moved = notifier.update_webhook(hook.name, url=second.url)
        assert (moved.name, moved.url, moved.filter) == (hook.name, second.url, hook.filter)
        assert moved.create_time == hook.create_time
        refiltered = notifier.update_webhook(
            hook.name, filter=EventFilter(kecamatan=("ipuh",), min_severity="high")
        )
        assert refiltered.url == second.url
        assert (refiltered.filter.kecamatan, refiltered.filter.categories) == (("ipuh",), ())
        assert list(notifier.webhooks()) == [refiltered]
        flood = ledger.report("Flood", "flood", "ipuh", severity="critical")
        wait_until(lambda: len(second.verified()) == 1, what="a delivery to the new URL")
        assert second.verified()[0].json["event"]["event_id"] == flood.event_id
        assert first.received == []

        with pytest.raises(TypeError):
            notifier.update_webhook(hook.name)
        with pytest.raises(InvalidArgument) as bad:
            notifier.update_webhook(hook.name, secret="short")
        assert bad.value.domain == "notifier.incidentledger"
        with pytest.raises(PermissionDenied):
            other.update_webhook(hook.name, url=first.url)
        notifier.delete_webhook(hook.name)
        with pytest.raises(NotFound):
            notifier.update_webhook(hook.name, url=first.url)


def test_the_same_webhook_registered_again_is_refused_naming_the_first(stack: Stack) -> None:
    """A setup script run twice registered a second webhook of the same URL and filter:
    every event it took was then delivered twice, under two delivery ids. Now the second is
    ALREADY_EXISTS naming the first; another filter, another agency, a retry of the first
    request and a registration after the first is deleted are taken as before."""
    _, notifier = clients(stack, "dinkes")
    _, other = clients(stack, "kpu")
    with notifier, other, webhook_receiver() as receiver:
        hook = notifier.create_webhook(
            receiver.url, WEBHOOK_SECRET, categories=["flood"], request_id="setup-1"
        )
        assert (
            notifier.create_webhook(
                receiver.url, WEBHOOK_SECRET, categories=["flood"], request_id="setup-1"
            )
            == hook
        ), "a retry of the same request answers the webhook it made"
        with pytest.raises(AlreadyExists) as again:
            notifier.create_webhook(receiver.url, WEBHOOK_SECRET + "x", categories=["flood"])
        assert again.value.reason == "WEBHOOK_EXISTS"
        assert hook.name in str(again.value)
        assert [h.name for h in notifier.webhooks()] == [hook.name]
        elsewhere = notifier.create_webhook(receiver.url, WEBHOOK_SECRET, categories=["hoax"])
        theirs = other.create_webhook(receiver.url, WEBHOOK_SECRET, categories=["flood"])
        # Nor is one changed into the first's twin.
        with pytest.raises(AlreadyExists) as twin:
            notifier.update_webhook(elsewhere.name, filter=EventFilter(categories=("flood",)))
        assert twin.value.reason == "WEBHOOK_EXISTS" and hook.name in str(twin.value)
        unchanged = {h.name: h.filter for h in notifier.webhooks()}[elsewhere.name]
        assert unchanged == EventFilter(categories=("hoax",))
        notifier.delete_webhook(hook.name)
        anew = notifier.create_webhook(receiver.url, WEBHOOK_SECRET, categories=["flood"])
        assert anew.name not in {hook.name, elsewhere.name, theirs.name}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_subscription_resumes_after_the_notifier_restarts_with_no_gap_and_no_duplicate(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    env = {
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
        **ALLOW_LOOPBACK_ENV,
    }
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as running,
        LedgerClient(running.address, running.tokens["kpu"]) as ledger,
        ExitStack() as clients,
    ):
        with service_process("services.notifier", env) as first:
            # Its own port at the first start (a port picked free beforehand could be taken
            # before it bound it), the same after the restart: the client knows only that.
            env["NOTIFIER_LISTEN"] = address = f"127.0.0.1:{first.port}"
            notifier = clients.enter_context(NotifierClient(address, running.tokens["kpu"]))
            reader = Reader(
                notifier.subscribe(heartbeat_seconds=1, max_reconnects=100, reconnect=QUICK)
            )
            reader.wait_started()
            before = [ledger.report(f"Before {n}", "hoax", "ipuh") for n in range(5)]
            reader.wait_for(5)
            first.proc.kill()
            first.proc.wait(10)
        during = [ledger.report(f"During {n}", "hoax", "ipuh") for n in range(5)]
        with service_process("services.notifier", env):
            reader.wait_for(10, timeout=60)
            after = [ledger.report(f"After {n}", "hoax", "ipuh") for n in range(3)]
            reader.wait_for(13, timeout=60)
            reader.close()

    expected = [r.event_id for r in [*before, *during, *after]]
    assert [n.event.event_id for n in reader.received] == expected, "no gap, no duplicate"
    assert reader.subscription.reconnects >= 1
    assert reader.error is None


def test_a_subscription_gives_up_when_the_notifier_stays_away(tmp_path: Path) -> None:
    with NotifierClient(f"127.0.0.1:{free_port()}", "token") as notifier:
        subscription = notifier.subscribe(
            max_reconnects=2, reconnect=RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
        )
        with pytest.raises(LedgerError) as caught:
            next(subscription)
        assert caught.value.code == "UNAVAILABLE"
        assert subscription.reconnects == 2
