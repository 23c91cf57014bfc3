"""A store written by a ledger from before seals existed (before 2026-12-03), served by today's.

Those ledgers stored incident events without the ``seal`` member: the store is made here by
writing a history through today's ledger and taking every seal and checkpoint out of it in
SQL, which leaves exactly the rows such a ledger wrote. Today's ledger covers that history
with a checkpoint at its start (``checkpoint.unsealed_history_covered``); its incidents must
then read, answer commands and verify as before, and a seal stripped from an event recorded
after seals existed must still be refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.config import LedgerSettings
from services.common.sql import open_database
from tests.support import Client, rid, running_ledger, settings_for

COORDINATOR = "desk_pilkada"
AUDITOR = "inspektorat"
SEAL = re.compile(rb',\s*"seal"\s*:\s*"[^"]*"')


def _strip(store_env: dict[str, str], table: str, only: set[tuple[str, int]] | None = None) -> int:
    """Take the seal out of every stored incident event (or of the ``only`` ones, by
    incident id and version), and every checkpoint: what a ledger before seals stored."""
    db = open_database(store_env)
    stripped = 0
    try:
        with db.transaction() as cur:
            cur.execute(f"SELECT originator_id, originator_version, state FROM {table}")  # noqa: S608
            rows: list[tuple[Any, int, bytes]] = list(cur.fetchall())
            for originator, version, state in rows:
                key = (str(originator).replace("-", ""), int(version))
                if only is not None and key not in only:
                    continue
                plain = SEAL.sub(b"", bytes(state))
                if plain != bytes(state):
                    cur.execute(
                        db.q(
                            f"UPDATE {table} SET state = ? "  # noqa: S608 - the test's own
                            "WHERE originator_id = ? AND originator_version = ?"
                        ),
                        (plain, originator, version),
                    )
                    stripped += 1
            if only is None:
                cur.execute("DELETE FROM ledger_checkpoints")
    finally:
        db.close()
    return stripped


def _drop_checkpoints(store_env: dict[str, str], after: int) -> None:
    db = open_database(store_env)
    try:
        with db.transaction() as cur:
            cur.execute(db.q("DELETE FROM ledger_checkpoints WHERE position > ?"), (after,))
    finally:
        db.close()


def _history(client: Client) -> list[str]:
    """A few incidents in several states: verified and led, merged, only reported."""
    md = client.md(COORDINATOR)
    first = client.report("kpu", title="Ballot box seal broken at TPS 02").incident
    client.stub.VerifyIncident(api.VerifyIncidentRequest(request_id=rid(), name=first), metadata=md)
    client.stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=first, agency="kpu"), metadata=md
    )
    duplicate = client.report("polres", title="Ballot box seal broken, reported again").incident
    client.stub.MergeIncident(
        api.MergeIncidentRequest(request_id=rid(), name=duplicate, target=first), metadata=md
    )
    only_reported = client.report("bawaslu").incident
    return [first, duplicate, only_reported]


def _reads(client: Client, names: list[str]) -> dict[str, Any]:
    md = client.md(COORDINATOR)
    return {
        name: (
            client.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=md),
            list(
                client.stub.ListIncidentEvents(
                    api.ListIncidentEventsRequest(parent=name), metadata=md
                ).events
            ),
        )
        for name in names
    }


def test_a_store_from_before_seals_reads_continues_and_verifies(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    store_env = either_store
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=0.0)
    with running_ledger(settings) as client:
        names = _history(client)
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        before = _reads(client, names)
    assert _strip(store_env, table) > 0

    with running_ledger(settings) as client:
        md = client.md(COORDINATOR)
        after = _reads(client, names)  # was DATA_LOSS "it carries no seal" on every one
        for name in names:
            incident, events = after[name]
            assert incident == before[name][0]
            assert [e.hash for e in events] == [e.hash for e in before[name][1]]
            assert not any(e.seal for e in events)
        listed = client.stub.ListIncidents(api.ListIncidentsRequest(), metadata=md).incidents
        assert sorted(i.name for i in listed) == sorted(names)

        # A command on an old incident continues its chain, sealed.
        result = client.stub.LogAction(
            api.LogActionRequest(request_id=rid(), name=names[0], action="Box resealed"),
            metadata=client.md("kpu"),
        ).result
        events = client.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=names[0]), metadata=md
        ).events
        assert events[-1].version == result.version
        assert events[-1].previous_hash == events[-2].hash
        assert events[-1].seal

        stub = audit_grpc.AuditServiceStub(client.channel)
        report = stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=client.md(AUDITOR))
        assert report.ok, report

        # One more sealed event, so that the one before is not the log's newest.
        newest = client.report("polres", title="Reported after the upgrade")

    # A seal taken from an event recorded after seals existed is still a forgery.
    forged = names[0].removeprefix("incidents/").replace("-", "")
    assert _strip(store_env, table, only={(forged, result.version)}) == 1
    with running_ledger(settings) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetIncident(
                api.GetIncidentRequest(name=names[0]), metadata=client.md(COORDINATOR)
            )
        assert refused.value.code() is grpc.StatusCode.DATA_LOSS
        assert "carries no seal" in str(refused.value.details())
        client.stub.GetIncident(  # the others still read
            api.GetIncidentRequest(name=names[2]), metadata=client.md(COORDINATOR)
        )
        later = client.report("kpu", title="Reported by a ledger from before seals")

    # The log's newest event without its seal, after sealed ones (what a ledger from before
    # seals writes when started again on the upgraded store): never covered by a checkpoint
    # at the start, as history from before seals is; the ledger starts and refuses it.
    later_id = later.incident.removeprefix("incidents/").replace("-", "")
    assert _strip(store_env, table, only={(later_id, later.version)}) == 1
    _drop_checkpoints(store_env, after=later.position - 1)  # the stop's, over it sealed
    with running_ledger(settings) as client:
        stub = audit_grpc.AuditServiceStub(client.channel)
        md = client.md(COORDINATOR)
        kept = stub.ListCheckpoints(audit.ListCheckpointsRequest(), metadata=md).checkpoints
        assert max(point.position for point in kept) < later.position  # nothing signed over it
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetIncident(api.GetIncidentRequest(name=later.incident), metadata=md)
        assert refused.value.code() is grpc.StatusCode.DATA_LOSS
        client.stub.GetIncident(api.GetIncidentRequest(name=newest.incident), metadata=md)


def _rewrite(store_env: dict[str, str], table: str, incident: str, old: bytes, new: bytes) -> None:
    """Change a text in every stored event of ``incident`` (its events' bodies, so their
    hashes no longer match what was signed over them)."""
    db = open_database(store_env)
    try:
        with db.transaction() as cur:
            cur.execute(f"SELECT originator_id, originator_version, state FROM {table}")  # noqa: S608
            for originator, version, state in list(cur.fetchall()):
                if str(originator).replace("-", "") != incident or old not in bytes(state):
                    continue
                cur.execute(
                    db.q(
                        f"UPDATE {table} SET state = ? "  # noqa: S608 - the test's own
                        "WHERE originator_id = ? AND originator_version = ?"
                    ),
                    (bytes(state).replace(old, new), originator, version),
                )
    finally:
        db.close()


def _store_from_before_seals(
    store_env: dict[str, str], tmp_path: Path
) -> tuple[LedgerSettings, list[str], str]:
    """A store as a ledger from before seals left it (the history of :func:`_history`, its
    seals and checkpoints taken out): the settings, the incidents' names, the events' table."""
    settings = settings_for(tmp_path, store_env, checkpoint_seconds=0.0)
    with running_ledger(settings) as client:
        names = _history(client)
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
    assert _strip(store_env, table) > 0
    return settings, names, table


def test_history_from_before_seals_changed_in_the_store_does_not_load(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """Nothing but the checkpoint over it vouches for an event without a seal. Whoever
    changed one of them in the store (or stripped the seals of a sealed store's first
    events, then changed one) had the change loaded: an incident of one event has no
    later event to fail the link either. The start now checks that history against the
    head its checkpoint signed, and loads it without seals only if it matches."""
    store_env = either_store
    settings, names, table = _store_from_before_seals(store_env, tmp_path)
    with running_ledger(settings) as client:  # covers the unsealed history, and reads it
        read = client.stub.GetIncident(
            api.GetIncidentRequest(name=names[2]), metadata=client.md(COORDINATOR)
        )
    assert read.incident.title == "Planned mass gathering at the town square"  # bawaslu's

    changed = names[2].removeprefix("incidents/").replace("-", "")
    _rewrite(store_env, table, changed, b"mass gathering", b"calm gathering")
    with capture_logs() as logs, running_ledger(settings) as client:
        md = client.md(COORDINATOR)
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetIncident(api.GetIncidentRequest(name=names[2]), metadata=md)
        assert refused.value.code() is grpc.StatusCode.DATA_LOSS
    problems = [x for x in logs if x["event"] == "checkpoint.unsealed_history_changed"]
    assert len(problems) == 1, logs


def test_history_from_before_seals_changed_while_the_ledger_runs_does_not_load(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """The start checks that history against its checkpoint once; an event of it changed
    in the store afterwards, while the ledger runs, must not load either: the start keeps
    each of those incidents' newest hash, and an unsealed event loads only if it is the
    one checked."""
    store_env = either_store
    settings, names, table = _store_from_before_seals(store_env, tmp_path)
    with running_ledger(settings) as client:  # covers and checks the unsealed history
        md = client.md(COORDINATOR)
        changed = names[2].removeprefix("incidents/").replace("-", "")
        _rewrite(store_env, table, changed, b"mass gathering", b"calm gathering")
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetIncident(api.GetIncidentRequest(name=names[2]), metadata=md)
        assert refused.value.code() is grpc.StatusCode.DATA_LOSS
        assert "carries no seal" in str(refused.value.details())
        # The history left as it was still loads without seals.
        read = client.stub.GetIncident(api.GetIncidentRequest(name=names[0]), metadata=md)
        assert read.incident.title == "Ballot box seal broken at TPS 02"
