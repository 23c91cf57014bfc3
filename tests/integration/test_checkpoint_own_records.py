"""A checkpoint never signs a log from which the ledger's own recent events were taken.

Events after the last checkpoint are vouched for by their seals one by one, not by being
there: whoever can write to the database could delete the newest ones (or change one),
and the next checkpoint then signed the log as it was left (docs/hash-chain.md, section
9). The ledger knows what it recorded since its last checkpoint; it now refuses to sign
until it finds every one of those events in the store as it wrote it.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client.errors import error_reason
from services.common.sql import open_database
from services.ledger.audit import Checkpoints
from tests.fanout_support import wait_until
from tests.integration.test_ingest import device_report, ingest
from tests.support import Client, running_ledger, settings_for

AUDITOR = "inspektorat"


def _checkpoint(client: Client) -> audit.Checkpoint:
    stub = audit_grpc.AuditServiceStub(client.channel)
    return stub.CreateCheckpoint(
        audit.CreateCheckpointRequest(), metadata=client.md(AUDITOR)
    ).checkpoint


def _positions(client: Client) -> list[int]:
    stub = audit_grpc.AuditServiceStub(client.channel)
    listed = stub.ListCheckpoints(audit.ListCheckpointsRequest(), metadata=client.md(AUDITOR))
    return [c.position for c in listed.checkpoints]


def _execute(store_env: dict[str, str], sql: str, *params: object) -> int:
    db = open_database(store_env)
    try:
        with db.transaction() as cur:
            cur.execute(db.q(sql), params)
            return int(cur.rowcount)
    finally:
        db.close()


def _tamper(
    store_env: dict[str, str],
    table: str,
    how: str,
    kept: api.CommandResult,
    newest: api.CommandResult,
) -> None:
    """``deleted``: the newest event's row taken out. ``renumbered``: the positions of the
    two events swapped (each incident's own order kept, every seal still valid)."""
    postgres = store_env.get("PERSISTENCE_MODULE", "").endswith("postgres")
    position = "notification_id" if postgres else "rowid"
    if how == "deleted":
        incident_id = newest.incident.removeprefix("incidents/")
        key = incident_id if postgres else incident_id.replace("-", "")
        sql = f"DELETE FROM {table} WHERE originator_id = ?"  # noqa: S608 - the test's own
        deleted = _execute(store_env, sql, key)
        assert deleted == 1
        return
    for old, new in ((kept.position, -1), (newest.position, kept.position), (-1, newest.position)):
        sql = f"UPDATE {table} SET {position} = ? WHERE {position} = ?"  # noqa: S608
        assert _execute(store_env, sql, new, old) == 1


@pytest.mark.parametrize("tampering", ["deleted", "renumbered"])
def test_a_checkpoint_refuses_to_sign_when_events_recorded_since_the_last_are_not_as_written(
    either_store: dict[str, str], tmp_path: Path, tampering: str
) -> None:
    """Neither change is seen by the seals: each event left still carries its own, and
    each incident's chain still links. Before, the next checkpoint signed the log so."""
    store_env = either_store
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=3600.0)
    with running_ledger(settings) as client:
        client.report("kpu", title="Ballot box seal broken at TPS 02")
        first = _checkpoint(client)  # what the ledger recorded so far is found as written
        kept = client.report("polres", title="Crowd gathering near the KPU office")
        newest = client.report("bawaslu", title="Campaign outside the schedule")
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        _tamper(store_env, table, tampering, kept, newest)

        with capture_logs() as logs, pytest.raises(grpc.RpcError) as refused:
            _checkpoint(client)
        assert refused.value.code() is grpc.StatusCode.DATA_LOSS
        assert error_reason(refused.value) == "CHECKPOINT_REFUSED"
        assert _positions(client) == [first.position]  # nothing signed over it
        problems = [x for x in logs if x["event"] == "checkpoint.recorded_events_changed"]
        assert len(problems) == 1, logs
        problem = str(problems[0]["problem"])
        if tampering == "deleted":
            assert f"1 missing (positions {newest.position})" in problem
        else:
            assert f"2 changed (positions {kept.position}, {newest.position})" in problem

        # Still refused at the next try (and by the periodic checkpoints): what was taken
        # stays missing; nothing is signed over it while this ledger runs.
        with pytest.raises(grpc.RpcError):
            _checkpoint(client)
        assert _positions(client) == [first.position]
        assert client.server.checkpoints.refused == 2  # ledger_checkpoints_refused_total


def test_checkpoints_sign_as_before_when_nothing_was_taken(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, either_store, checkpoint_seconds=3600.0)
    with running_ledger(settings) as client:
        client.report("kpu")
        first = _checkpoint(client)
        client.report("polres")
        second = _checkpoint(client)
        assert second.position > first.position
        assert _positions(client) == [first.position, second.position]
        recorded = client.server.checkpoints._recorded
        assert recorded is not None
        assert recorded.pending() == {}


def test_events_under_another_replica_s_checkpoint_are_checked_there(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """Another replica's checkpoint may be made first, over events this one recorded: they
    are then looked for under it, not forgotten."""
    store_env = either_store
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=3600.0)
    with running_ledger(settings) as client:
        ours = client.server.checkpoints
        assert ours._recorded is not None
        other = Checkpoints(
            client.server.ledger.recorder,
            store_env,
            ours._key,
            create_table=False,
        )
        try:
            client.report("kpu")
            covered = other.create()  # the other replica's, over this one's event
            assert _checkpoint(client).position == covered.position  # found under it
            assert ours._recorded.pending() == {}

            gone = client.report("polres")
            covered = other.create()
            table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
            _tamper(store_env, table, "deleted", gone, gone)
            with capture_logs() as logs, pytest.raises(grpc.RpcError):
                _checkpoint(client)
            problems = [x for x in logs if x["event"] == "checkpoint.recorded_events_changed"]
            assert f"1 missing (positions {gone.position})" in str(problems[0]["problem"])
        finally:
            other.close()


def test_a_checkpoint_is_refused_while_the_last_one_this_replica_signed_is_gone(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """A deleted checkpoint row made the next checkpoint start from the one before it,
    over a range whose events may have been changed since (section 9 of hash-chain.md)."""
    store_env = either_store
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=3600.0)
    with running_ledger(settings) as client:
        client.report("kpu")
        first = _checkpoint(client)
        client.report("polres")
        second = _checkpoint(client)
        sql = "DELETE FROM ledger_checkpoints WHERE position = ?"
        assert _execute(store_env, sql, second.position) == 1
        client.report("bawaslu")
        with capture_logs() as logs, pytest.raises(grpc.RpcError) as refused:
            _checkpoint(client)
        assert error_reason(refused.value) == "CHECKPOINT_REFUSED"
        assert _positions(client) == [first.position]
        problems = [x for x in logs if x["event"] == "checkpoint.signed_checkpoint_changed"]
        assert [x["position"] for x in problems] == [second.position], logs


def test_a_field_device_s_batch_and_single_commands_are_found_as_written(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """What the recorded events are checked against is each commit's own positions: a
    batch of many reports in one transaction (PostgreSQL's array insert included) and
    single commands alongside must all be found, or every checkpoint would be refused."""
    settings = settings_for(tmp_path, either_store, checkpoint_seconds=3600.0)
    with running_ledger(settings) as client:
        client.report("kpu")
        results = ingest(client, [device_report(f"Laporan {n}") for n in range(120)])
        assert {r.outcome for r in results} == {api.INGEST_OUTCOME_CREATED}
        client.report("polres")
        checkpoint = _checkpoint(client)
        assert checkpoint.events == 122
        recorded = client.server.checkpoints._recorded
        assert recorded is not None
        assert recorded.pending() == {}


def test_the_periodic_checkpoints_refuse_too_and_say_why_in_one_line(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """What an operator meets without calling anything: the replica's own checkpoints,
    every LEDGER_CHECKPOINT_SECONDS, refused with the reason (a refusal, not a crash: no
    traceback), and counted for the alert."""
    store_env = either_store
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=0.2)
    with running_ledger(settings) as client:
        kept = client.report("polres")
        wait_until(lambda: bool(_positions(client)), what="a periodic checkpoint")
        newest = client.report("bawaslu")
        with capture_logs() as logs:
            table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
            _tamper(store_env, table, "deleted", kept, newest)
            wait_until(lambda: client.server.checkpoints.refused >= 2, what="two refusals")
        failed = [x for x in logs if x["event"] == "checkpoint.failed"]
        assert failed, logs
        assert f"1 missing (positions {newest.position})" in str(failed[0]["error"])
        assert "exc_info" not in failed[0]
        assert max(_positions(client)) < newest.position
