"""A store written by the code before the redesign of issue 16, served by today's code.

tests/data/before-redesign/ holds what the ledger of commit cab4445 stored (a SQLite
database), exported, answered and would have published to NATS for a scenario that goes
through every command (see README.md there, and generate.py, which wrote it). Today's code
opens a copy of that store and must find the same bytes: the chain verifies, the export is
the same byte for byte, the read answers and the relay's messages are the same, every old
request retried is answered as it was (so the stored idempotency fingerprints are computed
the same way), and a new command continues the chain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.config import RelaySettings
from services.common.natsserver import NatsServer
from services.common.sql import open_database
from services.ledger.audit.checkpoints import iterate_checkpoints
from services.ledger.audit.export import export_jsonl
from services.ledger.audit.keys import load_public_key
from services.ledger.audit.verify_exported import verify_export
from tests.fanout_support import wait_until
from tests.support import Client, running_ledger, settings_for

FIXTURES = Path(__file__).parents[1] / "data" / "before-redesign"
COORDINATOR = "desk_pilkada"
AUDITOR = "inspektorat"
#: The one part of an export that is not read from the store: when it was made.
EXPORTED_AT = re.compile(rb'"exported_at":"[^"]*"')


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    """What the ledger of cab4445 answered and would have published (generate.py)."""
    answers: dict[str, Any] = json.loads((FIXTURES / "answers.json").read_text("utf-8"))
    return answers


def plain(message: Message) -> dict[str, Any]:
    """A message as protobuf JSON (as generate.py saved the answers)."""
    return json_format.MessageToDict(message)


@contextmanager
def ledger_on_old_store(tmp_path: Path, relay: RelaySettings | None = None) -> Iterator[Client]:
    """Today's ledger on a copy of the old store, signing with the old store's key."""
    store = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURES / "ledger.sqlite", store)
    store_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(store)}
    overrides: dict[str, object] = {
        "signing_key_file": FIXTURES / "signing.key",
        "checkpoint_seconds": 0.0,
    }
    if relay is not None:
        overrides["relay"] = relay
    with running_ledger(settings_for(tmp_path, store_env, **overrides)) as client:
        yield client


@pytest.fixture
def old(tmp_path: Path) -> Iterator[Client]:
    with ledger_on_old_store(tmp_path) as client:
        yield client


def audit_stub(client: Client) -> audit_grpc.AuditServiceStub:
    return audit_grpc.AuditServiceStub(client.channel)


def test_the_fixture_is_the_old_code_s(saved: dict[str, Any]) -> None:
    assert saved["written_by"]["commit"] == "cab4445"
    assert (FIXTURES / "ledger.sqlite").stat().st_size < 1_000_000
    rpcs = {command["rpc"] for command in saved["commands"]}
    # Every command of the contract of cab4445 went into the store.
    assert rpcs == {
        "ReportIncident",
        "VerifyIncident",
        "RejectIncident",
        "MergeIncident",
        "AssessSeverity",
        "AssignLeadAgency",
        "AddSupportingAgency",
        "ProposeHandover",
        "AcceptHandover",
        "RecordDecision",
        "LogAction",
        "EscalateIncident",
        "ResolveIncident",
        "RequestClosure",
        "ApproveClosure",
        "ReopenIncident",
        "RecordCorrection",
    }


def test_the_old_store_verifies_as_it_did(old: Client, saved: dict[str, Any]) -> None:
    report = audit_stub(old).VerifyLedger(audit.VerifyLedgerRequest(), metadata=old.md(AUDITOR))
    assert report.ok, report
    assert plain(report) == saved["verify_ledger"]


def test_the_old_export_verifies_and_today_s_export_is_the_same_bytes(
    old: Client, tmp_path: Path
) -> None:
    public_key = load_public_key(FIXTURES / "signing.pub")
    old_export = (FIXTURES / "export.jsonl").read_bytes()
    assert verify_export(FIXTURES / "export.jsonl", public_key).ok

    stats = export_jsonl(old.server.ledger, tmp_path / "export.jsonl")
    new_export = (tmp_path / "export.jsonl").read_bytes()
    assert stats.checkpoints == 1
    assert len(EXPORTED_AT.findall(new_export)) == 1
    assert EXPORTED_AT.sub(b"", new_export) == EXPORTED_AT.sub(b"", old_export)


def test_the_read_answers_are_the_same(old: Client, saved: dict[str, Any]) -> None:
    reads = saved["reads"]
    md = old.md(COORDINATOR)
    assert len(reads["GetIncident"]) == 5
    for name, answer in reads["GetIncident"].items():
        got = old.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=md)
        assert plain(got) == answer, name
        # Reported before reference codes existed: none, and none made up (docs/events.md).
        assert got.incident.reference == "", name
    for name, answer in reads["ListIncidentEvents"].items():
        events = old.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name), metadata=md
        )
        assert plain(events) == answer, name
    listed = old.stub.ListIncidents(
        api.ListIncidentsRequest(min_position=saved["last_position"]), metadata=md
    )
    assert plain(listed) == reads["ListIncidents"]
    checkpoints = audit_stub(old).ListCheckpoints(audit.ListCheckpointsRequest(), metadata=md)
    assert plain(checkpoints) == reads["ListCheckpoints"]


def test_every_old_request_retried_is_answered_as_it_was(
    old: Client, saved: dict[str, Any]
) -> None:
    """The stored fingerprints of every command match today's: each retry replays."""
    position = old.server.ledger.recorder.max_notification_id()
    for command in saved["commands"]:
        request = json_format.ParseDict(
            command["request"], getattr(api, f"{command['rpc']}Request")()
        )
        response = getattr(old.stub, command["rpc"])(request, metadata=old.md(command["caller"]))
        assert plain(response) == command["response"], command["rpc"]
    assert old.server.ledger.recorder.max_notification_id() == position  # nothing stored


def test_an_old_merge_s_request_id_on_another_duplicate_is_refused(
    old: Client, saved: dict[str, Any]
) -> None:
    """The merge's stored fingerprint leaves out the duplicate (as it always did); the
    stored record names it, and a retry that names another is refused."""
    (merge,) = [c for c in saved["commands"] if c["rpc"] == "MergeIncident"]
    other = next(
        c["response"]["result"]["incident"]
        for c in saved["commands"]
        if c["rpc"] == "ReportIncident"
        and c["response"]["result"]["incident"]
        not in {merge["request"]["name"], merge["request"]["target"]}
    )
    request = json_format.ParseDict(merge["request"], api.MergeIncidentRequest())
    request.name = other
    with pytest.raises(grpc.RpcError) as refused:
        old.stub.MergeIncident(request, metadata=old.md(merge["caller"]))
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "REQUEST_ID_REUSED" in str(refused.value.trailing_metadata())


def test_a_new_command_continues_the_old_chain(old: Client, saved: dict[str, Any]) -> None:
    (last,) = [c for c in saved["commands"] if c["request"]["requestId"] == "before-redesign-25"]
    name = last["response"]["result"]["incident"]  # reported, then escalated by its reporter
    md = old.md(COORDINATOR)
    result = old.stub.VerifyIncident(
        api.VerifyIncidentRequest(
            request_id="after-redesign-01", name=name, expected_version=2, comment="Checked"
        ),
        metadata=md,
    ).result
    assert result.version == 3
    assert result.position > saved["last_position"]
    events = old.stub.ListIncidentEvents(api.ListIncidentEventsRequest(parent=name), metadata=md)
    old_events = saved["reads"]["ListIncidentEvents"][name]["events"]
    assert [plain(e) for e in events.events[:2]] == old_events
    assert events.events[2].type == "Verified"
    assert events.events[2].previous_hash == old_events[-1]["hash"]
    assert events.events[2].seal  # sealed with the old store's key

    stub = audit_stub(old)
    report = stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=old.md(AUDITOR))
    assert report.ok, report
    assert report.events == int(saved["verify_ledger"]["events"]) + 1
    checkpoint = stub.CreateCheckpoint(audit.CreateCheckpointRequest(), metadata=md).checkpoint
    assert checkpoint.events == report.events
    again = stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=old.md(AUDITOR))
    assert again.ok, again
    assert again.checkpoints_checked == 2


def test_a_new_report_in_the_old_store_gets_a_reference(old: Client) -> None:
    result = old.report()
    md = old.md(COORDINATOR)
    code = old.stub.GetIncident(api.GetIncidentRequest(name=result.incident), metadata=md)
    assert code.incident.reference.startswith("MKM-")
    found = old.stub.GetIncident(
        api.GetIncidentRequest(reference=code.incident.reference), metadata=md
    )
    assert found.incident.name == result.incident


def test_the_stored_checkpoint_is_published_as_it_was(old: Client, saved: dict[str, Any]) -> None:
    database = open_database(old.server.ledger.env)
    try:
        bodies = [c.to_bytes() for c in iterate_checkpoints(database)]
    finally:
        database.close()
    assert [base64.b64encode(b).decode("ascii") for b in bodies] == [
        c["body"] for c in saved["relay"]["checkpoints"]
    ]


@pytest.mark.nats
def test_the_relay_publishes_the_old_events_byte_for_byte(
    saved: dict[str, Any], tmp_path: Path, nats_server: NatsServer
) -> None:
    expected = saved["relay"]["events"]
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    with ledger_on_old_store(tmp_path, relay):
        wait_until(
            lambda: len(stream_messages(nats_server.url)) >= len(expected),
            what=f"the relay to publish the {len(expected)} old events",
        )
    published = stream_messages(nats_server.url)
    assert [m["position"] for m in published] == [m["position"] for m in expected]
    for got, want in zip(published, expected, strict=True):
        # Since then each message also carries the incident's facets before the event (a
        # field added for the subscribers' filters): every other byte is the old relay's.
        note = pb.EventNotification.FromString(base64.b64decode(got["payload"]))
        assert note.HasField("before") == (note.event.version > 1), want["position"]
        note.ClearField("before")
        got = {**got, "payload": base64.b64encode(note.SerializeToString()).decode()}
        assert got == want, want["position"]


def stream_messages(url: str, stream: str = "LEDGER_EVENTS") -> list[dict[str, Any]]:
    """Every message of the stream as generate.py saved the old relay's: subject, headers
    and the payload in base64."""

    async def read() -> list[dict[str, Any]]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            try:
                state = (await js.stream_info(stream)).state
            except nats.js.errors.NotFoundError:
                return []
            found = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                msg = await js.get_msg(stream, seq)
                headers = dict(msg.headers or {})
                found.append(
                    {
                        "position": int(headers["Nats-Msg-Id"]),
                        "subject": msg.subject,
                        "headers": headers,
                        "payload": base64.b64encode(msg.data or b"").decode("ascii"),
                    }
                )
            return found
        finally:
            await client.close()

    return asyncio.run(read())
