"""Stopping: a failing close step does not stop the others; the stop request's plumbing.

The services' stop under real signals, in real processes, is tests/integration/
test_stopping.py; here the parts of ``stop()`` are stand-ins that fail on purpose.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from structlog.testing import capture_logs

from services.common.config import NotifierSettings
from services.common.stopping import STOP_MARGIN_SECONDS, Stopping, close_step, deadline_seconds
from services.ledger.server import LedgerServer
from services.notifier.server import NotifierServer
from tests.fanout_support import notifier_settings, wait_until
from tests.support import settings_for


def parts(*names: str) -> dict[str, Any]:
    return {name: mock.Mock(name=name) for name in names}


def test_a_close_step_that_fails_is_logged_and_does_not_raise() -> None:
    with capture_logs() as logs:
        close_step("notifier", "engine", mock.Mock(side_effect=ConnectionResetError("reset")))
    assert logs == [
        {
            "event": "notifier.close_failed",
            "part": "engine",
            "error": "ConnectionResetError: reset",
            "log_level": "warning",
        }
    ]


def test_the_notifier_closes_everything_when_nats_resets_the_connection_on_close() -> None:
    built = parts("server", "health", "engine", "store", "deliveries", "metrics")
    built["engine"].stop.side_effect = ConnectionResetError("Connection reset by peer")
    server = NotifierServer(port=1, stopped=threading.Event(), **built)
    with capture_logs() as logs:
        server.stop(1.0)
    for name in ("store", "deliveries", "metrics"):
        built[name].close.assert_called_once_with()
    assert server.stopped.is_set()
    assert [(e["event"], e["part"]) for e in logs] == [("notifier.close_failed", "engine")]


def test_the_ledger_closes_everything_when_the_relay_fails_to_stop() -> None:
    built = parts("server", "health", "ledger", "projections", "checkpoints", "relay", "metrics")
    built["relay"].stop.side_effect = ConnectionResetError("Connection reset by peer")
    server = LedgerServer(port=1, stopped=threading.Event(), **built)
    with capture_logs() as logs:
        server.stop(1.0)
    built["projections"].close.assert_called_once_with()
    built["ledger"].close.assert_called_once_with()
    assert server.stopped.is_set()
    assert [(e["event"], e["part"]) for e in logs] == [("ledger.close_failed", "relay")]


def test_the_deadline_is_grace_plus_margin_and_the_notifiers_webhook_timeout(
    tmp_path: Any,
) -> None:
    ledger = settings_for(tmp_path, {}, grace_seconds=3.0)
    assert deadline_seconds(ledger) == 3.0 + STOP_MARGIN_SECONDS
    notifier = notifier_settings(tmp_path, "nats://127.0.0.1:1", grace_seconds=2.0)
    timeout = notifier.webhooks.timeout_seconds
    assert deadline_seconds(notifier) == 2.0 + timeout + STOP_MARGIN_SECONDS


def test_the_notifiers_grace_period_is_a_setting() -> None:
    env = {"NATS_URL": "nats://127.0.0.1:1", "NOTIFIER_GRACE_SECONDS": "2.5"}
    assert NotifierSettings.from_env(env).grace_seconds == 2.5
    assert NotifierSettings.from_env({"NATS_URL": "nats://127.0.0.1:1"}).grace_seconds == 5.0


@pytest.fixture
def install() -> Iterator[Callable[..., Stopping]]:
    """Installs a :class:`Stopping` in this process; pytest's handlers come back after."""
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    handlers = {signum: signal.getsignal(signum) for signum in watched}
    installed: list[Stopping] = []

    def make(**options: Any) -> Stopping:
        installed.append(Stopping("unit", **options).install())
        return installed[-1]

    yield make
    for stopping in installed:
        stopping.close()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_signal_to_another_thread_is_a_stop_request_at_once(
    install: Callable[..., Stopping],
) -> None:
    """The kernel may give a process's SIGTERM to any thread; Python would run its handler
    only when the main thread next runs bytecode. Here the main thread waits (in steps);
    the request is seen by the watcher, from whichever thread got the signal."""
    stopping = install()
    ready = threading.Event()
    done = threading.Event()

    def other() -> None:
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(10)
    stopping_line = {"event": "unit.stopping", "signal": "SIGTERM", "log_level": "info"}
    with capture_logs() as logs:
        signal.pthread_kill(thread.ident or 0, signal.SIGTERM)
        assert stopping.wait(10), "the stop request arrived"
        stopping.announce()  # as serve_until_stopped does; logged once, by it or the watcher
        wait_until(lambda: stopping_line in logs, 10, "the stopping line")
    done.set()
    thread.join(10)
    assert stopping.requested
    assert logs.count(stopping_line) == 1


def test_close_disarms_the_deadline(install: Callable[..., Stopping]) -> None:
    """Here only: a process that goes on after a stop request (this one) must not be
    ended by the deadline."""
    stopping = install()
    stopping.set_deadline(0.3)
    stopping.request("a test")
    stopping.close()
    assert not stopping.wait(0.6) or stopping.requested  # still running past the deadline


def test_a_wake_signal_ends_a_wait_without_a_stop_request(
    install: Callable[..., Stopping],
) -> None:
    stopping = install(wake_signals=(signal.SIGUSR1,))
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
    assert not stopping.wait(10), "woken, not stopping"
    assert not stopping.requested
    assert not stopping.wait(0.05), "a timeout is no stop request either"
