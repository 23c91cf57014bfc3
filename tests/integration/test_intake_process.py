"""IngestReports batches prepared in the ledger's intake process (services/ledger/intake.py),
through the real gRPC server on each store: the child seals people's data as the ledger
would (found by phone, read back in clear), and a child that dies is replaced, nothing of
its batch recorded twice."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import Unavailable
from services.common.grpc_errors import error_info
from services.ledger.application import time_bounds_of
from services.ledger.intake import IntakeProcess, IntakeSetup
from tests.fanout_support import wait_until
from tests.integration.test_ingest import CREATED, device_report, ingest, recorded
from tests.integration.test_personal_data import NAME, NIK, PHONE, find, personal, read
from tests.support import Client, reference, running_ledger, settings_for
from tests.unit.incident_builders import actor
from tests.unit.test_ingest import item

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


def ended(pid: int) -> bool:
    """Our child process has exited and can be reaped (left for its owner to reap)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


def test_a_child_that_died_between_batches_is_reported_and_replaced_before_the_next(
    ledger: Client,
) -> None:
    assert ingest(ledger, [device_report("Before")])[0].outcome == CREATED
    intake = intake_of(ledger)
    killed = intake.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: ended(killed), timeout=DEADLINE_SECONDS, what="the child's end")
    with capture_logs() as logs:
        # Found dead before the batch was sent: no refusal, a new child prepares it.
        (result,) = ingest(ledger, [device_report("After")])
    assert result.outcome == CREATED
    lost = [x for x in logs if x["event"] == "intake.child_lost"]
    assert lost == [
        {"event": "intake.child_lost", "log_level": "warning", "pid": killed, "exitcode": -9}
    ]
    assert intake.pid not in {None, killed}


def test_a_child_that_cannot_start_refuses_the_batch_as_a_restart(tmp_path: Path) -> None:
    # The child's ledger cannot be made (a cipher that does not exist): it ends before it
    # says it is ready, and the call is refused as for a child lost, not as an internal error.
    setup = IntakeSetup(
        reference(),
        time_bounds_of(settings_for(tmp_path, {})),
        sealer=None,
        personal_sealer=None,
        store_env={"CIPHER_TOPIC": "no_such_module:Cipher", "CIPHER_KEY": "x"},
    )
    intake = IntakeProcess(setup)
    try:
        with capture_logs() as logs, pytest.raises(Unavailable) as refused:
            intake.prepare(actor("bawaslu"), [], None)
        assert refused.value.reason == "INTAKE_RESTARTED"
        (failed,) = [x for x in logs if x["event"] == "intake.start_failed"]
        assert failed["exitcode"] not in {None, 0}
        assert intake.pid is None
    finally:
        intake.close()


def test_a_child_that_stops_answering_is_killed_and_the_batch_refused_as_a_restart(
    tmp_path: Path,
) -> None:
    # Stopped (SIGSTOP): it neither answers nor ends. Without the answer's deadline the
    # call would wait for ever, holding the lock every later batch needs.
    setup = IntakeSetup(reference(), time_bounds_of(settings_for(tmp_path, {})), None, None)
    intake = IntakeProcess(setup, answer_seconds=1.0)
    try:
        first = intake.prepare(actor("bawaslu"), [item("Sebelum")], None)
        assert [r.at for r in first.ready] == [0]
        stuck = intake.pid
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)
        began = time.monotonic()
        # A batch larger than the pipe's buffer: its sending blocks too, not only the
        # wait for the answer.
        batch = [item(f"Sesudah {n}", description=f"{n:04d}" + "x" * 2000) for n in range(500)]
        assert len(pickle.dumps(batch)) > 2**20  # the socket pair's buffers hold about 400 KB
        with capture_logs() as logs, pytest.raises(Unavailable) as refused:
            intake.prepare(actor("bawaslu"), batch, None)
        assert refused.value.reason == "INTAKE_RESTARTED"
        assert time.monotonic() - began < DEADLINE_SECONDS
        (lost,) = [x for x in logs if x["event"] == "intake.child_lost"]
        assert lost["pid"] == stuck and lost["error_type"] == "TimeoutError"
        assert lost["exitcode"] == -signal.SIGKILL, "killed, not left stopped"
        again = intake.prepare(actor("bawaslu"), [item("Sesudah")], None)
        assert [r.at for r in again.ready] == [0]
        assert intake.pid not in {None, stuck}
    finally:
        intake.close()


def test_a_close_while_a_stuck_child_holds_a_batch_kills_it_and_refuses_the_batch(
    tmp_path: Path,
) -> None:
    # The ledger closes its intake after gRPC's grace period: a batch still under way then
    # is stuck. close() waited for it as long as the batch's own deadline (a minute here,
    # as by default), past the ledger's stop deadline; it now kills the child.
    setup = IntakeSetup(reference(), time_bounds_of(settings_for(tmp_path, {})), None, None)
    intake = IntakeProcess(setup, answer_seconds=DEADLINE_SECONDS)
    intake.prepare(actor("bawaslu"), [item("Sebelum")], None)
    stuck = intake.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    refused: list[BaseException] = []

    def under_way() -> None:
        try:
            intake.prepare(actor("bawaslu"), [item("Tertahan")], None)
        except Unavailable as exc:
            refused.append(exc)

    batch = threading.Thread(target=under_way)
    with capture_logs() as logs:
        batch.start()
        wait_until(intake._lock.locked, what="the batch under way")
        began = time.monotonic()
        intake.close()
        closed_in = time.monotonic() - began
        batch.join(DEADLINE_SECONDS)
    assert closed_in < DEADLINE_SECONDS / 2, closed_in
    assert [getattr(r, "reason", None) for r in refused] == ["INTAKE_RESTARTED"]
    (killed,) = [x for x in logs if x["event"] == "intake.killed_at_stop"]
    assert killed["pid"] == stuck
    with pytest.raises(Unavailable) as after:
        intake.prepare(actor("bawaslu"), [item("Sesudah")], None)
    assert after.value.reason == "SHUTTING_DOWN"


def test_with_the_setting_off_batches_are_prepared_in_the_ledger_s_process(
    tmp_path: Path, either_store: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, either_store, ingest_process=False)
    with running_ledger(settings) as ledger:
        assert ledger.server.intake is None
        before = recorded(ledger)
        batch = [device_report(f"Tanpa proses {n}", personal_data=personal()) for n in range(3)]
        assert [r.outcome for r in ingest(ledger, batch)] == [CREATED] * 3
        assert recorded(ledger) == before + 3 * len(batch)
        assert [r.outcome for r in ingest(ledger, batch)] == [api.INGEST_OUTCOME_DUPLICATE] * 3
        children = multiprocessing.active_children()
        assert not [c for c in children if c.name == "ledger-intake"], "no intake process"
