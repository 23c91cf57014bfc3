"""IngestReports batches prepared in the ledger's intake process (services/ledger/intake.py),
through the real gRPC server on each store: the child seals people's data as the ledger
would (found by phone, read back in clear), and a child that dies is replaced, nothing of
its batch recorded twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from services.ledger.intake import IntakeProcess
from tests.integration.test_ingest import CREATED, device_report, ingest, recorded
from tests.integration.test_personal_data import NAME, NIK, PHONE, find, personal, read
from tests.support import Client, running_ledger, settings_for

DEADLINE_SECONDS = 60.0


@pytest.fixture
def ledger(tmp_path: Path, either_store: dict[str, str]) -> Iterator[Client]:
    with running_ledger(settings_for(tmp_path, either_store)) as client:
        yield client


def intake_of(ledger: Client) -> IntakeProcess:
    intake = ledger.server.intake
    assert intake is not None, "LEDGER_INGEST_PROCESS is on by default"
    return intake


def test_people_named_in_a_batch_are_sealed_in_the_child_with_the_ledger_s_keys(
    ledger: Client,
) -> None:
    (result,) = ingest(ledger, [device_report(personal_data=personal())])
    assert result.outcome == CREATED
    child = intake_of(ledger).pid
    assert child is not None and child != os.getpid(), "prepared in a process of its own"
    name = result.result.incident
    # The blind index digests made in the child are the key table's: found by phone.
    assert {s.incident for s in find(ledger, "desk_pilkada", phone=PHONE).subjects} == {name}
    # The keys wrapped in the child open under the ledger's key-encryption key.
    people = {s.person.name: s.person for s in read(ledger, "bawaslu", name).subjects}
    assert people[NAME].nik == NIK


def test_a_child_killed_is_replaced_and_the_batch_sent_again_is_recorded_once(
    ledger: Client,
) -> None:
    first = [device_report(f"Before the kill {n}") for n in range(3)]
    assert [r.outcome for r in ingest(ledger, first)] == [CREATED] * 3
    intake = intake_of(ledger)
    killed = intake.pid
    assert killed is not None
    before = recorded(ledger)
    os.kill(killed, signal.SIGKILL)
    batch = [device_report(f"After the kill {n}") for n in range(5)]
    # Sent until recorded, as a device would: the call that finds the child gone while it
    # was preparing is refused as a whole (UNAVAILABLE), the next one gets a new child.
    refusals = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            results = ingest(ledger, batch)
            break
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error
            info = error_info(error)  # type: ignore[arg-type]
            assert info is not None and info.reason == "INTAKE_RESTARTED"
            refusals += 1
            assert refusals == 1 and time.monotonic() < deadline, "refused more than once"
    assert [r.outcome for r in results] == [CREATED] * 5
    assert intake.pid not in {None, killed}
    # Each report once: its event, its request record and its code's claim.
    assert recorded(ledger) == before + 3 * len(batch)
    again = ingest(ledger, batch)
    assert [r.outcome for r in again] == [api.INGEST_OUTCOME_DUPLICATE] * 5
    assert recorded(ledger) == before + 3 * len(batch)
