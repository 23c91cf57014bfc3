"""Writes the fixtures of tests/integration/test_before_redesign.py with the code of cab4445.

Run from a checkout of commit cab4445 (the code before the redesign of issue 16), with that
checkout first on the path (see README.md beside this file):

    git worktree add --detach ../old-cab4445 cab4445
    cd ../old-cab4445
    PYTHONPATH=.:gen:clients/python python <this file> <this directory>

It starts that commit's ledger on a new SQLite store, signs with the fixed key of this
directory (``signing.key``), runs a fixed scenario through gRPC (five incidents through every
command: merge, rejection, decision, handover, correction, closure, reopening; a checkpoint in
the middle), and writes here what that code stored and answered. Event ids, record times and
signatures differ on every run (the ledger draws ids and reads the clock), so the files are
kept together: regenerate them all or none.

This file runs only on the code of cab4445 (it checks), so the lint of later code leaves
tests/data/ out: a module it imports may move without it being changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

import services
from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.sql import open_database
from services.ledger.audit.checkpoints import iterate_checkpoints
from services.ledger.audit.export import export_jsonl
from services.ledger.audit.keys import load_public_key, parse_private_key, public_key_pem
from services.ledger.audit.verify import verify_export, verify_store
from services.ledger.relay import EventEncoder
from services.ledger.seals import public_key_bytes
from tests.support import Client, running_ledger, settings_for

COMMIT = "cab4445"
#: The fixed signing key: its seed is the SHA-256 of this text.
KEY_PHRASE = b"incident ledger: the store written before the redesign (issue 16)"


def old_tree() -> Path:
    """The checkout whose code runs here; refuses any other commit."""
    root = Path(services.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if head != COMMIT:
        sys.exit(f"services comes from {root} at {head}, not {COMMIT}: see the module doc")
    return root


def write_key(out: Path) -> Path:
    seed = hashlib.sha256(KEY_PHRASE).digest()
    key_file = out / "signing.key"
    key_file.write_text(base64.b64encode(seed).decode("ascii") + "\n")
    key = parse_private_key(key_file.read_bytes())
    (out / "signing.pub").write_bytes(public_key_pem(public_key_bytes(key)))
    return key_file


def ts(text: str) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text).astimezone(UTC))
    return stamp


def plain(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class Scenario:
    """Sends commands through gRPC and keeps each request with its answer."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sent: list[dict[str, Any]] = []
        self.count = 0

    def __call__(self, rpc: str, caller: str, /, **fields: Any) -> api.CommandResult:
        self.count += 1
        fields.setdefault("request_id", f"before-redesign-{self.count:02d}")
        request = getattr(api, f"{rpc}Request")(**fields)
        response = getattr(self.client.stub, rpc)(request, metadata=self.client.md(caller))
        self.sent.append(
            {"rpc": rpc, "caller": caller, "request": plain(request), "response": plain(response)}
        )
        result: api.CommandResult = response.result
        return result


def run_scenario(client: Client, audit_stub: audit_grpc.AuditServiceStub) -> dict[str, Any]:
    do = Scenario(client)
    coordinator = "desk_pilkada"
    md = client.md

    # A: every step of the lifecycle, with a handover, a decision, a correction and a reopening.
    a = do(
        "ReportIncident",
        "kesbangpol",
        title="Rally without permit at the town square",
        description="About 300 supporters gathering near TPS 03.",
        category="crowd_gathering",
        severity="high",
        location=pb.Location(
            kecamatan="kota_mukomuko",
            desa="Pasar Mukomuko",
            tps="TPS 03",
            latitude=-2.5805,
            longitude=101.1128,
        ),
        occur_time=ts("2026-11-27T08:15:00+07:00"),
        correlation_id="rally-2026-11-27",
    )
    name = a.incident
    do("VerifyIncident", coordinator, name=name, expected_version=1, comment="Confirmed by phone")
    do("AssessSeverity", coordinator, name=name, severity="critical", comment="Crowd growing")
    do("AssignLeadAgency", coordinator, name=name, agency="polres", comment="Public order")
    do("AddSupportingAgency", "polres", name=name, agency="satpolpp", comment="Traffic")
    do("ProposeHandover", "polres", name=name, to_agency="kodim", reason="Military escort needed")
    do("AcceptHandover", "kodim", name=name, comment="Taking over")
    do(
        "RecordDecision",
        "kodim",
        name=name,
        deciding_agencies=["kodim", "polres"],
        forum="Joint command post",
        summary="Disperse the rally by 17:00",
        rationale="No permit; roads blocked",
        valid_from=ts("2026-12-09T10:00:00+07:00"),
        valid_until=ts("2026-12-09T17:00:00+07:00"),
    )
    do(
        "LogAction",
        "kodim",
        name=name,
        action="Road to the square closed",
        location=pb.Location(kecamatan="kota_mukomuko", desa="Koto Jaya"),
        occur_time=ts("2026-11-27T09:00:00+07:00"),
    )
    do("EscalateIncident", "kodim", name=name, reason="Second crowd arriving")
    do(
        "RecordCorrection",
        "kesbangpol",
        name=name,
        corrected_event_id=client.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name), metadata=md("kesbangpol")
        )
        .events[0]
        .event_id,
        field="title",
        old_value="Rally without permit at the town square",
        new_value="Rally without a permit at the town square",
        reason="Typo",
    )
    checkpoint = audit_stub.CreateCheckpoint(
        audit.CreateCheckpointRequest(), metadata=md(coordinator)
    )
    do("ResolveIncident", "kodim", name=name, resolution="Crowd dispersed peacefully")
    do("RequestClosure", "kodim", name=name, comment="Nothing left to do")
    do("ApproveClosure", coordinator, name=name, comment="Closed")
    do("ReopenIncident", coordinator, name=name, reason="Crowd gathered again at night")

    # B merged into C; D rejected; E left as reported (escalated by its reporter).
    b = do(
        "ReportIncident",
        "bawaslu",
        title="Envelopes of money handed out",
        category="money_politics",
        location=pb.Location(kecamatan="air_dikit", desa="Pendopo"),
    )
    c = do(
        "ReportIncident",
        "kpu",
        title="Ballots missing for TPS 07",
        description="Two boxes short.",
        category="logistics_failure",
        severity="low",
        location=pb.Location(kecamatan="ipuh", desa="Pasar Ipuh", tps="TPS 07"),
    )
    do("MergeIncident", coordinator, name=b.incident, target=c.incident, comment="Same report")
    do("VerifyIncident", coordinator, name=c.incident)
    do("AssignLeadAgency", coordinator, name=c.incident, agency="kpu")
    do("LogAction", "kpu", name=c.incident, action="Spare boxes sent from the depot")
    d = do(
        "ReportIncident",
        "polres",
        title="Message claiming the election is postponed",
        category="hoax",
        severity="medium",
        location=pb.Location(kecamatan="penarik"),
    )
    do(
        "RejectIncident",
        coordinator,
        name=d.incident,
        rejection_reason=pb.REJECTION_REASON_HOAX,
        comment="Already debunked by KPU",
    )
    e = do(
        "ReportIncident",
        "dinkes",
        title="Polling officer collapsed",
        category="logistics_failure",
        location=pb.Location(kecamatan="v_koto", desa="Lubuk Gedang"),
        occur_time=ts("2026-11-28T13:40:00+07:00"),
    )
    last = do("EscalateIncident", "dinkes", name=e.incident, reason="Ambulance delayed")

    names = [a.incident, b.incident, c.incident, d.incident, e.incident]
    reads: dict[str, Any] = {"GetIncident": {}, "ListIncidentEvents": {}}
    for incident in names:
        reads["GetIncident"][incident] = plain(
            client.stub.GetIncident(api.GetIncidentRequest(name=incident), metadata=md(coordinator))
        )
        reads["ListIncidentEvents"][incident] = plain(
            client.stub.ListIncidentEvents(
                api.ListIncidentEventsRequest(parent=incident), metadata=md(coordinator)
            )
        )
    reads["ListIncidents"] = plain(
        client.stub.ListIncidents(
            api.ListIncidentsRequest(min_position=last.position), metadata=md(coordinator)
        )
    )
    reads["ListCheckpoints"] = plain(
        audit_stub.ListCheckpoints(audit.ListCheckpointsRequest(), metadata=md(coordinator))
    )
    return {
        "commands": do.sent,
        "reads": reads,
        "checkpoint": plain(checkpoint),
        "last_position": last.position,
    }


def relay_messages(client: Client, settings: Any) -> dict[str, Any]:
    """What the relay of cab4445 publishes for each stored event and checkpoint."""
    ledger = client.server.ledger
    encoder = EventEncoder(ledger, settings.relay.stream.subject_prefix)
    topics = encoder_topics(ledger)
    events = [
        {
            "position": m.position,
            "subject": m.subject,
            "headers": m.headers,
            "payload": base64.b64encode(m.payload).decode("ascii"),
        }
        for m in (
            encoder.encode(n) for n in ledger.recorder.select_notifications(0, 1000, topics=topics)
        )
    ]
    database = open_database(settings.store_env)
    try:
        checkpoints = [
            {
                "subject": settings.relay.stream.checkpoint_subject,
                "body": base64.b64encode(c.to_bytes()).decode("ascii"),
            }
            for c in iterate_checkpoints(database)
        ]
    finally:
        database.close()
    return {"events": events, "checkpoints": checkpoints}


def encoder_topics(ledger: Any) -> list[str]:
    from eventsourcing.utils import get_topic

    from services.ledger.domain.incident import incident_event_classes

    return [get_topic(cls) for cls in incident_event_classes()]


def main(out: Path) -> None:
    old_tree()
    out.mkdir(parents=True, exist_ok=True)
    key_file = write_key(out)
    public_key = load_public_key(out / "signing.pub")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / "ledger.sqlite"
        store_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(store)}
        settings = settings_for(work, store_env, signing_key_file=key_file, checkpoint_seconds=0.0)
        with running_ledger(settings) as client:
            audit_stub = audit_grpc.AuditServiceStub(client.channel)
            answers = run_scenario(client, audit_stub)
            verified = audit_stub.VerifyLedger(
                audit.VerifyLedgerRequest(), metadata=client.md("inspektorat")
            )
            assert verified.ok, verified
            relay = relay_messages(client, settings)
            report = verify_store(client.server.ledger, public_key)
            assert report.ok, report
            export_jsonl(client.server.ledger, out / "export.jsonl")
        assert verify_export(out / "export.jsonl", public_key).ok
        leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith("ledger.sqlite"))
        assert leftovers == ["ledger.sqlite"], leftovers  # no WAL left beside the database
        shutil.copyfile(store, out / "ledger.sqlite")
    answers["verify_ledger"] = plain(verified)
    answers["relay"] = relay
    answers["written_by"] = {
        "commit": COMMIT,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
