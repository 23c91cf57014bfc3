"""The client's default retries outlast a restart of the ledger on the same port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from incidentledger_client import CommandResult, LedgerClient
from services.ledger.server import build
from tests.fanout_support import wait_until
from tests.support import dev_tokens, settings_for

# The old policy gave up after 6 attempts (about 1.6 s of backoff on average, 3.1 s at most);
# a restart of the ledger process takes 3-6 s. The test keeps the ledger away for more
# failed attempts than that, then starts it again.
FAILED_ATTEMPTS_WHILE_DOWN = 8


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts the attempts of ReportIncident that failed with UNAVAILABLE."""

    def __init__(self) -> None:
        self.unavailable = 0
        self.lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/ReportIncident"):
            error = outcome.exception()
            if isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE:
                with self.lock:
                    self.unavailable += 1
        return outcome


def test_a_command_sent_while_the_ledger_restarts_succeeds_once_it_is_back(
    tmp_path: Path,
) -> None:
    store_env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "data" / "ledger.sqlite"),
    }
    # Its own port at the first start (a port picked free beforehand could be taken before
    # it bound it), the same for the restart: the client knows only that address.
    first = build(settings_for(tmp_path, store_env))
    address = f"127.0.0.1:{first.port}"
    settings = settings_for(tmp_path, store_env, listen=address)
    token = dev_tokens(settings.data_dir)["kesbangpol"]
    counting = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(address), counting)
    outcome: list[CommandResult | BaseException] = []
    with LedgerClient(address, token, channel=channel) as client:
        client.report("Before the restart", "hoax", "ipuh")
        first.stop(1.0)

        def report() -> None:
            try:
                outcome.append(client.report("During the restart", "hoax", "ipuh"))
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

        caller = threading.Thread(target=report)
        caller.start()
        wait_until(
            lambda: counting.unavailable >= FAILED_ATTEMPTS_WHILE_DOWN or bool(outcome),
            timeout=30,
            what="the client to retry while the ledger is down",
        )
        second = build(settings)  # the same port, the same store
        try:
            caller.join(timeout=60)
            assert not caller.is_alive()
            assert len(outcome) == 1
            result = outcome[0]
            assert isinstance(result, CommandResult), f"the call failed: {result!r}"
            titles = [i.title for i in client.list_incidents(min_position=result.position)]
        finally:
            second.stop(1.0)
    channel.close()
    assert counting.unavailable >= FAILED_ATTEMPTS_WHILE_DOWN
    assert titles == ["Before the restart", "During the restart"]
