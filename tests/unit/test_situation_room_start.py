"""The situation room's first start: it may start before the ledger has written the
development tokens its live subscription uses. That is a wait (info), not a failure
(warning); a token file that exists but does not serve is a failure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from incidentledger_client import CursorExpired, InvalidArgument, LedgerError, NotifierClient
from services.common.config import SituationRoomSettings
from services.situation_room.__main__ import subscription_token
from services.situation_room.live import (
    HEARTBEAT_SECONDS,
    RESYNC,
    STALE_SECONDS,
    Change,
    Hub,
    LedgerWatch,
    NotReadyError,
    SetupMissingError,
)


def settings_in(data_dir: Path) -> SituationRoomSettings:
    return SituationRoomSettings(data_dir=data_dir)


def test_tokens_not_written_yet_are_not_ready_and_unreadable_ones_are_an_error(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    with pytest.raises(NotReadyError, match="not written yet"):
        subscription_token(settings)
    settings.dev_tokens_file.parent.mkdir(parents=True)
    settings.dev_tokens_file.write_text("other_agency: {token: t}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no") as raised:
        subscription_token(settings)
    assert not isinstance(raised.value, NotReadyError)


def test_tokens_a_restore_left_out_are_missing_not_waited_for(tmp_path: Path) -> None:
    """The tokens file (hashes) without the development tokens: the ledger writes both only
    when neither exists, so waiting for it is waiting for ever (a restore that left
    ``dev-tokens.yaml`` out). The error names the file and the ways out."""
    settings = settings_in(tmp_path)
    settings.dev_tokens_file.parent.mkdir(parents=True)
    (settings.dev_tokens_file.parent / "tokens.yaml").write_text("users: []\n", encoding="utf-8")
    with pytest.raises(SetupMissingError) as raised:
        subscription_token(settings)
    assert not isinstance(raised.value, NotReadyError)
    text = str(raised.value)
    assert str(settings.dev_tokens_file) in text
    assert "SITUATION_ROOM_TOKEN" in text
    assert "backup" in text


def test_the_hub_says_once_what_is_missing_and_keeps_trying() -> None:
    """Missing setup is an error, said once (not every second), with the error; tried again
    all the same, so putting the file back resumes the page."""
    logs = run_hub(SetupMissingError("dev-tokens.yaml is missing"), attempts=3)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("situation_room.subscription_impossible", "error")
    ]
    assert logs[0]["error"] == "dev-tokens.yaml is missing"


def test_a_hub_never_heard_from_names_what_it_misses() -> None:
    """The 12 s warning of a page never live names why it could not subscribe, rather than
    only the usual suspects (address, token, TLS)."""
    now = [1000.0]
    hub = Hub(lambda: None, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    hub._connect_error = "dev-tokens.yaml is missing"
    with structlog.testing.capture_logs() as logs:
        hub.watch()
        now[0] += STALE_SECONDS
        hub.watch()
    assert logs[0]["event"] == "situation_room.live_interrupted"
    assert logs[0]["error"] == "dev-tokens.yaml is missing"


def test_the_ledger_watch_says_when_the_ledger_is_away_and_back_once_each() -> None:
    """A ledger the page no longer reaches is a warning, once (not every check); reached
    again, an info line; :attr:`LedgerWatch.up` follows the checks."""
    answers = iter([True, False, False, True, True])
    watch = LedgerWatch(lambda _timeout: next(answers))
    seen = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            watch.check()
            seen.append(watch.up)
    assert seen == [True, False, False, True, True]
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("situation_room.ledger_unreachable", "warning"),
        ("situation_room.ledger_reached", "info"),
    ]


def run_hub(fail: Exception, attempts: int) -> list[MutableMapping[str, Any]]:
    """The hub's subscription loop, its connect failing ``attempts`` times with ``fail``."""
    tried = threading.Event()
    count = [0]

    def connect() -> NotifierClient:
        count[0] += 1
        if count[0] >= attempts:
            tried.set()
        raise fail

    hub = Hub(connect)
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=hub._read, daemon=True)
        thread.start()
        assert tried.wait(10), "the hub tried again"
        hub.stop()
        thread.join(5)
    assert not thread.is_alive()
    return logs


def test_the_hub_waits_at_info_for_tokens_not_written_yet() -> None:
    logs = run_hub(NotReadyError("not written yet"), attempts=2)
    assert len(logs) >= 2
    assert {(e["event"], e["log_level"]) for e in logs} == {
        ("situation_room.subscription_waiting", "info")
    }


def test_the_hub_warns_when_its_subscription_fails() -> None:
    logs = run_hub(ValueError("the file has no coordinator token"), attempts=1)
    assert logs
    assert {(e["event"], e["log_level"]) for e in logs} == {
        ("situation_room.subscription_failed", "warning")
    }


class SilentSubscription:
    """A subscription that delivers nothing until closed; ``received_at`` set by the test."""

    def __init__(self) -> None:
        self.received_at: float | None = None
        self.cursor = ""
        self.closed = threading.Event()

    def __iter__(self) -> SilentSubscription:
        return self

    def __next__(self) -> object:
        self.closed.wait()
        raise StopIteration

    def close(self) -> None:
        self.closed.set()


class SilentNotifier:
    def __init__(self, subscription: SilentSubscription) -> None:
        self.subscription = subscription
        self.asked: dict[str, Any] = {}
        self.subscribed = threading.Event()

    def subscribe(self, **asked: Any) -> SilentSubscription:
        self.asked = asked
        self.subscribed.set()
        return self.subscription

    def close(self) -> None:
        pass


def test_the_hub_is_live_only_while_the_notifier_is_heard_from() -> None:
    """Not live before the first heartbeat, nor once the notifier has been silent for
    longer than two heartbeats (stopped, unreachable, reconnecting); each change logged."""
    subscription = SilentSubscription()
    notifier = SilentNotifier(subscription)
    now = [1000.0]
    hub = Hub(lambda: notifier, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    hub._loop = asyncio.new_event_loop()  # as start() sets it; nothing is delivered to it
    thread = threading.Thread(target=hub._read, daemon=True)
    with structlog.testing.capture_logs() as logs:
        thread.start()
        assert notifier.subscribed.wait(10)
        assert notifier.asked["heartbeat_seconds"] == HEARTBEAT_SECONDS
        seen = [hub.live]  # nothing heard yet
        subscription.received_at = now[0]  # the first heartbeat
        now[0] += STALE_SECONDS
        seen.append(hub.live)
        hub.watch()
        now[0] += 1.0
        seen.append(hub.live)
        hub.watch()
        hub.watch()  # logged once per change
        subscription.received_at = now[0]
        seen.append(hub.live)
        hub.watch()
        hub.stop()
        thread.join(5)
    hub._loop.close()
    assert not thread.is_alive()
    assert seen == [False, True, False, True]
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("situation_room.live_on", "info"),
        ("situation_room.live_interrupted", "warning"),
        ("situation_room.live_on", "info"),
    ]


class RefusedSubscription(SilentSubscription):
    """A subscription whose stream is refused at once with ``error``."""

    def __init__(self, error: Exception, cursor: str) -> None:
        super().__init__()
        self.error = error
        self.cursor = cursor

    def __next__(self) -> object:
        raise self.error


@pytest.mark.parametrize(
    "refusal",
    [
        CursorExpired("FAILED_PRECONDITION", "CURSOR_EXPIRED", "no longer kept"),
        InvalidArgument(
            "INVALID_ARGUMENT", "INVALID_FIELD", "is ahead of the stream", {"field": "cursor"}
        ),
    ],
)
def test_a_cursor_the_notifier_cannot_resume_from_is_dropped_and_the_tabs_reload(
    refusal: LedgerError,
) -> None:
    """Expired, or ahead of a stream NATS lost and made again: the hub subscribes from now
    (it kept the refused cursor and was refused every second for ever) and tells every tab
    to reload, since what came meanwhile reached none of them."""
    asked: list[str | None] = []
    resumed = threading.Event()

    class Notifier(SilentNotifier):
        def subscribe(self, **ask: Any) -> SilentSubscription:
            asked.append(ask["cursor"])
            if len(asked) == 1:
                return RefusedSubscription(refusal, cursor="c-100")
            resumed.set()
            return self.subscription

    silent = SilentSubscription()

    async def run() -> Change:
        hub = Hub(lambda: Notifier(silent))  # type: ignore[arg-type,return-value]
        hub._cursor = "c-100"  # where it was
        tab = hub.attach()
        hub.start()
        try:
            return await asyncio.wait_for(tab.get(), 10)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, resumed.wait, 10)
            hub.stop()

    assert asyncio.run(run()) is RESYNC
    assert asked == ["c-100", None]  # then from now


def test_a_hub_never_heard_from_says_so() -> None:
    """A page whose subscription never gets through (plaintext to a TLS notifier, a wrong
    address: the client reconnects by itself, silently) logs that it is not live, once."""
    subscription = SilentSubscription()  # nothing ever heard
    now = [1000.0]
    hub = Hub(lambda: SilentNotifier(subscription), clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    with structlog.testing.capture_logs() as logs:
        hub.watch()  # at the start: not live yet, nothing to say
        now[0] += STALE_SECONDS
        hub.watch()
        now[0] += 1.0
        hub.watch()  # said once
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("situation_room.live_interrupted", "warning"),
    ]
    assert "since the page started" in logs[0]["note"]
