"""Adding a command touches the files ARCHITECTURE.md promises, and nothing else.

tests/data/add-acknowledge.patch adds ``AcknowledgeIncident``, the worked example of
ARCHITECTURE.md (the lead agency acknowledges an assigned incident; the incident records an
``Acknowledged`` event). This test applies it to
a copy of the source tree, checks that it touches exactly the promised files, regenerates the
contract's code there, runs the project's own consistency tests on the copy (every command in
the adapter's table, every event type in the vocabulary, in docs/events.md and in the hash
encoding), starts the copy's ledger and calls the new command through a stub generated from
the copy's contract.

When the patch no longer applies (the files it touches changed around its lines), write it
again: make the same change in a clean tree, then
``git diff -- . ':!gen' > tests/data/add-acknowledge.patch`` (and put the header back).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common.config import PROJECT_ROOT
from tests.support import dev_tokens, service_process

pytestmark = [pytest.mark.system, pytest.mark.slow]

PATCH = PROJECT_ROOT / "tests" / "data" / "add-acknowledge.patch"

#: What adding a command takes (ARCHITECTURE.md, "How to add a command"): the RPC and its
#: messages, the command, the aggregate's rule (and event), one entry in the adapter's table,
#: one one-line servicer method...
PROMISED = {
    "proto/incidentledger/v1/ledger_service.proto",
    "services/ledger/domain/commands.py",
    "services/ledger/domain/incident.py",
    "services/ledger/wire.py",
    "services/ledger/api/servicer.py",
}
#: ...and, because the command records a new event type ("How to add an event type"): its
#: name in the vocabulary the notifier checks filters against, its payload in docs/events.md,
#: and a command recording it in the history of the hash-encoding test, which records every
#: type (unit tests hold each of the three to the aggregate). The test of the rule is this one.
NEW_EVENT_TYPE = {
    "services/common/vocabulary.py",
    "docs/events.md",
    "tests/unit/test_audit_encoding.py",
}

#: What the copy needs to build, test and serve.
TREE = ("services", "proto", "gen", "clients", "config", "docs", "tests", "pyproject.toml")

#: The project's tests that hold a new command and event type to the rest of the code.
CONSISTENCY_TESTS = (
    "tests/unit/test_commands.py",
    "tests/unit/test_api_docs.py::test_every_event_type_and_its_payload_is_in_events_md",
    "tests/unit/test_import_layers.py::test_the_shared_event_vocabulary_is_the_aggregates",
    "tests/unit/test_audit_encoding.py::test_hash_from_the_raw_state_equals_event_hash_for_every_event_type",
)

#: A client of the copy's ledger, with the copy's generated code: argv is the port and the
#: tokens of the coordinator, a reporter and the lead agency. Prints what it saw as JSON.
CLIENT = """
import json, sys
import grpc
from google.protobuf import json_format
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc

port, coordinator, reporter, lead = sys.argv[1:]
md = lambda token: (("authorization", f"Bearer {token}"),)
plain = json_format.MessageToDict
stub = api_grpc.LedgerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
name = stub.ReportIncident(
    api.ReportIncidentRequest(
        request_id="report-1", title="Crowd", category="crowd_gathering",
        location=pb.Location(kecamatan="penarik"),
    ),
    metadata=md(reporter),
).result.incident
stub.VerifyIncident(
    api.VerifyIncidentRequest(request_id="verify-1", name=name), metadata=md(coordinator)
)
stub.AssignLeadAgency(
    api.AssignLeadAgencyRequest(request_id="assign-1", name=name, agency="polres"),
    metadata=md(coordinator),
)

def acknowledge(token, request_id, comment):
    request = api.AcknowledgeIncidentRequest(
        request_id=request_id, name=name, expected_version=3, comment=comment
    )
    try:
        return plain(stub.AcknowledgeIncident(request, metadata=md(token)))
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}

seen = {
    "not_lead": acknowledge(reporter, "ack-1", "seen"),
    "first": acknowledge(lead, "ack-1", "seen"),
    "retry": acknowledge(lead, "ack-1", "seen"),
    "reused": acknowledge(lead, "ack-1", "seen twice"),
    "incident": plain(stub.GetIncident(api.GetIncidentRequest(name=name), metadata=md(reporter))),
    "events": plain(
        stub.ListIncidentEvents(api.ListIncidentEventsRequest(parent=name), metadata=md(reporter))
    ),
}
print(json.dumps(seen))
"""


def copy_tree(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")
    for name in TREE:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    (target / "tools").mkdir()
    shutil.copy2(PROJECT_ROOT / "tools" / "genproto.sh", target / "tools" / "genproto.sh")


def run(args: list[str], cwd: Path, **env: str) -> str:
    done = subprocess.run(
        args, cwd=cwd, env={**_base_env(), **env}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_a_new_command_touches_the_promised_files_and_works(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    copy_tree(tree)
    numstat = run(["git", "apply", "--numstat", str(PATCH)], tree)
    touched = {line.split("\t")[2] for line in numstat.splitlines()}
    assert touched == PROMISED | NEW_EVENT_TYPE
    applied = subprocess.run(
        ["git", "apply", str(PATCH)], cwd=tree, capture_output=True, text=True, check=False
    )
    assert applied.returncode == 0, (
        f"{PATCH.name} no longer applies (see this module's doc):\n{applied.stderr}"
    )
    run(["bash", "tools/genproto.sh", sys.executable, "gen"], tree)

    path = f"{tree}:{tree / 'gen'}:{tree / 'clients' / 'python'}"
    where = run(
        [
            sys.executable,
            "-c",
            "import services.ledger.wire as w, incidentledger.v1.ledger_service_pb2 as a;"
            "print(w.__file__); print(a.__file__)",
        ],
        tree,
        PYTHONPATH=path,
    )
    assert all(Path(line).is_relative_to(tree) for line in where.split()), where
    run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CONSISTENCY_TESTS],
        tree,
        PYTHONPATH=path,
    )

    data = tmp_path / "data"
    env = {
        "LEDGER_DATA_DIR": str(data),
        "LEDGER_LISTEN": "127.0.0.1:0",
        "PERSISTENCE_MODULE": "eventsourcing.popo",
    }
    with service_process("services.ledger", env, root=tree) as ledger:
        tokens = dev_tokens(data)
        out = run(
            [
                sys.executable,
                "-c",
                CLIENT,
                str(ledger.port),
                tokens["desk_pilkada"],
                tokens["kesbangpol"],
                tokens["polres"],
            ],
            tree,
            PYTHONPATH=path,
        )
    seen: dict[str, Any] = json.loads(out)
    # The aggregate's rule: the lead agency only.
    assert seen["not_lead"]["code"] == "PERMISSION_DENIED", seen["not_lead"]
    first = seen["first"]["result"]
    assert first["version"] == "4"
    assert seen["retry"] == seen["first"]  # the same request id: the same answer
    assert seen["reused"]["code"] == "ALREADY_EXISTS", seen["reused"]
    incident = seen["incident"]["incident"]
    assert (incident["version"], incident["status"]) == ("4", "INCIDENT_STATUS_ASSIGNED")
    assert incident["updateTime"] == first["recordTime"]
    events = seen["events"]["events"]
    assert [e["type"] for e in events] == ["Reported", "Verified", "LeadAssigned", "Acknowledged"]
    acknowledged = events[3]
    assert acknowledged["eventId"] == first["eventId"]
    assert acknowledged["actor"]["agency"] == "polres"
    assert acknowledged["reason"] == "seen"
    assert acknowledged["previousHash"] == events[2]["hash"]
    assert json.loads(acknowledged["payloadJson"]) == {}
