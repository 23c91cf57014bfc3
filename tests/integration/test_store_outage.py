"""A PostgreSQL outage: callers get UNAVAILABLE (never INTERNAL), and the ledger recovers."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import Unavailable
from services.common.grpc_errors import error_info
from services.common.sql import PostgresDatabase
from services.common.store_errors import as_ledger_error
from services.ledger.relay_leadership import leader_lock
from tests.ledgerctl_support import Ctl
from tests.support import Client, rid, running_ledger, settings_for
from tests.topology import (
    PrivatePostgres,
    SeveredPostgres,
    postgres_schema,
    private_postgres,
    wait_until,
)

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def store_env(postgres: PrivatePostgres) -> dict[str, str]:
    return {
        **postgres.env,
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_SCHEMA": postgres_schema(postgres.connect),
        "POSTGRES_CONNECT_TIMEOUT": "1",
    }


def test_a_database_connection_lost_to_a_restart_is_replaced_before_use(
    postgres: PrivatePostgres,
) -> None:
    db = PostgresDatabase(store_env(postgres))
    try:
        with db.transaction() as cur:
            cur.execute("CREATE TABLE kept (n int)")
            cur.execute("INSERT INTO kept VALUES (1)")
        postgres.restart()
        with db.transaction() as cur:  # the dead session is found and replaced first
            cur.execute("SELECT n FROM kept")
            assert cur.fetchall() == [(1,)]
        postgres.stop()
        try:
            with pytest.raises(Exception) as lost, db.transaction() as cur:
                cur.execute("SELECT n FROM kept")
            assert isinstance(as_ledger_error(lost.value), Unavailable)
        finally:
            postgres.start()
    finally:
        db.close()


def report(client: Client, request_id: str, timeout: float = 60) -> api.ReportIncidentResponse:
    response: api.ReportIncidentResponse = client.stub.ReportIncident(
        api.ReportIncidentRequest(
            request_id=request_id,
            title="Ballot boxes stored in an unlocked room",
            category="logistics_failure",
            location=pb.Location(kecamatan="ipuh"),
        ),
        metadata=client.md("kpu"),
        timeout=timeout,
    )
    return response


def test_while_postgres_is_down_commands_are_unavailable_then_succeed(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    with running_ledger(settings_for(tmp_path, store_env(postgres))) as client:
        first = report(client, rid())
        postgres.stop()
        request_id = rid()
        try:
            with pytest.raises(grpc.RpcError) as refused:
                report(client, request_id)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            info = error_info(refused.value)  # type: ignore[arg-type]
            assert info is not None and info.reason == "STORE_UNAVAILABLE", info
        finally:
            postgres.start()
        again = report(client, request_id)  # the retry, with the same request id
        assert again.result.position > first.result.position
        assert report(client, request_id) == again, "the retry was recorded twice"


def test_ledgerctl_says_the_ledger_cannot_reach_its_database_not_that_time_ran_out(
    postgres: PrivatePostgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger answers STORE_UNAVAILABLE at once, again and again, until --timeout cuts
    the last attempt short: what the person reads is the ledger's answer, not a deadline
    nor "cannot reach the ledger", and a write still names its request id."""
    with running_ledger(settings_for(tmp_path, store_env(postgres))) as ledger:
        ctl = Ctl(ledger, capsys)
        title = "Report sent while the database is down"
        ctl.ok("kesbangpol", "report", "Before the outage", "hoax", "xiv_koto")
        postgres.stop()
        try:
            code, _, err = ctl.run("kesbangpol", "--timeout", "3", "report", title, "hoax", "ipuh")
            assert code == 6, err
            assert "UNAVAILABLE STORE_UNAVAILABLE" in err, err
            assert "cannot reach its database" in err, err
            assert "DEADLINE_EXCEEDED" not in err and "no answer came" not in err, err
            found = re.search(r"--request-id ([0-9a-f]{32})\b", err)
            assert found is not None, err
            request_id = found.group(1)
            # The "may have been recorded" warning goes with an attempt cut short, and only.
            code, _, err = ctl.run(
                "kesbangpol",
                "--timeout",
                "3",
                "--json",
                "report",
                title,
                "hoax",
                "ipuh",
                "--request-id",
                request_id,
            )
            error = json.loads(err)["error"]
            assert (code, error["code"], error["reason"]) == (6, "UNAVAILABLE", "STORE_UNAVAILABLE")
            assert error["request_id"] == request_id
            cut_short = error["metadata"]["unanswered_attempts"] != "0"
            assert ("may have recorded" in error["message"]) == cut_short, error
            # A query says the same of the database, and does not blame the network.
            code, _, err = ctl.run("polres", "--timeout", "3", "list")
            assert code == 6, err
            assert "STORE_UNAVAILABLE" in err and "cannot reach its database" in err, err
            assert "cannot reach the ledger" not in err, err
        finally:
            postgres.start()
        # Sent again with the id named (ledgerctl's retries outlast the reconnection), twice:
        # the report is in the ledger once.
        first = ctl.json("kesbangpol", "report", title, "hoax", "ipuh", "--request-id", request_id)
        again = ctl.json("kesbangpol", "report", title, "hoax", "ipuh", "--request-id", request_id)
        assert first["incident"] == again["incident"]
        titles = [i["title"] for i in ctl.json("polres", "list", "--limit", "0")]
        assert titles.count(title) == 1, titles


def test_a_database_host_gone_silent_fails_commands_unavailable_not_at_their_deadline(
    tmp_path: Path,
) -> None:
    """A host that died, or a network cut, answers nothing: no refusal, no reset, no
    acknowledgement. The server's own timeouts cannot act, and without a client-side bound
    a call waiting on the dead connection waited for the kernel (15 minutes and more), the
    group commit's thread with it: the call ran into its deadline, and so did every command
    after it. With ``POSTGRES_TCP_USER_TIMEOUT`` the connection is given up, the command
    answers UNAVAILABLE well inside its deadline, and once the network is back the same
    request goes through."""
    with contextlib.ExitStack() as stack:
        postgres = SeveredPostgres()
        stack.callback(postgres.close)
        postgres.start()
        env = {**store_env(postgres), "POSTGRES_TCP_USER_TIMEOUT": "2"}
        client = stack.enter_context(running_ledger(settings_for(tmp_path, env)))
        first = report(client, rid())
        postgres.cut()
        request_id = rid()
        with pytest.raises(grpc.RpcError) as refused:
            report(client, request_id, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert info is not None and info.reason == "STORE_UNAVAILABLE", info
        postgres.mend()
        answers: list[api.ReportIncidentResponse] = []

        def retried() -> bool:
            try:
                answers.append(report(client, request_id, timeout=30))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return False
            return True

        wait_until(retried, 60, "the retry, once the network is back")
        assert answers[-1].result.position > first.result.position
        assert report(client, request_id) == answers[-1], "the retry was recorded twice"


def test_the_relay_lock_of_a_replica_cut_off_from_the_database_passes_to_another(
    tmp_path: Path,
) -> None:
    """One relay publishes at a time: the holder of a session-level advisory lock. When the
    network between its replica and the database is cut, the replica's side gives the
    session up (``POSTGRES_TCP_USER_TIMEOUT``); the server's side must too, or its session
    keeps the lock, and no other replica's relay publishes, until the server's kernel gives
    up (its keepalive starts after 2 hours). Here the other replica reaches the server over
    its Unix socket, which the cut does not touch."""
    with contextlib.ExitStack() as stack:
        postgres = SeveredPostgres()
        stack.callback(postgres.close)
        postgres.start()
        env = {**store_env(postgres), "POSTGRES_TCP_USER_TIMEOUT": "2"}
        cut_off = leader_lock(env, "INCIDENTS")
        stack.callback(cut_off.release)
        other = leader_lock({**env, "POSTGRES_HOST": postgres.socket_dir}, "INCIDENTS")
        stack.callback(other.release)
        assert cut_off.try_acquire()
        assert not other.try_acquire()
        postgres.cut()
        assert not cut_off.still_held()  # its own side gives the session up
        wait_until(other.try_acquire, 60, "the lock, released by the server's side")
