"""A ledger replica that stops answering with its connections open (SIGSTOP: a stalled VM,
a process that lost its CPU) while the Python client spreads its calls over several
replicas (``ipv4:a,b`` and the ``round_robin`` policy, as docs/deploying.md shows).

The kernel keeps the frozen replica's TCP connections open, so nothing fails by itself:
before the client pinged its connections (gRPC keepalive), round robin kept choosing the
frozen replica and every other call waited out its whole deadline (4 stalls of 5 s in 20 s,
8 commands a second down to 2), for as long as the freeze lasted. The client now finds the
replica silent within 30 s (a keepalive ping unanswered), leaves it out of the rotation while
it reconnects, and takes it back once it answers again; the servers accept those pings (no
GOAWAY too_many_pings).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from incidentledger_client import LedgerClient, LedgerError
from incidentledger_client._transport import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from tests.support import store_environment
from tests.topology import Deployment, frozen, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.system, pytest.mark.faults]

REPORTER = "kpu"
# Each attempt's deadline, as the operator's walkthrough had it; no retries, so that each
# call that reaches the frozen replica shows as a failure rather than hiding in a retry.
ATTEMPT_SECONDS = 5.0
#: Calls in a row that must all succeed once the frozen replica is left out.
IN_A_ROW = 6


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with store_environment("postgres", tmp_path) as store_env:
        deployment = Deployment(tmp_path / "data", store_env)
        try:
            yield deployment
        finally:
            deployment.stop()


def outcome(client: LedgerClient) -> str:
    try:
        client.report("Ballot boxes stored in an unlocked room", "logistics_failure", "ipuh")
    except LedgerError as exc:
        return exc.code
    return "OK"


def served(replica_log: list[dict[str, object]]) -> int:
    """Commands the replica answered, from its request log lines."""
    return sum(
        1
        for line in replica_log
        if line.get("event") == "request"
        and str(line.get("method", "")).endswith("/ReportIncident")
        and line.get("status") == "OK"
    )


def test_a_frozen_replica_is_left_out_of_the_round_robin_until_it_answers_again(
    deployment: Deployment,
) -> None:
    deployment.migrate()
    healthy, stalled = deployment.add_ledger(), deployment.add_ledger()
    healthy.start()
    stalled.start()
    assert stalled.proc is not None
    token = deployment.tokens()[REPORTER]
    target = f"ipv4:{healthy.address},{stalled.address}"
    with LedgerClient(
        target,
        token,
        timeout=ATTEMPT_SECONDS,
        retries=0,
        options=[("grpc.lb_policy_name", "round_robin")],
    ) as client:
        # Both replicas in the rotation: calls go to each in turn.
        wait_until(
            lambda: outcome(client) == "OK" and served(stalled.log_lines()) > 0,
            timeout=30,
            what="a command answered by each replica",
        )
        with frozen(stalled.proc.pid):
            # Until the ping finds it silent (30 s at most), a call that reaches the frozen
            # replica waits out its deadline; then every call goes to the replica that
            # answers. Before, every other call waited out its deadline for as long as the
            # freeze lasted, so six in a row never succeeded.
            outcomes: list[str] = []
            detect = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000
            calls = int(2 * detect / ATTEMPT_SECONDS) + 2 * IN_A_ROW
            while len(outcomes) < calls and outcomes[-IN_A_ROW:] != ["OK"] * IN_A_ROW:
                outcomes.append(outcome(client))
            assert outcomes[-IN_A_ROW:] == ["OK"] * IN_A_ROW, outcomes
            failed = [o for o in outcomes if o != "OK"]
            assert set(failed) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, outcomes
        before = served(stalled.log_lines())
        # Thawed, it answers again and is back in the rotation.
        wait_until(
            lambda: outcome(client) == "OK" and served(stalled.log_lines()) > before,
            timeout=60,
            what="the thawed replica to answer commands again",
        )
